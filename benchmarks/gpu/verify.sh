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
#   curve     the tiny model's loss curve on the GPU (fp32, bf16) against the CPU's (fp32, bf16):
#             per-step relative loss differences (benchmarks/gpu/report.py curve)
#   bench     configs/125m.yaml in bf16 on one GPU: tokens/s, MFU, peak memory, next to PyTorch's
#             LlamaForCausalLM on the same shapes (benchmarks/gpu/torch_llama.py) in the same run
# curve and bench train on the bundle's data/tiny.h5 (prepare.sh), else on one made here with
# ptrain prepare; they need python3 (standard library; the PyTorch peer: torch + transformers).
# Knobs (environment): PYTHON (default python3; for the PyTorch peer the first python with torch
# and transformers among python3 and the usual virtual environments); CURVE_STEPS=60
# CURVE_THREADS=8 CURVE_EVERY=10 CURVE_TIMEOUT=120 (per run) CURVE_SET="key=value ..." (extra
# --set); BENCH_CFG=configs/125m.yaml
# BENCH_STEPS=30 BENCH_WARMUP=5 BENCH_GLOBAL_BATCH=32 BENCH_SET="key=value ..." BENCH_TIMEOUT=270
# BENCH_TORCH_ATTN=eager,sdpa BENCH_TORCH_TIMEOUT=240 BENCH_TORCH_ARGS="more torch_llama.py args".
# To test this script without a GPU: PTRAIN_BIN_DIR=build-emu VERIFY_EMULATED=1 with small
# shapes in CURVE_SET / BENCH_SET (benchmarks/README.md).
# Append the report to benchmarks/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
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
python=${PYTHON:-python3}
orig_ld=${LD_LIBRARY_PATH:-}
orig_path=$PATH
if [[ -n "${PTRAIN_BIN_DIR:-}" ]]; then
  bin=$PTRAIN_BIN_DIR   # programs built here (e.g. build-emu with VERIFY_EMULATED=1), no bundle
elif [[ -f "$bundle/env.sh" ]]; then
  # shellcheck disable=SC1091
  source "$bundle/env.sh" >/dev/null 2>&1 || true
  bin="$bundle/bin"
else
  bin=""
fi
gpu=$(nvidia-smi --query-gpu=name,memory.total,compute_cap,driver_version --format=csv,noheader 2>/dev/null | head -1)
commit=$([[ -z "${PTRAIN_BIN_DIR:-}" ]] && cat "$bundle/COMMIT" 2>/dev/null || git rev-parse HEAD 2>/dev/null || echo unknown)
say "Commit $commit$([[ -n "${PTRAIN_BIN_DIR:-}" ]] && echo " (work tree; programs from $PTRAIN_BIN_DIR)"); GPU: ${gpu:-none found}"
say ""

prog() { [[ -n "$bin" && -x "$bin/$1" ]] && echo "$bin/$1"; }

