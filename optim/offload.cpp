// optim/offload.cpp — see offload.h.
#include "optim/offload.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "core/copy_queue.h"
#include "core/dtype.h"
#include "optim/adamw.h"

namespace ptrain::optim {

namespace {

using Clock = std::chrono::steady_clock;

/// Device bytes (f32, or bf16/f16 bits) -> a host tensor's floats, exactly.
void widen(const void* src, DType dt, float* dst, int64_t n) {
  if (dt == DType::f32) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  const auto* b = static_cast<const uint16_t*>(src);
  if (dt == DType::bf16) {
#pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < n; ++k) dst[k] = bf16_bits_to_float(b[k]);
  } else {
#pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < n; ++k) dst[k] = f16_bits_to_float(b[k]);
  }
}

/// A host tensor's floats -> device bytes of `dt`, rounded to nearest even (as Tensor::copy_from
/// rounds a host tensor on its way to a device tensor of another dtype).
void narrow(const float* src, DType dt, void* dst, int64_t n) {
  if (dt == DType::f32) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  auto* b = static_cast<uint16_t*>(dst);
  if (dt == DType::bf16) {
#pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < n; ++k) b[k] = float_to_bf16_bits(src[k]);
  } else {
#pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < n; ++k) b[k] = float_to_f16_bits(src[k]);
  }
}

}  // namespace

HostOffload::HostOffload(const std::vector<Tensor>& device_weights, const std::vector<Tensor>& device_grads,
                         DType master_dtype, int slots)
    : weights_(device_weights), grads_(device_grads) {
  PT_CHECK(weights_.size() == grads_.size(), "HostOffload: {} weights, {} gradients", weights_.size(), grads_.size());
  PT_CHECK(slots >= 1, "HostOffload: {} slots", slots);
  std::map<DType, int64_t> largest;
  size_t down_bytes = 1, up_bytes = 1;
  for (size_t i = 0; i < weights_.size(); ++i) {
    const Tensor& w = weights_[i];
    const Tensor& g = grads_[i];
    PT_CHECK(w.defined() && g.defined() && w.device() == Device::cuda && g.device() == Device::cuda,
             "HostOffload: parameter {} must have its weights and gradient on the device", i);
    PT_CHECK(w.numel() == g.numel(), "HostOffload: parameter {}: {} weights, {} gradients", i, w.numel(), g.numel());
    PT_CHECK(is_float(g.dtype()) && g.dtype() != DType::f64 && is_float(w.dtype()) && w.dtype() != DType::f64,
             "HostOffload: parameter {}: weights {} and gradient {} must be f32, bf16 or f16", i, dtype_name(w.dtype()),
             dtype_name(g.dtype()));
    masters_.push_back(Tensor::zeros(w.shape(), master_dtype));
    largest[g.dtype()] = std::max(largest[g.dtype()], g.numel());
    down_bytes = std::max(down_bytes, g.nbytes());
    up_bytes = std::max(up_bytes, w.nbytes());
  }
  queue_ = CopyQueue::create();
  slots_.resize(static_cast<size_t>(slots));
  std::vector<std::map<DType, Tensor>> buffer(slots_.size());
  for (size_t k = 0; k < slots_.size(); ++k) {
    slots_[k].down = queue_->pinned(down_bytes);
    slots_[k].up = queue_->pinned(up_bytes);
    stats_.staging_bytes += static_cast<int64_t>(down_bytes + up_bytes);
    for (auto [dt, n] : largest) {
      buffer[k][dt] = Tensor::zeros({std::max<int64_t>(n, 1)}, dt);
      slot_staging_.push_back(buffer[k][dt]);
      stats_.staging_bytes += static_cast<int64_t>(buffer[k][dt].nbytes());
    }
  }
  for (size_t i = 0; i < grads_.size(); ++i) {
    const Tensor& g = grads_[i];
    staged_.push_back(buffer[i % slots_.size()][g.dtype()].rows(0, g.numel()).view(g.shape()));
  }
  sent_.assign(size(), false);
  threads_ = omp_get_max_threads();
  worker_ = std::thread([this] { worker_loop(); });
}

HostOffload::~HostOffload() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  worker_.join();
  if (queue_) queue_->synchronize();  // no copy may still touch a slot (the queue frees them)
}

void HostOffload::begin_step(AdamW& adam, double lr, bool eager, bool upload) {
  PT_CHECK(!in_step_, "HostOffload::begin_step: the previous step was not finished");
  PT_CHECK(adam.params().size() == size(), "HostOffload: the optimizer has {} parameters, the offload {}",
           adam.params().size(), size());
  PT_CHECK(!(eager && !upload), "HostOffload: eager updates upload their weights (ZeRO-1 gathers after the step)");
  adam_ = &adam;
  lr_ = lr;
  scale_ = 1.0;
  eager_ = eager;
  upload_ = upload;
  in_step_ = true;
  const int64_t staging = stats_.staging_bytes;
  stats_ = Stats{};
  stats_.staging_bytes = staging;
  sent_.assign(size(), false);
  adam.begin_step();
}

