// parallel/mpi_comm.cpp — Communicator over MPI, host buffers; device tensors are staged
// through host memory (several ranks can then share one GPU, and MPI need not be CUDA-aware).
//
// Invariants:
//  * A device tensor is copied to a host tensor (bf16/f16 widened to floats exactly), the host
//    operation runs as for a host tensor, and the result is copied back (rounded to the
//    tensor's dtype once, as the host path rounds): a device run reduces exactly as a CPU run.
//    The copies are synchronous (the device finishes the work that made the tensor first);
//    an async operation on a device tensor uploads its result when it completes (wait/test).
//  * Every call goes through MPI_CHECK; the communicator has MPI_ERRORS_RETURN, so an MPI
//    failure is a ptrain::Error naming the group, not an abort.
//  * Groups of size 1 make no MPI call (all_gather/reduce_scatter copy in -> out).
//  * Float tensors (f32, and bf16/f16 emulated as floats) are reduced as MPI_FLOAT, f64 as
//    MPI_DOUBLE; bf16/f16 results are rounded once to their grid afterwards (t.round_()).
//  * Point-to-point messages travel as bytes; recv checks that the size sent equals the
//    size expected and consumes the message either way (no unmatched message is left).
//  * A Request holds a handle to its tensor, so the buffer outlives the operation.
//    Destroying an incomplete request waits for it; during stack unwinding (a peer may be
//    dead) it cancels/frees the request instead and leaks the buffer, so nothing hangs and
//    MPI never writes into freed memory.
#include "parallel/mpi_comm.h"

#include <climits>
#include <exception>
#include <vector>

#include "core/error.h"

namespace ptrain::parallel {

namespace detail {
void throw_mpi_error(const char* file, int line, const char* call, int rc, std::string_view group) {
  char msg[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) fmt::format_to_n(msg, sizeof msg - 1, "MPI error code {}", rc);
  ::ptrain::detail::throw_check(file, line, call, fmt::format("MPI error on group '{}': {}", group, msg));
}
}  // namespace detail

namespace {

MPI_Datatype float_type(const Tensor& t, const std::string& group, const char* what) {
  PT_CHECK(t.defined(), "{} on group '{}': undefined tensor", what, group);
  PT_CHECK(t.device() == Device::cpu,
           "{} on group '{}': the MPI communicator stages device tensors through host memory, got a {} tensor "
           "here (internal)",
           what, group, device_name(t.device()));
  switch (t.dtype()) {
    case DType::f32:
    case DType::bf16:
    case DType::f16: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i32: break;
  }
  PT_CHECK(false, "{} on group '{}': dtype {} cannot be reduced (float types only)", what, group,
           dtype_name(t.dtype()));
  return MPI_DATATYPE_NULL;
}

MPI_Datatype any_type(const Tensor& t, const std::string& group, const char* what) {
  if (t.defined() && t.dtype() == DType::i32) {
    PT_CHECK(t.device() == Device::cpu, "{} on group '{}': the MPI communicator takes host tensors, got {}", what,
             group, device_name(t.device()));
    return MPI_INT32_T;
  }
  return float_type(t, group, what);
}

int count_of(int64_t n, const std::string& group, const char* what) {
  PT_CHECK(n <= INT_MAX, "{} on group '{}': {} elements exceed MPI's int count\nHINT: split the buffer", what, group,
           n);
  return static_cast<int>(n);
}

MPI_Op mpi_op(ReduceOp op) { return op == ReduceOp::sum ? MPI_SUM : MPI_MAX; }

void round_low_precision(Tensor& t) {
  if (is_low_precision(t.dtype())) t.round_();
}

bool on_device(const Tensor& t) { return t.defined() && t.device() != Device::cpu; }
Tensor host_copy(const Tensor& t) { return t.to_device(Device::cpu); }
Tensor host_like(const Tensor& t) { return Tensor::empty(t.shape(), t.dtype(), Device::cpu); }

/// An operation on the host copy of a device tensor: its result goes up once it completes.
class StagedRequest final : public Request {
 public:
  StagedRequest(std::unique_ptr<Request> inner, Tensor host, Tensor device)
      : inner_(std::move(inner)), host_(std::move(host)), device_(std::move(device)) {}
  void wait() override {
    inner_->wait();
    upload();
  }
  bool test() override {
    if (!inner_->test()) return false;
    upload();
    return true;
  }

