#!/usr/bin/env bash
# benchmarks/pipeline_bubble.sh — measured pipeline bubble of gpipe, 1f1b, interleaved and
# zero-bubble on NP ranks (default 4, one pipeline stage each) with a synthetic Stage that
# sleeps fixed F, B, W times (default 20 ms each), so ranks sharing few cores do not distort.
#
#   benchmarks/pipeline_bubble.sh [--np 4] [--f-ms 20] [--b-ms 20] [--w-ms 20] [--micro 8]
#                                 [--virtual 2] [--steps 2] [--out DIR] [--schedules a,b,...]
#
# Builds nothing: expects build/benchmarks/pipeline_bubble, or the binary named by
# $PTRAIN_BENCH_BIN. Prints a table (measured, simulated and textbook bubble, step time, ratio
# to 1F1B) and one line "RESULT {json}"; writes DIR/pipeline_bubble_<schedule>.json (Chrome
# traces, default benchmarks/results/). With pp = 4, M = 8 and F = B = W, 1f1b should measure
# about (p-1)/(M+p-1) = 3/11 = 0.273 and zero-bubble about a third of that (3/27 = 0.111).
#
# The mpirun flags are those of PTRAIN_MPIEXEC_FLAGS for Open MPI (cmake/ptrain.cmake explains
# each): run as root in containers, 4 ranks on fewer cores, no binding, shared memory only,
# no CMA single-copy. mpi_yield_when_idle makes ranks blocked in a receive yield the core.
# Set MPIEXEC_FLAGS to replace them (e.g. MPIEXEC_FLAGS="" for MPICH).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
bin="${PTRAIN_BENCH_BIN:-$root/build/benchmarks/pipeline_bubble}"
np=4
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --np) np="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
[[ -x $bin ]] || { echo "pipeline_bubble.sh: $bin not found. HINT: ninja -C build pipeline_bubble" >&2; exit 2; }
if [[ -z ${MPIEXEC_FLAGS+x} ]]; then
  MPIEXEC_FLAGS="--allow-run-as-root --oversubscribe --bind-to none --mca pml ob1 --mca btl self,vader \
--mca btl_vader_single_copy_mechanism none --mca mpi_yield_when_idle 1"
fi
cd "$root"
# shellcheck disable=SC2086
exec mpirun $MPIEXEC_FLAGS -np "$np" env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "$bin" "${args[@]}"
