#!/usr/bin/env bash
# Writes the text of the GPU verification's small corpus to stdout: the repository's own prose
# and C++ (docs/*.md, README.md, configs/README.md, then the sources of core/ layers/ launch/
# data/ optim/ parallel/ in byte order of their paths), cut at BYTES (default 786432 = 768 KiB:
# ~6000 windows of the tiny model's 128 tokens, ~770 of the 125M model's 1024).
# prepare.sh turns it into portable_bundle/data/tiny.h5 with `ptrain prepare --tokenizer byte`
# (byte ids 0..255: vocab_size 256, usable by any model with model.vocab_size >= 256); verify.sh
# does the same on the GPU machine when the bundle has no data/tiny.h5.
#   usage: bash benchmarks/gpu/corpus.sh [BYTES] > corpus.txt     (from anywhere)
set -eu   # no pipefail: head closing the pipe early is the point
cd "$(dirname "$0")/../.."
bytes=${1:-786432}
{
  for f in README.md configs/README.md docs/*.md; do [[ -f $f ]] && cat "$f"; done
  find core layers launch data optim parallel -type f \( -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' \) \
    2>/dev/null | LC_ALL=C sort | while IFS= read -r f; do cat "$f"; done
} | head -c "$bytes"
