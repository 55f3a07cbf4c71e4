// core/cuda/add.cu — the residual add and its backward (accumulate) on the device.
//
// Shapes: a, b, y, dst, src [n] (any contiguous tensor, flattened).
// Invariants:
//  * add_forward overwrites y = a + b; accumulate does dst += src (the add's backward for both
//    inputs: da += dy, db += dy). y may alias a or b, dst may not partially overlap src.
//  * One fp32 addition per element, rounded once on store: the same operation as core/cpu's
//    add_forward / axpy(1, ...) followed by the CPU's round-on-store, so results are
//    bit-identical to the CPU in every dtype. No reductions, so trivially deterministic.
//  * Grid-stride loops with 64-bit indices; one element per thread per step (scalar loads:
//    no alignment assumed, any n).
#include "core/cuda/runtime.h"

#include "core/cuda/ops.h"
#include "core/cuda/reduce.cuh"

namespace ptrain::cuda {

namespace {

using kern::from_f32;
using kern::to_f32;

constexpr unsigned kThreads = 256;

template <class T>
__global__ void add_forward_kernel(const T* a, const T* b, T* y, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i]));
}

template <class T>
__global__ void accumulate_kernel(T* __restrict__ dst, const T* __restrict__ src, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] = from_f32<T>(to_f32(dst[i]) + to_f32(src[i]));
}

unsigned blocks_for(int64_t n) { return kern::grid_blocks((n + kThreads - 1) / kThreads); }

}  // namespace

void add_forward(const void* a, const void* b, void* y, int64_t n, DType dt, CUstream_st* stream) {
  kern::check_dtype("add_forward", dt);
  if (n <= 0) return;
#define PT_ADD_FORWARD(T)                                                                                   \
  PT_LAUNCH((add_forward_kernel<T>), blocks_for(n), kThreads, 0, stream, static_cast<const T*>(a),          \
            static_cast<const T*>(b), static_cast<T*>(y), n)
  PT_DTYPE_SWITCH(dt, PT_ADD_FORWARD)
#undef PT_ADD_FORWARD
}

void accumulate(void* dst, const void* src, int64_t n, DType dt, CUstream_st* stream) {
  kern::check_dtype("accumulate", dt);
  if (n <= 0 || !dst) return;
#define PT_ACCUMULATE(T) \
  PT_LAUNCH((accumulate_kernel<T>), blocks_for(n), kThreads, 0, stream, static_cast<T*>(dst), static_cast<const T*>(src), n)
  PT_DTYPE_SWITCH(dt, PT_ACCUMULATE)
#undef PT_ACCUMULATE
}

}  // namespace ptrain::cuda
