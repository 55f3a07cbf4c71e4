// parallel/tp_ops.cpp — the TP/SP mappings and the vocab-parallel embedding and cross-entropy.
//
// The mappings move data only through the Communicator (which handles low precision and
// devices); the vocab-parallel ops run the CPU kernels of core/cpu/kernels.h on the shard, so
// their row arithmetic is the core ops' own (hence bit-identical to them on one rank).
// Backward closures capture SavedTensors and a pointer to the group.
#include "parallel/tp_ops.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <span>
#include <vector>

#include "core/cpu/kernels.h"

namespace ptrain::parallel {

namespace {

/// Calls f(T{}) with T = double for f64 tensors and float for f32/bf16/f16 (as core/ops.cpp).
template <class F> void dispatch(const Tensor& t, F&& f) {
  if (t.dtype() == DType::f64)
    f(double{});
  else {
    PT_CHECK(t.dtype() != DType::i32, "float op given an i32 tensor");
    f(float{});
  }
}

void check_float(const Tensor& t, const char* op, const char* what) {
  PT_CHECK(t.defined(), "{}: {} is undefined", op, what);
  PT_CHECK(is_float(t.dtype()), "{}: {} must be a float tensor, got {}", op, what, dtype_name(t.dtype()));
}

void check_host(const Tensor& t, const char* op, const char* what) {
  PT_CHECK(t.device() == Device::cpu, "{}: {} is on {}; the CPU op needs host tensors", op, what,
           device_name(t.device()));
}

void check_rows(const Tensor& x, const char* op) {
  check_float(x, op, "x");
  PT_CHECK(x.ndim() >= 1, "{}: x must have a row dimension, got a scalar", op);
}

/// x's shape with dim 0 multiplied by `num` and divided by `den`.
Shape rows_scaled(const Tensor& x, int64_t num, int64_t den) {
  Shape s = x.shape();
  s[0] = s[0] * num / den;
  return s;
}

/// y = x as a view (no copy), recorded as `op` with an identity backward. Without a tape, x itself.
Tensor identity_op(const Tensor& x, OpId op) {
  Tape* tape = Tape::recording({&x});
  if (!tape) return x;
  Tensor y = x.view(x.shape());
  tape->record(op, {&x}, {&y}, [](BackwardCtx& ctx) { ctx.accumulate(0, ctx.take_grad_out()); });
  return y;
}

constexpr int64_t kParallelMin = 32768;
constexpr int64_t kMinColBlock = 64;
bool run_parallel(int64_t work) { return work >= kParallelMin && omp_get_max_threads() > 1 && !omp_in_parallel(); }

/// out[i, :] = table[lid[i], :] where lid[i] >= 0; other rows are left as they are.
template <class T> void shard_embedding_forward(const int32_t* lid, const T* table, T* out, int64_t n, int64_t C) {
  const auto rows = [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      if (lid[i] >= 0)
        std::memcpy(out + i * C, table + static_cast<int64_t>(lid[i]) * C, static_cast<size_t>(C) * sizeof(T));
  };
  if (run_parallel(n * C)) {
#pragma omp parallel
    {
      const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
      rows(n * t / nt, n * (t + 1) / nt);
    }
  } else {
    rows(0, n);
  }
}

/// dtable[lid[i], :] += dout[i, :] for i in order where lid[i] >= 0. Threads split the columns,
/// never the tokens (as cpu::embedding_backward): bit-identical for any thread count.
template <class T> void shard_embedding_backward(const int32_t* lid, const T* dout, T* dtable, int64_t n, int64_t C) {
  const auto cols = [&](int64_t j0, int64_t j1) {
    for (int64_t i = 0; i < n; ++i) {
      if (lid[i] < 0) continue;
      const T* __restrict__ src = dout + i * C;
      T* __restrict__ dst = dtable + static_cast<int64_t>(lid[i]) * C;
      for (int64_t j = j0; j < j1; ++j) dst[j] += src[j];
    }
  };
  if (run_parallel(n * C) && C >= 2 * kMinColBlock) {
#pragma omp parallel
    {
      const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t nb = std::min<int64_t>(nt, C / kMinColBlock);
      if (t < nb) {
        const int64_t j0 = (C * t / nb) & ~int64_t(15);
        const int64_t j1 = t + 1 == nb ? C : (C * (t + 1) / nb) & ~int64_t(15);
        cols(j0, j1);
      }
    }
  } else {
    cols(0, C);
  }
}

}  // namespace

// ------------------------------------------------------------------ Megatron f and g

Tensor copy_to_tp(const Tensor& x, Communicator& tp) {
  check_float(x, "copy_to_tp", "x");
  Tape* tape = Tape::recording({&x});
  if (!tape) return x;
  Tensor y = x.view(x.shape());  // shares x's storage
  Communicator* comm = &tp;
  tape->record(OpId::tp_copy, {&x}, {&y}, [comm](BackwardCtx& ctx) {
    Tensor g = ctx.take_grad_out();  // nothing else sees it: reduce in place
    comm->all_reduce(g, ReduceOp::sum);
    ctx.accumulate(0, std::move(g));
  });
  return y;
}

Tensor reduce_from_tp(const Tensor& x, Communicator& tp) {
  check_float(x, "reduce_from_tp", "x");
  if (tp.size() == 1) return identity_op(x, OpId::tp_reduce);
  Tensor y = x.clone();
  tp.all_reduce(y, ReduceOp::sum);
  if (Tape* tape = Tape::recording({&x})) {
    tape->record(OpId::tp_reduce, {&x}, {&y}, [](BackwardCtx& ctx) { ctx.accumulate(0, ctx.take_grad_out()); });
  }
  return y;
}

// ------------------------------------------------------------------ sequence parallel

Tensor gather_sequence(const Tensor& x, Communicator& tp) {
  check_rows(x, "gather_sequence");
  const int64_t P = tp.size();
  if (P == 1) return identity_op(x, OpId::sp_gather);
  Tensor y = Tensor::empty(rows_scaled(x, P, 1), x.dtype(), x.device());  // [P·n, ...]
  tp.all_gather(x, y);
  if (Tape* tape = Tape::recording({&x})) {
    Communicator* comm = &tp;
    const Shape xs = x.shape();
    tape->record(OpId::sp_gather, {&x}, {&y}, [comm, xs](BackwardCtx& ctx) {
      const Tensor& g = ctx.grad_out();  // [P·n, ...]
      Tensor part = Tensor::empty(xs, g.dtype(), g.device());  // [n, ...]
      comm->reduce_scatter(g, part);
      ctx.accumulate(0, std::move(part));
    });
  }
  return y;
}

Tensor reduce_scatter_sequence(const Tensor& x, Communicator& tp) {
  check_rows(x, "reduce_scatter_sequence");
  const int64_t P = tp.size();
  PT_CHECK(x.dim(0) % P == 0, "reduce_scatter_sequence: {} rows of x {} do not split over {} ranks of group '{}'",
           x.dim(0), shape_str(x.shape()), P, tp.name());
  if (P == 1) return identity_op(x, OpId::sp_reduce_scatter);
  Tensor y = Tensor::empty(rows_scaled(x, 1, P), x.dtype(), x.device());  // [n, ...]
  tp.reduce_scatter(x, y);
  if (Tape* tape = Tape::recording({&x})) {
    Communicator* comm = &tp;
    const Shape xs = x.shape();
    tape->record(OpId::sp_reduce_scatter, {&x}, {&y}, [comm, xs](BackwardCtx& ctx) {
      const Tensor& g = ctx.grad_out();  // [n, ...]
      Tensor full = Tensor::empty(xs, g.dtype(), g.device());  // [P·n, ...]
      comm->all_gather(g, full);
      ctx.accumulate(0, std::move(full));
    });
  }
  return y;
}

Tensor split_sequence(const Tensor& x, Communicator& tp) {
  check_rows(x, "split_sequence");
  const int64_t P = tp.size();
  PT_CHECK(x.dim(0) % P == 0, "split_sequence: {} rows of x {} do not split over {} ranks of group '{}'", x.dim(0),
           shape_str(x.shape()), P, tp.name());
  if (P == 1) return identity_op(x, OpId::sp_split);
  const int64_t n = x.dim(0) / P, r = tp.rank();
  Tensor y = x.rows(r * n, (r + 1) * n);  // a view: no copy
  if (Tape* tape = Tape::recording({&x})) {
    Communicator* comm = &tp;
    const Shape xs = x.shape();
    tape->record(OpId::sp_split, {&x}, {&y}, [comm, xs](BackwardCtx& ctx) {
      const Tensor& g = ctx.grad_out();  // [n, ...]
      Tensor full = Tensor::empty(xs, g.dtype(), g.device());  // [P·n, ...]
      comm->all_gather(g, full);
      ctx.accumulate(0, std::move(full));
    });
  }
  return y;
}

// ------------------------------------------------------------------ vocab-parallel cross-entropy

Tensor vocab_parallel_cross_entropy(const Tensor& logits_shard, const Tensor& targets, int64_t vocab_start,
                                    int64_t V, double weight, Communicator& tp) {
  const char* op = "vocab_parallel_cross_entropy";
  check_float(logits_shard, op, "logits_shard");
  check_host(logits_shard, op, "logits_shard");
  PT_CHECK(logits_shard.ndim() == 2, "{}: logits_shard must be [N, Vs], got {}", op, shape_str(logits_shard.shape()));
  PT_CHECK(targets.defined() && targets.dtype() == DType::i32 && targets.numel() == logits_shard.dim(0),
           "{}: targets {} for logits_shard {}", op, targets.defined() ? shape_str(targets.shape()) : "undefined",
           shape_str(logits_shard.shape()));
  const int64_t N = logits_shard.dim(0), Vs = logits_shard.dim(1);
  PT_CHECK(V > 0 && vocab_start >= 0, "{}: need V > 0 and vocab_start >= 0, got V = {}, vocab_start = {}", op, V,
           vocab_start);
  if (tp.size() == 1)
    PT_CHECK(vocab_start == 0 && V <= Vs,
             "{}: on a group of one rank the shard [{}, {}) must hold the whole vocabulary V = {}", op, vocab_start,
             vocab_start + Vs, V);
  // Real (unpadded) columns of this shard: [vocab_start, vocab_start + Vl).
  const int64_t Vl = std::clamp<int64_t>(V - vocab_start, 0, Vs);
  const int32_t* tg = targets.data<int32_t>();
  // Local targets for the shard kernel: -1 ignored, [0, Vl) here, Vl elsewhere.
  Tensor local = Tensor::empty({N}, DType::i32);
  int32_t* lt = local.data<int32_t>();
  for (int64_t i = 0; i < N; ++i) {
    PT_CHECK(tg[i] < V, "{}: target {} at row {} is >= vocab {}", op, tg[i], i, V);
    const int64_t t = tg[i];
    lt[i] = t < 0 ? -1 : (t >= vocab_start && t < vocab_start + Vl ? static_cast<int32_t>(t - vocab_start)
                                                                    : static_cast<int32_t>(Vl));
  }

  // Per-shard log-sum-exp, combined over the group: M = max_r lse^(r), S = Σ_r exp(lse^(r) - M).
  std::vector<double> lse(static_cast<size_t>(N));  // [N]
  dispatch(logits_shard, [&](auto tag) {
    using T = decltype(tag);
    cpu::cross_entropy_lse<T>(logits_shard.data<T>(), lse.data(), N, Vs, Vl);
  });
  std::vector<double> M = lse;  // [N]
  tp.all_reduce(std::span<double>(M), ReduceOp::max);
  // [S (N) | target logit (N) | how many ranks hold the target (N)]
  std::vector<double> part(static_cast<size_t>(3 * N), 0.0);
  dispatch(logits_shard, [&](auto tag) {
    using T = decltype(tag);
    const T* x = logits_shard.data<T>();
    for (int64_t i = 0; i < N; ++i) {
      const auto k = static_cast<size_t>(i);
      part[k] = std::isfinite(M[k]) ? std::exp(lse[k] - M[k]) : 0.0;
      if (lt[i] >= 0 && lt[i] < Vl) {
        part[static_cast<size_t>(N) + k] = static_cast<double>(x[i * Vs + lt[i]]);
        part[static_cast<size_t>(2 * N) + k] = 1.0;
      }
    }
  });
  tp.all_reduce(std::span<double>(part), ReduceOp::sum);
  for (int64_t i = 0; i < N; ++i) {
    const auto k = static_cast<size_t>(i);
    // exp(0) = 1 and log(1) = 0 exactly: with one rank lse is the core op's double value.
    lse[k] = std::isfinite(M[k]) ? M[k] + std::log(part[k]) : M[k];
    PT_CHECK(tg[i] < 0 || part[static_cast<size_t>(2 * N) + k] == 1.0,
             "{}: target {} at row {} is held by {} ranks of group '{}' (expected 1)\nHINT: the shards "
             "[vocab_start, vocab_start + Vs) of the ranks must tile [0, V) exactly once",
             op, tg[i], i, part[static_cast<size_t>(2 * N) + k], tp.name());
  }

  const bool f64 = logits_shard.dtype() == DType::f64;
  const DType st = f64 ? DType::f64 : DType::f32;
  Tensor lse_t = Tensor::empty({N}, st), loss = Tensor::empty({1}, st);
  dispatch(logits_shard, [&](auto tag) {
    using T = decltype(tag);
    T* l = lse_t.data<T>();
    double s = 0;  // in index order, in double; each row's loss rounded to T as the core kernel stores it
    for (int64_t i = 0; i < N; ++i) {
      const auto k = static_cast<size_t>(i);
      l[i] = static_cast<T>(lse[k]);
      if (tg[i] >= 0) s += static_cast<double>(static_cast<T>(lse[k] - part[static_cast<size_t>(N) + k]));
    }
    loss.data<T>()[0] = static_cast<T>(s * weight);
  });

  if (Tape* tape = Tape::recording({&logits_shard})) {
    SavedTensor sl = tape->save(logits_shard), slt = tape->save(local), slse = tape->save(lse_t);
    tape->record(OpId::vocab_cross_entropy, {&logits_shard, &targets}, {&loss},
                 [sl, slt, slse, N, Vs, Vl, weight](BackwardCtx& ctx) {
                   const Tensor dloss = ctx.grad_out();
                   Tensor dlogits = ctx.grad_in(0);
                   const Tensor logits = sl.get(), local = slt.get(), lse = slse.get();
                   dispatch(logits, [&](auto tag) {
                     using T = decltype(tag);
                     std::vector<T> drow(static_cast<size_t>(N), static_cast<T>(dloss.data<T>()[0] * weight));
                     cpu::cross_entropy_backward_shard<T>(logits.data<T>(), local.data<int32_t>(), lse.data<T>(),
                                                          drow.data(), dlogits.data<T>(), N, Vs, Vl);
                   });
                   dlogits.round_();
                 });
  }
  return loss;
}

// ------------------------------------------------------------------ vocab-parallel embedding

Tensor vocab_parallel_embedding(const Tensor& ids, const Tensor& weight_shard, int64_t vocab_start,
                                Communicator& tp) {
  const char* op = "vocab_parallel_embedding";
  PT_CHECK(ids.defined() && ids.dtype() == DType::i32, "{}: ids must be i32", op);
  check_float(weight_shard, op, "weight_shard");
  check_host(weight_shard, op, "weight_shard");
  PT_CHECK(weight_shard.ndim() == 2, "{}: weight_shard must be [Vs, C], got {}", op,
           shape_str(weight_shard.shape()));
  PT_CHECK(vocab_start >= 0, "{}: vocab_start = {} < 0", op, vocab_start);
  const int64_t n = ids.numel(), Vs = weight_shard.dim(0), C = weight_shard.dim(1);
  const bool single = tp.size() == 1;
  const int32_t* id = ids.data<int32_t>();
  // Local row of each id: [0, Vs) in this shard, -1 elsewhere.
  Tensor local = Tensor::empty({n}, DType::i32);
  int32_t* lid = local.data<int32_t>();
  for (int64_t i = 0; i < n; ++i) {
    PT_CHECK(id[i] >= 0, "{}: token id {} at position {} is negative", op, id[i], i);
    const bool here = id[i] >= vocab_start && id[i] < vocab_start + Vs;
    if (single)
      PT_CHECK(here, "{}: token id {} at position {} is outside [{}, {})", op, id[i], i, vocab_start,
               vocab_start + Vs);
    lid[i] = here ? static_cast<int32_t>(id[i] - vocab_start) : -1;
  }
  Shape ys = ids.shape();
  ys.push_back(C);
  // [..., C]; with one rank every row is written.
  Tensor y = single ? Tensor::empty(ys, weight_shard.dtype()) : Tensor::zeros(ys, weight_shard.dtype());
  dispatch(weight_shard, [&](auto tag) {
    using T = decltype(tag);
    shard_embedding_forward<T>(lid, weight_shard.data<T>(), y.data<T>(), n, C);
  });
  tp.all_reduce(y, ReduceOp::sum);  // one nonzero contribution per row: exact
  if (Tape* tape = Tape::recording({&weight_shard})) {
    SavedTensor slid = tape->save(local);
    tape->record(OpId::vocab_embedding, {&ids, &weight_shard}, {&y}, [slid, n, C](BackwardCtx& ctx) {
      const Tensor dy = ctx.grad_out();
      Tensor dw = ctx.grad_in(1);
      ctx.weight_grad([slid, dy, dw, n, C]() mutable {
        const Tensor lid = slid.get();
        dispatch(dy, [&](auto tag) {
          using T = decltype(tag);
          shard_embedding_backward<T>(lid.data<int32_t>(), dy.data<T>(), dw.data<T>(), n, C);
        });
        dw.round_();
      });
    });
  }
  return y;
}

}  // namespace ptrain::parallel