 private:
  void upload() {
    if (done_) return;
    done_ = true;
    if (device_.defined()) device_.copy_from(host_);
  }
  std::unique_ptr<Request> inner_;
  Tensor host_, device_;  ///< device_ undefined: nothing comes back (a send)
  bool done_ = false;
};

/// A completed operation (size-1 groups).
class DoneRequest final : public Request {
 public:
  void wait() override {}
  bool test() override { return true; }
};

/// An MPI_Request plus the tensor it reads or writes. `on_complete` runs once, after
/// completion (rounding after an async reduction, size check after irecv).
class MpiRequest final : public Request {
 public:
  enum class Kind { reduce, send, recv };
  MpiRequest(Kind kind, Tensor t, std::string group, int peer, int tag)
      : kind_(kind), t_(std::move(t)), group_(std::move(group)), peer_(peer), tag_(tag) {}
  MPI_Request* handle() { return &req_; }

  void wait() override {
    if (done_) return;
    MPI_Status st;
    const int rc = MPI_Wait(&req_, &st);
    done_ = true;  // complete, with or without an error: MPI has released the request
    check(rc, "MPI_Wait");
    complete(st);
  }
  bool test() override {
    if (done_) return true;
    int flag = 0;
    MPI_Status st;
    const int rc = MPI_Test(&req_, &flag, &st);
    if (rc != MPI_SUCCESS) done_ = true;
    check(rc, "MPI_Test");
    if (flag) {
      done_ = true;
      complete(st);
    }
    return done_;
  }
  ~MpiRequest() override {
    if (done_ || req_ == MPI_REQUEST_NULL) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    if (std::uncaught_exceptions() > 0) {
      // Unwinding: a peer may never match this operation. Do not block; keep the buffer
      // alive forever (MPI may still touch it) and let MPI forget the request.
      if (kind_ == Kind::recv) MPI_Cancel(&req_);
      MPI_Request_free(&req_);
      new Tensor(t_);  // intentional leak
      return;
    }
    MPI_Wait(&req_, MPI_STATUS_IGNORE);  // errors cannot be thrown from a destructor
  }

