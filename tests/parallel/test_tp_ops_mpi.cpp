// tests/parallel/test_tp_ops_mpi.cpp — the TP/SP ops of parallel/tp_ops.h on real groups
// (mpirun -np 4): a TP group of 4 (the world) and two TP groups of 2 (split_communicator).
//
// Every rank builds the same full-size data (deterministic seeds) and the unsharded reference
// with the core ops, then runs the sharded computation on its group and compares:
//  * vocab-parallel cross-entropy: loss equal to ops::cross_entropy over the full padded vocabulary
//    (f64 to 1e-13, f32 to 1e-6, relative), bit-identical on every rank of the group; gradient
//    shards equal the slices of the full gradient; padding columns and ignored rows get exactly
//    0; vocabularies that leave the last shard partly or wholly padding; a shard layout that
//    does not tile the vocabulary throws on every rank.
//  * vocab-parallel embedding: output bit-identical to ops::embedding over the full table
//    (f64, f32, bf16), weight-gradient shards bit-identical to the slices.
//  * copy_to_tp / reduce_from_tp: the Megatron MLP y = g(linear(gelu(linear(f(x), W1s, b1s)), W2s))
//    equals the unsharded MLP (f64 to 1e-13, f32 to 1e-5); input gradient equal to the unsharded
//    one and bit-identical on every rank; weight-gradient shards equal the slices.
//  * sequence parallel: split -> gather round-trips bit for bit, reduce_scatter sums; the block
//    X -> split -> gather -> column-linear -> gelu -> row-linear -> reduce_scatter equals the
//    rows of the unsharded block, its gradients equal the unsharded ones, and finite differences
//    of the total loss (summed over the group) confirm dX and dW1 in f64.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/ops.h"
#include "parallel/mpi_comm.h"
#include "parallel/tp_ops.h"
#include "tests/core/gradcheck.h"

namespace ptrain::parallel {
namespace {

using ptrain::testing::dot;
using ptrain::testing::random_vector;

/// The TP groups under test: the world (size 4), then pairs {0,1}, {2,3} (size 2).
struct Groups {
  std::unique_ptr<Communicator> world;
  std::vector<std::unique_ptr<Communicator>> tp;
};
Groups groups() {
  Groups g;
  g.world = make_mpi_communicator(MPI_COMM_WORLD, "world");
  EXPECT_EQ(g.world->size(), 4) << "run with mpirun -np 4";
  const int r = g.world->rank();
  g.tp.push_back(split_communicator(*g.world, 0, r, "tp4"));
  g.tp.push_back(split_communicator(*g.world, r / 2, r, "tp2"));
  return g;
}

Tensor make(const std::vector<double>& v, Shape s, DType dt) {
  if (dt == DType::f64) return Tensor::from_vector_f64(v, std::move(s));
  return Tensor::from_vector(std::vector<float>(v.begin(), v.end()), std::move(s), dt);
}

/// Columns [c0, c1) of a 2-D tensor, in fresh storage.
Tensor cols(const Tensor& x, int64_t c0, int64_t c1) {
  const int64_t R = x.dim(0), C = x.dim(1);
  const auto v = x.to_double_vector();
  std::vector<double> o;
  for (int64_t i = 0; i < R; ++i)
    for (int64_t j = c0; j < c1; ++j) o.push_back(v[static_cast<size_t>(i * C + j)]);
  return make(o, {R, c1 - c0}, x.dtype());
}

Tensor rows(const Tensor& x, int64_t r0, int64_t r1) { return x.rows(r0, r1).clone(); }

/// max |a - b| / (max |b| + tiny); also checks shapes.
double rel_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  const auto x = a.to_double_vector(), y = b.to_double_vector();
  double d = 0, m = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
    d = std::max(d, std::fabs(x[i] - y[i]));
    m = std::max(m, std::fabs(y[i]));
  }
  EXPECT_GT(m, 0.0) << "reference is all zero";
  return d / (m + 1e-300);
}

