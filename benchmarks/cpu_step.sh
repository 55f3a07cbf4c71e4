#!/usr/bin/env bash
# benchmarks/cpu_step.sh — ptrain's CPU training step against PyTorch's, same run, same shapes.
#
#   benchmarks/cpu_step.sh [--threads N] [--config configs/tiny.yaml] [--steps K] [--rounds R]
#                          [--warmup W] [--set key.path=value ...] [--json-out FILE]
#
# Builds nothing: expects build/ptrain, or the binary named by $PTRAIN_BIN (or --ptrain BIN).
# Checks correctness first (ptrain and tests/reference/torch_reference.py agree on the first two
# losses from one init file; first loss ~ ln(vocab)), then alternates R times: ptrain K steps
# (median tokens_per_s of metrics.jsonl after W warm-up steps) and benchmarks/torch_step.py
# (W warm-up + K-W timed steps), both with OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = N.
# Prints a table (best-of and median-of-rounds tokens/s, GFLOP/s, ratio ptrain/pytorch, the BLAS
# each side uses) and one line "RESULT {json}". Refuses (exit 3) when torch is not on OpenBLAS.
# The work is done by benchmarks/compare_step.py under Debian's /usr/bin/python3 (python3-torch).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py=/usr/bin/python3
[[ -x $py ]] || py="$(command -v python3)"
exec "$py" "$here/compare_step.py" "$@"
