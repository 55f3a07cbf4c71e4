// core/cuda/elementwise.cu — elementwise product and scaling, forward and backward, on the
// device.
//
// Shapes: a, b, x, y, dy, da, db, dx [n] (any contiguous tensor, flattened); s a host scalar.
// Invariants:
//  * Forward kernels overwrite y = a ⊙ b / y = s x (y may alias an input: each element is
//    read before it is written). Backward kernels accumulate (+=): da += dy b, db += dy a,
//    dx += s dy; a nullptr gradient is not computed. A gradient may not partially overlap
//    an input.
//  * fp32 arithmetic, one rounding on store. The forward is one product per element: the same
//    operation as core/cpu's mul_forward / scale_forward followed by the CPU's round-on-store.
//    The backward is a product and an add, which nvcc contracts into one FMA.
//  * Pure per-element arithmetic, grid-stride loops with 64-bit indices, scalar loads (no
//    alignment assumed): deterministic for any thread or block order.
#include "core/cuda/runtime.h"

#include "core/cuda/ops.h"
#include "core/cuda/reduce.cuh"

namespace ptrain::cuda {

namespace {

using kern::from_f32;
using kern::to_f32;

constexpr unsigned kThreads = 256;

unsigned blocks_for(int64_t n) { return kern::grid_blocks((n + kThreads - 1) / kThreads); }

template <class T>
__global__ void mul_forward_kernel(const T* a, const T* b, T* y, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] = from_f32<T>(to_f32(a[i]) * to_f32(b[i]));
}

/// da += dy b ; db += dy a   (either may be nullptr).
template <class T>
__global__ void mul_backward_kernel(const T* __restrict__ dy, const T* __restrict__ a, const T* __restrict__ b,
                                    T* __restrict__ da, T* __restrict__ db, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float g = to_f32(dy[i]);
    if (da) da[i] = from_f32<T>(to_f32(da[i]) + g * to_f32(b[i]));
    if (db) db[i] = from_f32<T>(to_f32(db[i]) + g * to_f32(a[i]));
  }
}

template <class T>
__global__ void scale_forward_kernel(const T* x, float s, T* y, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] = from_f32<T>(s * to_f32(x[i]));
}

/// dx += s dy.
template <class T>
__global__ void scale_backward_kernel(const T* __restrict__ dy, float s, T* __restrict__ dx, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dx[i] = from_f32<T>(to_f32(dx[i]) + s * to_f32(dy[i]));
}

}  // namespace

void mul_forward(const void* a, const void* b, void* y, int64_t n, DType dt, CUstream_st* stream) {
  kern::check_dtype("mul_forward", dt);
  if (n <= 0) return;
#define PT_MUL_FORWARD(T)                                                                                 \
  PT_LAUNCH((mul_forward_kernel<T>), blocks_for(n), kThreads, 0, stream, static_cast<const T*>(a),       \
            static_cast<const T*>(b), static_cast<T*>(y), n)
  PT_DTYPE_SWITCH(dt, PT_MUL_FORWARD)
#undef PT_MUL_FORWARD
}

void mul_backward(const void* dy, const void* a, const void* b, void* da, void* db, int64_t n, DType dt,
                  CUstream_st* stream) {
  kern::check_dtype("mul_backward", dt);
  if (n <= 0 || (!da && !db)) return;
#define PT_MUL_BACKWARD(T)                                                                                   \
  PT_LAUNCH((mul_backward_kernel<T>), blocks_for(n), kThreads, 0, stream, static_cast<const T*>(dy),      \
            static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(da), static_cast<T*>(db), n)
  PT_DTYPE_SWITCH(dt, PT_MUL_BACKWARD)
#undef PT_MUL_BACKWARD
}

void scale_forward(const void* x, float s, void* y, int64_t n, DType dt, CUstream_st* stream) {
  kern::check_dtype("scale_forward", dt);
  if (n <= 0) return;
#define PT_SCALE_FORWARD(T)                                                                                   \
  PT_LAUNCH((scale_forward_kernel<T>), blocks_for(n), kThreads, 0, stream, static_cast<const T*>(x), s, \
            static_cast<T*>(y), n)
  PT_DTYPE_SWITCH(dt, PT_SCALE_FORWARD)
#undef PT_SCALE_FORWARD
}

void scale_backward(const void* dy, float s, void* dx, int64_t n, DType dt, CUstream_st* stream) {
  kern::check_dtype("scale_backward", dt);
  if (n <= 0 || !dx) return;
#define PT_SCALE_BACKWARD(T)                                                                                   \
  PT_LAUNCH((scale_backward_kernel<T>), blocks_for(n), kThreads, 0, stream, static_cast<const T*>(dy), s, \
            static_cast<T*>(dx), n)
  PT_DTYPE_SWITCH(dt, PT_SCALE_BACKWARD)
#undef PT_SCALE_BACKWARD
}

}  // namespace ptrain::cuda
