// tests/core/test_autograd.cpp — the tape (core/autograd.h): accumulation, no-grad mode,
// saved-tensor hooks, split weight gradients, watched inputs and multi-root backward.
//
// Most tests run a small f64 network that uses every op (Net below: embedding, view, add,
// rms_norm, rope, GQA attention, linear with/without bias, layer_norm, split, swiglu, silu,
// gelu, mul, scale, cross_entropy) plus a non-leaf input `x_in` standing for an activation
// received from a previous pipeline stage. f64 makes comparisons exact where the order of
// floating-point operations is the same (split vs unsplit backward, hooks vs no hooks: bit for
// bit) and tight (1e-13 relative) where only the summation order differs.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/cpu/kernels.h"
#include "core/ops.h"
#include "tests/core/gradcheck.h"

namespace ptrain {
namespace {

using testing::dot;
using testing::expect_gradients_match;
using testing::random_vector;

Tensor f64(const std::vector<double>& v, Shape s) { return Tensor::from_vector_f64(v, std::move(s)); }
Tensor leaf(const std::vector<double>& v, Shape s) {
  Tensor t = f64(v, std::move(s));
  t.set_requires_grad(true);
  return t;
}

/// Bit-for-bit equality of two f64 tensors' contents.
bool same_bits(const Tensor& a, const Tensor& b) {
  if (!a.defined() || !b.defined() || a.numel() != b.numel() || a.dtype() != b.dtype()) return false;
  return std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

/// max |a - b| / max(1, max |b|)
double rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0, m = 1;
  for (size_t i = 0; i < a.size(); ++i) {
    d = std::max(d, std::fabs(a[i] - b[i]));
    m = std::max(m, std::fabs(b[i]));
  }
  return d / m;
}

bool all_zero_or_undefined(const Tensor& g) {
  if (!g.defined()) return true;
  for (double v : g.to_double_vector())
    if (v != 0.0) return false;
  return true;
}

// ------------------------------------------------------------------ a network over every op

/// B=2, T=3, C=4, 2 query heads and 1 kv head of D=2, F=6, vocabulary 7 padded to 8.
struct Net {
  static constexpr int64_t B = 2, T = 3, C = 4, H = 2, Hkv = 1, D = 2, F = 6, V = 7, Vp = 8, N = B * T;
  std::vector<Shape> shapes = {{Vp, C}, {C}, {H * D, C}, {Hkv * D, C}, {Hkv * D, C}, {C, H * D},
                               {C},     {C}, {2 * F, C}, {C, F},       {C},          {Vp, C}};
  std::vector<std::vector<double>> vals;  ///< parameter values
  std::vector<double> xin;                ///< the non-leaf input [N, C]
  Tensor ids, targets, cos, sin;

  explicit Net(uint64_t seed) {
    for (size_t i = 0; i < shapes.size(); ++i) {
      auto v = random_vector(static_cast<size_t>(shape_numel(shapes[i])), seed * 100 + i, 0.7);
      if (i == 1 || i == 6)
        for (double& x : v) x = 1.0 + 0.3 * x;  // norm weights around 1
      vals.push_back(std::move(v));
    }
    xin = random_vector(static_cast<size_t>(N * C), seed * 100 + 99, 0.5);
    auto r = random_vector(2 * static_cast<size_t>(N), seed * 100 + 98);
    std::vector<int32_t> id, tg;
    for (int64_t i = 0; i < N; ++i) {
      id.push_back(static_cast<int32_t>((r[static_cast<size_t>(i)] + 1) * 0.5 * V) % V);
      tg.push_back(static_cast<int32_t>((r[static_cast<size_t>(N + i)] + 1) * 0.5 * V) % V);
    }
    tg[2] = -1;  // one ignored target
    ids = Tensor::from_vector_i32(id, {B, T});
    targets = Tensor::from_vector_i32(tg, {N});
    std::vector<double> c(static_cast<size_t>(T * D / 2)), s(c.size());
    cpu::rope_tables<double>(c.data(), s.data(), T, D, 10.0);
    cos = f64(c, {T, D / 2});
    sin = f64(s, {T, D / 2});
  }

  /// Fresh leaves (requires_grad) holding the current parameter values.
  std::vector<Tensor> params() const {
    std::vector<Tensor> p;
    for (size_t i = 0; i < vals.size(); ++i) p.push_back(leaf(vals[i], shapes[i]));
    return p;
  }
  Tensor x_in() const { return f64(xin, {N, C}); }

