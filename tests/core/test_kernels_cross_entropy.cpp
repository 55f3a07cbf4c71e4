// tests/core/test_kernels_cross_entropy.cpp — fused softmax cross-entropy (core/cpu/cross_entropy.cpp).
//
// Forward against a long-double reference with padded columns holding NaN (so reading them
// would show); float/double agreement of losses, lse and gradients; finite-difference gradients
// in double with one ignored row (padding and ignored rows receive nothing, the rest accumulates);
// all rows ignored; extreme and -inf logits; target >= V rejected; bit-identical results for
// 1 and 3 OMP threads. The vocabulary-shard kernels (cross_entropy_lse, cross_entropy_backward_shard,
// used by parallel/tp_ops.cpp) agree bit for bit with the full kernels row for row.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/cpu/kernels.h"
#include "core/error.h"
#include "tests/core/gradcheck.h"

namespace ptrain::cpu {
namespace {

using ptrain::testing::expect_gradients_match;
using ptrain::testing::random_vector;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

template <class T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

struct ThreadGuard {
  int saved = omp_get_max_threads();
  ~ThreadGuard() { omp_set_num_threads(saved); }
};

/// Logits [N, Vp] with values in [-scale, scale) and NaN in the padding columns.
std::vector<double> padded_logits(int64_t N, int64_t Vp, int64_t V, uint64_t seed, double scale) {
  auto x = random_vector(N * Vp, seed, scale);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = V; j < Vp; ++j) x[i * Vp + j] = kNaN;
  return x;
}

/// Reference log-sum-exp of row i over [0, V) in long double.
double ref_lse(const std::vector<double>& x, int64_t i, int64_t Vp, int64_t V) {
  long double m = -INFINITY, s = 0;
  for (int64_t j = 0; j < V; ++j) m = std::max<long double>(m, x[i * Vp + j]);
  for (int64_t j = 0; j < V; ++j) s += std::exp(static_cast<long double>(x[i * Vp + j]) - m);
  return static_cast<double>(m + std::log(s));
}

TEST(CrossEntropy, ForwardMatchesReference) {
  const int64_t N = 6, Vp = 11, V = 9;
  const auto x = padded_logits(N, Vp, V, 1, 4.0);
  const std::vector<int32_t> t = {0, 8, -1, 4, 4, -100};
  std::vector<double> loss(N, 7.0), lse(N, 7.0);
  cross_entropy_forward<double>(x.data(), t.data(), loss.data(), lse.data(), N, Vp, V);
  const auto xf = cast<float>(x);
  std::vector<float> lossf(N, 7.0f), lsef(N, 7.0f);
  cross_entropy_forward<float>(xf.data(), t.data(), lossf.data(), lsef.data(), N, Vp, V);
  for (int64_t i = 0; i < N; ++i) {
    const double l = ref_lse(x, i, Vp, V);
    EXPECT_NEAR(lse[i], l, 1e-14 * std::fabs(l)) << i;  // saved for ignored rows too
    EXPECT_NEAR(lsef[i], l, 1e-6 * std::fabs(l)) << i;
    const double want = t[i] < 0 ? 0.0 : l - x[i * Vp + t[i]];
    EXPECT_NEAR(loss[i], want, 1e-14 * std::fabs(l)) << i;
    EXPECT_NEAR(lossf[i], want, 1e-6 * std::fabs(l)) << i;
    if (t[i] < 0) {
      EXPECT_EQ(lossf[i], 0.0f);
    }
  }
}

TEST(CrossEntropy, FloatAgreesWithDoubleOnWideRows) {
  // V = 1000 covers full blocks and a ragged tail; the padding is NaN.
  const int64_t N = 4, Vp = 1024, V = 1000;
  const auto x = padded_logits(N, Vp, V, 2, 8.0);
  const std::vector<int32_t> t = {0, 999, 517, -1};
  const auto dl = random_vector(N, 3);
  std::vector<double> loss(N), lse(N), dx(N * Vp, 0.0);
  cross_entropy_forward<double>(x.data(), t.data(), loss.data(), lse.data(), N, Vp, V);
  cross_entropy_backward<double>(x.data(), t.data(), lse.data(), dl.data(), dx.data(), N, Vp, V);
  const auto xf = cast<float>(x), dlf = cast<float>(dl);
  std::vector<float> lossf(N), lsef(N), dxf(N * Vp, 0.0f);
  cross_entropy_forward<float>(xf.data(), t.data(), lossf.data(), lsef.data(), N, Vp, V);
  cross_entropy_backward<float>(xf.data(), t.data(), lsef.data(), dlf.data(), dxf.data(), N, Vp, V);
  for (int64_t i = 0; i < N; ++i) {
    const double l = ref_lse(x, i, Vp, V);
    EXPECT_NEAR(lse[i], l, 1e-14 * std::fabs(l)) << i;
    EXPECT_NEAR(lsef[i], lse[i], 1e-5 * std::fabs(lse[i])) << i;
    EXPECT_NEAR(lossf[i], loss[i], 1e-5 * std::fabs(lse[i])) << i;
    for (int64_t j = 0; j < Vp; ++j) {
      // p = exp(x - lse) carries an absolute error of ~|lse| ulp(float) relative to p.
      const double tol = 1e-6 + 1e-5 * std::fabs(dx[i * Vp + j]);
      ASSERT_NEAR(dxf[i * Vp + j], dx[i * Vp + j], tol) << i << "," << j;
    }
  }
}

TEST(CrossEntropy, GradientsMatchFiniteDifferences) {
  const int64_t N = 5, Vp = 11, V = 9;
  auto x = padded_logits(N, Vp, V, 4, 3.0);
  const std::vector<int32_t> t = {2, -1, 8, 0, 2};
  const auto dloss = random_vector(N, 5);
  std::vector<double> loss(N), lse(N);
  const auto total = [&] {
    cross_entropy_forward<double>(x.data(), t.data(), loss.data(), lse.data(), N, Vp, V);
    double s = 0;
    for (int64_t i = 0; i < N; ++i) s += dloss[i] * loss[i];
    return s;
  };
  total();
  // Accumulate on top of non-zero values; padding starts at a sentinel that must survive.
  auto d0 = random_vector(N * Vp, 6);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = V; j < Vp; ++j) d0[i * Vp + j] = 123.0;
  auto d = d0;
  cross_entropy_backward<double>(x.data(), t.data(), lse.data(), dloss.data(), d.data(), N, Vp, V);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = V; j < Vp; ++j) EXPECT_EQ(d[i * Vp + j], 123.0) << "padding " << i << "," << j;
  for (int64_t j = 0; j < Vp; ++j) EXPECT_EQ(d[1 * Vp + j], d0[1 * Vp + j]) << "ignored row, col " << j;
  // The finite differences run over the real columns only (the padding holds NaN).
  std::vector<double> xr, an;
  std::vector<int64_t> where;
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < V; ++j) {
      where.push_back(i * Vp + j);
      xr.push_back(x[i * Vp + j]);
      an.push_back(d[i * Vp + j] - d0[i * Vp + j]);
    }
  const auto loss_r = [&] {
    for (size_t k = 0; k < where.size(); ++k) x[where[k]] = xr[k];
    return total();
  };
  EXPECT_EQ(expect_gradients_match(loss_r, xr, an, "dlogits"), 0);
}

