// tests/parallel/test_tp_ops.cpp — the TP/SP ops of parallel/tp_ops.h on a group of one rank.
//
// What is tested (multi-rank behaviour is in test_tp_ops_mpi.cpp):
//  * One table (par_op_cases()) holds a finite-difference case per op of op_lives_in_parallel()
//    (core's coverage test exempts them): f64 leaves through the tape with a size-1
//    communicator, seeded with a fixed random r, against central differences (gradcheck.h).
//  * TpOpsCoverage.EveryParallelOpIdHasAGradientCase: each case records exactly its declared op,
//    the union covers every op_lives_in_parallel() OpId, and no OpId outside parallel/ claims to
//    live there without a case (so the exemption in tests/core/test_ops.cpp hides nothing).
//  * With one rank every op equals the core op: vocab_parallel_cross_entropy equals
//    ops::cross_entropy bit for bit (loss and gradient, f64, f32, bf16, padded vocabulary with
//    ignored rows, rows long enough for the kernel's block path); vocab_parallel_embedding equals
//    ops::embedding (output and weight gradient, repeated ids).
//  * The mappings are views with one rank (no copy), record one tape entry each, and return the
//    input itself without a tape.
//  * Errors: shards that cannot hold the vocabulary on one rank, ids outside the shard.
// Tolerances: f64 FD with h = 1e-6, rtol 1e-6 / atol 1e-8 (as tests/core/test_ops.cpp).
#include "parallel/tp_ops.h"

#include <gtest/gtest.h>

#include <array>
#include <functional>
#include <string>
#include <vector>

#include "core/ops.h"
#include "tests/core/gradcheck.h"

