#!/usr/bin/env bash
# The test command (README; .ci/run calls exactly this). Installs dependencies, then builds and
# tests three trees, printing each phase's time:
#   build-emu   emulated CUDA build, Release: everything; runs every ctest label it can
#               (cpu, mpi, cuda on the emulated device; gpu says "skipped")
#   build-asan  AddressSanitizer + UBSan, emulated: core/, the op tests and the emulator tests
#   build-nvcc  nvcc (sm_89, sm_90): the CUDA backend, the device test binaries and `ptrain`, warnings
#               as errors, register/spill usage logged; tests run where a GPU exists
# plus two checks: CUDA source rules (scripts/check_cuda_sources.sh) and that no emulated
# binary links libcudart, cuBLAS(Lt) or NCCL (ldd). Extra arguments go to every ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)
total=$SECONDS
phase() { echo "== $1: $2 s"; }
export CTEST_OUTPUT_ON_FAILURE=1

t=$SECONDS; bash scripts/install_deps.sh; phase install $((SECONDS - t))
t=$SECONDS; bash scripts/check_cuda_sources.sh; phase "source checks" $((SECONDS - t))

# ---- 1. emulated Release tree: the whole suite ----
t=$SECONDS
cmake -S . -B build-emu -G Ninja -DCMAKE_BUILD_TYPE=Release -DPTRAIN_CUDA_EMULATION=ON >/dev/null
ninja -C build-emu -j "$jobs"
phase "build (emulated)" $((SECONDS - t))
t=$SECONDS
bad=0
while IFS= read -r f; do
  if ldd "$f" 2>/dev/null | grep -E 'libcudart|libcublas|libnccl|libcuda\.so' >/dev/null; then
    echo "link check: $f links a CUDA library:"; ldd "$f" | grep -E 'libcudart|libcublas|libnccl|libcuda\.so'; bad=1
  fi
done < <(find build-emu -type f -executable ! -path '*/CMakeFiles/*' ! -name '*.sh')
[[ $bad -eq 0 ]] || { echo "link check FAILED: the emulated build must not link CUDA libraries"; exit 1; }
echo "link check: no emulated binary links libcudart, cuBLAS or NCCL"
phase "link check" $((SECONDS - t))
t=$SECONDS
ctest --test-dir build-emu -j "$jobs" --timeout 300 "$@"
phase "tests (emulated)" $((SECONDS - t))

# ---- 2. ASan + UBSan tree: core and the op/emulator tests ----
t=$SECONDS
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" \
  -DPTRAIN_ASAN=ON -DPTRAIN_NATIVE=OFF -DPTRAIN_CUDA_EMULATION=ON >/dev/null
ninja -C build-asan -j "$jobs" sanitizer_tests
phase "build (asan+ubsan)" $((SECONDS - t))
t=$SECONDS
ctest --test-dir build-asan -j "$jobs" --timeout 600 -R "$(cat build-asan/sanitizer_tests.regex)" "$@"
phase "tests (asan+ubsan)" $((SECONDS - t))

# ---- 3. nvcc tree: device targets and the link ----
if [[ -x /usr/local/cuda/bin/nvcc ]] || command -v nvcc >/dev/null 2>&1; then
  t=$SECONDS
  cmake -S . -B build-nvcc -G Ninja -DCMAKE_BUILD_TYPE=Release -DPTRAIN_CUDA=ON >/dev/null
  # the device test binaries, and `ptrain` itself: every library linked against the real CUDA
  # runtime and cuBLASLt (a missing symbol or a header mismatch fails here)
  nvcc_targets=$(ninja -C build-nvcc -t targets all | sed -n 's/^\(test_[a-z_]*\|ptrain_core\|ptrain\): .*/\1/p' |
                 grep -E '^(ptrain|ptrain_core|test_cuda_device|test_gpu_silicon|test_ops_cuda|test_device_memory|test_device_ops|test_gemm|test_gemm_gpu|test_optim_cuda|test_attention_cuda)$' | tr '\n' ' ')
  ninja -C build-nvcc -j "$jobs" $nvcc_targets | tee build-nvcc/nvcc_build.log
  kernels=$(grep -c 'ptxas info    : Used' build-nvcc/nvcc_build.log || true)
  maxreg=$(grep -o 'Used [0-9]* registers' build-nvcc/nvcc_build.log | awk '{print $2}' | sort -n | tail -1 || true)
  spills=$(grep -E 'bytes spill (stores|loads)' build-nvcc/nvcc_build.log | grep -vc ' 0 bytes spill stores, 0 bytes spill loads' || true)
  echo "nvcc resource usage: ${kernels} kernel compilations (sm_89 + sm_90), max ${maxreg:-0} registers per thread, ${spills} with spills (full log: build-nvcc/nvcc_build.log)"
  phase "build (nvcc)" $((SECONDS - t))
  t=$SECONDS
  ctest --test-dir build-nvcc --timeout 300 -L 'cuda|gpu' -R "^(${nvcc_targets// /|}none)$" "$@"
  phase "tests (nvcc; skipped without a GPU)" $((SECONDS - t))
else
  echo "== nvcc tree: skipped (no nvcc on this machine)"
fi
phase total $((SECONDS - total))
