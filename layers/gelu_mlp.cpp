// layers/gelu_mlp.cpp — GPT-2 MLP: c_proj(gelu_tanh(c_fc(x))) with biases.
// Parameters (internal [out, in]): c_fc [F, C] + bias, c_proj [C, F] + bias (std 0.02/sqrt(2·layers)).
#include <cmath>

#include "layers/model.h"

namespace ptrain::layers {
namespace {
class GeluMlp : public Layer {
 public:
  // Under TP c_fc is column-parallel (with its bias split), c_proj row-parallel.
  explicit GeluMlp(const ModelSpec& s) : spec_(s) {
    const Init o = Init::Normal(0.02 / std::sqrt(2.0 * static_cast<double>(s.layers)));
    fc_ = &register_module("c_fc", std::make_unique<Linear>(s.hidden, s.ffn_hidden, true, s.dtype, Init::Normal(0.02),
                                                            column_sharding(s)));
    proj_ = &register_module("c_proj", std::make_unique<RowParallelLinear>(s.ffn_hidden, s.hidden, true, s, o));
  }
  // x [B*T, C] -> [B*T, C]
  Tensor forward(const Tensor& x, const ForwardCtx&) override {
    return proj_->forward(ops::gelu(fc_->forward(tp_enter(x, spec_))));
  }

 private:
  const ModelSpec& spec_;
  Linear* fc_;
  RowParallelLinear* proj_;
};
}  // namespace

PTRAIN_REGISTER_LAYER(mlp, "gelu", [](const ModelSpec& s, int) { return std::make_unique<GeluMlp>(s); },
                      "GPT-2 MLP: c_proj(gelu_tanh(c_fc(x))), with biases");
}  // namespace ptrain::layers
