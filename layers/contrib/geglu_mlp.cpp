// layers/contrib/geglu_mlp.cpp — an example of a researcher's layer: the GEGLU MLP of
// Shazeer 2020, down_proj(gelu(gate_proj(x)) ⊙ up_proj(x)). This one file is all it takes:
// the layer registers itself and is selected from YAML with `model.mlp: geglu`
// (see docs/extending.md). Parameter names follow LLaMA's MLP, so weights load by name.
#include <cmath>

#include "layers/model.h"

namespace ptrain::layers {
namespace {
class GeGLUMlp : public Layer {
 public:
  explicit GeGLUMlp(const ModelSpec& s) {
    const Init w = Init::Normal(0.02), o = Init::Normal(0.02 / std::sqrt(2.0 * static_cast<double>(s.layers)));
    gate_ = &register_module("gate_proj", std::make_unique<Linear>(s.hidden, s.ffn_hidden, false, s.dtype, w));
    up_ = &register_module("up_proj", std::make_unique<Linear>(s.hidden, s.ffn_hidden, false, s.dtype, w));
    down_ = &register_module("down_proj", std::make_unique<Linear>(s.ffn_hidden, s.hidden, false, s.dtype, o));
  }
  // x [B*T, C] -> [B*T, C]
  Tensor forward(const Tensor& x, const ForwardCtx&) override {
    return down_->forward(ops::mul(ops::gelu(gate_->forward(x)), up_->forward(x)));
  }

 private:
  Linear *gate_, *up_, *down_;
};
}  // namespace

PTRAIN_REGISTER_LAYER(mlp, "geglu", [](const ModelSpec& s, int) { return std::make_unique<GeGLUMlp>(s); },
                      "contrib: GEGLU MLP, down_proj(gelu(gate_proj(x)) * up_proj(x))");
}  // namespace ptrain::layers
