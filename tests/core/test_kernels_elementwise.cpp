// tests/core/test_kernels_elementwise.cpp — add, mul, scale, axpy, sum_squares (core/cpu/elementwise.cpp).
//
// Values against naive loops (float and double, in place too), finite-difference gradients of
// mul in double with accumulation and nullptr skips, sum_squares accuracy and float/double
// agreement, and bit-identical results for 1 and 3 OMP threads on sizes above the parallel
// threshold.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
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

struct ThreadGuard {
  int saved = omp_get_max_threads();
  ~ThreadGuard() { omp_set_num_threads(saved); }
};

template <class T>
class ElementwiseTyped : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(ElementwiseTyped, Scalars);

TYPED_TEST(ElementwiseTyped, ForwardMatchesNaive) {
  using T = TypeParam;
  for (int64_t n : {int64_t(0), int64_t(1), int64_t(13), int64_t(70001)}) {  // 70001: parallel path
    const auto a = cast<T>(random_vector(n, 1)), b = cast<T>(random_vector(n, 2));
    std::vector<T> y(n, T(7)), ys(n, T(7)), yb = b;
    add_forward<T>(a.data(), b.data(), y.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(y[i], a[i] + b[i]) << "add n=" << n << " i=" << i;
    mul_forward<T>(a.data(), b.data(), y.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(y[i], a[i] * b[i]) << "mul n=" << n << " i=" << i;
    scale_forward<T>(a.data(), T(-1.5), ys.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(ys[i], T(-1.5) * a[i]) << "scale n=" << n << " i=" << i;
    axpy<T>(T(0.25), a.data(), yb.data(), n);  // 0.25 * a is exact, so a fused multiply-add rounds alike
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(yb[i], b[i] + T(0.25) * a[i]) << "axpy n=" << n << " i=" << i;
  }
}

TYPED_TEST(ElementwiseTyped, InPlace) {
  using T = TypeParam;
  const int64_t n = 37;
  const auto a = cast<T>(random_vector(n, 1)), b = cast<T>(random_vector(n, 2));
  std::vector<T> y = a;
  add_forward<T>(y.data(), b.data(), y.data(), n);  // y = y + b
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(y[i], a[i] + b[i]);
  y = a;
  mul_forward<T>(b.data(), y.data(), y.data(), n);  // y = b * y
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(y[i], b[i] * a[i]);
  y = a;
  scale_forward<T>(y.data(), T(3), y.data(), n);
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(y[i], T(3) * a[i]);
  y = a;
  axpy<T>(T(0.5), y.data(), y.data(), n);  // y += 0.5 y
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(y[i], a[i] + T(0.5) * a[i]);
}

TEST(Elementwise, MulGradientsMatchFiniteDifferences) {
  const int64_t n = 7;
  auto a = random_vector(n, 1), b = random_vector(n, 2);
  const auto r = random_vector(n, 3);
  std::vector<double> y(n);
  const auto loss = [&] {
    mul_forward<double>(a.data(), b.data(), y.data(), n);
    return dot(r, y);
  };
  const auto da0 = random_vector(n, 4), db0 = random_vector(n, 5);
  auto da = da0, db = db0;
  mul_backward<double>(r.data(), a.data(), b.data(), da.data(), db.data(), n);
  for (int64_t i = 0; i < n; ++i) da[i] -= da0[i], db[i] -= db0[i];  // accumulated on top of da0, db0
  EXPECT_EQ(expect_gradients_match(loss, a, da, "da"), 0);
  EXPECT_EQ(expect_gradients_match(loss, b, db, "db"), 0);
  // Either gradient alone gives the same values.
  std::vector<double> da1(n, 0.0), db1(n, 0.0);
  mul_backward<double>(r.data(), a.data(), b.data(), da1.data(), nullptr, n);
  mul_backward<double>(r.data(), a.data(), b.data(), nullptr, db1.data(), n);
  mul_backward<double>(r.data(), a.data(), b.data(), nullptr, nullptr, n);
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_NEAR(da1[i], da[i], 1e-15);
    EXPECT_NEAR(db1[i], db[i], 1e-15);
  }
}

TEST(Elementwise, ScaleAndAxpyGradientsMatchFiniteDifferences) {
  // y = s x has dx = s dy; axpy is the accumulation every backward relies on: d(y + alpha x)/dx = alpha.
  const int64_t n = 5;
  auto x = random_vector(n, 1);
  const auto r = random_vector(n, 2), y0 = random_vector(n, 3);
  std::vector<double> y(n);
  const auto loss = [&] {
    y = y0;
    axpy<double>(-0.75, x.data(), y.data(), n);
    scale_forward<double>(y.data(), 1.5, y.data(), n);
    return dot(r, y);
  };
  std::vector<double> dx(n, 0.0), dy(n);
  scale_forward<double>(r.data(), 1.5, dy.data(), n);
  axpy<double>(-0.75, dy.data(), dx.data(), n);
  EXPECT_EQ(expect_gradients_match(loss, x, dx, "dx"), 0);
}

TEST(SumSquares, MatchesNaiveAndFloatAgrees) {
  for (int64_t n : {int64_t(0), int64_t(1), int64_t(9), int64_t(4096), int64_t(4097), int64_t(100003)}) {
    const auto x = random_vector(n, 7, 3.0);
    long double ref = 0;
    for (double v : x) ref += static_cast<long double>(v) * v;
    const double sd = sum_squares<double>(x.data(), n);
    EXPECT_NEAR(sd, static_cast<double>(ref), 1e-12 * static_cast<double>(ref) + 1e-300) << n;
    const auto xf = cast<float>(x);
    long double reff = 0;  // the float inputs' exact sum of squares (products are exact in double)
    for (float v : xf) reff += static_cast<double>(v) * v;
    const double sf = sum_squares<float>(xf.data(), n);
    EXPECT_NEAR(sf, static_cast<double>(reff), 1e-12 * static_cast<double>(reff) + 1e-300) << n;
    EXPECT_NEAR(sf, sd, 1e-6 * sd + 1e-300) << n;
  }
}

TEST(Elementwise, ThreadCountIndependent) {
  ThreadGuard guard;
  const int64_t n = 100003;  // above the parallel threshold, many sum_squares chunks, ragged tail
  const auto a = cast<float>(random_vector(n, 1)), b = cast<float>(random_vector(n, 2));
  const auto dy = cast<float>(random_vector(n, 3));
  struct Out {
    std::vector<float> add, mul, scale, axpy, da, db;
    double ss_f, ss_d;
  };
  const auto run = [&](int threads) {
    omp_set_num_threads(threads);
    Out o{std::vector<float>(n), std::vector<float>(n), std::vector<float>(n), b, a, b, 0, 0};
    add_forward<float>(a.data(), b.data(), o.add.data(), n);
    mul_forward<float>(a.data(), b.data(), o.mul.data(), n);
    scale_forward<float>(a.data(), 0.3f, o.scale.data(), n);
    axpy<float>(0.7f, a.data(), o.axpy.data(), n);
    mul_backward<float>(dy.data(), a.data(), b.data(), o.da.data(), o.db.data(), n);
    o.ss_f = sum_squares<float>(a.data(), n);
    const std::vector<double> ad(a.begin(), a.end());
    o.ss_d = sum_squares<double>(ad.data(), n);
    return o;
  };
  const Out o1 = run(1), o3 = run(3);
  EXPECT_EQ(o1.add, o3.add);
  EXPECT_EQ(o1.mul, o3.mul);
  EXPECT_EQ(o1.scale, o3.scale);
  EXPECT_EQ(o1.axpy, o3.axpy);
  EXPECT_EQ(o1.da, o3.da);
  EXPECT_EQ(o1.db, o3.db);
  EXPECT_EQ(o1.ss_f, o3.ss_f);  // bitwise: fixed chunks combined in order
  EXPECT_EQ(o1.ss_d, o3.ss_d);
}

}  // namespace
}  // namespace ptrain::cpu