  /// The loss: one scalar [1].
  Tensor loss(const std::vector<Tensor>& p, const Tensor& x) const {
    Tensor h = ops::add(ops::view(ops::embedding(ids, p[0]), {N, C}), x);                 // [N, C]
    Tensor n = ops::rms_norm(h, p[1], 1e-5);                                              // [N, C]
    Tensor q = ops::rope(ops::view(ops::linear(n, p[2]), {B, T, H, D}), cos, sin);       // [B, T, H, D]
    Tensor k = ops::rope(ops::view(ops::linear(n, p[3]), {B, T, Hkv, D}), cos, sin);     // [B, T, Hkv, D]
    Tensor v = ops::view(ops::linear(n, p[4]), {B, T, Hkv, D});                          // [B, T, Hkv, D]
    Tensor h2 = ops::add(h, ops::linear(ops::view(ops::attention(q, k, v), {N, H * D}), p[5]));
    Tensor l = ops::layer_norm(h2, p[6], p[7], 1e-5);
    auto gu = ops::split(ops::linear(l, p[8]), {F, F});                                   // 2 × [N, F]
    Tensor m = ops::swiglu(gu[0], gu[1]);
    Tensor m2 = ops::mul(ops::silu(m), ops::gelu(m));
    Tensor h3 = ops::add(h2, ops::scale(ops::linear(m2, p[9], p[10]), 0.5));
    return ops::cross_entropy(ops::linear(h3, p[11]), targets, V, 1.0 / N);               // [1]
  }

