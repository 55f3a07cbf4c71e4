// optim/offload.h — optimizer-state offload (train.offload.optimizer): the master weights and
// the Adam moments live in host memory and the CPU AdamW (optim/adamw.h: multithreaded,
// vectorised; fp32 or a compact optim.state) updates them; the device keeps only the forward's
// weights and their gradients.
//
// One step, after backward (the trainer has the gradient norm from the device gradients, which
// the device reduces in the CPU's chunk order, so the clip coefficient is the same number):
//   for each parameter i, in order:
//     its device gradient goes down into a host staging buffer (one buffer, the size of the
//     largest parameter, reused: host memory does not grow with the model);
//     the CPU AdamW updates parameter i's master and moments (AdamW::update over [i, i+1));
//     the updated master goes up into the device weights (rounded to their dtype on the way,
//     as the device optimizer rounds its model copy), before the next forward reads them.
// Invariants:
//  * The host sees exactly the device gradient (the staging buffer has its dtype), and the
//    per-parameter updates are the CPU AdamW's step split by parameter (bit-identical to one
//    step()), which the device kernels reproduce bit for bit (optim/device_optim.h): an
//    offloaded run is bit-identical to a device-optimizer run (tests/cuda/test_device_training).
//  * Host bytes: the masters (f32: 4 B/param; bf16 values under a compact state), the moments
//    (8 B/param fp32, ~2 B/param 8bit) and one staging buffer. (The CPU emulation stores bf16
//    values as floats, so a bf16 master takes 4 B here; a 2-byte host store is future work.)
//  * Copies are synchronous on the default stream; the update of parameter i does not overlap
//    the copy of i+1 yet (a pinned staging ring on a copy stream is the next step).
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace ptrain::optim {

class AdamW;

class HostOffload {
 public:
  /// For each parameter: its device weights and gradient. Allocates the host masters (zeros,
  /// `master_dtype`: f32, or bf16 for a compact optimizer state) and the staging buffer(s).
  HostOffload(const std::vector<Tensor>& device_weights, const std::vector<Tensor>& device_grads,
              DType master_dtype = DType::f32);

  size_t size() const { return weights_.size(); }
  Tensor host_master(size_t i) const { return masters_.at(i); }
  /// Parameter i's gradient as the host optimizer reads it: a view of the staging buffer
  /// (valid while update() works on parameter i; the same memory serves every parameter).
  Tensor staged_grad(size_t i) const { return staged_.at(i); }

  /// One optimizer step over `adam` (whose ParamRef i reads staged_grad(i) or a range of it,
  /// and updates host_master(i) or a range of it). `upload`: copy each master to the device
  /// weights right after its update (false when the caller all-gathers the masters: ZeRO-1).
  void step(AdamW& adam, double lr, double grad_scale, bool upload);
  /// Masters -> device weights (after a checkpoint load or init).
  void weights_up();

  struct Stats {
    int64_t bytes_down = 0, bytes_up = 0;  ///< the last step's copies
    int64_t staging_bytes = 0;             ///< host bytes of the staging buffer(s)
  };
  const Stats& stats() const { return stats_; }

 private:
  std::vector<Tensor> weights_, grads_, masters_, staged_;
  std::vector<Tensor> staging_;  ///< one per gradient dtype
  Stats stats_;
};

}  // namespace ptrain::optim
