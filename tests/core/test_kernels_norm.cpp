// tests/core/test_kernels_norm.cpp — RMSNorm and LayerNorm CPU kernels.
//
// Gradients: central differences in double on small odd shapes (rows=5, C=7).
// Forward: a direct double reference (HF LlamaRMSNorm / torch LayerNorm formulas); the float
// kernel agrees with the double one to 1e-5 relative (fp32 statistics over C <= 512).
// Determinism: bit-identical with 1, 2 and 3 OMP threads on shapes above the parallel
// threshold (rows >= 3 * kReduceChunk, rows * C >= 32768).
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/cpu/kernels.h"
#include "tests/core/gradcheck.h"

namespace ptrain::cpu {
namespace {

using ptrain::testing::dot;
using ptrain::testing::expect_gradients_match;
using ptrain::testing::random_vector;

std::vector<float> to_float(const std::vector<double>& v) { return {v.begin(), v.end()}; }

/// max over i of |a - b| / (atol + |b|)
double max_rel_err(const std::vector<float>& a, const std::vector<double>& b, double atol) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]) / (atol + std::fabs(b[i])));
  return m;
}

template <class V>
bool bit_equal(const V& a, const V& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])) == 0;
}

/// Runs f with n OMP threads, then restores the previous setting.
template <class F>
void with_threads(int n, F&& f) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(n);
  f();
  omp_set_num_threads(saved);
}

std::vector<double> shifted(std::vector<double> v, double add) {
  for (auto& x : v) x += add;
  return v;
}

// ------------------------------------------------------------------------- RMSNorm

TEST(RmsNorm, ForwardMatchesReference) {
  const int64_t rows = 5, C = 7;
  const double eps = 1e-5;
  auto x = random_vector(rows * C, 1, 2.0);
  auto w = shifted(random_vector(C, 2, 0.5), 1.0);
  std::vector<double> y(rows * C), rstd(rows);
  rms_norm_forward(x.data(), w.data(), y.data(), rstd.data(), rows, C, eps);
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += x[r * C + c] * x[r * C + c];
    const double rs = 1.0 / std::sqrt(ss / C + eps);
    EXPECT_NEAR(rstd[r], rs, 1e-13 * rs);
    for (int64_t c = 0; c < C; ++c) EXPECT_NEAR(y[r * C + c], w[c] * x[r * C + c] * rs, 1e-13);
  }
}

TEST(RmsNorm, UnitWeightGivesUnitRmsRows) {
  const int64_t rows = 9, C = 130;
  auto x = random_vector(rows * C, 3, 5.0);
  std::vector<double> w(C, 1.0), y(rows * C), rstd(rows);
  rms_norm_forward(x.data(), w.data(), y.data(), rstd.data(), rows, C, 1e-12);
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += y[r * C + c] * y[r * C + c];
    EXPECT_NEAR(std::sqrt(ss / C), 1.0, 1e-10) << "row " << r;
  }
}

TEST(RmsNorm, GradientsMatchFiniteDifferences) {
  const int64_t rows = 5, C = 7;
  const double eps = 1e-5;
  auto x = random_vector(rows * C, 4);
  auto w = shifted(random_vector(C, 5, 0.5), 1.0);
  const auto rr = random_vector(rows * C, 6);  // dloss/dy
  std::vector<double> y(rows * C), rstd(rows);
  const auto loss = [&] {
    rms_norm_forward(x.data(), w.data(), y.data(), rstd.data(), rows, C, eps);
    return dot(rr, y);
  };
  loss();
  std::vector<double> dx(rows * C, 0.0), dw(C, 0.0);
  rms_norm_backward(rr.data(), x.data(), w.data(), rstd.data(), dx.data(), dw.data(), rows, C);
  EXPECT_EQ(expect_gradients_match(loss, x, dx, "rms dx"), 0);
  EXPECT_EQ(expect_gradients_match(loss, w, dw, "rms dw"), 0);
}

