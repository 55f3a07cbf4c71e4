// tests/optim/test_grad_clip.cpp — global gradient norm, clipping coefficient, scaling,
// finiteness, zero_grads, and bit-identical norms across OpenMP thread counts.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

#include "optim/grad_clip.h"

using ptrain::DType;
using ptrain::Tensor;
using ptrain::optim::ParamRef;

namespace {

ParamRef make(const std::string& name, const std::vector<float>& g, ptrain::Shape shape,
              DType gdt = DType::f32) {
  return ParamRef{name, Tensor::zeros(shape), Tensor::from_vector(g, shape, gdt)};
}

// Uniform in [-1, 1) from mt19937's portable bit stream.
float uniform(std::mt19937& gen) { return static_cast<float>(gen() >> 8) * (2.0f / 16777216.0f) - 1.0f; }

std::vector<ParamRef> big_random(int64_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::vector<float> a(n), b(1000);
  for (float& x : a) x = uniform(gen) * 3.0f;
  for (float& x : b) x = uniform(gen) * 1e-3f;
  std::vector<ParamRef> ps;
  ps.push_back(make("w", a, {n / 1000, 1000}));
  ps.push_back(make("b", b, {1000}));
  return ps;
}

}  // namespace

TEST(GradClip, NormOfKnownVectors) {
  std::vector<ParamRef> ps{make("a", {3, 4}, {2}), make("b", {12}, {1, 1})};
  EXPECT_EQ(ptrain::optim::grad_sum_squares(ps), 169.0);
  EXPECT_EQ(ptrain::optim::global_grad_norm(ps), 13.0);
  // 1e6 elements of 0.5: sum of squares 250000 exactly (every partial is exact)
  std::vector<ParamRef> big{make("w", std::vector<float>(1000000, 0.5f), {1000, 1000})};
  EXPECT_EQ(ptrain::optim::global_grad_norm(big), 500.0);
  std::vector<ParamRef> none;
  EXPECT_EQ(ptrain::optim::global_grad_norm(none), 0.0);
}

TEST(GradClip, NormMatchesLongDoubleReference) {
  auto ps = big_random(300000, 7);
  long double ref = 0;
  for (const ParamRef& p : ps)
    for (double v : p.grad.to_double_vector()) ref += static_cast<long double>(v) * v;
  const double got = ptrain::optim::grad_sum_squares(ps);
  EXPECT_NEAR(got, static_cast<double>(ref), 1e-12 * static_cast<double>(ref));
}

TEST(GradClip, BitIdenticalAcrossThreadCounts) {
  auto ps = big_random(1000000, 11);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const double n1 = ptrain::optim::global_grad_norm(ps);
  omp_set_num_threads(3);
  const double n3 = ptrain::optim::global_grad_norm(ps);
  omp_set_num_threads(saved);
  EXPECT_EQ(n1, n3);  // bit-identical, not merely close
  EXPECT_GT(n1, 0.0);
}

TEST(GradClip, Coefficient) {
  EXPECT_DOUBLE_EQ(ptrain::optim::clip_coefficient(13.0, 1.0), 1.0 / (13.0 + 1e-6));
  EXPECT_EQ(ptrain::optim::clip_coefficient(0.5, 1.0), 1.0);   // under the limit: capped at 1
  EXPECT_DOUBLE_EQ(ptrain::optim::clip_coefficient(1.0, 1.0), 1.0 / (1.0 + 1e-6));  // at the limit: just below 1
  EXPECT_LT(ptrain::optim::clip_coefficient(1.0 + 1e-5, 1.0), 1.0);
  EXPECT_EQ(ptrain::optim::clip_coefficient(100.0, 0.0), 1.0);  // max_norm <= 0: no clipping
  EXPECT_EQ(ptrain::optim::clip_coefficient(100.0, -1.0), 1.0);
  EXPECT_EQ(ptrain::optim::clip_coefficient(std::numeric_limits<double>::quiet_NaN(), 1.0), 1.0);
}

TEST(GradClip, ClipScalesInFloat) {
  std::vector<ParamRef> ps{make("a", {3, 4}, {2}), make("b", {12}, {1})};
  const double norm = ptrain::optim::clip_grad_norm(ps, 1.0);
  EXPECT_EQ(norm, 13.0);
  const float c = static_cast<float>(1.0 / (13.0 + 1e-6));
  EXPECT_EQ(ps[0].grad.to_float_vector(), (std::vector<float>{3.0f * c, 4.0f * c}));
  EXPECT_EQ(ps[1].grad.to_float_vector(), (std::vector<float>{12.0f * c}));
  EXPECT_NEAR(ptrain::optim::global_grad_norm(ps), 1.0, 1e-6);
}

TEST(GradClip, NoOpUnderTheLimit) {
  auto ps = big_random(100000, 3);
  const std::vector<float> before = ps[0].grad.to_float_vector();
  const double norm = ptrain::optim::global_grad_norm(ps);
  EXPECT_EQ(ptrain::optim::clip_grad_norm(ps, norm * 2), norm);
  EXPECT_EQ(ps[0].grad.to_float_vector(), before);
  ptrain::optim::scale_grads(ps, 1.0);
  EXPECT_EQ(ps[0].grad.to_float_vector(), before);
}

TEST(GradClip, ScaleRoundsLowPrecisionGrads) {
  std::vector<ParamRef> ps{make("a", {1.0f, 3.0f, -7.0f}, {3}, DType::bf16)};
  ptrain::optim::scale_grads(ps, 0.3);
  for (float v : ps[0].grad.to_float_vector()) EXPECT_EQ(v, ptrain::round_bf16(v)) << v;
  EXPECT_EQ(ps[0].grad.to_float_vector()[1], ptrain::round_bf16(3.0f * 0.3f));
}

TEST(GradClip, AllFinite) {
  auto ps = big_random(200000, 5);
  EXPECT_TRUE(ptrain::optim::all_finite(ps));
  ps[0].grad.data<float>()[123457] = std::numeric_limits<float>::infinity();
  EXPECT_FALSE(ptrain::optim::all_finite(ps));
  ps[0].grad.data<float>()[123457] = 0.0f;
  ps[1].grad.data<float>()[999] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE(ptrain::optim::all_finite(ps));
  ps[1].grad.data<float>()[999] = -std::numeric_limits<float>::max();
  EXPECT_TRUE(ptrain::optim::all_finite(ps));
}

TEST(GradClip, ZeroGrads) {
  auto ps = big_random(10000, 9);
  ptrain::optim::zero_grads(ps);
  EXPECT_EQ(ptrain::optim::grad_sum_squares(ps), 0.0);
}

TEST(GradClip, RefusesMismatchedShapes) {
  std::vector<ParamRef> ps{ParamRef{"x", Tensor::zeros({2, 3}), Tensor::zeros({3, 2})}};
  EXPECT_THROW(ptrain::optim::global_grad_norm(ps), ptrain::Error);
}
