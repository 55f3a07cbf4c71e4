// parallel/timeline.h — per-rank spans of one step, merged into a Chrome trace.
//
// Each rank records spans (forward, backward, weight-grad, send, recv, all-reduce,
// optimizer, ...) with a name, a category and start/end times from one steady clock.
// write_chrome_trace gathers every rank's spans to world rank 0, which writes one JSON file
// in the Trace Event Format (viewable in Perfetto / chrome://tracing): one process per
// world rank ("rank r (dp, pp, tp)"), one thread per category. Clocks are aligned by a
// barrier at the start of the step (each rank's t = 0 is its exit from that barrier): the
// caller runs world.barrier() and then start(). Spans are added only while recording.
#pragma once
#include <chrono>
#include <string>
#include <vector>

#include "parallel/comm.h"

namespace ptrain::parallel {

struct Span {
  std::string name;      ///< "F m3 c0", "allreduce bucket 2", ...
  std::string category;  ///< "compute" | "comm" | "optimizer" | ...
  double start_us = 0, end_us = 0;
};

class Timeline {
 public:
  using Clock = std::chrono::steady_clock;
  /// Starts (or restarts) recording: clears spans, t = 0 now.
  void start();
  bool recording() const { return recording_; }
  void stop() { recording_ = false; }
  double now_us() const;
  /// Appends a span (times from now_us()) when recording; no-op otherwise.
  void add(std::string name, std::string category, double start_us, double end_us);
  const std::vector<Span>& spans() const { return spans_; }

  /// RAII span: records [construction, destruction) when the timeline is recording.
  class Scope {
   public:
    Scope(Timeline* t, std::string name, std::string category);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    Timeline* t_;
    std::string name_, category_;
    double start_ = 0;
  };

 private:
  bool recording_ = false;
  Clock::time_point t0_;
  std::vector<Span> spans_;
};

/// Gathers spans over `world` to its rank 0, which writes `path` (Chrome trace JSON, written
/// to path.tmp and renamed; parent folders are created). A collective over `world`. `label`
/// names each rank's process row "rank <world rank> <label>" (e.g. label "(dp 0, pp 1, tp 0)").
/// Events: ph "X" with ts/dur in µs, pid = world rank, tid = category (compute 0, comm 1,
/// optimizer 2, others after), plus process_name / thread_name metadata.
void write_chrome_trace(const Timeline& t, Communicator& world, const std::string& label, const std::string& path);

}  // namespace ptrain::parallel
