// tests/core/test_ops.cpp — every op of core/ops.h through the tape, against finite differences.
//
// What is tested:
//  * One table (op_cases()) holds a case per op variant: linear with/without bias, add, mul,
//    scale, embedding, rms_norm, layer_norm, rope, attention with GQA ratios 1/2/4, silu,
//    gelu, swiglu, cross_entropy (padded vocabulary V < Vp and an ignored target), view,
//    split. Each case builds f64 leaves (requires_grad), runs the op under a Tape, seeds the
//    backward with a fixed random r (so loss = Σ r ⊙ y), and compares every leaf's .grad()
//    with central differences of the same forward run under NoGradGuard (gradcheck.h).
//  * OpsCoverage.EveryOpIdHasAGradientCase: runs every case's forward under a tape and requires
//    that each case records exactly its declared op and that the union covers every OpId, so
//    adding an op to OpId without a case here fails. The ops of op_lives_in_parallel() (they
//    live in parallel/tp_ops.h) are exempt here and covered by tests/parallel/test_tp_ops.cpp.
//  * bf16 inputs: outputs of linear, rms_norm, attention, swiglu, add are bf16 and exactly on
//    the bf16 grid, and within one bf16 rounding (2^-8 relative) of the f64 result.
//  * Shape errors throw ptrain::Error whose message names both shapes.
// Tolerances: f64 ops are smooth, h = 1e-6 gives |FD error| ~ 1e-10, so rtol 1e-6 / atol 1e-8.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <set>
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

/// One op variant: its differentiable f64 leaves and a forward over them.
struct OpCase {
  std::string name;
  OpId op;
  std::vector<Shape> leaves;  ///< differentiable inputs, filled with random values in [-scale, scale)
  double scale = 1.0;
  /// Builds the op's output(s) from the leaves (non-differentiable inputs are captured).
  std::function<std::vector<Tensor>(const std::vector<Tensor>&)> forward;
  /// Optional extra checks on the analytic gradients (e.g. exact zeros).
  std::function<void(const std::vector<Tensor>&)> check_grads;
};

Tensor rope_table(bool sine, int64_t Tn, int64_t D) {
  std::vector<double> c(static_cast<size_t>(Tn * D / 2)), s(c.size());
  cpu::rope_tables<double>(c.data(), s.data(), Tn, D, 10.0);  // small theta: large angles
  return Tensor::from_vector_f64(sine ? s : c, {Tn, D / 2});
}

OpCase attention_case(int64_t hkv) {
  const int64_t B = 2, T = 4, Hq = 4, D = 3;
  return {"attention_gqa" + std::to_string(Hq / hkv),
          OpId::attention,
          {{B, T, Hq, D}, {B, T, hkv, D}, {B, T, hkv, D}},
          1.0,
          [](const std::vector<Tensor>& l) { return std::vector<Tensor>{ops::attention(l[0], l[1], l[2])}; },
          nullptr};
}