run_ops() {
  say "## Stage ops: the kernel tests on the GPU"
  if [[ -z "$gpu" ]]; then say "not run: no GPU (nvidia-smi found none)"; say ""; return; fi
  if [[ -z "$bin" ]]; then say "not run: no bundle at $bundle (run benchmarks/gpu/prepare.sh on a dev machine and carry it here)"; say ""; return; fi
  say ""
  say "| program | result | tests passed / skipped / failed | seconds |"
  say "|---|---|---|---|"
  for t in test_cuda_device test_gpu_silicon test_device_memory test_ops_cuda test_gemm test_gemm_gpu test_optim_cuda \
           test_attention_cuda test_device_ops test_device_training; do
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
  if [[ -z "$gpu" ]]; then say "not run: no GPU"; say ""; return; fi
  if [[ -z "$cs" ]]; then say "not run: compute-sanitizer not found"; say ""; return; fi
  if [[ -z "$bin" ]]; then say "not run: no bundle at $bundle"; say ""; return; fi
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

# ---- shared by curve and bench --------------------------------------------------------------
work=""
workdir() {  # a scratch folder for run directories (checkpoints), removed at exit
  if [[ -z "$work" ]]; then
    work=$(mktemp -d "${TMPDIR:-/tmp}/ptrain_verify.XXXXXX")
    trap 'rm -rf "$work"' EXIT
  fi
}
# python3 as the machine has it: without the bundle's LD_LIBRARY_PATH (PyTorch brings its own
# libstdc++ needs and CUDA libraries)
syspy() { env LD_LIBRARY_PATH="$orig_ld" PATH="$orig_path" "$python" "$@"; }
have_python() { [[ -n "$(env PATH="$orig_path" bash -c "command -v '$python'" 2>/dev/null)" ]]; }
# The token file of both stages: the bundle's data/tiny.h5 (made by prepare.sh), else prepared
# here with ptrain from the same text (benchmarks/gpu/corpus.sh). Prints its path. Call workdir
# first (this runs in a command substitution: a trap set here would fire when it ends).
tiny_data() {
  if [[ -z "${PTRAIN_BIN_DIR:-}" && -f "$bundle/data/tiny.h5" ]]; then echo "$bundle/data/tiny.h5"; return 0; fi
  [[ -f "$work/tiny.h5" ]] && { echo "$work/tiny.h5"; return 0; }
  bash benchmarks/gpu/corpus.sh > "$work/tiny.txt" &&
    "$bin/ptrain" prepare --input "$work/tiny.txt" --out "$work/tiny.h5" --tokenizer byte > "$logdir/prepare_data.log" 2>&1 &&
    echo "$work/tiny.h5"
}
# why curve/bench cannot run here, or nothing
device_gate() {
  if [[ -z "$gpu" && "${VERIFY_EMULATED:-0}" != 1 ]]; then echo "no GPU (nvidia-smi found none)"; return; fi
  if [[ -z "$bin" ]]; then echo "no bundle at $bundle (run benchmarks/gpu/prepare.sh on a dev machine and carry it here)"; return; fi
  if [[ ! -x "$bin/ptrain" ]]; then echo "no ptrain in $bin"; return; fi
  if ! have_python; then echo "$python not found (it compares the metrics)"; return; fi
}
# lines of a file holding PATTERN (0 when none or no file)
count_lines() { local n=0; [[ -f "$2" ]] && n=$(grep -c "$1" "$2"); echo "${n:-0}"; }
steps_done() { count_lines '"step"' "$1/metrics.jsonl"; }   # steps written to a run's metrics.jsonl
# The python3 for the PyTorch peer: $PYTHON, else the first of python3 and the usual virtual
# environments that has both torch and transformers (looked up, not imported), else $python.
torch_python() {
  local py
  for py in ${PYTHON:-} python3 python /opt/*/.venv/bin/python3 /opt/*/*/.venv/bin/python3 /opt/conda/bin/python3 \
            /workspace/.venv/bin/python3 /workspace/*/.venv/bin/python3 "${HOME:-/root}/.venv/bin/python3"; do
    [[ -n "$(env PATH="$orig_path" bash -c "command -v '$py'" 2>/dev/null)" ]] || continue
    if env LD_LIBRARY_PATH="$orig_ld" PATH="$orig_path" "$py" -c 'import importlib.util as u, sys
sys.exit(0 if u.find_spec("torch") and u.find_spec("transformers") else 1)' 2>/dev/null; then
      echo "$py"; return
    fi
    [[ -n "${PYTHON:-}" ]] && break   # an explicit PYTHON is used as it is
  done
  echo "$python"
}

run_curve() {
  say "## Stage curve: tiny model, GPU loss curve against the CPU"
  local why data steps warm threads label dev prec dir rc start
  why=$(device_gate)
  if [[ -n "$why" ]]; then say "not run: $why"; say ""; return; fi
  workdir
  if ! data=$(tiny_data); then say "not run: could not prepare the token file (see $logdir/prepare_data.log)"; say ""; return; fi
  steps=${CURVE_STEPS:-60}
  warm=$(( steps >= 40 ? 20 : steps / 2 ))
  threads=${CURVE_THREADS:-8}
  (( threads > $(nproc) )) && threads=$(nproc)
  # shellcheck disable=SC2206
  local extra=(${CURVE_SET:-})
  local common=(--cfg configs/tiny.yaml --set "train.steps=$steps" --set train.eval_every=0 --set train.val_fraction=0
                --set "optim.warmup_steps=$warm" --set checkpoint.every=0 --set checkpoint.keep=1 --set "data.path=$data")
  for s in "${extra[@]}"; do common+=(--set "$s"); done
  say ""
  say "configs/tiny.yaml (fp32 GEMMs without TF32: train.tf32 false), $steps steps (lr warm-up $warm), data"
  say "$(basename "$data") (byte tokens of the repository's docs and C++, benchmarks/gpu/corpus.sh), the same seed and"
  say "batches in every run, CPU runs with train.threads=$threads${CURVE_SET:+, also --set $CURVE_SET}:"
  say ""
  say "| run | command | result | steps | seconds |"
  say "|---|---|---|---|---|"
  local runs=()
  for label in cuda-fp32 cuda-bf16 cpu-fp32 cpu-bf16; do
    dev=${label%-*}; prec=${label#*-}; dir="$work/curve_$label"
    rm -rf "$dir"
    local args=("${common[@]}" --set "device=$dev" --set "train.precision=$prec" --set "checkpoint.dir=$dir")
    [[ $dev == cpu ]] && args+=(--set "train.threads=$threads")
    start=$SECONDS
    timeout -k 30 "${CURVE_TIMEOUT:-120}" "$bin/ptrain" "${args[@]}" > "$logdir/curve_$label.log" 2>&1; rc=$?
    [[ -f "$dir/metrics.jsonl" ]] && cp "$dir/metrics.jsonl" "$logdir/curve_$label.metrics.jsonl"
    local res
    res=$([[ $rc -eq 0 ]] && echo ok || ([[ $rc -eq 124 ]] && echo "timed out (${CURVE_TIMEOUT:-120} s)" || echo "FAIL (rc $rc)"))
    say "| $label | \`ptrain ... --set device=$dev --set train.precision=$prec\` | $res | $(steps_done "$dir") | $((SECONDS - start)) |"
    [[ $rc -ne 0 ]] && tail -3 "$logdir/curve_$label.log" | sed 's/^/    /' | tee -a "$report"
    runs+=(--run "$label=$dir")
  done
  say ""
  syspy benchmarks/gpu/report.py curve "${runs[@]}" --every "${CURVE_EVERY:-10}" 2>&1 | tee -a "$report"
  say ""
  say "Logs and metrics: $logdir/curve_*.log, curve_*.metrics.jsonl"
  say ""
}

run_bench() {
  say "## Stage bench: 125M llama in bf16 (tokens/s, MFU, peak memory; PyTorch alongside)"
  local why data cfg steps warm dir rc start
  why=$(device_gate)
  if [[ -n "$why" ]]; then say "not run: $why"; say ""; return; fi
  workdir
  if ! data=$(tiny_data); then say "not run: could not prepare the token file (see $logdir/prepare_data.log)"; say ""; return; fi
  cfg=${BENCH_CFG:-configs/125m.yaml}
  steps=${BENCH_STEPS:-30}
  warm=${BENCH_WARMUP:-5}
  dir="$work/bench"
  rm -rf "$dir"
  # One rank, one GPU: micro-batch 8 as in the config, global batch 32 (4 micro-batches, 32k
  # tokens a step); the byte-token file (ids < 256) fits vocab 32000; lr warm-up shortened so
  # that it fits the run; evaluation off, one checkpoint at the end (into the scratch folder).
  # shellcheck disable=SC2206
  local extra=(${BENCH_SET:-})
  local sets=("train.steps=$steps" train.micro_batch=8 "train.global_batch=${BENCH_GLOBAL_BATCH:-32}" train.precision=bf16
              train.eval_every=0 train.val_fraction=0 "optim.warmup_steps=$(( warm < steps ? warm : 0 ))"
              checkpoint.every=0 checkpoint.keep=1 "checkpoint.dir=$dir" "data.path=$data" device=cuda "${extra[@]}")
  local args=(--cfg "$cfg")
  for s in "${sets[@]}"; do args+=(--set "$s"); done
  say ""
  say "    ptrain --cfg $cfg$(printf ' --set %s' "${sets[@]}" | sed "s|$dir|RUN|; s|$data|$(basename "$data")|")"
  start=$SECONDS
  timeout -k 60 "${BENCH_TIMEOUT:-270}" "$bin/ptrain" "${args[@]}" > "$logdir/bench_ptrain.log" 2>&1; rc=$?
  [[ -f "$dir/metrics.jsonl" ]] && cp "$dir/metrics.jsonl" "$logdir/bench_ptrain.metrics.jsonl"
  say ""
  say "ptrain: $([[ $rc -eq 0 ]] && echo ok || ([[ $rc -eq 124 ]] && echo "timed out (${BENCH_TIMEOUT:-270} s; the steps done are used)" || echo "FAIL (rc $rc)")), $(steps_done "$dir") steps in $((SECONDS - start)) s"
  [[ $rc -ne 0 ]] && tail -3 "$logdir/bench_ptrain.log" | sed 's/^/    /' | tee -a "$report"
  # The PyTorch peer: the same config file and --set overrides (shapes, batch, seq_len, seed)
  local tj="$logdir/bench_torch.jsonl" tout tpy
  rm -f "$tj"
  tpy=$(torch_python)
  local targs=(benchmarks/gpu/torch_llama.py --config "$cfg" --attn "${BENCH_TORCH_ATTN:-eager,sdpa}" --weights fp32
               --optim foreach --steps "$steps" --warmup "$warm" --json-out "$tj")
  for s in "${sets[@]}"; do targs+=(--set "$s"); done
  [[ -n "${BENCH_TORCH_ARGS:-}" ]] && read -r -a more <<< "$BENCH_TORCH_ARGS" && targs+=("${more[@]}")
  start=$SECONDS
  timeout -k 20 "${BENCH_TORCH_TIMEOUT:-240}" env LD_LIBRARY_PATH="$orig_ld" PATH="$orig_path" "$tpy" "${targs[@]}" \
    > "$logdir/bench_torch.log" 2>&1; rc=$?
  tout=$(grep -m1 '^NOT RUN:' "$logdir/bench_torch.log" | sed 's/^NOT RUN: //')
  if [[ -n "$tout" ]]; then
    say "PyTorch peer ($tpy): not run: $tout"
  elif [[ $rc -ne 0 ]]; then
    say "PyTorch peer: $([[ $rc -eq 124 ]] && echo "timed out (${BENCH_TORCH_TIMEOUT:-240} s)" || echo "FAIL (rc $rc)") after $((SECONDS - start)) s; $(count_lines . "$tj") result(s) kept"
    tail -3 "$logdir/bench_torch.log" | sed 's/^/    /' | tee -a "$report"
  else
    say "PyTorch peer: ok in $((SECONDS - start)) s: $tpy ${targs[*]:0:1} --attn ${BENCH_TORCH_ATTN:-eager,sdpa} --weights fp32 --optim foreach${BENCH_TORCH_ARGS:+ $BENCH_TORCH_ARGS} (same --config and --set)"
  fi
  say ""
  syspy benchmarks/gpu/report.py bench --run "$dir" --log "$logdir/bench_ptrain.log" --warmup "$warm" --torch "$tj" 2>&1 |
    tee -a "$report"
  say ""
  say "Logs: $logdir/bench_ptrain.log, bench_ptrain.metrics.jsonl, bench_torch.log, bench_torch.jsonl"
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
