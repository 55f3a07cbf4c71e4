// tests/core/test_kernels_linear.cpp — gemm and linear kernels (core/cpu/gemm.cpp, linear.cpp).
//
// gemm against a naive triple loop (all four transpose combinations, padded strides, sizes 0);
// linear forward against a naive loop in float and double; finite-difference gradients of the
// linear backward in double; accumulation (+=) and nullptr skips; bit-identical results for
// 1 and 3 OMP threads; and a demonstration that the checks catch a planted 1% error, both the
// finite-difference check (double) and the fp32-vs-fp64 comparison at 1e-5 relative tolerance.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "core/cpu/kernels.h"
#include "tests/core/gradcheck.h"

namespace ptrain::cpu {
namespace {

using ptrain::testing::dot;
using ptrain::testing::expect_gradients_match;
using ptrain::testing::random_vector;

template <class T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

/// Restores the OMP thread count when a test ends.
struct ThreadGuard {
  int saved = omp_get_max_threads();
  ~ThreadGuard() { omp_set_num_threads(saved); }
};

/// Naive C = alpha op(A) op(B) + beta C in double with the same strides as gemm.
void naive_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const std::vector<double>& A,
                int64_t lda, const std::vector<double>& B, int64_t ldb, double beta, std::vector<double>& C,
                int64_t ldc) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double a = ta ? A[k * lda + i] : A[i * lda + k];
        const double b = tb ? B[j * ldb + k] : B[k * ldb + j];
        s += a * b;
      }
      C[i * ldc + j] = alpha * s + beta * C[i * ldc + j];
    }
}

/// Naive y = x w^T + b in double.
std::vector<double> naive_linear(const std::vector<double>& x, const std::vector<double>& w, const double* b,
                                 int64_t M, int64_t K, int64_t N) {
  std::vector<double> y(M * N);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = b ? b[j] : 0.0;
      for (int64_t k = 0; k < K; ++k) s += x[i * K + k] * w[j * K + k];
      y[i * N + j] = s;
    }
  return y;
}

/// Number of elements with |got - ref| > rtol * scale[i] (+ a tiny atol).
template <class T>
int count_mismatches(const std::vector<T>& got, const std::vector<double>& ref, const std::vector<double>& scale,
                     double rtol) {
  int bad = 0;
  for (size_t i = 0; i < ref.size(); ++i)
    if (!(std::fabs(static_cast<double>(got[i]) - ref[i]) <= 1e-30 + rtol * scale[i])) ++bad;
  return bad;
}

template <class T>
void check_gemm_all_transposes(double tol) {
  const int64_t M = 5, N = 7, K = 3;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      // Stored A is [M, K] or [K, M]; B is [K, N] or [N, K]; every stride padded by 2.
      const int64_t lda = (ta ? M : K) + 2, ldb = (tb ? K : N) + 2, ldc = N + 3;
      const auto A = random_vector((ta ? K : M) * lda, 1);
      const auto B = random_vector((tb ? N : K) * ldb, 2);
      auto C = random_vector(M * ldc, 3);
      auto Cf = cast<T>(C);
      const auto Af = cast<T>(A), Bf = cast<T>(B);
      naive_gemm(ta, tb, M, N, K, 0.7, A, lda, B, ldb, 0.3, C, ldc);
      gemm<T>(ta, tb, M, N, K, T(0.7), Af.data(), lda, Bf.data(), ldb, T(0.3), Cf.data(), ldc);
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < ldc; ++j)
          EXPECT_NEAR(Cf[i * ldc + j], C[i * ldc + j], tol) << "ta=" << ta << " tb=" << tb << " at " << i << "," << j;
    }
}

TEST(Gemm, MatchesNaiveAllTransposesDouble) { check_gemm_all_transposes<double>(1e-13); }
TEST(Gemm, MatchesNaiveAllTransposesFloat) { check_gemm_all_transposes<float>(2e-6); }

TEST(Gemm, ZeroSizes) {
  std::vector<float> A(12, 1.0f), B(12, 1.0f);
  // M == 0 and N == 0: nothing is touched.
  std::vector<float> C(12, 5.0f);
  gemm<float>(false, false, 0, 3, 4, 1.0f, A.data(), 4, B.data(), 3, 0.0f, C.data(), 3);
  gemm<float>(false, false, 3, 0, 4, 1.0f, A.data(), 4, B.data(), 1, 0.0f, C.data(), 1);
  for (float c : C) EXPECT_EQ(c, 5.0f);
  // K == 0: C = beta C; beta == 0 overwrites even NaN.
  std::vector<double> D(6, 2.0), E(6, std::numeric_limits<double>::quiet_NaN());
  gemm<double>(false, false, 2, 3, 0, 1.0, nullptr, 1, nullptr, 3, 0.5, D.data(), 3);
  gemm<double>(true, true, 2, 3, 0, 1.0, nullptr, 2, nullptr, 1, 0.0, E.data(), 3);
  for (double d : D) EXPECT_EQ(d, 1.0);
  for (double e : E) EXPECT_EQ(e, 0.0);
}