TEST(CrossEntropy, AllTargetsIgnored) {
  const int64_t N = 3, Vp = 8, V = 5;
  for (int threads : {1, 2}) {
    ThreadGuard guard;
    omp_set_num_threads(threads);
    const auto x = cast<float>(padded_logits(N, Vp, V, 7, 2.0));
    const std::vector<int32_t> t = {-1, -1, -100};
    const std::vector<float> dl = {1.0f, 2.0f, 3.0f};
    std::vector<float> loss(N, 9.0f), lse(N), dx(N * Vp, 0.0f);
    cross_entropy_forward<float>(x.data(), t.data(), loss.data(), lse.data(), N, Vp, V);
    cross_entropy_backward<float>(x.data(), t.data(), lse.data(), dl.data(), dx.data(), N, Vp, V);
    for (float l : loss) EXPECT_EQ(l, 0.0f);
    for (float g : dx) EXPECT_EQ(g, 0.0f);
  }
}

TEST(CrossEntropy, ExtremeLogitsStayFinite) {
  // One huge logit per row, -inf (masked) real columns, and a row with a single real column.
  const int64_t N = 3, Vp = 6, V = 5;
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> x = {1e4f, -1e4f, 0.0f, -inf, 3.0f, 0.0f,  //
                                -inf, -inf, 88.0f, -inf, -inf, 0.0f,  //
                                -100.0f, -50.0f, -90.0f, -120.0f, -95.0f, 0.0f};
  const std::vector<int32_t> t = {1, 2, 0};
  const std::vector<float> dl = {1.0f, 1.0f, 1.0f};
  std::vector<float> loss(N), lse(N), dx(N * Vp, 0.0f);
  cross_entropy_forward<float>(x.data(), t.data(), loss.data(), lse.data(), N, Vp, V);
  cross_entropy_backward<float>(x.data(), t.data(), lse.data(), dl.data(), dx.data(), N, Vp, V);
  EXPECT_FLOAT_EQ(lse[0], 1e4f);
  EXPECT_FLOAT_EQ(loss[0], 2e4f);
  EXPECT_FLOAT_EQ(lse[1], 88.0f);
  EXPECT_EQ(loss[1], 0.0f);
  const double l2 = -50.0 + std::log1p(std::exp(-50.0) + std::exp(-40.0) + std::exp(-70.0) + std::exp(-45.0));
  EXPECT_NEAR(lse[2], l2, 1e-5);
  EXPECT_NEAR(loss[2], l2 + 100.0, 1e-5);
  for (float g : dx) EXPECT_TRUE(std::isfinite(g));
  EXPECT_FLOAT_EQ(dx[0], 1.0f);   // p = 1 on a non-target column
  EXPECT_FLOAT_EQ(dx[1], -1.0f);  // target with p = 0
  EXPECT_EQ(dx[3], 0.0f);         // -inf column: exactly no gradient
  EXPECT_EQ(dx[1 * Vp + 2], 0.0f);
  EXPECT_NEAR(dx[2 * Vp + 0], std::exp(-100.0 - l2) - 1.0, 1e-6);
  EXPECT_NEAR(dx[2 * Vp + 1], std::exp(-50.0 - l2), 1e-6);
}

