// parallel/watchdog.cpp — see watchdog.h.
#include "parallel/watchdog.h"

#include <cstdio>
#include <cstdlib>

#include <fmt/format.h>

namespace ptrain::parallel {

CommWatchdog::CommWatchdog(double timeout_s, std::string rank_label, std::function<void(const std::string&)> on_timeout)
    : timeout_s_(timeout_s), rank_label_(std::move(rank_label)), on_timeout_(std::move(on_timeout)) {
  PT_CHECK(timeout_s > 0, "CommWatchdog: timeout {} s must be positive", timeout_s);
  if (!on_timeout_)
    on_timeout_ = [](const std::string& msg) {
      std::fprintf(stderr, "%s\n", msg.c_str());
      std::fflush(stderr);
      std::fflush(stdout);
      std::_Exit(3);  // Open MPI ends the job when a rank exits non-zero
    };
  thread_ = std::thread([this] { loop(); });
}

CommWatchdog::~CommWatchdog() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void CommWatchdog::enter(const std::string& what) {
  std::lock_guard lk(mu_);
  if (depth_++ == 0) {
    what_ = what;
    since_ = std::chrono::steady_clock::now();
  }
}

void CommWatchdog::leave() {
  std::lock_guard lk(mu_);
  if (depth_ > 0) --depth_;
}

void CommWatchdog::loop() {
  std::unique_lock lk(mu_);
  while (!stop_) {
    cv_.wait_for(lk, std::chrono::milliseconds(100));
    if (stop_ || depth_ == 0) continue;
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - since_).count();
    if (waited < timeout_s_) continue;
    const std::string msg = fmt::format(
        "ptrain: error on {}: {} did not complete within {} s (parallel.timeout_s): a peer of this group is stuck, "
        "or gone without its process being ended; ending the job. HINT: the ranks that report this waited for the "
        "ones that do not; look at those (a hung GPU, a deadlock, a dead node), or raise parallel.timeout_s if a "
        "collective legitimately takes longer",
        rank_label_, what_, timeout_s_);
    lk.unlock();
    on_timeout_(msg);
    lk.lock();
    depth_ = 0;  // a test's handler returns: watch the next call afresh
  }
}

namespace {

class WatchedRequest final : public Request {
 public:
  WatchedRequest(std::unique_ptr<Request> inner, std::shared_ptr<CommWatchdog> dog, std::string what)
      : inner_(std::move(inner)), dog_(std::move(dog)), what_(std::move(what)) {}
  void wait() override {
    CommWatchdog::Scope s(*dog_, what_);
    inner_->wait();
  }
  bool test() override { return inner_->test(); }

 private:
  std::unique_ptr<Request> inner_;
  std::shared_ptr<CommWatchdog> dog_;
  std::string what_;
};

class WatchedCommunicator final : public Communicator {
 public:
  WatchedCommunicator(std::unique_ptr<Communicator> c, std::shared_ptr<CommWatchdog> dog)
      : c_(std::move(c)), dog_(std::move(dog)) {}
  int rank() const override { return c_->rank(); }
  int size() const override { return c_->size(); }
  const std::string& name() const override { return c_->name(); }

  void all_reduce(Tensor& t, ReduceOp op) override {
    auto s = scope("all_reduce");
    c_->all_reduce(t, op);
  }
  std::unique_ptr<Request> all_reduce_async(Tensor& t, ReduceOp op) override {
    return request(c_->all_reduce_async(t, op), "all_reduce_async (wait)");
  }
  void all_reduce(std::span<double> v, ReduceOp op) override {
    auto s = scope("all_reduce (scalars)");
    c_->all_reduce(v, op);
  }
  void all_gather(const Tensor& in, Tensor& out) override {
    auto s = scope("all_gather");
    c_->all_gather(in, out);
  }
  void reduce_scatter(const Tensor& in, Tensor& out) override {
    auto s = scope("reduce_scatter");
    c_->reduce_scatter(in, out);
  }
  void broadcast(Tensor& t, int root) override {
    auto s = scope(fmt::format("broadcast from rank {}", root));
    c_->broadcast(t, root);
  }
  std::unique_ptr<Request> isend(const Tensor& t, int dst, int tag) override {
    return request(c_->isend(t, dst, tag), fmt::format("send to rank {} (tag {}, wait)", dst, tag));
  }
  void recv(Tensor& t, int src, int tag) override {
    auto s = scope(fmt::format("receive from rank {} (tag {})", src, tag));
    c_->recv(t, src, tag);
  }
  std::unique_ptr<Request> irecv(Tensor& t, int src, int tag) override {
    return request(c_->irecv(t, src, tag), fmt::format("receive from rank {} (tag {}, wait)", src, tag));
  }
  void barrier() override {
    auto s = scope("barrier");
    c_->barrier();
  }
  std::vector<std::string> gather_strings(const std::string& str, int root) override {
    auto s = scope("gather");
    return c_->gather_strings(str, root);
  }

 private:
  std::unique_ptr<CommWatchdog::Scope> scope(const std::string& call) {
    if (c_->size() == 1) return nullptr;
    return std::make_unique<CommWatchdog::Scope>(*dog_, label(call));
  }
  std::unique_ptr<Request> request(std::unique_ptr<Request> r, const std::string& call) {
    if (c_->size() == 1) return r;
    return std::make_unique<WatchedRequest>(std::move(r), dog_, label(call));
  }
  std::string label(const std::string& call) const {
    return fmt::format("{} on group '{}' ({} ranks; this rank is its rank {})", call, c_->name(), c_->size(),
                       c_->rank());
  }
  std::unique_ptr<Communicator> c_;
  std::shared_ptr<CommWatchdog> dog_;
};

}  // namespace

std::unique_ptr<Communicator> watched(std::unique_ptr<Communicator> inner, std::shared_ptr<CommWatchdog> dog) {
  PT_CHECK(inner && dog, "watched: no communicator or no watchdog");
  return std::make_unique<WatchedCommunicator>(std::move(inner), std::move(dog));
}

}  // namespace ptrain::parallel
