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
#include "optim/compact_state.h"
#include "optim/device_optim.h"
#include "optim/param_ref.h"

namespace ptrain::optim {

/// optim.state: how the master weights and the moments are held (optim/compact_state.h).
///   fp32     the master is f32, the moments f32 (the formula above, bit for bit)
///   bf16_sr  the master is on the bf16 grid (a bf16 tensor, or an f32 one holding bf16 values:
///            the weights themselves, no separate copy); each update is computed in f32 as
///            above and stochastically rounded to bf16; f32 moments
///   int8     bf16_sr, and the moments block-wise 8-bit (dynamic-exponent codes, an f32 absmax
///            per 2048 elements; the second moment as sqrt(v), which halves its range in decades:
///            a v far below its block's largest no longer decodes to 0, which would turn that
///            element's next step into m / eps); tensors under kQuantMinElements keep f32 moments
/// Compact states run on the CPU (and so under train.offload.optimizer); the device kernels
/// take fp32 only.
enum class StateFormat : uint8_t { fp32, bf16_sr, int8 };

struct AdamWOptions {
  double beta1 = 0.9;          ///< optim.betas[0], in [0, 1)
  double beta2 = 0.95;         ///< optim.betas[1], in [0, 1)
  double eps = 1e-8;           ///< optim.eps, >= 0
  double weight_decay = 0.1;   ///< optim.weight_decay, >= 0 (2-D parameters only)
  StateFormat state = StateFormat::fp32;
  uint64_t seed = 0;           ///< the stochastic rounding's stream (train.seed)
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
  /// The same update in pieces (CPU only; the offloaded optimizer updates parameter by
  /// parameter as their gradients arrive in host memory): begin_step() advances the step count
  /// once, then update() over every parameter range once gives exactly step()'s result.
  void begin_step();
  void update(double lr, double grad_scale, size_t first, size_t last);
  /// Where the parameters, gradients and moments live (the ParamRefs' device).
  Device device() const { return device_; }

  /// Completed updates (Adam's t after the last step()).
  int64_t step_count() const { return step_; }
  void set_step_count(int64_t t);

  /// First / second moment of parameter i ([same shape as the parameter], fp32). The handle
  /// is the optimizer's own state (writes through it change the state), except for 8-bit
  /// moments: then it is a decoded copy (set_state() writes them).
  Tensor exp_avg(size_t i);
  Tensor exp_avg_sq(size_t i);
  /// Replaces the moments of parameter i (checkpoint load). On the CPU the handles are adopted
  /// when they are f32, otherwise converted; on the device the values are copied into the
  /// optimizer's device tensors (from host or device). Shapes must equal the parameter's.
  void set_state(size_t i, Tensor m, Tensor v);

  /// Bytes the state of parameter i takes beyond the weights (master copy, moments, scales).
  int64_t state_bytes(size_t i) const;
  /// Whether parameter i's moments are 8-bit.
  bool quantized(size_t i) const { return quantized_.at(i); }
  /// True when weight decay applies to parameter i (it is 2-D).
  bool decays(size_t i) const { return decay_.at(i); }
  const std::vector<ParamRef>& params() const { return params_; }
  const AdamWOptions& options() const { return opt_; }

 private:
  void ensure_state(size_t i);
  void update_compact(double lr, double grad_scale, size_t first, size_t last);

  AdamWOptions opt_;
  std::vector<ParamRef> params_;
  std::vector<bool> decay_;
  std::vector<Tensor> m_, v_;
  std::vector<bool> quantized_;          ///< 8-bit moments (int8 state, large enough tensors)
  std::vector<Quantized> qm_, qv_;       ///< the 8-bit moments
  std::vector<uint64_t> name_hash_;      ///< per parameter: its stochastic-rounding stream
  int64_t step_ = 0;
  Device device_ = Device::cpu;
  std::unique_ptr<detail::DeviceTable> table_;  ///< the device path's uploaded descriptors
};

}  // namespace ptrain::optim
