// core/cuda/reduce.cuh — device-side helpers of the CUDA op kernels: element conversion and
// warp/block reductions. Device code only (included by .cu files after core/cuda/runtime.h);
// the CPU kernels have their own reductions (core/cpu/).
//
// Invariants:
//  * Every reduction is a fixed tree: a warp reduces with an xor butterfly (each lane pair
//    computes the same commutative sum, so every lane ends with the same bits), a block
//    reduces its warps' results in warp order. Results depend only on the block size and the
//    values per thread, never on the order threads or blocks run: bit-identical across runs.
//  * Block reductions must be called by every thread of the block at the same call site
//    (they contain __syncthreads), with blockDim.x a multiple of 32, at most 1024, and a
//    1-D block. They end with a barrier, so the shared scratch can be reused at once.
//  * Values are loaded as fp32 (bf16/f16 widened exactly) and stored with one
//    round-to-nearest-even (__float2bfloat16_rn / __float2half_rn).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "core/dtype.h"

namespace ptrain::cuda::kern {

constexpr unsigned kFullMask = 0xffffffffu;

// ---- element conversion: load as fp32, store rounded once ----
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }

template <class T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }

// ---- warp reductions (all 32 lanes of the warp take part; every lane gets the result) ----
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

/// Online softmax partial: m the running max, s = Σ exp(x - m). The empty partial is
/// (-inf, 0). Combining is commutative bit for bit (the larger max is kept, the other sum is
/// rescaled), so the xor butterfly leaves the same bits in every lane.
struct MaxSum {
  float m, s;
};
__device__ __forceinline__ MaxSum max_sum_combine(MaxSum a, MaxSum b) {
  // Order the pair by (m, then s) so that combine(a, b) and combine(b, a) compute the same
  // expression; NaN sums propagate (NaN is never equal to 0).
  const bool swap = b.m > a.m || (b.m == a.m && b.s > a.s);
  const MaxSum hi = swap ? b : a, lo = swap ? a : b;
  const float tail = lo.s == 0.0f ? 0.0f : lo.s * expf(lo.m - hi.m);
  return {hi.m, hi.s + tail};
}
/// Adds one value to an online partial.
__device__ __forceinline__ MaxSum max_sum_push(MaxSum p, float x) {
  if (x > p.m) {
    const float scaled = p.s == 0.0f ? 0.0f : p.s * expf(p.m - x);
    return {x, scaled + 1.0f};
  }
  // x NaN makes s NaN (as on the CPU); x = -inf adds nothing, even while m is still -inf.
  return {p.m, p.s + (x == -INFINITY ? 0.0f : expf(x - p.m))};
}
__device__ __forceinline__ MaxSum warp_max_sum(MaxSum p) {
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum q;
    q.m = __shfl_xor_sync(kFullMask, p.m, o);
    q.s = __shfl_xor_sync(kFullMask, p.s, o);
    p = max_sum_combine(p, q);
  }
  return p;
}

// ---- block reductions: `red` is shared scratch of at least 32 floats (MaxSum: 32 of them) ----
/// Sum of v over the block; every thread gets the same bits.
__device__ __forceinline__ float block_sum(float v, float* red) {
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  const unsigned nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float t = lane < nwarps ? red[lane] : 0.0f;
  t = warp_sum(t);  // every warp reduces the same values the same way
  __syncthreads();
  return t;
}

/// Online (max, sum-exp) over the block; every thread gets the same bits.
__device__ __forceinline__ MaxSum block_max_sum(MaxSum p, MaxSum* red) {
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  const unsigned nwarps = blockDim.x >> 5;
  p = warp_max_sum(p);
  if (lane == 0) red[warp] = p;
  __syncthreads();
  MaxSum t = lane < nwarps ? red[lane] : MaxSum{-INFINITY, 0.0f};
  t = warp_max_sum(t);
  __syncthreads();
  return t;
}

/// Threads per block for a row of `n` elements: a multiple of 32 in [32, max_threads].
inline unsigned row_block_threads(int64_t n, unsigned max_threads) {
  int64_t t = (n + 31) / 32 * 32;
  if (t < 32) t = 32;
  if (t > static_cast<int64_t>(max_threads)) t = max_threads;
  return static_cast<unsigned>(t);
}

/// Blocks of a grid-stride launch over `units` work units (at least 1, at most 2^20).
inline unsigned grid_blocks(int64_t units) {
  if (units < 1) return 1;
  return static_cast<unsigned>(units < (int64_t(1) << 20) ? units : (int64_t(1) << 20));
}

/// Host side: throws std::invalid_argument unless the kernels handle `dt` (f32, bf16, f16).
inline void check_dtype(const char* op, ::ptrain::DType dt) {
  if (dt != ::ptrain::DType::f32 && dt != ::ptrain::DType::bf16 && dt != ::ptrain::DType::f16)
    throw std::invalid_argument(std::string(op) + ": unsupported dtype " + std::string(::ptrain::dtype_name(dt)) +
                                " (the CUDA kernels take f32, bf16 or f16)");
}

}  // namespace ptrain::cuda::kern

/// Host side: expands M(T) for the element type of `dt` (call kern::check_dtype first).
/// Launches are written inside M so that PT_LAUNCH counts each instantiation under its own
/// name (e.g. "rms_norm_forward_kernel<__nv_bfloat16>").
#define PT_DTYPE_SWITCH(dt, M)                  \
  switch (dt) {                                 \
    case ::ptrain::DType::f32: M(float); break; \
    case ::ptrain::DType::bf16: M(__nv_bfloat16); break; \
    default: M(__half); break;                  \
  }
