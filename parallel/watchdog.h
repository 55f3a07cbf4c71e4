// parallel/watchdog.h — parallel.timeout_s: no rank waits forever in a communicator call.
//
// The trainer wraps every group of its process grid (Grid::watch) so that each blocking call —
// a collective, a receive, the wait() of a send, receive or async all-reduce — is timed by one
// watchdog thread per process. A call still in flight after timeout_s ends the process with a
// message naming this rank, the group, its size and the call (Open MPI then ends the whole
// job, as for any rank that exits non-zero): a peer that hangs or died without its processes
// being reaped cannot keep the others waiting. The ranks that report are the ones that waited;
// the rank that did not arrive is the one that did not report.
//
// Invariants:
//  * Only blocking calls are watched (Request::test() and compute are not): a long step of a
//    big model does not trip it; one collective that takes longer than timeout_s does.
//  * One host thread drives the communicators (nesting counts: the outermost call is timed).
//  * The watchdog never calls MPI or the device runtime.
#pragma once
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "parallel/comm.h"

namespace ptrain::parallel {

class CommWatchdog {
 public:
  /// `on_timeout(what, seconds)` runs on the watchdog thread when a call exceeds timeout_s; it
  /// must end the process (the default prints the message and exits with status 3).
  explicit CommWatchdog(double timeout_s, std::string rank_label,
                        std::function<void(const std::string&)> on_timeout = {});
  ~CommWatchdog();
  CommWatchdog(const CommWatchdog&) = delete;
  CommWatchdog& operator=(const CommWatchdog&) = delete;

  void enter(const std::string& what);
  void leave();
  double timeout_s() const { return timeout_s_; }

  /// RAII enter/leave.
  class Scope {
   public:
    Scope(CommWatchdog& w, const std::string& what) : w_(w) { w_.enter(what); }
    ~Scope() { w_.leave(); }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    CommWatchdog& w_;
  };

 private:
  void loop();
  double timeout_s_;
  std::string rank_label_;
  std::function<void(const std::string&)> on_timeout_;
  std::mutex mu_;
  std::condition_variable cv_;
  int depth_ = 0;
  std::string what_;
  std::chrono::steady_clock::time_point since_;
  bool stop_ = false;
  std::thread thread_;
};

/// `inner` with every blocking call watched by `dog` (same name, rank, size, results).
std::unique_ptr<Communicator> watched(std::unique_ptr<Communicator> inner, std::shared_ptr<CommWatchdog> dog);

}  // namespace ptrain::parallel
