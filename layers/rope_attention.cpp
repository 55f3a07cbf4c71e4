// layers/rope_attention.cpp — LLaMA self-attention: q/k/v/o projections without bias,
// rotate-half RoPE on q and k, causal softmax attention with grouped-query heads.
// Parameters (HF names): q_proj [Hq·D, C], k_proj/v_proj [Hkv·D, C], o_proj [C, Hq·D]
// (o_proj drawn with std 0.02/sqrt(2·layers)).
#include <cmath>

#include "layers/model.h"

namespace ptrain::layers {
namespace {
class RopeAttention : public Layer {
 public:
  // Under TP each rank holds heads/tp query heads and kv_heads/tp key/value heads: the
  // query heads of rank r use exactly the KV groups of rank r (kv_heads % tp == 0).
  explicit RopeAttention(const ModelSpec& s)
      : spec_(s), hq_(s.heads / s.tp_size()), hkv_(s.kv_heads / s.tp_size()), d_(s.head_dim()) {
    PT_USER_CHECK(d_ % 2 == 0, "model.hidden / model.heads = {} must be even for RoPE", d_);
    const Init w = Init::Normal(0.02), o = Init::Normal(0.02 / std::sqrt(2.0 * static_cast<double>(s.layers)));
    const Sharding col = column_sharding(s);
    q_ = &register_module("q_proj", std::make_unique<Linear>(s.hidden, s.heads * d_, false, s.dtype, w, col));
    k_ = &register_module("k_proj", std::make_unique<Linear>(s.hidden, s.kv_heads * d_, false, s.dtype, w, col));
    v_ = &register_module("v_proj", std::make_unique<Linear>(s.hidden, s.kv_heads * d_, false, s.dtype, w, col));
    o_ = &register_module("o_proj", std::make_unique<RowParallelLinear>(s.heads * d_, s.hidden, false, s, o));
  }
  // x [B*T, C] (or this TP rank's rows under sequence parallelism) -> same
  Tensor forward(const Tensor& in, const ForwardCtx& c) override {
    const int64_t B = c.batch, T = c.seq_len;
    const Tensor x = tp_enter(in, spec_);  // [B*T, C]
    Tensor q = ops::rope(ops::view(q_->forward(x), {B, T, hq_, d_}), c.rope_cos, c.rope_sin);   // [B, T, Hq, D]
    Tensor k = ops::rope(ops::view(k_->forward(x), {B, T, hkv_, d_}), c.rope_cos, c.rope_sin);  // [B, T, Hkv, D]
    Tensor v = ops::view(v_->forward(x), {B, T, hkv_, d_});                                      // [B, T, Hkv, D]
    Tensor y = ops::attention(q, k, v);                                                          // [B, T, Hq, D]
    return o_->forward(ops::view(y, {B * T, hq_ * d_}));
  }

 private:
  const ModelSpec& spec_;
  int64_t hq_, hkv_, d_;
  Linear *q_, *k_, *v_;
  RowParallelLinear* o_;
};
}  // namespace

PTRAIN_REGISTER_LAYER(attention, "rope_gqa", [](const ModelSpec& s, int) { return std::make_unique<RopeAttention>(s); },
                      "LLaMA attention: q/k/v/o_proj, RoPE (rotate-half), grouped-query heads");
}  // namespace ptrain::layers
