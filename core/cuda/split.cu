// core/cuda/split.cu — the last-dim split (GPT-2's fused qkv projection) on the device: a
// column block copied out of a row-major matrix, and its gradient added back.
//
// Shapes: x / dx [rows, ld]; a piece / its gradient [rows, cols], columns [off, off + cols)
// of x (0 <= off, off + cols <= ld).
// Invariants:
//  * Forward overwrites the piece: dst[r, c] = src[r, off + c], a copy (no arithmetic, so
//    bit-exact in every dtype).
//  * Backward accumulates (+=): dx[r, off + c] = round(dx[r, off + c] + dpiece[r, c]), the
//    sum in fp32 and one rounding to dx's dtype (dx may be fp32 for a low-precision piece: an
//    fp32 gradient buffer of a low-precision leaf). The pieces of one split cover disjoint
//    column blocks, so every element of dx gets at most one addition per split: the CPU op's
//    `+=` followed by its one round-on-store, bit for bit.
//  * Rows are grid-strided over blocks, columns over the threads of a block; every index is
//    64-bit (r * ld + off + c exceeds 2^31 for large activations). Pure per-element work, no
//    atomics: deterministic for any thread or block order. Scalar loads (no alignment
//    assumed: a column block of a bf16 row starts at any element).
#include "core/cuda/runtime.h"

#include "core/cuda/ops.h"
#include "core/cuda/reduce.cuh"

namespace ptrain::cuda {

namespace {

using kern::from_f32;
using kern::to_f32;

constexpr unsigned kThreads = 256;

/// dst[r, c] = src[r, off + c]: src [rows, ld], dst [rows, cols].
template <class T>
__global__ void split_columns_kernel(const T* __restrict__ src, T* __restrict__ dst, int64_t rows, int64_t cols,
                                     int64_t ld, int64_t off) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* s = src + r * ld + off;  // [cols]
    T* d = dst + r * cols;             // [cols]
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) d[c] = s[c];
  }
}

/// dx[r, off + c] += dpiece[r, c] (fp32 sum, one rounding to TW): dpiece [rows, cols] in T,
/// dx [rows, ld] in TW (T, or float).
template <class T, class TW = T>
__global__ void split_columns_backward_kernel(const T* __restrict__ dpiece, TW* __restrict__ dx, int64_t rows,
                                              int64_t cols, int64_t ld, int64_t off) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* g = dpiece + r * cols;  // [cols]
    TW* d = dx + r * ld + off;       // [cols]
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) d[c] = from_f32<TW>(to_f32(d[c]) + to_f32(g[c]));
  }
}

void check_block(const char* op, int64_t rows, int64_t cols, int64_t ld, int64_t off) {
  if (rows < 0 || cols < 0 || off < 0 || ld < 0 || off > ld - cols)
    throw std::invalid_argument(std::string(op) + ": column block [" + std::to_string(off) + ", " +
                                std::to_string(off + cols) + ") of rows of " + std::to_string(ld) + " columns (" +
                                std::to_string(rows) + " rows): need 0 <= off and off + cols <= ld");
}

}  // namespace

void split_columns(const void* src, void* dst, int64_t rows, int64_t cols, int64_t ld, int64_t off, DType dt,
                   CUstream_st* stream) {
  kern::check_dtype("split_columns", dt);
  check_block("split_columns", rows, cols, ld, off);
  if (rows == 0 || cols == 0) return;
  const unsigned threads = kern::row_block_threads(cols, kThreads);
#define PT_SPLIT_COLUMNS(T)                                                                                 \
  PT_LAUNCH((split_columns_kernel<T>), kern::grid_blocks(rows), threads, 0, stream, static_cast<const T*>(src), \
            static_cast<T*>(dst), rows, cols, ld, off)
  PT_DTYPE_SWITCH(dt, PT_SPLIT_COLUMNS)
#undef PT_SPLIT_COLUMNS
}

void split_columns_backward(const void* dpiece, void* dx, int64_t rows, int64_t cols, int64_t ld, int64_t off,
                            DType dt, DType dx_dt, CUstream_st* stream) {
  kern::check_dtype("split_columns_backward", dt);
  kern::check_dtype("split_columns_backward (dx)", dx_dt);
  if (dx_dt != dt && dx_dt != DType::f32)
    throw std::invalid_argument("split_columns_backward: dx must have the dtype of the piece's gradient, or be f32");
  check_block("split_columns_backward", rows, cols, ld, off);
  if (!dx || rows == 0 || cols == 0) return;
  const unsigned threads = kern::row_block_threads(cols, kThreads);
#define PT_SPLIT_COLUMNS_BACKWARD(T)                                                                             \
  if (dx_dt == dt) {                                                                                             \
    PT_LAUNCH((split_columns_backward_kernel<T>), kern::grid_blocks(rows), threads, 0, stream,                   \
              static_cast<const T*>(dpiece), static_cast<T*>(dx), rows, cols, ld, off);                           \
  } else {                                                                                                       \
    PT_LAUNCH((split_columns_backward_kernel<T, float>), kern::grid_blocks(rows), threads, 0, stream,            \
              static_cast<const T*>(dpiece), static_cast<float*>(dx), rows, cols, ld, off);                       \
  }
  PT_DTYPE_SWITCH(dt, PT_SPLIT_COLUMNS_BACKWARD)
#undef PT_SPLIT_COLUMNS_BACKWARD
}

}  // namespace ptrain::cuda
