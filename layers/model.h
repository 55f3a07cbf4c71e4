// layers/model.h — building blocks shared by architectures, and the causal LM base.
//
// A CausalLM is three kinds of pieces, so a pipeline stage can own a slice of it:
//   embed(ids [B, T]) -> h [B*T, C]      (first stage)
//   block(i, h) -> h                     (any stage; pre-norm residual blocks)
//   head(h) -> logits [B*T, Vp]          (last stage; Vp = padded vocabulary)
// Rows are in (b, t) order. Architectures (llama.cpp, gpt2.cpp) register themselves
// and decide the names (Hugging Face's) and the layers their blocks use.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/ops.h"
#include "layers/module.h"
#include "layers/registry.h"

namespace ptrain::layers {

// ---- tensor parallelism (Megatron): a column-parallel projection splits its output
// features over the TP ranks, a row-parallel one its input features; between them the
// activations stay split, so one all-reduce per pair (forward and backward) suffices.
// With sequence parallelism the activations outside such pairs hold only this rank's rows.

/// Enters a column-parallel region: identity forward / all-reduce backward (tp_ops copy_to_tp),
/// or all-gather of the rows under sequence parallelism. Identity without TP.
Tensor tp_enter(const Tensor& x, const ModelSpec& s);
/// Leaves a row-parallel region: all-reduce forward / identity backward, or reduce-scatter of
/// the rows under sequence parallelism. Identity without TP.
Tensor tp_exit(const Tensor& x, const ModelSpec& s);
/// Output features split over TP ranks (in `groups` equal sections, e.g. fused q, k, v).
Sharding column_sharding(const ModelSpec& s, int groups = 1);
/// Input features split over TP ranks.
Sharding row_sharding(const ModelSpec& s);

/// y = x · W^T (+ b); W is [out, in] (Hugging Face's nn.Linear layout). With a column
/// sharding, W holds this rank's output rows and b (if any) the same slice.
class Linear : public Module {
 public:
  Linear(int64_t in, int64_t out, bool bias, DType dtype, Init init, Sharding sharding = {});
  Tensor forward(const Tensor& x) const { return ops::linear(x, weight_, bias_); }
  Tensor& weight() { return weight_; }

 private:
  Tensor weight_, bias_;
};

/// Row-parallel y = tp_exit(x_shard · W_shard^T) + b: W [out, in] split along `in`, the bias
/// replicated and added once (by TP rank 0, before the reduction). Without TP a plain Linear.
class RowParallelLinear : public Module {
 public:
  RowParallelLinear(int64_t in, int64_t out, bool bias, const ModelSpec& s, Init init);
  /// x [N, in/tp] -> [N, out] (rows split over TP under sequence parallelism)
  Tensor forward(const Tensor& x) const;

 private:
  const ModelSpec* spec_;
  Tensor weight_, bias_;
};

/// Table lookup; rows >= valid rows are zero padding. With a TP group of size > 1 the rows
/// (the vocabulary) are split over its ranks (vocab-parallel embedding).
class Embedding : public Module {
 public:
  Embedding(int64_t rows, int64_t dim, DType dtype, Init init, parallel::Communicator* tp = nullptr);
  Tensor forward(const Tensor& ids) const;
  Tensor& weight() { return weight_; }
  /// First row of the full table this rank holds.
  int64_t row_start() const { return row_start_; }

 private:
  Tensor weight_;
  parallel::Communicator* tp_ = nullptr;
  int64_t row_start_ = 0;
};

/// A plain container whose children are named by the caller (e.g. "0", "1", ...).
class ModuleList : public Module {
 public:
  template <class M> M& add(const std::string& name, std::unique_ptr<M> m) { return register_module(name, std::move(m)); }
};

/// Child names of a pre-norm block, per architecture.
struct BlockNames {
  std::string norm1, attn, norm2, mlp;
};

/// x + attn(norm1(x)), then + mlp(norm2(...)).
class DecoderBlock : public Module {
 public:
  DecoderBlock(const ModelSpec& spec, int layer, const BlockNames& names, const std::string& norm,
               const std::string& attention, const std::string& mlp);
  Tensor forward(const Tensor& x, const ForwardCtx& ctx);

 private:
  Layer *norm1_, *attn_, *norm2_, *mlp_;
};

/// A tensor as the outside world (Hugging Face files) names and lays it out.
struct ExternalWeight {
  std::string name;        ///< Hugging Face name
  Parameter* param;        ///< our parameter
  bool transpose = false;  ///< stored transposed outside (GPT-2 Conv1D [in, out])
  int64_t rows = -1;       ///< rows kept outside (unpadded vocabulary), -1 = all
  /// The full tensor's shape outside (unsharded, unpadded, transposed as stored).
  Shape external_shape() const;
};

class CausalLM : public Module {
 public:
  explicit CausalLM(const ModelSpec& spec);
  const ModelSpec& spec() const { return spec_; }
  /// Decoder blocks of the whole model (model.layers), built here or not.
  int num_blocks() const { return static_cast<int>(blocks_.size()); }
  /// Whether this rank built block i (pipeline stages build only theirs).
  bool has_block(int i) const { return blocks_.at(static_cast<size_t>(i)) != nullptr; }

  /// Per-pass context (B, T, RoPE tables).
  ForwardCtx make_ctx(int64_t batch, int64_t seq_len) const;
  /// ids [B, T] i32 -> h [B*T, C]
  virtual Tensor embed(const Tensor& ids, const ForwardCtx& ctx) = 0;
  /// block i
  Tensor block(int i, const Tensor& h, const ForwardCtx& ctx);
  /// h [B*T, C] -> logits [B*T, Vp] (with TP: this rank's vocabulary columns [B*T, Vp/tp])
  virtual Tensor head(const Tensor& h, const ForwardCtx& ctx) = 0;
  /// weight · Σ token cross-entropies of logits from head() against targets [B, T]
  /// (vocab-parallel cross-entropy under TP: no rank holds full logits).
  Tensor loss_from_logits(const Tensor& logits, const Tensor& targets, double weight) const;
  /// Whole model: ids [B, T] -> logits [B*T, Vp]
  Tensor forward(const Tensor& ids);
  /// weight · Σ token cross-entropies of predicting targets [B, T] from ids [B, T].
  Tensor loss(const Tensor& ids, const Tensor& targets, double weight);

  /// Every parameter with its Hugging Face name and layout (for init_from and export).
  virtual std::vector<ExternalWeight> external_weights() = 0;
  /// Parameters owned by piece: "embed", "block.<i>", "head" (pipeline partitioning).
  virtual std::vector<NamedParameter> piece_parameters(const std::string& piece) = 0;

 protected:
  /// Builds block i when this rank owns it (spec.blocks), else records its absence.
  void add_block(ModuleList& list, int i, const BlockNames& names, const std::string& norm,
                 const std::string& attention, const std::string& mlp);
  ModelSpec spec_;
  std::vector<DecoderBlock*> blocks_;
  Tensor rope_cos_, rope_sin_;  ///< [max_seq_len, head_dim/2]
};

/// Params of `m` with `prefix` (helper for piece_parameters).
std::vector<NamedParameter> params_with_prefix(Module& root, const std::string& prefix);

}  // namespace ptrain::layers