TEST(RmsNorm, BackwardAccumulatesAndSkipsNullptr) {
  const int64_t rows = 5, C = 7;
  auto x = random_vector(rows * C, 7);
  auto w = shifted(random_vector(C, 8, 0.5), 1.0);
  const auto dy = random_vector(rows * C, 9);
  std::vector<double> y(rows * C), rstd(rows);
  rms_norm_forward(x.data(), w.data(), y.data(), rstd.data(), rows, C, 1e-6);
  std::vector<double> dx(rows * C, 0.0), dw(C, 0.0);
  rms_norm_backward(dy.data(), x.data(), w.data(), rstd.data(), dx.data(), dw.data(), rows, C);
  // Only dx, then only dw: same values as the joint call.
  std::vector<double> dx1(rows * C, 0.0), dw1(C, 0.0);
  rms_norm_backward(dy.data(), x.data(), w.data(), rstd.data(), dx1.data(), static_cast<double*>(nullptr), rows, C);
  rms_norm_backward(dy.data(), x.data(), w.data(), rstd.data(), static_cast<double*>(nullptr), dw1.data(), rows, C);
  EXPECT_TRUE(bit_equal(dx, dx1));
  EXPECT_TRUE(bit_equal(dw, dw1));
  // A second call adds the same gradient again.
  rms_norm_backward(dy.data(), x.data(), w.data(), rstd.data(), dx1.data(), dw1.data(), rows, C);
  for (int64_t i = 0; i < rows * C; ++i) EXPECT_DOUBLE_EQ(dx1[i], 2 * dx[i]);
  for (int64_t c = 0; c < C; ++c) EXPECT_DOUBLE_EQ(dw1[c], 2 * dw[c]);
}

TEST(RmsNorm, FloatMatchesDouble) {
  const int64_t rows = 37, C = 512;
  const auto x = random_vector(rows * C, 10, 3.0);
  const auto w = shifted(random_vector(C, 11, 0.5), 1.0);
  const auto dy = random_vector(rows * C, 12);
  std::vector<double> y(rows * C), rstd(rows), dx(rows * C, 0.0), dw(C, 0.0);
  rms_norm_forward(x.data(), w.data(), y.data(), rstd.data(), rows, C, 1e-5);
  rms_norm_backward(dy.data(), x.data(), w.data(), rstd.data(), dx.data(), dw.data(), rows, C);
  const auto xf = to_float(x), wf = to_float(w), dyf = to_float(dy);
  std::vector<float> yf(rows * C), rstdf(rows), dxf(rows * C, 0.f), dwf(C, 0.f);
  rms_norm_forward(xf.data(), wf.data(), yf.data(), rstdf.data(), rows, C, 1e-5);
  rms_norm_backward(dyf.data(), xf.data(), wf.data(), rstdf.data(), dxf.data(), dwf.data(), rows, C);
  EXPECT_LT(max_rel_err(yf, y, 1e-6), 1e-5);
  EXPECT_LT(max_rel_err(rstdf, rstd, 0.0), 1e-5);
  // Gradients are sums of cancelling terms: compare relative to their scale.
  EXPECT_LT(max_rel_err(dxf, dx, 1e-3), 1e-4);
  EXPECT_LT(max_rel_err(dwf, dw, 1e-2), 1e-4);
}

TEST(RmsNorm, BitIdenticalAcrossThreadCounts) {
  const int64_t rows = 3 * kReduceChunk + 5, C = 256;  // rows * C > 32768: parallel path
  const auto x = to_float(random_vector(rows * C, 13, 2.0));
  const auto w = to_float(shifted(random_vector(C, 14, 0.5), 1.0));
  const auto dy = to_float(random_vector(rows * C, 15));
  std::vector<float> y[3], rstd[3], dx[3], dw[3];
  for (int i = 0; i < 3; ++i) {
    y[i].resize(rows * C);
    rstd[i].resize(rows);
    dx[i].assign(rows * C, 0.5f);
    dw[i].assign(C, 0.25f);
    with_threads(i + 1, [&] {
      rms_norm_forward(x.data(), w.data(), y[i].data(), rstd[i].data(), rows, C, 1e-5);
      rms_norm_backward(dy.data(), x.data(), w.data(), rstd[i].data(), dx[i].data(), dw[i].data(), rows, C);
    });
  }
  for (int i = 1; i < 3; ++i) {
    EXPECT_TRUE(bit_equal(y[0], y[i])) << i + 1 << " threads";
    EXPECT_TRUE(bit_equal(rstd[0], rstd[i])) << i + 1 << " threads";
    EXPECT_TRUE(bit_equal(dx[0], dx[i])) << i + 1 << " threads";
    EXPECT_TRUE(bit_equal(dw[0], dw[i])) << i + 1 << " threads";
  }
}

// ------------------------------------------------------------------------- LayerNorm

