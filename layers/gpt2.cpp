// layers/gpt2.cpp — the GPT-2 architecture (Hugging Face GPT2LMHeadModel names).
//
//   transformer.wte.weight                  [Vp, C]  token embedding (tied with the head by default)
//   transformer.wpe.weight                  [max_seq_len, C] learned positions
//   transformer.h.{i}.ln_1 / ln_2           norm (default layernorm)
//   transformer.h.{i}.attn.c_attn / c_proj  attention (default fused_mha)
//   transformer.h.{i}.mlp.c_fc / c_proj     mlp (default gelu)
//   transformer.ln_f                        final norm
//   lm_head.weight                          only when tie_embeddings is false
// Internally projections are [out, in]; Hugging Face's Conv1D stores [in, out], so
// external_weights() marks those .weight tensors as transposed.
#include "layers/model.h"
#include "parallel/tp_ops.h"

namespace ptrain::layers {
namespace {
class GPT2 : public CausalLM {
 public:
  explicit GPT2(const ModelSpec& s) : CausalLM(s) {
    auto& tr = register_module("transformer", std::make_unique<ModuleList>());
    // The tied head on a last stage that is not also the first reads a replica of wte.
    if (s.build_embed || (s.build_head && s.tie_embeddings)) {
      wte_ = &tr.add("wte", std::make_unique<Embedding>(s.padded_vocab, s.hidden, s.dtype,
                                                        Init::Normal(0.02, s.vocab_size), s.tp));
      if (!s.build_embed) wte_->mark_tied_replica();
    }
    if (s.build_embed)
      wpe_ = &tr.add("wpe", std::make_unique<Embedding>(s.max_seq_len, s.hidden, s.dtype, Init::Normal(0.02)));
    auto& h = tr.add("h", std::make_unique<ModuleList>());
    const std::string norm = s.norm.empty() ? "layernorm" : s.norm;
    const std::string attn = s.attention.empty() ? "fused_mha" : s.attention;
    const std::string mlp = s.mlp.empty() ? "gelu" : s.mlp;
    for (int i = 0; i < s.layers; ++i) add_block(h, i, {"ln_1", "attn", "ln_2", "mlp"}, norm, attn, mlp);
    if (s.build_head) {
      ln_f_ = &tr.add("ln_f", make_layer(LayerKind::norm, norm, s, -1));
      if (!s.tie_embeddings)
        lm_head_ = &register_module("lm_head", std::make_unique<Linear>(s.hidden, s.padded_vocab, false, s.dtype,
                                                                        Init::Normal(0.02, s.vocab_size),
                                                                        column_sharding(s)));
    }
  }

  Tensor embed(const Tensor& ids, const ForwardCtx& ctx) override {
    PT_CHECK(spec_.build_embed, "embed() on a rank without the embedding");
    const int64_t B = ctx.batch, T = ctx.seq_len;
    std::vector<int32_t> pos(static_cast<size_t>(B * T));
    for (int64_t i = 0; i < B * T; ++i) pos[static_cast<size_t>(i)] = static_cast<int32_t>(i % T);
    Tensor p = wpe_->forward(Tensor::from_vector_i32(pos, {B * T}).to_device(ids.device()));  // [B*T, C]
    Tensor h = ops::add(ops::view(wte_->forward(ids), {B * T, spec_.hidden}), p);
    return spec_.sequence_parallel && spec_.tp_size() > 1 ? parallel::split_sequence(h, *spec_.tp) : h;
  }
  Tensor head(const Tensor& h, const ForwardCtx& ctx) override {
    PT_CHECK(spec_.build_head, "head() on a rank without the LM head");
    Tensor x = tp_enter(ln_f_->forward(h, ctx), spec_);
    return ops::linear(x, lm_head_ ? lm_head_->weight() : wte_->weight());  // [B*T, Vp/tp]
  }

  std::vector<ExternalWeight> external_weights() override {
    std::vector<ExternalWeight> r;
    auto ends_with = [](const std::string& s, const std::string& t) {
      return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
    };
    for (auto& np : named_parameters()) {
      const bool conv1d = ends_with(np.name, ".c_attn.weight") || ends_with(np.name, ".c_proj.weight") ||
                          ends_with(np.name, ".c_fc.weight");
      const bool vocab = np.name == "transformer.wte.weight" || np.name == "lm_head.weight";
      r.push_back({np.name, np.param, conv1d, vocab ? spec_.vocab_size : -1});
    }
    return r;
  }

  std::vector<NamedParameter> piece_parameters(const std::string& piece) override {
    if (piece == "embed") {
      auto r = params_with_prefix(*this, "transformer.wte.");
      for (auto& p : params_with_prefix(*this, "transformer.wpe.")) r.push_back(p);
      return r;
    }
    if (piece == "head") {
      auto r = params_with_prefix(*this, "transformer.ln_f.");
      for (auto& p : params_with_prefix(*this, "lm_head.")) r.push_back(p);
      return r;
    }
    PT_CHECK(piece.rfind("block.", 0) == 0, "unknown model piece '{}'", piece);
    return params_with_prefix(*this, "transformer.h." + piece.substr(6) + ".");
  }

 private:
  Embedding *wte_ = nullptr, *wpe_ = nullptr;
  Layer* ln_f_ = nullptr;
  Linear* lm_head_ = nullptr;
};
}  // namespace

PTRAIN_REGISTER_LAYER(arch, "gpt2", [](const ModelSpec& s, int) { return std::make_unique<GPT2>(s); },
                      "GPT-2: LayerNorm with bias, learned positions, GELU MLP, biases, tied embeddings (HF GPT2LMHeadModel names)");
}  // namespace ptrain::layers
