#!/usr/bin/env bash
# clang-format (Debian's, with the checked-in .clang-format) over the C++ sources git tracks or would add: fails,
# naming the files, when one is not formatted; with --fix, formats them in place. The CUDA kernels
# (csrc/ops/cuda/*.cuh, wgmma.h and the generated instantiations) keep their layout: no GPU here can check that a
# rewrite compiles to the same kernels, so they change only by pure moves. .ci/run and the pre-commit hook call this.
#
# Usage: scripts/check_format.sh [--fix]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-format >/dev/null || { echo "check_format: clang-format not found (apt install clang-format)"; exit 1; }
mapfile -t files < <(git ls-files --cached --others --exclude-standard '*.cpp' '*.h' '*.cu' '*.cuh' \
  | grep -v -E '^csrc/ops/cuda/(.*\.cuh|wgmma\.h|instantiations/.*)$')
if [[ "${1:-}" == --fix ]]; then
  clang-format -i "${files[@]}"
  exit 0
fi
bad=()
for f in "${files[@]}"; do clang-format --dry-run -Werror "$f" >/dev/null 2>&1 || bad+=("$f"); done
if (( ${#bad[@]} )); then
  echo "check_format: ${#bad[@]} of ${#files[@]} files not formatted (scripts/check_format.sh --fix):"
  printf '  %s\n' "${bad[@]}"
  exit 1
fi
echo "check_format: ${#files[@]} files clean ($(clang-format --version | head -1))"
