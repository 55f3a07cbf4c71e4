// optim/param_ref.h — the optimizer's view of one parameter: (name, fp32 master, gradient).
//
// Invariants:
//  * `param` is the fp32 master copy, updated in place by the optimizer. All refs of one list
//    live on one device: the CPU (host loops) or Device::cuda (the multi-tensor kernels of
//    core/cuda/optim_kernels.h: one AdamW launch and two norm launches per step).
//  * `grad` has the same shape as `param`; its dtype is f32, or bf16/f16 emulated on the
//    CPU (floats rounded to the low-precision grid: every op here that writes a gradient
//    rounds it again on store).
//  * A std::vector<ParamRef> is given in a stable order; that order fixes the order of
//    every reduction over parameters (gradient norm), so it must be the same on every run.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace ptrain::optim {

struct ParamRef {
  std::string name;  ///< full hierarchical name (`model.layers.3.self_attn.q_proj.weight`)
  Tensor param;      ///< fp32 master weights, updated in place
  Tensor grad;       ///< same shape; f32, or bf16/f16 emulated
  /// Weight decay applies: by default when `param` is 2-D; explicit for flat views of a
  /// parameter (ZeRO-1 shards), which keep the rule of the parameter they view.
  std::optional<bool> decay;
  /// Optional: the low-precision weights the forward reads (bf16/f16, the shape of `param`,
  /// never `param` itself). AdamW writes round(master) into it after each update, in the same
  /// pass (on the device: the same kernel), so no separate copy of the model follows a step.
  Tensor model;
};

/// Throws ptrain::Error naming the parameter when a ref breaks the invariants above
/// (undefined tensors, mixed devices, param not f32, grad not a float type, shapes differ).
/// Returns the device the list lives on (Device::cpu for an empty list).
Device check_param_refs(const std::vector<ParamRef>& params);

/// grad = 0 for every parameter (before a new accumulation of micro-batches).
void zero_grads(std::vector<ParamRef>& params);

}  // namespace ptrain::optim
