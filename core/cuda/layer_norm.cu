// core/cuda/layer_norm.cu — LayerNorm (torch.nn.LayerNorm over the last dimension) forward
// and backward on the device.
//
// Shapes: x, y, dy, dx [rows, C]; w, b, dw, db [C]; mean, rstd [rows] fp32 (saved by the
// forward).
// Invariants:
//  * Forward overwrites y, mean and rstd; b may be nullptr (no bias). Backward accumulates
//    (+=) into dx, dw and db, each optional (nullptr: not computed).
//  * Row statistics are fp32 sums in core/cpu/norm.cpp's lane order (kern::cpu_lane_sum,
//    core/cuda/fast_math.cuh), one block per row, and the multiply-adds are the CPU's fmadds
//    written out: the results are the CPU reference's bits. Two passes, as the CPU: mean = Σx / C, then
//    the biased variance var = Σ(x - mean)² / C (no E[x²] - mean² cancellation);
//    rstd = 1 / sqrtf(var + eps) with IEEE sqrt and division.
//  * y = ((x - mean) rstd) w + b;  with xh = (x - mean) rstd and g = dy w:
//    dx += rstd (g - mean(g) - xh mean(g xh));  dw += Σ_rows dy xh;  db += Σ_rows dy.
//  * dw and db are reduced without atomics: the partials of chunk k (rows [64k, 64k + 64), in
//    row order, one thread per column) go to scratch (dw partials [nchunks, C], then db
//    partials [nchunks, C]); a second kernel adds the partials in chunk order, then adds the
//    sum to dw / db with one rounding. The chunking is core/cpu's (kReduceChunk = 64 rows).
#include "core/cuda/runtime.h"

#include "core/cuda/ops.h"
#include "core/cuda/fast_math.cuh"
#include "core/cuda/reduce.cuh"

namespace ptrain::cuda {

namespace {

using kern::from_f32;
using kern::to_f32;

constexpr unsigned kRowThreads = 256;  // threads per row block (fewer for short rows)
constexpr unsigned kColThreads = 256;  // threads per column block of the dw/db kernels

/// One block per row (grid-strided): mean[r], rstd[r] and y[r, :].
template <class T>
__global__ void layer_norm_forward_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                                          T* __restrict__ y, float* __restrict__ mean, float* __restrict__ rstd,
                                          int64_t rows, int64_t C, float eps) {
  PT_SHARED(float, red, [32]);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {  // uniform across the block
    const T* xr = x + r * C;                                 // [C]
    T* yr = y + r * C;                                       // [C]
    const float m = kern::cpu_lane_sum(C, [xr](int64_t c) { return to_f32(xr[c]); }, red) / static_cast<float>(C);
    const float var = kern::cpu_lane_sum(
                          C,
                          [xr, m](int64_t c) {
                            const float d = to_f32(xr[c]) - m;
                            return d * d;
                          },
                          red) /
                      static_cast<float>(C);
    const float rs = 1.0f / sqrtf(var + eps);
    if (threadIdx.x == 0) {
      mean[r] = m;
      rstd[r] = rs;
    }
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {  // the CPU's fmadd, written out
      const float xh = __fmul_rn(__fsub_rn(to_f32(xr[c]), m), rs);
      yr[c] = from_f32<T>(b ? __fmaf_rn(xh, to_f32(w[c]), to_f32(b[c])) : __fmul_rn(xh, to_f32(w[c])));
    }
  }
}

/// One block per row (grid-strided): dx[r, :] += rs (g - mean(g) - xh mean(g xh)), g = dy w.
template <class T>
__global__ void layer_norm_backward_dx_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                              const T* __restrict__ w, const float* __restrict__ mean,
                                              const float* __restrict__ rstd, T* __restrict__ dx, int64_t rows,
                                              int64_t C) {
  PT_SHARED(float, red, [32]);
  const float inv_c = 1.0f / static_cast<float>(C);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {  // uniform across the block
    const T* dyr = dy + r * C;                               // [C]
    const T* xr = x + r * C;                                 // [C]
    T* dxr = dx + r * C;                                     // [C]
    const float m = mean[r], rs = rstd[r];
    const float mg = kern::cpu_lane_sum(C, [dyr, w](int64_t c) { return to_f32(dyr[c]) * to_f32(w[c]); }, red) * inv_c;
    const float mgx = kern::cpu_lane_sum(
                          C,
                          [dyr, w, xr, m, rs](int64_t c) {
                            return to_f32(dyr[c]) * to_f32(w[c]) * ((to_f32(xr[c]) - m) * rs);
                          },
                          red) *
                      inv_c;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {  // the CPU's fmadds, written out
      const float xh = __fmul_rn(__fsub_rn(to_f32(xr[c]), m), rs);
      const float t = __fmaf_rn(-xh, mgx, __fmaf_rn(to_f32(dyr[c]), to_f32(w[c]), -mg));
      dxr[c] = from_f32<T>(__fmaf_rn(rs, t, to_f32(dxr[c])));
    }
  }
}

