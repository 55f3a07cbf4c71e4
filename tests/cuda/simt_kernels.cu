// tests/cuda/simt_kernels.cu — kernels that exercise the SIMT runtime (emulated build only):
// correct ones (barriers, shuffles, votes, shared memory, atomics) and one planted bug per
// failure mode the emulator must catch (tests/cuda/test_simt_planted.cpp). The bugs are the
// real mistakes of kernel writers; each kernel's comment says which.
#include "core/cuda/runtime.h"

#include "tests/cuda/simt_kernels.h"

namespace simt_test {

// ------------------------------------------------------------------ correct kernels

__global__ void k_scale(const float* x, float* y, float a, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i];
}

/// One block per row: shared-memory tree then a warp-shuffle finish (fixed order: deterministic).
__global__ void k_row_sum(const float* x, float* out, int cols) {
  PT_SHARED(float, partial, [256]);
  PT_SHARED(float, total, );
  const float* row = x + static_cast<long>(blockIdx.x) * cols;
  float s = 0.0f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) s += row[c];
  partial[threadIdx.x] = s;
  __syncthreads();
  for (int w = blockDim.x / 2; w >= 32; w /= 2) {
    if (threadIdx.x < w) partial[threadIdx.x] += partial[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x < 32) {
    float v = partial[threadIdx.x];
    for (int o = 16; o > 0; o /= 2) v += __shfl_down_sync(0xffffffffu, v, o);
    if (threadIdx.x == 0) total = v;
  }
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = total;
}

/// Every warp primitive; out[8 * tid + k] for k = xor, up, down, idx, ballot, any, all, width-8 xor.
__global__ void k_warp_ops(int* out) {
  const int t = threadIdx.x;
  const int lane = t % 32;
  int* o = out + 8 * t;
  o[0] = __shfl_xor_sync(0xffffffffu, t, 5);
  o[1] = __shfl_up_sync(0xffffffffu, t, 3);
  o[2] = __shfl_down_sync(0xffffffffu, t, 3);
  o[3] = __shfl_sync(0xffffffffu, t, 7);
  o[4] = static_cast<int>(__ballot_sync(0xffffffffu, lane % 3 == 0));
  o[5] = __any_sync(0xffffffffu, t == 40);
  o[6] = __all_sync(0xffffffffu, lane < 31);
  o[7] = __shfl_xor_sync(0xffffffffu, t, 4, 8);
  __syncwarp();
}

/// Dynamic shared memory: reverse a block's slice.
__global__ void k_reverse(const float* x, float* y, int n) {
  PT_DYNAMIC_SHARED(float, buf);
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  buf[threadIdx.x] = i < n ? x[i] : 0.0f;
  __syncthreads();
  const int j = blockIdx.x * blockDim.x + (blockDim.x - 1 - threadIdx.x);
  if (j < n) y[j] = buf[threadIdx.x];
}

/// 2-D grid and block: y[r, c] = r * 1000 + c.
__global__ void k_index2d(int* y, int rows, int cols) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  const int r = blockIdx.y * blockDim.y + threadIdx.y;
  if (r < rows && c < cols) y[r * cols + c] = r * 1000 + c;
}

/// Execution order of the threads of one block (atomic ticket), and __syncthreads_count.
__global__ void k_order(int* ticket, int* order, int* count) {
  order[threadIdx.x] = atomicAdd(ticket, 1);
  const int c = __syncthreads_count(threadIdx.x % 4 == 0);
  if (threadIdx.x == 0) *count = c;
}

/// Integer atomics on shared and global memory (order-independent: exact).
__global__ void k_histogram(const int* x, int* hist, int n) {
  PT_SHARED(int, local, [16]);
  if (threadIdx.x < 16) local[threadIdx.x] = 0;
  __syncthreads();
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) atomicAdd(&local[x[i] & 15], 1);
  __syncthreads();
  if (threadIdx.x < 16) atomicAdd(&hist[threadIdx.x], local[threadIdx.x]);
}

__global__ void k_throw(int* y) {
  if (blockIdx.x == 2 && threadIdx.x == 5) ptrain::simt::detail::kernel_fault("planted exception");
  y[threadIdx.x] = 1;
}

/// Half a warp waits at a shuffle, the other half at the block barrier: nobody can move.
__global__ void k_deadlock(int* y) {
  int v = threadIdx.x;
  if (threadIdx.x < 16)
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  else
    __syncthreads();
  y[threadIdx.x] = v;
}

__global__ void k_big_static_shared(float* y) {
  PT_SHARED(float, a, [8192]);  // 32 KB
  PT_SHARED(float, b, [8192]);  // +32 KB: over 48 KB
  a[threadIdx.x] = 1.0f;
  b[threadIdx.x] = 2.0f;
  __syncthreads();
  y[threadIdx.x] = a[threadIdx.x] + b[threadIdx.x];
}

