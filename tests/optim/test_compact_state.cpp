// tests/optim/test_compact_state.cpp — optim.state bf16-sr and 8bit (optim/compact_state.h,
// AdamW's compact path): stochastic rounding is unbiased and lands on a neighbour; the 8-bit
// maps and their exact round trip; a compact AdamW step is deterministic across thread counts,
// keeps the master on the bf16 grid, stays close to the fp32 step, and takes the bytes it says.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <set>
#include <vector>

#include "core/cpu/threading.h"
#include "core/rng.h"
#include "optim/adamw.h"
#include "optim/compact_state.h"

namespace ptrain::optim {
namespace {

float bf16_floor(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  b &= 0xffff0000u;
  float y;
  std::memcpy(&y, &b, 4);
  return y;
}

bool on_bf16_grid(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return (b & 0xffffu) == 0;
}

TEST(CompactState, StochasticRoundingIsUnbiasedAndLandsOnANeighbour) {
  const PhiloxKey key = make_key(1, "test");
  for (float x : {1.0f + 1.0f / 300.0f, -3.14159f, 1e-20f, 65000.5f}) {
    const float lo = bf16_floor(x);
    double sum = 0;
    const int n = 200000;
    std::set<float> seen;
    for (int i = 0; i < n; ++i) {
      const float r = stochastic_round_bf16(x, static_cast<uint32_t>(random_u64(key, static_cast<uint64_t>(i))));
      ASSERT_TRUE(on_bf16_grid(r)) << x;
      seen.insert(r);
      sum += r;
    }
    EXPECT_LE(seen.size(), 2u) << x;
    EXPECT_TRUE(seen.count(lo)) << x;
    const double ulp = std::fabs(static_cast<double>(lo) * 0x1p-7);
    EXPECT_NEAR(sum / n, x, 0.01 * ulp) << "the mean of stochastic roundings is x itself";
  }
  EXPECT_EQ(stochastic_round_bf16(2.0f, 0xffffu), 2.0f) << "a value on the grid stays";
  EXPECT_TRUE(std::isinf(stochastic_round_bf16(INFINITY, 0x1234u)));
  EXPECT_TRUE(std::isnan(stochastic_round_bf16(NAN, 0x1234u)));
}

TEST(CompactState, MapsAreSortedAndHoldTheExactEnds) {
  for (const QuantMap* m : {&signed_map(), &unsigned_map()}) {
    for (size_t i = 1; i < 256; ++i) ASSERT_LT(m->code[i - 1], m->code[i]);
    EXPECT_EQ(m->code[255], 1.0f);
    EXPECT_EQ(m->decode(m->encode(0.0f)), 0.0f);
    EXPECT_EQ(m->decode(m->encode(1.0f)), 1.0f);
  }
  EXPECT_EQ(signed_map().code[0], -1.0f);
  EXPECT_EQ(unsigned_map().code[0], 0.0f);
  // nearest code: a value halfway-plus between two codes takes the upper one
  const QuantMap& m = signed_map();
  const float a = m.code[200], b = m.code[201];
  EXPECT_EQ(m.encode(a + 0.49f * (b - a)), 200);
  EXPECT_EQ(m.encode(a + 0.51f * (b - a)), 201);
}

// encode() walks from a per-bucket start instead of a binary search: it must give exactly the
// binary search's answer (the first midpoint >= v) for every value: each midpoint and its two
// float neighbours, both ends of every one of the 65536 buckets, and a million random values of
// [-1, 1] spread over seven decades.
TEST(CompactState, EncodeIsExactlyTheNearestCodeSearch) {
  const PhiloxKey key = make_key(5, "encode");
  for (const QuantMap* m : {&signed_map(), &unsigned_map()}) {
    auto reference = [&](float v) {
      return static_cast<int>(std::lower_bound(m->mid.begin(), m->mid.begin() + 255, v) - m->mid.begin());
    };
    std::vector<float> probe = {0.0f, -0.0f, 1.0f, -1.0f, 1e-30f, -1e-30f, NAN};
    for (float x : std::vector<float>(m->mid.begin(), m->mid.begin() + 255)) probe.insert(probe.end(), {x, std::nextafter(x, -2.0f), std::nextafter(x, 2.0f)});
    for (uint32_t h = 0; h < 65536; ++h)
      for (uint32_t low : {0u, 0xffffu, 0x8000u}) {
        const uint32_t bits = (h << 16) | low;
        float v;
        std::memcpy(&v, &bits, 4);
        if (std::fabs(v) <= 1.0f) probe.push_back(v);
      }
    for (uint64_t i = 0; i < 1000000; ++i) {
      const uint64_t r = random_u64(key, i);
      const double mag = std::pow(10.0, -7.0 * static_cast<double>(r >> 40) / 16777216.0);  // 1e-7 .. 1
      probe.push_back(static_cast<float>((r & 1u) ? -mag : mag));
    }
    for (float v : probe) ASSERT_EQ(static_cast<int>(m->encode(v)), reference(v)) << "v = " << v;
  }
}

// The two-pass stream rounding draws exactly the per-element definition's bits (element e:
// the (e % 8)-th 16 bits of Philox block e / 8), from any first element and for any length.
TEST(CompactState, StreamRoundingIsThePerElementDefinition) {
  const PhiloxKey key = make_key(9, "sr");
  std::vector<float> x(5000);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(std::sin(0.37 * static_cast<double>(i)) * 3.0);
  for (uint64_t first : {0ull, 3ull, 8ull, 2045ull, (1ull << 35) + 5})
    for (int64_t n : {1, 7, 9, 2048, 2051, 5000}) {
      std::vector<float> got(static_cast<size_t>(n));
      stochastic_round_bf16_stream(key, first, x.data(), got.data(), n);
      for (int64_t k = 0; k < n; ++k) {
        const uint64_t e = first + static_cast<uint64_t>(k);
        const PhiloxCounter r = philox4x32({static_cast<uint32_t>(e >> 3), static_cast<uint32_t>(e >> 35), 0u, 0u}, key);
        const uint32_t block[4] = {r[0], r[1], r[2], r[3]};
        ASSERT_EQ(got[static_cast<size_t>(k)], stochastic_round_bf16(x[static_cast<size_t>(k)], sr_bits(block, e)))
            << "first " << first << " n " << n << " k " << k;
      }
    }
}

TEST(CompactState, QuantiseDequantiseRoundTripIsExact) {
  const PhiloxKey key = make_key(2, "test");
  Quantized q;
  const int64_t n = 3 * kQuantBlock + 100;
  q.resize(n);
  std::vector<float> x(static_cast<size_t>(n)), y(x.size());
  for (int64_t i = 0; i < n; ++i)
    x[static_cast<size_t>(i)] = static_cast<float>(random_normal(key, static_cast<uint64_t>(i)) * std::exp(-(i % 17)));
  const int64_t blocks = (n + kQuantBlock - 1) / kQuantBlock;
  for (int64_t b = 0; b < blocks; ++b) q.encode_block(signed_map(), b, x.data() + b * kQuantBlock);
  const std::vector<uint8_t> codes = q.q;
  const std::vector<float> absmax = q.absmax;
  double worst = 0;
  for (int64_t b = 0; b < blocks; ++b) q.decode_block(signed_map(), b, y.data() + b * kQuantBlock);
  for (int64_t i = 0; i < n; ++i) {
    const double a = absmax[static_cast<size_t>(i / kQuantBlock)];
    worst = std::max(worst, std::fabs(y[static_cast<size_t>(i)] - x[static_cast<size_t>(i)]) / a);
  }
  EXPECT_LT(worst, 0.01) << "within the map's spacing near 1 (relative to the block's absmax)";
  for (int64_t b = 0; b < blocks; ++b) q.encode_block(signed_map(), b, y.data() + b * kQuantBlock);
  EXPECT_EQ(q.q, codes) << "quantise(dequantise(q)) == q: a checkpoint of decoded moments resumes exactly";
  EXPECT_EQ(q.absmax, absmax);
  EXPECT_EQ(q.bytes(), static_cast<size_t>(n) + static_cast<size_t>(blocks) * 4);
}

struct Problem {
  std::vector<Tensor> params, grads;
  std::vector<ParamRef> refs;
};

Problem make_problem(uint64_t seed) {
  Problem p;
  const PhiloxKey key = make_key(seed, "problem");
  const std::vector<Shape> shapes = {{96, 80}, {64}, {40, 200}};  // 2-D with 8-bit moments, a small 1-D
  uint64_t c = 0;
  for (const Shape& s : shapes) {
    std::vector<float> w(static_cast<size_t>(shape_numel(s))), g(w.size());
    for (auto& v : w) v = static_cast<float>(random_normal(key, c++) * 0.1);
    for (auto& v : g) v = static_cast<float>(random_normal(key, c++) * 0.01);
    p.params.push_back(Tensor::from_vector(w, s, DType::bf16));
    p.grads.push_back(Tensor::from_vector(g, s));
  }
  for (size_t i = 0; i < shapes.size(); ++i) p.refs.push_back({"p" + std::to_string(i), p.params[i], p.grads[i]});
  return p;
}

std::vector<std::vector<float>> run_steps(StateFormat state, int threads, int steps, AdamW** keep = nullptr) {
  cpu::set_threads(threads);
  Problem p = make_problem(5);
  AdamWOptions o;
  o.state = state;
  o.seed = 11;
  static std::vector<std::unique_ptr<AdamW>> alive;
  alive.push_back(std::make_unique<AdamW>(o, p.refs));
  AdamW& a = *alive.back();
  for (int s = 0; s < steps; ++s) a.step(1e-2, 1.0);
  if (keep) *keep = &a;
  std::vector<std::vector<float>> out;
  for (auto& t : p.params) out.push_back(t.to_float_vector());
  cpu::set_threads(1);
  return out;
}

TEST(CompactState, AdamWIsDeterministicAcrossThreadsAndOnTheGrid) {
  for (StateFormat st : {StateFormat::bf16_sr, StateFormat::int8}) {
    const auto one = run_steps(st, 1, 5), two = run_steps(st, 2, 5), four = run_steps(st, 4, 5);
    EXPECT_EQ(one, two);
    EXPECT_EQ(one, four);
    for (const auto& t : one)
      for (float v : t) ASSERT_TRUE(on_bf16_grid(v));
  }
}

TEST(CompactState, CloseToTheFp32StepAndSmall) {
  AdamW* a8 = nullptr;
  const auto sr = run_steps(StateFormat::bf16_sr, 1, 10);
  const auto q8 = run_steps(StateFormat::int8, 1, 10, &a8);
  // the fp32 reference on f32 masters of the same start
  Problem p = make_problem(5);
  std::vector<Tensor> masters;
  std::vector<ParamRef> refs;
  for (size_t i = 0; i < p.params.size(); ++i) {
    masters.push_back(p.params[i].to(DType::f32));
    refs.push_back({p.refs[i].name, masters.back(), p.grads[i]});
  }
  AdamW ref(AdamWOptions{}, refs);
  for (int s = 0; s < 10; ++s) ref.step(1e-2, 1.0);
  for (size_t i = 0; i < masters.size(); ++i) {
    const auto want = masters[i].to_float_vector();
    // mean |difference| against the mean movement (ten steps of lr 1e-2 move a weight ~0.1; the
    // bf16 grid at |w| ~ 0.1 is ~5e-4; 8-bit moments err most where |m| is far below its block's)
    double d_sr = 0, d_q8 = 0, moved = 0, worst_q8 = 0;
    const auto start = p.params[i].to_float_vector();
    for (size_t k = 0; k < want.size(); ++k) {
      d_sr += std::fabs(sr[i][k] - want[k]);
      d_q8 += std::fabs(q8[i][k] - want[k]);
      worst_q8 = std::max(worst_q8, static_cast<double>(std::fabs(q8[i][k] - want[k])));
      moved += std::fabs(want[k] - start[k]);
    }
    std::printf("parameter %zu: mean movement %.3g, mean |bf16-sr - fp32| %.3g, mean |8bit - fp32| %.3g (worst %.3g)\n",
                i, moved / want.size(), d_sr / want.size(), d_q8 / want.size(), worst_q8);
    EXPECT_LT(d_sr, 0.02 * moved) << "bf16-sr parameter " << i;
    EXPECT_LT(d_q8, 0.05 * moved) << "8bit parameter " << i;
  }
  // bytes: 8-bit moments for the two large tensors (1 B each + an absmax per 2048), f32 for the small one
  ASSERT_NE(a8, nullptr);
  EXPECT_TRUE(a8->quantized(0));
  EXPECT_FALSE(a8->quantized(1));
  EXPECT_EQ(a8->state_bytes(0), 2 * 96 * 80 + 2 * 4 * ((96 * 80 + 2047) / 2048));
  EXPECT_EQ(a8->state_bytes(1), 8 * 64);
  // the decoded moments re-encode to the same state (checkpoint round trip)
  const Tensor m = a8->exp_avg(0), v = a8->exp_avg_sq(0);
  a8->set_state(0, m, v);
  EXPECT_EQ(a8->exp_avg(0).to_float_vector(), m.to_float_vector());
  EXPECT_EQ(a8->exp_avg_sq(0).to_float_vector(), v.to_float_vector());
}

TEST(CompactState, Fp32StateRefusesBf16Masters) {
  Problem p = make_problem(3);
  EXPECT_THROW(AdamW(AdamWOptions{}, p.refs), Error);
}

}  // namespace
}  // namespace ptrain::optim