const std::vector<OpCase>& op_cases() {
  static const std::vector<OpCase> cases = [] {
    std::vector<OpCase> c;
    c.push_back({"linear_bias", OpId::linear, {{2, 3, 4}, {5, 4}, {5}}, 1.0,
                 [](const std::vector<Tensor>& l) { return std::vector<Tensor>{ops::linear(l[0], l[1], l[2])}; },
                 nullptr});
    c.push_back({"linear_nobias", OpId::linear, {{3, 4}, {5, 4}}, 1.0,
                 [](const std::vector<Tensor>& l) { return std::vector<Tensor>{ops::linear(l[0], l[1])}; }, nullptr});
    c.push_back({"add", OpId::add, {{2, 3, 4}, {2, 3, 4}}, 1.0,
                 [](const std::vector<Tensor>& l) { return std::vector<Tensor>{ops::add(l[0], l[1])}; }, nullptr});
    c.push_back({"mul", OpId::mul, {{2, 3, 4}, {2, 3, 4}}, 1.0,
                 [](const std::vector<Tensor>& l) { return std::vector<Tensor>{ops::mul(l[0], l[1])}; }, nullptr});
    c.push_back({"scale", OpId::scale, {{3, 5}}, 1.0,
                 [](const std::vector<Tensor>& l) { return std::vector<Tensor>{ops::scale(l[0], -1.7)}; }, nullptr});
    // ids repeat row 1 three times (gradient rows accumulate); rows 2 and 3 are never looked up.
    c.push_back({"embedding", OpId::embedding, {{6, 4}}, 1.0,
                 [](const std::vector<Tensor>& l) {
                   const Tensor ids = Tensor::from_vector_i32({1, 4, 1, 0, 5, 1}, {2, 3});
                   return std::vector<Tensor>{ops::embedding(ids, l[0])};
                 },
                 [](const std::vector<Tensor>& l) {
                   const auto g = l[0].grad().to_double_vector();
                   for (int64_t r : {2, 3})
                     for (int64_t j = 0; j < 4; ++j) EXPECT_EQ(g[static_cast<size_t>(r * 4 + j)], 0.0) << "row " << r;
                 }});
    c.push_back({"rms_norm", OpId::rms_norm, {{3, 2, 5}, {5}}, 1.0,
                 [](const std::vector<Tensor>& l) { return std::vector<Tensor>{ops::rms_norm(l[0], l[1], 1e-5)}; },
                 nullptr});
    c.push_back({"layer_norm", OpId::layer_norm, {{3, 2, 5}, {5}, {5}}, 1.0,
                 [](const std::vector<Tensor>& l) {
                   return std::vector<Tensor>{ops::layer_norm(l[0], l[1], l[2], 1e-5)};
                 },
                 nullptr});
    // Tables longer than T (6 rows for T = 5) as in a model with max_seq_len > T.
    c.push_back({"rope", OpId::rope, {{2, 5, 3, 4}}, 1.0,
                 [](const std::vector<Tensor>& l) {
                   return std::vector<Tensor>{ops::rope(l[0], rope_table(false, 6, 4), rope_table(true, 6, 4))};
                 },
                 nullptr});
    c.push_back(attention_case(4));
    c.push_back(attention_case(2));
    c.push_back(attention_case(1));
    c.push_back({"silu", OpId::silu, {{4, 5}}, 3.0,
                 [](const std::vector<Tensor>& l) { return std::vector<Tensor>{ops::silu(l[0])}; }, nullptr});
    c.push_back({"gelu", OpId::gelu, {{4, 5}}, 3.0,
                 [](const std::vector<Tensor>& l) { return std::vector<Tensor>{ops::gelu(l[0])}; }, nullptr});
    c.push_back({"swiglu", OpId::swiglu, {{4, 5}, {4, 5}}, 3.0,
                 [](const std::vector<Tensor>& l) { return std::vector<Tensor>{ops::swiglu(l[0], l[1])}; }, nullptr});
    // logits [5, Vp = 8], real vocabulary V = 6, row 1 ignored (target -1), weight 0.3.
    c.push_back({"cross_entropy", OpId::cross_entropy, {{5, 8}}, 2.0,
                 [](const std::vector<Tensor>& l) {
                   const Tensor t = Tensor::from_vector_i32({2, -1, 5, 0, 3}, {5});
                   return std::vector<Tensor>{ops::cross_entropy(l[0], t, 6, 0.3)};
                 },
                 [](const std::vector<Tensor>& l) {
                   const auto g = l[0].grad().to_double_vector();
                   for (int64_t i = 0; i < 5; ++i)
                     for (int64_t j = 0; j < 8; ++j)
                       if (i == 1 || j >= 6) {
                         EXPECT_EQ(g[static_cast<size_t>(i * 8 + j)], 0.0) << "padded column / ignored row " << i << "," << j;
                       }
                 }});
    c.push_back({"view", OpId::view, {{2, 6}}, 1.0,
                 [](const std::vector<Tensor>& l) { return std::vector<Tensor>{ops::view(l[0], {3, -1})}; }, nullptr});
    c.push_back({"split", OpId::split, {{3, 7}}, 1.0,
                 [](const std::vector<Tensor>& l) { return ops::split(l[0], {2, 4, 1}); }, nullptr});
    // Only pieces 0 and 2 reach the loss: the middle piece's gradient never arrives (undefined).
    c.push_back({"split_unused_piece", OpId::split, {{3, 7}}, 1.0,
                 [](const std::vector<Tensor>& l) {
                   auto p = ops::split(l[0], {2, 4, 1});
                   return std::vector<Tensor>{p[0], p[2]};
                 },
                 [](const std::vector<Tensor>& l) {
                   const auto g = l[0].grad().to_double_vector();
                   for (int64_t r = 0; r < 3; ++r)
                     for (int64_t j = 2; j < 6; ++j) EXPECT_EQ(g[static_cast<size_t>(r * 7 + j)], 0.0);
                 }});
    return c;
  }();
  return cases;
}

