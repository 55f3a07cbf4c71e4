#!/usr/bin/env bash
# benchmarks/memory_plan.sh — `ptrain plan`'s predicted device peak against the peak the run
# measures (metrics.jsonl mem_peak_bytes: the caching allocator's peak_allocated) on the
# emulated device, for a llama of hidden 256, 4 layers, seq 256 under each memory feature.
# Prints a Markdown table (plan, measured, difference). Needs the emulated build:
#   bash benchmarks/memory_plan.sh [BUILD_DIR=build-emu] [--steps 2]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-emu}
[[ $# -gt 0 ]] && shift
steps=2
[[ "${1:-}" == "--steps" ]] && steps=$2
bin=$build/ptrain
[[ -x $bin ]] || { echo "no $bin: build the emulated tree (cmake -DPTRAIN_CUDA_EMULATION=ON)"; exit 1; }
data=data/corpus/nlp-corpus.h5
[[ -f $data ]] || { echo "no $data: run scripts/demo.sh once (it prepares the corpus)"; exit 1; }
work=$(mktemp -d /tmp/ptrain_memory_plan.XXXXXX)
trap 'rm -rf "$work"' EXIT
base=(--set device=cuda --set model.hidden=256 --set model.layers=4 --set model.heads=8 --set model.kv_heads=4
      --set model.ffn_hidden=704 --set model.max_seq_len=256 --set train.seq_len=256 --set train.micro_batch=2
      --set train.global_batch=4 --set "train.steps=$steps" --set train.eval_every=0 --set checkpoint.every=0
      --set optim.warmup_steps=1 --set "data.path=$data")
echo "| run | plan device_peak_bytes | measured mem_peak_bytes | plan - measured |"
echo "|---|---:|---:|---:|"
row() {
  local name=$1; shift
  local plan meas
  plan=$("$bin" plan --cfg configs/tiny.yaml "${base[@]}" "$@" --gpu emulated --np 1 --json |
         python3 -c 'import json,sys; print(json.load(sys.stdin)["ranks"][0]["device_peak_bytes"])')
  "$bin" --cfg configs/tiny.yaml "${base[@]}" "$@" --set "checkpoint.dir=$work/$name" --quiet >/dev/null
  meas=$(python3 -c "import json; print(json.loads(open('$work/$name/metrics.jsonl').read().splitlines()[-1])['mem_peak_bytes'])")
  python3 -c "p, m = $plan, $meas; print(f'| $name | {p:,} | {m:,} | {p - m:+,} ({100 * (p - m) / m:+.2f}%) |')"
}
row "fp32, recompute none" --set train.recompute=none
row "fp32, recompute selective" --set train.recompute=selective
row "fp32, recompute full" --set train.recompute=full
row "bf16, recompute none" --set train.precision=bf16
row "fp32, optimizer offload" --set train.offload.optimizer=true
row "fp32, activation offload" --set train.offload.activations=true
row "fp32, activation offload, prefetch 2" --set train.offload.activations=true --set train.offload.prefetch=2
row "fp32, activation offload, full recompute" --set train.offload.activations=true --set train.recompute=full
row "bf16, optimizer offload, 8bit state, full recompute" --set train.precision=bf16 --set train.offload.optimizer=true \
    --set optim.state=8bit --set train.recompute=full
