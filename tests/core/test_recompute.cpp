// tests/core/test_recompute.cpp — recompute regions as saved-tensor hooks (core/recompute.h):
// gradients bit-identical to no recompute for none / selective / full (one tape, split weight
// gradients, bf16), what each mode keeps after forward (full < selective < none), how many
// regions rerun, that recomputed tensors die with their last handle, and that a region whose
// rerun saves differently is refused.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/recompute.h"
#include "tests/core/gradcheck.h"

namespace ptrain {
namespace {

using testing::random_vector;

/// L pre-norm blocks (attention with GQA, a GELU MLP) and a head; B x T tokens of width C.
struct Stack {
  int64_t B = 2, T = 16, C = 32, H = 4, Hkv = 2, F = 64, V = 50, L = 3;
  int64_t D() const { return C / H; }
  int64_t N() const { return B * T; }
  DType dt = DType::f32;
  std::vector<Tensor> p;  ///< per block: g1, wq, wk, wv, wo, g2, w1, w2; then the head's g, wout
  Tensor x, targets;

  explicit Stack(DType dtype = DType::f32, uint64_t seed = 7) : dt(dtype) {
    auto leaf = [&](Shape s, double scale, double offset, uint64_t k) {
      auto v = random_vector(static_cast<size_t>(shape_numel(s)), seed * 1000 + k, scale);
      std::vector<float> f(v.begin(), v.end());
      for (float& e : f) e += static_cast<float>(offset);
      Tensor t = Tensor::from_vector(f, s, dt);
      t.set_requires_grad(true);
      return t;
    };
    uint64_t k = 0;
    for (int64_t l = 0; l < L; ++l) {
      p.push_back(leaf({C}, 0.2, 1.0, k++));
      p.push_back(leaf({H * D(), C}, 0.3, 0, k++));
      p.push_back(leaf({Hkv * D(), C}, 0.3, 0, k++));
      p.push_back(leaf({Hkv * D(), C}, 0.3, 0, k++));
      p.push_back(leaf({C, H * D()}, 0.3, 0, k++));
      p.push_back(leaf({C}, 0.2, 1.0, k++));
      p.push_back(leaf({F, C}, 0.3, 0, k++));
      p.push_back(leaf({C, F}, 0.3, 0, k++));
    }
    p.push_back(leaf({C}, 0.2, 1.0, k++));
    p.push_back(leaf({V, C}, 0.3, 0, k++));
    auto xv = random_vector(static_cast<size_t>(N() * C), seed * 1000 + 999, 1.0);
    x = Tensor::from_vector(std::vector<float>(xv.begin(), xv.end()), {N(), C}, dt);
    std::vector<int32_t> tg;
    for (int64_t i = 0; i < N(); ++i) tg.push_back(static_cast<int32_t>((i * 7 + 3) % V));
    targets = Tensor::from_vector_i32(tg, {N()});
  }

  Tensor block(int64_t l, const Tensor& h) const {
    const Tensor* w = &p[static_cast<size_t>(l * 8)];
    Tensor n = ops::rms_norm(h, w[0], 1e-5);
    Tensor q = ops::view(ops::linear(n, w[1]), {B, T, H, D()});
    Tensor k = ops::view(ops::linear(n, w[2]), {B, T, Hkv, D()});
    Tensor v = ops::view(ops::linear(n, w[3]), {B, T, Hkv, D()});
    Tensor h2 = ops::add(h, ops::linear(ops::view(ops::attention(q, k, v), {N(), C}), w[4]));
    Tensor m = ops::linear(ops::gelu(ops::linear(ops::rms_norm(h2, w[5], 1e-5), w[6])), w[7]);
    return ops::add(h2, m);
  }