/// gtest prints a failing case by its name.
void PrintTo(const OpCase& c, std::ostream* os) { *os << c.name; }

std::vector<std::vector<double>> leaf_values(const OpCase& c) {
  std::vector<std::vector<double>> v;
  for (size_t i = 0; i < c.leaves.size(); ++i)
    v.push_back(random_vector(static_cast<size_t>(shape_numel(c.leaves[i])), 100 + i, c.scale));
  return v;
}

class OpGradTest : public ::testing::TestWithParam<OpCase> {};

TEST_P(OpGradTest, MatchesFiniteDifferences) {
  const OpCase& c = GetParam();
  auto vals = leaf_values(c);
  std::vector<Tensor> leaves;
  for (size_t i = 0; i < vals.size(); ++i) {
    leaves.push_back(Tensor::from_vector_f64(vals[i], c.leaves[i]));
    leaves.back().set_requires_grad(true);
  }

  Tape tape;
  std::vector<Tensor> outs;
  {
    TapeGuard guard(&tape);
    outs = c.forward(leaves);
  }
  ASSERT_FALSE(outs.empty());
  EXPECT_GT(tape.op_counts()[static_cast<size_t>(c.op)], 0) << c.name << " did not record " << op_name(c.op);

  std::vector<std::vector<double>> r;
  std::vector<Tensor> seeds;
  for (size_t k = 0; k < outs.size(); ++k) {
    EXPECT_EQ(outs[k].dtype(), DType::f64);
    r.push_back(random_vector(static_cast<size_t>(outs[k].numel()), 900 + k));
    seeds.push_back(Tensor::from_vector_f64(r.back(), outs[k].shape()));
  }
  if (outs.size() == 1)
    tape.backward(outs[0], seeds[0]);
  else
    tape.backward(outs, seeds);
  EXPECT_EQ(tape.size(), 0u) << "backward must release the tape's entries";

  // loss(vals) = Σ_k r_k ⊙ y_k, forward in no-grad mode.
  auto loss = [&]() {
    NoGradGuard ng;
    std::vector<Tensor> in;
    for (size_t i = 0; i < vals.size(); ++i) in.push_back(Tensor::from_vector_f64(vals[i], c.leaves[i]));
    auto ys = c.forward(in);
    double s = 0;
    for (size_t k = 0; k < ys.size(); ++k) s += dot(r[k], ys[k].to_double_vector());
    return s;
  };
  for (size_t i = 0; i < leaves.size(); ++i) {
    const Tensor g = leaves[i].grad();
    ASSERT_TRUE(g.defined()) << c.name << ": no gradient reached input " << i;
    EXPECT_EQ(g.dtype(), DType::f64);
    EXPECT_EQ(g.shape(), c.leaves[i]);
    expect_gradients_match(loss, vals[i], g.to_double_vector(), c.name + " input " + std::to_string(i));
  }
  if (c.check_grads) c.check_grads(leaves);
}

INSTANTIATE_TEST_SUITE_P(AllOps, OpGradTest, ::testing::ValuesIn(op_cases()),
                         [](const ::testing::TestParamInfo<OpCase>& info) { return info.param.name; });

