#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (Python 3.11, no GPU) and builds everything once: system packages, a venv in
# .venv with pinned Python packages, then one CMake build (library, Python extension, GoogleTest binaries, example
# ctest entries) installed into the venv. Safe to re-run: finished steps are skipped or incremental.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(cmake ninja-build g++ ccache libgtest-dev libfmt-dev nlohmann-json3-dev python3-venv clang-format)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# torch pinned to the CPU build; x-transformers pinned as the parity oracle.
.venv/bin/pip install -q --disable-pip-version-check \
  torch==2.13.0 x-transformers==2.31.10 pytest==9.0.3 hypothesis==6.140.0 numpy==2.4.6 matplotlib==3.10.8 \
  safetensors==0.8.0 onnx==1.23.2 onnx-ir==1.1.0 onnxscript==0.7.2 onnxruntime==1.32.0 setuptools wheel
XTC_BUILD_TESTS=1 MAX_JOBS=${MAX_JOBS:-2} .venv/bin/pip install -q --disable-pip-version-check \
  --no-build-isolation --no-deps .
echo "setup done: $(.venv/bin/python -c 'import torch, x_transformers_cpp; print("torch", torch.__version__, "| x_transformers_cpp", x_transformers_cpp.__version__)')"
