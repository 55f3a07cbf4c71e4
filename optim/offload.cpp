// optim/offload.cpp — see offload.h.
#include "optim/offload.h"

namespace ptrain::optim {

HostOffload::HostOffload(const std::vector<Tensor>& device_weights, const std::vector<Tensor>& device_grads,
                         DType master_dtype) {
  PT_CHECK(device_weights.size() == device_grads.size(), "HostOffload: {} weights, {} gradients",
           device_weights.size(), device_grads.size());
  for (size_t i = 0; i < device_weights.size(); ++i) {
    const Tensor& w = device_weights[i];
    const Tensor& g = device_grads[i];
    PT_CHECK(w.defined() && g.defined() && w.device() == Device::cuda && g.device() == Device::cuda,
             "HostOffload: parameter {} must have its weights and gradient on the device", i);
    PT_CHECK(w.numel() == g.numel(), "HostOffload: parameter {}: {} weights, {} gradients", i, w.numel(), g.numel());
    entries_.push_back({w, g, Tensor::zeros(w.shape(), master_dtype), Tensor::zeros(w.shape(), g.dtype())});
  }
  down_.assign(entries_.size(), 0);
}

void HostOffload::begin_step() {
  std::fill(down_.begin(), down_.end(), 0);
  stats_ = {};
}

void HostOffload::grad_ready(size_t i) {
  PT_CHECK(i < entries_.size(), "HostOffload::grad_ready({}) of {} parameters", i, entries_.size());
  if (down_[i]) return;
  Entry& e = entries_[i];
  e.host_grad.copy_from(e.device_grad);
  down_[i] = 1;
  ++stats_.early;
  stats_.bytes_down += static_cast<int64_t>(e.device_grad.nbytes());
}

void HostOffload::grads_down() {
  for (size_t i = 0; i < entries_.size(); ++i) {
    if (down_[i]) continue;
    Entry& e = entries_[i];
    e.host_grad.copy_from(e.device_grad);
    down_[i] = 1;
    stats_.bytes_down += static_cast<int64_t>(e.device_grad.nbytes());
  }
}

void HostOffload::weights_up() {
  for (Entry& e : entries_) {
    e.device_weights.copy_from(e.host_master);  // rounded to the weights' dtype on the host, then uploaded
    stats_.bytes_up += static_cast<int64_t>(e.device_weights.nbytes());
  }
}

}  // namespace ptrain::optim
