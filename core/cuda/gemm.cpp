// core/cuda/gemm.cpp — the GEMM layer of the device backend over cuBLASLt (core/cuda/gemm.h).
//
// Row-major to column-major: a row-major [R, C] matrix with row stride ld is, to cuBLASLt, the
// column-major [C, R] matrix with the same ld, i.e. its transpose. So the row-major product
// C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T: cuBLASLt's "A" is our
// B, its "B" is our A, m = N, n = M, k = K, and the transpose flags are ours unchanged
// (B stored [K,N] untransposed is column-major [N,K] = op(B)^T already: CUBLAS_OP_N).
// cuBLASLt's bias has one entry per row of its (column-major) D, i.e. per column N of our
// row-major C: exactly bias[N] broadcast over rows (CUBLASLT_EPILOGUE_BIAS, bias batch
// stride 0: the same bias for every batch).
// Plans (matmul descriptor, four layouts, the heuristic's algo) are cached per shape key,
// including the operands' alignments, which the heuristic must know; the bias pointer is set
// on the cached descriptor at each call. One cuBLASLt handle per process (one device).
#include "core/cuda/gemm.h"

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <atomic>
#include <map>
#include <memory>
#include <tuple>

#include "core/cuda/launch_stats.h"
#include "core/error.h"

#define CUBLAS_CHECK(expr)                                                                                   \
  do {                                                                                                       \
    const cublasStatus_t pt_cublas_st_ = (expr);                                                             \
    PT_CHECK(pt_cublas_st_ == CUBLAS_STATUS_SUCCESS, "cuBLASLt call {} failed: {} ({})\nHINT: {}", #expr,     \
             cublasLtGetStatusName(pt_cublas_st_), cublasLtGetStatusString(pt_cublas_st_), gemm_hint());     \
  } while (0)

namespace ptrain::cuda {
namespace {

const char* gemm_hint() {
  return "check the shapes, leading dimensions and dtypes of the GEMM (set CUBLASLT_LOG_LEVEL=5 on a GPU; the emulated "
         "build prints the reason on stderr)";
}

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::f32: return CUDA_R_32F;
    case DType::bf16: return CUDA_R_16BF;
    case DType::f16: return CUDA_R_16F;
    default: PT_CHECK(false, "GEMM dtype {} is not one of f32, bf16, f16", dtype_name(t));
  }
  return CUDA_R_32F;
}

uint32_t alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && (a % al) != 0) al /= 2;
  return al;
}

/// A column-major layout with its batch attributes.
cublasLtMatrixLayout_t make_layout(cudaDataType_t t, int64_t rows, int64_t cols, int64_t ld, int batch, int64_t stride) {
  cublasLtMatrixLayout_t l = nullptr;
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l, t, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), ld));
  if (batch > 1) {
    const int32_t b = batch;
    CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &b, sizeof b));
    CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride));
  }
  return l;
}

using Key = std::tuple<bool, bool, int64_t, int64_t, int64_t, int, int, int64_t, int64_t, int64_t, int, int64_t, int64_t,
                       int64_t, bool, bool, uint32_t, uint32_t, uint32_t, uint32_t, size_t>;

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;  // cuBLASLt's A (our B), B (our A), C = D
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
};

struct State {
  cublasLtHandle_t handle = nullptr;
  std::map<CUstream_st*, void*> workspaces;
  std::map<Key, Plan> plans;
};
State& state() {
  // Never destroyed: destroying cuBLASLt objects after the CUDA runtime shut down at exit fails.
  static State* s = [] {
    auto* st = new State();
    CUBLAS_CHECK(cublasLtCreate(&st->handle));
    return st;
  }();
  return *s;
}

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw_cuda_error(e, what, __FILE__, __LINE__);
}

GemmWorkspace default_workspace(CUstream_st* stream) {
  State& s = state();
  auto it = s.workspaces.find(stream);
  if (it == s.workspaces.end()) {
    void* p = nullptr;
    check_cuda(cudaMalloc(&p, kGemmWorkspaceBytes), "cudaMalloc(GEMM workspace)");
    it = s.workspaces.emplace(stream, p).first;
  }
  return {it->second, kGemmWorkspaceBytes};
}

