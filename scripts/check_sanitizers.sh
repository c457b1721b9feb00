#!/usr/bin/env bash
# Builds libxtc, the Python bindings and the GoogleTest suites with AddressSanitizer + UndefinedBehaviorSanitizer
# (build-sanitize/), runs every GoogleTest under them with LeakSanitizer on, then a Python smoke (the stacks, both
# wrappers, the op's backward, export) with the sanitizer runtimes preloaded. Any report fails the run: UBSan
# does not recover, ASan halts on the first error. torch itself is not instrumented, so its own code is checked only
# where our instrumented code touches its memory.
#
# Usage: scripts/check_sanitizers.sh   (after scripts/setup.sh; env: MAX_JOBS=2)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="$PWD/.venv/bin/python"
BUILD="$PWD/build-sanitize"
flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPython3_EXECUTABLE="$PYTHON" \
  -DCMAKE_PREFIX_PATH="$("$PYTHON" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" \
  -DXTC_BUILD_PYTHON=ON -DXTC_BUILD_TESTS=ON -DXTC_WITH_CUDA=OFF "${launcher[@]}" \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_SHARED_LINKER_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" >/dev/null
cmake --build "$BUILD" -j "${MAX_JOBS:-2}"

# LeakSanitizer reports what the C++ tests leave allocated at exit.
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:strict_string_checks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
ctest --test-dir "$BUILD" --output-on-failure -j2 -E '^(example_|pretrained_run$)'

# The Python smoke: our instrumented library inside an uninstrumented interpreter, so the runtimes are preloaded;
# leaks are not checked there (CPython and torch keep interned objects alive at exit by design).
stage="$BUILD/python"
rm -rf "$stage" && mkdir -p "$stage"
cp -r python/x_transformers_cpp "$stage/"
cp "$BUILD"/_C*.so "$BUILD"/libxtc.so "$stage/x_transformers_cpp/"
runtimes="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
ASAN_OPTIONS="halt_on_error=1:detect_leaks=0" LD_PRELOAD="$runtimes" PYTHONPATH="$stage:$PWD/tests/python" \
  "$PYTHON" scripts/sanitizer_smoke.py
echo "check_sanitizers: no reports"
