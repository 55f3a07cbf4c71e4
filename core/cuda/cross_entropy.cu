// core/cuda/cross_entropy.cu — fused log-softmax + negative log-likelihood over padded logits.
//
// Shapes: logits / dlogits [N, Vp] in dt, of which columns [0, V) are real and [V, Vp)
// padding; targets [N] int32; losses, lse, dloss [N] fp32.
// Invariants:
//  * Padding columns are never read and never written (as if masked to -inf); no second
//    [N, Vp] buffer: the softmax is recomputed from the logits and lse in the backward.
//  * Forward: one block per row (grid-strided), the statistics in core/cpu/cross_entropy.cpp's
//    order and arithmetic, so lse and the losses are the CPU reference's bits: the row max
//    (exact in any order), then Σ exp(x - max) as the CPU's row_lse sums it — 16 lanes (one
//    thread each), within each 256-column block an fp32 partial per lane, added to the lane's
//    fp64 sum, the tail columns in fp64 per lane, the lanes added in order — and
//    lse = max + log(sum) in fp64, saved as fp32 for every row (ignored rows included);
//    losses = (fp32)(lse - x[target]) from the fp64 lse, 0 for target < 0. exp is the CPU's
//    polynomial (kern::cpu_exp, core/cuda/fast_math.cuh: the same operations), not
//    expf. Bit-identical losses and gradients mean a device run follows the CPU's in bf16
//    (a one-ulp flip of one logit gradient was the first difference between the two).
//    The cost: 16 active lanes per row; the exps dominate either way.
//  * Backward accumulates (+=): dlogits[i, j] = round(fma(dloss[i], p, dlogits[i, j])) with
//    p = exp(x - lse) - [j == target], for j < V, in fp32 with one rounding, as core/cpu does.
//    Ignored rows are not written.
//  * No atomics; every thread's result depends only on its row: bit-identical across runs.
//  * target >= V is a caller bug (checked by the op on the host, as core/cpu does).
#include "core/cuda/runtime.h"

#include "core/cuda/ops.h"
#include "core/cuda/fast_math.cuh"
#include "core/cuda/reduce.cuh"

namespace ptrain::cuda {

namespace {

using kern::from_f32;
using kern::to_f32;

constexpr unsigned kThreads = 512;       // threads per row block of the backward
constexpr unsigned kForwardThreads = 32;  // one warp per row: 16 lanes sum, all take the max
constexpr int kLanes = 16;                // core/cpu/cross_entropy.cpp's kLanes
constexpr int64_t kLaneBlock = 256;       // and its kBlock

template <class T>
__global__ void cross_entropy_forward_kernel(const T* __restrict__ logits, const int32_t* __restrict__ targets,
                                             float* __restrict__ losses, float* __restrict__ lse, int64_t N,
                                             int64_t Vp, int64_t V) {
  PT_SHARED(float, maxes, [kForwardThreads]);
  PT_SHARED(double, lanes, [kLanes]);
  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {  // uniform across the block
    const T* x = logits + i * Vp;                         // [Vp], columns [0, V) read
    // the row max, as the CPU's (x[j] > m ? x[j] : m from x[0]): exact in any order
    float m = to_f32(x[0]);
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      const float v = to_f32(x[j]);
      m = v > m ? v : m;
    }
    maxes[threadIdx.x] = m;
    __syncthreads();
    m = maxes[0];
    for (unsigned k = 1; k < blockDim.x; ++k) m = maxes[k] > m ? maxes[k] : m;
    // Σ exp(x - m) in the CPU's lanes and blocks (see the file comment)
    if (threadIdx.x < static_cast<unsigned>(kLanes)) {
      const int64_t l = threadIdx.x;
      double acc = 0.0;
      int64_t j = 0;
      for (; j + kLaneBlock <= V; j += kLaneBlock) {
        float part = 0.0f;
        for (int64_t k = 0; k < kLaneBlock; k += kLanes) part = __fadd_rn(part, kern::cpu_exp(__fsub_rn(to_f32(x[j + k + l]), m)));
        acc += static_cast<double>(part);
      }
      for (int64_t c = j + l; c < V; c += kLanes) acc += static_cast<double>(kern::cpu_exp(__fsub_rn(to_f32(x[c]), m)));
      lanes[l] = acc;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      double L;
      if (m == -INFINITY) {
        L = -INFINITY;
      } else if (m != m || m == INFINITY) {  // NaN or +inf: the CPU returns m
        L = static_cast<double>(m);
      } else {
        double sum = 0.0;
        for (int k = 0; k < kLanes; ++k) sum += lanes[k];
        L = static_cast<double>(m) + log(sum);
      }
      const int32_t t = targets[i];
      lse[i] = static_cast<float>(L);
      losses[i] = t < 0 ? 0.0f : static_cast<float>(L - static_cast<double>(to_f32(x[t])));
    }
    __syncthreads();  // maxes and lanes are reused for the next row
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
      const float p = kern::cpu_exp(__fsub_rn(to_f32(x[j]), l));
      dx[j] = from_f32<T>(__fmaf_rn(g, j == t ? __fsub_rn(p, 1.0f) : p, to_f32(dx[j])));
    }
  }
}

}  // namespace

void cross_entropy_forward(const void* logits, const int32_t* targets, float* losses, float* lse, int64_t N,
                           int64_t Vp, int64_t V, DType dt, CUstream_st* stream) {
  kern::check_dtype("cross_entropy_forward", dt);
  if (V < 1 || V > Vp) throw std::invalid_argument("cross_entropy_forward: need 1 <= V <= Vp");
  if (N <= 0) return;
#define PT_CROSS_ENTROPY_FORWARD(T)                                                                        \
  PT_LAUNCH((cross_entropy_forward_kernel<T>), kern::grid_blocks(N), kForwardThreads, 0, stream,          \
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