const Plan& plan_for(const GemmDesc& d, const void* A, const void* B, const void* C, const void* bias, size_t ws_bytes) {
  State& s = state();
  const Key key{d.trans_a,  d.trans_b,  d.M,        d.N,        d.K,         static_cast<int>(d.ab_dtype),
                static_cast<int>(d.c_dtype), d.lda, d.ldb, d.ldc, d.batch, d.stride_a, d.stride_b, d.stride_c,
                d.allow_tf32 && d.ab_dtype == DType::f32, bias != nullptr, alignment(A), alignment(B), alignment(C),
                bias ? alignment(bias) : 0u, ws_bytes};
  auto it = s.plans.find(key);
  if (it != s.plans.end()) return it->second;

  Plan p;
  const cublasComputeType_t compute =
      d.allow_tf32 && d.ab_dtype == DType::f32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, compute, CUDA_R_32F));
  // Swap: cuBLASLt A = our B, B = our A; the transpose flags carry over unchanged.
  const int32_t op_a = d.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = d.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b));
  if (bias) {
    const uint32_t epi = CUBLASLT_EPILOGUE_BIAS;
    const int32_t bias_type = cuda_type(d.c_dtype);
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof bias_type));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
  }
  const cudaDataType_t ab = cuda_type(d.ab_dtype), ct = cuda_type(d.c_dtype);
  // Column-major views: our B stored [K,N] (or [N,K]) is [N,K] (or [K,N]); our A stored [M,K]
  // (or [K,M]) is [K,M] (or [M,K]); our C [M,N] is [N,M].
  p.a = d.trans_b ? make_layout(ab, d.K, d.N, d.ldb, d.batch, d.stride_b) : make_layout(ab, d.N, d.K, d.ldb, d.batch, d.stride_b);
  p.b = d.trans_a ? make_layout(ab, d.M, d.K, d.lda, d.batch, d.stride_a) : make_layout(ab, d.K, d.M, d.lda, d.batch, d.stride_a);
  p.c = make_layout(ct, d.N, d.M, d.ldc, d.batch, d.stride_c);

  cublasLtMatmulPreference_t pref = nullptr;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t max_ws = ws_bytes;
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_ws, sizeof max_ws));
  // cuBLASLt's A is our B, and so on; D = C.
  const uint32_t al[4] = {alignment(B), alignment(A), alignment(C), alignment(C)};
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al[0], 4));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al[1], 4));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al[2], 4));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al[3], 4));
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  const cublasStatus_t hs =
      cublasLtMatmulAlgoGetHeuristic(s.handle, p.desc, p.a, p.b, p.c, p.c, pref, 1, &res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  PT_CHECK(hs == CUBLAS_STATUS_SUCCESS && found > 0,
           "cuBLASLt has no algorithm for GEMM M={} N={} K={} trans_a={} trans_b={} {}x{}->{} lda={} ldb={} ldc={} "
           "batch={} bias={}: {}\nHINT: {}",
           d.M, d.N, d.K, d.trans_a, d.trans_b, dtype_name(d.ab_dtype), dtype_name(d.ab_dtype), dtype_name(d.c_dtype),
           d.lda, d.ldb, d.ldc, d.batch, bias != nullptr, cublasLtGetStatusName(hs), gemm_hint());
  p.algo = res.algo;
  p.workspace = res.workspaceSize;
  return s.plans.emplace(key, p).first->second;
}

