// tests/core/test_kernels_activation.cpp — SiLU, GELU-tanh and SwiGLU CPU kernels.
//
// Forward: against the textbook formulas in double (GELU in its tanh form); the fp32 kernels
// (vectorised polynomial exp) agree to 1e-6 relative + 1e-7 absolute, a few ulp.
// Gradients: central differences in double. Extremes: no NaN/inf for large |x|, NaN propagates.
// Determinism: bit-identical with 1, 2 and 3 OMP threads above the parallel threshold.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/cpu/kernels.h"
#include "tests/core/gradcheck.h"

namespace ptrain::cpu {
namespace {

using ptrain::testing::dot;
using ptrain::testing::expect_gradients_match;
using ptrain::testing::random_vector;

std::vector<float> to_float(const std::vector<double>& v) { return {v.begin(), v.end()}; }

template <class V>
bool bit_equal(const V& a, const V& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])) == 0;
}

template <class F>
void with_threads(int n, F&& f) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(n);
  f();
  omp_set_num_threads(saved);
}

double silu_ref(double x) { return x / (1.0 + std::exp(-x)); }
double gelu_ref(double x) {
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

/// Inputs spanning [-scale, scale] plus 0 and a few exact values.
std::vector<double> inputs(size_t n, uint64_t seed, double scale) {
  auto v = random_vector(n, seed, scale);
  v[0] = 0.0;
  if (n > 3) {
    v[1] = 1.0;
    v[2] = -1.0;
  }
  return v;
}

void expect_close(const std::vector<float>& got, const std::vector<double>& ref, double rtol, double atol,
                  const char* what) {
  for (size_t i = 0; i < ref.size(); ++i)
    EXPECT_NEAR(got[i], ref[i], atol + rtol * std::fabs(ref[i])) << what << "[" << i << "]";
}

TEST(Activation, ForwardMatchesFormulas) {
  const size_t n = 4099;  // odd: exercises vector tails
  const auto x = inputs(n, 1, 12.0), up = random_vector(n, 2, 2.0);
  std::vector<double> ys(n), yg(n), yw(n), rs(n), rg(n), rw(n);
  for (size_t i = 0; i < n; ++i) {
    rs[i] = silu_ref(x[i]);
    rg[i] = gelu_ref(x[i]);
    rw[i] = silu_ref(x[i]) * up[i];
  }
  silu_forward(x.data(), ys.data(), n);
  gelu_tanh_forward(x.data(), yg.data(), n);
  swiglu_forward(x.data(), up.data(), yw.data(), n);
  for (size_t i = 0; i < n; ++i) {
    EXPECT_NEAR(ys[i], rs[i], 1e-14 * (1 + std::fabs(rs[i])));
    EXPECT_NEAR(yg[i], rg[i], 1e-14 * (1 + std::fabs(rg[i])));
    EXPECT_NEAR(yw[i], rw[i], 1e-14 * (1 + std::fabs(rw[i])));
  }
  const auto xf = to_float(x), upf = to_float(up);
  std::vector<float> ysf(n), ygf(n), ywf(n);
  silu_forward(xf.data(), ysf.data(), n);
  gelu_tanh_forward(xf.data(), ygf.data(), n);
  swiglu_forward(xf.data(), upf.data(), ywf.data(), n);
  // References from the float-rounded inputs, so only the kernels' own rounding is measured.
  for (size_t i = 0; i < n; ++i) {
    rs[i] = silu_ref(xf[i]);
    rg[i] = gelu_ref(xf[i]);
    rw[i] = silu_ref(xf[i]) * upf[i];
  }
  expect_close(ysf, rs, 1e-6, 1e-7, "silu f32");
  expect_close(ygf, rg, 1e-6, 1e-7, "gelu f32");
  expect_close(ywf, rw, 1e-6, 1e-7, "swiglu f32");
}

TEST(Activation, FloatMatchesDouble) {
  const size_t n = 1000;
  const auto x = inputs(n, 3, 6.0), up = random_vector(n, 4, 2.0), dy = random_vector(n, 5);
  const auto xf = to_float(x), upf = to_float(up), dyf = to_float(dy);
  std::vector<double> y(n), dx(n, 0.0), dg(n, 0.0), du(n, 0.0);
  std::vector<float> yf(n), dxf(n, 0.f), dgf(n, 0.f), duf(n, 0.f);
  // Values are O(1): compare relative to max(1, |ref|) after double-rounding the inputs.
  const auto xd = std::vector<double>(xf.begin(), xf.end()), upd = std::vector<double>(upf.begin(), upf.end());
  const auto dyd = std::vector<double>(dyf.begin(), dyf.end());
  silu_forward(xd.data(), y.data(), n);
  silu_forward(xf.data(), yf.data(), n);
  expect_close(yf, y, 1e-5, 1e-5, "silu");
  silu_backward(dyd.data(), xd.data(), dx.data(), n);
  silu_backward(dyf.data(), xf.data(), dxf.data(), n);
  expect_close(dxf, dx, 1e-5, 1e-5, "silu grad");
  gelu_tanh_forward(xd.data(), y.data(), n);
  gelu_tanh_forward(xf.data(), yf.data(), n);
  expect_close(yf, y, 1e-5, 1e-5, "gelu");
  std::fill(dx.begin(), dx.end(), 0.0);
  std::fill(dxf.begin(), dxf.end(), 0.f);
  gelu_tanh_backward(dyd.data(), xd.data(), dx.data(), n);
  gelu_tanh_backward(dyf.data(), xf.data(), dxf.data(), n);
  expect_close(dxf, dx, 1e-5, 1e-5, "gelu grad");
  swiglu_forward(xd.data(), upd.data(), y.data(), n);
  swiglu_forward(xf.data(), upf.data(), yf.data(), n);
  expect_close(yf, y, 1e-5, 1e-5, "swiglu");
  swiglu_backward(dyd.data(), xd.data(), upd.data(), dg.data(), du.data(), n);
  swiglu_backward(dyf.data(), xf.data(), upf.data(), dgf.data(), duf.data(), n);
  expect_close(dgf, dg, 1e-5, 1e-5, "swiglu dgate");
  expect_close(duf, du, 1e-5, 1e-5, "swiglu dup");
}

TEST(Activation, GradientsMatchFiniteDifferences) {
  const size_t n = 37;
  auto x = inputs(n, 6, 5.0), up = random_vector(n, 7, 2.0);
  const auto rr = random_vector(n, 8);
  std::vector<double> y(n);
  {
    const auto loss = [&] {
      silu_forward(x.data(), y.data(), n);
      return dot(rr, y);
    };
    std::vector<double> dx(n, 0.0);
    silu_backward(rr.data(), x.data(), dx.data(), n);
    EXPECT_EQ(expect_gradients_match(loss, x, dx, "silu dx"), 0);
  }
  {
    const auto loss = [&] {
      gelu_tanh_forward(x.data(), y.data(), n);
      return dot(rr, y);
    };
    std::vector<double> dx(n, 0.0);
    gelu_tanh_backward(rr.data(), x.data(), dx.data(), n);
    EXPECT_EQ(expect_gradients_match(loss, x, dx, "gelu dx"), 0);
  }
  {
    const auto loss = [&] {
      swiglu_forward(x.data(), up.data(), y.data(), n);
      return dot(rr, y);
    };
    std::vector<double> dg(n, 0.0), du(n, 0.0);
    swiglu_backward(rr.data(), x.data(), up.data(), dg.data(), du.data(), n);
    EXPECT_EQ(expect_gradients_match(loss, x, dg, "swiglu dgate"), 0);
    EXPECT_EQ(expect_gradients_match(loss, up, du, "swiglu dup"), 0);
  }
}

TEST(Activation, BackwardAccumulatesAndSkipsNullptr) {
  const size_t n = 101;
  const auto x = to_float(inputs(n, 9, 4.0)), up = to_float(random_vector(n, 10)), dy = to_float(random_vector(n, 11));
  float* none = nullptr;
  std::vector<float> dg(n, 0.f), du(n, 0.f), dg1(n, 0.f), du1(n, 0.f);
  swiglu_backward(dy.data(), x.data(), up.data(), dg.data(), du.data(), n);
  swiglu_backward(dy.data(), x.data(), up.data(), dg1.data(), none, n);
  swiglu_backward(dy.data(), x.data(), up.data(), none, du1.data(), n);
  swiglu_backward(dy.data(), x.data(), up.data(), none, none, n);
  EXPECT_TRUE(bit_equal(dg, dg1));
  EXPECT_TRUE(bit_equal(du, du1));
  std::vector<float> ds(n, 0.f), dgl(n, 0.f);
  silu_backward(dy.data(), x.data(), ds.data(), n);
  gelu_tanh_backward(dy.data(), x.data(), dgl.data(), n);
  silu_backward(dy.data(), x.data(), none, n);
  gelu_tanh_backward(dy.data(), x.data(), none, n);
  auto ds2 = ds, dgl2 = dgl, dg2 = dg, du2 = du;
  silu_backward(dy.data(), x.data(), ds2.data(), n);
  gelu_tanh_backward(dy.data(), x.data(), dgl2.data(), n);
  swiglu_backward(dy.data(), x.data(), up.data(), dg2.data(), du2.data(), n);
  for (size_t i = 0; i < n; ++i) {
    EXPECT_EQ(ds2[i], 2 * ds[i]);
    EXPECT_EQ(dgl2[i], 2 * dgl[i]);
    EXPECT_EQ(dg2[i], 2 * dg[i]);
    EXPECT_EQ(du2[i], 2 * du[i]);
  }
}

TEST(Activation, ExtremeInputsStayFinite) {
  const std::vector<float> x = {-1e30f, -1e4f, -200.f, -90.f, -88.f, -87.f, 87.f, 88.f, 89.f, 200.f, 1e4f, 1e30f};
  const size_t n = x.size();
  std::vector<float> up(n, 1.f), dy(n, 1.f), y(n), dx(n, 0.f), dg(n, 0.f), du(n, 0.f);
  silu_forward(x.data(), y.data(), n);
  for (size_t i = 0; i < n; ++i) {
    EXPECT_TRUE(std::isfinite(y[i])) << "silu(" << x[i] << ")";
    EXPECT_NEAR(y[i], x[i] > 0 ? x[i] : 0.f, x[i] > 0 ? 0.f : 1e-30f) << "silu(" << x[i] << ")";
  }
  gelu_tanh_forward(x.data(), y.data(), n);
  for (size_t i = 0; i < n; ++i) EXPECT_EQ(y[i], x[i] > 0 ? x[i] : 0.f) << "gelu(" << x[i] << ")";
  swiglu_forward(x.data(), up.data(), y.data(), n);
  for (size_t i = 0; i < n; ++i) EXPECT_TRUE(std::isfinite(y[i])) << "swiglu(" << x[i] << ")";
  silu_backward(dy.data(), x.data(), dx.data(), n);
  swiglu_backward(dy.data(), x.data(), up.data(), dg.data(), du.data(), n);
  for (size_t i = 0; i < n; ++i) {
    EXPECT_NEAR(dx[i], x[i] > 0 ? 1.f : 0.f, 1e-30f) << "silu'(" << x[i] << ")";
    EXPECT_TRUE(std::isfinite(dg[i]) && std::isfinite(du[i])) << "swiglu'(" << x[i] << ")";
  }
  // Moderate values where the fp32 cubic does not overflow: GELU' -> 1 / 0.
  const std::vector<float> xm = {-1e4f, -100.f, 100.f, 1e4f};
  std::vector<float> dgm(xm.size(), 0.f), onem(xm.size(), 1.f);
  gelu_tanh_backward(onem.data(), xm.data(), dgm.data(), xm.size());
  for (size_t i = 0; i < xm.size(); ++i) EXPECT_EQ(dgm[i], xm[i] > 0 ? 1.f : 0.f) << "gelu'(" << xm[i] << ")";
  // NaN propagates.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  float yn = 0.f;
  silu_forward(&nan, &yn, 1);
  EXPECT_TRUE(std::isnan(yn));
  gelu_tanh_forward(&nan, &yn, 1);
  EXPECT_TRUE(std::isnan(yn));
}

TEST(Activation, BitIdenticalAcrossThreadCounts) {
  const size_t n = 100003;  // above the parallel threshold, not a multiple of the block
  const auto x = to_float(inputs(n, 12, 8.0)), up = to_float(random_vector(n, 13)), dy = to_float(random_vector(n, 14));
  std::vector<float> ys[3], yg[3], yw[3], ds[3], dgl[3], dg[3], du[3];
  for (int t = 0; t < 3; ++t) {
    for (auto* v : {&ys[t], &yg[t], &yw[t]}) v->resize(n);
    for (auto* v : {&ds[t], &dgl[t], &dg[t], &du[t]}) v->assign(n, 0.25f);
    with_threads(t + 1, [&] {
      silu_forward(x.data(), ys[t].data(), n);
      gelu_tanh_forward(x.data(), yg[t].data(), n);
      swiglu_forward(x.data(), up.data(), yw[t].data(), n);
      silu_backward(dy.data(), x.data(), ds[t].data(), n);
      gelu_tanh_backward(dy.data(), x.data(), dgl[t].data(), n);
      swiglu_backward(dy.data(), x.data(), up.data(), dg[t].data(), du[t].data(), n);
    });
  }
  for (int t = 1; t < 3; ++t) {
    EXPECT_TRUE(bit_equal(ys[0], ys[t]));
    EXPECT_TRUE(bit_equal(yg[0], yg[t]));
    EXPECT_TRUE(bit_equal(yw[0], yw[t]));
    EXPECT_TRUE(bit_equal(ds[0], ds[t]));
    EXPECT_TRUE(bit_equal(dgl[0], dgl[t]));
    EXPECT_TRUE(bit_equal(dg[0], dg[t]));
    EXPECT_TRUE(bit_equal(du[0], du[t]));
  }
}

}  // namespace
}  // namespace ptrain::cpu