namespace ptrain::parallel {
namespace {

using ptrain::testing::dot;
using ptrain::testing::expect_gradients_match;
using ptrain::testing::random_vector;

Communicator& self_tp() {
  static auto c = make_self_communicator("tp");
  return *c;
}

struct ParOpCase {
  std::string name;
  OpId op;
  std::vector<Shape> leaves;
  double scale = 1.0;
  std::function<std::vector<Tensor>(const std::vector<Tensor>&, Communicator&)> forward;
  std::function<void(const std::vector<Tensor>&)> check_grads;
};

void PrintTo(const ParOpCase& c, std::ostream* os) { *os << c.name; }

const std::vector<ParOpCase>& par_op_cases() {
  static const std::vector<ParOpCase> cases = [] {
    using L = const std::vector<Tensor>&;
    std::vector<ParOpCase> c;
    c.push_back({"tp_copy", OpId::tp_copy, {{3, 4}}, 1.0,
                 [](L l, Communicator& tp) { return std::vector<Tensor>{copy_to_tp(l[0], tp)}; }, nullptr});
    c.push_back({"tp_reduce", OpId::tp_reduce, {{2, 3, 4}}, 1.0,
                 [](L l, Communicator& tp) { return std::vector<Tensor>{reduce_from_tp(l[0], tp)}; }, nullptr});
    c.push_back({"sp_gather", OpId::sp_gather, {{4, 3}}, 1.0,
                 [](L l, Communicator& tp) { return std::vector<Tensor>{gather_sequence(l[0], tp)}; }, nullptr});
    c.push_back({"sp_reduce_scatter", OpId::sp_reduce_scatter, {{4, 2, 3}}, 1.0,
                 [](L l, Communicator& tp) { return std::vector<Tensor>{reduce_scatter_sequence(l[0], tp)}; },
                 nullptr});
    c.push_back({"sp_split", OpId::sp_split, {{6, 3}}, 1.0,
                 [](L l, Communicator& tp) { return std::vector<Tensor>{split_sequence(l[0], tp)}; }, nullptr});
    // logits [5, Vp = 8], real vocabulary V = 6, row 1 ignored, weight 0.3 (as core's case).
    c.push_back({"vocab_cross_entropy", OpId::vocab_cross_entropy, {{5, 8}}, 2.0,
                 [](L l, Communicator& tp) {
                   const Tensor t = Tensor::from_vector_i32({2, -1, 5, 0, 3}, {5});
                   return std::vector<Tensor>{vocab_parallel_cross_entropy(l[0], t, 0, 6, 0.3, tp)};
                 },
                 [](L l) {
                   const auto g = l[0].grad().to_double_vector();
                   int nonzero = 0;
                   for (int64_t i = 0; i < 5; ++i)
                     for (int64_t j = 0; j < 8; ++j) {
                       const double v = g[static_cast<size_t>(i * 8 + j)];
                       if (i == 1 || j >= 6)
                         EXPECT_EQ(v, 0.0) << "padded column / ignored row " << i << "," << j;
                       else
                         nonzero += v != 0.0;
                     }
                   EXPECT_EQ(nonzero, 4 * 6);
                 }});
    // ids repeat row 1 three times; rows 2 and 3 are never looked up.
    c.push_back({"vocab_embedding", OpId::vocab_embedding, {{6, 4}}, 1.0,
                 [](L l, Communicator& tp) {
                   const Tensor ids = Tensor::from_vector_i32({1, 4, 1, 0, 5, 1}, {2, 3});
                   return std::vector<Tensor>{vocab_parallel_embedding(ids, l[0], 0, tp)};
                 },
                 [](L l) {
                   const auto g = l[0].grad().to_double_vector();
                   for (int64_t r : {2, 3})
                     for (int64_t j = 0; j < 4; ++j) EXPECT_EQ(g[static_cast<size_t>(r * 4 + j)], 0.0) << "row " << r;
                 }});
    return c;
  }();
  return cases;
}

class ParOpGradTest : public ::testing::TestWithParam<ParOpCase> {};

TEST_P(ParOpGradTest, MatchesFiniteDifferences) {
  const ParOpCase& c = GetParam();
  Communicator& tp = self_tp();
  std::vector<std::vector<double>> vals;
  std::vector<Tensor> leaves;
  for (size_t i = 0; i < c.leaves.size(); ++i) {
    vals.push_back(random_vector(static_cast<size_t>(shape_numel(c.leaves[i])), 100 + i, c.scale));
    leaves.push_back(Tensor::from_vector_f64(vals[i], c.leaves[i]));
    leaves.back().set_requires_grad(true);
  }
  Tape tape;
  std::vector<Tensor> outs;
  {
    TapeGuard guard(&tape);
    outs = c.forward(leaves, tp);
  }
  ASSERT_EQ(outs.size(), 1u);
  EXPECT_EQ(tape.op_counts()[static_cast<size_t>(c.op)], 1) << c.name << " did not record " << op_name(c.op);
  EXPECT_EQ(outs[0].dtype(), DType::f64);
  const auto r = random_vector(static_cast<size_t>(outs[0].numel()), 900);
  tape.backward(outs[0], Tensor::from_vector_f64(r, outs[0].shape()));
  EXPECT_EQ(tape.size(), 0u);

  auto loss = [&]() {
    NoGradGuard ng;
    std::vector<Tensor> in;
    for (size_t i = 0; i < vals.size(); ++i) in.push_back(Tensor::from_vector_f64(vals[i], c.leaves[i]));
    return dot(r, c.forward(in, tp)[0].to_double_vector());
  };
  for (size_t i = 0; i < leaves.size(); ++i) {
    const Tensor g = leaves[i].grad();
    ASSERT_TRUE(g.defined()) << c.name << ": no gradient reached input " << i;
    EXPECT_EQ(g.shape(), c.leaves[i]);
    EXPECT_EQ(expect_gradients_match(loss, vals[i], g.to_double_vector(), c.name + " input " + std::to_string(i)), 0);
  }
  if (c.check_grads) c.check_grads(leaves);
}

INSTANTIATE_TEST_SUITE_P(ParallelOps, ParOpGradTest, ::testing::ValuesIn(par_op_cases()),
                         [](const ::testing::TestParamInfo<ParOpCase>& info) { return info.param.name; });

// The counterpart of OpsCoverage.EveryOpIdHasAGradientCase for the ops it exempts.
TEST(TpOpsCoverage, EveryParallelOpIdHasAGradientCase) {
  std::array<int64_t, static_cast<size_t>(OpId::count)> covered{};
  for (const ParOpCase& c : par_op_cases()) {
    EXPECT_TRUE(op_lives_in_parallel(c.op)) << c.name << ": OpId::" << op_name(c.op) << " is a core op";
    std::vector<Tensor> leaves;
    for (const Shape& s : c.leaves) {
      leaves.push_back(Tensor::from_vector_f64(random_vector(static_cast<size_t>(shape_numel(s)), 1), s));
      leaves.back().set_requires_grad(true);
    }
    Tape tape;
    TapeGuard guard(&tape);
    c.forward(leaves, self_tp());
    const auto counts = tape.op_counts();
    for (size_t op = 0; op < counts.size(); ++op) {
      if (op == static_cast<size_t>(c.op))
        EXPECT_GT(counts[op], 0) << c.name << " does not record " << kOpNames[op];
      else
        EXPECT_EQ(counts[op], 0) << c.name << " also records " << kOpNames[op] << "; a case must isolate its op";
      covered[op] += counts[op];
    }
  }
  int parallel_ops = 0;
  for (size_t op = 0; op < covered.size(); ++op) {
    if (!op_lives_in_parallel(static_cast<OpId>(op))) continue;
    ++parallel_ops;
    EXPECT_GT(covered[op], 0) << "OpId::" << kOpNames[op]
                              << " lives in parallel/ but has no finite-difference case in "
                                 "tests/parallel/test_tp_ops.cpp (add one to par_op_cases())";
  }
  EXPECT_EQ(parallel_ops, 7);
}

// ------------------------------------------------------------------ equal to the core ops

/// Logits [N, Vp] in `dt`, targets with ignored rows and the extremes 0 and V-1.
struct CeData {
  Tensor logits, targets;
  int64_t V;
};
CeData ce_data(int64_t N, int64_t Vp, int64_t V, DType dt, uint64_t seed) {
  const auto v = random_vector(static_cast<size_t>(N * Vp), seed, 4.0);
  Tensor logits = dt == DType::f64 ? Tensor::from_vector_f64(v, {N, Vp})
                                   : Tensor::from_vector(std::vector<float>(v.begin(), v.end()), {N, Vp}, dt);
  std::vector<int32_t> t(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) t[static_cast<size_t>(i)] = static_cast<int32_t>((i * 37 + 5) % V);
  t[0] = 0;
  t[1] = -1;
  t[static_cast<size_t>(N - 1)] = static_cast<int32_t>(V - 1);
  if (N > 4) t[3] = -1;
  return {logits, Tensor::from_vector_i32(t, {N}), V};
}

/// Loss and logits gradient (seeded with `seed`) of f(logits) under a tape.
std::pair<Tensor, Tensor> loss_and_grad(const Tensor& logits_in, const std::function<Tensor(const Tensor&)>& f,
                                        double seed) {
  Tensor logits = logits_in.clone();
  logits.set_requires_grad(true);
  Tape tape(logits.dtype() == DType::f64 ? DType::f64 : DType::f32);
  Tensor loss;
  {
    TapeGuard g(&tape);
    loss = f(logits);
  }
  Tensor s = Tensor::full({1}, seed, loss.dtype());
  tape.backward(loss, s);
  return {loss, logits.grad()};
}

void expect_bitwise_equal(const Tensor& a, const Tensor& b, const std::string& what) {
  ASSERT_EQ(a.dtype(), b.dtype()) << what;
  ASSERT_EQ(a.shape(), b.shape()) << what;
  const auto x = a.to_double_vector(), y = b.to_double_vector();
  int diff = 0, nonzero = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    if (x[i] != y[i]) {
      if (diff < 5) ADD_FAILURE() << what << "[" << i << "]: " << x[i] << " vs " << y[i];
      ++diff;
    }
    nonzero += x[i] != 0.0;
  }
  EXPECT_EQ(diff, 0) << what;
  EXPECT_GT(nonzero, 0) << what << ": all zero";
}

TEST(TpOpsSingleRank, VocabCrossEntropyEqualsCoreBitForBit) {
  struct Shape3 {
    int64_t N, Vp, V;
  };
  // Vp = 600 > 2 blocks of 256 columns: the kernel's lane/block path; V < Vp: padding.
  for (const Shape3 s : {Shape3{7, 10, 10}, Shape3{9, 16, 13}, Shape3{6, 600, 581}}) {
    for (DType dt : {DType::f64, DType::f32, DType::bf16}) {
      const std::string what = fmt::format("N={} Vp={} V={} {}", s.N, s.Vp, s.V, dtype_name(dt));
      const CeData d = ce_data(s.N, s.Vp, s.V, dt, 7 + static_cast<uint64_t>(s.Vp));
      const double w = 1.0 / 5.0;
      auto [lc, gc] = loss_and_grad(
          d.logits, [&](const Tensor& l) { return ops::cross_entropy(l, d.targets, d.V, w); }, 1.3);
      auto [lp, gp] = loss_and_grad(
          d.logits, [&](const Tensor& l) { return vocab_parallel_cross_entropy(l, d.targets, 0, d.V, w, self_tp()); },
          1.3);
      expect_bitwise_equal(lp, lc, what + " loss");
      expect_bitwise_equal(gp, gc, what + " dlogits");
      // and the loss is the textbook value (guards against both being wrong the same way)
      const auto x = d.logits.to_double_vector();
      const auto t = d.targets.to_double_vector();
      double ref = 0;
      for (int64_t i = 0; i < s.N; ++i) {
        if (t[static_cast<size_t>(i)] < 0) continue;
        double m = -1e300, z = 0;
        for (int64_t j = 0; j < s.V; ++j) m = std::max(m, x[static_cast<size_t>(i * s.Vp + j)]);
        for (int64_t j = 0; j < s.V; ++j) z += std::exp(x[static_cast<size_t>(i * s.Vp + j)] - m);
        ref += m + std::log(z) - x[static_cast<size_t>(i * s.Vp) + static_cast<size_t>(t[static_cast<size_t>(i)])];
      }
      ref *= w;
      const double tol = dt == DType::f64 ? 1e-13 : 1e-5;
      EXPECT_NEAR(lp.to_double_vector()[0], ref, tol * std::fabs(ref)) << what;
    }
  }
}

TEST(TpOpsSingleRank, VocabEmbeddingEqualsCoreBitForBit) {
  const std::vector<int32_t> ids_v = {3, 0, 9, 3, 3, 7, 1, 9, 4, 0, 2, 3};
  const Tensor ids = Tensor::from_vector_i32(ids_v, {3, 4});
  for (DType dt : {DType::f64, DType::f32, DType::bf16}) {
    const auto v = random_vector(10 * 5, 3);
    const Tensor table = dt == DType::f64 ? Tensor::from_vector_f64(v, {10, 5})
                                          : Tensor::from_vector(std::vector<float>(v.begin(), v.end()), {10, 5}, dt);
    const auto dy = random_vector(12 * 5, 4);
    const Tensor seed = dt == DType::f64 ? Tensor::from_vector_f64(dy, {3, 4, 5})
                                         : Tensor::from_vector(std::vector<float>(dy.begin(), dy.end()), {3, 4, 5}, dt);
    auto run = [&](bool par) {
      Tensor w = table.clone();
      w.set_requires_grad(true);
      Tape tape(dt == DType::f64 ? DType::f64 : DType::f32);
      Tensor y;
      {
        TapeGuard g(&tape);
        y = par ? vocab_parallel_embedding(ids, w, 0, self_tp()) : ops::embedding(ids, w);
      }
      tape.backward(y, seed);
      return std::pair<Tensor, Tensor>{y, w.grad()};
    };
    auto [yc, gc] = run(false);
    auto [yp, gp] = run(true);
    const std::string what(dtype_name(dt));
    expect_bitwise_equal(yp, yc, what + " y");
    expect_bitwise_equal(gp, gc, what + " dweight");
    // row 3 is looked up 4 times: its gradient is the sum of 4 rows of dy; rows 5, 6, 8 get none
    const auto g = gp.to_double_vector();
    for (int64_t r : {5, 6, 8})
      for (int64_t j = 0; j < 5; ++j) EXPECT_EQ(g[static_cast<size_t>(r * 5 + j)], 0.0);
    if (dt == DType::f64) {
      for (int64_t j = 0; j < 5; ++j) {
        double s = 0;
        for (size_t i = 0; i < ids_v.size(); ++i)
          if (ids_v[i] == 3) s += dy[i * 5 + static_cast<size_t>(j)];
        EXPECT_NEAR(g[static_cast<size_t>(15 + j)], s, 1e-15);
      }
    }
  }
}

// ------------------------------------------------------------------ views, tape entries

TEST(TpOpsSingleRank, MappingsAreViewsAndRecordOneEntryEach) {
  Communicator& tp = self_tp();
  Tensor x = Tensor::from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {3, 2});
  {
    NoGradGuard ng;  // no tape: the input itself
    EXPECT_TRUE(copy_to_tp(x, tp).same(x));
    EXPECT_TRUE(reduce_from_tp(x, tp).same(x));
    EXPECT_TRUE(gather_sequence(x, tp).same(x));
    EXPECT_TRUE(reduce_scatter_sequence(x, tp).same(x));
    EXPECT_TRUE(split_sequence(x, tp).same(x));
  }
  x.set_requires_grad(true);
  Tape tape;
  TapeGuard g(&tape);
  using Fn = Tensor (*)(const Tensor&, Communicator&);
  const std::pair<Fn, OpId> fns[] = {{copy_to_tp, OpId::tp_copy},
                                     {reduce_from_tp, OpId::tp_reduce},
                                     {gather_sequence, OpId::sp_gather},
                                     {reduce_scatter_sequence, OpId::sp_reduce_scatter},
                                     {split_sequence, OpId::sp_split}};
  for (const auto& [fn, op] : fns) {
    const size_t before = tape.size();
    Tensor y = fn(x, tp);
    EXPECT_FALSE(y.same(x)) << op_name(op);
    EXPECT_EQ(y.raw(), x.raw()) << op_name(op) << " copied its input";
    EXPECT_EQ(y.shape(), x.shape()) << op_name(op);
    EXPECT_EQ(tape.size(), before + 1) << op_name(op);
    EXPECT_EQ(tape.op_counts()[static_cast<size_t>(op)], 1) << op_name(op);
  }
}

