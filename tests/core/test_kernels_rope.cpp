// tests/core/test_kernels_rope.cpp — rotary position embedding CPU kernels (HF rotate-half).
//
// Tables: float tables follow HF's fp32 arithmetic bit for bit; double tables match the
// closed form. rope_forward matches a direct complex rotation of each (x[i], x[i + D/2]) pair;
// rope_backward is the transpose (finite differences) and its inverse (R^T R = I).
// Determinism: bit-identical with 1, 2 and 3 OMP threads above the parallel threshold.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <complex>
#include <cstring>
#include <vector>

#include "core/cpu/kernels.h"
#include "core/error.h"
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

TEST(Rope, FloatTablesFollowHuggingFaceArithmetic) {
  // HF: inv_freq = 1.0 / (base ** (arange(0, D, 2).float() / D)); freqs = pos.float() * inv_freq (fp32).
  const int64_t Tn = 37, D = 64, pos0 = 1000;
  const double theta = 500000.0;
  std::vector<float> c(Tn * D / 2), s(Tn * D / 2);
  rope_tables(c.data(), s.data(), Tn, D, theta, pos0);
  for (int64_t t = 0; t < Tn; ++t)
    for (int64_t i = 0; i < D / 2; ++i) {
      const float inv = 1.0f / std::pow(static_cast<float>(theta), static_cast<float>(2 * i) / static_cast<float>(D));
      const float angle = static_cast<float>(t + pos0) * inv;
      ASSERT_EQ(c[t * D / 2 + i], std::cos(angle)) << t << "," << i;
      ASSERT_EQ(s[t * D / 2 + i], std::sin(angle)) << t << "," << i;
    }
}

TEST(Rope, DoubleTablesMatchClosedFormAndOffset) {
  const int64_t Tn = 9, D = 10, pos0 = 4;
  const double theta = 10000.0;
  std::vector<double> c(Tn * D / 2), s(Tn * D / 2), c0((Tn + pos0) * D / 2), s0((Tn + pos0) * D / 2);
  rope_tables(c.data(), s.data(), Tn, D, theta, pos0);
  rope_tables(c0.data(), s0.data(), Tn + pos0, D, theta);
  for (int64_t t = 0; t < Tn; ++t)
    for (int64_t i = 0; i < D / 2; ++i) {
      const double angle = (t + pos0) * std::pow(theta, -2.0 * i / D);
      EXPECT_NEAR(c[t * D / 2 + i], std::cos(angle), 1e-14);
      EXPECT_NEAR(s[t * D / 2 + i], std::sin(angle), 1e-14);
      // Row t with offset pos0 is row t + pos0 of the table from 0.
      EXPECT_EQ(c[t * D / 2 + i], c0[(t + pos0) * D / 2 + i]);
      EXPECT_EQ(s[t * D / 2 + i], s0[(t + pos0) * D / 2 + i]);
    }
}

TEST(Rope, OddHeadDimIsRejected) {
  std::vector<double> c(8), s(8);
  EXPECT_THROW(rope_tables(c.data(), s.data(), 2, 7, 10000.0), ptrain::Error);
}

TEST(Rope, ForwardIsComplexRotation) {
  const int64_t B = 2, Tn = 5, H = 3, D = 8, half = D / 2, pos0 = 2;
  const double theta = 10000.0;
  const auto x = random_vector(B * Tn * H * D, 1);
  std::vector<double> c(Tn * half), s(Tn * half), y(x.size());
  rope_tables(c.data(), s.data(), Tn, D, theta, pos0);
  rope_forward(x.data(), c.data(), s.data(), y.data(), B, Tn, H, D);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < Tn; ++t)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < half; ++i) {
          const int64_t o = ((b * Tn + t) * H + h) * D;
          const std::complex<double> z(x[o + i], x[o + i + half]);
          const auto rz = z * std::polar(1.0, (t + pos0) * std::pow(theta, -2.0 * i / D));
          EXPECT_NEAR(y[o + i], rz.real(), 1e-14);
          EXPECT_NEAR(y[o + i + half], rz.imag(), 1e-14);
        }
  // In place gives the same result.
  auto xi = x;
  rope_forward(xi.data(), c.data(), s.data(), xi.data(), B, Tn, H, D);
  EXPECT_TRUE(bit_equal(xi, y));
}

