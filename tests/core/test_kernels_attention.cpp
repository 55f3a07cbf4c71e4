// tests/core/test_kernels_attention.cpp — causal grouped-query attention CPU kernels.
//
// Forward: against a direct double reference (explicit loops, no BLAS) for GQA ratios
// Hq/Hkv = 1, 2, 4, for Tn = 1 and for Tn above the kernel's causal row block (several blocks).
// Gradients: central differences in double for q, k, v. Causality: changing the keys/values of a
// future token leaves earlier outputs bit-identical. Determinism: bit-identical with 1, 2 and
// 3 OMP threads above the parallel threshold.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
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

struct Shape {
  int64_t B, Tn, Hq, Hkv, D;
  int64_t nq() const { return B * Tn * Hq * D; }
  int64_t nkv() const { return B * Tn * Hkv * D; }
  int64_t np() const { return B * Hq * Tn * Tn; }
};

/// Direct reference: out and probs in double by explicit loops.
void reference_attention(const Shape& s, const std::vector<double>& q, const std::vector<double>& k,
                         const std::vector<double>& v, std::vector<double>& out, std::vector<double>& probs) {
  const int64_t G = s.Hq / s.Hkv;
  out.assign(s.nq(), 0.0);
  probs.assign(s.np(), 0.0);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.Hq; ++h) {
      const int64_t hk = h / G;
      for (int64_t t = 0; t < s.Tn; ++t) {
        std::vector<double> sc(t + 1);
        double m = -1e300;
        for (int64_t j = 0; j <= t; ++j) {
          double acc = 0;
          for (int64_t d = 0; d < s.D; ++d)
            acc += q[((b * s.Tn + t) * s.Hq + h) * s.D + d] * k[((b * s.Tn + j) * s.Hkv + hk) * s.D + d];
          sc[j] = acc / std::sqrt(static_cast<double>(s.D));
          m = std::max(m, sc[j]);
        }
        double z = 0;
        for (int64_t j = 0; j <= t; ++j) z += std::exp(sc[j] - m);
        for (int64_t j = 0; j <= t; ++j) {
          const double p = std::exp(sc[j] - m) / z;
          probs[((b * s.Hq + h) * s.Tn + t) * s.Tn + j] = p;
          for (int64_t d = 0; d < s.D; ++d)
            out[((b * s.Tn + t) * s.Hq + h) * s.D + d] += p * v[((b * s.Tn + j) * s.Hkv + hk) * s.D + d];
        }
      }
    }
}

void check_forward(const Shape& s, uint64_t seed) {
  const auto q = random_vector(s.nq(), seed, 2.0), k = random_vector(s.nkv(), seed + 1, 2.0),
             v = random_vector(s.nkv(), seed + 2);
  std::vector<double> out(s.nq()), probs(s.np(), 7.0), rout, rprobs;
  attention_forward(q.data(), k.data(), v.data(), out.data(), probs.data(), s.B, s.Tn, s.Hq, s.Hkv, s.D);
  reference_attention(s, q, k, v, rout, rprobs);
  for (int64_t i = 0; i < s.nq(); ++i) ASSERT_NEAR(out[i], rout[i], 1e-13) << "out[" << i << "]";
  for (int64_t i = 0; i < s.np(); ++i) {
    const int64_t t = (i / s.Tn) % s.Tn, j = i % s.Tn;
    if (j > t) {
      ASSERT_EQ(probs[i], 0.0) << "probs above the diagonal at t=" << t << " j=" << j;
    } else {
      ASSERT_NEAR(probs[i], rprobs[i], 1e-14) << "probs[" << i << "]";
    }
  }
}

TEST(Attention, ForwardMatchesReference) {
  check_forward({2, 5, 2, 2, 4}, 1);    // MHA
  check_forward({2, 5, 4, 2, 4}, 10);   // GQA 2
  check_forward({2, 5, 4, 1, 4}, 20);   // GQA 4 (MQA)
  check_forward({2, 1, 4, 2, 4}, 30);   // Tn = 1
  check_forward({1, 150, 4, 2, 8}, 40); // several causal row blocks with a partial last block
}

