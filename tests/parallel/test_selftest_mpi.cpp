// tests/parallel/test_selftest_mpi.cpp — the communicator self-test (parallel/selftest.h), 4
// ranks: it passes on healthy groups (host tensors, and device tensors where a device exists),
// and it catches an injected fault, naming the ranks, in under 2 s: one flipped byte in one
// rank's received buffer, one dropped send, one corrupted all-gather. The faults come from a
// decorator Communicator, the way a broken transport would show them.
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <cstring>

#include "core/cuda/device.h"
#include "core/error.h"
#include "parallel/mpi_comm.h"
#include "parallel/selftest.h"
#include "tests/parallel/mpi_test_util.h"

using namespace ptrain;
using namespace ptrain::parallel;
using ptrain::parallel::testing::world_rank;

namespace {

enum class Fault { none, flip_recv, drop_send, flip_gather };

class DoneRequest final : public Request {
 public:
  void wait() override {}
  bool test() override { return true; }
};

/// On completion, flips one bit of byte 0 of the received tensor.
class FlipRequest final : public Request {
 public:
  FlipRequest(std::unique_ptr<Request> inner, Tensor t) : inner_(std::move(inner)), t_(std::move(t)) {}
  void wait() override {
    inner_->wait();
    flip();
  }
  bool test() override {
    if (!inner_->test()) return false;
    flip();
    return true;
  }

 private:
  void flip() {
    if (done_) return;
    done_ = true;
    Tensor h = t_.to_device(Device::cpu);
    static_cast<unsigned char*>(h.raw())[0] ^= 0x10;
    t_.copy_from(h);
  }
  std::unique_ptr<Request> inner_;
  Tensor t_;
  bool done_ = false;
};

/// A communicator that injects one fault on one rank; everything else goes to `c`.
class Faulty final : public Communicator {
 public:
  Faulty(Communicator& c, Fault f, int victim) : c_(c), f_(f), victim_(victim) {}
  int rank() const override { return c_.rank(); }
  int size() const override { return c_.size(); }
  const std::string& name() const override { return c_.name(); }
  void all_reduce(Tensor& t, ReduceOp op) override { c_.all_reduce(t, op); }
  std::unique_ptr<Request> all_reduce_async(Tensor& t, ReduceOp op) override { return c_.all_reduce_async(t, op); }
  void all_reduce(std::span<double> v, ReduceOp op) override { c_.all_reduce(v, op); }
  void all_gather(const Tensor& in, Tensor& out) override {
    c_.all_gather(in, out);
    if (f_ == Fault::flip_gather && rank() == victim_) {
      Tensor h = out.to_device(Device::cpu);
      h.data<float>()[in.numel()] += 1.0f;  // the first element that came from rank 1
      out.copy_from(h);
    }
  }
  void reduce_scatter(const Tensor& in, Tensor& out) override { c_.reduce_scatter(in, out); }
  void broadcast(Tensor& t, int root) override { c_.broadcast(t, root); }
  std::unique_ptr<Request> isend(const Tensor& t, int dst, int tag) override {
    if (f_ == Fault::drop_send && rank() == victim_) return std::make_unique<DoneRequest>();
    return c_.isend(t, dst, tag);
  }
  void recv(Tensor& t, int src, int tag) override { c_.recv(t, src, tag); }
  std::unique_ptr<Request> irecv(Tensor& t, int src, int tag) override {
    auto r = c_.irecv(t, src, tag);
    if (f_ == Fault::flip_recv && rank() == victim_) return std::make_unique<FlipRequest>(std::move(r), t);
    return r;
  }
  void barrier() override { c_.barrier(); }
  std::vector<std::string> gather_strings(const std::string& s, int root) override { return c_.gather_strings(s, root); }

 private:
  Communicator& c_;
  Fault f_;
  int victim_;
};

std::unique_ptr<Communicator> world() { return make_mpi_communicator(MPI_COMM_WORLD, "world"); }

/// Runs the self-test with a fault; every rank must throw; rank 0's message must hold `want`.
void expect_caught(Fault f, int victim, const std::vector<std::string>& want) {
  auto w = world();
  Faulty faulty(*w, f, victim);
  const auto t0 = std::chrono::steady_clock::now();
  std::string msg;
  try {
    self_test(faulty, Device::cpu, 1.0);
  } catch (const UserError& e) {
    msg = e.what();
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_FALSE(msg.empty()) << "rank " << w->rank() << ": the fault went unnoticed";
  EXPECT_LT(secs, 2.0) << "the self-test must catch it in under 2 s";
  if (w->rank() == 0)
    for (const std::string& s : want) EXPECT_NE(msg.find(s), std::string::npos) << "'" << s << "' not in: " << msg;
  w->barrier();
}

TEST(SelfTest, HealthyGroupsPass) {
  auto w = world();
  EXPECT_NO_THROW(self_test(*w, Device::cpu));
  // sub-groups, as the process grid makes them (pairs)
  auto pair = split_communicator(*w, w->rank() / 2, w->rank(), "dp");
  EXPECT_NO_THROW(self_test(*pair, Device::cpu));
#if PTRAIN_HAVE_CUDA
  if (cuda::device_count() > 0) EXPECT_NO_THROW(self_test(*w, Device::cuda)) << "device tensors, staged";
#endif
  // every collective reports a time and a bandwidth, identical verdicts everywhere
  const auto checks = check_collectives(*w, Device::cpu, 4096, 2, 5.0);
  ASSERT_EQ(checks.size(), 8u);
  for (const auto& c : checks) {
    EXPECT_TRUE(c.ok) << c.collective << ": " << c.detail;
    EXPECT_GT(c.seconds, 0) << c.collective;
    EXPECT_GT(c.bus_gbps(w->size()), 0) << c.collective;
    EXPECT_EQ(c.bytes, 4096 * 4);
  }
}

TEST(SelfTest, CatchesAFlippedByteAndNamesTheRanks) {
  // rank 2 receives rank 1's ring message with one bit flipped
  expect_caught(Fault::flip_recv, 2, {"ring isend/irecv", "rank 2", "from rank 1", "group 'world'"});
}

TEST(SelfTest, CatchesADroppedSendAndNamesTheRanks) {
  // rank 1 never sends to rank 2: rank 2 waits 1 s, then names rank 1
  expect_caught(Fault::drop_send, 1, {"ring isend/irecv", "rank 2: no message from rank 1 within 1 s"});
}

TEST(SelfTest, CatchesACorruptedGather) {
  expect_caught(Fault::flip_gather, 3, {"all_gather", "rank 3", "(from rank 1)"});
}

}  // namespace
