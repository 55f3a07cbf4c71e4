// layers/model.cpp — Linear, Embedding, DecoderBlock and CausalLM.
#include "layers/model.h"

#include "core/cpu/kernels.h"

namespace ptrain::layers {

Linear::Linear(int64_t in, int64_t out, bool bias, DType dtype, Init init) {
  weight_ = register_parameter("weight", {out, in}, dtype, init);
  if (bias) bias_ = register_parameter("bias", {out}, dtype, Init::Zeros());
}

Embedding::Embedding(int64_t rows, int64_t dim, DType dtype, Init init) {
  weight_ = register_parameter("weight", {rows, dim}, dtype, init);
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
  Shape s = param->value.shape();
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
  }
}

ForwardCtx CausalLM::make_ctx(int64_t batch, int64_t seq_len) const {
  PT_CHECK(seq_len <= spec_.max_seq_len, "sequence length {} exceeds model.max_seq_len {}", seq_len, spec_.max_seq_len);
  return {batch, seq_len, rope_cos_, rope_sin_};
}

DecoderBlock& CausalLM::add_block(ModuleList& list, int i, const BlockNames& names, const std::string& norm,
                                  const std::string& attention, const std::string& mlp) {
  auto& b = list.add(std::to_string(i), std::make_unique<DecoderBlock>(spec_, i, names, norm, attention, mlp));
  blocks_.push_back(&b);
  return b;
}

Tensor CausalLM::forward(const Tensor& ids) {
  PT_CHECK(ids.ndim() == 2, "forward: ids must be [B, T], got {}", shape_str(ids.shape()));
  ForwardCtx ctx = make_ctx(ids.dim(0), ids.dim(1));
  Tensor h = embed(ids, ctx);
  for (int i = 0; i < num_blocks(); ++i) h = block(i, h, ctx);
  return head(h, ctx);
}

Tensor CausalLM::loss(const Tensor& ids, const Tensor& targets, double weight) {
  Tensor logits = forward(ids);
  return ops::cross_entropy(logits, targets.view({-1}), spec_.vocab_size, weight);
}

std::vector<NamedParameter> params_with_prefix(Module& root, const std::string& prefix) {
  std::vector<NamedParameter> r;
  for (auto& np : root.named_parameters())
    if (np.name.rfind(prefix, 0) == 0) r.push_back(np);
  return r;
}

}  // namespace ptrain::layers
