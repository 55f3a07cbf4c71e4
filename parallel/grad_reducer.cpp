// parallel/grad_reducer.cpp — bucketed data-parallel gradient all-reduce (see grad_reducer.h).
#include "parallel/grad_reducer.h"

#include <array>
#include <cstring>
#include <unordered_set>

namespace ptrain::parallel {
namespace {

DType wire_of(DType t) { return t == DType::f64 ? DType::f64 : DType::f32; }
size_t wire_size(DType wire) { return wire == DType::f64 ? 8 : 4; }

/// FNV-1a over 64-bit words.
void mix(uint64_t& h, uint64_t v) {
  for (int k = 0; k < 8; ++k) {
    h ^= (v >> (8 * k)) & 0xffu;
    h *= 1099511628211ull;
  }
}

}  // namespace

GradReducer::GradReducer(std::vector<Tensor> grads, Communicator& dp, size_t bucket_bytes)
    : grads_(std::move(grads)), dp_(dp), bucket_bytes_(bucket_bytes) {
  std::unordered_set<const void*> seen;
  for (size_t i = 0; i < grads_.size(); ++i) {
    const Tensor& g = grads_[i];
    PT_CHECK(g.defined(), "GradReducer on group '{}': gradient {} is undefined\nHINT: allocate gradient buffers "
             "(Tensor::grad_buffer) before building the reducer", dp_.name(), i);
    PT_CHECK(g.dtype() == DType::f32 || g.dtype() == DType::bf16 || g.dtype() == DType::f16 || g.dtype() == DType::f64,
             "GradReducer on group '{}': gradient {} has dtype {}; expected f32, bf16, f16 or f64", dp_.name(), i,
             dtype_name(g.dtype()));
    PT_CHECK(g.numel() == 0 || seen.insert(g.raw()).second,
             "GradReducer on group '{}': gradient {} shares its storage with an earlier one (it would be summed "
             "twice)\nHINT: list each parameter's gradient once (tied weights: once)", dp_.name(), i);
  }

  // Buckets over the list in reverse order, each homogeneous in wire type.
  bucket_of_.assign(grads_.size(), 0);
  size_t cur_bytes = 0;
  for (size_t i = grads_.size(); i-- > 0;) {
    const DType wire = wire_of(grads_[i].dtype());
    const size_t bytes = static_cast<size_t>(grads_[i].numel()) * wire_size(wire);
    if (buckets_.empty() || buckets_.back().wire != wire || cur_bytes + bytes > bucket_bytes_) {
      if (buckets_.empty() || !buckets_.back().members.empty()) buckets_.emplace_back();
      buckets_.back().wire = wire;
      cur_bytes = 0;
    }
    Bucket& b = buckets_.back();
    b.members.push_back(i);
    b.offsets.push_back(b.numel);
    b.numel += grads_[i].numel();
    cur_bytes += bytes;
    bucket_of_[i] = buckets_.size() - 1;
  }
  for (Bucket& b : buckets_)
    b.in_place = b.members.size() == 1 && grads_[b.members[0]].dtype() == b.wire &&
                 grads_[b.members[0]].device() == Device::cpu;
  ready_.assign(grads_.size(), false);
  check_same_on_all_ranks();
}

GradReducer::~GradReducer() {
  for (Bucket& b : buckets_)
    if (b.req) {
      try {
        b.req->wait();
      } catch (...) {  // a destructor must not throw; the error was (or will be) reported elsewhere
      }
    }
}

// Every rank must pass the same list: compares (count, total elements, hash of dtypes and
// shapes, bucket_bytes) over the group with one all-reduce of max(v) and max(-v).
void GradReducer::check_same_on_all_ranks() {
  if (dp_.size() == 1) return;
  uint64_t h = 1469598103934665603ull;
  int64_t total = 0;
  for (const Tensor& g : grads_) {
    mix(h, static_cast<uint64_t>(g.dtype()));
    mix(h, static_cast<uint64_t>(g.ndim()));
    for (int64_t d : g.shape()) mix(h, static_cast<uint64_t>(d));
    total += g.numel();
  }
  const std::array<double, 5> mine = {static_cast<double>(grads_.size()), static_cast<double>(total),
                                      static_cast<double>(h >> 32), static_cast<double>(h & 0xffffffffu),
                                      static_cast<double>(bucket_bytes_)};
  std::array<double, 10> v{};
  for (size_t k = 0; k < 5; ++k) {
    v[k] = mine[k];
    v[5 + k] = -mine[k];
  }
  dp_.all_reduce(std::span<double>(v), ReduceOp::max);
  bool same = true;
  for (size_t k = 0; k < 5; ++k) same = same && v[k] == -v[5 + k];
  PT_CHECK(same,
           "GradReducer on group '{}' (size {}): ranks passed different gradient lists or bucket sizes (this rank: "
           "{} gradients, {} elements, bucket_bytes {})\nHINT: every data-parallel rank must list the same "
           "parameters' gradients, with the same shapes and dtypes, in the same order",
           dp_.name(), dp_.size(), grads_.size(), total, bucket_bytes_);
}

const std::vector<size_t>& GradReducer::bucket(size_t b) const {
  PT_CHECK(b < buckets_.size(), "GradReducer: bucket {} of {}", b, buckets_.size());
  return buckets_[b].members;
}

size_t GradReducer::bucket_of(size_t i) const {
  check_index(i, "bucket_of");
  return bucket_of_[i];
}

size_t GradReducer::bucket_bytes(size_t b) const {
  PT_CHECK(b < buckets_.size(), "GradReducer: bucket {} of {}", b, buckets_.size());
  return static_cast<size_t>(buckets_[b].numel) * wire_size(buckets_[b].wire);
}

void GradReducer::check_index(size_t i, const char* what) const {
  PT_CHECK(i < grads_.size(), "GradReducer::{} on group '{}': gradient {} of {}", what, dp_.name(), i,
           grads_.size());
}

void GradReducer::begin_step() {
  PT_CHECK(!active_, "GradReducer::begin_step on group '{}': the previous step was not finished\nHINT: call "
           "finish() after backward, every step", dp_.name());
  active_ = true;
  ready_.assign(grads_.size(), false);
  next_start_ = 0;
  started_early_ = 0;
  for (Bucket& b : buckets_) {
    b.ready = 0;
    b.started = false;
    b.done = false;
  }
}

void GradReducer::mark_ready(size_t i) {
  check_index(i, "mark_ready");
  PT_CHECK(active_, "GradReducer::mark_ready({}) on group '{}' outside a step\nHINT: call begin_step() before "
           "backward", i, dp_.name());
  PT_CHECK(!ready_[i], "GradReducer::mark_ready({}) on group '{}': gradient already marked ready this step", i,
           dp_.name());
  ready_[i] = true;
  ++buckets_[bucket_of_[i]].ready;
  if (dp_.size() == 1) return;
  const size_t before = next_start_;
  start_complete_prefix();
  started_early_ += next_start_ - before;
  poll();
}

void GradReducer::start_complete_prefix() {
  while (next_start_ < buckets_.size() && buckets_[next_start_].ready == buckets_[next_start_].members.size())
    start(next_start_++);
}

void GradReducer::start(size_t bi) {
  Bucket& b = buckets_[bi];
  b.started = true;
  if (b.numel == 0) {  // nothing to send (every rank knows: same shapes everywhere)
    b.done = true;
    return;
  }
  if (b.in_place) {
    b.flat = grads_[b.members[0]];
  } else {
    b.flat = Tensor::empty({b.numel}, b.wire);  // (numel)
    for (size_t m = 0; m < b.members.size(); ++m) {
      // a device gradient is packed from its host copy (bf16/f16 widened exactly)
      const Tensor g = grads_[b.members[m]].device() == Device::cpu ? grads_[b.members[m]]
                                                                     : grads_[b.members[m]].to_device(Device::cpu);
      const size_t off = static_cast<size_t>(b.offsets[m]);
      if (b.wire == DType::f64)
        std::memcpy(b.flat.data<double>() + off, g.data<double>(), g.numel() * sizeof(double));
      else
        std::memcpy(b.flat.data<float>() + off, g.data<float>(), g.numel() * sizeof(float));
    }
  }
  b.req = dp_.all_reduce_async(b.flat, ReduceOp::sum);
}

void GradReducer::poll() {
  for (size_t bi = 0; bi < next_start_; ++bi) {
    Bucket& b = buckets_[bi];
    if (b.req && b.req->test()) complete(bi);
  }
}

void GradReducer::complete(size_t bi) {
  Bucket& b = buckets_[bi];
  if (b.done) return;
  if (b.req) {
    b.req->wait();
    b.req.reset();
  }
  if (!b.in_place) {
    for (size_t m = 0; m < b.members.size(); ++m) {
      Tensor& g = grads_[b.members[m]];
      const size_t off = static_cast<size_t>(b.offsets[m]);
      if (g.device() != Device::cpu) {  // up from the bucket, rounded to g's dtype on the way (as round_())
        g.copy_from(b.flat.rows(static_cast<int64_t>(off), static_cast<int64_t>(off) + g.numel()).view(g.shape()));
      } else if (b.wire == DType::f64) {
        std::memcpy(g.data<double>(), b.flat.data<double>() + off, g.numel() * sizeof(double));
      } else {
        std::memcpy(g.data<float>(), b.flat.data<float>() + off, g.numel() * sizeof(float));
        g.round_();  // bf16/f16: summed in f32, rounded once on store; f32: no-op
      }
    }
  }
  b.flat = Tensor();
  b.done = true;
}

void GradReducer::finish() {
  if (!active_) begin_step();  // no overlap: reduce everything now
  active_ = false;
  if (dp_.size() == 1) return;
  while (next_start_ < buckets_.size()) start(next_start_++);
  for (size_t bi = 0; bi < buckets_.size(); ++bi) complete(bi);
}

}  // namespace ptrain::parallel
