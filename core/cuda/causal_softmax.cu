// core/cuda/causal_softmax.cu — the fused causal-softmax kernels of device attention
// (core/cuda/attention.h; composed with the GEMMs in core/cuda/attention.cpp).
//
// Row t of a [T, T] score matrix has n = t + 1 causal entries. One block per row (grid-strided
// over rows; the loop bound is uniform across the block, so every thread reaches every
// barrier), threads striding the columns.
// Invariants:
//  * The arithmetic and summation order are core/cpu/attention.cpp's (causal_softmax_row,
//    softmax_backward_row), so the probabilities and dS are the CPU reference's bits (in bf16
//    this keeps a device run on the CPU's trajectory): 16 lanes (one thread each) over whole
//    vectors of 16 columns, combined pairwise, then the tail in order; exp is the CPU's
//    polynomial (kern::cpu_exp, core/cuda/fast_math.cuh), the multiply-adds written out (__fmaf_rn, never contracted).
//  * forward: x = scale · s (fp32, __fmul_rn: the CPU's GEMM applies alpha = scale to the
//    same fp32 dot product); m = max over t' <= t (exact, any order); Σ over the lanes of
//    w = min(T, roundup(n, 16)) columns (masked to 0 beyond t), tail [w16, w) in order;
//    p = exp(x − m) · (1 / Σ), rounded once to T; entries t' > t are stored as exact zeros.
//  * backward: dot = Σ dp · p over the CPU's row-block width r1 = min(T, (t / 64 + 1) · 64)
//    (p is 0 beyond t) in the same lane order; ds = (p (dp − dot)) · scale, rounded once to T;
//    zeros above the diagonal.
//  * In place (s == p, dp == ds, only for T = float): a barrier separates every read of the
//    row's statistics passes (the tail is read by every thread) from the writes.
//  * Indices and offsets are 64-bit.
#include "core/cuda/runtime.h"

#include "core/cuda/attention.h"
#include "core/cuda/fast_math.cuh"
#include "core/cuda/reduce.cuh"

namespace ptrain::cuda {

namespace {

using kern::from_f32;
using kern::to_f32;

constexpr unsigned kRowThreads = 256;  // threads per row block (fewer for short rows)
constexpr int kLanes = 16;             // core/cpu/attention.cpp's kLanes
constexpr int64_t kCpuRowBlock = 64;   // and its kRowBlock (the backward's dot runs over its width)

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
  PT_SHARED(float, red, [kRowThreads]);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {  // uniform across the block
    int64_t t = 0;
    const float* sr = s + row_offset(row, n_inner, Tn, s_so, s_si, &t);  // [Tn]
    T* pr = p + row_offset(row, n_inner, Tn, p_so, p_si, &t);            // [Tn]
    const int64_t n = t + 1;
    // the max over t' <= t (exact in any order)
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      const float x = __fmul_rn(sr[j], scale);
      m = x > m ? x : m;
    }
    red[threadIdx.x] = m;
    __syncthreads();
    m = red[0];
    for (unsigned k = 1; k < blockDim.x; ++k) m = red[k] > m ? red[k] : m;
    __syncthreads();
    // Σ exp(x − m) in the CPU's order: lanes over whole vectors, then the tail [w16, w) in order
    const int64_t w = Tn < (n + kLanes - 1) / kLanes * kLanes ? Tn : (n + kLanes - 1) / kLanes * kLanes;
    float sum = kern::cpu_lanes(
        w,
        [sr, scale, m, n](float a, int64_t j) {
          return __fadd_rn(a, j < n ? kern::cpu_exp(__fsub_rn(__fmul_rn(sr[j], scale), m)) : 0.0f);
        },
        red);
    for (int64_t j = w / kLanes * kLanes; j < w; ++j)  // every thread, the same order: same bits
      sum = __fadd_rn(sum, j < n ? kern::cpu_exp(__fsub_rn(__fmul_rn(sr[j], scale), m)) : 0.0f);
    const float inv = 1.0f / sum;
    __syncthreads();  // in place (s == p): every thread's reads of the row end before any write
    for (int64_t j = threadIdx.x; j < Tn; j += blockDim.x)
      pr[j] = j < n ? from_f32<T>(__fmul_rn(kern::cpu_exp(__fsub_rn(__fmul_rn(sr[j], scale), m)), inv))
                    : from_f32<T>(0.0f);
  }
}

template <class T>
__global__ void causal_softmax_backward_kernel(const T* __restrict__ p, const float* dp, T* ds, int64_t rows,
                                               int64_t n_inner, int64_t Tn, int64_t p_so, int64_t p_si, int64_t d_so,
                                               int64_t d_si, float scale) {
  PT_SHARED(float, red, [kLanes + 1]);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {  // uniform across the block
    int64_t t = 0;
    const T* pr = p + row_offset(row, n_inner, Tn, p_so, p_si, &t);          // [Tn]
    const int64_t off = row_offset(row, n_inner, Tn, d_so, d_si, &t);
    const float* dpr = dp + off;                                             // [Tn]
    T* dsr = ds + off;                                                       // [Tn]
    const int64_t n = t + 1;
    // Σ dp · p over the CPU's row-block width (p is 0 beyond t: the extra terms add ±0)
    const int64_t r1 = (t / kCpuRowBlock + 1) * kCpuRowBlock < Tn ? (t / kCpuRowBlock + 1) * kCpuRowBlock : Tn;
    const auto term = [dpr, pr, n](float a, int64_t j) { return j < n ? __fmaf_rn(dpr[j], to_f32(pr[j]), a) : a; };
    float dot = kern::cpu_lanes(r1, term, red);
    float tail = 0.0f;
    for (int64_t j = r1 / kLanes * kLanes; j < r1; ++j) tail = term(tail, j);
    dot = __fadd_rn(dot, tail);
    __syncthreads();  // in place (dp == ds): every thread's reads of the row end before any write
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