TEST(CrossEntropy, TargetOutOfRangeIsRejected) {
  const int64_t N = 2, Vp = 8, V = 5;
  const std::vector<float> x(N * Vp, 0.0f), dl(N, 1.0f);
  std::vector<float> loss(N), lse(N), dx(N * Vp, 0.0f);
  const std::vector<int32_t> padding_target = {1, 5}, far_target = {7, 0};
  EXPECT_THROW(cross_entropy_forward<float>(x.data(), padding_target.data(), loss.data(), lse.data(), N, Vp, V),
               ptrain::Error);
  EXPECT_THROW(cross_entropy_backward<float>(x.data(), far_target.data(), lse.data(), dl.data(), dx.data(), N, Vp, V),
               ptrain::Error);
  for (float g : dx) EXPECT_EQ(g, 0.0f);  // checked before anything is written
}

TEST(CrossEntropy, ThreadCountIndependent) {
  ThreadGuard guard;
  const int64_t N = 64, Vp = 1024, V = 1000;  // N * V above the parallel threshold
  const auto x = cast<float>(padded_logits(N, Vp, V, 8, 6.0));
  std::vector<int32_t> t(N);
  for (int64_t i = 0; i < N; ++i) t[i] = i % 9 == 4 ? -1 : static_cast<int32_t>((i * 37) % V);
  const auto dl = cast<float>(random_vector(N, 9));
  const auto run = [&](int threads, std::vector<float>& loss, std::vector<float>& lse, std::vector<float>& dx) {
    omp_set_num_threads(threads);
    loss.assign(N, 0.0f), lse.assign(N, 0.0f), dx.assign(N * Vp, 0.5f);
    cross_entropy_forward<float>(x.data(), t.data(), loss.data(), lse.data(), N, Vp, V);
    cross_entropy_backward<float>(x.data(), t.data(), lse.data(), dl.data(), dx.data(), N, Vp, V);
  };
  std::vector<float> l1, s1, d1, l3, s3, d3;
  run(1, l1, s1, d1);
  run(3, l3, s3, d3);
  EXPECT_EQ(l1, l3);
  EXPECT_EQ(s1, s3);
  EXPECT_EQ(d1, d3);
}

