// optim/offload.h — optimizer-state offload (train.offload.optimizer): the fp32 master weights
// and the Adam moments live in host memory and a CPU AdamW (optim/adamw.h, multithreaded and
// vectorised) updates them; the device keeps only the forward's weights and their gradients.
//
// Per step, for every parameter i (in the ParamRef order the trainer keeps):
//   grad_ready(i)   copies the device gradient into its host copy, as soon as the backward has
//                   made it final (the tape's leaf hook): gradients go down while backward goes on;
//   grads_down()    after backward, copies what no hook reported (parameters a step did not reach);
//   ... the trainer computes the norm and calls AdamW::step() over host() refs ...
//   weights_up()    copies every updated master into the device weights (rounded to their dtype
//                   on the way, as the device optimizer rounds its model copy), before the next
//                   forward reads them.
// Invariants:
//  * The host gradient has the device gradient's dtype (bf16 gradients stay bf16 values), so the
//    norm and the update read the same numbers as the device optimizer; the update is then the
//    CPU AdamW's, which the device kernels reproduce bit for bit (optim/device_optim.h): an
//    offloaded run is bit-identical to a device-optimizer run (tests/cuda/test_device_training).
//  * Each gradient goes down exactly once per step (begin_step() clears the marks).
//  * Host memory per parameter: master 4 B + moments 8 B + the gradient's host copy (4 B: host
//    tensors of every float dtype are floats). Copies are synchronous on the default stream; a
//    pinned staging ring on a copy stream is the next step (see the closing note).
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace ptrain::optim {

class HostOffload {
 public:
  struct Entry {
    Tensor device_weights;  ///< the forward's weights (Device::cuda)
    Tensor device_grad;     ///< their gradient buffer (Device::cuda)
    Tensor host_master;     ///< fp32 master (Device::cpu)
    Tensor host_grad;       ///< host copy of the gradient (Device::cpu, the gradient's dtype)
  };
  /// For each parameter: its device weights and gradient; allocates the host master (zeros)
  /// and the host gradient.
  /// `master_dtype`: f32, or bf16 for a compact optimizer state (optim/adamw.h StateFormat).
  HostOffload(const std::vector<Tensor>& device_weights, const std::vector<Tensor>& device_grads,
              DType master_dtype = DType::f32);

  size_t size() const { return entries_.size(); }
  const Entry& entry(size_t i) const { return entries_.at(i); }
  Tensor host_master(size_t i) const { return entries_.at(i).host_master; }
  Tensor host_grad(size_t i) const { return entries_.at(i).host_grad; }

  void begin_step();
  /// Parameter i's device gradient is final for this step: copy it down (once).
  void grad_ready(size_t i);
  /// Copies the gradients no grad_ready() reported.
  void grads_down();
  /// Masters -> device weights.
  void weights_up();

  struct Stats {
    int64_t bytes_down = 0, bytes_up = 0;  ///< this step's copies
    int64_t early = 0;                     ///< gradients copied from the hook (during backward)
  };
  const Stats& stats() const { return stats_; }

 private:
  std::vector<Entry> entries_;
  std::vector<char> down_;
  Stats stats_;
};

}  // namespace ptrain::optim