void expect_bitwise(const Tensor& a, const Tensor& b, const std::string& what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  ASSERT_EQ(a.dtype(), b.dtype()) << what;
  const auto x = a.to_double_vector(), y = b.to_double_vector();
  int diff = 0;
  for (size_t i = 0; i < x.size(); ++i) diff += x[i] != y[i];
  EXPECT_EQ(diff, 0) << what << ": " << diff << " of " << x.size() << " values differ";
}

/// v is bit-identical on every rank of `tp`.
void expect_same_on_group(Communicator& tp, const std::vector<double>& v, const std::string& what) {
  std::vector<double> hi = v, lo(v.size());
  for (size_t i = 0; i < v.size(); ++i) lo[i] = -v[i];
  tp.all_reduce(std::span<double>(hi), ReduceOp::max);
  tp.all_reduce(std::span<double>(lo), ReduceOp::max);
  int diff = 0;
  for (size_t i = 0; i < v.size(); ++i) diff += hi[i] != v[i] || -lo[i] != v[i];
  EXPECT_EQ(diff, 0) << what << " differs across the ranks of group '" << tp.name() << "'";
}

// ------------------------------------------------------------------ vocab-parallel cross-entropy

struct CeCase {
  int64_t N, V, Vs_min;  // Vs = max(Vs_min, ceil(V / P))
};

void run_vocab_ce(Communicator& tp, const CeCase& c, DType dt) {
  const int64_t P = tp.size(), r = tp.rank();
  const int64_t Vs = std::max(c.Vs_min, (c.V + P - 1) / P), Vp = P * Vs;
  const std::string what = fmt::format("group {} P={} N={} V={} Vs={} {}", tp.name(), P, c.N, c.V, Vs, dtype_name(dt));
  const Tensor full = make(random_vector(static_cast<size_t>(c.N * Vp), 31 + static_cast<uint64_t>(c.V), 5.0),
                           {c.N, Vp}, dt);
  std::vector<int32_t> tv(static_cast<size_t>(c.N));
  for (int64_t i = 0; i < c.N; ++i) tv[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7 + 3) % c.V);
  tv[0] = static_cast<int32_t>(c.V - 1);  // in the last (partly padded) shard
  tv[1] = -1;                             // ignored
  tv[2] = 0;
  const Tensor targets = Tensor::from_vector_i32(tv, {c.N});
  const double w = 1.0 / static_cast<double>(c.N - 1), seed = 0.7;
  const DType gd = dt == DType::f64 ? DType::f64 : DType::f32;

  // reference: full logits, core op
  Tensor lf = full.clone();
  lf.set_requires_grad(true);
  Tape tf(gd);
  Tensor loss_ref;
  {
    TapeGuard g(&tf);
    loss_ref = ops::cross_entropy(lf, targets, c.V, w);
  }
  tf.backward(loss_ref, Tensor::full({1}, seed, loss_ref.dtype()));

  // sharded
  Tensor ls = cols(full, r * Vs, (r + 1) * Vs);
  ls.set_requires_grad(true);
  Tape ts(gd);
  Tensor loss;
  {
    TapeGuard g(&ts);
    loss = vocab_parallel_cross_entropy(ls, targets, r * Vs, c.V, w, tp);
  }
  ts.backward(loss, Tensor::full({1}, seed, loss.dtype()));

  ASSERT_EQ(loss.dtype(), loss_ref.dtype()) << what;
  const double tol = dt == DType::f64 ? 1e-13 : 1e-6;
  const double l = loss.to_double_vector()[0], lr = loss_ref.to_double_vector()[0];
  EXPECT_NEAR(l, lr, tol * std::fabs(lr)) << what;
  expect_same_on_group(tp, {l}, what + " loss");

  const Tensor g = ls.grad(), gref = cols(lf.grad(), r * Vs, (r + 1) * Vs);
  const auto gv = g.to_double_vector(), grv = gref.to_double_vector();
  int padded_nonzero = 0, ignored_nonzero = 0, far = 0, nonzero = 0;
  for (int64_t i = 0; i < c.N; ++i)
    for (int64_t j = 0; j < Vs; ++j) {
      const auto k = static_cast<size_t>(i * Vs + j);
      if (r * Vs + j >= c.V) padded_nonzero += gv[k] != 0.0;
      if (i == 1) ignored_nonzero += gv[k] != 0.0;
      far += !(std::fabs(gv[k] - grv[k]) <= tol * 0.1 + tol * std::fabs(grv[k]));
      nonzero += gv[k] != 0.0;
    }
  EXPECT_EQ(padded_nonzero, 0) << what << ": padding columns got a gradient";
  EXPECT_EQ(ignored_nonzero, 0) << what << ": the ignored row got a gradient";
  EXPECT_EQ(far, 0) << what << ": gradient shard differs from the slice of the full gradient";
  if (r * Vs < c.V) {
    EXPECT_GT(nonzero, 0) << what;
  }
}

