// core/cuda/cross_entropy.cu — fused log-softmax + negative log-likelihood over padded logits.
//
// Shapes: logits / dlogits [N, Vp] in dt, of which columns [0, V) are real and [V, Vp)
// padding; targets [N] int32; losses, lse, dloss [N] fp32.
// Invariants:
//  * Padding columns are never read and never written (as if masked to -inf); no second
//    [N, Vp] buffer: the softmax is recomputed from the logits and lse in the backward.
//  * Forward: one block per row (grid-strided), each thread keeps an online (max, Σ exp(x -
//    max)) over its strided columns, combined by a fixed-tree block reduction
//    (core/cuda/reduce.cuh); lse = max + logf(sum), fp32, saved for every row (ignored rows
//    included). losses = lse - x[target], 0 for target < 0. expf (full precision), not __expf.
//  * Backward accumulates (+=): dlogits[i, j] = round(dlogits[i, j] + dloss[i] * (exp(x - lse)
//    - [j == target])) for j < V, in fp32 with one rounding; the target column gets
//    dloss * (p - 1) in one expression, as core/cpu does. Ignored rows are not written.
//  * No atomics; every thread's result depends only on its row: bit-identical across runs.
//  * target >= V is a caller bug (checked by the op on the host, as core/cpu does).
#include "core/cuda/runtime.h"

#include "core/cuda/ops.h"
#include "core/cuda/reduce.cuh"

namespace ptrain::cuda {

namespace {

using kern::from_f32;
using kern::MaxSum;
using kern::to_f32;

constexpr unsigned kThreads = 512;  // threads per row block (fewer for a short vocabulary)

template <class T>
__global__ void cross_entropy_forward_kernel(const T* __restrict__ logits, const int32_t* __restrict__ targets,
                                             float* __restrict__ losses, float* __restrict__ lse, int64_t N,
                                             int64_t Vp, int64_t V) {
  PT_SHARED(MaxSum, red, [32]);
  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {  // uniform across the block
    const T* x = logits + i * Vp;                         // [Vp], columns [0, V) read
    MaxSum p{-INFINITY, 0.0f};
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) p = kern::max_sum_push(p, to_f32(x[j]));
    p = kern::block_max_sum(p, red);
    if (threadIdx.x == 0) {
      const float l = p.m + logf(p.s);
      const int32_t t = targets[i];
      lse[i] = l;
      losses[i] = t < 0 ? 0.0f : l - to_f32(x[t]);
    }
  }
}

template <class T>
__global__ void cross_entropy_backward_kernel(const T* __restrict__ logits, const int32_t* __restrict__ targets,
                                              const float* __restrict__ lse, const float* __restrict__ dloss,
                                              T* __restrict__ dlogits, int64_t N, int64_t Vp, int64_t V) {
  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
    const int32_t t = targets[i];
    if (t < 0) continue;  // ignored row (no barrier in this kernel)
    const T* x = logits + i * Vp;  // [Vp]
    T* dx = dlogits + i * Vp;      // [Vp]
    const float g = dloss[i], l = lse[i];
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      const float p = expf(to_f32(x[j]) - l);
      dx[j] = from_f32<T>(to_f32(dx[j]) + g * (j == t ? p - 1.0f : p));
    }
  }
}

}  // namespace

void cross_entropy_forward(const void* logits, const int32_t* targets, float* losses, float* lse, int64_t N,
                           int64_t Vp, int64_t V, DType dt, CUstream_st* stream) {
  kern::check_dtype("cross_entropy_forward", dt);
  if (V < 1 || V > Vp) throw std::invalid_argument("cross_entropy_forward: need 1 <= V <= Vp");
  if (N <= 0) return;
  const unsigned threads = kern::row_block_threads(V, kThreads);
#define PT_CROSS_ENTROPY_FORWARD(T)                                                                        \
  PT_LAUNCH((cross_entropy_forward_kernel<T>), kern::grid_blocks(N), threads, 0, stream,                  \
            static_cast<const T*>(logits), targets, losses, lse, N, Vp, V)
  PT_DTYPE_SWITCH(dt, PT_CROSS_ENTROPY_FORWARD)
#undef PT_CROSS_ENTROPY_FORWARD
}

void cross_entropy_backward(const void* logits, const int32_t* targets, const float* lse, const float* dloss,
                            void* dlogits, int64_t N, int64_t Vp, int64_t V, DType dt, CUstream_st* stream) {
  kern::check_dtype("cross_entropy_backward", dt);
  if (V < 1 || V > Vp) throw std::invalid_argument("cross_entropy_backward: need 1 <= V <= Vp");
  if (!dlogits || N <= 0) return;
  const unsigned threads = kern::row_block_threads(V, kThreads);
#define PT_CROSS_ENTROPY_BACKWARD(T)                                                                         \
  PT_LAUNCH((cross_entropy_backward_kernel<T>), kern::grid_blocks(N), threads, 0, stream,                   \
            static_cast<const T*>(logits), targets, lse, dloss, static_cast<T*>(dlogits), N, Vp, V)
  PT_DTYPE_SWITCH(dt, PT_CROSS_ENTROPY_BACKWARD)
#undef PT_CROSS_ENTROPY_BACKWARD
}

}  // namespace ptrain::cuda