// Every OpId must be exercised by a gradient case above; each case records only its own op.
TEST(OpsCoverage, EveryOpIdHasAGradientCase) {
  std::array<int64_t, static_cast<size_t>(OpId::count)> covered{};
  for (const OpCase& c : op_cases()) {
    std::vector<Tensor> leaves;
    for (size_t i = 0; i < c.leaves.size(); ++i) {
      leaves.push_back(Tensor::from_vector_f64(random_vector(static_cast<size_t>(shape_numel(c.leaves[i])), i), c.leaves[i]));
      leaves.back().set_requires_grad(true);
    }
    Tape tape;
    TapeGuard guard(&tape);
    c.forward(leaves);
    const auto counts = tape.op_counts();
    for (size_t op = 0; op < counts.size(); ++op) {
      if (op == static_cast<size_t>(c.op)) {
        EXPECT_GT(counts[op], 0) << c.name << " does not record " << kOpNames[op];
      } else {
        EXPECT_EQ(counts[op], 0) << c.name << " also records " << kOpNames[op] << "; a case must isolate its op";
      }
      covered[op] += counts[op];
    }
  }
  for (size_t op = 0; op < covered.size(); ++op) {
    // Ops implemented in parallel/ (they need a Communicator) are covered, case by case, by
    // TpOpsCoverage.EveryParallelOpIdHasAGradientCase in tests/parallel/test_tp_ops.cpp.
    if (op_lives_in_parallel(static_cast<OpId>(op))) continue;
    EXPECT_GT(covered[op], 0) << "OpId::" << kOpNames[op]
                              << " has no finite-difference case in tests/core/test_ops.cpp (add one to op_cases())";
  }
}

// ------------------------------------------------------------------ bf16

/// Random bf16 tensor (values rounded to the grid by from_vector).
Tensor bf16_tensor(Shape s, uint64_t seed, double scale = 1.0) {
  const auto d = random_vector(static_cast<size_t>(shape_numel(s)), seed, scale);
  return Tensor::from_vector(std::vector<float>(d.begin(), d.end()), std::move(s), DType::bf16);
}

/// y is bf16, every value is on the bf16 grid, and y is within one bf16 rounding of the f64
/// reference (plus `atol`, for ops that round an intermediate too).
void expect_bf16_output(const Tensor& y, const Tensor& ref64, const char* what, double atol = 0) {
  ASSERT_EQ(y.dtype(), DType::bf16) << what;
  ASSERT_EQ(y.shape(), ref64.shape()) << what;
  const auto v = y.to_float_vector();
  const auto ref = ref64.to_double_vector();
  int off_grid = 0, far = 0, nonzero = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    if (round_bf16(v[i]) != v[i]) ++off_grid;
    if (v[i] != 0.0f) ++nonzero;
    // one rounding to bf16 (2^-9 relative) plus fp32 compute error
    if (!(std::fabs(v[i] - ref[i]) <= 0x1p-8 * std::fabs(ref[i]) + 1e-6 + atol)) ++far;
  }
  EXPECT_EQ(off_grid, 0) << what << ": values not on the bf16 grid";
  EXPECT_EQ(far, 0) << what << ": values farther than one bf16 rounding from the f64 result";
  EXPECT_GT(nonzero, 0) << what;
}