TEST(TpOpsMpi, VocabParallelCrossEntropyEqualsFullVocabulary) {
  auto g = groups();
  // V = 16: no padding for P = 2, 4; V = 13: last shard partly padding; V = 9 with Vs = 3 on 4
  // ranks: the last shard is all padding; V = 1190: shards over 256 columns (kernel block path).
  const CeCase cases[] = {{6, 16, 1}, {7, 13, 1}, {5, 9, 3}, {9, 1190, 1}};
  for (auto& tp : g.tp)
    for (const CeCase& c : cases)
      for (DType dt : {DType::f64, DType::f32}) run_vocab_ce(*tp, c, dt);
}

TEST(TpOpsMpi, VocabParallelCrossEntropyRejectsShardsThatDoNotTileTheVocabulary) {
  auto g = groups();
  for (auto& tp : g.tp) {
    const Tensor logits = make(random_vector(3 * 8, 5), {3, 8}, DType::f64);
    const Tensor targets = Tensor::from_vector_i32({1, 5, 7}, {3});
    // every rank claims columns [0, 8): each target is held by P ranks
    bool threw = false;
    try {
      vocab_parallel_cross_entropy(logits, targets, 0, 8, 1.0, *tp);
    } catch (const Error& e) {
      threw = true;
      EXPECT_NE(std::string(e.what()).find("held by " + std::to_string(tp->size()) + " ranks"), std::string::npos)
          << e.what();
    }
    EXPECT_TRUE(threw) << "group " << tp->name();
  }
}

// ------------------------------------------------------------------ vocab-parallel embedding

TEST(TpOpsMpi, VocabParallelEmbeddingEqualsFullTable) {
  auto g = groups();
  const int64_t V = 13, C = 5;
  std::vector<int32_t> ids_v;
  for (int i = 0; i < 24; ++i) ids_v.push_back(static_cast<int32_t>((i * 5 + 2) % V));
  ids_v[3] = ids_v[9] = ids_v[17] = 12;  // the last real row, repeated
  const Tensor ids = Tensor::from_vector_i32(ids_v, {4, 6});
  for (auto& tp : g.tp) {
    const int64_t P = tp->size(), r = tp->rank(), Vs = (V + P - 1) / P, Vp = P * Vs;
    for (DType dt : {DType::f64, DType::f32, DType::bf16}) {
      const std::string what = fmt::format("group {} {}", tp->name(), dtype_name(dt));
      auto tv = random_vector(static_cast<size_t>(Vp * C), 41);
      for (int64_t k = V * C; k < Vp * C; ++k) tv[static_cast<size_t>(k)] = 0.0;  // padded rows are zero
      const Tensor table = make(tv, {Vp, C}, dt);
      const Tensor seed = make(random_vector(24 * C, 42), {4, 6, C}, dt);
      const DType gd = dt == DType::f64 ? DType::f64 : DType::f32;

      Tensor wf = table.clone();
      wf.set_requires_grad(true);
      Tape tf(gd);
      Tensor yref;
      {
        TapeGuard gg(&tf);
        yref = ops::embedding(ids, wf);
      }
      tf.backward(yref, seed);

      Tensor ws = rows(table, r * Vs, (r + 1) * Vs);
      ws.set_requires_grad(true);
      Tape ts(gd);
      Tensor y;
      {
        TapeGuard gg(&ts);
        y = vocab_parallel_embedding(ids, ws, r * Vs, *tp);
      }
      ts.backward(y, seed);
      expect_bitwise(y, yref, what + " y");
      int nonzero = 0;
      for (double v : y.to_double_vector()) nonzero += v != 0.0;
      EXPECT_EQ(nonzero, 24 * C) << what;  // every looked-up row is a real (nonzero) row
      expect_bitwise(ws.grad(), rows(wf.grad(), r * Vs, (r + 1) * Vs), what + " dweight shard");
      // padding rows of the last shard receive no update
      const auto gv = ws.grad().to_double_vector();
      for (int64_t i = 0; i < Vs; ++i)
        if (r * Vs + i >= V) {
          for (int64_t j = 0; j < C; ++j) EXPECT_EQ(gv[static_cast<size_t>(i * C + j)], 0.0) << what;
        }
    }
  }
}