TEST(Rope, GradientMatchesFiniteDifferences) {
  const int64_t B = 2, Tn = 5, H = 3, D = 8;
  auto x = random_vector(B * Tn * H * D, 2);
  const auto rr = random_vector(x.size(), 3);
  std::vector<double> c(Tn * D / 2), s(Tn * D / 2), y(x.size());
  rope_tables(c.data(), s.data(), Tn, D, 10000.0, 3);
  const auto loss = [&] {
    rope_forward(x.data(), c.data(), s.data(), y.data(), B, Tn, H, D);
    return dot(rr, y);
  };
  std::vector<double> dx(x.size(), 0.0);
  rope_backward(rr.data(), c.data(), s.data(), dx.data(), B, Tn, H, D);
  EXPECT_EQ(expect_gradients_match(loss, x, dx, "rope dx"), 0);
  // Accumulates; nullptr is a no-op.
  auto dx2 = dx;
  rope_backward(rr.data(), c.data(), s.data(), dx2.data(), B, Tn, H, D);
  for (size_t i = 0; i < dx.size(); ++i) EXPECT_DOUBLE_EQ(dx2[i], 2 * dx[i]);
  rope_backward(rr.data(), c.data(), s.data(), static_cast<double*>(nullptr), B, Tn, H, D);
}

TEST(Rope, BackwardOfForwardIsIdentity) {
  const int64_t B = 2, Tn = 33, H = 3, D = 16;
  const auto x = random_vector(B * Tn * H * D, 4);
  {
    std::vector<double> c(Tn * D / 2), s(Tn * D / 2), y(x.size()), back(x.size(), 0.0);
    rope_tables(c.data(), s.data(), Tn, D, 10000.0);
    rope_forward(x.data(), c.data(), s.data(), y.data(), B, Tn, H, D);
    rope_backward(y.data(), c.data(), s.data(), back.data(), B, Tn, H, D);
    for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(back[i], x[i], 1e-14);
  }
  {
    const auto xf = to_float(x);
    std::vector<float> c(Tn * D / 2), s(Tn * D / 2), y(x.size()), back(x.size(), 0.f);
    rope_tables(c.data(), s.data(), Tn, D, 10000.0);
    rope_forward(xf.data(), c.data(), s.data(), y.data(), B, Tn, H, D);
    rope_backward(y.data(), c.data(), s.data(), back.data(), B, Tn, H, D);
    for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(back[i], xf[i], 1e-6);
  }
}

TEST(Rope, FloatMatchesDouble) {
  // Positions below 2^10 keep the fp32 angle within ~1e-7 relative of the double one.
  const int64_t B = 2, Tn = 40, H = 4, D = 32, pos0 = 500;
  const auto x = random_vector(B * Tn * H * D, 5);
  std::vector<double> c(Tn * D / 2), s(Tn * D / 2), y(x.size());
  rope_tables(c.data(), s.data(), Tn, D, 10000.0, pos0);
  rope_forward(x.data(), c.data(), s.data(), y.data(), B, Tn, H, D);
  const auto xf = to_float(x);
  std::vector<float> cf(Tn * D / 2), sf(Tn * D / 2), yf(x.size());
  rope_tables(cf.data(), sf.data(), Tn, D, 10000.0, pos0);
  rope_forward(xf.data(), cf.data(), sf.data(), yf.data(), B, Tn, H, D);
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::fabs(yf[i] - y[i]));
  EXPECT_LT(worst, 1e-4);  // |x| <= 1: angle error (t + pos0) * 2^-24 ~ 3e-5 rad dominates
}

TEST(Rope, BitIdenticalAcrossThreadCounts) {
  const int64_t B = 4, Tn = 64, H = 4, D = 32;  // 32768 elements: parallel path
  const auto x = to_float(random_vector(B * Tn * H * D, 6));
  const auto dy = to_float(random_vector(B * Tn * H * D, 7));
  std::vector<float> c[3], s[3], y[3], dx[3];
  for (int i = 0; i < 3; ++i) {
    c[i].resize(Tn * D / 2);
    s[i].resize(Tn * D / 2);
    y[i].resize(x.size());
    dx[i].assign(x.size(), 0.5f);
    with_threads(i + 1, [&] {
      rope_tables(c[i].data(), s[i].data(), Tn, D, 10000.0, 7);
      rope_forward(x.data(), c[i].data(), s[i].data(), y[i].data(), B, Tn, H, D);
      rope_backward(dy.data(), c[i].data(), s[i].data(), dx[i].data(), B, Tn, H, D);
    });
  }
  for (int i = 1; i < 3; ++i) {
    EXPECT_TRUE(bit_equal(c[0], c[i]));
    EXPECT_TRUE(bit_equal(s[0], s[i]));
    EXPECT_TRUE(bit_equal(y[0], y[i]));
    EXPECT_TRUE(bit_equal(dx[0], dx[i]));
  }
}

}  // namespace
}  // namespace ptrain::cpu
