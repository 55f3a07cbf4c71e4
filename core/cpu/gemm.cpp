// core/cpu/gemm.cpp — row-major GEMM over OpenBLAS (cblas_sgemm / cblas_dgemm).
//
// C[M,N] = alpha * op(A) * op(B) + beta * C. lda/ldb/ldc are the row strides of the
// stored matrices (A is [M,K] or, transposed, [K,M]; likewise B). Degenerate sizes are
// handled here, not passed to BLAS: M or N == 0 does nothing; K == 0 scales C by beta
// (beta == 0 writes zeros, so NaNs already in C never survive, as BLAS specifies).
//
// Threads: C is cut into fixed kGemmTileRows x kGemmTileCols tiles (a function of M and N only) and
// ptrain's OpenMP team runs one single-threaded BLAS call per tile. OpenBLAS's own threading
// splits C wherever the thread count puts the boundaries, and its tail kernels round
// differently there (measured: Haswell and Prescott kernels change the last bits of a
// 257x301x129 product between 1 and 2 threads), so results would depend on the thread count;
// with fixed tiles every element is computed by the same kernel call at any count, and the
// kernels and the GEMMs share one pool (core/cpu/threading.h). K is never split. A tile's bits
// may differ from one whole-matrix call's (OpenBLAS picks kernels by shape), never between
// thread counts (tests/core/test_threading.cpp). Inside a parallel region
// (attention's per-head GEMMs) the tiles run in order on the calling thread.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
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

/// Rows and columns of C per tile: multiples of every OpenBLAS kernel's unroll (<= 32), large
/// enough that a tile runs at the whole call's speed (A4 shapes, SkylakeX, measured: 512 x 256
/// within noise of the untiled call at 1 and 2 threads; 128 x 128 cost 15-19%).
constexpr int64_t kGemmTileRows = 512, kGemmTileCols = 256;

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
  const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans, tb = trans_b ? CblasTrans : CblasNoTrans;
  constexpr int64_t TM = kGemmTileRows, TN = kGemmTileCols;
  const int64_t tm = (M + TM - 1) / TM, tn = (N + TN - 1) / TN;
  auto tile = [&](int64_t t) {
    const int64_t i0 = (t / tn) * TM, j0 = (t % tn) * TN;
    const int64_t m = std::min(TM, M - i0), n = std::min(TN, N - j0);
    const T* a = trans_a ? A + i0 : A + i0 * lda;  // op(A) rows i0.. : A is [M,K] or [K,M]
    const T* b = trans_b ? B + j0 * ldb : B + j0;  // op(B) cols j0.. : B is [K,N] or [N,K]
    blas_gemm(ta, tb, static_cast<blasint>(m), static_cast<blasint>(n), static_cast<blasint>(K), alpha, a,
              static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, C + i0 * ldc + j0,
              static_cast<blasint>(ldc));
  };
  const int64_t tiles = tm * tn;
  // Serial only on one thread or inside a parallel region. A single tile still goes through a
  // parallel region: inside one, OpenBLAS runs on the calling thread; outside, it would follow
  // OpenMP's thread count with its own split (openblas_set_num_threads(1) does not hold it).
  if (omp_in_parallel() || omp_get_max_threads() == 1) {
    for (int64_t t = 0; t < tiles; ++t) tile(t);
    return;
  }
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t t = 0; t < tiles; ++t) tile(t);
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                          float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t, const double*,
                           int64_t, double, double*, int64_t);

}  // namespace ptrain::cpu
