// layers/rms_norm.cpp — RMSNorm (LLaMA): y = x · rsqrt(mean(x²) + eps) · weight. Parameter: weight [C] (ones).
#include "layers/model.h"

namespace ptrain::layers {
namespace {
class RMSNorm : public Layer {
 public:
  explicit RMSNorm(const ModelSpec& s) : eps_(s.norm_eps) {
    weight_ = register_parameter("weight", {s.hidden}, s.dtype, Init::Ones());
    // Under sequence parallelism each TP rank normalises only its rows: partial gradients.
    if (s.sequence_parallel && s.tp_size() > 1) parameter("weight").tp_partial_grad = true;
  }
  Tensor forward(const Tensor& x, const ForwardCtx&) override { return ops::rms_norm(x, weight_, eps_); }

 private:
  double eps_;
  Tensor weight_;
};
}  // namespace

PTRAIN_REGISTER_LAYER(norm, "rmsnorm", [](const ModelSpec& s, int) { return std::make_unique<RMSNorm>(s); },
                      "RMSNorm (LLaMA): weight [C]");
}  // namespace ptrain::layers
