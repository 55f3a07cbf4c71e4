// core/cuda/rms_norm.cu — RMSNorm (Hugging Face LlamaRMSNorm) forward and backward on the device.
//
// Shapes: x, y, dy, dx [rows, C]; w, dw [C]; rstd [rows] fp32 (saved by the forward).
// Invariants:
//  * Forward overwrites y and rstd; backward accumulates (+=) into dx and dw, each optional.
//  * Row statistics (Σ x^2, Σ dy·w·x) are fp32 sums in core/cpu/norm.cpp's order (lane_sum:
//    16 interleaved accumulators, each in column order, combined pairwise, then the tail):
//    the first 16 threads of the row's block sum one lane each, thread 0 combines. rstd is
//    then the CPU reference's bits, so are dw (same chunks and order below) and, through
//    them, the gradient norm and the clip: a device bf16 run follows the CPU's bf16 run bit
//    for bit where the rest of the step does (the norm weights' fp32 gradients were the first
//    difference between the two). A tree over all threads would be faster for wide rows; the
//    row statistics are a small part of a norm, itself a small part of a step.
//    rstd = 1 / sqrtf(Σx²/C + eps) with IEEE sqrt and division (not rsqrtf), as the CPU.
//  * dw is reduced without atomics: the partial of chunk k (rows [64k, 64k+64), in row order,
//    one thread per column) goes to scratch[k, C]; a second kernel adds the partials in
//    chunk order and then adds the sum to dw, rounding once. The chunking is core/cpu's
//    (kReduceChunk = 64 rows), so the summation order is the CPU's.
//  * Expressions follow core/cpu/norm.cpp term for term: y = w * (x * rstd);
//    dx += rstd * w * dy - (Σ dy·w·x · rstd³ / C) * x; dw partial = fma(dy * x, rstd, partial)
//    (fmadd in core/cpu/fast_math.h, so no compiler's contraction choice changes the bits).
#include "core/cuda/runtime.h"

#include "core/cuda/ops.h"
#include "core/cuda/fast_math.cuh"
#include "core/cuda/reduce.cuh"

namespace ptrain::cuda {

namespace {

using kern::from_f32;
using kern::to_f32;

constexpr unsigned kRowThreads = 256;  // threads per row block (fewer for short rows)
constexpr unsigned kColThreads = 256;  // threads per column block of the dw kernels

/// One block per row (grid-strided): rstd[r] and y[r, :].
template <class T>
__global__ void rms_norm_forward_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                                        float* __restrict__ rstd, int64_t rows, int64_t C, float eps) {
  PT_SHARED(float, red, [32]);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {  // uniform across the block
    const T* xr = x + r * C;                                 // [C]
    T* yr = y + r * C;                                       // [C]
    const float ss = kern::cpu_lane_sum(
        C,
        [xr](int64_t c) {
          const float v = to_f32(xr[c]);
          return v * v;
        },
        red);
    const float rs = 1.0f / sqrtf(ss / static_cast<float>(C) + eps);
    if (threadIdx.x == 0) rstd[r] = rs;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) yr[c] = from_f32<T>(to_f32(w[c]) * (to_f32(xr[c]) * rs));
  }
}

/// One block per row (grid-strided): dx[r, :] += rs w dy - coef x, coef = (Σ dy w x) rs³ / C.
template <class T>
__global__ void rms_norm_backward_dx_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                            const T* __restrict__ w, const float* __restrict__ rstd,
                                            T* __restrict__ dx, int64_t rows, int64_t C) {
  PT_SHARED(float, red, [32]);
  const float inv_c = 1.0f / static_cast<float>(C);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {  // uniform across the block
    const T* dyr = dy + r * C;                               // [C]
    const T* xr = x + r * C;                                 // [C]
    T* dxr = dx + r * C;                                     // [C]
    const float dot =
        kern::cpu_lane_sum(C, [dyr, w, xr](int64_t c) { return to_f32(dyr[c]) * to_f32(w[c]) * to_f32(xr[c]); }, red);
    const float rs = rstd[r];
    const float coef = dot * rs * rs * rs * inv_c;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
      dxr[c] = from_f32<T>(__fadd_rn(
          to_f32(dxr[c]), __fmaf_rn(-coef, to_f32(xr[c]), __fmul_rn(__fmul_rn(rs, to_f32(w[c])), to_f32(dyr[c])))));
  }
}

/// partial[k, c] = Σ_{r in chunk k, in order} dy[r, c] * x[r, c] * rstd[r].
/// Blocks: x over chunks, y over column tiles; one thread per column.
template <class T>
__global__ void rms_norm_backward_dw_partial_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                                    const float* __restrict__ rstd, float* __restrict__ partial,
                                                    int64_t rows, int64_t C, int64_t nchunks) {
  const int64_t cstride = static_cast<int64_t>(gridDim.y) * blockDim.x;
  for (int64_t k = blockIdx.x; k < nchunks; k += gridDim.x) {
    const int64_t r0 = k * kRmsNormDwChunk;
    const int64_t r1 = r0 + kRmsNormDwChunk < rows ? r0 + kRmsNormDwChunk : rows;
    for (int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; c < C; c += cstride) {
      float acc = 0.0f;
      for (int64_t r = r0; r < r1; ++r)  // one explicit fma, as core/cpu/norm.cpp
        acc = __fmaf_rn(__fmul_rn(to_f32(dy[r * C + c]), to_f32(x[r * C + c])), rstd[r], acc);
      partial[k * C + c] = acc;
    }
  }
}

