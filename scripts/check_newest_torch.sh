#!/usr/bin/env bash
# Builds and tests x_transformers_cpp against the newest torch we support, beside the pinned CPU torch of
# scripts/setup.sh, so that a torch release whose headers or ABI break us shows in CI instead of at a user's install.
# The newest torch (2.14.1) is a CUDA build, taken from the machine's local package store into its own venv
# (.venv-torch-newest, about 5.5 GB); its headers need C++20, which CMake picks from the torch it finds. Only the CPU
# kernels are built here (XTC_WITH_CUDA=OFF: no GPU to run them; scripts/check_cuda_compile.sh compiles the CUDA
# sources, the host glue against these same headers). Then the GoogleTest suites, the example app and pytest run
# against that build.
#
# Usage: scripts/check_newest_torch.sh      (env: XTC_NEWEST_TORCH=2.14.1, MAX_JOBS=2)
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION="${XTC_NEWEST_TORCH:-2.14.1}"
VENV="$PWD/.venv-torch-newest"
BUILD="$PWD/build-torch-newest"
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check \
  "torch==$TORCH_VERSION" x-transformers==2.31.10 pytest==9.0.3 hypothesis==6.140.0 numpy==2.4.6 safetensors==0.8.0 \
  onnx==1.23.2 onnx-ir==1.1.0 onnxscript==0.7.2 onnxruntime==1.32.0 \
  setuptools wheel
site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

# A CUDA build of torch makes its CMake config look for CUDA, nvrtc included, even for a CPU-only build of ours:
# the toolkit's nvcc is on the machine, nvrtc comes with torch's own nvidia wheels.
cmake_args=()
nvcc_dir="$(dirname "$(readlink -f "$(command -v nvcc || echo /nonexistent/bin/nvcc)")")"
for cuda_root in "${CUDA_HOME:-}" /usr/local/cuda "$(dirname "$nvcc_dir")"; do
  if [ -n "$cuda_root" ] && [ -f "$cuda_root/include/cuda_runtime.h" ]; then
    cmake_args+=("-DCUDA_TOOLKIT_ROOT_DIR=$cuda_root")
    break
  fi
done
nvrtc="$(find "$site/nvidia" -name 'libnvrtc.so*' 2>/dev/null | sort | head -1 || true)"
[ -n "$nvrtc" ] && cmake_args+=("-DCUDA_nvrtc_LIBRARY=$nvrtc")
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE="$VENV/bin/python" \
  -DXTC_BUILD_PYTHON=ON -DXTC_BUILD_TESTS=ON -DXTC_WITH_CUDA=OFF "${cmake_args[@]}" >/dev/null
XTC_BUILD_DIR="$BUILD" XTC_WITH_CUDA=OFF XTC_BUILD_TESTS=1 MAX_JOBS=${MAX_JOBS:-2} "$VENV/bin/pip" install -q \
  --disable-pip-version-check --no-build-isolation --no-deps .
"$VENV/bin/python" -c 'import torch, x_transformers_cpp; print("check_newest_torch: torch", torch.__version__)'
ctest --test-dir "$BUILD" --output-on-failure -j2
"$VENV/bin/python" -m pytest tests/python -q -p no:cacheprovider
