// optim/param_ref.h — the optimizer's view of one parameter: (name, fp32 master, gradient).
//
// Invariants:
//  * `param` is the fp32 master copy on the CPU, updated in place by the optimizer.
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
};

/// Throws ptrain::Error naming the parameter when a ref breaks the invariants above
/// (undefined tensors, non-CPU, param not f32, grad not a float type, shapes differ).
void check_param_refs(const std::vector<ParamRef>& params);

/// grad = 0 for every parameter (before a new accumulation of micro-batches).
void zero_grads(std::vector<ParamRef>& params);

}  // namespace ptrain::optim
