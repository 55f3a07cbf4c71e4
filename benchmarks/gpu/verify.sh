#!/usr/bin/env bash
# Verifies on a real GPU what CI can only run on the emulated device. Runs from the repository
# root on a machine with an NVIDIA GPU, the CUDA toolkit/driver and the bundle made by
# benchmarks/gpu/prepare.sh (portable_bundle/, or BUNDLE=dir). Each stage finishes in under 10
# minutes and writes its part of one report (REPORT=..., default $OUT/gpu_verify.md when $OUT is
# set, else benchmarks/results/gpu_verify.md); a stage that cannot run says "not run: why".
#   usage: bash benchmarks/gpu/verify.sh [--stage ops|sanitize|curve|bench|all]   (default all)
#   ops       every cuda/gpu-labelled test program on the GPU, and the observed error of every
#             op case against its tolerance (PTRAIN_OPS_STATS=1 test_ops_cuda)
#   sanitize  compute-sanitizer memcheck, racecheck, initcheck and synccheck on the kernel tests
#   curve     the tiny model's loss curve on the GPU against the CPU's
#   bench     a 125M-parameter llama in bf16: tokens/s, MFU, peak memory, next to PyTorch
# Append the report to benchmarks/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/../.."
stage=all
while [[ $# -gt 0 ]]; do
  case "$1" in
    --stage) stage=${2:-}; shift 2 ;;
    --stage=*) stage=${1#--stage=}; shift ;;
    *) echo "verify.sh: unknown argument $1 (use --stage ops|sanitize|curve|bench|all)" >&2; exit 2 ;;
  esac
done
case "$stage" in ops|sanitize|curve|bench|all) ;; *) echo "verify.sh: unknown stage '$stage'" >&2; exit 2 ;; esac
bundle=${BUNDLE:-portable_bundle}
report=${REPORT:-${OUT:+$OUT/gpu_verify.md}}
report=${report:-benchmarks/results/gpu_verify.md}
mkdir -p "$(dirname "$report")"
logdir=$(dirname "$report")/gpu_verify_logs
mkdir -p "$logdir"
say() { echo "$*" | tee -a "$report"; }

[[ -f "$report" ]] || {
  echo "# GPU verification — $(date -u +%Y-%m-%d)" > "$report"
  echo >> "$report"
}
if [[ -f "$bundle/env.sh" ]]; then
  # shellcheck disable=SC1091
  source "$bundle/env.sh" >/dev/null 2>&1 || true
  bin="$bundle/bin"
else
  bin=""
fi
gpu=$(nvidia-smi --query-gpu=name,memory.total,compute_cap,driver_version --format=csv,noheader 2>/dev/null | head -1)
say "Commit $(cat "$bundle/COMMIT" 2>/dev/null || git rev-parse HEAD 2>/dev/null || echo unknown); GPU: ${gpu:-none found}"
say ""

prog() { [[ -n "$bin" && -x "$bin/$1" ]] && echo "$bin/$1"; }

run_ops() {
  say "## Stage ops: the kernel tests on the GPU"
  if [[ -z "$gpu" ]]; then say "not run: no GPU (nvidia-smi found none)"; return; fi
  if [[ -z "$bin" ]]; then say "not run: no bundle at $bundle (run benchmarks/gpu/prepare.sh on a dev machine and carry it here)"; return; fi
  say ""
  say "| program | result | tests passed / skipped / failed | seconds |"
  say "|---|---|---|---|"
  for t in test_cuda_device test_gpu_silicon test_device_memory test_ops_cuda test_gemm test_gemm_gpu test_optim_cuda \
           test_attention_cuda test_device_ops; do
    p=$(prog "$t") || { say "| $t | not run: not in the bundle | | |"; continue; }
    start=$SECONDS
    timeout 300 "$p" > "$logdir/$t.log" 2>&1; rc=$?
    passed=$(grep -o '\[  PASSED  \] [0-9]*' "$logdir/$t.log" | grep -o '[0-9]*$' || echo 0)
    skipped=$(grep -o '\[  SKIPPED \] [0-9]* test' "$logdir/$t.log" | grep -o '[0-9]*' | head -1 || echo 0)
    failed=$(grep -o '[0-9]* FAILED TEST' "$logdir/$t.log" | grep -o '^[0-9]*' || echo 0)
    res=$([[ $rc -eq 0 ]] && echo pass || echo "FAIL (rc $rc)")
    say "| $t | $res | ${passed:-0} / ${skipped:-0} / ${failed:-0} | $((SECONDS - start)) |"
  done
  if p=$(prog test_ops_cuda); then
    PTRAIN_OPS_STATS=1 timeout 300 "$p" > "$logdir/test_ops_cuda_stats.log" 2>&1
    say ""
    say "Observed errors per op case (largest share of the tolerance used): see $logdir/test_ops_cuda_stats.log"
    grep '\[stats\]' "$logdir/test_ops_cuda_stats.log" | sed -E 's/.*, ([0-9.e+-]+) of tol\).*/\1 &/' | sort -g |
      tail -5 | cut -d' ' -f2- | sed 's/^/    /' | tee -a "$report"
  fi
  say ""
}

run_sanitize() {
  say "## Stage sanitize: compute-sanitizer on the kernel tests"
  cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
  if [[ -z "$gpu" ]]; then say "not run: no GPU"; return; fi
  if [[ -z "$cs" ]]; then say "not run: compute-sanitizer not found"; return; fi
  if [[ -z "$bin" ]]; then say "not run: no bundle at $bundle"; return; fi
  say ""
  say "| tool | program | errors | result |"
  say "|---|---|---|---|"
  for tool in memcheck racecheck initcheck synccheck; do
    for t in test_ops_cuda test_attention_cuda test_optim_cuda; do
      p=$(prog "$t") || continue
      # A subset of cases per tool keeps each stage under 10 minutes under the sanitizer.
      filter='*f32*:*Bf16*:*bf16*'
      timeout 150 "$cs" --tool "$tool" --error-exitcode 9 "$p" --gtest_filter="$filter" > "$logdir/$tool.$t.log" 2>&1; rc=$?
      errs=$(grep -o 'ERROR SUMMARY: [0-9]*' "$logdir/$tool.$t.log" | tail -1 | grep -o '[0-9]*$')
      res=$([[ $rc -eq 0 ]] && echo clean || ([[ $rc -eq 124 ]] && echo "timed out (150 s)" || echo "FINDINGS (rc $rc)"))
      say "| $tool | $t | ${errs:-?} | $res |"
    done
  done
  say ""
}

run_curve() {
  say "## Stage curve: tiny model, GPU loss curve against the CPU"
  say "not run: training on the device (ptrain --set device=cuda) is not implemented yet (issue 6); the device op set is tested by stage ops"
  say ""
}

run_bench() {
  say "## Stage bench: 125M llama in bf16 (tokens/s, MFU, peak memory; PyTorch alongside)"
  say "not run: needs training on the device (issue 6)"
  say ""
}

case "$stage" in
  ops) run_ops ;;
  sanitize) run_sanitize ;;
  curve) run_curve ;;
  bench) run_bench ;;
  all) run_ops; run_sanitize; run_curve; run_bench ;;
esac
echo "verify.sh: report in $report"