/// pw[k, c] = Σ_{r in chunk k, in order} dy[r, c] xh[r, c];  pb[k, c] = Σ dy[r, c]
/// (pw / pb nullptr: not computed). Blocks: x over chunks, y over column tiles; one thread
/// per column.
template <class T>
__global__ void layer_norm_backward_dwdb_partial_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                                        const float* __restrict__ mean,
                                                        const float* __restrict__ rstd, float* __restrict__ pw,
                                                        float* __restrict__ pb, int64_t rows, int64_t C,
                                                        int64_t nchunks) {
  const int64_t cstride = static_cast<int64_t>(gridDim.y) * blockDim.x;
  for (int64_t k = blockIdx.x; k < nchunks; k += gridDim.x) {
    const int64_t r0 = k * kLayerNormDwChunk;
    const int64_t r1 = r0 + kLayerNormDwChunk < rows ? r0 + kLayerNormDwChunk : rows;
    for (int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; c < C; c += cstride) {
      float aw = 0.0f, ab = 0.0f;
      for (int64_t r = r0; r < r1; ++r) {
        const float g = to_f32(dy[r * C + c]);
        if (pw) aw = __fmaf_rn(g, __fmul_rn(__fsub_rn(to_f32(x[r * C + c]), mean[r]), rstd[r]), aw);
        ab = __fadd_rn(ab, g);
      }
      if (pw) pw[k * C + c] = aw;
      if (pb) pb[k * C + c] = ab;
    }
  }
}

/// dw[c] += Σ_k pw[k, c];  db[c] += Σ_k pb[k, c]: the chunks added in order, rounded once.
template <class T>
__global__ void layer_norm_backward_dwdb_sum_kernel(const float* __restrict__ pw, const float* __restrict__ pb,
                                                    T* __restrict__ dw, T* __restrict__ db, int64_t nchunks,
                                                    int64_t C) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < C; c += stride) {
    if (dw) {
      float s = pw[c];
      for (int64_t k = 1; k < nchunks; ++k) s += pw[k * C + c];
      dw[c] = from_f32<T>(to_f32(dw[c]) + s);
    }
    if (db) {
      float s = pb[c];
      for (int64_t k = 1; k < nchunks; ++k) s += pb[k * C + c];
      db[c] = from_f32<T>(to_f32(db[c]) + s);
    }
  }
}

int64_t dwdb_chunks(int64_t rows) { return (rows + kLayerNormDwChunk - 1) / kLayerNormDwChunk; }

}  // namespace

void layer_norm_forward(const void* x, const void* w, const void* b, void* y, float* mean, float* rstd, int64_t rows,
                        int64_t C, double eps, DType dt, CUstream_st* stream) {
  kern::check_dtype("layer_norm_forward", dt);
  if (rows <= 0 || C <= 0) return;
  const float e = static_cast<float>(eps);
  const unsigned threads = kern::row_block_threads(C, kRowThreads);
#define PT_LAYER_NORM_FORWARD(T)                                                                                 \
  PT_LAUNCH((layer_norm_forward_kernel<T>), kern::grid_blocks(rows), threads, 0, stream, static_cast<const T*>(x), \
            static_cast<const T*>(w), static_cast<const T*>(b), static_cast<T*>(y), mean, rstd, rows, C, e)
  PT_DTYPE_SWITCH(dt, PT_LAYER_NORM_FORWARD)
#undef PT_LAYER_NORM_FORWARD
}

