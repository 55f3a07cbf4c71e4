// layers/llama.cpp — the LLaMA architecture (Hugging Face LlamaForCausalLM names).
//
//   model.embed_tokens.weight                 [Vp, C]   (rows >= vocab are zero padding)
//   model.layers.{i}.input_layernorm          norm (default rmsnorm)
//   model.layers.{i}.self_attn.{q,k,v,o}_proj attention (default rope_gqa)
//   model.layers.{i}.post_attention_layernorm norm
//   model.layers.{i}.mlp.{gate,up,down}_proj  mlp (default swiglu)
//   model.norm.weight                         [C]
//   lm_head.weight                            [Vp, C]   (absent when tie_embeddings)
#include "layers/model.h"
#include "parallel/tp_ops.h"

namespace ptrain::layers {
namespace {
class Llama : public CausalLM {
 public:
  explicit Llama(const ModelSpec& s) : CausalLM(s) {
    auto& model = register_module("model", std::make_unique<ModuleList>());
    // The tied head on a last stage that is not also the first reads a replica of the embedding.
    if (s.build_embed || (s.build_head && s.tie_embeddings)) {
      embed_ = &model.add("embed_tokens", std::make_unique<Embedding>(s.padded_vocab, s.hidden, s.dtype,
                                                                      Init::Normal(0.02, s.vocab_size), s.tp));
      if (!s.build_embed) embed_->mark_tied_replica();
    }
    auto& layers = model.add("layers", std::make_unique<ModuleList>());
    const std::string norm = s.norm.empty() ? "rmsnorm" : s.norm;
    const std::string attn = s.attention.empty() ? "rope_gqa" : s.attention;
    const std::string mlp = s.mlp.empty() ? "swiglu" : s.mlp;
    for (int i = 0; i < s.layers; ++i)
      add_block(layers, i, {"input_layernorm", "self_attn", "post_attention_layernorm", "mlp"}, norm, attn, mlp);
    if (s.build_head) {
      norm_ = &model.add("norm", make_layer(LayerKind::norm, norm, s, -1));
      if (!s.tie_embeddings)
        lm_head_ = &register_module("lm_head", std::make_unique<Linear>(s.hidden, s.padded_vocab, false, s.dtype,
                                                                        Init::Normal(0.02, s.vocab_size),
                                                                        column_sharding(s)));
    }
  }

  Tensor embed(const Tensor& ids, const ForwardCtx&) override {
    PT_CHECK(spec_.build_embed, "embed() on a rank without the embedding");
    Tensor h = ops::view(embed_->forward(ids), {-1, spec_.hidden});  // [B*T, C]
    return spec_.sequence_parallel && spec_.tp_size() > 1 ? parallel::split_sequence(h, *spec_.tp) : h;
  }
  Tensor head(const Tensor& h, const ForwardCtx& ctx) override {
    PT_CHECK(spec_.build_head, "head() on a rank without the LM head");
    Tensor x = tp_enter(norm_->forward(h, ctx), spec_);
    return ops::linear(x, lm_head_ ? lm_head_->weight() : embed_->weight());  // [B*T, Vp/tp]
  }

  std::vector<ExternalWeight> external_weights() override {
    std::vector<ExternalWeight> r;
    for (auto& np : named_parameters()) {
      const bool vocab = np.name == "model.embed_tokens.weight" || np.name == "lm_head.weight";
      r.push_back({np.name, np.param, false, vocab ? spec_.vocab_size : -1});
    }
    return r;
  }

  std::vector<NamedParameter> piece_parameters(const std::string& piece) override {
    if (piece == "embed") return params_with_prefix(*this, "model.embed_tokens.");
    if (piece == "head") {
      auto r = params_with_prefix(*this, "model.norm.");
      for (auto& p : params_with_prefix(*this, "lm_head.")) r.push_back(p);
      return r;
    }
    PT_CHECK(piece.rfind("block.", 0) == 0, "unknown model piece '{}'", piece);
    return params_with_prefix(*this, "model.layers." + piece.substr(6) + ".");
  }

 private:
  Embedding* embed_ = nullptr;
  Layer* norm_ = nullptr;
  Linear* lm_head_ = nullptr;
};
}  // namespace

PTRAIN_REGISTER_LAYER(arch, "llama", [](const ModelSpec& s, int) { return std::make_unique<Llama>(s); },
                      "LLaMA: RMSNorm, RoPE, SwiGLU, grouped-query attention, no biases (HF LlamaForCausalLM names)");
}  // namespace ptrain::layers