// ------------------------------------------------------------------ Megatron MLP (f and g)

void run_megatron_mlp(Communicator& tp, DType dt) {
  const int64_t P = tp.size(), r = tp.rank();
  const int64_t N = 6, C = 5, H = 8, Hs = H / P;
  const std::string what = fmt::format("group {} {}", tp.name(), dtype_name(dt));
  const Tensor x0 = make(random_vector(static_cast<size_t>(N * C), 51), {N, C}, dt);
  const Tensor W1 = make(random_vector(static_cast<size_t>(H * C), 52), {H, C}, dt);
  const Tensor b1 = make(random_vector(static_cast<size_t>(H), 53), {H}, dt);
  const Tensor W2 = make(random_vector(static_cast<size_t>(C * H), 54), {C, H}, dt);
  const Tensor seed = make(random_vector(static_cast<size_t>(N * C), 55), {N, C}, dt);
  const DType gd = dt == DType::f64 ? DType::f64 : DType::f32;
  auto leaf = [](const Tensor& t) {
    Tensor l = t.clone();
    l.set_requires_grad(true);
    return l;
  };

  // reference: y = W2 · gelu(W1 · x + b1)
  Tensor x = leaf(x0), w1 = leaf(W1), bb1 = leaf(b1), w2 = leaf(W2);
  Tape tf(gd);
  Tensor yref;
  {
    TapeGuard g(&tf);
    yref = ops::linear(ops::gelu(ops::linear(x, w1, bb1)), w2);
  }
  tf.backward(yref, seed);

  // Megatron: W1 split by output rows (column-parallel), W2 by input columns (row-parallel)
  Tensor xs = leaf(x0), w1s = leaf(rows(W1, r * Hs, (r + 1) * Hs)), b1s = leaf(rows(b1, r * Hs, (r + 1) * Hs)),
         w2s = leaf(cols(W2, r * Hs, (r + 1) * Hs));
  Tape ts(gd);
  Tensor y;
  {
    TapeGuard g(&ts);
    y = reduce_from_tp(ops::linear(ops::gelu(ops::linear(copy_to_tp(xs, tp), w1s, b1s)), w2s), tp);
    const auto counts = ts.op_counts();
    EXPECT_EQ(counts[static_cast<size_t>(OpId::tp_copy)], 1);
    EXPECT_EQ(counts[static_cast<size_t>(OpId::tp_reduce)], 1);
  }
  ts.backward(y, seed);

  const double tol = dt == DType::f64 ? 1e-13 : 1e-5;
  EXPECT_LE(rel_diff(y, yref), tol) << what << " y";
  expect_same_on_group(tp, y.to_double_vector(), what + " y");
  EXPECT_LE(rel_diff(xs.grad(), x.grad()), tol) << what << " dx";
  expect_same_on_group(tp, xs.grad().to_double_vector(), what + " dx");
  EXPECT_LE(rel_diff(w1s.grad(), rows(w1.grad(), r * Hs, (r + 1) * Hs)), tol) << what << " dW1 shard";
  EXPECT_LE(rel_diff(b1s.grad(), rows(bb1.grad(), r * Hs, (r + 1) * Hs)), tol) << what << " db1 shard";
  EXPECT_LE(rel_diff(w2s.grad(), cols(w2.grad(), r * Hs, (r + 1) * Hs)), tol) << what << " dW2 shard";
  // Without the all-reduce in copy_to_tp's backward, dx would be this rank's partial only:
  // make sure the partial really differs from the full gradient (the check above can fail).
  Tensor xp = leaf(x0);
  Tape tpart(gd);
  Tensor yp;
  {
    TapeGuard g(&tpart);
    yp = ops::linear(ops::gelu(ops::linear(xp, rows(W1, r * Hs, (r + 1) * Hs), rows(b1, r * Hs, (r + 1) * Hs))),
                     cols(W2, r * Hs, (r + 1) * Hs));
  }
  tpart.backward(yp, seed);
  EXPECT_GT(rel_diff(xp.grad(), x.grad()), 1e-3) << what;
}

