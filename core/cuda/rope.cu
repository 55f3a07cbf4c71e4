// core/cuda/rope.cu — rotary position embedding, rotate-half form (Hugging Face LLaMA),
// forward and backward on the device.
//
// Shapes: x, y, dy, dx [B, Tn, H, D] (D even); cos, sin [Tn, D/2] fp32 (core/cpu's
// rope_tables: row t holds position t + pos0).
// Invariants:
//  * Forward overwrites y (y == x in place is allowed: each thread reads its pair
//    (x[i], x[i + D/2]) before writing it, and no other thread touches that pair); backward
//    accumulates dx += R^T dy, and a nullptr dx is not computed.
//      y[i] = x[i] c - x[i+h] s ;  y[i+h] = x[i+h] c + x[i] s            (h = D/2, i < h)
//      dx[i] += dy[i] c + dy[i+h] s ;  dx[i+h] += dy[i+h] c - dy[i] s
//  * fp32 arithmetic (nvcc contracts each pair of products into an FMA), one rounding on store.
//  * Work: blocks stride over the B*Tn token rows (row r uses table row r % Tn), threads of a
//    block stride over the H*D/2 pairs of the row; 64-bit indices. Pure per-pair arithmetic:
//    deterministic for any thread or block order.
#include "core/cuda/runtime.h"

#include "core/cuda/ops.h"
#include "core/cuda/reduce.cuh"

namespace ptrain::cuda {

namespace {

using kern::from_f32;
using kern::to_f32;

constexpr unsigned kMaxThreads = 256;  // threads per token-row block (fewer for short rows)

template <class T>
__global__ void rope_forward_kernel(const T* x, const float* __restrict__ cos, const float* __restrict__ sin, T* y,
                                    int64_t rows, int64_t Tn, int64_t H, int64_t half) {
  const int64_t pairs = H * half;  // per token row
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* c = cos + (r % Tn) * half;  // [D/2]
    const float* s = sin + (r % Tn) * half;  // [D/2]
    for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
      const int64_t h = p / half, i = p - h * half;
      const int64_t base = (r * H + h) * (2 * half);  // head row [D]
      const float x1 = to_f32(x[base + i]), x2 = to_f32(x[base + i + half]);
      const float ci = c[i], si = s[i];
      y[base + i] = from_f32<T>(x1 * ci - x2 * si);
      y[base + i + half] = from_f32<T>(x2 * ci + x1 * si);
    }
  }
}

template <class T>
__global__ void rope_backward_kernel(const T* __restrict__ dy, const float* __restrict__ cos,
                                     const float* __restrict__ sin, T* __restrict__ dx, int64_t rows, int64_t Tn,
                                     int64_t H, int64_t half) {
  const int64_t pairs = H * half;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* c = cos + (r % Tn) * half;  // [D/2]
    const float* s = sin + (r % Tn) * half;  // [D/2]
    for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
      const int64_t h = p / half, i = p - h * half;
      const int64_t base = (r * H + h) * (2 * half);
      const float g1 = to_f32(dy[base + i]), g2 = to_f32(dy[base + i + half]);
      const float ci = c[i], si = s[i];
      dx[base + i] = from_f32<T>(to_f32(dx[base + i]) + (g1 * ci + g2 * si));
      dx[base + i + half] = from_f32<T>(to_f32(dx[base + i + half]) + (g2 * ci - g1 * si));
    }
  }
}

void check_head_dim(const char* op, int64_t D) {
  if (D <= 0 || D % 2 != 0)
    throw std::invalid_argument(std::string(op) + ": head dim D=" + std::to_string(D) + " must be even and positive");
}

}  // namespace

void rope_forward(const void* x, const float* cos, const float* sin, void* y, int64_t B, int64_t Tn, int64_t H,
                  int64_t D, DType dt, CUstream_st* stream) {
  kern::check_dtype("rope_forward", dt);
  check_head_dim("rope_forward", D);
  if (B <= 0 || Tn <= 0 || H <= 0) return;
  const int64_t rows = B * Tn, half = D / 2;
  const unsigned threads = kern::row_block_threads(H * half, kMaxThreads);
#define PT_ROPE_FORWARD(T)                                                                                      \
  PT_LAUNCH((rope_forward_kernel<T>), kern::grid_blocks(rows), threads, 0, stream, static_cast<const T*>(x), cos, \
            sin, static_cast<T*>(y), rows, Tn, H, half)
  PT_DTYPE_SWITCH(dt, PT_ROPE_FORWARD)
#undef PT_ROPE_FORWARD
}

void rope_backward(const void* dy, const float* cos, const float* sin, void* dx, int64_t B, int64_t Tn, int64_t H,
                   int64_t D, DType dt, CUstream_st* stream) {
  kern::check_dtype("rope_backward", dt);
  check_head_dim("rope_backward", D);
  if (!dx || B <= 0 || Tn <= 0 || H <= 0) return;
  const int64_t rows = B * Tn, half = D / 2;
  const unsigned threads = kern::row_block_threads(H * half, kMaxThreads);
#define PT_ROPE_BACKWARD(T)                                                                                  \
  PT_LAUNCH((rope_backward_kernel<T>), kern::grid_blocks(rows), threads, 0, stream, static_cast<const T*>(dy), \
            cos, sin, static_cast<T*>(dx), rows, Tn, H, half)
  PT_DTYPE_SWITCH(dt, PT_ROPE_BACKWARD)
#undef PT_ROPE_BACKWARD
}

}  // namespace ptrain::cuda
