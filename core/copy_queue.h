// core/copy_queue.h — an ordered queue of host <-> device copies on a stream of its own, with
// pinned host memory and host callbacks: what the offloaded optimizer pipelines its gradient
// downloads and weight uploads through (optim/offload.h), beside the compute stream.
//
// Invariants:
//  * Work runs in issue order on the queue's stream (copies and callbacks alike); the compute
//    stream and the queue are ordered only by wait_compute() / compute_waits() (one event each
//    way, never a device-wide synchronisation).
//  * A callback passed to then() runs once everything issued before it has completed, on a
//    thread of the runtime (the CUDA driver's; in the emulated build the thread that makes the
//    device progress): it must not call the device runtime, only hand work on (a queue, a flag).
//  * Device builds only: create() throws UserError in a build without a CUDA backend.
#pragma once
#include <cstddef>
#include <functional>
#include <memory>

namespace ptrain {

class CopyQueue {
 public:
  static std::unique_ptr<CopyQueue> create();
  virtual ~CopyQueue() = default;

  /// Pinned host memory (page-locked: copies from and to it are asynchronous), owned by the
  /// queue and freed when it is destroyed.
  virtual void* pinned(size_t bytes) = 0;
  /// Copies issued after this call start after every compute-stream operation issued so far.
  virtual void wait_compute() = 0;
  virtual void to_host(void* host, const void* dev, size_t bytes) = 0;
  virtual void to_device(void* dev, const void* host, size_t bytes) = 0;
  /// `fn` runs once everything issued before it on this queue has completed (see above).
  virtual void then(std::function<void()> fn) = 0;
  /// Lets queued work progress without blocking (the emulated device runs what is queued).
  virtual void poll() = 0;
  /// Blocks until everything issued so far on this queue, callbacks included, is done.
  virtual void synchronize() = 0;
  /// Compute-stream work issued after this call starts after everything issued so far here.
  virtual void compute_waits() = 0;
};

}  // namespace ptrain
