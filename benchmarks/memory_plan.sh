#!/usr/bin/env bash
# benchmarks/memory_plan.sh — `ptrain plan`'s predicted device peak against the peak the run
# measures (metrics.jsonl mem_peak_bytes: the caching allocator's peak_allocated) on the
# emulated device, for a llama of hidden 256, 4 layers, seq 256 under each memory feature (and
# pp 2 with 1f1b: two ranks under mpirun, each with its own emulated device; rank 0's peak).
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
mpiflags=()
if mpirun --version 2>&1 | grep -q "Open MPI\|OpenRTE"; then
  mpiflags=(--allow-run-as-root --oversubscribe --bind-to none --mca pml ob1 --mca btl self,vader
            --mca btl_vader_single_copy_mechanism none)
fi
# row NAME [--np N] SETTINGS...: with N ranks (each its own emulated device), rank 0's figures
row() {
  local name=$1; shift
  local np=1
  if [[ "${1:-}" == "--np" ]]; then np=$2; shift 2; fi
  local plan meas
  plan=$("$bin" plan --cfg configs/tiny.yaml "${base[@]}" "$@" --gpu emulated --np "$np" --json |
         python3 -c 'import json,sys; print(json.load(sys.stdin)["ranks"][0]["device_peak_bytes"])')
  if [[ $np -gt 1 ]]; then
    mpirun "${mpiflags[@]}" -np "$np" "$bin" --cfg configs/tiny.yaml "${base[@]}" "$@" --set train.threads=1 \
      --set "checkpoint.dir=$work/$name" --quiet >/dev/null
  else
    "$bin" --cfg configs/tiny.yaml "${base[@]}" "$@" --set "checkpoint.dir=$work/$name" --quiet >/dev/null
  fi
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
row "fp32, pp 2, 1f1b, 4 micro-batches (rank 0 of 2)" --np 2 --set parallel.pp=2 --set parallel.schedule=1f1b \
    --set train.global_batch=8
row "fp32, pp 2, 1f1b, full recompute (rank 0 of 2)" --np 2 --set parallel.pp=2 --set parallel.schedule=1f1b \
    --set train.global_batch=8 --set train.recompute=full
