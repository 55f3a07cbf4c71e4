// optim/device_optim.h — internal: the optimizer path on Device::cuda, over the multi-tensor
// kernels of core/cuda/optim_kernels.h (one AdamW launch per step whatever the number of
// parameters; the gradient norm in two launches, with the CPU's chunks and order).
//
// AdamW (optim/adamw.cpp) and grad_sum_squares (optim/grad_clip.cpp) call these when their
// ParamRef list lives on the device; the semantics are theirs, bit for bit on an FMA host
// (tests/cuda/test_optim_cuda.cpp, tests/launch/test_device_training.cpp).
//
// Invariants:
//  * A DeviceTable describes a fixed list of tensors by device pointer. It is uploaded when
//    first used and again only when a pointer changes (checkpoint load replaces moments),
//    so a training step makes no table upload.
//  * Every call is asynchronous on the default stream except the norm, which returns a host
//    double (one device-to-host copy: the trainer needs the norm before it can clip).
//  * In builds without the CUDA backend these throw (a device ParamRef cannot exist there).
#pragma once
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "optim/param_ref.h"

namespace ptrain::optim::detail {

/// One uploaded descriptor table (opaque; see the file comment).
class DeviceTable {
 public:
  DeviceTable();
  ~DeviceTable();
  DeviceTable(const DeviceTable&) = delete;
  DeviceTable& operator=(const DeviceTable&) = delete;

  /// One fused AdamW update of every ref (moments m, v: fp32 device tensors of each param's
  /// shape; decay per ref); grad used = grad * (float)grad_scale; writes refs' model copies.
  void adamw(const std::vector<ParamRef>& refs, const std::vector<Tensor>& m, const std::vector<Tensor>& v,
             const std::vector<bool>& decay, double lr, double beta1, double beta2, double eps, double wd,
             int64_t step, double grad_scale);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Σ_refs Σ_i (double)grad[i]², as optim::grad_sum_squares (same chunks, same order).
double device_grad_sum_squares(const std::vector<ParamRef>& refs);

}  // namespace ptrain::optim::detail
