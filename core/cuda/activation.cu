// core/cuda/activation.cu — SiLU, GELU (tanh approximation) and SwiGLU, forward and backward,
// on the device.
//
// Shapes: every array is [n] (any contiguous tensor, flattened).
// Invariants:
//  * Forward kernels overwrite y (y may alias x, gate or up: each element is read before it
//    is written); backward kernels accumulate (+=) into dx / dgate / dup, and a nullptr
//    gradient is not computed (the test on the pointer is uniform across the grid).
//  * All arithmetic is fp32 with the IEEE expf (not __expf) and IEEE division; one rounding
//    on store (__float2bfloat16_rn / __float2half_rn). Formulas, written for the device:
//      sigmoid(v) = 1 / (1 + exp(-v));   silu(v) = v / (1 + exp(-v))
//      gelu_tanh(v) = v / (1 + exp(-2u)), u = sqrt(2/pi) (v + 0.044715 v^3)
//        (= 0.5 v (1 + tanh u) exactly; avoids the cancellation of 1 + tanh u for v < 0)
//      silu'(v) = s (1 + v (1 - s));  gelu'(v) = s + 2 v s (1 - s) u',  s = sigmoid(2u),
//        u' = sqrt(2/pi) (1 + 3 * 0.044715 v^2)
//    exp overflowing to +inf gives y = -0 / s = 0 (the limits), never NaN; NaN propagates.
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
constexpr float kSqrt2OverPi = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluCubic = 0.044715f;

unsigned blocks_for(int64_t n) { return kern::grid_blocks((n + kThreads - 1) / kThreads); }

__device__ __forceinline__ int64_t first_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

/// 1 / (1 + exp(-v)).
__device__ __forceinline__ float dev_sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }

/// u = sqrt(2/pi) (v + 0.044715 v^3), the tanh argument of GELU-tanh at v.
__device__ __forceinline__ float gelu_inner(float v) { return kSqrt2OverPi * (v + kGeluCubic * v * v * v); }

template <class T>
__global__ void silu_forward_kernel(const T* x, T* y, int64_t n) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const float v = to_f32(x[i]);
    y[i] = from_f32<T>(v / (1.0f + expf(-v)));
  }
}

template <class T>
__global__ void silu_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx,
                                     int64_t n) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const float v = to_f32(x[i]);
    const float s = dev_sigmoid(v);
    dx[i] = from_f32<T>(to_f32(dx[i]) + to_f32(dy[i]) * s * (1.0f + v * (1.0f - s)));
  }
}

template <class T>
__global__ void gelu_tanh_forward_kernel(const T* x, T* y, int64_t n) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const float v = to_f32(x[i]);
    y[i] = from_f32<T>(v / (1.0f + expf(-2.0f * gelu_inner(v))));
  }
}

template <class T>
__global__ void gelu_tanh_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx,
                                          int64_t n) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const float v = to_f32(x[i]);
    const float s = 1.0f / (1.0f + expf(-2.0f * gelu_inner(v)));
    const float du = kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * v * v);
    dx[i] = from_f32<T>(to_f32(dx[i]) + to_f32(dy[i]) * (s + 2.0f * v * s * (1.0f - s) * du));
  }
}

template <class T>
__global__ void swiglu_forward_kernel(const T* gate, const T* up, T* y, int64_t n) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const float g = to_f32(gate[i]);
    y[i] = from_f32<T>((g / (1.0f + expf(-g))) * to_f32(up[i]));
  }
}

/// dgate += dy up s (1 + g (1 - s)) ; dup += dy g s   (s = sigmoid(g)); either may be nullptr.
template <class T>
__global__ void swiglu_backward_kernel(const T* __restrict__ dy, const T* __restrict__ gate,
                                       const T* __restrict__ up, T* __restrict__ dgate, T* __restrict__ dup,
                                       int64_t n) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const float g = to_f32(gate[i]);
    const float s = dev_sigmoid(g);
    const float d = to_f32(dy[i]);
    if (dgate) dgate[i] = from_f32<T>(to_f32(dgate[i]) + d * to_f32(up[i]) * s * (1.0f + g * (1.0f - s)));
    if (dup) dup[i] = from_f32<T>(to_f32(dup[i]) + d * g * s);
  }
}

}  // namespace

