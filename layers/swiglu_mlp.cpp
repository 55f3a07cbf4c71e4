// layers/swiglu_mlp.cpp — LLaMA MLP: down_proj(silu(gate_proj(x)) ⊙ up_proj(x)), no biases.
// Parameters: gate_proj/up_proj [F, C], down_proj [C, F] (std 0.02/sqrt(2·layers)).
#include <cmath>

#include "layers/model.h"

namespace ptrain::layers {
namespace {
class SwiGLUMlp : public Layer {
 public:
  // Under TP gate/up are column-parallel (F/tp features each), down row-parallel.
  explicit SwiGLUMlp(const ModelSpec& s) : spec_(s) {
    const Init w = Init::Normal(0.02), o = Init::Normal(0.02 / std::sqrt(2.0 * static_cast<double>(s.layers)));
    const Sharding col = column_sharding(s);
    gate_ = &register_module("gate_proj", std::make_unique<Linear>(s.hidden, s.ffn_hidden, false, s.dtype, w, col));
    up_ = &register_module("up_proj", std::make_unique<Linear>(s.hidden, s.ffn_hidden, false, s.dtype, w, col));
    down_ = &register_module("down_proj", std::make_unique<RowParallelLinear>(s.ffn_hidden, s.hidden, false, s, o));
  }
  // x [B*T, C] -> [B*T, C]
  Tensor forward(const Tensor& in, const ForwardCtx&) override {
    const Tensor x = tp_enter(in, spec_);
    return down_->forward(ops::swiglu(gate_->forward(x), up_->forward(x)));
  }

 private:
  const ModelSpec& spec_;
  Linear *gate_, *up_;
  RowParallelLinear* down_;
};
}  // namespace

PTRAIN_REGISTER_LAYER(mlp, "swiglu", [](const ModelSpec& s, int) { return std::make_unique<SwiGLUMlp>(s); },
                      "LLaMA MLP: down_proj(silu(gate_proj(x)) * up_proj(x))");
}  // namespace ptrain::layers