__global__ void k_big_dynamic_shared(float* y, int n) {
  PT_DYNAMIC_SHARED(float, buf);
  for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = static_cast<float>(i);
  __syncthreads();
  if (threadIdx.x == 0) y[0] = buf[n - 1];
}

/// A trivial kernel for the cost benchmark: no barrier.
__global__ void k_noop_store(float* y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = 1.0f;
}
/// One barrier per thread, for the cost benchmark.
__global__ void k_one_barrier(float* y, int n) {
  PT_SHARED(float, s, [1024]);
  s[threadIdx.x] = 1.0f;
  __syncthreads();
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = s[(threadIdx.x + 1) % blockDim.x];
}

// ------------------------------------------------------------------ planted bugs

/// Off-by-one tile bound: `<=` instead of `<` writes one element past the end.
__global__ void bug_off_by_one(const float* x, float* y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) y[i] = 2.0f * (i < n ? x[i] : 0.0f);
}

/// Out-of-bounds shared index: 64 threads index a 32-element tile.
__global__ void bug_shared_oob(const float* x, float* y) {
  PT_SHARED(float, tile, [32]);
  tile[threadIdx.x] = x[threadIdx.x];
  __syncthreads();
  y[threadIdx.x] = tile[(threadIdx.x + 1) % 32];
}

/// Reads shared memory never written: only even threads fill the tile.
__global__ void bug_shared_uninit(const float* x, float* y) {
  PT_SHARED(float, tile, [64]);
  if (threadIdx.x % 2 == 0) tile[threadIdx.x] = x[threadIdx.x];
  __syncthreads();
  y[threadIdx.x] = tile[threadIdx.x];
}

/// Barrier inside a branch not all threads take (early exit of the tail).
__global__ void bug_barrier_in_branch(const float* x, float* y, int n) {
  PT_SHARED(float, tile, [64]);
  const int i = threadIdx.x;
  if (i >= n) return;
  tile[i] = x[i];
  __syncthreads();
  y[i] = tile[n - 1 - i];
}

/// Barriers in both arms of an if/else.
__global__ void bug_barrier_both_arms(const float* x, float* y) {
  PT_SHARED(float, tile, [64]);
  tile[threadIdx.x] = x[threadIdx.x];
  if (threadIdx.x % 2) {
    __syncthreads();
    y[threadIdx.x] = tile[threadIdx.x - 1];
  } else {
    __syncthreads();
    y[threadIdx.x] = tile[threadIdx.x + 1];
  }
}

/// Missing barrier between the shared write and the read of a neighbour's element.
__global__ void bug_missing_barrier(const float* x, float* y) {
  PT_SHARED(float, tile, [64]);
  tile[threadIdx.x] = x[threadIdx.x];
  y[threadIdx.x] = tile[(threadIdx.x + 1) % 64];
}

/// Producer/consumer pair for the missing stream/event wait.
__global__ void k_produce(const float* x, float* buf, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) buf[i] = x[i] + 1.0f;
}
__global__ void k_consume(const float* buf, float* y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = 2.0f * buf[i];
}

/// Unzeroed accumulator: per-block sums added into a buffer nobody zeroed.
__global__ void bug_unzeroed_accumulator(const float* x, float* acc, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  PT_SHARED(float, partial, [64]);
  partial[threadIdx.x] = i < n ? x[i] : 0.0f;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.0f;
    for (int k = 0; k < 64; ++k) s += partial[k];
    acc[blockIdx.x] += s;
  }
}

/// Misaligned float4 load: the row pointer is offset by one float.
__global__ void bug_misaligned_float4(const float* x, float* y, int n4) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n4) {
    const float4 v = reinterpret_cast<const float4*>(x + 1)[i];
    y[i] = v.x + v.y + v.z + v.w;
  }
}

/// Shuffle over exited lanes: the upper half-warp returned early, the mask still names it.
__global__ void bug_shuffle_exited(const float* x, float* y) {
  const int lane = threadIdx.x % 32;
  if (lane >= 16) return;
  float v = x[threadIdx.x];
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  y[threadIdx.x] = v;
}

/// Float atomic whose order changes the bits: every thread adds into one sum.
__global__ void bug_float_atomic(const float* x, float* sum, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) atomicAdd(sum, x[i]);
}

// ------------------------------------------------------------------ host launchers

