#!/usr/bin/env bash
# benchmarks/cpu_step.sh — ptrain's CPU training step against PyTorch's, same run, same shapes.
#
#   benchmarks/cpu_step.sh [--threads 1,2,all] [--preset a4] [--config configs/tiny.yaml]
#                          [--steps K] [--rounds R] [--warmup W] [--set key.path=value ...]
#                          [--baseline OLD_BIN] [--mpi NP] [--json-out FILE]
#
# Builds nothing: expects build/ptrain, or the binary named by $PTRAIN_BIN (or --ptrain BIN).
# Checks correctness first, then at each thread count alternates R rounds of ptrain (default
# environment, train.threads = the count) and PyTorch (the faster of its OpenBLAS builds, on
# ptrain's OpenBLAS core), with the GEMM floor per count; prints a Markdown table and one line
# "RESULT {json}". The work is done by benchmarks/compare_step.py (its docstring has the details)
# under Debian's /usr/bin/python3 (python3-torch).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py=/usr/bin/python3
[[ -x $py ]] || py="$(command -v python3)"
exec "$py" "$here/compare_step.py" "$@"
