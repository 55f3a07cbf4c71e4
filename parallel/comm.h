// parallel/comm.h — the communicator interface every parallel algorithm talks through.
//
// One interface, two implementations: MPI (host buffers; every rank on CPUs, or several
// ranks sharing a GPU with device buffers staged through host memory) now, NCCL (device
// buffers, stream ordered) with the CUDA backend. Schedules, tensor-parallel layers and the
// data-parallel reducer see only this interface, so none of them changes when NCCL arrives.
//
// Invariants:
//  * A Communicator is a group of ranks (a row of the process grid: tp, pp, dp, or world);
//    rank() is this process's index inside the group.
//  * Collectives on a group of size 1 return at once (no copy, no library call).
//  * Collectives are called by every rank of the group in the same order (MPI semantics).
//  * Tensors are contiguous; all_reduce/broadcast work in place. Low-precision tensors
//    (bf16/f16, emulated on the CPU as floats rounded on store) are reduced in fp32 and
//    rounded once afterwards; f64 is reduced in f64; i32 only by broadcast/send/recv.
//  * Point-to-point messages between two ranks match by tag, whatever their order.
//  * Errors (an MPI failure, a peer that died) throw ptrain::Error naming the group.
#pragma once
#include <memory>
#include <span>
#include <string>

#include "core/tensor.h"

namespace ptrain::parallel {

enum class ReduceOp { sum, max };

/// An operation in flight (isend, an async all-reduce). wait() completes it; the tensors
/// handed to the operation must stay alive and untouched until then.
class Request {
 public:
  virtual ~Request() = default;
  /// Blocks until complete (idempotent).
  virtual void wait() = 0;
  /// Completes without blocking if possible; returns whether it is complete. Also drives
  /// progress of the library (MPI progresses non-blocking collectives only inside calls).
  virtual bool test() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  /// Group name for messages and traces ("tp", "pp", "dp", "world", "embed").
  virtual const std::string& name() const = 0;

  /// t <- op over ranks of t (in place).
  virtual void all_reduce(Tensor& t, ReduceOp op = ReduceOp::sum) = 0;
  /// Non-blocking all_reduce; the result is in t after wait().
  virtual std::unique_ptr<Request> all_reduce_async(Tensor& t, ReduceOp op = ReduceOp::sum) = 0;
  /// Host scalars (losses, norms, partial sums) in double.
  virtual void all_reduce(std::span<double> v, ReduceOp op = ReduceOp::sum) = 0;
  /// out [size*n, ...] <- concatenation over ranks (rank order) of in [n, ...] along dim 0.
  virtual void all_gather(const Tensor& in, Tensor& out) = 0;
  /// out [n, ...] <- this rank's dim-0 chunk of the sum over ranks of in [size*n, ...].
  virtual void reduce_scatter(const Tensor& in, Tensor& out) = 0;
  /// t <- root's t.
  virtual void broadcast(Tensor& t, int root) = 0;
  /// Sends t to group rank dst; t must stay alive and unchanged until the request completes.
  virtual std::unique_ptr<Request> isend(const Tensor& t, int dst, int tag) = 0;
  /// Receives into t (its shape and dtype must match what was sent) from group rank src.
  virtual void recv(Tensor& t, int src, int tag) = 0;
  /// Non-blocking receive.
  virtual std::unique_ptr<Request> irecv(Tensor& t, int src, int tag) = 0;
  virtual void barrier() = 0;
  /// Byte strings of every rank, in rank order, at group rank `root` (others get {}).
  virtual std::vector<std::string> gather_strings(const std::string& s, int root) = 0;
};

/// A group with one rank: every collective returns at once.
std::unique_ptr<Communicator> make_self_communicator(const std::string& name);

}  // namespace ptrain::parallel
