// optim/offload.cpp — see offload.h.
#include "optim/offload.h"

#include <algorithm>
#include <map>

#include "optim/adamw.h"

namespace ptrain::optim {

HostOffload::HostOffload(const std::vector<Tensor>& device_weights, const std::vector<Tensor>& device_grads,
                         DType master_dtype)
    : weights_(device_weights), grads_(device_grads) {
  PT_CHECK(weights_.size() == grads_.size(), "HostOffload: {} weights, {} gradients", weights_.size(), grads_.size());
  std::map<DType, int64_t> largest;
  for (size_t i = 0; i < weights_.size(); ++i) {
    const Tensor& w = weights_[i];
    const Tensor& g = grads_[i];
    PT_CHECK(w.defined() && g.defined() && w.device() == Device::cuda && g.device() == Device::cuda,
             "HostOffload: parameter {} must have its weights and gradient on the device", i);
    PT_CHECK(w.numel() == g.numel(), "HostOffload: parameter {}: {} weights, {} gradients", i, w.numel(), g.numel());
    masters_.push_back(Tensor::zeros(w.shape(), master_dtype));
    largest[g.dtype()] = std::max(largest[g.dtype()], g.numel());
  }
  std::map<DType, Tensor> buffer;
  for (auto [dt, n] : largest) {
    buffer[dt] = Tensor::zeros({std::max<int64_t>(n, 1)}, dt);
    staging_.push_back(buffer[dt]);
    stats_.staging_bytes += static_cast<int64_t>(buffer[dt].nbytes());
  }
  for (const Tensor& g : grads_) staged_.push_back(buffer[g.dtype()].rows(0, g.numel()).view(g.shape()));
}

void HostOffload::step(AdamW& adam, double lr, double grad_scale, bool upload) {
  PT_CHECK(adam.params().size() == size(), "HostOffload::step: the optimizer has {} parameters, the offload {}",
           adam.params().size(), size());
  stats_.bytes_down = stats_.bytes_up = 0;
  adam.begin_step();
  for (size_t i = 0; i < size(); ++i) {
    staged_[i].copy_from(grads_[i]);
    stats_.bytes_down += static_cast<int64_t>(grads_[i].nbytes());
    adam.update(lr, grad_scale, i, i + 1);
    if (upload) {
      weights_[i].copy_from(masters_[i]);  // rounded to the weights' dtype on the host, then uploaded
      stats_.bytes_up += static_cast<int64_t>(weights_[i].nbytes());
    }
  }
}

void HostOffload::weights_up() {
  for (size_t i = 0; i < size(); ++i) weights_[i].copy_from(masters_[i]);
}

}  // namespace ptrain::optim
