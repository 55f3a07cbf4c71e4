// optim/adamw.h — AdamW on fp32 master weights, with PyTorch's semantics and float order.
//
// Contract (DESIGN.md, "Optimizer"): decoupled weight decay p -= lr*wd*p, bias-corrected
// moments, eps added after the square root; weight decay on 2-D parameters (matrices,
// embeddings included) only. Update t = step_count() (1-based, incremented by step() first):
//   p  = p * (1 - lr*wd)                          (2-D parameters only)
//   m  = lerp(m, g, 1-beta1)                      m + (1-beta1)*(g-m)
//   v  = v*beta2 + (1-beta2)*g*g
//   p += -(lr/(1-beta1^t)) * m / (sqrt(v)/sqrt(1-beta2^t) + eps)
// The float32 operations follow torch.optim.AdamW(foreach=False) (torch 2.x
// _single_tensor_adam): scalars are computed in double (as Python floats) and converted to
// float where torch converts them, and every tensor op is reproduced in torch's order:
//   param.mul_(1-lr*wd); exp_avg.lerp_(grad, 1-beta1);
//   exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1-beta2);
//   denom = (exp_avg_sq.sqrt() / sqrt(bias_correction2)).add_(eps);
//   param.addcdiv_(exp_avg, denom, value=-lr/bias_correction1)
// with the two multiply-adds torch's AVX2 CPU kernels fuse (lerp_, addcmul_) fused here too
// when the target has FMA: the trajectory is then bit-identical to that op sequence run by
// torch on the CPU, and within ~1e-6 relative of torch < 2's AdamW (which updates exp_avg
// with mul_/add_ instead of lerp_). See optim/adamw.cpp.
//
// Invariants:
//  * The optimizer keeps the ParamRef list (stable order) and owns exp_avg / exp_avg_sq, fp32
//    tensors of each parameter's shape, created zero-filled on first use (first step(), an
//    accessor, or set_state()).
//  * Elements are independent, so the update is bit-identical for any thread count.
//  * A skipped step (fp16 overflow) simply does not call step(): neither the moments nor
//    the step count move.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "optim/device_optim.h"
#include "optim/param_ref.h"

namespace ptrain::optim {

struct AdamWOptions {
  double beta1 = 0.9;          ///< optim.betas[0], in [0, 1)
  double beta2 = 0.95;         ///< optim.betas[1], in [0, 1)
  double eps = 1e-8;           ///< optim.eps, >= 0
  double weight_decay = 0.1;   ///< optim.weight_decay, >= 0 (2-D parameters only)
};

class AdamW {
 public:
  /// Throws UserError for options out of range; PT_CHECKs the ParamRef invariants
  /// (optim/param_ref.h) and that no tensor is listed twice.
  AdamW(AdamWOptions options, std::vector<ParamRef> params);

  /// ++step_count, then one fused pass per parameter with learning rate `lr` (formula above),
  /// reading g = grad * (float)grad_scale in fp32 (the clip coefficient over the fp16 loss
  /// scale, folded in: the gradient buffers are not rewritten, nor rounded again); refs with
  /// a `model` get round(master) written into it. On the device: one multi-tensor launch.
  void step(double lr, double grad_scale = 1.0);
  /// Where the parameters, gradients and moments live (the ParamRefs' device).
  Device device() const { return device_; }

  /// Completed updates (Adam's t after the last step()).
  int64_t step_count() const { return step_; }
  void set_step_count(int64_t t);

  /// First / second moment of parameter i ([same shape as the parameter], fp32). The handle
  /// is the optimizer's own state (writes through it change the state).
  Tensor exp_avg(size_t i);
  Tensor exp_avg_sq(size_t i);
  /// Replaces the moments of parameter i (checkpoint load). On the CPU the handles are adopted
  /// when they are f32, otherwise converted; on the device the values are copied into the
  /// optimizer's device tensors (from host or device). Shapes must equal the parameter's.
  void set_state(size_t i, Tensor m, Tensor v);

  /// True when weight decay applies to parameter i (it is 2-D).
  bool decays(size_t i) const { return decay_.at(i); }
  const std::vector<ParamRef>& params() const { return params_; }
  const AdamWOptions& options() const { return opt_; }

 private:
  void ensure_state(size_t i);

  AdamWOptions opt_;
  std::vector<ParamRef> params_;
  std::vector<bool> decay_;
  std::vector<Tensor> m_, v_;
  int64_t step_ = 0;
  Device device_ = Device::cpu;
  std::unique_ptr<detail::DeviceTable> table_;  ///< the device path's uploaded descriptors
};

}  // namespace ptrain::optim