void check_desc(const GemmDesc& d, const void* A, const void* B, const void* C) {
  PT_CHECK(d.M >= 0 && d.N >= 0 && d.K >= 0 && d.batch >= 1, "GEMM M={} N={} K={} batch={}: negative size or batch < 1",
           d.M, d.N, d.K, d.batch);
  PT_CHECK(d.ab_dtype == DType::f32 || d.ab_dtype == DType::bf16 || d.ab_dtype == DType::f16,
           "GEMM inputs of {}: expected f32, bf16 or f16", dtype_name(d.ab_dtype));
  PT_CHECK(d.c_dtype == d.ab_dtype || d.c_dtype == DType::f32, "GEMM output of {} with inputs of {}: expected {} or f32",
           dtype_name(d.c_dtype), dtype_name(d.ab_dtype), dtype_name(d.ab_dtype));
  const int64_t a_cols = d.trans_a ? d.M : d.K, b_cols = d.trans_b ? d.K : d.N;
  PT_CHECK(d.lda >= std::max<int64_t>(1, a_cols), "GEMM lda={} < {} columns of A stored [{}, {}] (trans_a={})", d.lda,
           a_cols, d.trans_a ? d.K : d.M, a_cols, d.trans_a);
  PT_CHECK(d.ldb >= std::max<int64_t>(1, b_cols), "GEMM ldb={} < {} columns of B stored [{}, {}] (trans_b={})", d.ldb,
           b_cols, d.trans_b ? d.N : d.K, b_cols, d.trans_b);
  PT_CHECK(d.ldc >= std::max<int64_t>(1, d.N), "GEMM ldc={} < N={} columns of C [{}, {}]", d.ldc, d.N, d.M, d.N);
  if (d.batch > 1)
    PT_CHECK(d.stride_c >= (d.M - 1) * d.ldc + d.N && d.stride_a >= 0 && d.stride_b >= 0,
             "GEMM batch={}: stride_c={} overlaps the next C [{}, {}] (ldc={}), or a negative stride", d.batch,
             d.stride_c, d.M, d.N, d.ldc);
  PT_CHECK(d.M * d.N == 0 || (A && B && C) || d.K == 0, "GEMM with a null operand");
}

}  // namespace

namespace {
std::atomic<bool> g_allow_tf32{false};
}  // namespace

void set_allow_tf32(bool allow) { g_allow_tf32.store(allow, std::memory_order_relaxed); }
bool allow_tf32() { return g_allow_tf32.load(std::memory_order_relaxed); }

void gemm(const GemmDesc& d, float alpha, const void* A, const void* B, float beta, void* C, const void* bias,
          CUstream_st* stream, GemmWorkspace ws) {
  check_desc(d, A, B, C);
  if (d.M == 0 || d.N == 0) return;
  if (!ws.ptr) ws = default_workspace(stream);
  const Plan& p = plan_for(d, A, B, C, bias, ws.bytes);
  if (bias)
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
  CUBLAS_CHECK(cublasLtMatmul(state().handle, p.desc, &alpha, B, p.a, A, p.b, &beta, C, p.c, C, p.c, &p.algo, ws.ptr,
                              ws.bytes, stream));
  after_launch("cublasLtMatmul", 0);
}

void linear_forward(DType dt, const void* x, const void* w, const void* b, void* y, int64_t M, int64_t K, int64_t N,
                    CUstream_st* stream, bool tf32) {
  GemmDesc d;
  d.trans_b = true;  // w [N,K]
  d.M = M, d.N = N, d.K = K;
  d.ab_dtype = d.c_dtype = dt;
  d.lda = K, d.ldb = K, d.ldc = N;
  d.allow_tf32 = tf32;
  gemm(d, 1.0f, x, w, 0.0f, y, b, stream);
}

void linear_backward_input(DType dt, const void* dy, const void* w, void* dx, int64_t M, int64_t K, int64_t N,
                           CUstream_st* stream, bool tf32) {
  GemmDesc d;  // dx[M,K] += dy[M,N] · w[N,K]
  d.M = M, d.N = K, d.K = N;
  d.ab_dtype = d.c_dtype = dt;
  d.lda = N, d.ldb = K, d.ldc = K;
  d.allow_tf32 = tf32;
  gemm(d, 1.0f, dy, w, 1.0f, dx, nullptr, stream);
}

void linear_backward_weight(DType dt, const void* dy, const void* x, DType grad_dt, void* dw, void* db, int64_t M,
                            int64_t K, int64_t N, CUstream_st* stream, bool tf32) {
  GemmDesc d;  // dw[N,K] += dy[M,N]^T · x[M,K]
  d.trans_a = true;
  d.M = N, d.N = K, d.K = M;
  d.ab_dtype = dt;
  d.c_dtype = grad_dt;
  d.lda = N, d.ldb = K, d.ldc = K;
  d.allow_tf32 = tf32;
  gemm(d, 1.0f, dy, x, 1.0f, dw, nullptr, stream);
  if (db) detail::launch_bias_grad(static_cast<int>(dt), static_cast<int>(grad_dt), dy, db, M, N, stream);
}

}  // namespace ptrain::cuda