void check_gradients(const Shape& s, uint64_t seed) {
  auto q = random_vector(s.nq(), seed, 1.5), k = random_vector(s.nkv(), seed + 1, 1.5),
       v = random_vector(s.nkv(), seed + 2);
  const auto rr = random_vector(s.nq(), seed + 3);
  std::vector<double> out(s.nq()), probs(s.np());
  const auto loss = [&] {
    attention_forward(q.data(), k.data(), v.data(), out.data(), probs.data(), s.B, s.Tn, s.Hq, s.Hkv, s.D);
    return dot(rr, out);
  };
  loss();
  std::vector<double> dq(s.nq(), 0.0), dk(s.nkv(), 0.0), dv(s.nkv(), 0.0);
  attention_backward(rr.data(), q.data(), k.data(), v.data(), probs.data(), dq.data(), dk.data(), dv.data(), s.B,
                     s.Tn, s.Hq, s.Hkv, s.D);
  const std::string tag = "Tn=" + std::to_string(s.Tn) + " Hq=" + std::to_string(s.Hq) +
                          " Hkv=" + std::to_string(s.Hkv) + " ";
  EXPECT_EQ(expect_gradients_match(loss, q, dq, tag + "dq"), 0);
  EXPECT_EQ(expect_gradients_match(loss, k, dk, tag + "dk"), 0);
  EXPECT_EQ(expect_gradients_match(loss, v, dv, tag + "dv"), 0);
}

TEST(Attention, GradientsMatchFiniteDifferences) {
  check_gradients({2, 5, 2, 2, 4}, 100);
  check_gradients({2, 5, 4, 2, 4}, 110);
  check_gradients({2, 5, 4, 1, 4}, 120);
  check_gradients({2, 1, 4, 2, 4}, 130);
  check_gradients({1, 70, 2, 1, 3}, 140);  // two causal row blocks
}

TEST(Attention, BackwardAccumulatesAndSkipsNullptr) {
  const Shape s{2, 7, 4, 2, 4};
  const auto q = random_vector(s.nq(), 200), k = random_vector(s.nkv(), 201), v = random_vector(s.nkv(), 202);
  const auto dout = random_vector(s.nq(), 203);
  std::vector<double> out(s.nq()), probs(s.np());
  attention_forward(q.data(), k.data(), v.data(), out.data(), probs.data(), s.B, s.Tn, s.Hq, s.Hkv, s.D);
  std::vector<double> dq(s.nq(), 0.0), dk(s.nkv(), 0.0), dv(s.nkv(), 0.0);
  const auto backward = [&](double* gq, double* gk, double* gv) {
    attention_backward(dout.data(), q.data(), k.data(), v.data(), probs.data(), gq, gk, gv, s.B, s.Tn, s.Hq, s.Hkv,
                       s.D);
  };
  backward(dq.data(), dk.data(), dv.data());
  std::vector<double> dq1(s.nq(), 0.0), dk1(s.nkv(), 0.0), dv1(s.nkv(), 0.0);
  backward(dq1.data(), nullptr, nullptr);
  backward(nullptr, dk1.data(), nullptr);
  backward(nullptr, nullptr, dv1.data());
  backward(nullptr, nullptr, nullptr);
  EXPECT_TRUE(bit_equal(dq, dq1));
  EXPECT_TRUE(bit_equal(dk, dk1));
  EXPECT_TRUE(bit_equal(dv, dv1));
  // Accumulation: starting from c gives c + gradient.
  std::vector<double> dq2(s.nq(), 1.0), dk2(s.nkv(), -1.0), dv2(s.nkv(), 0.5);
  backward(dq2.data(), dk2.data(), dv2.data());
  for (int64_t i = 0; i < s.nq(); ++i) EXPECT_NEAR(dq2[i], 1.0 + dq[i], 1e-14);
  for (int64_t i = 0; i < s.nkv(); ++i) {
    EXPECT_NEAR(dk2[i], -1.0 + dk[i], 1e-14);
    EXPECT_NEAR(dv2[i], 0.5 + dv[i], 1e-14);
  }
}

TEST(Attention, FutureTokensDoNotChangeEarlierOutputs) {
  const Shape s{2, 9, 4, 2, 8};
  const int64_t t0 = 5;
  const auto q = to_float(random_vector(s.nq(), 300)), k = to_float(random_vector(s.nkv(), 301)),
             v = to_float(random_vector(s.nkv(), 302));
  auto k2 = k, v2 = v;
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t i = 0; i < s.Hkv * s.D; ++i) {
      k2[(b * s.Tn + t0) * s.Hkv * s.D + i] += 3.0f;
      v2[(b * s.Tn + t0) * s.Hkv * s.D + i] -= 2.0f;
    }
  std::vector<float> out(s.nq()), probs(s.np()), out2(s.nq()), probs2(s.np());
  attention_forward(q.data(), k.data(), v.data(), out.data(), probs.data(), s.B, s.Tn, s.Hq, s.Hkv, s.D);
  attention_forward(q.data(), k2.data(), v2.data(), out2.data(), probs2.data(), s.B, s.Tn, s.Hq, s.Hkv, s.D);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t t = 0; t < s.Tn; ++t) {
      const float* o = out.data() + (b * s.Tn + t) * s.Hq * s.D;
      const float* o2 = out2.data() + (b * s.Tn + t) * s.Hq * s.D;
      const bool same = std::memcmp(o, o2, s.Hq * s.D * sizeof(float)) == 0;
      if (t < t0) {
        EXPECT_TRUE(same) << "output at t=" << t << " depends on token " << t0;
      } else {
        EXPECT_FALSE(same) << "output at t=" << t << " ignores token " << t0;
      }
    }
  for (int64_t i = 0; i < s.np(); ++i) {
    if (i % s.Tn > (i / s.Tn) % s.Tn) {
      ASSERT_EQ(probs[i], 0.0f);
    }
  }
}