  /// The loss on `tape`'s thread (a TapeGuard must be active); x enters as a watched activation.
  Tensor loss(Tape& tape, Tensor& xin) const {
    xin = x.view(x.shape());
    tape.watch(xin);
    Tensor h = xin;
    for (int64_t l = 0; l < L; ++l)
      h = recompute_region(RegionKind::block, {h}, [this, l](const std::vector<Tensor>& in) { return block(l, in[0]); });
    const size_t e = p.size();
    Tensor logits = ops::linear(ops::rms_norm(h, p[e - 2], 1e-5), p[e - 1]);
    return ops::cross_entropy(logits, targets, V, 1.0 / static_cast<double>(N()));
  }
};

struct Result {
  std::vector<std::vector<float>> grads;  ///< parameters', then the input's
  int64_t live_after_forward = 0;         ///< CPU bytes allocated after forward, before backward
  RecomputeHooks::Stats stats;
};

Result run(const Stack& s, RecomputeMode mode, bool split = false) {
  for (const Tensor& t : s.p) t.clear_grad();
  Result r;
  RecomputeHooks hooks(mode);
  {
    Tape tape;
    if (mode != RecomputeMode::none) tape.set_hooks(&hooks);
    Tensor xin, loss;
    const int64_t before = cpu_memory_stats().allocated;
    {
      TapeGuard g(&tape);
      loss = s.loss(tape, xin);
    }
    r.live_after_forward = cpu_memory_stats().allocated - before;
    tape.backward(loss, Tensor(), split);
    if (split) tape.backward_weights();
    for (const Tensor& t : s.p) r.grads.push_back(t.grad().to_float_vector());
    r.grads.push_back(tape.grad_of(xin).to_float_vector());
  }
  r.stats = hooks.stats();
  return r;
}

void expect_same_bits(const Result& a, const Result& b, const char* what) {
  ASSERT_EQ(a.grads.size(), b.grads.size());
  for (size_t i = 0; i < a.grads.size(); ++i) {
    ASSERT_EQ(a.grads[i].size(), b.grads[i].size());
    EXPECT_EQ(std::memcmp(a.grads[i].data(), b.grads[i].data(), a.grads[i].size() * sizeof(float)), 0)
        << what << ": gradient " << i << " differs";
  }
}

TEST(Recompute, GradientsBitIdenticalInEveryMode) {
  for (DType dt : {DType::f32, DType::bf16}) {
    Stack s(dt);
    const Result none = run(s, RecomputeMode::none);
    const Result sel = run(s, RecomputeMode::selective);
    const Result full = run(s, RecomputeMode::full);
    expect_same_bits(none, sel, "selective");
    expect_same_bits(none, full, "full");
    // the gradients are real (a planted zero would pass the comparison above)
    double norm = 0;
    for (float g : none.grads[1]) norm += static_cast<double>(g) * g;
    EXPECT_GT(norm, 0);
  }
}

TEST(Recompute, SplitWeightGradientsBitIdentical) {
  Stack s;
  const Result none = run(s, RecomputeMode::none);
  expect_same_bits(none, run(s, RecomputeMode::full, true), "full, split weight gradients");
  expect_same_bits(none, run(s, RecomputeMode::selective, true), "selective, split weight gradients");
}

TEST(Recompute, RegionsDroppedAndRerunOnce) {
  Stack s;
  const Result none = run(s, RecomputeMode::none);
  EXPECT_EQ(none.stats.regions, 0);
  const Result full = run(s, RecomputeMode::full);
  EXPECT_EQ(full.stats.regions, s.L);     // one region per block (attention and gelu nested inside run plainly)
  EXPECT_EQ(full.stats.recomputed, s.L);  // each block reruns once, however many of its saves are read
  EXPECT_GT(full.stats.dropped, 0);
  const Result sel = run(s, RecomputeMode::selective);
  EXPECT_EQ(sel.stats.regions, 2 * s.L);     // the attention core and the GELU of each block
  EXPECT_EQ(sel.stats.recomputed, 2 * s.L);
  EXPECT_EQ(sel.stats.dropped, 2 * s.L);     // the probabilities and the GELU output
}

TEST(Recompute, KeepsLessAfterForward) {
  Stack m;  // B 2, T 16, C 32, H 4, F 64, L 3
  const Result none = run(m, RecomputeMode::none);
  const Result sel = run(m, RecomputeMode::selective);
  const Result full = run(m, RecomputeMode::full);
  // selective drops, per block, the attention probabilities [B,H,T,T] and the GELU output
  // [N, F] (the second MLP linear's input); full keeps only each block's input [N, C].
  const int64_t f = sizeof(float);
  const int64_t probs = m.B * m.H * m.T * m.T * f, gelu_out = m.N() * m.F * f, block_in = m.N() * m.C * f;
  EXPECT_EQ(none.live_after_forward - sel.live_after_forward, m.L * (probs + gelu_out));
  EXPECT_LT(full.live_after_forward, sel.live_after_forward);
  // full: the blocks' inputs and outputs plus the head's own saves (its rstd, logits, lse, the loss)
  EXPECT_LE(full.live_after_forward, (m.L + 1) * block_in + m.N() * m.V * f + 4096);
  EXPECT_GT(none.live_after_forward, 3 * full.live_after_forward);
}

TEST(Recompute, ANonDeterministicRegionIsRefused) {
  Stack s;
  RecomputeHooks hooks(RecomputeMode::full);
  Tape tape;
  tape.set_hooks(&hooks);
  Tensor xin = s.x.view(s.x.shape()), loss;
  int calls = 0;
  {
    TapeGuard g(&tape);
    tape.watch(xin);
    // gelu's input is dropped (it is saved inside the region); the rerun saves one tensor more
    Tensor h = recompute_region(RegionKind::block, {xin}, [&](const std::vector<Tensor>& in) {
      Tensor y = ops::gelu(ops::linear(in[0], s.p[6]));  // [N, F]
      if (++calls > 1) y = ops::gelu(y);
      return y;
    });
    Tensor logits = ops::linear(ops::linear(h, s.p[7]), s.p.back());  // [N, C] -> [N, V]
    loss = ops::cross_entropy(logits, s.targets, s.V, 1.0);
  }
  try {
    tape.backward(loss);
    FAIL() << "a region whose rerun saves a different number of tensors must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("deterministic"), std::string::npos) << e.what();
  }
  EXPECT_EQ(calls, 2);
}

TEST(Recompute, NoTapeNoRegion) {
  // Outside a tape (evaluation) and under a tape without the policy, a region is a plain call.
  Stack s;
  RecomputeHooks hooks(RecomputeMode::full);
  NoGradGuard ng;
  Tensor out = recompute_region(RegionKind::block, {s.x}, [&](const std::vector<Tensor>& in) { return s.block(0, in[0]); });
  EXPECT_EQ(out.shape(), s.x.shape());
  EXPECT_EQ(hooks.stats().regions, 0);
}

}  // namespace
}  // namespace ptrain