  /// Loss value in no-grad mode from vals / xin.
  double loss_value() const {
    NoGradGuard ng;
    std::vector<Tensor> p;
    for (size_t i = 0; i < vals.size(); ++i) p.push_back(f64(vals[i], shapes[i]));
    return loss(p, x_in()).to_double_vector()[0];
  }
};

/// Gradients of one run of the net: the parameters' and the watched input's.
struct Grads {
  std::vector<Tensor> params;
  Tensor x_in;
};

Grads run_net(const Net& net, SavedTensorHooks* hooks = nullptr) {
  auto p = net.params();
  Tensor x = net.x_in();
  Tape tape;
  tape.set_hooks(hooks);
  tape.watch(x);
  Tensor loss;
  {
    TapeGuard guard(&tape);
    loss = net.loss(p, x);
  }
  tape.backward(loss);
  Grads g{{}, tape.grad_of(x)};
  for (auto& t : p) g.params.push_back(t.grad());
  return g;
}

TEST(Autograd, NetOverEveryOpMatchesFiniteDifferences) {
  Net net(1);
  const Grads g = run_net(net);
  for (size_t i = 0; i < net.vals.size(); ++i) {
    ASSERT_TRUE(g.params[i].defined()) << "parameter " << i;
    expect_gradients_match([&] { return net.loss_value(); }, net.vals[i], g.params[i].to_double_vector(),
                           "net parameter " + std::to_string(i));
  }
  ASSERT_TRUE(g.x_in.defined());
  expect_gradients_match([&] { return net.loss_value(); }, net.xin, g.x_in.to_double_vector(), "net x_in");
}

// ------------------------------------------------------------------ accumulation

// y = x*x + x: x reaches the loss through three paths; dL/dx = r ⊙ (2x + 1).
TEST(Autograd, LeafUsedTwiceAccumulatesBothGradients) {
  const auto xv = random_vector(6, 1), r = random_vector(6, 2);
  Tensor x = leaf(xv, {6});
  Tape tape;
  Tensor y;
  {
    TapeGuard guard(&tape);
    y = ops::add(ops::mul(x, x), x);
  }
  tape.backward(y, f64(r, {6}));
  const auto g = x.grad().to_double_vector();
  for (size_t i = 0; i < 6; ++i) EXPECT_NEAR(g[i], r[i] * (2 * xv[i] + 1), 1e-15) << i;
}

// The same through activations (tape slots): h = 3x; y = h*h + h + (h + h) ; dL/dx = 3 r ⊙ (2h + 3).
// Covers a slot's gradient first handed over by accumulate() (aliased) and then added to.
TEST(Autograd, ActivationUsedTwiceAccumulatesBothGradients) {
  const auto xv = random_vector(6, 3), r = random_vector(6, 4);
  Tensor x = leaf(xv, {2, 3});
  Tape tape;
  Tensor y;
  {
    TapeGuard guard(&tape);
    Tensor h = ops::scale(x, 3.0);
    y = ops::add(ops::add(ops::mul(h, h), h), ops::add(h, h));
  }
  tape.backward(y, f64(r, {2, 3}));
  const auto g = x.grad().to_double_vector();
  for (size_t i = 0; i < 6; ++i) EXPECT_NEAR(g[i], 3 * r[i] * (6 * xv[i] + 3), 1e-13) << i;
}

// Two tapes (two micro-batches) accumulate into the same parameter gradients: the result is
// the gradient of the summed loss (linear by hand, and the full net against one tape for both).
TEST(Autograd, ParameterGradientsAccumulateAcrossTapes) {
  {
    const auto wv = random_vector(12, 5), x1 = random_vector(8, 6), x2 = random_vector(20, 7);
    const auto r1 = random_vector(6, 8), r2 = random_vector(15, 9);
    Tensor w = leaf(wv, {3, 4});
    for (int mb = 0; mb < 2; ++mb) {
      Tape tape;
      Tensor y;
      {
        TapeGuard guard(&tape);
        y = mb == 0 ? ops::linear(f64(x1, {2, 4}), w) : ops::linear(f64(x2, {5, 4}), w);
      }
      tape.backward(y, mb == 0 ? f64(r1, {2, 3}) : f64(r2, {5, 3}));
    }
    std::vector<double> want(12, 0.0);  // dW = r1^T x1 + r2^T x2
    for (int n = 0; n < 3; ++n)
      for (int k = 0; k < 4; ++k) {
        for (int m = 0; m < 2; ++m) want[n * 4 + k] += r1[m * 3 + n] * x1[m * 4 + k];
        for (int m = 0; m < 5; ++m) want[n * 4 + k] += r2[m * 3 + n] * x2[m * 4 + k];
      }
    EXPECT_LT(rel_diff(w.grad().to_double_vector(), want), 1e-14);
  }
  {
    Net a(2), b(3);
    b.vals = a.vals;  // same parameters, other data
    // Accumulated over two tapes.
    auto p = a.params();
    for (const Net* net : {&a, &b}) {
      Tape tape;
      Tensor loss;
      {
        TapeGuard guard(&tape);
        loss = net->loss(p, net->x_in());
      }
      tape.backward(loss);
    }
    // One tape, loss = loss_a + loss_b.
    auto q = a.params();
    Tape tape;
    Tensor loss;
    {
      TapeGuard guard(&tape);
      loss = ops::add(a.loss(q, a.x_in()), b.loss(q, b.x_in()));
    }
    tape.backward(loss);
    for (size_t i = 0; i < p.size(); ++i)
      EXPECT_LT(rel_diff(p[i].grad().to_double_vector(), q[i].grad().to_double_vector()), 1e-13) << "parameter " << i;
  }
}

// ------------------------------------------------------------------ no-grad mode

TEST(Autograd, NoGradGuardRecordsNothing) {
  Net net(4);
  auto p = net.params();
  Tape tape;
  TapeGuard guard(&tape);
  EXPECT_EQ(Tape::current(), &tape);
  Tensor loss;
  {
    NoGradGuard ng;
    EXPECT_EQ(Tape::current(), nullptr);
    loss = net.loss(p, net.x_in());
  }
  EXPECT_EQ(Tape::current(), &tape);
  EXPECT_EQ(tape.size(), 0u);
  EXPECT_EQ(loss.id()->tape_id, 0u);
  EXPECT_EQ(loss.id()->slot, -1);
  EXPECT_THROW(tape.backward(loss), Error);  // not produced on this tape
  EXPECT_NEAR(loss.to_double_vector()[0], net.loss_value(), 0.0);

  // Recording resumes after the guard; inputs that need no gradient are not recorded.
  Tensor a = f64({1, 2}, {2}), b = f64({3, 4}, {2});
  Tensor c = ops::add(a, b);
  EXPECT_EQ(tape.size(), 0u);
  EXPECT_EQ(c.id()->slot, -1);
  Tensor d = ops::add(a, p[1].rows(0, 2));  // rows() is a plain view: not a leaf
  EXPECT_EQ(tape.size(), 0u);
  Tensor e = ops::mul(a, p[1].view({4}).rows(0, 2));
  EXPECT_EQ(tape.size(), 0u);
  Tensor w = leaf({1, 2}, {2});
  Tensor f = ops::mul(a, w);
  EXPECT_EQ(tape.size(), 1u);
  EXPECT_GE(f.id()->slot, 0);
}

// ------------------------------------------------------------------ saved-tensor hooks

/// pack() clones into a shared_ptr<Tensor>; unpack() returns it (optionally scaled: "poison").
struct CloneHooks : SavedTensorHooks {
  int packs = 0;
  std::map<const void*, int> unpacks;  ///< per handle
  double poison = 1.0;
  std::shared_ptr<void> pack(const Tensor& t) override {
    ++packs;
    return std::make_shared<Tensor>(t.clone());
  }
  Tensor unpack(const std::shared_ptr<void>& h) override {
    ++unpacks[h.get()];
    const Tensor& t = *static_cast<const Tensor*>(h.get());
    if (poison == 1.0 || t.dtype() != DType::f64) return t;
    return ops::scale(t, poison);
  }
};

TEST(Autograd, SavedTensorHooksRoundTripLeavesGradientsUnchanged) {
  Net net(5);
  const Grads ref = run_net(net);
  CloneHooks hooks;
  const Grads got = run_net(net, &hooks);
  EXPECT_GT(hooks.packs, 10);
  EXPECT_EQ(static_cast<int>(hooks.unpacks.size()), hooks.packs) << "every packed tensor is unpacked";
  for (const auto& [h, n] : hooks.unpacks) EXPECT_EQ(n, 1) << "a saved tensor was unpacked " << n << " times";
  for (size_t i = 0; i < ref.params.size(); ++i)
    EXPECT_TRUE(same_bits(got.params[i], ref.params[i])) << "parameter " << i;
  EXPECT_TRUE(same_bits(got.x_in, ref.x_in));

  // No-grad forwards save nothing.
  const int before = hooks.packs;
  {
    Tape tape;
    tape.set_hooks(&hooks);
    TapeGuard guard(&tape);
    NoGradGuard ng;
    auto p = net.params();
    net.loss(p, net.x_in());
  }
  EXPECT_EQ(hooks.packs, before);

  // Backward really reads what unpack() returns: a tampered unpack changes the gradients.
  CloneHooks poisoned;
  poisoned.poison = 1.5;
  const Grads bad = run_net(net, &poisoned);
  int changed = 0;
  for (size_t i = 0; i < ref.params.size(); ++i) changed += !same_bits(bad.params[i], ref.params[i]);
  EXPECT_GT(changed, 0);
}

// ------------------------------------------------------------------ split weight gradients

TEST(Autograd, SplitWeightGradientsMatchUnsplitBitForBit) {
  Net net(6);
  const Grads ref = run_net(net);

  auto p = net.params();
  Tensor x = net.x_in();
  Tape tape;
  tape.watch(x);
  Tensor loss;
  {
    TapeGuard guard(&tape);
    loss = net.loss(p, x);
  }
  tape.backward(loss, Tensor(), /*split_weight_grads=*/true);
  EXPECT_TRUE(tape.has_pending_weight_grads());
  // Input gradients are complete; weight gradients have not been computed.
  EXPECT_TRUE(same_bits(tape.grad_of(x), ref.x_in));
  for (size_t i = 0; i < p.size(); ++i)
    EXPECT_TRUE(all_zero_or_undefined(p[i].grad())) << "parameter " << i << " got its gradient before backward_weights()";
  tape.backward_weights();
  EXPECT_FALSE(tape.has_pending_weight_grads());
  for (size_t i = 0; i < p.size(); ++i) EXPECT_TRUE(same_bits(p[i].grad(), ref.params[i])) << "parameter " << i;
  EXPECT_TRUE(same_bits(tape.grad_of(x), ref.x_in));
}

// ------------------------------------------------------------------ watch / grad_of

TEST(Autograd, WatchedInputGetsItsGradient) {
  auto xv = random_vector(12, 10);
  const auto wv = random_vector(20, 11), r = random_vector(15, 12);
  Tensor w = leaf(wv, {5, 4});
  auto run = [&](bool watch) {
    Tensor x = f64(xv, {3, 4});  // a received activation: not a leaf
    Tape tape;
    if (watch) tape.watch(x);
    Tensor y;
    {
      TapeGuard guard(&tape);
      y = ops::silu(ops::linear(x, w));
    }
    tape.backward(y, f64(r, {3, 5}));
    return tape.grad_of(x);
  };
  EXPECT_FALSE(run(false).defined()) << "an unwatched non-leaf has no gradient";
  const Tensor g = run(true);
  ASSERT_TRUE(g.defined());
  EXPECT_EQ(g.shape(), (Shape{3, 4}));
  auto loss = [&] {
    NoGradGuard ng;
    return dot(r, ops::silu(ops::linear(f64(xv, {3, 4}), w)).to_double_vector());
  };
  expect_gradients_match(loss, xv, g.to_double_vector(), "watched x");
}

// Activation gradients are freed once their producer ran backward, unless the activation is
// watched; a watched activation's gradient is not changed by later accumulation into the
// buffer it was handed to (BackwardCtx::take_grad_out copies for watched slots).
TEST(Autograd, WatchedActivationKeepsAnUnaliasedGradient) {
  const auto xv = random_vector(6, 13), bv = random_vector(6, 14), r = random_vector(6, 15);
  for (bool watch : {false, true}) {
    Tensor x = leaf(xv, {6}), b = leaf(bv, {6});
    Tape tape;
    Tensor a, s, y;
    {
      TapeGuard guard(&tape);
      a = ops::scale(x, 2.0);   // a = 2x
      Tensor t = ops::silu(a);  // a's second consumer, recorded before s
      s = ops::add(a, b);       // s hands its gradient over to a
      if (watch) tape.watch(s);
      y = ops::add(ops::mul(s, s), t);
    }
    tape.backward(y, f64(r, {6}));
    const Tensor gs = tape.grad_of(s);
    if (!watch) {
      EXPECT_FALSE(gs.defined()) << "an unwatched activation's gradient must be freed after backward";
      continue;
    }
    ASSERT_TRUE(gs.defined());
    const auto g = gs.to_double_vector();
    for (size_t i = 0; i < 6; ++i) {
      const double sv = 2 * xv[i] + bv[i];
      EXPECT_NEAR(g[i], 2 * sv * r[i], 1e-15) << "dL/ds[" << i << "] (changed by accumulation into dL/da?)";
    }
    // and the leaves are right: dL/dx = 2 (dL/ds + r silu'(a)), dL/db = dL/ds
    const auto gx = x.grad().to_double_vector(), gb = b.grad().to_double_vector();
    for (size_t i = 0; i < 6; ++i) {
      const double av = 2 * xv[i], sv = av + bv[i], sig = 1 / (1 + std::exp(-av));
      EXPECT_NEAR(gb[i], 2 * sv * r[i], 1e-14);
      EXPECT_NEAR(gx[i], 2 * (2 * sv * r[i] + r[i] * sig * (1 + av * (1 - sig))), 1e-13);
    }
  }
}

// ------------------------------------------------------------------ multi-root backward

// roots {h, y1, y2} with seeds {rh, r1, r2}, y1 and y2 both depend on h: equals the sum of
// the three single-root backward passes; a root given twice sums its seeds.
TEST(Autograd, MultiRootBackwardSumsTheRoots) {
  const auto xv = random_vector(12, 16), w0 = random_vector(16, 17), w1 = random_vector(12, 18),
             g = random_vector(4, 19);
  const auto rh = random_vector(12, 20), r1 = random_vector(9, 21), r2 = random_vector(12, 22);
  struct Out {
    Tensor h, y1, y2;
  };
  auto forward = [&](const std::vector<Tensor>& p, const Tensor& x) {
    Out o;
    o.h = ops::linear(x, p[0]);                // [3, 4]
    o.y1 = ops::linear(ops::gelu(o.h), p[1]);  // [3, 3]
    o.y2 = ops::rms_norm(o.h, p[2], 1e-5);     // [3, 4]
    return o;
  };
  auto params = [&] { return std::vector<Tensor>{leaf(w0, {4, 4}), leaf(w1, {3, 4}), leaf(g, {4})}; };

  // multi-root
  auto p = params();
  Tensor x = f64(xv, {3, 4});
  Tape tape;
  tape.watch(x);
  Out o;
  {
    TapeGuard guard(&tape);
    o = forward(p, x);
  }
  tape.backward({o.h, o.y1, o.y2}, {f64(rh, {3, 4}), f64(r1, {3, 3}), f64(r2, {3, 4})});
  const Tensor gx = tape.grad_of(x);
  ASSERT_TRUE(gx.defined());

  // sum of single-root passes
  auto q = params();
  std::vector<double> gx_sum(12, 0.0);
  for (int root = 0; root < 3; ++root) {
    Tensor xs = f64(xv, {3, 4});
    Tape t;
    t.watch(xs);
    Out os;
    {
      TapeGuard guard(&t);
      os = forward(q, xs);
    }
    if (root == 0) t.backward(os.h, f64(rh, {3, 4}));
    if (root == 1) t.backward(os.y1, f64(r1, {3, 3}));
    if (root == 2) t.backward(os.y2, f64(r2, {3, 4}));
    const auto gi = t.grad_of(xs).to_double_vector();
    for (size_t i = 0; i < 12; ++i) gx_sum[i] += gi[i];
  }
  EXPECT_LT(rel_diff(gx.to_double_vector(), gx_sum), 1e-13);
  for (size_t i = 0; i < p.size(); ++i)
    EXPECT_LT(rel_diff(p[i].grad().to_double_vector(), q[i].grad().to_double_vector()), 1e-13) << "parameter " << i;

  // a root listed twice: its seeds add up
  const auto r1b = random_vector(9, 23);
  auto a = params(), b = params();
  for (int variant = 0; variant < 2; ++variant) {
    auto& pp = variant == 0 ? a : b;
    Tape t;
    Out os;
    {
      TapeGuard guard(&t);
      os = forward(pp, f64(xv, {3, 4}));
    }
    if (variant == 0) {
      t.backward({os.y1, os.y1}, {f64(r1, {3, 3}), f64(r1b, {3, 3})});
    } else {
      std::vector<double> s(9);
      for (size_t i = 0; i < 9; ++i) s[i] = r1[i] + r1b[i];
      t.backward(os.y1, f64(s, {3, 3}));
    }
  }
  for (size_t i = 0; i < 2; ++i)
    EXPECT_LT(rel_diff(a[i].grad().to_double_vector(), b[i].grad().to_double_vector()), 1e-14) << "parameter " << i;
}

TEST(Autograd, BackwardRejectsBadRootsAndSeeds) {
  Tensor w = leaf({1, 2, 3, 4}, {2, 2});
  Tape tape, other;
  Tensor y;
  {
    TapeGuard guard(&other);
    y = ops::linear(f64({1, 1}, {1, 2}), w);
  }
  EXPECT_THROW(tape.backward(y), Error) << "root recorded on another tape";
  EXPECT_THROW(other.backward(std::vector<Tensor>{y}, std::vector<Tensor>{}), Error)
      << "roots and seeds of different counts";
  try {
    other.backward(y, f64({1, 2, 3}, {3}));
    ADD_FAILURE() << "seed of the wrong shape accepted";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("[1, 2]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[3]"), std::string::npos) << msg;
  }
}


// ------------------------------------------------------------------ leaf hook

namespace leafhook {

/// What the leaf hook saw: the order of parameters (indices into `p`), a copy of each
/// gradient at hook time, and whether the embedding table had received a gradient then.
struct Seen {
  std::vector<size_t> order;
  std::map<size_t, Tensor> grad_at_hook;
  std::vector<bool> table_grad_nonzero;
};

/// Installs a hook on `tape` that records into `seen`; unknown leaves fail the test.
void record_hook(Tape& tape, const std::vector<Tensor>& p, Seen& seen) {
  tape.set_leaf_hook([&p, &seen](const Tensor& leaf) {
    size_t idx = p.size();
    for (size_t i = 0; i < p.size(); ++i)
      if (p[i].same(leaf)) {
        idx = i;
        break;  // tied parameters: the first index
      }
    ASSERT_LT(idx, p.size()) << "hook called with a tensor that is not a parameter";
    seen.order.push_back(idx);
    ASSERT_TRUE(leaf.grad().defined()) << "parameter " << idx << " fired without a gradient";
    seen.grad_at_hook[idx] = leaf.grad().clone();
    seen.table_grad_nonzero.push_back(!all_zero_or_undefined(p[0].grad()));
  });
}

}  // namespace leafhook

// Every parameter of the net fires exactly once, right after its last contribution in reverse
// order (so the LM head fires before the embedding backward has run), with its final gradient
// (bit for bit); the gradients equal a run without the hook. Split mode: nothing fires during
// the input-gradient pass (every parameter gradient of the net is deferred), then all fire in
// backward_weights() in the same order. A tied embedding (table used by embedding and head)
// fires once, after the embedding.
TEST(Autograd, LeafHookFiresOncePerParameterWithItsFinalGradient) {
  Net net(7);
  const Grads ref = run_net(net);
  const std::vector<size_t> want_order = {11, 9, 10, 8, 6, 7, 5, 4, 3, 2, 1, 0};
  for (bool split : {false, true}) {
    SCOPED_TRACE(split ? "split" : "unsplit");
    auto p = net.params();
    Tensor x = net.x_in();
    Tape tape;
    tape.watch(x);
    leafhook::Seen seen;
    leafhook::record_hook(tape, p, seen);
    Tensor loss;
    {
      TapeGuard guard(&tape);
      loss = net.loss(p, x);
    }
    tape.backward(loss, Tensor(), split);
    if (split) {
      EXPECT_TRUE(seen.order.empty()) << "a parameter fired before its deferred weight gradient ran";
      tape.backward_weights();
    }
    EXPECT_EQ(seen.order, want_order);
    ASSERT_FALSE(seen.table_grad_nonzero.empty());
    EXPECT_FALSE(seen.table_grad_nonzero.front()) << "the head fired only after the embedding ran backward";
    for (size_t i = 0; i < p.size(); ++i) {
      ASSERT_TRUE(seen.grad_at_hook.count(i)) << "parameter " << i << " never fired";
      EXPECT_TRUE(same_bits(seen.grad_at_hook[i], p[i].grad())) << "parameter " << i << " changed after its hook";
      EXPECT_TRUE(same_bits(p[i].grad(), ref.params[i])) << "parameter " << i;
    }
    EXPECT_TRUE(same_bits(tape.grad_of(x), ref.x_in));
  }

  // Tied embedding: p[11] is p[0]. Reference: the untied net with equal table and head values,
  // whose two gradients add up to the tied one.
  Net untied = net;
  untied.vals[11] = untied.vals[0];
  const Grads uref = run_net(untied);
  for (bool split : {false, true}) {
    SCOPED_TRACE(split ? "tied, split" : "tied, unsplit");
    auto p = net.params();
    p[11] = p[0];
    Tape tape;
    leafhook::Seen seen;
    leafhook::record_hook(tape, p, seen);
    Tensor loss;
    {
      TapeGuard guard(&tape);
      loss = net.loss(p, net.x_in());
    }
    tape.backward(loss, Tensor(), split);
    if (split) {
      EXPECT_TRUE(seen.order.empty());
      tape.backward_weights();
    }
    const std::vector<size_t> tied_order = {9, 10, 8, 6, 7, 5, 4, 3, 2, 1, 0};
    EXPECT_EQ(seen.order, tied_order) << "the tied table fires once, after the embedding";
    for (size_t i = 0; i < 11; ++i) {
      ASSERT_TRUE(seen.grad_at_hook.count(i)) << "parameter " << i << " never fired";
      EXPECT_TRUE(same_bits(seen.grad_at_hook[i], p[i].grad())) << "parameter " << i << " changed after its hook";
    }
    // The tied gradient is the sum of both uses (summed in another order: not bit for bit).
    std::vector<double> sum = uref.params[0].to_double_vector();
    const auto head = uref.params[11].to_double_vector();
    for (size_t j = 0; j < sum.size(); ++j) sum[j] += head[j];
    EXPECT_LT(rel_diff(p[0].grad().to_double_vector(), sum), 1e-14);
  }
}

// A leaf with contributions both in the input-gradient pass (a direct op) and in a deferred
// weight-gradient closure fires only after both, whichever is visited last; unsplit, it fires
// during backward. Leaves on a branch the roots do not reach never fire and get no gradient.
TEST(Autograd, LeafHookWaitsForDirectAndDeferredContributionsAndSkipsUnreachedLeaves) {
  const auto xv = random_vector(8, 30), wv = random_vector(12, 31), cv = random_vector(3, 32),
             uv = random_vector(12, 33), r1 = random_vector(6, 34), r2 = random_vector(3, 35);
  // Gradients by hand: y = x w^T + c, q = c ⊙ c; dW = r1^T x, dc = colsum(r1) + 2 c ⊙ r2.
  std::vector<double> want_w(12, 0.0), want_c(3, 0.0);
  for (int n = 0; n < 3; ++n) {
    for (int m = 0; m < 2; ++m) {
      for (int k = 0; k < 4; ++k) want_w[n * 4 + k] += r1[m * 3 + n] * xv[m * 4 + k];
      want_c[n] += r1[m * 3 + n];
    }
    want_c[n] += 2 * cv[n] * r2[n];
  }
  for (bool mul_first : {false, true})
    for (bool split : {false, true}) {
      SCOPED_TRACE(std::string(mul_first ? "mul recorded first" : "linear recorded first") +
                   (split ? ", split" : ", unsplit"));
      std::vector<Tensor> p = {leaf(wv, {3, 4}), leaf(cv, {3}), leaf(uv, {3, 4})};
      Tape tape;
      leafhook::Seen seen;
      leafhook::record_hook(tape, p, seen);
      Tensor y, q;
      {
        TapeGuard guard(&tape);
        const Tensor x = f64(xv, {2, 4});
        if (mul_first) q = ops::mul(p[1], p[1]);
        y = ops::linear(x, p[0], p[1]);       // [2, 3]
        if (!mul_first) q = ops::mul(p[1], p[1]);  // [3]
        Tensor dead = ops::silu(ops::linear(x, p[2]));  // not reached from the roots
        (void)dead;
      }
      tape.backward({y, q}, {f64(r1, {2, 3}), f64(r2, {3})}, split);
      if (split) {
        EXPECT_TRUE(seen.order.empty()) << "fired before the deferred weight gradient of linear";
        tape.backward_weights();
      }
      ASSERT_EQ(seen.order.size(), 2u);
      EXPECT_EQ(seen.order[0], 0u) << "linear lists w before c";
      EXPECT_EQ(seen.order[1], 1u);
      for (size_t i = 0; i < 2; ++i) {
        ASSERT_TRUE(seen.grad_at_hook.count(i));
        EXPECT_TRUE(same_bits(seen.grad_at_hook[i], p[i].grad())) << "parameter " << i << " changed after its hook";
      }
      EXPECT_LT(rel_diff(p[0].grad().to_double_vector(), want_w), 1e-14);
      EXPECT_LT(rel_diff(p[1].grad().to_double_vector(), want_c), 1e-14);
      EXPECT_FALSE(p[2].grad().defined()) << "an unreached leaf got a gradient";
      EXPECT_EQ(seen.grad_at_hook.count(2), 0u) << "an unreached leaf fired";
    }
}

// Without a hook nothing changes; removing it (empty function) stops the calls; a second
// tape accumulating into the same parameters shows the hook the accumulated (final) value.
TEST(Autograd, LeafHookSeesAccumulatedGradientOnTheLastMicroBatch) {
  Net a(8), b(9);
  b.vals = a.vals;
  auto p = a.params();
  int calls = 0;
  std::map<size_t, Tensor> at_hook;
  for (const Net* net : {&a, &b}) {
    Tape tape;
    if (net == &a) {
      tape.set_leaf_hook([&](const Tensor&) { ++calls; });
      tape.set_leaf_hook(nullptr);
    } else {
      tape.set_leaf_hook([&](const Tensor& leaf) {
        ++calls;
        for (size_t i = 0; i < p.size(); ++i)
          if (p[i].same(leaf)) at_hook[i] = leaf.grad().clone();
      });
    }
    Tensor loss;
    {
      TapeGuard guard(&tape);
      loss = net->loss(p, net->x_in());
    }
    tape.backward(loss);
  }
  EXPECT_EQ(calls, static_cast<int>(p.size())) << "only the second tape's hook fires, once per parameter";
  const Grads ga = run_net(a), gb = run_net(b);
  for (size_t i = 0; i < p.size(); ++i) {
    ASSERT_TRUE(at_hook.count(i)) << "parameter " << i;
    EXPECT_TRUE(same_bits(at_hook[i], p[i].grad())) << "parameter " << i;
    auto sum = ga.params[i].to_double_vector();
    const auto other = gb.params[i].to_double_vector();
    for (size_t j = 0; j < sum.size(); ++j) sum[j] += other[j];
    EXPECT_LT(rel_diff(p[i].grad().to_double_vector(), sum), 1e-13) << "parameter " << i;
  }
}

}  // namespace
}  // namespace ptrain