/// dw[c] += Σ_k partial[k, c], the chunks added in order, rounded once.
template <class T>
__global__ void rms_norm_backward_dw_sum_kernel(const float* __restrict__ partial, T* __restrict__ dw,
                                                int64_t nchunks, int64_t C) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < C; c += stride) {
    float s = partial[c];
    for (int64_t k = 1; k < nchunks; ++k) s += partial[k * C + c];
    dw[c] = from_f32<T>(to_f32(dw[c]) + s);
  }
}

int64_t dw_chunks(int64_t rows) { return (rows + kRmsNormDwChunk - 1) / kRmsNormDwChunk; }

}  // namespace

void rms_norm_forward(const void* x, const void* w, void* y, float* rstd, int64_t rows, int64_t C, double eps,
                      DType dt, CUstream_st* stream) {
  kern::check_dtype("rms_norm_forward", dt);
  if (rows <= 0 || C <= 0) return;
  const float e = static_cast<float>(eps);
  const unsigned threads = kern::row_block_threads(C, kRowThreads);
#define PT_RMS_NORM_FORWARD(T)                                                                             \
  PT_LAUNCH((rms_norm_forward_kernel<T>), kern::grid_blocks(rows), threads, 0, stream, static_cast<const T*>(x), \
            static_cast<const T*>(w), static_cast<T*>(y), rstd, rows, C, e)
  PT_DTYPE_SWITCH(dt, PT_RMS_NORM_FORWARD)
#undef PT_RMS_NORM_FORWARD
}

size_t rms_norm_backward_scratch_bytes(int64_t rows, int64_t C) {
  if (rows <= 0 || C <= 0) return 0;
  return static_cast<size_t>(dw_chunks(rows)) * static_cast<size_t>(C) * sizeof(float);
}

void rms_norm_backward(const void* dy, const void* x, const void* w, const float* rstd, void* dx, void* dw,
                       int64_t rows, int64_t C, DType dt, void* scratch, CUstream_st* stream) {
  rms_norm_backward(dy, x, w, rstd, dx, dw, rows, C, dt, dt, scratch, stream);
}

void rms_norm_backward(const void* dy, const void* x, const void* w, const float* rstd, void* dx, void* dw,
                       int64_t rows, int64_t C, DType dt, DType dw_dt, void* scratch, CUstream_st* stream) {
  kern::check_dtype("rms_norm_backward", dt);
  kern::check_dtype("rms_norm_backward (dw)", dw_dt);
  if ((!dx && !dw) || rows <= 0 || C <= 0) return;
  if (dw && !scratch)
    throw std::invalid_argument("rms_norm_backward: dw needs scratch (rms_norm_backward_scratch_bytes), got nullptr");
  if (dx) {
    const unsigned threads = kern::row_block_threads(C, kRowThreads);
#define PT_RMS_NORM_BACKWARD_DX(T)                                                                             \
  PT_LAUNCH((rms_norm_backward_dx_kernel<T>), kern::grid_blocks(rows), threads, 0, stream,                   \
            static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const T*>(w), rstd, static_cast<T*>(dx), \
            rows, C)
    PT_DTYPE_SWITCH(dt, PT_RMS_NORM_BACKWARD_DX)
#undef PT_RMS_NORM_BACKWARD_DX
  }
  if (dw) {
    float* partial = static_cast<float*>(scratch);  // [nchunks, C]
    const int64_t nchunks = dw_chunks(rows);
    const int64_t col_tiles = (C + kColThreads - 1) / kColThreads;
    const dim3 grid(kern::grid_blocks(nchunks), static_cast<unsigned>(col_tiles < 65535 ? col_tiles : 65535));
#define PT_RMS_NORM_BACKWARD_DW_PARTIAL(T)                                                                     \
  PT_LAUNCH((rms_norm_backward_dw_partial_kernel<T>), grid, kColThreads, 0, stream, static_cast<const T*>(dy), \
            static_cast<const T*>(x), rstd, partial, rows, C, nchunks)
    PT_DTYPE_SWITCH(dt, PT_RMS_NORM_BACKWARD_DW_PARTIAL)
#undef PT_RMS_NORM_BACKWARD_DW_PARTIAL
    // The sum is in the dtype of dw (fp32 gradients of bf16 weights, or the weights' own).
#define PT_RMS_NORM_BACKWARD_DW_SUM(T)                                                                          \
  PT_LAUNCH((rms_norm_backward_dw_sum_kernel<T>), kern::grid_blocks(col_tiles), kColThreads, 0, stream,         \
            static_cast<const float*>(partial), static_cast<T*>(dw), nchunks, C)
    PT_DTYPE_SWITCH(dw_dt, PT_RMS_NORM_BACKWARD_DW_SUM)
#undef PT_RMS_NORM_BACKWARD_DW_SUM
  }
}

}  // namespace ptrain::cuda
