// core/cuda/causal_softmax.cu — the fused causal-softmax kernels of device attention
// (core/cuda/attention.h; composed with the GEMMs in core/cuda/attention.cpp).
//
// Row t of a [T, T] score matrix has n = t + 1 causal entries. One block per row (grid-strided
// over rows; the loop bound is uniform across the block, so every thread reaches every
// barrier), threads striding the columns.
// Invariants:
//  * forward: x = scale · s (fp32, __fmul_rn: the same x in both passes, never contracted), online (max, Σexp) per thread, combined by
//    kern::block_max_sum (a fixed tree: bit-identical across thread and block orders);
//    p = expf(x − m) · (1 / Σ) as core/cpu's causal_softmax_row (exp, then times the inverse),
//    rounded once to T; entries t' > t are stored as exact zeros.
//  * backward: dot = Σ_{t' <= t} dp · p (kern::block_sum); ds = (p (dp − dot)) · scale,
//    rounded once to T; zeros above the diagonal.
//  * In place (s == p, dp == ds, only for T = float): each element is read and then written by
//    the same thread, and every read of the first pass happens before the block reduction's
//    barrier: no element is overwritten before the whole block has read it.
//  * Indices and offsets are 64-bit.
#include "core/cuda/runtime.h"

#include "core/cuda/attention.h"
#include "core/cuda/reduce.cuh"

namespace ptrain::cuda {

namespace {

using kern::from_f32;
using kern::to_f32;

constexpr unsigned kRowThreads = 256;  // threads per row block (fewer for short rows)

/// Start (elements) of row `row` of a buffer addressed by (o, i, t) with strides (so, si, T).
__device__ __forceinline__ int64_t row_offset(int64_t row, int64_t n_inner, int64_t T, int64_t so, int64_t si,
                                              int64_t* t_out) {
  const int64_t t = row % T, oi = row / T;
  const int64_t i = oi % n_inner, o = oi / n_inner;
  *t_out = t;
  return o * so + i * si + t * T;
}

template <class T>
__global__ void causal_softmax_forward_kernel(const float* s, T* p, int64_t rows, int64_t n_inner, int64_t Tn,
                                              int64_t s_so, int64_t s_si, int64_t p_so, int64_t p_si, float scale) {
  PT_SHARED(kern::MaxSum, red, [32]);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {  // uniform across the block
    int64_t t = 0;
    const float* sr = s + row_offset(row, n_inner, Tn, s_so, s_si, &t);  // [Tn]
    T* pr = p + row_offset(row, n_inner, Tn, p_so, p_si, &t);            // [Tn]
    const int64_t n = t + 1;
    kern::MaxSum ms{-INFINITY, 0.0f};
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) ms = kern::max_sum_push(ms, __fmul_rn(sr[j], scale));
    ms = kern::block_max_sum(ms, red);
    const float m = ms.m, inv = 1.0f / ms.s;
    for (int64_t j = threadIdx.x; j < Tn; j += blockDim.x)
      pr[j] = j < n ? from_f32<T>(expf(__fmul_rn(sr[j], scale) - m) * inv) : from_f32<T>(0.0f);
  }
}

template <class T>
__global__ void causal_softmax_backward_kernel(const T* __restrict__ p, const float* dp, T* ds, int64_t rows,
                                               int64_t n_inner, int64_t Tn, int64_t p_so, int64_t p_si, int64_t d_so,
                                               int64_t d_si, float scale) {
  PT_SHARED(float, red, [32]);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {  // uniform across the block
    int64_t t = 0;
    const T* pr = p + row_offset(row, n_inner, Tn, p_so, p_si, &t);          // [Tn]
    const int64_t off = row_offset(row, n_inner, Tn, d_so, d_si, &t);
    const float* dpr = dp + off;                                             // [Tn]
    T* dsr = ds + off;                                                       // [Tn]
    const int64_t n = t + 1;
    float dot = 0.0f;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) dot += dpr[j] * to_f32(pr[j]);
    dot = kern::block_sum(dot, red);
    for (int64_t j = threadIdx.x; j < Tn; j += blockDim.x)
      dsr[j] = j < n ? from_f32<T>(to_f32(pr[j]) * (dpr[j] - dot) * scale) : from_f32<T>(0.0f);
  }
}

}  // namespace

void causal_softmax_forward(const float* s, void* p, int64_t n_outer, int64_t n_inner, int64_t T, int64_t s_so,
                            int64_t s_si, int64_t p_so, int64_t p_si, float scale, DType dt, CUstream_st* stream) {
  kern::check_dtype("causal_softmax_forward", dt);
  if (n_outer <= 0 || n_inner <= 0 || T <= 0) return;
  const int64_t rows = n_outer * n_inner * T;
  const unsigned threads = kern::row_block_threads(T, kRowThreads);
#define PT_CAUSAL_SOFTMAX_FORWARD(TT)                                                                          \
  PT_LAUNCH((causal_softmax_forward_kernel<TT>), kern::grid_blocks(rows), threads, 0, stream, s,               \
            static_cast<TT*>(p), rows, n_inner, T, s_so, s_si, p_so, p_si, scale)
  PT_DTYPE_SWITCH(dt, PT_CAUSAL_SOFTMAX_FORWARD)
#undef PT_CAUSAL_SOFTMAX_FORWARD
}

void causal_softmax_backward(const void* p, const float* dp, void* ds, int64_t n_outer, int64_t n_inner, int64_t T,
                             int64_t p_so, int64_t p_si, int64_t d_so, int64_t d_si, float scale, DType dt,
                             CUstream_st* stream) {
  kern::check_dtype("causal_softmax_backward", dt);
  if (n_outer <= 0 || n_inner <= 0 || T <= 0) return;
  const int64_t rows = n_outer * n_inner * T;
  const unsigned threads = kern::row_block_threads(T, kRowThreads);
#define PT_CAUSAL_SOFTMAX_BACKWARD(TT)                                                                         \
  PT_LAUNCH((causal_softmax_backward_kernel<TT>), kern::grid_blocks(rows), threads, 0, stream,                 \
            static_cast<const TT*>(p), dp, static_cast<TT*>(ds), rows, n_inner, T, p_so, p_si, d_so, d_si, scale)
  PT_DTYPE_SWITCH(dt, PT_CAUSAL_SOFTMAX_BACKWARD)
#undef PT_CAUSAL_SOFTMAX_BACKWARD
}

}  // namespace ptrain::cuda
