// layers/layer_norm.cpp — LayerNorm with bias (GPT-2): y = (x − mean)·rsqrt(var + eps)·weight + bias.
#include "layers/model.h"

namespace ptrain::layers {
namespace {
class LayerNorm : public Layer {
 public:
  explicit LayerNorm(const ModelSpec& s) : eps_(s.norm_eps) {
    weight_ = register_parameter("weight", {s.hidden}, s.dtype, Init::Ones());
    bias_ = register_parameter("bias", {s.hidden}, s.dtype, Init::Zeros());
    // Under sequence parallelism each TP rank normalises only its rows: partial gradients.
    if (s.sequence_parallel && s.tp_size() > 1) parameter("weight").tp_partial_grad = parameter("bias").tp_partial_grad = true;
  }
  Tensor forward(const Tensor& x, const ForwardCtx&) override { return ops::layer_norm(x, weight_, bias_, eps_); }

 private:
  double eps_;
  Tensor weight_, bias_;
};
}  // namespace

PTRAIN_REGISTER_LAYER(norm, "layernorm", [](const ModelSpec& s, int) { return std::make_unique<LayerNorm>(s); },
                      "LayerNorm with bias (GPT-2): weight [C], bias [C]");
}  // namespace ptrain::layers