 private:
  void check(int rc, const char* call) {
    if (rc == MPI_SUCCESS) return;
    int cls = 0;
    MPI_Error_class(rc, &cls);
    PT_CHECK(!(kind_ == Kind::recv && cls == MPI_ERR_TRUNCATE),
             "irecv on group '{}' from rank {} tag {}: expected {} bytes ({} {}), got a larger message\n"
             "HINT: sender and receiver disagree on the shape or dtype of this message",
             group_, peer_, tag_, t_.nbytes(), shape_str(t_.shape()), dtype_name(t_.dtype()));
    detail::throw_mpi_error(__FILE__, __LINE__, call, rc, group_);
  }
  void complete(const MPI_Status& st) {
    if (kind_ == Kind::reduce) round_low_precision(t_);
    if (kind_ == Kind::recv) {
      int got = 0;
      MPI_CHECK(group_, MPI_Get_count(&st, MPI_BYTE, &got));
      PT_CHECK(static_cast<size_t>(got) == t_.nbytes(),
               "irecv on group '{}' from rank {} tag {}: expected {} bytes ({} {}), got {} bytes\n"
               "HINT: sender and receiver disagree on the shape or dtype of this message",
               group_, peer_, tag_,
               t_.nbytes(), shape_str(t_.shape()), dtype_name(t_.dtype()), got);
    }
  }
  Kind kind_;
  Tensor t_;
  std::string group_;
  int peer_, tag_;
  MPI_Request req_ = MPI_REQUEST_NULL;
  bool done_ = false;
};

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, std::string name) : comm_(comm), name_(std::move(name)) {
    PT_CHECK(comm != MPI_COMM_NULL, "make_mpi_communicator('{}'): MPI_COMM_NULL", name_);
    MPI_CHECK(name_, MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    MPI_CHECK(name_, MPI_Comm_rank(comm_, &rank_));
    MPI_CHECK(name_, MPI_Comm_size(comm_, &size_));
    void* ub = nullptr;
    int flag = 0;
    MPI_CHECK(name_, MPI_Comm_get_attr(comm_, MPI_TAG_UB, &ub, &flag));
    if (flag && ub) tag_ub_ = *static_cast<int*>(ub);
  }
  ~MpiCommunicator() override {
    if (comm_ == MPI_COMM_WORLD || comm_ == MPI_COMM_SELF) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
  }
  MPI_Comm handle() const { return comm_; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }

  void all_reduce(Tensor& t, ReduceOp op) override {
    if (on_device(t)) {
      if (size_ == 1) return;
      Tensor h = host_copy(t);
      all_reduce(h, op);
      return t.copy_from(h);
    }
    MPI_Datatype type = float_type(t, name_, "all_reduce");
    if (size_ == 1) return;
    MPI_CHECK(name_, MPI_Allreduce(MPI_IN_PLACE, t.raw(), count_of(t.numel(), name_, "all_reduce"), type,
                                   mpi_op(op), comm_));
    round_low_precision(t);
  }

  std::unique_ptr<Request> all_reduce_async(Tensor& t, ReduceOp op) override {
    if (on_device(t)) {
      if (size_ == 1) return std::make_unique<DoneRequest>();
      Tensor h = host_copy(t);
      return std::make_unique<StagedRequest>(all_reduce_async(h, op), h, t);
    }
    MPI_Datatype type = float_type(t, name_, "all_reduce_async");
    if (size_ == 1) return std::make_unique<DoneRequest>();
    auto r = std::make_unique<MpiRequest>(MpiRequest::Kind::reduce, t, name_, -1, -1);
    MPI_CHECK(name_, MPI_Iallreduce(MPI_IN_PLACE, t.raw(), count_of(t.numel(), name_, "all_reduce_async"), type,
                                    mpi_op(op), comm_, r->handle()));
    return r;
  }

  void all_reduce(std::span<double> v, ReduceOp op) override {
    if (size_ == 1 || v.empty()) return;
    MPI_CHECK(name_, MPI_Allreduce(MPI_IN_PLACE, v.data(), count_of(static_cast<int64_t>(v.size()), name_, "all_reduce"),
                                   MPI_DOUBLE, mpi_op(op), comm_));
  }

  void all_gather(const Tensor& in, Tensor& out) override {
    check_chunked(out, in, "all_gather", "out", "in");
    if (on_device(in) || on_device(out))
      return staged(in, out, [&](const Tensor& hi, Tensor& ho) { all_gather(hi, ho); });
    MPI_Datatype type = any_type(in, name_, "all_gather");
    if (size_ == 1) return copy_single(in, out);
    const int n = count_of(in.numel(), name_, "all_gather");
    MPI_CHECK(name_, MPI_Allgather(in.raw(), n, type, out.raw(), n, type, comm_));
  }

  void reduce_scatter(const Tensor& in, Tensor& out) override {
    check_chunked(in, out, "reduce_scatter", "in", "out");
    if (on_device(in) || on_device(out))
      return staged(in, out, [&](const Tensor& hi, Tensor& ho) { reduce_scatter(hi, ho); });
    MPI_Datatype type = float_type(in, name_, "reduce_scatter");
    if (size_ == 1) return copy_single(in, out);
    MPI_CHECK(name_, MPI_Reduce_scatter_block(in.raw(), out.raw(), count_of(out.numel(), name_, "reduce_scatter"),
                                              type, MPI_SUM, comm_));
    round_low_precision(out);
  }

  void broadcast(Tensor& t, int root) override {
    check_rank(root, "broadcast", "root");
    if (on_device(t)) {
      if (size_ == 1) return;
      Tensor h = host_copy(t);
      broadcast(h, root);
      return t.copy_from(h);
    }
    MPI_Datatype type = any_type(t, name_, "broadcast");
    if (size_ == 1) return;
    MPI_CHECK(name_, MPI_Bcast(t.raw(), count_of(t.numel(), name_, "broadcast"), type, root, comm_));
  }

  std::unique_ptr<Request> isend(const Tensor& t, int dst, int tag) override {
    if (on_device(t)) {  // the host copy travels (the request keeps it alive)
      Tensor h = host_copy(t);
      return std::make_unique<StagedRequest>(isend(h, dst, tag), h, Tensor());
    }
    check_p2p(t, dst, tag, "isend");
    auto r = std::make_unique<MpiRequest>(MpiRequest::Kind::send, t, name_, dst, tag);
    MPI_CHECK(name_, MPI_Isend(t.raw(), bytes_of(t, "isend"), MPI_BYTE, dst, tag, comm_, r->handle()));
    return r;
  }

  void recv(Tensor& t, int src, int tag) override {
    if (on_device(t)) {
      Tensor h = host_like(t);
      recv(h, src, tag);
      return t.copy_from(h);
    }
    check_p2p(t, src, tag, "recv");
    // Probe first so a size mismatch is reported with both sizes and the message is still
    // consumed (a truncated MPI_Recv would lose the real size).
    MPI_Message msg;
    MPI_Status st;
    MPI_CHECK(name_, MPI_Mprobe(src, tag, comm_, &msg, &st));
    int got = 0;
    MPI_CHECK(name_, MPI_Get_count(&st, MPI_BYTE, &got));
    if (static_cast<size_t>(got) != t.nbytes()) {
      std::vector<char> sink(static_cast<size_t>(got));
      MPI_CHECK(name_, MPI_Mrecv(sink.data(), got, MPI_BYTE, &msg, MPI_STATUS_IGNORE));
      PT_CHECK(false,
               "recv on group '{}' (rank {}) from rank {} tag {}: expected {} bytes ({} {}), got {} bytes\n"
               "HINT: sender and receiver disagree on the shape or dtype of this message",
               name_, rank_, src, tag, t.nbytes(), shape_str(t.shape()), dtype_name(t.dtype()), got);
    }
    MPI_CHECK(name_, MPI_Mrecv(t.raw(), got, MPI_BYTE, &msg, MPI_STATUS_IGNORE));
  }

  std::unique_ptr<Request> irecv(Tensor& t, int src, int tag) override {
    if (on_device(t)) {
      Tensor h = host_like(t);
      return std::make_unique<StagedRequest>(irecv(h, src, tag), h, t);
    }
    check_p2p(t, src, tag, "irecv");
    auto r = std::make_unique<MpiRequest>(MpiRequest::Kind::recv, t, name_, src, tag);
    MPI_CHECK(name_, MPI_Irecv(t.raw(), bytes_of(t, "irecv"), MPI_BYTE, src, tag, comm_, r->handle()));
    return r;
  }

  void barrier() override {
    if (size_ == 1) return;
    MPI_CHECK(name_, MPI_Barrier(comm_));
  }

  std::vector<std::string> gather_strings(const std::string& s, int root) override {
    check_rank(root, "gather_strings", "root");
    if (size_ == 1) return {s};
    const int len = count_of(static_cast<int64_t>(s.size()), name_, "gather_strings");
    std::vector<int> lens(rank_ == root ? static_cast<size_t>(size_) : 0);
    MPI_CHECK(name_, MPI_Gather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, root, comm_));
    std::vector<int> displs(lens.size());
    int64_t total = 0;
    for (size_t i = 0; i < lens.size(); ++i) {
      displs[i] = static_cast<int>(total);
      total += lens[i];
    }
    count_of(total, name_, "gather_strings");
    std::string all(static_cast<size_t>(total), '\0');
    MPI_CHECK(name_, MPI_Gatherv(s.data(), len, MPI_CHAR, all.data(), lens.data(), displs.data(), MPI_CHAR, root,
                                 comm_));
    std::vector<std::string> out;
    if (rank_ != root) return out;
    out.reserve(lens.size());
    for (size_t i = 0; i < lens.size(); ++i) out.emplace_back(all, static_cast<size_t>(displs[i]), static_cast<size_t>(lens[i]));
    return out;
  }

