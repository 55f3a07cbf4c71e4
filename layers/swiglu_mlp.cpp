// layers/swiglu_mlp.cpp — LLaMA MLP: down_proj(silu(gate_proj(x)) ⊙ up_proj(x)), no biases.
// Parameters: gate_proj/up_proj [F, C], down_proj [C, F] (std 0.02/sqrt(2·layers)).
#include <cmath>

#include "layers/model.h"

namespace ptrain::layers {
namespace {
class SwiGLUMlp : public Layer {
 public:
  explicit SwiGLUMlp(const ModelSpec& s) {
    const Init w = Init::Normal(0.02), o = Init::Normal(0.02 / std::sqrt(2.0 * static_cast<double>(s.layers)));
    gate_ = &register_module("gate_proj", std::make_unique<Linear>(s.hidden, s.ffn_hidden, false, s.dtype, w));
    up_ = &register_module("up_proj", std::make_unique<Linear>(s.hidden, s.ffn_hidden, false, s.dtype, w));
    down_ = &register_module("down_proj", std::make_unique<Linear>(s.ffn_hidden, s.hidden, false, s.dtype, o));
  }
  Tensor forward(const Tensor& x, const ForwardCtx&) override {
    return down_->forward(ops::swiglu(gate_->forward(x), up_->forward(x)));
  }

 private:
  Linear *gate_, *up_, *down_;
};
}  // namespace

PTRAIN_REGISTER_LAYER(mlp, "swiglu", [](const ModelSpec& s, int) { return std::make_unique<SwiGLUMlp>(s); },
                      "LLaMA MLP: down_proj(silu(gate_proj(x)) * up_proj(x))");
}  // namespace ptrain::layers
