// parallel/tp_ops.h — tensor- and sequence-parallel autograd ops (Megatron's mappings,
// vocab-parallel embedding and cross-entropy).
//
// Each function records itself on the current tape as the ops of core/ops.h do (OpIds
// tp_copy … vocab_embedding of core/ops_table.h, those for which op_lives_in_parallel() holds)
// and talks to the other ranks of its TP group only through the Communicator it is given.
// Invariants:
//  * Every rank of `tp` calls the same ops in the same order, forward and backward (the
//    collectives inside must match up, as with any Communicator call).
//  * `tp` must outlive the backward pass of the tape the op was recorded on (backward closures
//    hold a pointer to it).
//  * f64 tensors are exact (f64 all-reduces); f32/bf16/f16 are computed in fp32 and rounded once
//    where they are stored, as core ops do (the Communicator reduces low precision in fp32 and
//    rounds once).
//  * On a group of size 1 every op is the identity, or the plain core op, with no copy where
//    the result can share storage: copy_to_tp, reduce_from_tp, gather_sequence,
//    reduce_scatter_sequence and split_sequence return views of their input. The ops are still
//    recorded (one tape entry each) so that a model's tape is the same for every TP size.
//  * Shapes: N rows (tokens), C channels, Vs vocabulary rows/columns of this rank's shard,
//    V the real (unpadded) vocabulary, P = tp.size(); `...` any trailing dims.
#pragma once
#include <cstdint>

#include "core/autograd.h"
#include "core/tensor.h"
#include "parallel/comm.h"

namespace ptrain::parallel {

/// Megatron f (entry of a column-parallel region): y = x (shares x's storage);
/// backward dx = Σ_tp dy (all-reduce).
Tensor copy_to_tp(const Tensor& x, Communicator& tp);

/// Megatron g (exit of a row-parallel region): y = Σ_tp x (all-reduce into a new tensor);
/// backward dx = dy.
Tensor reduce_from_tp(const Tensor& x, Communicator& tp);

/// Sequence parallel, entry of a TP region: x [n, ...] (this rank's rows) -> y [P·n, ...], the
/// rows of every rank in rank order (all-gather); backward dx = this rank's rows of Σ_tp dy
/// (reduce-scatter).
Tensor gather_sequence(const Tensor& x, Communicator& tp);

/// Sequence parallel, exit of a TP region: x [P·n, ...] (a partial sum) -> y [n, ...] = this
/// rank's rows of Σ_tp x (reduce-scatter); backward dx = all-gather of dy.
Tensor reduce_scatter_sequence(const Tensor& x, Communicator& tp);

/// Sequence parallel: x [P·n, ...] (identical on every rank) -> y [n, ...] = rows
/// [rank·n, (rank+1)·n) (a view, no communication); backward dx = all-gather of dy.
Tensor split_sequence(const Tensor& x, Communicator& tp);

/// Vocab-parallel cross-entropy (Megatron). logits_shard [N, Vs] holds the columns
/// [vocab_start, vocab_start + Vs) of the padded vocabulary; columns >= V are padding (masked
/// as -inf). targets i32 [N] are global ids, target < 0 ignored, 0 <= target < V otherwise.
///   lse_i = M_i + log Σ_tp exp(lse_i^(r) - M_i),  M_i = max_tp lse_i^(r),
///   lse_i^(r) = log Σ_{j in shard r, j < V} exp(logit_ij)          (per-shard partials, double)
///   loss = weight · Σ_i (lse_i - logit_{i, target_i})               (sum in index order, double)
/// with the target logit summed over the group (zero on ranks that do not hold it). Two
/// all-reduces of doubles per call (max of [N], sum of [3N]); no rank holds the full logits.
/// Returns a 1-element tensor, f32 (f64 for f64 logits) as ops::cross_entropy, equal on every
/// rank; with P = 1, vocab_start = 0 it equals ops::cross_entropy(logits, targets, V, weight) bit
/// for bit. Throws (on every rank alike) if a target lies in no rank's shard.
/// Backward (no communication): dlogits_shard = dloss · weight · (softmax_shard - onehot_shard);
/// padding columns and ignored rows get exactly 0.
Tensor vocab_parallel_cross_entropy(const Tensor& logits_shard, const Tensor& targets, int64_t vocab_start,
                                    int64_t V, double weight, Communicator& tp);

/// Vocab-parallel embedding. weight_shard [Vs, C] holds rows [vocab_start, vocab_start + Vs) of
/// the (padded) table; ids i32 [...] are global ids >= 0.
///   y[..., :] = Σ_tp (weight_shard[id - vocab_start, :] if the id is in the shard, else 0)
/// (one all-reduce of y; exact, since one rank contributes each row). With P = 1 every id must
/// lie in the shard (as ops::embedding checks) and the result equals ops::embedding.
/// Backward (no communication; the incoming gradient is identical on every rank):
/// dweight_shard[id - vocab_start, :] += dy[i, :] for the ids in the shard, in token order
/// (deterministic, as core embedding backward), deferred with BackwardCtx::weight_grad.
Tensor vocab_parallel_embedding(const Tensor& ids, const Tensor& weight_shard, int64_t vocab_start,
                                Communicator& tp);

}  // namespace ptrain::parallel