void HostOffload::grad_ready(size_t i) {
  if (!in_step_ || !eager_) return;
  PT_CHECK(i < size() && !sent_[i], "HostOffload::grad_ready({}): out of range or sent twice this step", i);
  queue_->wait_compute();  // after the kernels that made gradient i (and every read of its weights)
  send_down(i);
  ++stats_.early;
}

void HostOffload::send_down(size_t i) {
  Slot& s = slots_[i % slots_.size()];
  wait_until([&] { return s.state == SlotState::free; });
  sent_[i] = true;
  {
    std::lock_guard lk(mu_);
    s.param = i;
    s.state = SlotState::down;
  }
  queue_->to_host(s.down, grads_[i].raw(), grads_[i].nbytes());
  stats_.bytes_down += static_cast<int64_t>(grads_[i].nbytes());
  Slot* sp = &s;
  queue_->then([this, sp] {
    {
      std::lock_guard lk(mu_);
      sp->state = SlotState::queued;
      work_.push_back(sp);
    }
    cv_.notify_all();
  });
}

void HostOffload::pump() {
  std::vector<Slot*> done;
  {
    std::lock_guard lk(mu_);
    if (error_) std::rethrow_exception(error_);
    done.swap(updated_);
    for (Slot* s : done) s->state = SlotState::up;
  }
  for (Slot* s : done) {
    if (upload_) {
      queue_->to_device(weights_[s->param].raw(), s->up, weights_[s->param].nbytes());
      stats_.bytes_up += static_cast<int64_t>(weights_[s->param].nbytes());
    }
    queue_->then([this, s] {
      {
        std::lock_guard lk(mu_);
        s->state = SlotState::free;
      }
      cv_.notify_all();
    });
  }
}

template <class Pred>
void HostOffload::wait_until(Pred pred) {
  for (;;) {
    pump();
    {
      std::lock_guard lk(mu_);
      if (pred()) return;
    }
    queue_->poll();  // the emulated device runs what is queued (its callbacks among it)
    std::unique_lock lk(mu_);
    if (pred()) return;
    if (!updated_.empty() || error_) continue;  // an upload to issue, or an error to raise
    cv_.wait_for(lk, std::chrono::microseconds(200));
  }
}

void HostOffload::finish(double grad_scale) {
  PT_CHECK(in_step_, "HostOffload::finish without begin_step");
  PT_CHECK(!eager_ || grad_scale == 1.0, "HostOffload::finish: eager updates used scale 1, not {}", grad_scale);
  finish_called_ = Clock::now();
  {
    std::lock_guard lk(mu_);
    scale_ = grad_scale;  // the worker reads it only for parameters sent from here on
  }
  bool any = false;
  for (size_t j = size(); j-- > 0;) {  // the order backward finishes them: the last parameter first
    if (sent_[j]) continue;
    if (!any) queue_->wait_compute();
    any = true;
    send_down(j);
  }
  wait_until([&] {
    if (!work_.empty() || !updated_.empty()) return false;
    for (const Slot& s : slots_)
      if (s.state != SlotState::free) return false;
    return true;
  });
  queue_->compute_waits();  // the next forward reads the weights, the next step zeroes the gradients
  in_step_ = false;
  for (const Span& sp : stats_.spans) {
    stats_.update_s += std::chrono::duration<double>(sp.end - sp.start).count();
    if (sp.start < finish_called_)
      stats_.hidden_s += std::chrono::duration<double>(std::min(sp.end, finish_called_) - sp.start).count();
  }
}

void HostOffload::step(AdamW& adam, double lr, double grad_scale, bool upload) {
  begin_step(adam, lr, false, upload);
  finish(grad_scale);
}

void HostOffload::worker_loop() {
  omp_set_num_threads(threads_);
  for (;;) {
    Slot* s = nullptr;
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return stop_ || !work_.empty(); });
      if (work_.empty()) return;  // stop_
      s = work_.front();
      work_.erase(work_.begin());
      s->state = SlotState::updating;
    }
    try {
      update(*s);
    } catch (...) {
      std::lock_guard lk(mu_);
      if (!error_) error_ = std::current_exception();
    }
    {
      std::lock_guard lk(mu_);
      s->state = SlotState::updated;
      updated_.push_back(s);
    }
    cv_.notify_all();
  }
}

void HostOffload::update(Slot& s) {
  const size_t i = s.param;
  const auto t0 = Clock::now();
  double scale;
  {
    std::lock_guard lk(mu_);
    scale = scale_;
  }
  widen(s.down, grads_[i].dtype(), staged_[i].data<float>(), staged_[i].numel());
  adam_->update(lr_, scale, i, i + 1);
  if (upload_) narrow(masters_[i].data<float>(), weights_[i].dtype(), s.up, masters_[i].numel());
  const auto t1 = Clock::now();
  std::lock_guard lk(mu_);
  stats_.spans.push_back({i, t0, t1});
}

void HostOffload::weights_up() {
  for (size_t i = 0; i < size(); ++i) weights_[i].copy_from(masters_[i]);
}

}  // namespace ptrain::optim