TEST(LayerNorm, ForwardMatchesReference) {
  const int64_t rows = 5, C = 7;
  const double eps = 1e-5;
  auto x = shifted(random_vector(rows * C, 20, 2.0), 3.0);
  auto w = shifted(random_vector(C, 21, 0.5), 1.0);
  auto b = random_vector(C, 22);
  std::vector<double> y(rows * C), mean(rows), rstd(rows), y_nob(rows * C);
  layer_norm_forward(x.data(), w.data(), b.data(), y.data(), mean.data(), rstd.data(), rows, C, eps);
  for (int64_t r = 0; r < rows; ++r) {
    double m = 0, v = 0;
    for (int64_t c = 0; c < C; ++c) m += x[r * C + c];
    m /= C;
    for (int64_t c = 0; c < C; ++c) v += (x[r * C + c] - m) * (x[r * C + c] - m);
    const double rs = 1.0 / std::sqrt(v / C + eps);  // biased variance, as torch
    EXPECT_NEAR(mean[r], m, 1e-13);
    EXPECT_NEAR(rstd[r], rs, 1e-13 * rs);
    for (int64_t c = 0; c < C; ++c) EXPECT_NEAR(y[r * C + c], (x[r * C + c] - m) * rs * w[c] + b[c], 1e-13);
  }
  // No bias: y - b.
  layer_norm_forward(x.data(), w.data(), static_cast<const double*>(nullptr), y_nob.data(), mean.data(), rstd.data(),
                     rows, C, eps);
  for (int64_t i = 0; i < rows * C; ++i) EXPECT_NEAR(y_nob[i], y[i] - b[i % C], 1e-13);
}

TEST(LayerNorm, UnitWeightGivesStandardizedRows) {
  const int64_t rows = 6, C = 99;
  auto x = shifted(random_vector(rows * C, 23, 4.0), -7.0);
  std::vector<double> w(C, 1.0), b(C, 0.0), y(rows * C), mean(rows), rstd(rows);
  layer_norm_forward(x.data(), w.data(), b.data(), y.data(), mean.data(), rstd.data(), rows, C, 1e-12);
  for (int64_t r = 0; r < rows; ++r) {
    double m = 0, v = 0;
    for (int64_t c = 0; c < C; ++c) m += y[r * C + c];
    m /= C;
    for (int64_t c = 0; c < C; ++c) v += (y[r * C + c] - m) * (y[r * C + c] - m);
    EXPECT_NEAR(m, 0.0, 1e-12);
    EXPECT_NEAR(v / C, 1.0, 1e-10);
  }
}

TEST(LayerNorm, GradientsMatchFiniteDifferences) {
  const int64_t rows = 5, C = 7;
  const double eps = 1e-5;
  auto x = random_vector(rows * C, 24);
  auto w = shifted(random_vector(C, 25, 0.5), 1.0);
  auto b = random_vector(C, 26);
  const auto rr = random_vector(rows * C, 27);
  std::vector<double> y(rows * C), mean(rows), rstd(rows);
  const auto loss = [&] {
    layer_norm_forward(x.data(), w.data(), b.data(), y.data(), mean.data(), rstd.data(), rows, C, eps);
    return dot(rr, y);
  };
  loss();
  std::vector<double> dx(rows * C, 0.0), dw(C, 0.0), db(C, 0.0);
  layer_norm_backward(rr.data(), x.data(), w.data(), mean.data(), rstd.data(), dx.data(), dw.data(), db.data(), rows,
                      C);
  EXPECT_EQ(expect_gradients_match(loss, x, dx, "ln dx"), 0);
  EXPECT_EQ(expect_gradients_match(loss, w, dw, "ln dw"), 0);
  EXPECT_EQ(expect_gradients_match(loss, b, db, "ln db"), 0);
}

TEST(LayerNorm, BackwardAccumulatesAndSkipsNullptr) {
  const int64_t rows = 5, C = 7;
  auto x = random_vector(rows * C, 28);
  auto w = shifted(random_vector(C, 29, 0.5), 1.0);
  auto b = random_vector(C, 30);
  const auto dy = random_vector(rows * C, 31);
  std::vector<double> y(rows * C), mean(rows), rstd(rows);
  layer_norm_forward(x.data(), w.data(), b.data(), y.data(), mean.data(), rstd.data(), rows, C, 1e-5);
  std::vector<double> dx(rows * C, 0.0), dw(C, 0.0), db(C, 0.0);
  layer_norm_backward(dy.data(), x.data(), w.data(), mean.data(), rstd.data(), dx.data(), dw.data(), db.data(), rows,
                      C);
  double* none = nullptr;
  std::vector<double> dx1(rows * C, 0.0), dw1(C, 0.0), db1(C, 0.0);
  layer_norm_backward(dy.data(), x.data(), w.data(), mean.data(), rstd.data(), dx1.data(), none, none, rows, C);
  layer_norm_backward(dy.data(), x.data(), w.data(), mean.data(), rstd.data(), none, dw1.data(), none, rows, C);
  layer_norm_backward(dy.data(), x.data(), w.data(), mean.data(), rstd.data(), none, none, db1.data(), rows, C);
  EXPECT_TRUE(bit_equal(dx, dx1));
  EXPECT_TRUE(bit_equal(dw, dw1));
  EXPECT_TRUE(bit_equal(db, db1));
  layer_norm_backward(dy.data(), x.data(), w.data(), mean.data(), rstd.data(), dx1.data(), dw1.data(), db1.data(),
                      rows, C);
  for (int64_t i = 0; i < rows * C; ++i) EXPECT_DOUBLE_EQ(dx1[i], 2 * dx[i]);
  for (int64_t c = 0; c < C; ++c) {
    EXPECT_DOUBLE_EQ(dw1[c], 2 * dw[c]);
    EXPECT_DOUBLE_EQ(db1[c], 2 * db[c]);
  }
}

