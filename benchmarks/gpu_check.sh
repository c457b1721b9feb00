#!/usr/bin/env bash
# One-shot check on a CUDA machine (H100 image: torch with CUDA, nvcc, cmake, ninja, 16 cores, no network):
# build the package for sm_90a, run the CUDA op tests (default routing, all Hopper kernels, all mma.sync kernels)
# and the encoder parity tests when x-transformers is present, then the full attention benchmark grid and the
# kernel A/B variants, and print the summary table last. Logs and JSON go to $OUT when set (else
# benchmarks/results/gpu_check). About 5 minutes on an H100 (278 s measured with two test passes, before the
# packed (varlen) kernels doubled the instantiations, the one-launch and fp32 routes' tests and the 'medium' timing
# were added: budget about 8 minutes now. The kernel A/B variants run only with XTC_GPU_CHECK_AB=1;
# XTC_GPU_CHECK_GRID=0 skips the op grid).
#
# Usage (repo root): bash benchmarks/gpu_check.sh
#   here, without a GPU: XTC_GPU_CHECK_DRY_RUN=1 XTC_PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOGS="${OUT:-benchmarks/results/gpu_check}"
mkdir -p "$LOGS"
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
declare -A STATUS
# XTC_GPU_CHECK_DRY_RUN=1: the script's plumbing on a machine without a GPU (no build: the installed package; the
# GPU tests skip themselves; the encoder benchmark in its --dry-run; the table). XTC_PYTHON: the interpreter.
DRY_RUN="${XTC_GPU_CHECK_DRY_RUN:-0}"
PY="${XTC_PYTHON:-python3}"

# The image's default compiler wrapper (/opt/gcc) links pieces of libstdc++ into shared objects; a TORCH_CHECK
# thrown from such an extension then segfaults in std::ostream (seen on the H100 image, 2026-11). The system
# compiler gives a working build.
if [[ -x /usr/bin/g++ ]]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++; fi

# Pure-Python wheels that the image lacks (x-transformers and its helpers) travel in .whl when carried
# (benchmarks/fetch_gpu_wheels.sh downloads them beforehand).
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

if [[ $DRY_RUN == 1 ]]; then
  echo "dry run on $(hostname): no GPU, the plumbing only" | tee "$LOGS/gpu.txt"
else
  nvidia-smi -L | tee "$LOGS/gpu.txt"
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$LOGS/gpu.txt"

if [[ $DRY_RUN == 1 ]]; then
  STATUS[build]="skipped (dry run)"
else
  TORCH_CUDA_ARCH_LIST=9.0a XTC_CUDA_ARCHS=90a MAX_JOBS=16 timeout 360 "$PY" -m pip install --no-build-isolation --no-deps -v . \
    2>&1 | tee "$LOGS/build.log" | grep -E "error|ptxas|Successfully installed" | tail -20
  STATUS[build]=$([[ ${PIPESTATUS[0]} -eq 0 ]] && echo ok || echo FAILED)
fi
echo "build: ${STATUS[build]} at $(elapsed)s"

