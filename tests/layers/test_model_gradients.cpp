// tests/layers/test_model_gradients.cpp — whole-model gradients against finite differences,
// and the Hugging Face names of the architectures' parameters.
//
// Tiny f64 models are built through the registry (layers::make_model), as the trainer builds
// them: llama with grouped-query attention and an untied head; gpt2 (LayerNorm with bias,
// learned positions, GELU MLP, biases, tied embeddings); llama with the contrib GEGLU MLP,
// LayerNorm and tied embeddings. All have a vocabulary of 11 padded to 16. Invariants checked:
//  * every element of every parameter's tape gradient (Tape::backward of CausalLM::loss) equals
//    the central finite difference of the loss re-run in no-grad mode on the perturbed weights;
//  * gradients of padding rows (rows >= vocab_size of the embedding and head) are exactly zero;
//  * the comparison catches a gradient element that is wrong by 1e-3 relative (a planted bug);
//  * llama's parameters carry LlamaForCausalLM's names and [out, in] shapes; gpt2's
//    external_weights() carry GPT2LMHeadModel's names, Conv1D [in, out] shapes, unpadded vocab.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "layers/model.h"
#include "layers/registry.h"
#include "tests/core/gradcheck.h"

namespace ptrain {
namespace {

using layers::CausalLM;
using layers::Init;
using layers::LayerKind;
using layers::ModelSpec;
using layers::NamedParameter;
using testing::expect_gradients_match;
using testing::random_vector;

constexpr int64_t kB = 2, kT = 5;
constexpr double kLossWeight = 1.0 / (kB * kT);
// Central differences in f64. The error of (L(x+h) - L(x-h)) / 2h is truncation, relative to the
// gradient and ~h², plus rounding, ~ulp(L ~ 2.4) / h, absolute. At h = 1e-6 rounding dominates
// (measured up to 8e-10, 0.6 of the tolerance below: too little margin); at h = 1e-5 the worst
// element measured is 1.4e-7 relative (largest gradients) or 7e-11 absolute (smallest), i.e.
// 0.05 of the tolerance, while a gradient wrong by 1e-6 relative (or 1e-9 absolute) still fails.
constexpr double kH = 1e-5, kRtol = 1e-6, kAtol = 1e-9;

ModelSpec tiny_spec(const std::string& arch) {
  ModelSpec s;
  s.arch = arch;
  s.vocab_size = 11;
  s.padded_vocab = 16;
  s.hidden = 16;
  s.layers = 2;
  s.heads = 4;
  s.kv_heads = 4;
  s.ffn_hidden = 24;
  s.max_seq_len = 8;
  s.dtype = DType::f64;
  return s;
}

ModelSpec llama_gqa_spec() {
  ModelSpec s = tiny_spec("llama");
  s.kv_heads = 2;
  s.tie_embeddings = false;
  return s;
}

ModelSpec gpt2_spec() {
  ModelSpec s = tiny_spec("gpt2");
  s.tie_embeddings = true;
  return s;
}

ModelSpec llama_geglu_layernorm_spec() {
  ModelSpec s = tiny_spec("llama");
  s.kv_heads = 2;
  s.mlp = "geglu";
  s.norm = "layernorm";
  s.tie_embeddings = true;
  return s;
}

/// The model of `spec` after init_parameters(seed), then moved away from the near-zero init so
/// that gradients are far above rounding noise: normal weights rescaled to std 0.3, ones-init
/// (norm weights) to 1 ± 0.3, zeros-init (biases) to ± 0.2. Padding rows stay zero.
std::unique_ptr<CausalLM> build(const ModelSpec& spec, uint64_t seed) {
  auto m = layers::make_model(spec);
  m->init_parameters(seed);
  uint64_t k = 0;
  for (auto& np : m->named_parameters()) {
    Tensor& v = np.param->value;
    const Init& init = np.param->init;
    double* d = v.data<double>();
    const auto r = random_vector(static_cast<size_t>(v.numel()), seed * 1000 + k++);
    for (int64_t i = 0; i < v.numel(); ++i) {
      const auto u = static_cast<size_t>(i);
      switch (init.kind) {
        case Init::normal: d[i] *= 0.3 / init.std; break;
        case Init::ones: d[i] = 1.0 + 0.3 * r[u]; break;
        case Init::zeros: d[i] = 0.2 * r[u]; break;
      }
    }
  }
  return m;
}

struct Batch {
  Tensor ids, targets;  // [B, T] i32
};

/// Random tokens below `vocab`; one target is -1 (ignored).
Batch make_batch(int64_t vocab, uint64_t seed) {
  constexpr auto n = static_cast<size_t>(kB * kT);
  const auto r = random_vector(2 * n, seed);
  auto token = [&](size_t i) {
    return static_cast<int32_t>(std::min((r[i] + 1) * 0.5 * static_cast<double>(vocab), static_cast<double>(vocab - 1)));
  };
  std::vector<int32_t> ids, tg;
  for (size_t i = 0; i < n; ++i) {
    ids.push_back(token(i));
    tg.push_back(token(n + i));
  }
  tg[3] = -1;
  return {Tensor::from_vector_i32(ids, {kB, kT}), Tensor::from_vector_i32(tg, {kB, kT})};
}

double loss_value(CausalLM& m, const Batch& b) {
  NoGradGuard ng;
  return m.loss(b.ids, b.targets, kLossWeight).to_double_vector()[0];
}

/// Tape gradient of each parameter, in named_parameters() order.
std::vector<std::vector<double>> tape_gradients(CausalLM& m, const Batch& b) {
  auto params = m.named_parameters();
  for (auto& np : params) np.param->value.clear_grad();
  Tape tape(DType::f64);
  Tensor loss;
  {
    TapeGuard guard(&tape);
    loss = m.loss(b.ids, b.targets, kLossWeight);
  }
  tape.backward(loss);
  std::vector<std::vector<double>> grads;
  for (auto& np : params) {
    const Tensor g = np.param->value.grad();
    EXPECT_TRUE(g.defined()) << np.name << " received no gradient";
    EXPECT_TRUE(!g.defined() || g.dtype() == DType::f64) << np.name;
    grads.push_back(g.defined() ? g.to_double_vector() : std::vector<double>(static_cast<size_t>(np.param->value.numel())));
  }
  return grads;
}

/// Central differences of every element of `np` against `analytic`, perturbing the parameter's
/// own storage; reports the first mismatches through gtest and returns their count.
int check_parameter(CausalLM& m, const Batch& b, const NamedParameter& np, const std::vector<double>& analytic) {
  Tensor& v = np.param->value;
  double* d = v.data<double>();
  std::vector<double> x = v.to_double_vector();
  auto loss = [&] {
    std::copy(x.begin(), x.end(), d);
    return loss_value(m, b);
  };
  const int bad = expect_gradients_match(loss, x, analytic, np.name, kH, kRtol, kAtol);
  std::copy(x.begin(), x.end(), d);
  return bad;
}

void expect_model_gradients_match(const ModelSpec& spec) {
  auto m = build(spec, 7);
  const Batch b = make_batch(spec.vocab_size, 11);
  const auto params = m->named_parameters();
  const auto grads = tape_gradients(*m, b);
  ASSERT_EQ(grads.size(), params.size());
  int bad = 0, padded = 0;
  for (size_t p = 0; p < params.size(); ++p) {
    const auto& g = grads[p];
    double gmax = 0;
    for (double x : g) gmax = std::max(gmax, std::fabs(x));
    EXPECT_GT(gmax, 1e-3) << params[p].name << ": gradient too small for the check to mean much";
    bad += check_parameter(*m, b, params[p], g);

    const int64_t valid = params[p].param->init.valid_rows;
    if (valid < 0) continue;
    ++padded;
    const Tensor& v = params[p].param->value;
    EXPECT_EQ(valid, spec.vocab_size) << params[p].name;
    const auto row = static_cast<size_t>(v.numel() / v.dim(0)), first = static_cast<size_t>(valid) * row;
    const auto w = v.to_double_vector();
    for (size_t i = first; i < g.size(); ++i) {
      EXPECT_EQ(w[i], 0.0) << params[p].name << " padding element " << i << " is not zero";
      EXPECT_EQ(g[i], 0.0) << params[p].name << " padding element " << i << " has a gradient";
    }
  }
  EXPECT_EQ(bad, 0) << "elements whose gradient differs from finite differences";
  EXPECT_EQ(padded, spec.tie_embeddings ? 1 : 2) << "parameters with vocabulary padding";
}

TEST(ModelGradients, LlamaGqaUntiedMatchesFiniteDifferences) { expect_model_gradients_match(llama_gqa_spec()); }

TEST(ModelGradients, Gpt2TiedMatchesFiniteDifferences) { expect_model_gradients_match(gpt2_spec()); }

TEST(ModelGradients, LlamaGegluLayerNormTiedMatchesFiniteDifferences) {
  const auto norms = layers::layer_names(LayerKind::norm), mlps = layers::layer_names(LayerKind::mlp);
  ASSERT_NE(std::find(norms.begin(), norms.end(), "layernorm"), norms.end());
  ASSERT_NE(std::find(mlps.begin(), mlps.end(), "geglu"), mlps.end());
  expect_model_gradients_match(llama_geglu_layernorm_spec());
}

// The largest element of one block's k_proj gradient is made 1e-3 relative wrong: the same
// comparison as above must report exactly that element.
TEST(ModelGradients, PlantedGradientErrorIsCaught) {
  const ModelSpec spec = llama_gqa_spec();
  auto m = build(spec, 7);
  const Batch b = make_batch(spec.vocab_size, 11);
  const auto params = m->named_parameters();
  auto grads = tape_gradients(*m, b);
  size_t p = 0;
  while (p < params.size() && params[p].name != "model.layers.1.self_attn.k_proj.weight") ++p;
  ASSERT_LT(p, params.size());
  auto& g = grads[p];
  const auto i = static_cast<size_t>(
      std::max_element(g.begin(), g.end(), [](double a, double c) { return std::fabs(a) < std::fabs(c); }) - g.begin());
  g[i] *= 1 + 1e-3;
  int bad = 0;
  EXPECT_NONFATAL_FAILURE(bad = check_parameter(*m, b, params[p], g), params[p].name + "[" + std::to_string(i) + "]");
  EXPECT_EQ(bad, 1);
}

// ------------------------------------------------------------------ Hugging Face names

using NameShapes = std::map<std::string, Shape>;

ModelSpec names_spec(const std::string& arch, bool tied) {
  ModelSpec s;
  s.arch = arch;
  s.vocab_size = 11;
  s.padded_vocab = 16;
  s.hidden = 12;
  s.layers = 2;
  s.heads = 3;
  s.kv_heads = arch == "llama" ? 1 : 3;
  s.ffn_hidden = 20;
  s.max_seq_len = 8;
  s.tie_embeddings = tied;
  return s;
}

TEST(ModelNames, LlamaParametersHaveHuggingFaceNamesAndShapes) {
  constexpr int64_t V = 11, Vp = 16, C = 12, D = 4, Hq = 3, Hkv = 1, F = 20;
  NameShapes want = {{"model.embed_tokens.weight", {Vp, C}}, {"model.norm.weight", {C}}, {"lm_head.weight", {Vp, C}}};
  for (int i = 0; i < 2; ++i) {
    const std::string l = "model.layers." + std::to_string(i) + ".";
    want[l + "input_layernorm.weight"] = {C};
    want[l + "self_attn.q_proj.weight"] = {Hq * D, C};
    want[l + "self_attn.k_proj.weight"] = {Hkv * D, C};
    want[l + "self_attn.v_proj.weight"] = {Hkv * D, C};
    want[l + "self_attn.o_proj.weight"] = {C, Hq * D};
    want[l + "post_attention_layernorm.weight"] = {C};
    want[l + "mlp.gate_proj.weight"] = {F, C};
    want[l + "mlp.up_proj.weight"] = {F, C};
    want[l + "mlp.down_proj.weight"] = {C, F};
  }
  auto m = layers::make_model(names_spec("llama", false));
  NameShapes got;
  for (auto& np : m->named_parameters()) got[np.name] = np.param->value.shape();
  EXPECT_EQ(got, want);

  NameShapes external;
  for (const auto& w : m->external_weights()) {
    EXPECT_FALSE(w.transpose) << w.name;
    external[w.name] = w.external_shape();
  }
  want["model.embed_tokens.weight"] = {V, C};
  want["lm_head.weight"] = {V, C};
  EXPECT_EQ(external, want);

  auto tied = layers::make_model(names_spec("llama", true));
  for (auto& np : tied->named_parameters()) EXPECT_NE(np.name, "lm_head.weight");
}

TEST(ModelNames, Gpt2ExternalWeightsHaveHuggingFaceNamesAndShapes) {
  constexpr int64_t V = 11, C = 12, F = 20, P = 8;
  NameShapes want = {{"transformer.wte.weight", {V, C}},
                     {"transformer.wpe.weight", {P, C}},
                     {"transformer.ln_f.weight", {C}},
                     {"transformer.ln_f.bias", {C}}};
  std::map<std::string, bool> conv1d;
  for (int i = 0; i < 2; ++i) {
    const std::string h = "transformer.h." + std::to_string(i) + ".";
    want[h + "ln_1.weight"] = {C};
    want[h + "ln_1.bias"] = {C};
    want[h + "attn.c_attn.weight"] = {C, 3 * C};
    want[h + "attn.c_attn.bias"] = {3 * C};
    want[h + "attn.c_proj.weight"] = {C, C};
    want[h + "attn.c_proj.bias"] = {C};
    want[h + "ln_2.weight"] = {C};
    want[h + "ln_2.bias"] = {C};
    want[h + "mlp.c_fc.weight"] = {C, F};
    want[h + "mlp.c_fc.bias"] = {F};
    want[h + "mlp.c_proj.weight"] = {F, C};
    want[h + "mlp.c_proj.bias"] = {C};
    for (const char* w : {"attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"})
      conv1d[h + w] = true;
  }
  auto m = layers::make_model(names_spec("gpt2", true));
  NameShapes got;
  for (const auto& w : m->external_weights()) {
    got[w.name] = w.external_shape();
    EXPECT_EQ(w.transpose, conv1d.count(w.name) == 1) << w.name;
  }
  EXPECT_EQ(got, want);

  auto untied = layers::make_model(names_spec("gpt2", false));
  NameShapes untied_got;
  for (const auto& w : untied->external_weights()) untied_got[w.name] = w.external_shape();
  want["lm_head.weight"] = {V, C};
  EXPECT_EQ(untied_got, want);
}

}  // namespace
}  // namespace ptrain