size_t layer_norm_backward_scratch_bytes(int64_t rows, int64_t C) {
  if (rows <= 0 || C <= 0) return 0;
  return 2 * static_cast<size_t>(dwdb_chunks(rows)) * static_cast<size_t>(C) * sizeof(float);
}

void layer_norm_backward(const void* dy, const void* x, const void* w, const float* mean, const float* rstd, void* dx,
                         void* dw, void* db, int64_t rows, int64_t C, DType dt, void* scratch, CUstream_st* stream) {
  layer_norm_backward(dy, x, w, mean, rstd, dx, dw, db, rows, C, dt, dt, scratch, stream);
}

void layer_norm_backward(const void* dy, const void* x, const void* w, const float* mean, const float* rstd, void* dx,
                         void* dw, void* db, int64_t rows, int64_t C, DType dt, DType dwdb_dt, void* scratch,
                         CUstream_st* stream) {
  kern::check_dtype("layer_norm_backward", dt);
  kern::check_dtype("layer_norm_backward (dw, db)", dwdb_dt);
  if ((!dx && !dw && !db) || rows <= 0 || C <= 0) return;
  if ((dw || db) && !scratch)
    throw std::invalid_argument(
        "layer_norm_backward: dw/db need scratch (layer_norm_backward_scratch_bytes), got nullptr");
  if (dx) {
    const unsigned threads = kern::row_block_threads(C, kRowThreads);
#define PT_LAYER_NORM_BACKWARD_DX(T)                                                                             \
  PT_LAUNCH((layer_norm_backward_dx_kernel<T>), kern::grid_blocks(rows), threads, 0, stream,                   \
            static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const T*>(w), mean, rstd,          \
            static_cast<T*>(dx), rows, C)
    PT_DTYPE_SWITCH(dt, PT_LAYER_NORM_BACKWARD_DX)
#undef PT_LAYER_NORM_BACKWARD_DX
  }
  if (dw || db) {
    const int64_t nchunks = dwdb_chunks(rows);
    float* pw = dw ? static_cast<float*>(scratch) : nullptr;                       // [nchunks, C]
    float* pb = db ? static_cast<float*>(scratch) + nchunks * C : nullptr;         // [nchunks, C]
    const int64_t col_tiles = (C + kColThreads - 1) / kColThreads;
    const dim3 grid(kern::grid_blocks(nchunks), static_cast<unsigned>(col_tiles < 65535 ? col_tiles : 65535));
#define PT_LAYER_NORM_BACKWARD_DWDB_PARTIAL(T)                                                                       \
  PT_LAUNCH((layer_norm_backward_dwdb_partial_kernel<T>), grid, kColThreads, 0, stream, static_cast<const T*>(dy), \
            static_cast<const T*>(x), mean, rstd, pw, pb, rows, C, nchunks)
    PT_DTYPE_SWITCH(dt, PT_LAYER_NORM_BACKWARD_DWDB_PARTIAL)
#undef PT_LAYER_NORM_BACKWARD_DWDB_PARTIAL
    // The sums are in the dtype of dw/db (fp32 gradients of bf16 weights, or the weights' own).
#define PT_LAYER_NORM_BACKWARD_DWDB(T)                                                                               \
  PT_LAUNCH((layer_norm_backward_dwdb_sum_kernel<T>), kern::grid_blocks(col_tiles), kColThreads, 0, stream,         \
            static_cast<const float*>(pw), static_cast<const float*>(pb), static_cast<T*>(dw), static_cast<T*>(db), \
            nchunks, C)
    PT_DTYPE_SWITCH(dwdb_dt, PT_LAYER_NORM_BACKWARD_DWDB)
#undef PT_LAYER_NORM_BACKWARD_DWDB
  }
}

}  // namespace ptrain::cuda
