#!/usr/bin/env bash
# Configures and builds ptrain into build/ (Release; the CUDA backend too when nvcc is found).
# Extra arguments go to cmake, e.g. scripts/build.sh -DPTRAIN_CUDA=OFF
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
ninja -C build -j "$jobs"