TEST(OpsBf16, OutputsAreOnTheBf16Grid) {
  auto f64 = [](const Tensor& t) { return t.to(DType::f64); };
  {
    Tensor x = bf16_tensor({6, 16}, 1), w = bf16_tensor({7, 16}, 2), b = bf16_tensor({7}, 3);
    expect_bf16_output(ops::linear(x, w, b), ops::linear(f64(x), f64(w), f64(b)), "linear");
    expect_bf16_output(ops::linear(x, w), ops::linear(f64(x), f64(w)), "linear (no bias)");
  }
  {
    Tensor x = bf16_tensor({5, 16}, 4, 2.0), w = bf16_tensor({16}, 5);
    expect_bf16_output(ops::rms_norm(x, w, 1e-5), ops::rms_norm(f64(x), f64(w), 1e-5), "rms_norm");
  }
  {
    Tensor q = bf16_tensor({2, 5, 4, 8}, 6), k = bf16_tensor({2, 5, 2, 8}, 7), v = bf16_tensor({2, 5, 2, 8}, 8);
    // P is rounded to bf16 before P·v (as on the device): |Σ δp v| <= 2^-9 Σ p |v| <= 2^-9 max|v|.
    double vmax = 0;
    for (float x : v.to_float_vector()) vmax = std::max(vmax, static_cast<double>(std::fabs(x)));
    expect_bf16_output(ops::attention(q, k, v), ops::attention(f64(q), f64(k), f64(v)), "attention", 0x1p-9 * vmax);
  }
  {
    Tensor g = bf16_tensor({4, 9}, 9, 3.0), u = bf16_tensor({4, 9}, 10, 3.0);
    expect_bf16_output(ops::swiglu(g, u), ops::swiglu(f64(g), f64(u)), "swiglu");
  }
  {
    // Sums of two bf16 values generally need more mantissa bits: the op must round.
    Tensor a = bf16_tensor({3, 11}, 11), b = bf16_tensor({3, 11}, 12, 0.01);
    expect_bf16_output(ops::add(a, b), ops::add(f64(a), f64(b)), "add");
  }
}

// Under a tape whose parameter gradients are bf16, bf16 leaves get bf16 gradients on the grid.
TEST(OpsBf16, GradientsOfBf16LeavesAreOnTheGrid) {
  Tensor x = bf16_tensor({6, 16}, 21), w = bf16_tensor({7, 16}, 22);
  x.set_requires_grad(true);
  w.set_requires_grad(true);
  Tape tape(DType::bf16);
  Tensor y;
  {
    TapeGuard guard(&tape);
    y = ops::rms_norm(ops::linear(x, w), bf16_tensor({7}, 23), 1e-5);
  }
  tape.backward(y, bf16_tensor({6, 7}, 24));
  for (const Tensor* t : {&x, &w}) {
    const Tensor g = t->grad();
    ASSERT_TRUE(g.defined());
    EXPECT_EQ(g.dtype(), DType::bf16);
    int off_grid = 0, nonzero = 0;
    for (float v : g.to_float_vector()) {
      off_grid += round_bf16(v) != v;
      nonzero += v != 0.0f;
    }
    EXPECT_EQ(off_grid, 0);
    EXPECT_GT(nonzero, 0);
  }
}

// bf16 attention rounds where the device stores (P; dS; dk / dv per group member; out, dq once):
// the op's output and gradients are bit-identical to the CPU kernel called with store bf16,
// and differ from the kernel without intermediate rounding.
TEST(OpsBf16, AttentionRoundsWhereTheDeviceStores) {
  const int64_t B = 2, T = 37, Hq = 4, Hkv = 2, D = 8;  // 1/sqrt(8): the scale is no power of 2
  Tensor q = bf16_tensor({B, T, Hq, D}, 31, 3.0), k = bf16_tensor({B, T, Hkv, D}, 32),
         v = bf16_tensor({B, T, Hkv, D}, 33), dout = bf16_tensor({B, T, Hq, D}, 34);
  for (Tensor* t : {&q, &k, &v}) t->set_requires_grad(true);
  Tape tape(DType::bf16);
  Tensor y;
  {
    TapeGuard guard(&tape);
    y = ops::attention(q, k, v);
  }
  tape.backward(y, dout);
  const auto fq = q.to_float_vector(), fk = k.to_float_vector(), fv = v.to_float_vector(),
             fd = dout.to_float_vector();
  auto kernel = [&](DType store) {
    std::vector<float> out(fq.size()), probs(static_cast<size_t>(B * Hq * T * T)), dq(fq.size(), 0.0f),
        dk(fk.size(), 0.0f), dv(fv.size(), 0.0f);
    cpu::attention_forward<float>(fq.data(), fk.data(), fv.data(), out.data(), probs.data(), B, T, Hq, Hkv, D, store);
    cpu::attention_backward<float>(fd.data(), fq.data(), fk.data(), fv.data(), probs.data(), dq.data(), dk.data(),
                                   dv.data(), B, T, Hq, Hkv, D, store, store, store);
    std::vector<std::vector<float>> r{out, dq, dk, dv};
    for (auto& x : r) round_to_dtype(x.data(), static_cast<int64_t>(x.size()), DType::bf16);
    return r;
  };
  const auto want = kernel(DType::bf16), unrounded = kernel(DType::f32);
  const std::vector<float> got[] = {y.to_float_vector(), q.grad().to_float_vector(), k.grad().to_float_vector(),
                                    v.grad().to_float_vector()};
  const char* names[] = {"out", "dq", "dk", "dv"};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(got[i], want[i]) << names[i] << ": the op does not round as cpu::attention_* with store bf16";
    EXPECT_NE(got[i], unrounded[i]) << names[i] << ": no intermediate rounding visible";
  }
}