void scale(const float* x, float* y, float a, int n, cudaStream_t s) { PT_LAUNCH(k_scale, (n + 127) / 128, 128, 0, s, x, y, a, n); }
void row_sum(const float* x, float* out, int rows, int cols) { PT_LAUNCH(k_row_sum, rows, 256, 0, nullptr, x, out, cols); }
void warp_ops(int* out, int threads) { PT_LAUNCH(k_warp_ops, 1, threads, 0, nullptr, out); }
void reverse(const float* x, float* y, int n, int block) {
  PT_LAUNCH(k_reverse, (n + block - 1) / block, block, block * sizeof(float), nullptr, x, y, n);
}
void index2d(int* y, int rows, int cols) {
  PT_LAUNCH(k_index2d, dim3((cols + 15) / 16, (rows + 7) / 8), dim3(16, 8), 0, nullptr, y, rows, cols);
}
void order(int* ticket, int* ord, int* count, int threads) { PT_LAUNCH(k_order, 1, threads, 0, nullptr, ticket, ord, count); }
void histogram(const int* x, int* hist, int n) { PT_LAUNCH(k_histogram, (n + 255) / 256, 256, 0, nullptr, x, hist, n); }
void throw_in_kernel(int* y) { PT_LAUNCH(k_throw, 4, 32, 0, nullptr, y); }
void deadlock(int* y) { PT_LAUNCH(k_deadlock, 1, 32, 0, nullptr, y); }
void big_static_shared(float* y) { PT_LAUNCH(k_big_static_shared, 1, 64, 0, nullptr, y); }
void big_dynamic_shared(float* y, int n, bool opt_in) {
  if (opt_in) CUDA_CHECK(cudaFuncSetAttribute(k_big_dynamic_shared, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              static_cast<int>(n * sizeof(float))));
  PT_LAUNCH(k_big_dynamic_shared, 1, 128, n * sizeof(float), nullptr, y, n);
}
void launch_threads(float* y, int threads) { PT_LAUNCH(k_noop_store, 1, threads, 0, nullptr, y, threads); }
void noop_store(float* y, int n, int block) { PT_LAUNCH(k_noop_store, (n + block - 1) / block, block, 0, nullptr, y, n); }
void one_barrier(float* y, int n, int block) { PT_LAUNCH(k_one_barrier, (n + block - 1) / block, block, 0, nullptr, y, n); }

void off_by_one(const float* x, float* y, int n) { PT_LAUNCH(bug_off_by_one, (n + 63) / 64, 64, 0, nullptr, x, y, n); }
void shared_oob(const float* x, float* y) { PT_LAUNCH(bug_shared_oob, 1, 64, 0, nullptr, x, y); }
void shared_uninit(const float* x, float* y) { PT_LAUNCH(bug_shared_uninit, 1, 64, 0, nullptr, x, y); }
void barrier_in_branch(const float* x, float* y, int n) { PT_LAUNCH(bug_barrier_in_branch, 1, 64, 0, nullptr, x, y, n); }
void barrier_both_arms(const float* x, float* y) { PT_LAUNCH(bug_barrier_both_arms, 1, 64, 0, nullptr, x, y); }
void missing_barrier(const float* x, float* y) { PT_LAUNCH(bug_missing_barrier, 1, 64, 0, nullptr, x, y); }
void produce(const float* x, float* buf, int n, cudaStream_t s) { PT_LAUNCH(k_produce, (n + 63) / 64, 64, 0, s, x, buf, n); }
void consume(const float* buf, float* y, int n, cudaStream_t s) { PT_LAUNCH(k_consume, (n + 63) / 64, 64, 0, s, buf, y, n); }
void unzeroed_accumulator(const float* x, float* acc, int n) {
  PT_LAUNCH(bug_unzeroed_accumulator, (n + 63) / 64, 64, 0, nullptr, x, acc, n);
}
void misaligned_float4(const float* x, float* y, int n4) { PT_LAUNCH(bug_misaligned_float4, 1, 32, 0, nullptr, x, y, n4); }
void shuffle_exited(const float* x, float* y) { PT_LAUNCH(bug_shuffle_exited, 1, 32, 0, nullptr, x, y); }
void float_atomic(const float* x, float* sum, int n) { PT_LAUNCH(bug_float_atomic, (n + 127) / 128, 128, 0, nullptr, x, sum, n); }

}  // namespace simt_test

namespace simt_test {

/// Unbounded recursion: runs into the fiber stack's guard page.
__device__ int deep(int k, volatile int* sink) {
  volatile char pad[512];
  pad[k % 512] = static_cast<char>(k);
  if (k > 1000000) return k;
  const int r = deep(k + 1, sink);  // the frame (and pad) must survive the call
  return r + pad[(k * 7) % 512];
}
__global__ void k_stack_overflow(int* y) { y[threadIdx.x] = deep(0, y); }
void stack_overflow(int* y) { PT_LAUNCH(k_stack_overflow, 1, 1, 0, nullptr, y); }

/// The device intrinsics next to their IEEE versions.
__global__ void k_intrinsics(const float* x, float* y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    y[4 * i + 0] = __expf(x[i]);
    y[4 * i + 1] = expf(x[i]);
    y[4 * i + 2] = __fdividef(1.0f, x[i]);
    y[4 * i + 3] = rsqrtf(fabsf(x[i]) + 1.0f);
  }
}
void intrinsics(const float* x, float* y, int n) { PT_LAUNCH(k_intrinsics, (n + 63) / 64, 64, 0, nullptr, x, y, n); }

}  // namespace simt_test
