#!/usr/bin/env bash
# Installs dependencies, builds, and runs the whole test suite (CPU, mpi and cuda labels;
# cuda tests say "skipped" on machines without a GPU). Prints each phase's time.
set -euo pipefail
cd "$(dirname "$0")/.."
phase() { echo "== $1: $2 s"; }
t=$SECONDS; bash scripts/install_deps.sh; phase install $((SECONDS - t))
t=$SECONDS; bash scripts/build.sh; phase build $((SECONDS - t))
t=$SECONDS
export CTEST_OUTPUT_ON_FAILURE=1
ctest --test-dir build -j "$(nproc 2>/dev/null || echo 2)" --timeout 300 "$@"
phase tests $((SECONDS - t))