TEST(TpOpsMpi, MegatronMlpEqualsUnshardedMlp) {
  auto g = groups();
  for (auto& tp : g.tp)
    for (DType dt : {DType::f64, DType::f32}) run_megatron_mlp(*tp, dt);
}

// ------------------------------------------------------------------ sequence parallel

TEST(TpOpsMpi, SequenceParallelRoundTrips) {
  auto g = groups();
  for (auto& tp : g.tp) {
    const int64_t P = tp->size(), r = tp->rank(), n = 3, C = 4;
    for (DType dt : {DType::f64, DType::f32, DType::bf16}) {
      const std::string what = fmt::format("group {} {}", tp->name(), dtype_name(dt));
      const Tensor X = make(random_vector(static_cast<size_t>(P * n * C), 61), {P * n, 2, C / 2}, dt);
      const Tensor s = split_sequence(X, *tp);
      expect_bitwise(s, rows(X, r * n, (r + 1) * n), what + " split");
      expect_bitwise(gather_sequence(s, *tp), X, what + " gather(split)");
      // Σ over P identical copies: P · X (exact for P a power of two), this rank's rows
      expect_bitwise(reduce_scatter_sequence(X, *tp), rows(ops::scale(X, static_cast<double>(P)), r * n, (r + 1) * n),
                     what + " reduce_scatter");
    }
  }
}

/// X [P·n, C] (replicated) -> split -> gather -> column-linear -> gelu -> row-linear -> reduce_scatter.
Tensor sp_block(const Tensor& X, const Tensor& w1s, const Tensor& w2s, Communicator& tp) {
  return reduce_scatter_sequence(ops::linear(ops::gelu(ops::linear(gather_sequence(split_sequence(X, tp), tp), w1s)), w2s),
                                 tp);
}