TEST(LayerNorm, FloatMatchesDouble) {
  const int64_t rows = 37, C = 512;
  const auto x = shifted(random_vector(rows * C, 32, 3.0), 1.0);
  const auto w = shifted(random_vector(C, 33, 0.5), 1.0);
  const auto b = random_vector(C, 34);
  const auto dy = random_vector(rows * C, 35);
  std::vector<double> y(rows * C), mean(rows), rstd(rows), dx(rows * C, 0.0), dw(C, 0.0), db(C, 0.0);
  layer_norm_forward(x.data(), w.data(), b.data(), y.data(), mean.data(), rstd.data(), rows, C, 1e-5);
  layer_norm_backward(dy.data(), x.data(), w.data(), mean.data(), rstd.data(), dx.data(), dw.data(), db.data(), rows,
                      C);
  const auto xf = to_float(x), wf = to_float(w), bf = to_float(b), dyf = to_float(dy);
  std::vector<float> yf(rows * C), meanf(rows), rstdf(rows), dxf(rows * C, 0.f), dwf(C, 0.f), dbf(C, 0.f);
  layer_norm_forward(xf.data(), wf.data(), bf.data(), yf.data(), meanf.data(), rstdf.data(), rows, C, 1e-5);
  layer_norm_backward(dyf.data(), xf.data(), wf.data(), meanf.data(), rstdf.data(), dxf.data(), dwf.data(), dbf.data(),
                      rows, C);
  // y = xhat w + b can cancel to ~0: errors are relative to the O(1) terms, not to |y|.
  EXPECT_LT(max_rel_err(yf, y, 0.1), 1e-5);
  EXPECT_LT(max_rel_err(rstdf, rstd, 0.0), 1e-5);
  EXPECT_LT(max_rel_err(dxf, dx, 1e-3), 1e-4);
  EXPECT_LT(max_rel_err(dwf, dw, 1e-2), 1e-4);
  EXPECT_LT(max_rel_err(dbf, db, 1e-2), 1e-4);
}

TEST(LayerNorm, BitIdenticalAcrossThreadCounts) {
  const int64_t rows = 3 * kReduceChunk + 5, C = 256;  // rows * C > 32768: parallel path
  const auto x = to_float(random_vector(rows * C, 36, 2.0));
  const auto w = to_float(shifted(random_vector(C, 37, 0.5), 1.0));
  const auto b = to_float(random_vector(C, 38));
  const auto dy = to_float(random_vector(rows * C, 39));
  std::vector<float> y[3], mean[3], rstd[3], dx[3], dw[3], db[3];
  for (int i = 0; i < 3; ++i) {
    y[i].resize(rows * C);
    mean[i].resize(rows);
    rstd[i].resize(rows);
    dx[i].assign(rows * C, 0.5f);
    dw[i].assign(C, 0.25f);
    db[i].assign(C, -0.25f);
    with_threads(i + 1, [&] {
      layer_norm_forward(x.data(), w.data(), b.data(), y[i].data(), mean[i].data(), rstd[i].data(), rows, C, 1e-5);
      layer_norm_backward(dy.data(), x.data(), w.data(), mean[i].data(), rstd[i].data(), dx[i].data(), dw[i].data(),
                          db[i].data(), rows, C);
    });
  }
  for (int i = 1; i < 3; ++i) {
    EXPECT_TRUE(bit_equal(y[0], y[i])) << i + 1 << " threads";
    EXPECT_TRUE(bit_equal(mean[0], mean[i])) << i + 1 << " threads";
    EXPECT_TRUE(bit_equal(rstd[0], rstd[i])) << i + 1 << " threads";
    EXPECT_TRUE(bit_equal(dx[0], dx[i])) << i + 1 << " threads";
    EXPECT_TRUE(bit_equal(dw[0], dw[i])) << i + 1 << " threads";
    EXPECT_TRUE(bit_equal(db[0], db[i])) << i + 1 << " threads";
  }
}

}  // namespace
}  // namespace ptrain::cpu
