// core/cpu/gemm.cpp — row-major GEMM over OpenBLAS (cblas_sgemm / cblas_dgemm).
//
// C[M,N] = alpha * op(A) * op(B) + beta * C. lda/ldb/ldc are the row strides of the
// stored matrices (A is [M,K] or, transposed, [K,M]; likewise B). Degenerate sizes are
// handled here, not passed to BLAS: M or N == 0 does nothing; K == 0 scales C by beta
// (beta == 0 writes zeros, so NaNs already in C never survive, as BLAS specifies).
// BLAS threading is OpenBLAS's own (OPENBLAS_NUM_THREADS); its results do not depend on
// the OpenMP thread count of the caller.
#include <cblas.h>

#include <climits>
#include <cstdint>

#include "core/cpu/kernels.h"
#include "core/error.h"

namespace ptrain::cpu {

namespace {

void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, blasint M, blasint N, blasint K, float alpha, const float* A,
               blasint lda, const float* B, blasint ldb, float beta, float* C, blasint ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, blasint M, blasint N, blasint K, double alpha,
               const double* A, blasint lda, const double* B, blasint ldb, double beta, double* C, blasint ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

bool fits_blasint(int64_t v) { return v >= 0 && v <= static_cast<int64_t>(INT_MAX); }

}  // namespace

template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  PT_CHECK(M >= 0 && N >= 0 && K >= 0, "gemm: negative size M={} N={} K={}", M, N, K);
  if (M == 0 || N == 0) return;
  PT_CHECK(ldc >= N, "gemm: ldc={} < N={}", ldc, N);
  if (K == 0) {  // C = beta * C
    for (int64_t i = 0; i < M; ++i) {
      T* c = C + i * ldc;
      if (beta == T(0)) {
        for (int64_t j = 0; j < N; ++j) c[j] = T(0);
      } else if (beta != T(1)) {
        for (int64_t j = 0; j < N; ++j) c[j] *= beta;
      }
    }
    return;
  }
  // Stored widths: A is [M,K] (or [K,M] when transposed), B is [K,N] (or [N,K]).
  PT_CHECK(lda >= (trans_a ? M : K), "gemm: lda={} too small (trans_a={}, M={}, K={})", lda, trans_a, M, K);
  PT_CHECK(ldb >= (trans_b ? K : N), "gemm: ldb={} too small (trans_b={}, K={}, N={})", ldb, trans_b, K, N);
  PT_CHECK(fits_blasint(M) && fits_blasint(N) && fits_blasint(K) && fits_blasint(lda) && fits_blasint(ldb) &&
               fits_blasint(ldc),
           "gemm: sizes exceed the BLAS integer range (M={} N={} K={} lda={} ldb={} ldc={})", M, N, K, lda, ldb,
           ldc);
  blas_gemm(trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, static_cast<blasint>(M),
            static_cast<blasint>(N), static_cast<blasint>(K), alpha, A, static_cast<blasint>(lda), B,
            static_cast<blasint>(ldb), beta, C, static_cast<blasint>(ldc));
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                          float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t, const double*,
                           int64_t, double, double*, int64_t);

}  // namespace ptrain::cpu