void silu_forward(const void* x, void* y, int64_t n, DType dt, CUstream_st* stream) {
  kern::check_dtype("silu_forward", dt);
  if (n <= 0) return;
#define PT_SILU_FORWARD(T)                                                                              \
  PT_LAUNCH((silu_forward_kernel<T>), blocks_for(n), kThreads, 0, stream, static_cast<const T*>(x), \
            static_cast<T*>(y), n)
  PT_DTYPE_SWITCH(dt, PT_SILU_FORWARD)
#undef PT_SILU_FORWARD
}

void silu_backward(const void* dy, const void* x, void* dx, int64_t n, DType dt, CUstream_st* stream) {
  kern::check_dtype("silu_backward", dt);
  if (n <= 0 || !dx) return;
#define PT_SILU_BACKWARD(T)                                                                              \
  PT_LAUNCH((silu_backward_kernel<T>), blocks_for(n), kThreads, 0, stream, static_cast<const T*>(dy), \
            static_cast<const T*>(x), static_cast<T*>(dx), n)
  PT_DTYPE_SWITCH(dt, PT_SILU_BACKWARD)
#undef PT_SILU_BACKWARD
}

void gelu_tanh_forward(const void* x, void* y, int64_t n, DType dt, CUstream_st* stream) {
  kern::check_dtype("gelu_tanh_forward", dt);
  if (n <= 0) return;
#define PT_GELU_FORWARD(T)                                                                                    \
  PT_LAUNCH((gelu_tanh_forward_kernel<T>), blocks_for(n), kThreads, 0, stream, static_cast<const T*>(x), \
            static_cast<T*>(y), n)
  PT_DTYPE_SWITCH(dt, PT_GELU_FORWARD)
#undef PT_GELU_FORWARD
}

void gelu_tanh_backward(const void* dy, const void* x, void* dx, int64_t n, DType dt, CUstream_st* stream) {
  kern::check_dtype("gelu_tanh_backward", dt);
  if (n <= 0 || !dx) return;
#define PT_GELU_BACKWARD(T)                                                                                    \
  PT_LAUNCH((gelu_tanh_backward_kernel<T>), blocks_for(n), kThreads, 0, stream, static_cast<const T*>(dy), \
            static_cast<const T*>(x), static_cast<T*>(dx), n)
  PT_DTYPE_SWITCH(dt, PT_GELU_BACKWARD)
#undef PT_GELU_BACKWARD
}

void swiglu_forward(const void* gate, const void* up, void* y, int64_t n, DType dt, CUstream_st* stream) {
  kern::check_dtype("swiglu_forward", dt);
  if (n <= 0) return;
#define PT_SWIGLU_FORWARD(T)                                                                                  \
  PT_LAUNCH((swiglu_forward_kernel<T>), blocks_for(n), kThreads, 0, stream, static_cast<const T*>(gate), \
            static_cast<const T*>(up), static_cast<T*>(y), n)
  PT_DTYPE_SWITCH(dt, PT_SWIGLU_FORWARD)
#undef PT_SWIGLU_FORWARD
}

void swiglu_backward(const void* dy, const void* gate, const void* up, void* dgate, void* dup, int64_t n, DType dt,
                     CUstream_st* stream) {
  kern::check_dtype("swiglu_backward", dt);
  if (n <= 0 || (!dgate && !dup)) return;
#define PT_SWIGLU_BACKWARD(T)                                                                                  \
  PT_LAUNCH((swiglu_backward_kernel<T>), blocks_for(n), kThreads, 0, stream, static_cast<const T*>(dy),     \
            static_cast<const T*>(gate), static_cast<const T*>(up), static_cast<T*>(dgate), static_cast<T*>(dup), \
            n)
  PT_DTYPE_SWITCH(dt, PT_SWIGLU_BACKWARD)
#undef PT_SWIGLU_BACKWARD
}

}  // namespace ptrain::cuda
