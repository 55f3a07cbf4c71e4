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
  // Tensor parallelism comes with the building blocks: column-parallel gate/up (a column
  // sharding), a row-parallel down_proj, and tp_enter on the input (all no-ops without TP).
  explicit GeGLUMlp(const ModelSpec& s) : spec_(s) {
    const Init w = Init::Normal(0.02), o = Init::Normal(0.02 / std::sqrt(2.0 * static_cast<double>(s.layers)));
    const Sharding col = column_sharding(s);
    gate_ = &register_module("gate_proj", std::make_unique<Linear>(s.hidden, s.ffn_hidden, false, s.dtype, w, col));
    up_ = &register_module("up_proj", std::make_unique<Linear>(s.hidden, s.ffn_hidden, false, s.dtype, w, col));
    down_ = &register_module("down_proj", std::make_unique<RowParallelLinear>(s.ffn_hidden, s.hidden, false, s, o));
  }
  // x [B*T, C] -> [B*T, C]
  Tensor forward(const Tensor& in, const ForwardCtx&) override {
    const Tensor x = tp_enter(in, spec_);
    return down_->forward(ops::mul(ops::gelu(gate_->forward(x)), up_->forward(x)));
  }

 private:
  const ModelSpec& spec_;
  Linear *gate_, *up_;
  RowParallelLinear* down_;
};
}  // namespace

PTRAIN_REGISTER_LAYER(mlp, "geglu", [](const ModelSpec& s, int) { return std::make_unique<GeGLUMlp>(s); },
                      "contrib: GEGLU MLP, down_proj(gelu(gate_proj(x)) * up_proj(x))");
}  // namespace ptrain::layers
