// layers/fused_attention.cpp — GPT-2 self-attention: one fused c_attn projection
// (q, k, v in that order) with bias, causal softmax attention, c_proj with bias.
// Internal layout [out, in]; Hugging Face stores these as Conv1D [in, out] (the
// gpt2 architecture transposes at the import/export boundary).
#include <cmath>

#include "layers/model.h"

namespace ptrain::layers {
namespace {
class FusedAttention : public Layer {
 public:
  // Under TP c_attn's q, k and v sections are each split by heads (3 sections x tp parts).
  explicit FusedAttention(const ModelSpec& s)
      : spec_(s), h_(s.heads / s.tp_size()), d_(s.head_dim()), c_(s.hidden / s.tp_size()) {
    PT_USER_CHECK(s.kv_heads == s.heads, "model.kv_heads = {} but the fused (GPT-2) attention needs kv_heads == heads = {}",
                  s.kv_heads, s.heads);
    const Init o = Init::Normal(0.02 / std::sqrt(2.0 * static_cast<double>(s.layers)));
    qkv_ = &register_module("c_attn", std::make_unique<Linear>(s.hidden, 3 * s.hidden, true, s.dtype,
                                                               Init::Normal(0.02), column_sharding(s, 3)));
    proj_ = &register_module("c_proj", std::make_unique<RowParallelLinear>(s.hidden, s.hidden, true, s, o));
  }
  Tensor forward(const Tensor& x, const ForwardCtx& c) override {
    const int64_t B = c.batch, T = c.seq_len;
    auto parts = ops::split(qkv_->forward(tp_enter(x, spec_)), {c_, c_, c_});  // 3 × [B*T, C/tp]
    Tensor q = ops::view(parts[0], {B, T, h_, d_});
    Tensor k = ops::view(parts[1], {B, T, h_, d_});
    Tensor v = ops::view(parts[2], {B, T, h_, d_});
    Tensor y = ops::attention(q, k, v);  // [B, T, H, D]
    return proj_->forward(ops::view(y, {B * T, c_}));
  }

 private:
  const ModelSpec& spec_;
  int64_t h_, d_, c_;
  Linear* qkv_;
  RowParallelLinear* proj_;
};
}  // namespace

PTRAIN_REGISTER_LAYER(attention, "fused_mha",
                      [](const ModelSpec& s, int) { return std::make_unique<FusedAttention>(s); },
                      "GPT-2 attention: fused c_attn (q,k,v) and c_proj with biases, no RoPE");
}  // namespace ptrain::layers