if [[ ${STATUS[build]} != FAILED ]]; then
  # Run from outside the tree so the installed package (not python/ sources) is imported. Three passes: the
  # default routing, every call on the Hopper (wgmma) kernels where they can run, every call on the mma.sync
  # kernels (the path of other GPUs and of short masked calls). XTC_TEST_BACKENDS (tests/python/conftest.py) sets
  # the session's x_transformers_cpp.backends families, in priority order with XTC_TEST_BACKEND_PRIORITY=1; the
  # benchmarks take the same lists as --backends.
  HOPPER=varlen,cuda_hopper_forward,cuda_hopper_backward,cuda_mma_sync,cuda_simple,cpu_flash,cpu_bf16_matmul,math
  HOPPER_FWD=varlen,cuda_hopper_forward,cuda_mma_sync,cuda_simple,cpu_flash,cpu_bf16_matmul,math
  MMA=varlen,cuda_mma_sync,cuda_simple,cpu_flash,cpu_bf16_matmul,math
  DEFAULT=cpu_flash,cpu_bf16_matmul,cuda_hopper_forward,cuda_hopper_backward,cuda_mma_sync,cuda_simple,varlen,math
  gpu_tests() {  # test file, log-name, time limit, then VAR=value settings
    local file="$1" log="$2" limit="$3"; shift 3
    env "$@" timeout "$limit" "$PY" -m pytest -q -p no:cacheprovider "$PWD/tests/python/$file" \
      2>&1 | tee "$LOGS/$log.log" | tail -3
    return "${PIPESTATUS[0]}"
  }
  cuda_tests() { local log="$1"; shift; gpu_tests test_flash_attention_cuda.py "$log" 150 "$@"; }
  cuda_tests test_cuda XTC_GPU_CHECK_DEFAULT=1 && STATUS[test_cuda]=ok || STATUS[test_cuda]=FAILED
  cuda_tests test_cuda_hopper XTC_TEST_BACKENDS=$HOPPER XTC_TEST_BACKEND_PRIORITY=1 \
    && STATUS[test_cuda_hopper]=ok || STATUS[test_cuda_hopper]=FAILED
  cuda_tests test_cuda_mma XTC_TEST_BACKENDS=$MMA XTC_TEST_BACKEND_PRIORITY=1 \
    && STATUS[test_cuda_mma]=ok || STATUS[test_cuda_mma]=FAILED
  # If the Hopper kernels failed, the rest of the run keeps off those of the failing direction, so that the other
  # one and the benchmark still report.
  if [[ ${STATUS[test_cuda_hopper]} != ok ]]; then
    if cuda_tests test_cuda_hopper_fwd XTC_TEST_BACKENDS=$HOPPER_FWD XTC_TEST_BACKEND_PRIORITY=1; then
      echo "Hopper backward failed its tests: cuda_hopper_backward off for the rest of the run"
      DEFAULT=${DEFAULT/cuda_hopper_backward,/}
    else
      echo "Hopper kernels failed their tests: both off for the rest of the run"
      DEFAULT=${DEFAULT/cuda_hopper_forward,cuda_hopper_backward,/}
    fi
    export XTC_TEST_BACKENDS=$DEFAULT
  fi
  # Encoder / Decoder on CUDA against x-transformers on CUDA, when x-transformers travels in .whl.
  if "$PY" -c 'import x_transformers' 2>/dev/null; then
    timeout 90 "$PY" -m pytest -q -p no:cacheprovider "$PWD/tests/python/test_encoder_cuda.py" \
      2>&1 | tee "$LOGS/test_parity.log" | tail -5
    STATUS[test_parity]=$([[ ${PIPESTATUS[0]} -eq 0 ]] && echo ok || echo FAILED)
  else
    echo "x-transformers not importable: encoder parity on CUDA skipped"
  fi
  # Packed sequences: the varlen op against the dense op per sequence, unpad against x-transformers, in the padded
  # frame (default), in the varlen op (cuda_varlen enabled) and in its one-launch kernels (cuda_varlen_one_launch
  # too); then their benchmark with the varlen op, per sequence and in one launch.
  packed_tests() { local log="$1"; shift; gpu_tests test_packed_sequences_cuda.py "$log" 90 "$@"; }
  packed_tests test_packed XTC_GPU_CHECK_DEFAULT=1 && STATUS[test_packed]=ok || STATUS[test_packed]=FAILED
  packed_tests test_packed_varlen XTC_TEST_BACKENDS=$DEFAULT,cuda_varlen && STATUS[test_packed_varlen]=ok || STATUS[test_packed_varlen]=FAILED
  packed_tests test_packed_one_launch XTC_TEST_BACKENDS=$DEFAULT,cuda_varlen,cuda_varlen_one_launch \
    && STATUS[test_packed_one_launch]=ok || STATUS[test_packed_one_launch]=FAILED
  packed_tests test_packed_one_launch_mma XTC_TEST_BACKENDS=$MMA,cuda_varlen,cuda_varlen_one_launch \
    && STATUS[test_packed_one_launch_mma]=ok || STATUS[test_packed_one_launch_mma]=FAILED
  if [[ $DRY_RUN == 1 ]]; then
    STATUS[bench_packed]="skipped (dry run)"
  elif "$PY" -c 'import x_transformers' 2>/dev/null; then
    PYTHONUNBUFFERED=1 timeout 120 "$PY" benchmarks/bench_packed_cuda.py --backends "$DEFAULT,cuda_varlen" \
      --out "$LOGS/packed_cuda.json" > "$LOGS/bench_packed.log" 2>&1
    STATUS[bench_packed]=$([[ ${PIPESTATUS[0]} -eq 0 ]] && echo ok || echo FAILED)
  fi
  # The encoder end to end against x-transformers (attn_flash off / on) and torch, every precision, forward and
  # training step; XTC_GPU_CHECK_ENCODER=0 skips it.
  encoder_args=(--repeats 5)
  [[ $DRY_RUN == 1 ]] && encoder_args=(--dry-run --modes forward)
  if [[ "${XTC_GPU_CHECK_ENCODER:-1}" != 0 ]] && "$PY" -c 'import x_transformers' 2>/dev/null; then
    PYTHONUNBUFFERED=1 timeout 180 "$PY" benchmarks/bench_encoder_cuda.py "${encoder_args[@]}" \
      --out "$LOGS/encoder_cuda.json" > "$LOGS/bench_encoder.log" 2>&1
    STATUS[bench_encoder]=$([[ ${PIPESTATUS[0]} -eq 0 ]] && echo ok || echo FAILED)
    # fp32 at matmul precision 'medium', where the cuda_fp32_as_bf16 route may take the bf16 kernels.
    PYTHONUNBUFFERED=1 timeout 60 "$PY" benchmarks/bench_encoder_cuda.py "${encoder_args[@]}" --cases seed,padded \
      --precisions fp32-medium --out "$LOGS/encoder_cuda_medium.json" > "$LOGS/bench_encoder_medium.log" 2>&1
    STATUS[bench_encoder_medium]=$([[ ${PIPESTATUS[0]} -eq 0 ]] && echo ok || echo FAILED)
  fi
  # The full grid of issue 3 (d 64 / 128, n 512 .. 16k, five cases, every SDPA backend); XTC_GPU_CHECK_GRID=0
  # skips it (a check of the tests and the A/B only).
  if [[ "${XTC_GPU_CHECK_GRID:-1}" != 0 && $DRY_RUN != 1 ]]; then
    PYTHONUNBUFFERED=1 timeout 270 "$PY" benchmarks/bench_attention.py --backends "$DEFAULT" --reps 10 --out "$LOGS/attention_cuda.json" \
      > "$LOGS/bench.log" 2>&1
    STATUS[bench]=$([[ ${PIPESTATUS[0]} -eq 0 ]] && echo ok || echo FAILED)
  fi
  # Kernel variants for A/B timing (same op, other kernels), as "backend-list head-dims" (the list in priority
  # order, "default" for the library's own choice), over XTC_GPU_CHECK_AB_LENGTHS and XTC_GPU_CHECK_AB_CASES; ';'
  # separates variants in XTC_GPU_CHECK_AB_VARIANTS. They run with XTC_GPU_CHECK_AB=1 (off by default: the
  # first run's minutes go to the tests and the end-to-end tables).
  variants=("$HOPPER 64 128" "$MMA 64 128")
  [[ -n "${XTC_GPU_CHECK_AB_VARIANTS:-}" ]] && IFS=';' read -r -a variants <<<"$XTC_GPU_CHECK_AB_VARIANTS"
  [[ "${XTC_GPU_CHECK_AB:-0}" == 0 ]] && variants=()
  for variant in "${variants[@]}"; do
    read -r setting dims <<<"$variant"
    backend_args=(--backends "$setting" --backend-priority)
    [[ $setting == default ]] && backend_args=()
    # shellcheck disable=SC2086  # the head dims, lengths and cases split on purpose
    timeout 90 "$PY" benchmarks/bench_attention.py "${backend_args[@]}" --head-dims $dims \
      --lengths ${XTC_GPU_CHECK_AB_LENGTHS:-2048 8192} --cases ${XTC_GPU_CHECK_AB_CASES:-none padding alibi} \
      --ours-only --reps 10 --out "$LOGS/ab_$(echo "$setting" | cut -d, -f1-2 | tr -c 'A-Za-z0-9_\n' '_').json" 2>&1 \
      | sed -n '/^Summary/,/^wrote/p' | sed "s/^Summary.*/A\/B $setting:/" | grep -v '^wrote' | tee -a "$LOGS/ab.log"
  done
  [[ -f "$LOGS/bench.log" ]] && sed -n '/^Summary/,/^wrote/p' "$LOGS/bench.log"
  [[ -f "$LOGS/bench_packed.log" ]] && grep -E '^(device|target)' "$LOGS/bench_packed.log"
  [[ -f "$LOGS/bench_encoder.log" ]] && sed -n '/^Summary/,/^wrote/p' "$LOGS/bench_encoder.log" | grep -v '^wrote'
  [[ -f "$LOGS/bench_encoder_medium.log" ]] && sed -n '/^Summary/,/^wrote/p' "$LOGS/bench_encoder_medium.log" \
    | grep -v '^wrote'
fi

echo
echo "gpu_check summary ($(head -1 "$LOGS/gpu.txt"), $(elapsed)s)"
printf '  %-26s %s\n' step status
for step in build test_cuda test_cuda_hopper test_cuda_mma test_parity test_packed test_packed_varlen \
    test_packed_one_launch test_packed_one_launch_mma bench_packed bench_encoder bench_encoder_medium bench; do
  [[ -n "${STATUS[$step]:-}" ]] && printf '  %-26s %s\n' "$step" "${STATUS[$step]}"
done
for s in "${STATUS[@]}"; do [[ $s == ok || $s == skipped* ]] || exit 1; done
