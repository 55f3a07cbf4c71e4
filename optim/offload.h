// optim/offload.h — optimizer-state offload (train.offload.optimizer): the master weights and
// the Adam moments live in host memory and the CPU AdamW (optim/adamw.h: multithreaded,
// vectorised; fp32 or a compact optim.state) updates them; the device keeps only the forward's
// weights and their gradients.
//
// A pipeline of three stages per parameter, over a few staging slots (`slots`, each the size of
// the largest parameter: host memory does not grow with the model):
//   down    the device gradient -> a pinned slot buffer, on a copy stream of its own
//           (core/copy_queue.h), ordered after the compute work that produced it (an event);
//   update  a host worker thread converts the slot to the staged gradient and runs the CPU
//           AdamW over the parameter (AdamW::update over [i, i+1)), then rounds the master to
//           the weights' dtype into the slot's upload buffer;
//   up      the slot's upload buffer -> the device weights, on the same copy stream; the slot
//           is free once that copy completed.
// Parameter i always uses slot i % slots (so its staged gradient is a fixed tensor the AdamW
// reads); a parameter waits for its slot. The copy of one parameter overlaps the update of
// another, and the update runs on the host while the device computes.
//
// When it starts:
//   eager   (begin_step(.., eager = true): the update's scale is known before backward: no
//           gradient clipping and no fp16 loss scale, so every gradient is used as it is)
//           grad_ready(i), called from backward as soon as gradient i is final, sends it down
//           at once: the host updates parameter i while the device runs the rest of backward.
//   after   otherwise (optim.grad_clip > 0 needs the global norm, fp16 needs the overflow
//           check): finish() sends every gradient down, in the order backward finished them.
// finish() ends the step: every update and upload done, and the compute stream waits for the
// copy stream (one event) before the next forward reads the weights or the next step zeroes
// the gradients.
//
// Invariants:
//  * The host sees exactly the device gradient (bf16/f16 bits widened exactly), the updates are
//    the CPU AdamW's step split by parameter (elements independent: bit-identical to one
//    step() in any order), and the upload rounds as Tensor::copy_from does: an offloaded run is
//    bit-identical to a device-optimizer run, eager or after (tests/cuda/test_device_training).
//  * In eager mode a parameter's weights are uploaded after the compute event of its
//    grad_ready(): every kernel of this step that reads them was issued before (its gradient
//    is final), so the upload never races a read.
//  * Host bytes: the masters (f32: 4 B/param; bf16 values under a compact state), the moments
//    (8 B/param fp32, ~2 B/param 8bit) and per slot: a staged gradient (4 B/element of the
//    largest parameter: bf16 is emulated as float on the host) and pinned download and upload
//    buffers (the device bytes of the largest gradient and weights). (A bf16 master takes
//    4 B here; a 2-byte host store is future work.)
//  * One host thread drives the device; the worker thread never calls the device runtime.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "core/tensor.h"

namespace ptrain {
class CopyQueue;
}

namespace ptrain::optim {

class AdamW;

/// The trainer's staging slots (the memory plan counts them): two let one parameter's copies
/// overlap another's update.
inline constexpr int kOffloadSlots = 2;

class HostOffload {
 public:
  /// For each parameter: its device weights and gradient. Allocates the host masters (zeros,
  /// `master_dtype`: f32, or bf16 for a compact optimizer state), `slots` staging slots (>= 1)
  /// and the copy stream; starts the worker thread (it runs the AdamW with this thread's
  /// OpenMP thread count).
  HostOffload(const std::vector<Tensor>& device_weights, const std::vector<Tensor>& device_grads,
              DType master_dtype = DType::f32, int slots = kOffloadSlots);
  ~HostOffload();
  HostOffload(const HostOffload&) = delete;
  HostOffload& operator=(const HostOffload&) = delete;

  size_t size() const { return weights_.size(); }
  Tensor host_master(size_t i) const { return masters_.at(i); }
  /// Parameter i's gradient as the host optimizer reads it: a view of slot i % slots's staged
  /// gradient (valid while the worker updates parameter i).
  Tensor staged_grad(size_t i) const { return staged_.at(i); }

  /// Starts a step over `adam` (whose ParamRef i reads staged_grad(i) and updates
  /// host_master(i)) with learning rate `lr`. eager: see above (the gradient scale is then 1).
  /// `upload`: copy each updated master to the device weights (false when the caller
  /// all-gathers the masters: ZeRO-1).
  void begin_step(AdamW& adam, double lr, bool eager, bool upload = true);
  /// Gradient i is final for this step (backward's leaf hook). Eager: sends it down now;
  /// otherwise nothing. Each parameter at most once per step.
  void grad_ready(size_t i);
  /// Sends down what is not sent yet, with `grad_scale` (must be 1 in eager mode), waits for
  /// every update and upload; the compute stream then waits for the copies. Rethrows an error
  /// of the worker.
  void finish(double grad_scale);
  /// begin_step (after) + finish: one whole step after backward.
  void step(AdamW& adam, double lr, double grad_scale, bool upload);
  /// Masters -> device weights (after a checkpoint load or init).
  void weights_up();

  struct Span {
    size_t param;
    std::chrono::steady_clock::time_point start, end;
  };
  struct Stats {
    int64_t bytes_down = 0, bytes_up = 0;  ///< the last step's copies
    int64_t staging_bytes = 0;             ///< host bytes of the slots (staged, pinned down and up)
    int64_t early = 0;                     ///< parameters the last step sent down from backward
    double update_s = 0;                   ///< the last step's host update time (the worker's)
    double hidden_s = 0;                   ///< of which before finish() was called
    std::vector<Span> spans;               ///< the last step's updates, on the steady clock
  };
  const Stats& stats() const { return stats_; }
  int slots() const { return static_cast<int>(slots_.size()); }

 private:
  enum class SlotState : uint8_t { free, down, queued, updating, updated, up };
  struct Slot {
    void* down = nullptr;  ///< pinned: the device bytes of the gradient
    void* up = nullptr;    ///< pinned: the device bytes of the weights
    size_t param = 0;
    SlotState state = SlotState::free;
  };
  void send_down(size_t i);
  void pump();
  template <class Pred>
  void wait_until(Pred pred);
  void worker_loop();
  void update(Slot& s);

  std::vector<Tensor> weights_, grads_, masters_, staged_;
  std::vector<Slot> slots_;
  std::vector<Tensor> slot_staging_;  ///< per slot and gradient dtype
  std::unique_ptr<CopyQueue> queue_;
  std::vector<bool> sent_;
  AdamW* adam_ = nullptr;
  double lr_ = 0, scale_ = 1;
  bool eager_ = false, upload_ = true, in_step_ = false;
  int threads_ = 1;
  Stats stats_;
  std::chrono::steady_clock::time_point finish_called_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Slot*> work_;      ///< downloaded, waiting for the worker (guarded by mu_)
  std::vector<Slot*> updated_;   ///< updated, waiting for their upload to be issued (mu_)
  std::exception_ptr error_;     ///< the worker's (mu_)
  bool stop_ = false;            ///< (mu_)
  std::thread worker_;
};

}  // namespace ptrain::optim