TEST(Linear, ForwardFloatAndDoubleMatchNaive) {
  const int64_t M = 5, K = 7, N = 3;
  const auto x = random_vector(M * K, 10), w = random_vector(N * K, 11), b = random_vector(N, 12);
  for (bool with_bias : {false, true}) {
    const auto ref = naive_linear(x, w, with_bias ? b.data() : nullptr, M, K, N);
    std::vector<double> scale(M * N);  // sum_k |x w| + |b|: the size of the rounding error
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double s = with_bias ? std::fabs(b[j]) : 0.0;
        for (int64_t k = 0; k < K; ++k) s += std::fabs(x[i * K + k] * w[j * K + k]);
        scale[i * N + j] = s;
      }
    std::vector<double> yd(M * N, 99.0);  // the forward overwrites
    linear_forward<double>(x.data(), w.data(), with_bias ? b.data() : nullptr, yd.data(), M, K, N);
    EXPECT_EQ(count_mismatches(yd, ref, scale, 1e-14), 0) << "bias " << with_bias;
    const auto xf = cast<float>(x), wf = cast<float>(w), bf = cast<float>(b);
    std::vector<float> yf(M * N, 99.0f);
    linear_forward<float>(xf.data(), wf.data(), with_bias ? bf.data() : nullptr, yf.data(), M, K, N);
    EXPECT_EQ(count_mismatches(yf, ref, scale, 1e-5), 0) << "bias " << with_bias;
  }
}

// Analytic gradients of loss = sum(r ⊙ linear(x, w, b)) via the backward kernels, starting from
// non-zero gradient buffers to check that they accumulate.
struct LinearGrads {
  std::vector<double> dx, dw, db;
};
LinearGrads linear_analytic(const std::vector<double>& x, const std::vector<double>& w, const std::vector<double>& r,
                            int64_t M, int64_t K, int64_t N) {
  const auto dx0 = random_vector(M * K, 20), dw0 = random_vector(N * K, 21), db0 = random_vector(N, 22);
  LinearGrads g{dx0, dw0, db0};
  linear_backward_input<double>(r.data(), w.data(), g.dx.data(), M, K, N);
  linear_backward_weight<double>(r.data(), x.data(), g.dw.data(), g.db.data(), M, K, N);
  for (size_t i = 0; i < g.dx.size(); ++i) g.dx[i] -= dx0[i];
  for (size_t i = 0; i < g.dw.size(); ++i) g.dw[i] -= dw0[i];
  for (size_t i = 0; i < g.db.size(); ++i) g.db[i] -= db0[i];
  return g;
}

TEST(Linear, GradientsMatchFiniteDifferences) {
  const int64_t M = 5, K = 7, N = 3;
  auto x = random_vector(M * K, 1), w = random_vector(N * K, 2), b = random_vector(N, 3);
  const auto r = random_vector(M * N, 4);
  std::vector<double> y(M * N);
  const auto loss = [&] {
    linear_forward<double>(x.data(), w.data(), b.data(), y.data(), M, K, N);
    return dot(r, y);
  };
  const auto g = linear_analytic(x, w, r, M, K, N);
  EXPECT_EQ(expect_gradients_match(loss, x, g.dx, "dx"), 0);
  EXPECT_EQ(expect_gradients_match(loss, w, g.dw, "dw"), 0);
  EXPECT_EQ(expect_gradients_match(loss, b, g.db, "db"), 0);
}

TEST(Linear, NullGradientsAreSkipped) {
  const int64_t M = 5, K = 7, N = 3;
  const auto x = random_vector(M * K, 1), w = random_vector(N * K, 2), r = random_vector(M * N, 4);
  const auto g = linear_analytic(x, w, r, M, K, N);
  std::vector<double> dw(N * K, 0.0), db(N, 0.0);
  linear_backward_input<double>(r.data(), w.data(), nullptr, M, K, N);
  linear_backward_weight<double>(r.data(), x.data(), dw.data(), nullptr, M, K, N);
  linear_backward_weight<double>(r.data(), x.data(), nullptr, db.data(), M, K, N);
  for (int64_t i = 0; i < N * K; ++i) EXPECT_NEAR(dw[i], g.dw[i], 1e-12);
  for (int64_t j = 0; j < N; ++j) EXPECT_NEAR(db[j], g.db[j], 1e-12);
}