// A chain of all five mappings is the identity on one rank: the gradient reaches x unchanged.
TEST(TpOpsSingleRank, ChainOfMappingsPassesTheGradientThrough) {
  Communicator& tp = self_tp();
  const auto xv = random_vector(8, 5), r = random_vector(8, 6);
  Tensor x = Tensor::from_vector_f64(xv, {4, 2});
  x.set_requires_grad(true);
  Tape tape(DType::f64);
  Tensor y;
  {
    TapeGuard g(&tape);
    y = reduce_from_tp(
        copy_to_tp(split_sequence(reduce_scatter_sequence(gather_sequence(ops::scale(x, 2.0), tp), tp), tp), tp), tp);
  }
  EXPECT_EQ(y.to_double_vector(), ops::scale(x, 2.0).to_double_vector());
  tape.backward(y, Tensor::from_vector_f64(r, {4, 2}));
  const auto g = x.grad().to_double_vector();
  for (size_t i = 0; i < 8; ++i) EXPECT_EQ(g[i], 2.0 * r[i]);
}

// ------------------------------------------------------------------ errors

void expect_error_naming(const std::function<void()>& fn, const std::vector<std::string>& parts, const char* what) {
  try {
    fn();
    ADD_FAILURE() << what << ": no error thrown";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << what << ": '" << p << "' not in: " << msg;
  }
}

