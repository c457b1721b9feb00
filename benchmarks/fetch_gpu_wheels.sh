#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the pure-Python packages that benchmarks/gpu_check.sh needs and the GPU
# machine's image lacks: the pinned x-transformers (the parity tests' and benchmarks' oracle) and what it needs
# beyond the image's torch, einops, numpy, sympy and packaging. Run here, where pip can reach PyPI, before a GPU
# call that carries .whl; gpu_check.sh installs them there with --no-index. Wheels for that image's Python (3.12).
#
# Usage (repo root): bash benchmarks/fetch_gpu_wheels.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
rm -rf .whl
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl x-transformers==2.31.10 einx==0.4.3 loguru==0.7.3 torch-einops-utils==0.2.0 frozendict==2.5.1
ls .whl