TEST(Attention, FloatMatchesDouble) {
  const Shape s{2, 80, 4, 2, 16};
  const auto q = random_vector(s.nq(), 400, 1.5), k = random_vector(s.nkv(), 401, 1.5),
             v = random_vector(s.nkv(), 402), dout = random_vector(s.nq(), 403);
  std::vector<double> out(s.nq()), probs(s.np()), dq(s.nq(), 0.0), dk(s.nkv(), 0.0), dv(s.nkv(), 0.0);
  attention_forward(q.data(), k.data(), v.data(), out.data(), probs.data(), s.B, s.Tn, s.Hq, s.Hkv, s.D);
  attention_backward(dout.data(), q.data(), k.data(), v.data(), probs.data(), dq.data(), dk.data(), dv.data(), s.B,
                     s.Tn, s.Hq, s.Hkv, s.D);
  const auto qf = to_float(q), kf = to_float(k), vf = to_float(v), doutf = to_float(dout);
  std::vector<float> outf(s.nq()), probsf(s.np()), dqf(s.nq(), 0.f), dkf(s.nkv(), 0.f), dvf(s.nkv(), 0.f);
  attention_forward(qf.data(), kf.data(), vf.data(), outf.data(), probsf.data(), s.B, s.Tn, s.Hq, s.Hkv, s.D);
  attention_backward(doutf.data(), qf.data(), kf.data(), vf.data(), probsf.data(), dqf.data(), dkf.data(), dvf.data(),
                     s.B, s.Tn, s.Hq, s.Hkv, s.D);
  // Values are O(1) (probabilities, averages of |v| <= 1): errors relative to max(1, |ref|)
  // for outputs, and to the O(1) gradient scale for gradients (sums over Tn terms).
  const auto expect_close = [](const std::vector<float>& a, const std::vector<double>& b, double tol, const char* w) {
    double worst = 0;
    for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(a[i] - b[i]) / (1.0 + std::fabs(b[i])));
    EXPECT_LT(worst, tol) << w;
  };
  expect_close(outf, out, 1e-5, "out");
  expect_close(probsf, probs, 1e-5, "probs");
  expect_close(dqf, dq, 1e-5, "dq");
  expect_close(dkf, dk, 1e-5, "dk");
  expect_close(dvf, dv, 1e-5, "dv");
}

TEST(Attention, BitIdenticalAcrossThreadCounts) {
  const Shape s{3, 100, 4, 2, 16};  // 6 (batch, kv head) pairs, two row blocks: parallel path
  const auto q = to_float(random_vector(s.nq(), 500)), k = to_float(random_vector(s.nkv(), 501)),
             v = to_float(random_vector(s.nkv(), 502)), dout = to_float(random_vector(s.nq(), 503));
  std::vector<float> out[3], probs[3], dq[3], dk[3], dv[3];
  for (int t = 0; t < 3; ++t) {
    out[t].resize(s.nq());
    probs[t].resize(s.np());
    dq[t].assign(s.nq(), 0.25f);
    dk[t].assign(s.nkv(), 0.25f);
    dv[t].assign(s.nkv(), 0.25f);
    with_threads(t + 1, [&] {
      attention_forward(q.data(), k.data(), v.data(), out[t].data(), probs[t].data(), s.B, s.Tn, s.Hq, s.Hkv, s.D);
      attention_backward(dout.data(), q.data(), k.data(), v.data(), probs[t].data(), dq[t].data(), dk[t].data(),
                         dv[t].data(), s.B, s.Tn, s.Hq, s.Hkv, s.D);
    });
  }
  for (int t = 1; t < 3; ++t) {
    EXPECT_TRUE(bit_equal(out[0], out[t]));
    EXPECT_TRUE(bit_equal(probs[0], probs[t]));
    EXPECT_TRUE(bit_equal(dq[0], dq[t]));
    EXPECT_TRUE(bit_equal(dk[0], dk[t]));
    EXPECT_TRUE(bit_equal(dv[0], dv[t]));
  }
}

TEST(Attention, HeadCountsMustDivide) {
  std::vector<double> buf(64);
  EXPECT_THROW(attention_forward(buf.data(), buf.data(), buf.data(), buf.data(), buf.data(), 1, 2, 3, 2, 2),
               ptrain::Error);
}

}  // namespace
}  // namespace ptrain::cpu
