#!/usr/bin/env bash
# Prepares a GPU verification run (here, on a development machine with our Debian packages and
# nvcc): builds the nvcc tree's GPU test programs and `ptrain`, and packs them with every shared
# library they need and an Open MPI runtime (shared/portable/bundle.sh) into portable_bundle/
# (git-ignored), for a GPU machine that has the CUDA toolkit and driver but none of our
# packages. It also packs the token file of verify.sh's stages curve and bench,
# portable_bundle/data/tiny.h5 (`ptrain prepare --tokenizer byte` over benchmarks/gpu/corpus.sh's
# 768 KiB of the repository's docs and C++; ~0.8 MiB), so that they need nothing else there.
# Then carry portable_bundle/ there and run benchmarks/gpu/verify.sh.
#   usage: bash benchmarks/gpu/prepare.sh [OUTDIR=portable_bundle]
#   PTRAIN_PORTABLE=/path/to/shared/portable if it is not at ../shared/portable
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-portable_bundle}
portable=${PTRAIN_PORTABLE:-../shared/portable}
[[ -x "$portable/bundle.sh" || -f "$portable/bundle.sh" ]] || {
  echo "prepare.sh: $portable/bundle.sh not found. HINT: set PTRAIN_PORTABLE to the shared/portable folder" >&2
  exit 2
}
targets=(test_cuda_device test_gpu_silicon test_ops_cuda test_device_memory test_device_ops test_gemm test_gemm_gpu
         test_optim_cuda test_attention_cuda test_device_training ptrain)   # ptrain last (used below)
cmake -S . -B build-nvcc -G Ninja -DCMAKE_BUILD_TYPE=Release -DPTRAIN_CUDA=ON >/dev/null
ninja -C build-nvcc -j "$(nproc 2>/dev/null || echo 2)" "${targets[@]}"
progs=()
for t in "${targets[@]}"; do
  f=$(find build-nvcc -name "$t" -type f -perm -u+x ! -path '*/CMakeFiles/*' | head -1)
  [[ -n "$f" ]] || { echo "prepare.sh: $t was not built" >&2; exit 1; }
  progs+=("$f")
done
rm -rf "$out"
mkdir -p "$out"
bash "$portable/bundle.sh" "$out" "${progs[@]}"
# the curve and bench stages' tokens (bundle.sh checked its size limit before these 0.8 MiB)
mkdir -p "$out/data"
bash benchmarks/gpu/corpus.sh > "$out/data/tiny.txt"
"${progs[${#progs[@]}-1]}" prepare --input "$out/data/tiny.txt" --out "$out/data/tiny.h5" --tokenizer byte
rm -f "$out/data/tiny.txt"
# COMMIT: the commit built, and whether tracked files differed from it (verify.sh's report quotes it)
if git status --porcelain --untracked-files=no | grep -q .; then
  echo "$(git rev-parse HEAD) plus uncommitted changes" > "$out/COMMIT"
  echo "prepare.sh: note: tracked files differ from $(git rev-parse HEAD): the bundle holds uncommitted changes" >&2
else
  git rev-parse HEAD > "$out/COMMIT"
fi
echo "prepare.sh: $(du -sh "$out" | cut -f1) in $out"
echo "prepare.sh: $out is ready (commit $(cat "$out/COMMIT")); on the GPU machine: bash benchmarks/gpu/verify.sh"