TEST(Linear, BiasGradientIsThreadCountIndependent) {
  ThreadGuard guard;
  // M spans many kReduceChunk chunks, N several column blocks, M*N above the parallel threshold.
  const int64_t M = 1000, K = 4, N = 1100;
  const auto dy = cast<float>(random_vector(M * N, 5)), x = cast<float>(random_vector(M * K, 6));
  const auto w = cast<float>(random_vector(N * K, 7)), b = cast<float>(random_vector(N, 8));
  std::vector<float> db1(N, 0.5f), db3(N, 0.5f), y1(M * N), y3(M * N);
  omp_set_num_threads(1);
  linear_backward_weight<float>(dy.data(), x.data(), nullptr, db1.data(), M, K, N);
  linear_forward<float>(x.data(), w.data(), b.data(), y1.data(), M, K, N);
  omp_set_num_threads(3);
  linear_backward_weight<float>(dy.data(), x.data(), nullptr, db3.data(), M, K, N);
  linear_forward<float>(x.data(), w.data(), b.data(), y3.data(), M, K, N);
  EXPECT_EQ(db1, db3);
  EXPECT_EQ(y1, y3);
  // And the chunked sum is accurate: compare with a double sum.
  for (int64_t j = 0; j < N; ++j) {
    double s = 0.5, a = 0.5;
    for (int64_t i = 0; i < M; ++i) s += dy[i * N + j], a += std::fabs(dy[i * N + j]);
    ASSERT_NEAR(db1[j], s, 1e-6 * a) << j;
  }
}

// ---- the checks catch planted bugs ----

// A wrong backward for dx: the right formula scaled by 1.01 (a 1% error).
std::vector<double> planted_dx(const std::vector<double>& dy, const std::vector<double>& w, int64_t M, int64_t K,
                               int64_t N) {
  std::vector<double> dx(M * K, 0.0);
  linear_backward_input<double>(dy.data(), w.data(), dx.data(), M, K, N);
  for (double& v : dx) v *= 1.01;
  return dx;
}

TEST(PlantedBug, FiniteDifferenceCheckCatchesWrongBackward) {
  const int64_t M = 5, K = 7, N = 3;
  auto x = random_vector(M * K, 1);
  const auto w = random_vector(N * K, 2), r = random_vector(M * N, 4);
  std::vector<double> y(M * N);
  const auto loss = [&] {
    linear_forward<double>(x.data(), w.data(), nullptr, y.data(), M, K, N);
    return dot(r, y);
  };
  const auto bad_dx = planted_dx(r, w, M, K, N);
  ::testing::TestPartResultArray failures;
  int bad = 0;
  {
    ::testing::ScopedFakeTestPartResultReporter intercept(
        ::testing::ScopedFakeTestPartResultReporter::INTERCEPT_ONLY_CURRENT_THREAD, &failures);
    bad = expect_gradients_match(loss, x, bad_dx, "planted dx");
  }
  EXPECT_EQ(bad, M * K);  // every element is off by 1%
  ASSERT_GE(failures.size(), 1);
  EXPECT_TRUE(failures.GetTestPartResult(0).nonfatally_failed());
  EXPECT_NE(std::string(failures.GetTestPartResult(0).message()).find("planted dx"), std::string::npos);

  // A transposed-weight bug (w read as [K, N] instead of [N, K]) is caught too.
  std::vector<double> wrong(M * K, 0.0);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < N; ++j) wrong[i * K + k] += r[i * N + j] * w[k * N + j];
  // Seen from the outside, the check reports exactly one failure summing up the mismatches.
  const auto check_wrong = [&] {
    int n = 0;
    {
      ::testing::TestPartResultArray inner;
      ::testing::ScopedFakeTestPartResultReporter quiet(
          ::testing::ScopedFakeTestPartResultReporter::INTERCEPT_ONLY_CURRENT_THREAD, &inner);
      n = expect_gradients_match(loss, x, wrong, "transposed w");
    }
    if (n > 0) ADD_FAILURE() << "gradient check found " << n << " mismatches";
  };
  EXPECT_NONFATAL_FAILURE(check_wrong(), "mismatches");
}

TEST(PlantedBug, Fp32ToleranceCheckCatchesOnePercentError) {
  // The fp32 kernels are compared with an fp64 reference at 1e-5 relative tolerance (relative
  // to sum |terms|). The real fp32 backward passes; the same result off by 1% does not.
  const int64_t M = 5, K = 7, N = 3;
  const auto dy = random_vector(M * N, 30), w = random_vector(N * K, 31);
  std::vector<double> ref(M * K, 0.0), scale(M * K, 0.0);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < N; ++j) {
        ref[i * K + k] += dy[i * N + j] * w[j * K + k];
        scale[i * K + k] += std::fabs(dy[i * N + j] * w[j * K + k]);
      }
  const auto dyf = cast<float>(dy), wf = cast<float>(w);
  std::vector<float> dxf(M * K, 0.0f);
  linear_backward_input<float>(dyf.data(), wf.data(), dxf.data(), M, K, N);
  EXPECT_EQ(count_mismatches(dxf, ref, scale, 1e-5), 0);
  std::vector<float> planted = dxf;
  for (float& v : planted) v *= 1.01f;
  // Every element whose value is not tiny next to its scale must be caught.
  int expected = 0;
  for (int64_t i = 0; i < M * K; ++i) expected += std::fabs(ref[i]) * 0.01 > 2e-5 * scale[i];
  EXPECT_GT(expected, M * K / 2);
  EXPECT_GE(count_mismatches(planted, ref, scale, 1e-5), expected);
}

}  // namespace
}  // namespace ptrain::cpu