TEST(TpOpsMpi, SequenceParallelBlockGradients) {
  auto g = groups();
  for (auto& tp : g.tp) {
    const int64_t P = tp->size(), r = tp->rank(), n = 2, C = 3, H = 4, Hs = H / P;
    const std::string what = fmt::format("group {}", tp->name());
    auto Xv = random_vector(static_cast<size_t>(P * n * C), 71);
    const auto W1v = random_vector(static_cast<size_t>(H * C), 72), W2v = random_vector(static_cast<size_t>(C * H), 73);
    const Tensor W1 = Tensor::from_vector_f64(W1v, {H, C}), W2 = Tensor::from_vector_f64(W2v, {C, H});
    const auto seed_full = random_vector(static_cast<size_t>(P * n * C), 74);  // dL/dY of the full output
    const Tensor seed_full_t = Tensor::from_vector_f64(seed_full, {P * n, C});
    const Tensor seed_r = rows(seed_full_t, r * n, (r + 1) * n);

    // reference
    Tensor Xf = Tensor::from_vector_f64(Xv, {P * n, C}), w1 = W1.clone(), w2 = W2.clone();
    for (Tensor* t : {&Xf, &w1, &w2}) t->set_requires_grad(true);
    Tape tf(DType::f64);
    Tensor Yref;
    {
      TapeGuard gg(&tf);
      Yref = ops::linear(ops::gelu(ops::linear(Xf, w1)), w2);
    }
    tf.backward(Yref, seed_full_t);

    // sequence parallel
    Tensor Xs = Tensor::from_vector_f64(Xv, {P * n, C});
    std::vector<double> w1v = rows(W1, r * Hs, (r + 1) * Hs).to_double_vector();
    Tensor w1s = Tensor::from_vector_f64(w1v, {Hs, C}), w2s = cols(W2, r * Hs, (r + 1) * Hs);
    for (Tensor* t : {&Xs, &w1s, &w2s}) t->set_requires_grad(true);
    Tape ts(DType::f64);
    Tensor y;
    {
      TapeGuard gg(&ts);
      y = sp_block(Xs, w1s, w2s, *tp);
    }
    ASSERT_EQ(y.shape(), (Shape{n, C})) << what;
    EXPECT_LE(rel_diff(y, rows(Yref, r * n, (r + 1) * n)), 1e-13) << what << " y";
    ts.backward(y, seed_r);
    EXPECT_LE(rel_diff(Xs.grad(), Xf.grad()), 1e-13) << what << " dX";
    expect_same_on_group(*tp, Xs.grad().to_double_vector(), what + " dX");
    EXPECT_LE(rel_diff(w1s.grad(), rows(w1.grad(), r * Hs, (r + 1) * Hs)), 1e-13) << what << " dW1 shard";
    EXPECT_LE(rel_diff(w2s.grad(), cols(w2.grad(), r * Hs, (r + 1) * Hs)), 1e-13) << what << " dW2 shard";

    // Finite differences of the total loss L = Σ_ranks seed_r · y_r, every rank perturbing in step.
    auto total_loss = [&]() {
      NoGradGuard ng;
      const Tensor yy = sp_block(Tensor::from_vector_f64(Xv, {P * n, C}), Tensor::from_vector_f64(w1v, {Hs, C}), w2s,
                                 *tp);
      std::vector<double> l = {dot(seed_r.to_double_vector(), yy.to_double_vector())};
      tp->all_reduce(std::span<double>(l), ReduceOp::sum);
      return l[0];
    };
    EXPECT_EQ(ptrain::testing::expect_gradients_match(total_loss, Xv, Xs.grad().to_double_vector(), what + " dX (FD)"),
              0);
    // A shard is one rank's own variable: ranks take turns perturbing theirs (all ranks evaluate
    // the total loss in step; only the owner compares).
    const auto an = w1s.grad().to_double_vector();
    const double h = 1e-6;
    int bad = 0;
    for (int64_t q = 0; q < P; ++q)
      for (size_t i = 0; i < w1v.size(); ++i) {
        const bool mine = q == r;
        const double saved = w1v[i];
        if (mine) w1v[i] = saved + h;
        const double lp = total_loss();
        if (mine) w1v[i] = saved - h;
        const double lm = total_loss();
        w1v[i] = saved;
        const double fd = (lp - lm) / (2 * h);
        if (mine && !(std::fabs(fd - an[i]) <= 1e-8 + 1e-6 * std::max(std::fabs(fd), std::fabs(an[i])))) {
          ADD_FAILURE() << what << " dW1 shard [" << i << "]: finite difference " << fd << " vs analytic " << an[i];
          ++bad;
        }
      }
    EXPECT_EQ(bad, 0) << what;
  }
}

}  // namespace
}  // namespace ptrain::parallel