 private:
  /// big [size*n, ...] and small [n, ...], same dtype.
  void check_chunked(const Tensor& big, const Tensor& small, const char* what, const char* big_name,
                     const char* small_name) {
    PT_CHECK(big.defined() && small.defined(), "{} on group '{}': undefined tensor", what, name_);
    PT_CHECK(big.dtype() == small.dtype(), "{} on group '{}': {} is {} but {} is {}", what, name_, big_name,
             dtype_name(big.dtype()), small_name, dtype_name(small.dtype()));
    bool ok = big.ndim() >= 1 && big.ndim() == small.ndim() && big.dim(0) == size_ * small.dim(0);
    for (int i = 1; ok && i < big.ndim(); ++i) ok = big.dim(i) == small.dim(i);
    PT_CHECK(ok, "{} on group '{}' (size {}): {} {} must be [{} * n, ...] for {} {} = [n, ...]", what, name_, size_,
             big_name, shape_str(big.shape()), size_, small_name, shape_str(small.shape()));
  }
  /// `op` on host copies of in and out (device ones staged), the result uploaded into out.
  template <class Op>
  void staged(const Tensor& in, Tensor& out, Op&& op) {
    const Tensor hi = on_device(in) ? host_copy(in) : in;
    Tensor ho = on_device(out) ? host_like(out) : out;
    op(hi, ho);
    if (on_device(out)) out.copy_from(ho);
  }
  void copy_single(const Tensor& in, Tensor& out) {
    if (in.raw() != out.raw()) out.copy_from(in);
  }
  void check_rank(int r, const char* what, const char* role) {
    PT_CHECK(r >= 0 && r < size_, "{} on group '{}': {} {} out of range [0, {})", what, name_, role, r, size_);
  }
  void check_p2p(const Tensor& t, int peer, int tag, const char* what) {
    check_rank(peer, what, "peer");
    PT_CHECK(peer != rank_, "{} on group '{}': rank {} cannot send to or receive from itself", what, name_, rank_);
    PT_CHECK(tag >= 0 && tag <= tag_ub_, "{} on group '{}': tag {} out of range [0, {}]", what, name_, tag, tag_ub_);
    any_type(t, name_, what);
  }
  int bytes_of(const Tensor& t, const char* what) {
    return count_of(static_cast<int64_t>(t.nbytes()), name_, what);
  }

  MPI_Comm comm_;
  std::string name_;
  int rank_ = 0, size_ = 1;
  int tag_ub_ = 32767;  // the MPI standard's guaranteed minimum
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm comm, const std::string& name) {
  return std::make_unique<MpiCommunicator>(comm, name);
}

MPI_Comm mpi_handle(const Communicator& c) {
  auto* m = dynamic_cast<const MpiCommunicator*>(&c);
  return m ? m->handle() : MPI_COMM_NULL;
}

std::unique_ptr<Communicator> split_communicator(Communicator& parent, int color, int key, const std::string& name) {
  PT_CHECK(color >= 0, "split_communicator('{}' from '{}'): color {} must be >= 0", name, parent.name(), color);
  MPI_Comm h = mpi_handle(parent);
  if (h == MPI_COMM_NULL) {
    PT_CHECK(parent.size() == 1, "split_communicator('{}'): parent '{}' of size {} is not an MPI communicator", name,
             parent.name(), parent.size());
    return make_self_communicator(name);
  }
  MPI_Comm out = MPI_COMM_NULL;
  MPI_CHECK(parent.name(), MPI_Comm_split(h, color, key, &out));
  return make_mpi_communicator(out, name);
}

}  // namespace ptrain::parallel
