// parallel/comm.cpp — the self communicator: a group of one rank.
//
// Collectives are no-ops (in place) or copies (all_gather/reduce_scatter: in -> out).
// Point-to-point to oneself is refused: the pipeline never sends to its own stage, so a
// send here is a bug in the caller.
#include "parallel/comm.h"

namespace ptrain::parallel {
namespace {

class SelfRequest final : public Request {
 public:
  void wait() override {}
  bool test() override { return true; }
};

class SelfCommunicator final : public Communicator {
 public:
  explicit SelfCommunicator(std::string name) : name_(std::move(name)) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  const std::string& name() const override { return name_; }

  void all_reduce(Tensor&, ReduceOp) override {}
  std::unique_ptr<Request> all_reduce_async(Tensor&, ReduceOp) override { return std::make_unique<SelfRequest>(); }
  void all_reduce(std::span<double>, ReduceOp) override {}
  void all_gather(const Tensor& in, Tensor& out) override { copy(in, out, "all_gather"); }
  void reduce_scatter(const Tensor& in, Tensor& out) override { copy(in, out, "reduce_scatter"); }
  void broadcast(Tensor&, int root) override { check_root(root, "broadcast"); }
  std::unique_ptr<Request> isend(const Tensor&, int dst, int tag) override { no_p2p("isend", dst, tag); }
  void recv(Tensor&, int src, int tag) override { no_p2p("recv", src, tag); }
  std::unique_ptr<Request> irecv(Tensor&, int src, int tag) override { no_p2p("irecv", src, tag); }
  void barrier() override {}
  std::vector<std::string> gather_strings(const std::string& s, int root) override {
    check_root(root, "gather_strings");
    return {s};
  }

 private:
  void copy(const Tensor& in, Tensor& out, const char* what) {
    PT_CHECK(in.shape() == out.shape() && in.dtype() == out.dtype(),
             "{} on group '{}' (size 1): in {} {} and out {} {} must match", what, name_, shape_str(in.shape()),
             dtype_name(in.dtype()), shape_str(out.shape()), dtype_name(out.dtype()));
    if (!in.same(out) && in.raw() != out.raw()) out.copy_from(in);
  }
  void check_root(int root, const char* what) {
    PT_CHECK(root == 0, "{} on group '{}' (size 1): root {} out of range", what, name_, root);
  }
  [[noreturn]] void no_p2p(const char* what, int peer, int tag) {
    PT_CHECK(false, "{} on group '{}' (size 1) to/from rank {} tag {}: a rank cannot send to itself", what, name_,
             peer, tag);
    throw Error("unreachable");
  }
  std::string name_;
};

}  // namespace

std::unique_ptr<Communicator> make_self_communicator(const std::string& name) {
  return std::make_unique<SelfCommunicator>(name);
}

}  // namespace ptrain::parallel
