#!/usr/bin/env bash
# The demo: installs dependencies, builds, fetches and prepares a real English corpus
# (the `nlp-corpus` npm package, MIT licence, ~9 MB of English sentences in JSON), and
# trains configs/tiny.yaml (a ~0.8M-parameter LLaMA on bytes) on the CPU, or on the GPU when
# the build has the nvcc backend and the machine has one (device: auto).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
bash scripts/install_deps.sh --demo
bash scripts/build.sh
corpus=data/corpus
if [[ ! -f $corpus/nlp-corpus.h5 ]]; then
  mkdir -p $corpus
  if [[ ! -d $corpus/package ]]; then
    (cd $corpus && rm -f nlp-corpus-*.tgz && npm pack nlp-corpus@4.4.0 --silent >/dev/null && tar xzf nlp-corpus-*.tgz)
  fi
  ./build/ptrain prepare --input $corpus/package/builds/*.json --out $corpus/nlp-corpus.h5 --tokenizer byte
fi
rm -rf runs/tiny   # the demo always starts fresh (a real run would use --resume)
./build/ptrain --cfg configs/tiny.yaml "$@"
echo "demo: done in $((SECONDS - t0)) s; metrics in runs/tiny/metrics.jsonl, checkpoints in runs/tiny/"