// ------------------------------------------------------------------ shape errors

/// fn throws ptrain::Error whose message contains every one of `parts`.
void expect_error_naming(const std::function<void()>& fn, const std::vector<std::string>& parts, const char* what) {
  try {
    fn();
    ADD_FAILURE() << what << ": no error thrown";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << what << ": '" << p << "' not in: " << msg;
  }
}

TEST(OpsShapeErrors, MessagesNameBothShapes) {
  auto t = [](Shape s) { return Tensor::zeros(std::move(s), DType::f64); };
  expect_error_naming([&] { ops::linear(t({2, 3}), t({5, 4})); }, {"[2, 3]", "[5, 4]"}, "linear K mismatch");
  expect_error_naming([&] { ops::linear(t({2, 4}), t({5, 4}), t({4})); }, {"[4]", "[5, 4]"}, "linear bias mismatch");
  expect_error_naming([&] { ops::add(t({2, 3}), t({3, 2})); }, {"[2, 3]", "[3, 2]"}, "add");
  expect_error_naming([&] { ops::mul(t({2, 3}), t({2, 4})); }, {"[2, 3]", "[2, 4]"}, "mul");
  expect_error_naming([&] { ops::swiglu(t({4, 5}), t({4, 6})); }, {"[4, 5]", "[4, 6]"}, "swiglu");
  expect_error_naming([&] { ops::rms_norm(t({2, 4}), t({5}), 1e-5); }, {"[2, 4]", "[5]"}, "rms_norm");
  expect_error_naming([&] { ops::layer_norm(t({2, 4}), t({4}), t({3}), 1e-5); }, {"[2, 4]", "[3]"}, "layer_norm");
  expect_error_naming([&] { ops::attention(t({1, 4, 4, 2}), t({1, 4, 3, 2}), t({1, 4, 3, 2})); },
                      {"[1, 4, 4, 2]", "[1, 4, 3, 2]"}, "attention Hq % Hkv");
  expect_error_naming([&] { ops::rope(t({1, 4, 2, 6}), t({4, 2}), t({4, 2})); }, {"[1, 4, 2, 6]", "[4, 2]"},
                      "rope table width");
  expect_error_naming([&] { ops::cross_entropy(t({4, 8}), Tensor::zeros({3}, DType::i32), 8, 1.0); }, {"[3]", "[4, 8]"},
                      "cross_entropy targets");
  expect_error_naming([&] { ops::split(t({2, 6}), {2, 3}); }, {"[2, 6]", "5"}, "split sizes");
  expect_error_naming([&] { ops::view(t({2, 6}), {3, 5}); }, {"[2, 6]", "[3, 5]"}, "view numel");
  expect_error_naming([&] { ops::embedding(Tensor::from_vector_i32({0, 7}, {2}), t({6, 4})); }, {"7", "6"},
                      "embedding id out of range");
  expect_error_naming([&] { ops::add(t({2, 3}), Tensor::zeros({2, 3})); }, {"f64", "fp32"}, "add mixing f64/fp32");
}

}  // namespace
}  // namespace ptrain
