// parallel/grad_reducer.h — bucketed data-parallel gradient all-reduce, overlapped with backward.
//
// The gradient list is cut into buckets once, at construction, walking the list in REVERSE
// (the order backward produces gradients when the list is in forward/registration order).
// During a step, mark_ready(i) says gradient i is final (Tape::set_leaf_hook is the natural
// caller); a bucket whose members are all final is packed into one flat buffer and its
// all-reduce starts while backward goes on. finish() starts what is left, waits, and unpacks,
// so every gradient holds the sum over the dp group.
//
// Invariants:
//  * Every rank of `dp` builds its reducer with the same list (count, shapes, dtypes, order)
//    and the same bucket_bytes; the constructor checks this (one collective over `dp`).
//  * Buckets start strictly in bucket order: bucket b starts once it and every bucket before it
//    is complete (or in finish()). Every rank therefore issues the same sequence of collectives
//    whatever the order of its mark_ready calls. Do not call other collectives on `dp` between
//    begin_step() and finish() unless every rank makes the same mark_ready calls in the same
//    order relative to them.
//  * A bucket is homogeneous in its wire type: f32 (f32, and bf16/f16 emulated as floats) or
//    f64; bucket size counts wire bytes (4 per element for f32/bf16/f16, 8 for f64).
//  * bf16/f16 gradients are summed in f32 and rounded once, on store (round to nearest even).
//  * Deterministic: the result depends only on the inputs, the dp group size and the bucket
//    layout (MPI's reduction order for one communicator size and message length is fixed;
//    a different bucket_bytes may change the summation order and so the last bits).
//  * Gradients are host or device tensors whose storage must stay the same object from
//    construction on: zero them in place (Tensor::zero_), never clear_grad() + reallocate.
//    Device gradients are packed from host copies and unpacked by uploads (the MPI path,
//    staged through host memory; the same sums and rounding as host gradients).
//    After mark_ready(i), gradient i must not be read or written until finish() returns.
//  * On a dp group of size 1 every call is a no-op (buckets are still formed, for reports).
#pragma once
#include <cstddef>
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "parallel/comm.h"

namespace ptrain::parallel {

class GradReducer {
 public:
  /// grads: gradient buffers (f32, or bf16/f16 emulated as floats rounded on store, or f64 in
  /// tests), identical list and shapes on every rank of `dp`. Buckets are formed over the list
  /// in reverse order, each up to bucket_bytes wire bytes (a tensor larger than that gets a
  /// bucket of its own). Collective over `dp` (checks that every rank passed the same list).
  GradReducer(std::vector<Tensor> grads, Communicator& dp, size_t bucket_bytes = 25u << 20);
  /// Waits for any reduction still in flight (so MPI never writes into freed buffers).
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  /// Starts a step: nothing ready, nothing in flight. Throws if the previous step was not finished.
  void begin_step();
  /// Gradient i is final for this step. When every member of its bucket (and of every earlier
  /// bucket) is ready, packs the bucket and starts its all-reduce; also tests in-flight
  /// requests to drive MPI progress (and unpacks those that completed). Marking a gradient
  /// twice in one step, or outside begin_step()/finish(), throws.
  void mark_ready(size_t i);
  /// Starts every bucket not yet started (members never marked ready are reduced as they are),
  /// waits for all, unpacks (bf16/f16 rounded on store): every gradient then equals the sum
  /// over the dp ranks. Without begin_step() it reduces everything (no overlap).
  void finish();

  size_t num_grads() const { return grads_.size(); }
  size_t num_buckets() const { return buckets_.size(); }
  /// Member indices (into the grads list) of bucket b, in packing order (descending index).
  const std::vector<size_t>& bucket(size_t b) const;
  /// The bucket holding gradient i.
  size_t bucket_of(size_t i) const;
  /// Wire bytes of bucket b.
  size_t bucket_bytes(size_t b) const;
  /// How many buckets of the last (or current) step were started by mark_ready, i.e. before
  /// finish(): evidence of overlap for tests and metrics. Always 0 on a group of size 1.
  size_t buckets_started_before_finish() const { return started_early_; }

 private:
  struct Bucket {
    std::vector<size_t> members;   ///< indices into grads_, descending
    std::vector<int64_t> offsets;  ///< element offset of each member in the flat buffer
    int64_t numel = 0;
    DType wire = DType::f32;       ///< f32 or f64
    bool in_place = false;         ///< a single f32/f64 member: reduced in its own storage
    size_t ready = 0;              ///< members marked ready this step
    bool started = false;
    bool done = false;             ///< reduced and unpacked this step
    Tensor flat;                   ///< [numel] wire-type buffer while in flight
    std::unique_ptr<Request> req;
  };
  void start(size_t b);
  void start_complete_prefix();
  void poll();
  void complete(size_t b);  ///< waits for bucket b and unpacks it
  void check_index(size_t i, const char* what) const;
  void check_same_on_all_ranks();

  std::vector<Tensor> grads_;
  Communicator& dp_;
  size_t bucket_bytes_;
  std::vector<Bucket> buckets_;
  std::vector<size_t> bucket_of_;
  std::vector<bool> ready_;
  size_t next_start_ = 0;     ///< buckets [0, next_start_) are started this step
  size_t started_early_ = 0;
  bool active_ = false;       ///< between begin_step() and finish()
};

}  // namespace ptrain::parallel