// The shard kernels are the full kernels' arithmetic: lse in double before rounding, the same
// gradient rows; a target elsewhere (>= V) drops only the one-hot term; V = 0 is all padding.
TEST(CrossEntropy, ShardKernelsMatchTheFullKernels) {
  ThreadGuard guard;
  for (int threads : {1, 3}) {
    omp_set_num_threads(threads);
    const int64_t N = 40, Vp = 1030, V = 1000;  // N * V above the parallel threshold
    const auto xd = padded_logits(N, Vp, V, 11, 6.0);
    const auto xf = cast<float>(xd);
    std::vector<int32_t> t(N), elsewhere(N);
    for (int64_t i = 0; i < N; ++i) {
      t[i] = i % 7 == 3 ? -1 : static_cast<int32_t>((i * 131) % V);
      elsewhere[i] = t[i] < 0 ? -1 : static_cast<int32_t>(V + i % 3);
    }
    const auto dl = cast<float>(random_vector(N, 12));
    std::vector<float> loss(N), lse(N);
    cross_entropy_forward<float>(xf.data(), t.data(), loss.data(), lse.data(), N, Vp, V);
    std::vector<double> lse_d(N), lse_dd(N), loss_dd(N);
    cross_entropy_lse<float>(xf.data(), lse_d.data(), N, Vp, V);
    cross_entropy_forward<double>(xd.data(), t.data(), loss_dd.data(), lse_dd.data(), N, Vp, V);
    std::vector<double> lse_d64(N);
    cross_entropy_lse<double>(xd.data(), lse_d64.data(), N, Vp, V);
    for (int64_t i = 0; i < N; ++i) {
      EXPECT_EQ(static_cast<float>(lse_d[i]), lse[i]) << "row " << i;
      EXPECT_EQ(lse_d64[i], lse_dd[i]) << "row " << i;
      EXPECT_NEAR(lse_d64[i], ref_lse(xd, i, Vp, V), 1e-12) << "row " << i;
    }
    std::vector<float> full(N * Vp, 0.25f), shard(N * Vp, 0.25f), other(N * Vp, 0.25f);
    cross_entropy_backward<float>(xf.data(), t.data(), lse.data(), dl.data(), full.data(), N, Vp, V);
    cross_entropy_backward_shard<float>(xf.data(), t.data(), lse.data(), dl.data(), shard.data(), N, Vp, V);
    cross_entropy_backward_shard<float>(xf.data(), elsewhere.data(), lse.data(), dl.data(), other.data(), N, Vp, V);
    EXPECT_EQ(shard, full);
    int64_t differ = 0;
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < Vp; ++j) {
        const size_t k = static_cast<size_t>(i * Vp + j);
        if (t[i] >= 0 && j == t[i]) {
          // the one-hot term dl * (p - 1) is missing: other - full = dl (up to float rounding)
          EXPECT_NEAR(other[k] - full[k], dl[i], 1e-6) << i << "," << j;
        } else {
          differ += other[k] != full[k];
        }
      }
    EXPECT_EQ(differ, 0) << "a target elsewhere changed more than its own column";
  }
  // V = 0: a shard of padding only: lse -inf, nothing written
  const std::vector<float> x = {kNaN, kNaN, kNaN, kNaN};
  std::vector<double> l(2, 7.0);
  cross_entropy_lse<float>(x.data(), l.data(), 2, 2, 0);
  EXPECT_EQ(l[0], -std::numeric_limits<double>::infinity());
  EXPECT_EQ(l[1], -std::numeric_limits<double>::infinity());
  const std::vector<int32_t> tt = {0, -1};
  const std::vector<float> ls = {0.f, 0.f}, g = {1.f, 1.f};
  std::vector<float> dx(4, 0.5f);
  cross_entropy_backward_shard<float>(x.data(), tt.data(), ls.data(), g.data(), dx.data(), 2, 2, 0);
  EXPECT_EQ(dx, std::vector<float>(4, 0.5f));
}

}  // namespace
}  // namespace ptrain::cpu
