// core/cuda/gemm.h — every matrix product of the device backend, over cuBLASLt.
//
// Row-major semantics, as the CPU GEMM (core/cpu/kernels.h `gemm`, `linear_*`):
//   C_b[M,N] = alpha · op(A_b)[M,K] · op(B_b)[K,N] + beta · C_b (+ bias[N] on every row),
//   for b < batch, with X_b = X + b · stride_x (strided batches).
// A and B share one dtype in {f32, bf16, f16} (bf16/f16 stored in 2 bytes on the device);
// C (and bias) has A's dtype or f32. Products accumulate in fp32 (CUBLAS_COMPUTE_32F; with
// allow_tf32, fp32 inputs may be rounded to TF32: CUBLAS_COMPUTE_32F_FAST_TF32, only when
// `train.tf32: true`). alpha, beta and the bias are applied in fp32 and C is rounded once.
// TF32, process-wide: set_allow_tf32 / allow_tf32 (as torch.backends.cuda.matmul.allow_tf32,
// default false) is what the device ops use: the linear helpers below take it as their
// default, attention's GEMMs (core/cuda/attention.cpp) read it per call. gemm() itself only
// obeys GemmDesc::allow_tf32 (false unless the caller sets it), and only for fp32 inputs.
// beta = 0 never reads C (fresh device memory is NaN in the emulated build).
// Invariants:
//  * Calls are queued on `stream` (nullptr: the legacy default stream); nothing synchronises.
//  * The nvcc build calls libcublasLt; the emulated build calls the same API implemented over
//    OpenBLAS by the SIMT runtime (core/simt/cublaslt.cpp), so descriptors, leading
//    dimensions, transpositions, batch strides and epilogues run in CI.
//  * Each product counts one launch named "cublasLtMatmul" (core/cuda/launch_stats.h).
//  * Not thread-safe across host threads driving the same device at once (one host thread
//    drives one device in ptrain).
// Plain C++ (no CUDA types): includable from any translation unit.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

struct CUstream_st;  // cudaStream_t

namespace ptrain::cuda {

/// Shape, dtypes and strides of one (batched) row-major GEMM.
struct GemmDesc {
  bool trans_a = false;  ///< A stored [M,K] (false) or [K,M] (true)
  bool trans_b = false;  ///< B stored [K,N] (false) or [N,K] (true)
  int64_t M = 0, N = 0, K = 0;
  DType ab_dtype = DType::f32;  ///< A and B: f32, bf16 or f16
  DType c_dtype = DType::f32;   ///< C and bias: ab_dtype or f32
  int64_t lda = 0, ldb = 0, ldc = 0;  ///< row strides (elements) of the stored matrices
  int batch = 1;
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;  ///< elements between batch matrices (batch > 1)
  bool allow_tf32 = false;  ///< fp32 inputs only: TF32 tensor cores (train.tf32)
};

/// Device scratch for cuBLASLt. {nullptr, 0}: a 32 MiB buffer cached per stream (cudaMalloc'ed
/// once, never freed; invalid after cudaDeviceReset).
struct GemmWorkspace {
  void* ptr = nullptr;
  size_t bytes = 0;
};
inline constexpr size_t kGemmWorkspaceBytes = size_t(32) << 20;

/// C_b = alpha · op(A_b) · op(B_b) + beta · C_b (+ bias[N] broadcast over rows and batches).
/// Checks shapes, leading dimensions and strides (throws ptrain::Error naming them).
void gemm(const GemmDesc& d, float alpha, const void* A, const void* B, float beta, void* C,
          const void* bias = nullptr, CUstream_st* stream = nullptr, GemmWorkspace ws = {});

/// The process-wide TF32 switch for fp32 GEMMs of the device ops (default false; the trainer
/// sets it from `train.tf32`). Read at each call (a relaxed atomic): a change applies to the
/// next product queued, including deferred weight-gradient products.
void set_allow_tf32(bool allow);
bool allow_tf32();

/// y[M,N] = x[M,K] · w[N,K]^T (+ b[N]); x, w, b, y of `dt`.   (w in [out, in] layout)
/// `tf32` (fp32 only) defaults to the process-wide allow_tf32(), evaluated at the call.
void linear_forward(DType dt, const void* x, const void* w, const void* b, void* y, int64_t M, int64_t K, int64_t N,
                    CUstream_st* stream = nullptr, bool tf32 = allow_tf32());
/// dx[M,K] += dy[M,N] · w[N,K]; all of `dt`.
void linear_backward_input(DType dt, const void* dy, const void* w, void* dx, int64_t M, int64_t K, int64_t N,
                           CUstream_st* stream = nullptr, bool tf32 = allow_tf32());
/// dw[N,K] += dy[M,N]^T · x[M,K]; db[N] += Σ_m dy[m,:] (db may be nullptr). dy, x of `dt`;
/// dw, db of `grad_dt` (dt or f32). db: deterministic kernel (gemm_bias.cu), one fp32 sum per
/// column in row order, rounded once.
void linear_backward_weight(DType dt, const void* dy, const void* x, DType grad_dt, void* dw, void* db, int64_t M,
                            int64_t K, int64_t N, CUstream_st* stream = nullptr, bool tf32 = allow_tf32());

namespace detail {
/// db[N] += Σ_m dy[m, n] (dy [M,N] row-major, ld = N). dtype codes: static_cast<int>(DType).
/// Launches "bias_grad_kernel" (core/cuda/gemm_bias.cu); arguments checked by the caller.
void launch_bias_grad(int dy_dtype, int db_dtype, const void* dy, void* db, int64_t M, int64_t N, CUstream_st* stream);
}  // namespace detail

}  // namespace ptrain::cuda
