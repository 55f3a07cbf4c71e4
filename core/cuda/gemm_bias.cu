// core/cuda/gemm_bias.cu — the bias gradient of linear_backward_weight (core/cuda/gemm.h).
//
// db[n] += Σ_m dy[m, n]: one thread per column, summing the rows in index order in fp32 and
// rounding once on store, so the result is bit-identical across block orders (no atomics).
// Adjacent threads read adjacent columns (coalesced). Arguments are checked by gemm.cpp.
#include "core/cuda/runtime.h"

#include <cstdint>

#include "core/cuda/gemm.h"

namespace ptrain::cuda {
namespace {

__device__ inline float to_f32(float v) { return v; }
__device__ inline float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ inline float to_f32(__half v) { return __half2float(v); }
template <class T> __device__ inline T from_f32(float v);
template <> __device__ inline float from_f32<float>(float v) { return v; }
template <> __device__ inline __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ inline __half from_f32<__half>(float v) { return __float2half_rn(v); }

// dy: (M, N); db: (N)
template <class TIn, class TOut>
__global__ void bias_grad_kernel(const TIn* dy, TOut* db, int64_t M, int64_t N) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  float s = 0.0f;
  for (int64_t m = 0; m < M; ++m) s += to_f32(dy[m * N + n]);
  db[n] = from_f32<TOut>(to_f32(db[n]) + s);
}

template <class TIn, class TOut>
void launch_typed(const void* dy, void* db, int64_t M, int64_t N, cudaStream_t s) {
  const unsigned block = 256;
  const unsigned grid = static_cast<unsigned>((N + block - 1) / block);
  PT_LAUNCH((bias_grad_kernel<TIn, TOut>), grid, block, 0, s, static_cast<const TIn*>(dy), static_cast<TOut*>(db), M,
            N);
}

template <class TIn> void launch_in(int db_dtype, const void* dy, void* db, int64_t M, int64_t N, cudaStream_t s) {
  if (db_dtype == static_cast<int>(DType::f32))
    launch_typed<TIn, float>(dy, db, M, N, s);
  else
    launch_typed<TIn, TIn>(dy, db, M, N, s);
}

}  // namespace

namespace detail {
void launch_bias_grad(int dy_dtype, int db_dtype, const void* dy, void* db, int64_t M, int64_t N, CUstream_st* stream) {
  if (N <= 0) return;
  if (dy_dtype == static_cast<int>(DType::bf16))
    launch_in<__nv_bfloat16>(db_dtype, dy, db, M, N, stream);
  else if (dy_dtype == static_cast<int>(DType::f16))
    launch_in<__half>(db_dtype, dy, db, M, N, stream);
  else
    launch_in<float>(db_dtype, dy, db, M, N, stream);
}
}  // namespace detail

}  // namespace ptrain::cuda
