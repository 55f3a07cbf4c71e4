#!/usr/bin/env bash
# CI check of the CUDA sources (DESIGN.md, "Two backends, three builds"):
#  * shared memory is declared with PT_SHARED / PT_DYNAMIC_SHARED, never `__shared__`;
#  * kernels are launched with PT_LAUNCH, never `<<<...>>>`;
#  * no preprocessor conditionals in .cu/.cuh files (kernel bodies carry no #ifdef);
#  * every .cu file includes core/cuda/runtime.h first.
# Only core/cuda/runtime.h and core/simt/simt.h may spell the CUDA forms. Exit 1 on a finding.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
mapfile -t files < <(git ls-files '*.cu' '*.cuh' '*.h' '*.cpp' | grep -v -e '^core/cuda/runtime.h$' -e '^core/simt/simt.h$' -e '^scripts/')
for f in "${files[@]}"; do
  [[ -f "$f" ]] || continue
  if grep -nE '(^|[^A-Za-z_])__shared__([^A-Za-z_]|$)' "$f" | grep -v '^\s*[0-9]*:\s*//' >/tmp/ptrain_check_$$; then
    while read -r l; do echo "$f:$l: declare shared memory with PT_SHARED / PT_DYNAMIC_SHARED (core/cuda/runtime.h)"; done </tmp/ptrain_check_$$
    status=1
  fi
  if [[ "$f" == *.cu || "$f" == *.cuh ]] && grep -nE '<<<' "$f" | grep -v '^\s*[0-9]*:\s*//' >/tmp/ptrain_check_$$; then
    while read -r l; do echo "$f:$l: launch kernels with PT_LAUNCH (core/cuda/runtime.h), not <<<>>>"; done </tmp/ptrain_check_$$
    status=1
  fi
done
mapfile -t cuda_files < <(git ls-files '*.cu' '*.cuh')
for f in "${cuda_files[@]}"; do
  [[ -f "$f" ]] || continue
  if grep -nE '^\s*#\s*(if|ifdef|ifndef|elif)\b' "$f" >/tmp/ptrain_check_$$; then
    while read -r l; do echo "$f:$l: no preprocessor conditionals in CUDA sources (differences live in core/cuda/runtime.h)"; done </tmp/ptrain_check_$$
    status=1
  fi
  if [[ "$f" == *.cu ]]; then
    first=$(grep -m1 -E '^\s*#\s*include' "$f" || true)
    if [[ "$first" != *'"core/cuda/runtime.h"'* ]]; then
      echo "$f: the first #include must be \"core/cuda/runtime.h\" (found: ${first:-none})"
      status=1
    fi
  fi
done
rm -f /tmp/ptrain_check_$$
if [[ $status -eq 0 ]]; then echo "check_cuda_sources: ${#files[@]} files clean"; fi
exit $status
