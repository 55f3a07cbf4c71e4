// benchmarks/simt_cost.cu — what the emulated CUDA build costs per GPU thread.
//
// Runs kernels of increasing synchronisation on the SIMT runtime (core/simt) and reports
// nanoseconds per GPU thread: a store with no barrier (one fiber switch pair per thread),
// one __syncthreads, and a warp-shuffle reduction (5 shuffles). Correctness is checked
// before timing. Usage: simt_cost [threads=4194304] [block=256] [reps=3]; prints JSON lines.
#include "core/cuda/runtime.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

__global__ void store_kernel(float* y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = 1.0f;
}

__global__ void barrier_kernel(float* y, int n) {
  PT_SHARED(float, s, [1024]);
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = s[(threadIdx.x + 1) % blockDim.x];
}

__global__ void shuffle_kernel(float* y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  float v = 1.0f;
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (i < n) y[i] = v;
}

double time_ns_per_thread(const char* what, int n, int block, int reps, float* d, void (*run)(float*, int, int)) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto t0 = std::chrono::steady_clock::now();
    run(d, n, block);
    CUDA_CHECK(cudaDeviceSynchronize());
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::min(best, s);
  }
  const int64_t threads = static_cast<int64_t>((n + block - 1) / block) * block;
  const double ns = best * 1e9 / static_cast<double>(threads);
  std::printf("{\"kernel\": \"%s\", \"gpu_threads\": %lld, \"block\": %d, \"seconds\": %.4f, \"ns_per_thread\": %.1f}\n",
              what, static_cast<long long>(threads), block, best, ns);
  return ns;
}

void run_store(float* d, int n, int b) { PT_LAUNCH(store_kernel, (n + b - 1) / b, b, 0, nullptr, d, n); }
void run_barrier(float* d, int n, int b) { PT_LAUNCH(barrier_kernel, (n + b - 1) / b, b, 0, nullptr, d, n); }
void run_shuffle(float* d, int n, int b) { PT_LAUNCH(shuffle_kernel, (n + b - 1) / b, b, 0, nullptr, d, n); }

}  // namespace

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 1 << 22;
  const int block = argc > 2 ? std::atoi(argv[2]) : 256;
  const int reps = argc > 3 ? std::atoi(argv[3]) : 3;
  if (n <= 0 || block <= 0 || block > 1024 || block % 32 || reps <= 0) {
    std::fprintf(stderr, "usage: simt_cost [threads > 0] [block: a multiple of 32 up to 1024] [reps > 0]\n");
    return 2;
  }
  float* d = nullptr;
  CUDA_CHECK(cudaMalloc(&d, static_cast<size_t>(n) * sizeof(float)));
  std::vector<float> h(n);
  // Correctness first.
  run_store(d, n, block);
  CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost));
  for (int i = 0; i < n; ++i)
    if (h[i] != 1.0f) return std::fprintf(stderr, "store_kernel wrong at %d\n", i), 1;
  run_barrier(d, n, block);
  CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost));
  for (int i = 0; i < n; ++i)
    if (h[i] != static_cast<float>((i % block + 1) % block)) return std::fprintf(stderr, "barrier_kernel wrong at %d\n", i), 1;
  run_shuffle(d, n, block);
  CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost));
  for (int i = 0; i < n; ++i)
    if (h[i] != 32.0f) return std::fprintf(stderr, "shuffle_kernel wrong at %d\n", i), 1;
  time_ns_per_thread("store (no barrier)", n, block, reps, d, run_store);
  time_ns_per_thread("one __syncthreads", n, block, reps, d, run_barrier);
  time_ns_per_thread("5 warp shuffles", n, block, reps, d, run_shuffle);
  CUDA_CHECK(cudaFree(d));
  return 0;
}
