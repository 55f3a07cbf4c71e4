// layers/model.cpp — Linear, Embedding, DecoderBlock and CausalLM.
#include "layers/model.h"

#include <algorithm>

#include "core/cpu/kernels.h"
#include "core/recompute.h"
#include "parallel/tp_ops.h"

namespace ptrain::layers {

Tensor tp_enter(const Tensor& x, const ModelSpec& s) {
  if (s.tp_size() == 1) return x;
  return s.sequence_parallel ? parallel::gather_sequence(x, *s.tp) : parallel::copy_to_tp(x, *s.tp);
}

Tensor tp_exit(const Tensor& x, const ModelSpec& s) {
  if (s.tp_size() == 1) return x;
  return s.sequence_parallel ? parallel::reduce_scatter_sequence(x, *s.tp) : parallel::reduce_from_tp(x, *s.tp);
}

Sharding column_sharding(const ModelSpec& s, int groups) { return {0, s.tp_size(), s.tp_rank(), groups}; }
Sharding row_sharding(const ModelSpec& s) { return {1, s.tp_size(), s.tp_rank(), 1}; }

Linear::Linear(int64_t in, int64_t out, bool bias, DType dtype, Init init, Sharding sharding) {
  PT_CHECK(!sharding.sharded() || sharding.dim == 0, "Linear: only output features can be split (use RowParallelLinear)");
  weight_ = register_parameter("weight", {out, in}, dtype, init, sharding);
  if (bias) {
    Sharding bs = sharding;
    if (!bs.sharded()) bs = {};
    bias_ = register_parameter("bias", {out}, dtype, Init::Zeros(), bs);
  }
}

RowParallelLinear::RowParallelLinear(int64_t in, int64_t out, bool bias, const ModelSpec& s, Init init) : spec_(&s) {
  weight_ = register_parameter("weight", {out, in}, s.dtype, init, row_sharding(s));
  if (bias) {
    bias_ = register_parameter("bias", {out}, s.dtype, Init::Zeros());
    if (s.tp_size() > 1) parameter("bias").tp_partial_grad = true;  // only TP rank 0 adds it
  }
}

Tensor RowParallelLinear::forward(const Tensor& x) const {
  if (spec_->tp_size() == 1) return ops::linear(x, weight_, bias_);
  return tp_exit(ops::linear(x, weight_, spec_->tp_rank() == 0 ? bias_ : Tensor()), *spec_);
}

Embedding::Embedding(int64_t rows, int64_t dim, DType dtype, Init init, parallel::Communicator* tp)
    : tp_(tp && tp->size() > 1 ? tp : nullptr) {
  Sharding sh;
  if (tp_) sh = {0, tp_->size(), tp_->rank(), 1};
  weight_ = register_parameter("weight", {rows, dim}, dtype, init, sh);
  if (tp_) row_start_ = rows / tp_->size() * tp_->rank();
}

Tensor Embedding::forward(const Tensor& ids) const {
  if (!tp_) return ops::embedding(ids, weight_);
  return parallel::vocab_parallel_embedding(ids, weight_, row_start_, *tp_);
}

DecoderBlock::DecoderBlock(const ModelSpec& spec, int layer, const BlockNames& names, const std::string& norm,
                           const std::string& attention, const std::string& mlp) {
  norm1_ = &register_module(names.norm1, make_layer(LayerKind::norm, norm, spec, layer));
  attn_ = &register_module(names.attn, make_layer(LayerKind::attention, attention, spec, layer));
  norm2_ = &register_module(names.norm2, make_layer(LayerKind::norm, norm, spec, layer));
  mlp_ = &register_module(names.mlp, make_layer(LayerKind::mlp, mlp, spec, layer));
}

Tensor DecoderBlock::forward(const Tensor& x, const ForwardCtx& ctx) {
  Tensor h = ops::add(x, attn_->forward(norm1_->forward(x, ctx), ctx));
  return ops::add(h, mlp_->forward(norm2_->forward(h, ctx), ctx));
}

Shape ExternalWeight::external_shape() const {
  Shape s = param->full_shape;
  if (rows >= 0) s[0] = rows;
  if (transpose) std::swap(s[0], s[1]);
  return s;
}

CausalLM::CausalLM(const ModelSpec& spec) : spec_(spec) {
  const int64_t D = spec.head_dim();
  if (D % 2 == 0) {
    const DType t = spec.dtype == DType::f64 ? DType::f64 : DType::f32;
    rope_cos_ = Tensor::empty({spec.max_seq_len, D / 2}, t);
    rope_sin_ = Tensor::empty({spec.max_seq_len, D / 2}, t);
    if (t == DType::f64)
      cpu::rope_tables<double>(rope_cos_.data<double>(), rope_sin_.data<double>(), spec.max_seq_len, D,
                               spec.rope_theta);
    else
      cpu::rope_tables<float>(rope_cos_.data<float>(), rope_sin_.data<float>(), spec.max_seq_len, D, spec.rope_theta);
    // computed on the host (the CPU path's exact values), kept where the model lives
    rope_cos_ = rope_cos_.to_device(spec.device);
    rope_sin_ = rope_sin_.to_device(spec.device);
  }
}

ForwardCtx CausalLM::make_ctx(int64_t batch, int64_t seq_len) const {
  PT_CHECK(seq_len <= spec_.max_seq_len, "sequence length {} exceeds model.max_seq_len {}", seq_len, spec_.max_seq_len);
  return {batch, seq_len, rope_cos_, rope_sin_};
}

void CausalLM::add_block(ModuleList& list, int i, const BlockNames& names, const std::string& norm,
                         const std::string& attention, const std::string& mlp) {
  PT_CHECK(static_cast<size_t>(i) == blocks_.size(), "blocks must be added in order (got {} after {})", i,
           blocks_.size());
  const bool mine = spec_.blocks.empty() || std::find(spec_.blocks.begin(), spec_.blocks.end(), i) != spec_.blocks.end();
  if (!mine) {
    blocks_.push_back(nullptr);
    return;
  }
  auto& b = list.add(std::to_string(i), std::make_unique<DecoderBlock>(spec_, i, names, norm, attention, mlp));
  blocks_.push_back(&b);
}

Tensor CausalLM::block(int i, const Tensor& h, const ForwardCtx& ctx) {
  PT_CHECK(i >= 0 && i < num_blocks() && has_block(i), "block {} is not built on this rank", i);
  // A recompute region (core/recompute.h): under train.recompute: full only h is kept and the
  // block's forward reruns inside its backward. ctx is copied: the caller's dies before backward.
  DecoderBlock* blk = blocks_[static_cast<size_t>(i)];
  return recompute_region(RegionKind::block, {h},
                          [blk, ctx](const std::vector<Tensor>& in) { return blk->forward(in[0], ctx); });
}

Tensor CausalLM::loss_from_logits(const Tensor& logits, const Tensor& targets, double weight) const {
  if (spec_.tp_size() == 1) return ops::cross_entropy(logits, targets.view({-1}), spec_.vocab_size, weight);
  const int64_t start = spec_.padded_vocab / spec_.tp_size() * spec_.tp_rank();
  return parallel::vocab_parallel_cross_entropy(logits, targets.view({-1}), start, spec_.vocab_size, weight, *spec_.tp);
}

Tensor CausalLM::forward(const Tensor& ids) {
  PT_CHECK(ids.ndim() == 2, "forward: ids must be [B, T], got {}", shape_str(ids.shape()));
  PT_CHECK(spec_.build_embed && spec_.build_head && spec_.blocks.empty(),
           "forward: this rank holds only part of the model (a pipeline stage)");
  ForwardCtx ctx = make_ctx(ids.dim(0), ids.dim(1));
  Tensor h = embed(ids, ctx);
  for (int i = 0; i < num_blocks(); ++i) h = block(i, h, ctx);
  return head(h, ctx);
}

Tensor CausalLM::loss(const Tensor& ids, const Tensor& targets, double weight) {
  return loss_from_logits(forward(ids), targets, weight);
}

std::vector<NamedParameter> params_with_prefix(Module& root, const std::string& prefix) {
  std::vector<NamedParameter> r;
  for (auto& np : root.named_parameters())
    if (np.name.rfind(prefix, 0) == 0) r.push_back(np);
  return r;
}

}  // namespace ptrain::layers
