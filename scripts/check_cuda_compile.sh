#!/usr/bin/env bash
# Compiles every CUDA flash attention kernel instantiation standalone with nvcc, for each target architecture,
# with `-Xptxas -v` so the log shows registers, spills and shared memory per kernel; fails on any compile error.
# Needs no GPU. When TORCH_PYTHON (default: python) imports a CUDA build of torch, also compiles the host glue
# files (csrc/ops/cuda/*.cu) against that torch's headers with -c; CI points it at the venv of
# scripts/check_newest_torch.sh (torch 2.14.1, CUDA 13), so a glue compile error cannot land unseen.
#
# Usage: scripts/check_cuda_compile.sh [log_dir]   (env: NVCC, XTC_CUDA_ARCHS="80 90a", JOBS=1, TORCH_PYTHON,
#                                                   XTC_REQUIRE_GLUE=1 to fail when no CUDA torch is found)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/bin/nvcc)}"
ARCHS="${XTC_CUDA_ARCHS:-80 90a}"
ARCHS="${ARCHS//;/ }"
JOBS="${JOBS:-1}"   # instantiations compiled at once; each nvcc runs with -t1
TORCH_PYTHON="${TORCH_PYTHON:-python}"
LOG_DIR="${1:-$(mktemp -d /tmp/xtc_cuda_compile.XXXXXX)}"
OBJ_DIR="$(mktemp -d /tmp/xtc_cuda_obj.XXXXXX)"
trap 'rm -rf "$OBJ_DIR"' EXIT
mkdir -p "$LOG_DIR"
CUDA_DIR="$ROOT/csrc/ops/cuda"
# The -D flags are the ones torch extension builds add: the kernels must not rely on implicit half conversions.
COMMON_FLAGS=(-std=c++17 -O3 -t1 -Xptxas -v -Xcompiler -Wall -Xcompiler -Wextra -D__CUDA_NO_HALF_OPERATORS__
  -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__)

[[ -x "$NVCC" ]] || { echo "check_cuda_compile: nvcc not found (set NVCC)"; exit 1; }
echo "check_cuda_compile: $("$NVCC" --version | tail -1), archs: $ARCHS, logs in $LOG_DIR"

compile_one() {  # arch file -> writes $LOG_DIR/<arch>_<name>.log, returns nvcc's status
  local arch="$1" src="$2" name
  name="$(basename "$src" .cu)"
  "$NVCC" "${COMMON_FLAGS[@]}" -gencode "arch=compute_${arch},code=sm_${arch}" -I"$ROOT/csrc" \
    -c "$src" -o "$OBJ_DIR/${arch}_${name}.o" >"$LOG_DIR/${arch}_${name}.log" 2>&1
}

failures=0
for arch in $ARCHS; do
  pids=() names=()
  for src in "$CUDA_DIR"/instantiations/*.cu; do
    compile_one "$arch" "$src" &
    pids+=($!) names+=("$(basename "$src" .cu)")
    if (( ${#pids[@]} >= JOBS )); then
      wait "${pids[0]}" || { echo "FAILED sm_${arch} ${names[0]} (see $LOG_DIR/${arch}_${names[0]}.log)"; failures=$((failures + 1)); }
      pids=("${pids[@]:1}") names=("${names[@]:1}")
    fi
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { echo "FAILED sm_${arch} ${names[$i]} (see $LOG_DIR/${arch}_${names[$i]}.log)"; failures=$((failures + 1)); }
  done
done

# Host glue: only when a CUDA build of torch is importable.
glue_status="skipped (no CUDA build of torch importable)"
if "$TORCH_PYTHON" -W ignore -c 'import torch; assert torch.version.cuda' >/dev/null 2>&1; then
  mapfile -t torch_flags < <("$TORCH_PYTHON" -W ignore - 2>/dev/null <<'PY'
import torch
from torch.utils.cpp_extension import include_paths
try:
    paths = include_paths(device_type="cuda")  # torch >= 2.6
except TypeError:
    paths = include_paths(cuda=True)
for p in paths:  # -isystem: torch's own warnings stay out of the log
    print("-isystem")
    print(p)
print(f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}")
PY
)
  first_arch="${ARCHS%% *}"
  glue_defs=()
  [[ " $ARCHS " == *" 90a "* ]] && glue_defs=(-DXTC_CUDA_SM90A=1)  # as the build sets it: the Hopper dispatch too
  glue_status="ok (torch $("$TORCH_PYTHON" -W ignore -c 'import torch; print(torch.__version__)' 2>/dev/null))"
  : >"$LOG_DIR/glue.log"
  for glue in "$CUDA_DIR"/*.cu; do  # every host glue file (flash_attention_kernel.cu, ..._varlen_kernel.cu)
    echo "== $(basename "$glue")" >>"$LOG_DIR/glue.log"
    if ! "$NVCC" -std=c++20 -O3 -t1 -gencode "arch=compute_${first_arch},code=sm_${first_arch}" "${torch_flags[@]}" \
        "${glue_defs[@]}" -I"$ROOT/csrc/include" -I"$ROOT/csrc" --expt-relaxed-constexpr -Xcompiler -fPIC \
        -Xcompiler -Wall -Xcompiler -Wextra -c "$glue" -o "$OBJ_DIR/glue_$(basename "$glue" .cu).o" \
        >>"$LOG_DIR/glue.log" 2>&1; then
      glue_status="FAILED: $(basename "$glue") (see $LOG_DIR/glue.log)"
      failures=$((failures + 1))
    fi
  done
  grep -iE "warning" "$LOG_DIR/glue.log" | grep -v "torch/include" | head -20
fi

echo
echo "per-kernel resources (registers, spill bytes stores/loads; shared memory is dynamic, sized at launch):"
printf '%-6s %-30s %-60s %5s %11s\n' arch file kernel regs spills
for log in "$LOG_DIR"/*_flash_*.log; do
  base="$(basename "$log" .log)"
  awk -v base="$base" '
    /Compiling entry function/ { match($0, /'"'"'[^'"'"']+'"'"'/); fn = substr($0, RSTART + 1, RLENGTH - 2) }
    /spill stores/ { st = $5; ld = $9 }
    /Used [0-9]+ registers/ {
      for (i = 1; i <= NF; i++) if ($i == "Used") regs = $(i + 1)
      kernel = fn; gsub(/^_ZN3xtc4cuda6detail/, "", kernel)
      split(base, parts, "_"); arch = parts[1]; file = substr(base, length(arch) + 2)
      printf "%-6s %-30s %-60s %5s %5s/%-5s\n", "sm_" arch, file, substr(kernel, 1, 60), regs, st, ld
    }' "$log"
  grep -E "(error|warning)" "$log" | head -5
done
if [[ "${XTC_REQUIRE_GLUE:-0}" == 1 && "$glue_status" == skipped* ]]; then  # CI: a skip would hide the glue
  glue_status="FAILED: $glue_status, but XTC_REQUIRE_GLUE=1"
  failures=$((failures + 1))
fi
echo
echo "host glue: $glue_status"
if (( failures > 0 )); then
  echo "check_cuda_compile: $failures FAILED"
  exit 1
fi
echo "check_cuda_compile: all instantiations compiled for $ARCHS"
