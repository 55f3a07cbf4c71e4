// core/activation_offload.h — activation offload (train.offload.activations) as a saved-tensor
// hook policy beside the tape: the tensors a decoder block saves for backward go to pinned host
// memory while later blocks run forward, and come back ahead of the block's backward.
//
// One ActivationOffload serves one tape (one pipeline chunk of one micro-batch), as the inner
// policy of its RecomputeHooks (core/recompute.h: what recompute keeps is what goes down). The
// code that runs the blocks brackets each with begin_block() / end_block(); saves outside
// blocks (embedding, final norm, LM head, loss) stay on the device.
//
// Timeline of group g (the saves of the g-th block this tape ran):
//   forward, end of block g:   an event on the compute stream; the D2H stream waits for it and
//                              copies every storage of group g to pinned host buffers (the
//                              copies overlap block g+1's forward);
//   forward, end of block g+1: group g lets go of its device storages (the caching allocator's
//                              record_stream keeps a block from reuse until its copy is done);
//                              the chunk's last block keeps its saves (its backward comes first);
//   backward, first unpack of a tensor of group g: group g must be on the device (the compute
//                              stream waits for its H2D copy: a wait only when the prefetch
//                              could not have finished), and groups g-1 .. g-prefetch are
//                              prefetched: fresh device storages, the H2D stream waits for the
//                              compute stream (the fresh blocks may have been freed by queued
//                              kernels) and for the group's D2H, then copies.
// A restored storage lives as long as the saved tensors that need it (freed by backward as on
// the device-resident path). Only storages the tape alone holds go down (use count 1 at the end
// of their block: a tensor also held elsewhere would not free device memory by moving).
// Host buffers come from a cached pinned pool; a buffer goes back to the pool only after the
// compute stream waited for its last H2D copy, so a later D2H (ordered after a later compute
// event) never overwrites a buffer a copy still reads.
// Invariants: the values that come back are the bytes that went down (bit-identical results
// with and without offload); every copy is ordered against compute by events (the emulated
// runtime's deferred, shuffled streams check it); no device-wide synchronisation.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/autograd.h"

namespace ptrain {

/// Process-wide figures of activation offload (all tapes), since the last reset.
struct ActivationOffloadStats {
  int64_t bytes_down = 0, bytes_up = 0;   ///< copied D2H / H2D
  int64_t groups_down = 0, groups_up = 0; ///< block groups copied each way
  int64_t compute_waits = 0;              ///< compute-stream waits on an H2D copy (one per group)
  int64_t host_live_bytes = 0;            ///< pinned bytes holding offloaded activations now
  int64_t host_peak_bytes = 0;            ///< high-water mark of host_live_bytes
  int64_t host_pool_bytes = 0;            ///< pinned bytes the pool holds (live + cached)
  int64_t kept_shared = 0;                ///< saves left on the device because something else held their storage
};

class ActivationOffload : public SavedTensorHooks {
 public:
  /// `prefetch`: how many blocks ahead of backward come back (>= 1).
  static std::unique_ptr<ActivationOffload> create(int prefetch);
  ~ActivationOffload() override = default;
  /// Brackets the forward of one decoder block (saves inside go to its group). `last`: no
  /// block of this tape follows (its saves stay on the device).
  virtual void begin_block() = 0;
  virtual void end_block(bool last) = 0;
};

/// The process's figures; reset_activation_offload_stats() zeroes the counters and sets the
/// peak to the live bytes.
ActivationOffloadStats activation_offload_stats();
void reset_activation_offload_stats();
/// A span of device time on the timeline's clock (parallel/timeline.h: microseconds since its start).
struct DeviceSpan {
  std::string name;  ///< "D2H block 3 (12.0 MB)", "H2D block 2 ...", "wait H2D block 2"
  double start_us = 0, end_us = 0;
};
/// Trace of the copies: start when the timeline starts (`now_us`: its clock now; an event on the
/// compute stream anchors the device clock to it); collect after the recorded step's device work
/// is done: D2H and H2D copies as the device ran them, and each stretch the compute stream stood
/// waiting for an H2D copy (from the wait's position in the stream to the copy's end; none when
/// the prefetch was early enough). Collect ends the trace.
void activation_offload_trace_start(double now_us);
std::vector<DeviceSpan> activation_offload_trace_collect();

}  // namespace ptrain
