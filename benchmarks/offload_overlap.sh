#!/usr/bin/env bash
# benchmarks/offload_overlap.sh — how much of the offloaded optimizer's host AdamW hides behind
# backward (optim/offload.h) on the emulated device: a llama of hidden 256, 4 layers, seq 256,
# train.offload.optimizer: true, with optim.grad_clip 0 (eager: each parameter's update starts
# from backward as its gradient is final) and 1.0 (the update waits for the global norm).
# Per run: the mean over the steps after the first of step time, the host update time
# (opt_host_update_s) and the part of it that ran before the trainer reached the optimizer
# step (opt_host_hidden_s), from metrics.jsonl. Prints a Markdown table.
#   bash benchmarks/offload_overlap.sh [BUILD_DIR=build-emu] [--steps 4]
# The emulated device runs kernels on the CPU, thousands of times slower than a GPU, so the
# fraction hidden here is an upper bound for silicon: RESULTS.md projects a 13B step from the
# host AdamW's measured throughput (benchmarks/cpu_adamw) instead.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-emu}
[[ $# -gt 0 ]] && shift
steps=4
[[ "${1:-}" == "--steps" ]] && steps=$2
bin=$build/ptrain
[[ -x $bin ]] || { echo "no $bin: build the emulated tree (cmake -DPTRAIN_CUDA_EMULATION=ON)"; exit 1; }
data=data/corpus/nlp-corpus.h5
[[ -f $data ]] || { echo "no $data: run scripts/demo.sh once (it prepares the corpus)"; exit 1; }
work=$(mktemp -d /tmp/ptrain_offload_overlap.XXXXXX)
trap 'rm -rf "$work"' EXIT
base=(--set device=cuda --set model.hidden=256 --set model.layers=4 --set model.heads=8 --set model.kv_heads=4
      --set model.ffn_hidden=704 --set model.max_seq_len=256 --set train.seq_len=256 --set train.micro_batch=2
      --set train.global_batch=4 --set "train.steps=$steps" --set train.eval_every=0 --set checkpoint.every=0
      --set optim.warmup_steps=1 --set "data.path=$data" --set train.offload.optimizer=true)
echo "| run | step s | host update s | of it before backward ended | hidden |"
echo "|---|---:|---:|---:|---:|"
row() {
  local name=$1; shift
  "$bin" --cfg configs/tiny.yaml "${base[@]}" "$@" --set "checkpoint.dir=$work/$name" --quiet >/dev/null
  python3 - "$work/$name/metrics.jsonl" "$name" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])][1:]  # the first step warms up
n = len(rows)
step = sum(r["step_time_s"] for r in rows) / n
upd = sum(r["opt_host_update_s"] for r in rows) / n
hid = sum(r["opt_host_hidden_s"] for r in rows) / n
print(f"| {sys.argv[2]} | {step:.3f} | {upd:.4f} | {hid:.4f} | {100 * hid / upd if upd else 0:.0f}% |")
PY
}
row "fp32, grad_clip 0 (eager)" --set optim.grad_clip=0
row "fp32, grad_clip 1.0 (after the norm)" --set optim.grad_clip=1.0
row "bf16, 8bit state, grad_clip 0 (eager)" --set optim.grad_clip=0 --set train.precision=bf16 --set optim.state=8bit
row "bf16, 8bit state, grad_clip 1.0" --set optim.grad_clip=1.0 --set train.precision=bf16 --set optim.state=8bit