TEST(TpOpsSingleRank, Errors) {
  Communicator& tp = self_tp();
  const Tensor logits = Tensor::zeros({2, 8}, DType::f64);
  const Tensor tg = Tensor::from_vector_i32({1, 2}, {2});
  expect_error_naming([&] { vocab_parallel_cross_entropy(logits, tg, 4, 12, 1.0, tp); }, {"[4, 12)", "12"},
                      "shard not holding the vocabulary");
  expect_error_naming([&] { vocab_parallel_cross_entropy(logits, tg, 0, 9, 1.0, tp); }, {"V = 9"}, "V > Vs");
  expect_error_naming([&] { vocab_parallel_cross_entropy(logits, Tensor::from_vector_i32({1, 6}, {2}), 0, 6, 1.0, tp); },
                      {"target 6", ">= vocab 6"}, "target >= V");
  expect_error_naming([&] { vocab_parallel_cross_entropy(logits, Tensor::from_vector_i32({1}, {1}), 0, 8, 1.0, tp); },
                      {"[1]", "[2, 8]"}, "targets shape");
  const Tensor table = Tensor::zeros({6, 4}, DType::f64);
  expect_error_naming([&] { vocab_parallel_embedding(Tensor::from_vector_i32({0, 7}, {2}), table, 0, tp); },
                      {"7", "[0, 6)"}, "embedding id out of range");
  expect_error_naming([&] { vocab_parallel_embedding(Tensor::from_vector_i32({0, -2}, {2}), table, 0, tp); },
                      {"-2", "negative"}, "negative id");
}

}  // namespace
}  // namespace ptrain::parallel
