// launch/memory_plan.cpp — the model of memory (see memory_plan.h for what it models).
//
// Structure:
//   1. GPU table, host memory, the restated scratch formulas;
//   2. Sim: device bytes by kind through a real cuda::CachingAllocator over a fake backing
//      (addresses only, never dereferenced), peak and the breakdown at the peak;
//   3. symbolic tensors and a symbolic tape mirroring core/autograd.cpp (slots, gradient
//      buffers, take_grad_out, deferred weight gradients), the recompute policy mirroring
//      core/recompute.cpp (regions, dropped saves, reruns on a capture tape), and the
//      activation offload policy;
//   4. the device ops (core/cuda/ops_device.cpp) and TP mappings (parallel/tp_ops.cpp):
//      what each allocates, saves and scratches;
//   5. the layers (llama, gpt2 and their norms, attentions and MLPs) and the model stage
//      (launch/model_stage.cpp), run over the schedule's action list for one pipeline rank;
//   6. plan_memory, advice, reports.
// Invariants: no real tensor is allocated (the symbolic buffers hold sizes only); the
// symbolic ops follow the real ones allocation for allocation, in the same order, so a
// change to an op's saves or scratch must be mirrored here (the calibration test compares
// with the emulated device's allocator).
#include "launch/memory_plan.h"
#include "optim/compact_state.h"
#include "optim/offload.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include "core/cuda/caching_allocator.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"
#if PTRAIN_HAVE_CUDA
#include "core/cuda/device.h"
#endif
#include "layers/registry.h"
#include "parallel/partition.h"
#include "parallel/schedule.h"

namespace ptrain::launch {

// ============================================================================ 1. GPUs, host

namespace {

constexpr int64_t kMiB = int64_t{1} << 20;
constexpr int64_t kGiB = int64_t{1} << 30;
/// The GEMM layer's cuBLASLt workspace (core/cuda/gemm.h kGemmWorkspaceBytes), one per stream
/// that runs GEMMs (the default stream), cudaMalloc'ed outside the caching allocator.
constexpr int64_t kGemmWorkspace = int64_t{32} << 20;
/// CUDA context + cuBLASLt's kernels on a real GPU, before ptrain allocates (typical CUDA 12).
constexpr int64_t kCudaContext = int64_t{512} << 20;

/// The emulated device: PTRAIN_SIMT_DEVICE_MEMORY (parsed as core/simt/cuda_api.cpp does),
/// default 24 GiB, rounded up to 4 KiB.
int64_t emulated_device_bytes() {
  double v = 24.0 * static_cast<double>(kGiB);
  if (const char* s = std::getenv("PTRAIN_SIMT_DEVICE_MEMORY")) {
    char* end = nullptr;
    double x = std::strtod(s, &end);
    if (end != s && x > 0) {
      switch (*end) {
        case 'k': case 'K': x *= 1024.0; break;
        case 'm': case 'M': x *= 1024.0 * 1024; break;
        case 'g': case 'G': x *= 1024.0 * 1024 * 1024; break;
        default: break;
      }
      v = x;
    }
  }
  const auto b = static_cast<int64_t>(v);
  return (b + 4095) / 4096 * 4096;
}

std::vector<GpuSpec> make_gpu_table() {
  // total_bytes: the totals cudaMemGetInfo reports (what ptrain's banner shows), to within
  // a few MiB across drivers.
  return {
      {"rtx4090-24g", "NVIDIA GeForce RTX 4090 (24 GB)", 25393692672, kCudaContext, false},
      {"rtx3090-24g", "NVIDIA GeForce RTX 3090 (24 GB)", 25447170048, kCudaContext, false},
      {"a100-40g", "NVIDIA A100 40GB", 42505273344, kCudaContext, false},
      {"a100-80g", "NVIDIA A100 80GB", 85097971712, kCudaContext, false},
      {"h100-80g", "NVIDIA H100 80GB HBM3", 85029158912, kCudaContext, false},
      // the emulated process: no CUDA runtime (a 2-core CI box measures ~20-40 MiB of RSS besides the model)
      {"emulated", "ptrain emulated RTX 4090 (SIMT on the CPU)", emulated_device_bytes(), 0, true, int64_t{128} << 20},
  };
}

std::string gib(int64_t b) { return fmt::format("{:.2f}", static_cast<double>(b) / static_cast<double>(kGiB)); }
/// "0", "12.0 KiB", "345.6 MiB", "6.21 GiB".
std::string human(int64_t b) {
  const double x = static_cast<double>(b);
  if (b == 0) return "0";
  if (b < kMiB) return fmt::format("{:.1f} KiB", x / 1024.0);
  if (b < kGiB) return fmt::format("{:.1f} MiB", x / static_cast<double>(kMiB));
  return fmt::format("{:.2f} GiB", x / static_cast<double>(kGiB));
}

}  // namespace

const std::vector<GpuSpec>& known_gpus() {
  static const std::vector<GpuSpec> table = make_gpu_table();
  return table;
}

const GpuSpec* find_gpu(std::string_view name) {
  for (const GpuSpec& g : known_gpus())
    if (g.name == name) return &g;
  return nullptr;
}

std::string known_gpu_names() {
  std::string s;
  for (const GpuSpec& g : known_gpus()) {
    if (!s.empty()) s += ", ";
    s += g.name;
  }
  return s;
}

std::optional<GpuSpec> current_device_spec() {
#if PTRAIN_HAVE_CUDA
  if (cuda::device_count() == 0) return std::nullopt;
  const cuda::DeviceInfo info = cuda::device_info(0);
#if PTRAIN_CUDA_EMULATED
  const bool emulated = true;
#else
  const bool emulated = false;
#endif
  return GpuSpec{"device0", info.name, static_cast<int64_t>(info.total_memory), emulated ? 0 : kCudaContext,
                 emulated, emulated ? int64_t{128} << 20 : int64_t{1} << 30};
#else
  return std::nullopt;
#endif
}

int64_t host_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  while (in >> key) {
    if (key == "MemTotal:") {
      in >> kb;
      return kb * 1024;
    }
    std::string rest;
    std::getline(in, rest);
  }
  return 0;
}

namespace detail {

namespace {
int64_t align256(int64_t n) { return (n + 255) / 256 * 256; }
int64_t chunks64(int64_t rows) { return (rows + 63) / 64; }  // kRmsNormDwChunk = kLayerNormDwChunk = 64
}  // namespace

int64_t attention_forward_scratch_bytes(DType dt, int64_t B, int64_t T, int64_t Hkv) {
  if (dt == DType::f32 || B <= 0 || T <= 0 || Hkv <= 0) return 0;
  return align256(B * Hkv * T * T * 4);
}

int64_t attention_backward_scratch_bytes(DType dt, int64_t B, int64_t T, int64_t Hkv) {
  if (B <= 0 || T <= 0 || Hkv <= 0) return 0;
  const int64_t n = B * Hkv * T * T, dp = align256(n * 4);
  return dt == DType::f32 ? dp : dp + align256(n * 2);
}

int64_t rms_norm_backward_scratch_bytes(int64_t rows, int64_t C) {
  return rows <= 0 || C <= 0 ? 0 : chunks64(rows) * C * 4;
}

int64_t layer_norm_backward_scratch_bytes(int64_t rows, int64_t C) {
  return rows <= 0 || C <= 0 ? 0 : 2 * chunks64(rows) * C * 4;
}

int64_t embedding_backward_scratch_bytes(int64_t n) {
  if (n <= 0) return 0;
  int64_t p = 64;  // kMinKeys
  while (p < n) p <<= 1;
  return p * 8;  // unsigned long long keys
}

int64_t optim_table_bytes(int64_t n) { return n > 0 ? n * 64 : 0; }  // sizeof(OptimTensorDesc)

}  // namespace detail

// ============================================================================ 2. Sim

namespace {

enum class Cat : uint8_t { weights, grads, master, moments, act, saved, logits, act_grads, scratch, comm, other, count };
constexpr size_t kCats = static_cast<size_t>(Cat::count);

/// Addresses only: the caching allocator's bookkeeping runs for real, nothing is touched.
class FakeBacking final : public cuda::DeviceBacking {
 public:
  explicit FakeBacking(size_t total) : total_(total) {}
  void* raw_alloc(size_t bytes) override {
    void* p = reinterpret_cast<void*>(next_);
    next_ += (bytes + 4095) / 4096 * 4096;
    return p;
  }
  void raw_free(void*) override {}
  size_t device_total_memory() const override { return total_; }
  cuda::EventId record_event(cuda::StreamId) override { return nullptr; }
  bool event_done(cuda::EventId) override { return true; }
  void destroy_event(cuda::EventId) override {}
  void synchronize_device() override {}
  void fill_nan(void*, size_t, cuda::StreamId) override {}
  bool host_addressable() const override { return false; }

 private:
  uintptr_t next_ = uintptr_t{1} << 32;
  size_t total_;
};

class Sim;

/// One storage (a device allocation, or host memory while offloaded).
struct Buf {
  Sim* sim = nullptr;
  void* ptr = nullptr;
  int64_t bytes = 0;
  Cat cat = Cat::act;
  bool on_device = true;
  Buf() = default;
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  ~Buf();
};
using BufP = std::shared_ptr<Buf>;

/// Where the simulation is (for the peak's description).
struct Phase {
  int step = 0;
  char action = 0;  ///< 'F', 'B', 'W', 'O' (optimizer), 0 (setup)
  int micro = -1, chunk = -1, block = -1;
};

class Sim {
 public:
  explicit Sim(int64_t capacity) : backing_(static_cast<size_t>(capacity)), alloc_(backing_) {}

  BufP alloc(int64_t bytes, Cat c) {
    auto b = std::make_shared<Buf>();
    b->sim = this;
    b->bytes = bytes;
    b->cat = c;
    if (bytes > 0) {
      b->ptr = alloc_.allocate(static_cast<size_t>(bytes), nullptr);
      add(c, bytes);
    }
    return b;
  }
  /// A host-side value of the device ops (the loss, its seed): no device bytes.
  BufP host() { return alloc(0, Cat::other); }

  void release(Buf& b) {
    if (b.bytes <= 0) return;
    if (b.on_device) {
      alloc_.deallocate(b.ptr);
      add(b.cat, -b.bytes);
    } else {
      host_live_ -= b.bytes;
    }
  }
  /// An op output kept for backward: counted as a saved activation from now on.
  void mark_saved(Buf& b) {
    if (b.cat != Cat::act) return;
    if (b.on_device) {
      cats_[static_cast<size_t>(Cat::act)] -= b.bytes;
      cats_[static_cast<size_t>(Cat::saved)] += b.bytes;
    }
    b.cat = Cat::saved;
  }
  void offload(Buf& b) {
    if (!b.on_device || b.bytes <= 0) return;
    alloc_.deallocate(b.ptr);
    add(b.cat, -b.bytes);
    b.ptr = nullptr;
    b.on_device = false;
    host_live_ += b.bytes;
    host_peak_ = std::max(host_peak_, host_live_);
  }
  void restore(Buf& b) {
    if (b.on_device || b.bytes <= 0) return;
    host_live_ -= b.bytes;
    b.on_device = true;
    b.ptr = alloc_.allocate(static_cast<size_t>(b.bytes), nullptr);
    add(b.cat, b.bytes);
  }

  Phase phase;
  int current_block = -1;
  class STape* current = nullptr;
  uint64_t next_tape_id = 1;

  int64_t peak() const { return peak_; }
  const std::array<int64_t, kCats>& at_peak() const { return at_peak_; }
  const Phase& peak_phase() const { return peak_phase_; }
  int64_t peak_reserved() const { return static_cast<int64_t>(alloc_.stats().peak_reserved); }
  int64_t host_peak() const { return host_peak_; }

 private:
  void add(Cat c, int64_t bytes) {
    cats_[static_cast<size_t>(c)] += bytes;
    live_ += bytes;
    if (live_ > peak_) {
      peak_ = live_;
      at_peak_ = cats_;
      peak_phase_ = phase;
    }
  }
  FakeBacking backing_;
  cuda::CachingAllocator alloc_;
  std::array<int64_t, kCats> cats_{}, at_peak_{};
  int64_t live_ = 0, peak_ = 0, host_live_ = 0, host_peak_ = 0;
  Phase peak_phase_;
};

Buf::~Buf() {
  if (sim) sim->release(*this);
}

// ============================================================================ 3. symbolic tensors and tape

int64_t numel_of(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}
int64_t device_bytes(const Shape& s, DType dt) { return numel_of(s) * static_cast<int64_t>(element_size(dt, Device::cuda)); }

struct SParam;

/// A tensor: shape, dtype, storage, and (as TensorImpl) the tape slot it was recorded in.
struct TImpl {
  BufP storage;
  Shape shape;
  DType dt = DType::f32;
  uint64_t tape = 0;
  int64_t slot = -1;
  SParam* param = nullptr;  ///< a parameter (requires grad)
};
using T = std::shared_ptr<TImpl>;

T fresh(Sim& s, Shape shape, DType dt, Cat c = Cat::act) {
  auto t = std::make_shared<TImpl>();
  t->storage = s.alloc(device_bytes(shape, dt), c);
  t->shape = std::move(shape);
  t->dt = dt;
  return t;
}
/// A new identity over the same storage (Tensor::view / rows).
T alias(const T& x, Shape shape) {
  auto t = std::make_shared<TImpl>();
  t->storage = x->storage;
  t->shape = std::move(shape);
  t->dt = x->dt;
  return t;
}
T host_tensor(Sim& s, Shape shape, DType dt) {
  auto t = std::make_shared<TImpl>();
  t->storage = s.host();
  t->shape = std::move(shape);
  t->dt = dt;
  return t;
}

struct SParam {
  std::string name;
  Shape shape, full_shape;
  DType dt = DType::f32;
  bool sharded = false;       ///< split over TP ranks (each rank writes its own piece)
  bool tied_replica = false;  ///< the last stage's copy of the tied embedding
  T value;
  BufP grad;
};

enum class RegionKind : uint8_t { block, attention_core, activation };
struct Region;

/// What Tape::save hands out (core/recompute.cpp's Handle): a kept tensor or a place in a region.
struct Handle {
  class Policy* policy = nullptr;  ///< the recompute policy that packed it (unpack clears its outputs)
  T kept;
  std::shared_ptr<Region> region;
  int64_t index = -1;
  bool output = false;
  Handle() = default;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle();
};
using Saved = std::shared_ptr<Handle>;

struct Hooks {
  virtual ~Hooks() = default;
  virtual Saved pack(const T& t) = 0;
  /// Called before each entry's backward (activation offload prefetches there).
  virtual void before_entry(int block) { (void)block; }
};

class STape;
class Policy;

/// BackwardCtx.
class BCtx {
 public:
  STape* tape = nullptr;
  size_t entry = 0;
  std::vector<BufP> gout;
  const BufP& grad_out(size_t i = 0) const { return gout[i]; }
  BufP take_grad_out(size_t i = 0);
  bool splitting() const;
  bool needs_grad(size_t i) const;
  BufP grad_in(size_t i);
  void accumulate(size_t i, BufP g);
  void weight_grad(std::function<void()> fn);
};

struct Entry {
  std::vector<int64_t> in_slots;
  std::vector<SParam*> leaves;
  std::vector<int64_t> in_bytes;
  std::vector<int64_t> out_slots;
  std::function<void(BCtx&)> backward;
  int block = -1;
};

class STape {
 public:
  explicit STape(Sim& s) : sim(s), id(s.next_tape_id++) {}
  STape(const STape&) = delete;
  STape& operator=(const STape&) = delete;
  ~STape() {
    deferred.clear();
    entries.clear();
    slot_grads.clear();
  }

  bool owns(const T& t) const { return t && t->tape == id && t->slot >= 0; }
  int64_t new_slot() {
    slot_grads.emplace_back();
    keep.push_back(0);
    return static_cast<int64_t>(slot_grads.size()) - 1;
  }
  Saved save(const T& t);
  void record(const std::vector<const T*>& inputs, const std::vector<T*>& outputs, std::function<void(BCtx&)> bwd) {
    Entry e;
    for (const T* p : inputs) {
      const T& t = *p;
      int64_t slot = -1;
      SParam* leaf = nullptr;
      int64_t bytes = 0;
      if (t && owns(t)) {
        slot = t->slot;
        bytes = device_bytes(t->shape, t->dt);
      } else if (t && t->param) {
        leaf = t->param;
      }
      e.in_slots.push_back(slot);
      e.leaves.push_back(leaf);
      e.in_bytes.push_back(bytes);
    }
    for (T* out : outputs) {
      const int64_t slot = new_slot();
      (*out)->tape = id;
      (*out)->slot = slot;
      e.out_slots.push_back(slot);
    }
    e.backward = std::move(bwd);
    e.block = sim.current_block;
    entries.push_back(std::move(e));
  }
  void watch(T& t) {
    if (t->tape == id) {
      keep[static_cast<size_t>(t->slot)] = 1;
      return;
    }
    t->tape = id;
    t->slot = new_slot();
    keep[static_cast<size_t>(t->slot)] = 1;
  }
  BufP grad_of(const T& t) const { return owns(t) ? slot_grads[static_cast<size_t>(t->slot)] : nullptr; }

  void backward(const std::vector<T>& roots, const std::vector<BufP>& seeds, bool split_weight_grads) {
    split = split_weight_grads;
    for (size_t r = 0; r < roots.size(); ++r) {
      BufP& g = slot_grads[static_cast<size_t>(roots[r]->slot)];
      if (!g) g = seeds[r]->bytes > 0 ? sim.alloc(seeds[r]->bytes, Cat::act_grads) : sim.host();  // seeds[r].clone()
    }
    BCtx ctx;
    ctx.tape = this;
    for (size_t k = entries.size(); k-- > 0;) {
      Entry& e = entries[k];
      if (hooks) hooks->before_entry(e.block);
      sim.phase.block = e.block;
      bool any = false;
      ctx.gout.clear();
      for (int64_t s : e.out_slots) {
        ctx.gout.push_back(slot_grads[static_cast<size_t>(s)]);
        any = any || ctx.gout.back() != nullptr;
      }
      if (any) {
        ctx.entry = k;
        e.backward(ctx);
      }
      for (int64_t s : e.out_slots)
        if (!keep[static_cast<size_t>(s)]) slot_grads[static_cast<size_t>(s)] = nullptr;
      e.backward = nullptr;  // releases saved tensors
    }
    ctx.gout.clear();
    entries.clear();
    split = false;
    sim.phase.block = -1;
  }
  void backward_weights() {
    auto work = std::move(deferred);
    deferred.clear();
    for (auto& fn : work) {
      fn();
      fn = nullptr;
    }
  }

  Sim& sim;
  uint64_t id;
  Hooks* hooks = nullptr;
  Policy* policy = nullptr;  ///< the recompute policy (regions consult it); null on capture tapes
  std::vector<Entry> entries;
  std::vector<BufP> slot_grads;
  std::vector<char> keep;
  std::vector<std::function<void()>> deferred;
  bool split = false;
};

BufP BCtx::take_grad_out(size_t i) {
  const auto slot = static_cast<size_t>(tape->entries[entry].out_slots[i]);
  const BufP& g = gout[i];
  if (!g) return g;
  if (tape->keep[slot]) return tape->sim.alloc(g->bytes, Cat::act_grads);  // clone
  return g;
}
bool BCtx::splitting() const { return tape->split; }
bool BCtx::needs_grad(size_t i) const {
  const Entry& e = tape->entries[entry];
  return e.leaves[i] != nullptr || e.in_slots[i] >= 0;
}
BufP BCtx::grad_in(size_t i) {
  const Entry& e = tape->entries[entry];
  if (e.leaves[i]) return e.leaves[i]->grad;
  const int64_t slot = e.in_slots[i];
  if (slot < 0) return nullptr;
  BufP& g = tape->slot_grads[static_cast<size_t>(slot)];
  if (!g) g = tape->sim.alloc(e.in_bytes[i], Cat::act_grads);  // zeros of the input's shape
  return g;
}
void BCtx::accumulate(size_t i, BufP g) {
  const Entry& e = tape->entries[entry];
  if (e.leaves[i]) return;  // added into the parameter's gradient
  const int64_t slot = e.in_slots[i];
  if (slot < 0) return;
  BufP& dst = tape->slot_grads[static_cast<size_t>(slot)];
  if (!dst) dst = std::move(g);  // taken over (aliased); else added in place
}
void BCtx::weight_grad(std::function<void()> fn) {
  if (tape->split)
    tape->deferred.push_back(std::move(fn));
  else
    fn();
}

/// One region's forward and its rerun (core/recompute.cpp detail::Region).
using RegionFn = std::function<std::vector<T>(Sim&, const std::vector<T>&)>;
struct Region {
  Sim* sim = nullptr;
  RegionKind kind = RegionKind::block;
  std::vector<T> inputs;
  std::vector<bool> input_on_tape;
  RegionFn fn;
  int64_t saves = 0;
  std::vector<char> live;
  std::vector<T> replay;
  std::vector<T> outputs;
  bool done = false;
  void release(int64_t i) {
    live[static_cast<size_t>(i)] = 0;
    if (done) replay[static_cast<size_t>(i)] = nullptr;
  }
  bool holds_input_storage(const T& t) const {
    for (const T& in : inputs)
      if (in && in->storage == t->storage) return true;
    return false;
  }
};

Handle::~Handle() {
  if (region && !output) region->release(index);
}

/// The rerun's hooks: record the i-th save into the region, keep nothing.
struct Capture final : Hooks {
  Region* r;
  int64_t count = 0;
  explicit Capture(Region* region) : r(region) {}
  Saved pack(const T& t) override {
    const int64_t i = count++;
    if (i < r->saves && r->live[static_cast<size_t>(i)]) {
      r->replay[static_cast<size_t>(i)] = t;
      r->sim->mark_saved(*t->storage);
    }
    return nullptr;
  }
};

void recompute(Region& r) {
  Sim& s = *r.sim;
  r.replay.assign(static_cast<size_t>(r.saves), nullptr);
  STape scratch(s);
  Capture capture(&r);
  scratch.hooks = &capture;
  std::vector<T> in;
  for (size_t i = 0; i < r.inputs.size(); ++i) {
    if (r.input_on_tape[i]) {
      T a = alias(r.inputs[i], r.inputs[i]->shape);
      scratch.watch(a);
      in.push_back(a);
    } else {
      in.push_back(r.inputs[i]);
    }
  }
  STape* prev = s.current;
  s.current = &scratch;
  r.outputs = r.fn(s, in);
  s.current = prev;
  PT_CHECK(capture.count == r.saves, "memory plan: the rerun of a region saved {} tensors, its forward {}",
           capture.count, r.saves);
  r.done = true;
  for (size_t i = 0; i < r.live.size(); ++i)
    if (!r.live[i]) r.replay[i] = nullptr;
}

void backward_began(Policy* p);

T unpack(const Saved& h) {
  PT_CHECK(h != nullptr, "memory plan: a save of a rerun was read back");
  if (h->policy) backward_began(h->policy);
  if (!h->region) return h->kept;
  Region& r = *h->region;
  if (!r.done) recompute(r);
  return h->output ? r.outputs.at(static_cast<size_t>(h->index)) : r.replay[static_cast<size_t>(h->index)];
}

/// RecomputeHooks (train.recompute) with the activation offload (train.offload.activations)
/// as its inner policy: saves kept inside block b go to the host when block b+1's forward is
/// done, and come back when backward reaches block b+1 (one block ahead).
class Policy final : public Hooks {
 public:
  /// offload: 0 = off, else the prefetch depth (train.offload.prefetch).
  Policy(Sim& s, Recompute mode, int offload) : sim_(s), mode_(mode), offload_(offload > 0), prefetch_(offload) {}

  bool drops(RegionKind k) const {
    switch (mode_) {
      case Recompute::none: return false;
      case Recompute::selective: return k == RegionKind::attention_core || k == RegionKind::activation;
      case Recompute::full: return k == RegionKind::block;
    }
    return false;
  }

  Saved pack(const T& t) override {
    if (!stack.empty()) {
      const std::shared_ptr<Region>& r = stack.back();
      if (t->param || r->holds_input_storage(t)) {
        ++r->saves;
        r->live.push_back(0);
        return keep(t);
      }
      auto h = std::make_shared<Handle>();
      h->policy = this;
      h->region = r;
      h->index = r->saves++;
      r->live.push_back(1);
      return h;
    }
    if (tape && !outputs.empty() && tape->owns(t)) {
      auto it = outputs.find(t->slot);
      if (it != outputs.end()) {
        auto h = std::make_shared<Handle>();
        h->policy = this;
        h->region = it->second.first;
        h->index = static_cast<int64_t>(it->second.second);
        h->output = true;
        return h;
      }
    }
    return keep(t);
  }

  void block_done(int b) {
    if (!offload_) return;
    auto it = groups_.find(b - 1);
    if (it == groups_.end()) return;
    for (auto& w : it->second)
      if (auto buf = w.lock()) sim_.offload(*buf);
  }
  void before_entry(int block) override {
    if (!offload_ || block < 0 || block == last_block_) return;
    last_block_ = block;
    for (int b = block; b >= block - prefetch_; --b) {
      auto it = groups_.find(b);
      if (it == groups_.end()) continue;
      for (auto& w : it->second)
        if (auto buf = w.lock()) sim_.restore(*buf);
    }
  }

  std::vector<std::shared_ptr<Region>> stack;
  STape* tape = nullptr;
  /// Outputs of activation regions by slot, held until backward begins (the first unpack), as
  /// RecomputeHooks::outputs_ does: a later save of the output needs the region.
  std::map<int64_t, std::pair<std::shared_ptr<Region>, size_t>> outputs;

 private:
  Saved keep(const T& t) {
    auto h = std::make_shared<Handle>();
    h->policy = this;
    h->kept = t;
    if (!t->param) {
      sim_.mark_saved(*t->storage);
      if (offload_ && sim_.current_block >= 0) groups_[sim_.current_block].push_back(t->storage);
    }
    return h;
  }
  Sim& sim_;
  Recompute mode_;
  bool offload_;
  int prefetch_;
  int last_block_ = -1;
  std::map<int, std::vector<std::weak_ptr<Buf>>> groups_;
};

void backward_began(Policy* p) { p->outputs.clear(); }

Saved STape::save(const T& t) {
  if (hooks) return hooks->pack(t);
  auto h = std::make_shared<Handle>();
  h->kept = t;
  if (!t->param) sim.mark_saved(*t->storage);
  return h;
}

/// recompute_region(): fn(inputs) as a region of `kind` under the tape's policy.
std::vector<T> region(Sim& s, RegionKind kind, const std::vector<T>& inputs, const RegionFn& fn) {
  STape* tape = s.current;
  Policy* policy = tape ? tape->policy : nullptr;
  if (!policy || !policy->drops(kind) || !policy->stack.empty()) return fn(s, inputs);
  auto r = std::make_shared<Region>();
  r->sim = &s;
  r->kind = kind;
  r->inputs = inputs;
  r->fn = fn;
  bool recorded = false;
  for (const T& t : inputs) {
    const bool on_tape = t && tape->owns(t);
    r->input_on_tape.push_back(on_tape);
    recorded = recorded || on_tape || (t && t->param);
  }
  if (!recorded) return fn(s, inputs);
  policy->tape = tape;
  policy->stack.push_back(r);
  std::vector<T> outs;
  try {
    outs = fn(s, inputs);
  } catch (...) {
    policy->stack.pop_back();
    throw;
  }
  policy->stack.pop_back();
  if (kind == RegionKind::activation)
    for (size_t i = 0; i < outs.size(); ++i)
      if (tape->owns(outs[i])) policy->outputs[outs[i]->slot] = {r, i};
  return outs;
}

STape* recording(Sim& s, std::initializer_list<const T*> inputs) {
  STape* tape = s.current;
  if (!tape) return nullptr;
  for (const T* t : inputs)
    if (*t && ((*t)->param || tape->owns(*t))) return tape;
  return nullptr;
}

}  // namespace

// ============================================================================ 4. device ops

namespace {

/// A device scratch tensor of `bytes` (ops_device.cpp scratch(): i32 words).
BufP scratch(Sim& s, int64_t bytes) { return s.alloc((bytes + 3) / 4 * 4, Cat::scratch); }

Shape with_last(Shape s, int64_t n) {
  s.back() = n;
  return s;
}
int64_t rows_of(const T& x) { return numel_of(x->shape) / x->shape.back(); }

T linear_op(Sim& s, const T& x, SParam& w, SParam* b, Cat out = Cat::act) {
  T y = fresh(s, with_last(x->shape, w.shape[0]), x->dt, out);
  static const T none;
  const T& bv = b ? b->value : none;
  if (STape* tape = recording(s, {&x, &w.value, &bv})) {
    Saved sx = tape->save(x), sw = tape->save(w.value);
    tape->record({&x, &w.value, &bv}, {&y}, [sx, sw](BCtx& ctx) {
      const BufP dy = ctx.grad_out();
      if (ctx.needs_grad(0)) {
        BufP dx = ctx.grad_in(0);
        const T wt = unpack(sw);
      }
      if (ctx.needs_grad(1) || ctx.needs_grad(2)) {
        BufP dw = ctx.grad_in(1), db = ctx.grad_in(2);
        ctx.weight_grad([sx, dy, dw, db] { const T xt = unpack(sx); });
      }
    });
  }
  return y;
}

T add_op(Sim& s, const T& a, const T& b) {
  T y = fresh(s, a->shape, a->dt);
  if (STape* tape = recording(s, {&a, &b})) {
    tape->record({&a, &b}, {&y}, [](BCtx& ctx) {
      const BufP dy = ctx.grad_out();
      if (ctx.needs_grad(1)) BufP db = ctx.grad_in(1);
      if (ctx.needs_grad(0)) ctx.accumulate(0, ctx.take_grad_out());
    });
  }
  return y;
}

T mul_op(Sim& s, const T& a, const T& b) {
  T y = fresh(s, a->shape, a->dt);
  if (STape* tape = recording(s, {&a, &b})) {
    Saved sa = tape->save(a), sb = tape->save(b);
    tape->record({&a, &b}, {&y}, [sa, sb](BCtx& ctx) {
      const BufP dy = ctx.grad_out();
      BufP da = ctx.grad_in(0), db = ctx.grad_in(1);
      const T at = unpack(sa), bt = unpack(sb);
    });
  }
  return y;
}

/// silu, gelu: y = f(x), x saved.
T unary_op(Sim& s, const T& x) {
  T y = fresh(s, x->shape, x->dt);
  if (STape* tape = recording(s, {&x})) {
    Saved sx = tape->save(x);
    tape->record({&x}, {&y}, [sx](BCtx& ctx) {
      const BufP dy = ctx.grad_out();
      BufP dx = ctx.grad_in(0);
      const T xt = unpack(sx);
    });
  }
  return y;
}

T swiglu_op(Sim& s, const T& gate, const T& up) {
  T y = fresh(s, gate->shape, gate->dt);
  if (STape* tape = recording(s, {&gate, &up})) {
    Saved sg = tape->save(gate), su = tape->save(up);
    tape->record({&gate, &up}, {&y}, [sg, su](BCtx& ctx) {
      const BufP dy = ctx.grad_out();
      BufP dg = ctx.grad_in(0), du = ctx.grad_in(1);
      const T g = unpack(sg), u = unpack(su);
    });
  }
  return y;
}

T rope_op(Sim& s, const T& x) {
  T y = fresh(s, x->shape, x->dt);
  if (STape* tape = recording(s, {&x})) {
    tape->record({&x}, {&y}, [](BCtx& ctx) {
      const BufP dy = ctx.grad_out();
      BufP dx = ctx.grad_in(0);
    });
  }
  return y;
}

T rms_norm_op(Sim& s, const T& x, SParam& w) {
  const int64_t C = x->shape.back(), rows = rows_of(x);
  T y = fresh(s, x->shape, x->dt);
  T rstd = fresh(s, {rows}, DType::f32);
  if (STape* tape = recording(s, {&x, &w.value})) {
    Saved sx = tape->save(x), sw = tape->save(w.value), sr = tape->save(rstd);
    tape->record({&x, &w.value}, {&y}, [sx, sw, sr, rows, C, ps = &s](BCtx& ctx) {
      const BufP dy = ctx.grad_out();
      BufP dx = ctx.grad_in(0), dw = ctx.grad_in(1);
      auto run = [sx, sw, sr, dy, rows, C, ps](const BufP& gx, const BufP& gw) {
        const T xt = unpack(sx), wt = unpack(sw), rt = unpack(sr);
        BufP sc = gw ? scratch(*ps, detail::rms_norm_backward_scratch_bytes(rows, C)) : nullptr;
        (void)gx;
      };
      if (ctx.splitting()) {
        if (dx) run(dx, nullptr);
        if (dw) ctx.weight_grad([run, dw] { run(nullptr, dw); });
      } else {
        run(dx, dw);
      }
    });
  }
  return y;
}

T layer_norm_op(Sim& s, const T& x, SParam& w, SParam& b) {
  const int64_t C = x->shape.back(), rows = rows_of(x);
  T y = fresh(s, x->shape, x->dt);
  T mean = fresh(s, {rows}, DType::f32), rstd = fresh(s, {rows}, DType::f32);
  if (STape* tape = recording(s, {&x, &w.value, &b.value})) {
    Saved sx = tape->save(x), sw = tape->save(w.value), sm = tape->save(mean), sr = tape->save(rstd);
    tape->record({&x, &w.value, &b.value}, {&y}, [sx, sw, sm, sr, rows, C, ps = &s](BCtx& ctx) {
      const BufP dy = ctx.grad_out();
      BufP dx = ctx.grad_in(0), dw = ctx.grad_in(1), db = ctx.grad_in(2);
      auto run = [sx, sw, sm, sr, dy, rows, C, ps](const BufP& gx, const BufP& gw, const BufP& gb) {
        const T xt = unpack(sx), wt = unpack(sw), mt = unpack(sm), rt = unpack(sr);
        BufP sc = gw || gb ? scratch(*ps, detail::layer_norm_backward_scratch_bytes(rows, C)) : nullptr;
        (void)gx;
      };
      if (ctx.splitting()) {
        if (dx) run(dx, nullptr, nullptr);
        if (dw || db) ctx.weight_grad([run, dw, db] { run(nullptr, dw, db); });
      } else {
        run(dx, dw, db);
      }
    });
  }
  return y;
}

/// q [B, T, Hq, D], k/v [B, T, Hkv, D] -> out [B, T, Hq, D]; probs [B, Hq, T, T] saved.
T attention_op(Sim& s, const T& q, const T& k, const T& v) {
  const int64_t B = q->shape[0], Tn = q->shape[1], Hq = q->shape[2], Hkv = k->shape[2];
  const DType dt = q->dt;
  T out = fresh(s, q->shape, dt);
  T probs = fresh(s, {B, Hq, Tn, Tn}, dt);
  { BufP sc = scratch(s, detail::attention_forward_scratch_bytes(dt, B, Tn, Hkv)); }
  if (STape* tape = recording(s, {&q, &k, &v})) {
    Saved sq = tape->save(q), sk = tape->save(k), sv = tape->save(v), sp = tape->save(probs);
    tape->record({&q, &k, &v}, {&out}, [sq, sk, sv, sp, B, Tn, Hkv, dt, ps = &s](BCtx& ctx) {
      const BufP dout = ctx.grad_out();
      BufP dq = ctx.grad_in(0), dk = ctx.grad_in(1), dv = ctx.grad_in(2);
      BufP sc = scratch(*ps, detail::attention_backward_scratch_bytes(dt, B, Tn, Hkv));
      const T a = unpack(sq), b = unpack(sk), c = unpack(sv), p = unpack(sp);
    });
  }
  return out;
}

/// ids [..] i32 -> [.., C]; ids saved (views of the step's token tensor).
T embedding_op(Sim& s, const T& ids, SParam& table) {
  Shape ys = ids->shape;
  ys.push_back(table.shape[1]);
  T y = fresh(s, ys, table.dt);
  const int64_t n = numel_of(ids->shape);
  if (STape* tape = recording(s, {&table.value})) {
    Saved sids = tape->save(ids);
    tape->record({&ids, &table.value}, {&y}, [sids, n, ps = &s](BCtx& ctx) {
      const BufP dy = ctx.grad_out();
      BufP dtab = ctx.grad_in(1);
      ctx.weight_grad([sids, dy, dtab, n, ps] {
        const T it = unpack(sids);
        BufP sc = scratch(*ps, detail::embedding_backward_scratch_bytes(n));
      });
    });
  }
  return y;
}

/// logits [N, Vp] (dt) -> loss (host); logits, targets and fp32 lse saved.
T cross_entropy_op(Sim& s, const T& logits, const T& targets) {
  const int64_t N = logits->shape[0];
  T losses = fresh(s, {N}, DType::f32), lse = fresh(s, {N}, DType::f32);
  T loss = host_tensor(s, {1}, DType::f32);
  if (STape* tape = recording(s, {&logits})) {
    Saved sl = tape->save(logits), st = tape->save(targets), slse = tape->save(lse);
    tape->record({&logits, &targets}, {&loss}, [sl, st, slse, N, ps = &s](BCtx& ctx) {
      const BufP dloss = ctx.grad_out();
      BufP dlogits = ctx.grad_in(0);
      const T l = unpack(sl), t = unpack(st), e = unpack(slse);
      BufP drow = ps->alloc(N * 4, Cat::scratch);
    });
  }
  return loss;
}

std::vector<T> split_op(Sim& s, const T& x, const std::vector<int64_t>& sizes) {
  std::vector<T> outs;
  for (int64_t n : sizes) outs.push_back(fresh(s, with_last(x->shape, n), x->dt));
  if (STape* tape = recording(s, {&x})) {
    std::vector<T*> op;
    for (T& o : outs) op.push_back(&o);
    tape->record({&x}, op, [](BCtx& ctx) { BufP dx = ctx.grad_in(0); });
  }
  return outs;
}

T view_op(Sim& s, const T& x, Shape shape) {
  T y = alias(x, std::move(shape));
  if (STape* tape = recording(s, {&x}))
    tape->record({&x}, {&y}, [](BCtx& ctx) { ctx.accumulate(0, ctx.take_grad_out()); });
  return y;
}

// ---- regions (core/ops.cpp): the attention core and the activation functions

T attention(Sim& s, const T& q, const T& k, const T& v) {
  return region(s, RegionKind::attention_core, {q, k, v},
                [](Sim& ss, const std::vector<T>& in) { return std::vector<T>{attention_op(ss, in[0], in[1], in[2])}; })
      .at(0);
}
T activation(Sim& s, const T& x) {
  return region(s, RegionKind::activation, {x},
                [](Sim& ss, const std::vector<T>& in) { return std::vector<T>{unary_op(ss, in[0])}; })
      .at(0);
}
T swiglu(Sim& s, const T& gate, const T& up) {
  return region(s, RegionKind::activation, {gate, up},
                [](Sim& ss, const std::vector<T>& in) { return std::vector<T>{swiglu_op(ss, in[0], in[1])}; })
      .at(0);
}

// ---- tensor-parallel mappings (parallel/tp_ops.cpp), P = TP ranks

/// Identity forward (a view), all-reduce of the taken gradient backward.
T copy_to_tp(Sim& s, const T& x) {
  STape* tape = recording(s, {&x});
  if (!tape) return x;
  T y = alias(x, x->shape);
  tape->record({&x}, {&y}, [](BCtx& ctx) { ctx.accumulate(0, ctx.take_grad_out()); });
  return y;
}
/// All-reduce of a clone forward, identity backward.
T reduce_from_tp(Sim& s, const T& x) {
  T y = fresh(s, x->shape, x->dt);
  if (STape* tape = recording(s, {&x}))
    tape->record({&x}, {&y}, [](BCtx& ctx) { ctx.accumulate(0, ctx.take_grad_out()); });
  return y;
}
T gather_sequence(Sim& s, const T& x, int P) {
  Shape ys = x->shape;
  ys[0] *= P;
  T y = fresh(s, ys, x->dt);
  if (STape* tape = recording(s, {&x})) {
    const int64_t part = device_bytes(x->shape, x->dt);
    tape->record({&x}, {&y}, [part, ps = &s](BCtx& ctx) {
      const BufP& g = ctx.grad_out();
      (void)g;
      ctx.accumulate(0, ps->alloc(part, Cat::act_grads));
    });
  }
  return y;
}
T reduce_scatter_sequence(Sim& s, const T& x, int P) {
  Shape ys = x->shape;
  ys[0] /= P;
  T y = fresh(s, ys, x->dt);
  if (STape* tape = recording(s, {&x})) {
    const int64_t full = device_bytes(x->shape, x->dt);
    tape->record({&x}, {&y}, [full, ps = &s](BCtx& ctx) { ctx.accumulate(0, ps->alloc(full, Cat::act_grads)); });
  }
  return y;
}
T split_sequence(Sim& s, const T& x, int P) {
  Shape ys = x->shape;
  ys[0] /= P;
  T y = alias(x, ys);
  if (STape* tape = recording(s, {&x})) {
    const int64_t full = device_bytes(x->shape, x->dt);
    tape->record({&x}, {&y}, [full, ps = &s](BCtx& ctx) { ctx.accumulate(0, ps->alloc(full, Cat::act_grads)); });
  }
  return y;
}
/// ids -> [.., C] from this rank's vocabulary rows (zeros elsewhere, all-reduced); local ids saved.
T vocab_parallel_embedding(Sim& s, const T& ids, SParam& table) {
  const int64_t n = numel_of(ids->shape);
  T local = fresh(s, {n}, DType::i32, Cat::other);
  Shape ys = ids->shape;
  ys.push_back(table.shape[1]);
  T y = fresh(s, ys, table.dt);
  if (STape* tape = recording(s, {&table.value})) {
    Saved slid = tape->save(local);
    tape->record({&ids, &table.value}, {&y}, [slid](BCtx& ctx) {
      const BufP dy = ctx.grad_out();
      BufP dw = ctx.grad_in(1);
      ctx.weight_grad([slid, dy, dw] { const T l = unpack(slid); });
    });
  }
  return y;
}
/// logits shard [N, Vp/P] -> loss; the shard, local targets (i32) and fp32 lse saved.
T vocab_parallel_cross_entropy(Sim& s, const T& logits, const T& targets) {
  const int64_t N = logits->shape[0];
  T local = fresh(s, {N}, DType::i32, Cat::other);
  T lse = fresh(s, {N}, DType::f32);
  T loss = host_tensor(s, {1}, DType::f32);
  if (STape* tape = recording(s, {&logits})) {
    Saved sl = tape->save(logits), slt = tape->save(local), slse = tape->save(lse);
    tape->record({&logits, &targets}, {&loss}, [sl, slt, slse](BCtx& ctx) {
      const BufP dloss = ctx.grad_out();
      BufP dlogits = ctx.grad_in(0);
      const T a = unpack(sl), b = unpack(slt), c = unpack(slse);
    });
  }
  return loss;
}

}  // namespace

// ============================================================================ 5. layers, model, stage

namespace {

/// The model's sizes as ModelSpec has them (launch::model_spec), plus this rank's TP place.
struct Dims {
  std::string arch, norm, attention, mlp;
  int64_t vocab = 0, Vp = 0, C = 0, L = 0, Hq = 0, Hkv = 0, F = 0, max_T = 0, D = 0;
  bool tied = false;
  int tp = 1, tp_rank = 0;
  bool sp = false;
  DType dt = DType::f32;
};

Dims dims_of(const Config& cfg) {
  const ModelConfig& m = cfg.model;
  Dims d;
  d.arch = m.arch;
  d.vocab = m.vocab_size;
  d.Vp = cfg.padded_vocab();
  d.C = m.hidden;
  d.L = m.layers;
  d.Hq = m.heads;
  d.Hkv = m.resolved_kv_heads();
  d.F = m.ffn_hidden;
  d.max_T = m.max_seq_len;
  d.D = m.head_dim();
  d.tied = m.resolved_tie_embeddings();
  d.tp = cfg.parallel.tp;
  d.sp = cfg.parallel.sequence_parallel && d.tp > 1;
  d.dt = cfg.train.precision;
  const bool gpt2 = m.arch == "gpt2";
  d.norm = m.norm.value_or(gpt2 ? "layernorm" : "rmsnorm");
  d.attention = m.attention.value_or(gpt2 ? "fused_mha" : "rope_gqa");
  d.mlp = m.mlp.value_or(gpt2 ? "gelu" : "swiglu");
  return d;
}

struct Ctx {
  int64_t B = 0, Tn = 0;
};
/// Sim::current_block outside the decoder blocks (ops record it; offload ignores < 0).
constexpr int kEmbedPiece = -3, kHeadPiece = -2;

/// Registers parameters in the model's registration order, allocating their weights.
class Builder {
 public:
  Builder(Sim& s, const Dims& d) : sim_(s), d_(d) {}
  /// `shard`: -1 replicated, 0 column (output rows split over TP), 1 row (input columns split).
  SParam& param(const std::string& name, Shape full, int shard = -1) {
    SParam& p = params.emplace_back();
    p.name = name;
    p.full_shape = full;
    p.shape = full;
    p.sharded = shard >= 0 && d_.tp > 1;
    if (p.sharded) p.shape[static_cast<size_t>(shard)] /= d_.tp;
    p.dt = d_.dt;
    p.value = fresh(sim_, p.shape, p.dt, Cat::weights);
    p.value->param = &p;
    return p;
  }
  std::deque<SParam> params;

 private:
  Sim& sim_;
  const Dims& d_;
};

T tp_enter(Sim& s, const Dims& d, const T& x) {
  if (d.tp == 1) return x;
  return d.sp ? gather_sequence(s, x, d.tp) : copy_to_tp(s, x);
}
T tp_exit(Sim& s, const Dims& d, const T& x) {
  if (d.tp == 1) return x;
  return d.sp ? reduce_scatter_sequence(s, x, d.tp) : reduce_from_tp(s, x);
}

struct RowParallel {
  SParam* w = nullptr;
  SParam* b = nullptr;
  T forward(Sim& s, const Dims& d, const T& x) const {
    if (d.tp == 1) return linear_op(s, x, *w, b);
    return tp_exit(s, d, linear_op(s, x, *w, d.tp_rank == 0 ? b : nullptr));
  }
};

class SLayer {
 public:
  virtual ~SLayer() = default;
  virtual T forward(Sim& s, const T& x, const Ctx& c) = 0;
};

class RmsNormL final : public SLayer {
 public:
  RmsNormL(Builder& b, const Dims& d, const std::string& p) : w_(&b.param(p + ".weight", {d.C})) {}
  T forward(Sim& s, const T& x, const Ctx&) override { return rms_norm_op(s, x, *w_); }

 private:
  SParam* w_;
};

class LayerNormL final : public SLayer {
 public:
  LayerNormL(Builder& b, const Dims& d, const std::string& p)
      : w_(&b.param(p + ".weight", {d.C})), b_(&b.param(p + ".bias", {d.C})) {}
  T forward(Sim& s, const T& x, const Ctx&) override { return layer_norm_op(s, x, *w_, *b_); }

 private:
  SParam *w_, *b_;
};

class RopeGqaL final : public SLayer {
 public:
  RopeGqaL(Builder& b, const Dims& d, const std::string& p) : d_(d) {
    q_ = &b.param(p + ".q_proj.weight", {d.Hq * d.D, d.C}, 0);
    k_ = &b.param(p + ".k_proj.weight", {d.Hkv * d.D, d.C}, 0);
    v_ = &b.param(p + ".v_proj.weight", {d.Hkv * d.D, d.C}, 0);
    o_.w = &b.param(p + ".o_proj.weight", {d.C, d.Hq * d.D}, 1);
  }
  T forward(Sim& s, const T& in, const Ctx& c) override {
    const int64_t hq = d_.Hq / d_.tp, hkv = d_.Hkv / d_.tp;
    const T x = tp_enter(s, d_, in);
    T q = rope_op(s, view_op(s, linear_op(s, x, *q_, nullptr), {c.B, c.Tn, hq, d_.D}));
    T k = rope_op(s, view_op(s, linear_op(s, x, *k_, nullptr), {c.B, c.Tn, hkv, d_.D}));
    T v = view_op(s, linear_op(s, x, *v_, nullptr), {c.B, c.Tn, hkv, d_.D});
    T y = attention(s, q, k, v);
    return o_.forward(s, d_, view_op(s, y, {c.B * c.Tn, hq * d_.D}));
  }

 private:
  const Dims& d_;
  SParam *q_, *k_, *v_;
  RowParallel o_;
};

class FusedMhaL final : public SLayer {
 public:
  FusedMhaL(Builder& b, const Dims& d, const std::string& p) : d_(d) {
    qkv_w_ = &b.param(p + ".c_attn.weight", {3 * d.C, d.C}, 0);
    qkv_b_ = &b.param(p + ".c_attn.bias", {3 * d.C}, 0);
    proj_.w = &b.param(p + ".c_proj.weight", {d.C, d.C}, 1);
    proj_.b = &b.param(p + ".c_proj.bias", {d.C});
  }
  T forward(Sim& s, const T& x, const Ctx& c) override {
    const int64_t h = d_.Hq / d_.tp, cc = d_.C / d_.tp;
    auto parts = split_op(s, linear_op(s, tp_enter(s, d_, x), *qkv_w_, qkv_b_), {cc, cc, cc});
    T q = view_op(s, parts[0], {c.B, c.Tn, h, d_.D});
    T k = view_op(s, parts[1], {c.B, c.Tn, h, d_.D});
    T v = view_op(s, parts[2], {c.B, c.Tn, h, d_.D});
    T y = attention(s, q, k, v);
    return proj_.forward(s, d_, view_op(s, y, {c.B * c.Tn, cc}));
  }

 private:
  const Dims& d_;
  SParam *qkv_w_, *qkv_b_;
  RowParallel proj_;
};

class SwigluL final : public SLayer {
 public:
  SwigluL(Builder& b, const Dims& d, const std::string& p, bool geglu) : d_(d), geglu_(geglu) {
    gate_ = &b.param(p + ".gate_proj.weight", {d.F, d.C}, 0);
    up_ = &b.param(p + ".up_proj.weight", {d.F, d.C}, 0);
    down_.w = &b.param(p + ".down_proj.weight", {d.C, d.F}, 1);
  }
  T forward(Sim& s, const T& in, const Ctx&) override {
    const T x = tp_enter(s, d_, in);
    if (geglu_)
      return down_.forward(s, d_, mul_op(s, activation(s, linear_op(s, x, *gate_, nullptr)), linear_op(s, x, *up_, nullptr)));
    return down_.forward(s, d_, swiglu(s, linear_op(s, x, *gate_, nullptr), linear_op(s, x, *up_, nullptr)));
  }

 private:
  const Dims& d_;
  bool geglu_;
  SParam *gate_, *up_;
  RowParallel down_;
};

class GeluMlpL final : public SLayer {
 public:
  GeluMlpL(Builder& b, const Dims& d, const std::string& p) : d_(d) {
    fc_w_ = &b.param(p + ".c_fc.weight", {d.F, d.C}, 0);
    fc_b_ = &b.param(p + ".c_fc.bias", {d.F}, 0);
    proj_.w = &b.param(p + ".c_proj.weight", {d.C, d.F}, 1);
    proj_.b = &b.param(p + ".c_proj.bias", {d.C});
  }
  T forward(Sim& s, const T& x, const Ctx&) override {
    return proj_.forward(s, d_, activation(s, linear_op(s, tp_enter(s, d_, x), *fc_w_, fc_b_)));
  }

 private:
  const Dims& d_;
  SParam *fc_w_, *fc_b_;
  RowParallel proj_;
};

/// The layers the model of memory knows, by registry kind and name.
const std::map<std::string, std::vector<std::string>>& modelled_layers() {
  static const std::map<std::string, std::vector<std::string>> m = {
      {"arch", {"llama", "gpt2"}},
      {"norm", {"rmsnorm", "layernorm"}},
      {"attention", {"rope_gqa", "fused_mha"}},
      {"mlp", {"swiglu", "gelu", "geglu"}},
  };
  return m;
}

void check_modelled(const std::string& kind, const std::string& key, const std::string& name) {
  const auto& known = modelled_layers().at(kind);
  if (std::find(known.begin(), known.end(), name) != known.end()) return;
  std::string list;
  for (const auto& k : known) {
    if (!list.empty()) list += ", ";
    list += k;
  }
  throw UserError(fmt::format("{}: the model of memory does not know the {} layer '{}' (it knows {}). HINT: add "
                              "its parameters and saved tensors to launch/memory_plan.cpp",
                              key, kind, name, list));
}

std::unique_ptr<SLayer> make_norm(Builder& b, const Dims& d, const std::string& p) {
  if (d.norm == "rmsnorm") return std::make_unique<RmsNormL>(b, d, p);
  return std::make_unique<LayerNormL>(b, d, p);
}

class SBlock {
 public:
  SBlock(Builder& b, const Dims& d, const std::string& p, const std::array<std::string, 4>& names) {
    norm1_ = make_norm(b, d, p + "." + names[0]);
    if (d.attention == "rope_gqa")
      attn_ = std::make_unique<RopeGqaL>(b, d, p + "." + names[1]);
    else
      attn_ = std::make_unique<FusedMhaL>(b, d, p + "." + names[1]);
    norm2_ = make_norm(b, d, p + "." + names[2]);
    if (d.mlp == "gelu")
      mlp_ = std::make_unique<GeluMlpL>(b, d, p + "." + names[3]);
    else
      mlp_ = std::make_unique<SwigluL>(b, d, p + "." + names[3], d.mlp == "geglu");
  }
  T forward(Sim& s, const T& x, const Ctx& c) {
    T h = add_op(s, x, attn_->forward(s, norm1_->forward(s, x, c), c));
    return add_op(s, h, mlp_->forward(s, norm2_->forward(s, h, c), c));
  }

 private:
  std::unique_ptr<SLayer> norm1_, attn_, norm2_, mlp_;
};

/// A CausalLM piece of one rank (layers/llama.cpp, layers/gpt2.cpp).
class SModel {
 public:
  SModel(Sim& s, const Dims& d, const std::vector<int>& blocks, bool build_embed, bool build_head)
      : d_(d), b_(s, d) {
    if (d.D % 2 == 0) {  // CausalLM: RoPE tables [max_seq_len, D/2] fp32, where the model lives
      rope_cos_ = s.alloc(d.max_T * (d.D / 2) * 4, Cat::other);
      rope_sin_ = s.alloc(d.max_T * (d.D / 2) * 4, Cat::other);
    }
    const bool gpt2 = d.arch == "gpt2";
    const std::string root = gpt2 ? "transformer" : "model";
    if (build_embed || (build_head && d.tied)) {
      wte_ = &b_.param(gpt2 ? "transformer.wte.weight" : "model.embed_tokens.weight", {d.Vp, d.C}, 0);
      wte_->tied_replica = !build_embed;
    }
    if (gpt2 && build_embed) wpe_ = &b_.param("transformer.wpe.weight", {d.max_T, d.C});
    const std::array<std::string, 4> names =
        gpt2 ? std::array<std::string, 4>{"ln_1", "attn", "ln_2", "mlp"}
             : std::array<std::string, 4>{"input_layernorm", "self_attn", "post_attention_layernorm", "mlp"};
    blocks_.resize(static_cast<size_t>(d.L));
    for (int i = 0; i < d.L; ++i) {
      if (!blocks.empty() && std::find(blocks.begin(), blocks.end(), i) == blocks.end()) continue;
      blocks_[static_cast<size_t>(i)] =
          std::make_unique<SBlock>(b_, d, fmt::format("{}.{}.{}", root, gpt2 ? "h" : "layers", i), names);
    }
    if (build_head) {
      norm_ = make_norm(b_, d, gpt2 ? "transformer.ln_f" : "model.norm");
      if (!d.tied) lm_head_ = &b_.param("lm_head.weight", {d.Vp, d.C}, 0);
    }
  }

  T embed(Sim& s, const T& ids, const Ctx& c) {
    s.current_block = s.phase.block = kEmbedPiece;
    T h;
    if (d_.arch == "gpt2") {
      T pos = fresh(s, {c.B * c.Tn}, DType::i32, Cat::other);
      T p = embedding_op(s, pos, *wpe_);
      h = add_op(s, view_op(s, table_lookup(s, ids), {c.B * c.Tn, d_.C}), p);
    } else {
      h = view_op(s, table_lookup(s, ids), {c.B * c.Tn, d_.C});
    }
    if (d_.sp) h = split_sequence(s, h, d_.tp);
    s.current_block = s.phase.block = -1;
    return h;
  }
  /// Block i as a recompute region (CausalLM::block); `done` is told when it has run.
  T block(Sim& s, int i, const T& h, const Ctx& c) {
    SBlock* blk = blocks_.at(static_cast<size_t>(i)).get();
    PT_CHECK(blk, "memory plan: block {} is not on this rank", i);
    s.current_block = s.phase.block = i;
    T out = region(s, RegionKind::block, {h},
                   [blk, c](Sim& ss, const std::vector<T>& in) { return std::vector<T>{blk->forward(ss, in[0], c)}; })
                .at(0);
    s.current_block = s.phase.block = -1;
    return out;
  }
  T head(Sim& s, const T& h, const Ctx& c) {
    s.current_block = s.phase.block = kHeadPiece;
    T x = tp_enter(s, d_, norm_->forward(s, h, c));
    T logits = linear_op(s, x, lm_head_ ? *lm_head_ : *wte_, nullptr, Cat::logits);  // [B*T, Vp/tp]
    s.current_block = s.phase.block = -1;
    return logits;
  }
  T loss(Sim& s, const T& logits, const T& targets) {
    s.current_block = s.phase.block = kHeadPiece;
    T flat = alias(targets, {numel_of(targets->shape)});
    T l = d_.tp == 1 ? cross_entropy_op(s, logits, flat) : vocab_parallel_cross_entropy(s, logits, flat);
    s.current_block = s.phase.block = -1;
    return l;
  }
  std::deque<SParam>& params() { return b_.params; }

 private:
  T table_lookup(Sim& s, const T& ids) {
    return d_.tp > 1 ? vocab_parallel_embedding(s, ids, *wte_) : embedding_op(s, ids, *wte_);
  }
  const Dims& d_;
  Builder b_;
  BufP rope_cos_, rope_sin_;
  SParam *wte_ = nullptr, *wpe_ = nullptr, *lm_head_ = nullptr;
  std::vector<std::unique_ptr<SBlock>> blocks_;
  std::unique_ptr<SLayer> norm_;
};

/// launch::ModelStage over the symbolic model: one tape (and recompute policy) per
/// (chunk, micro-batch), alive from its forward to its backward (or weight gradients).
class SStage {
 public:
  SStage(Sim& s, SModel& m, const Dims& d, std::vector<std::vector<int>> chunks, bool first, bool last,
         Recompute mode, int offload)
      : s_(s), m_(m), d_(d), chunks_(std::move(chunks)), first_(first), last_(last), mode_(mode), offload_(offload) {}

  void set_batch(T inputs, T targets, int64_t micro) {
    inputs_ = std::move(inputs);
    targets_ = std::move(targets);
    micro_ = micro;
    passes_.clear();
  }
  Shape input_shape() const { return {micro_ * inputs_->shape[1] / (d_.sp ? d_.tp : 1), d_.C}; }
  int live_passes() const { return static_cast<int>(passes_.size()); }

  T forward(int chunk, int micro, const T& input) {
    Pass p;
    p.policy = std::make_unique<Policy>(s_, mode_, offload_);
    p.tape = std::make_unique<STape>(s_);
    p.tape->hooks = p.policy.get();
    p.tape->policy = p.policy.get();
    STape* prev = s_.current;
    s_.current = p.tape.get();
    if (!is_first(chunk)) {
      p.input = input;
      p.tape->watch(p.input);
    }
    const int64_t Tn = inputs_->shape[1];
    const Ctx c{micro_, Tn};
    T ids = alias(inputs_, {micro_, Tn}), tg = alias(targets_, {micro_, Tn});
    T h = is_first(chunk) ? m_.embed(s_, ids, c) : p.input;
    for (int b : chunks_[static_cast<size_t>(chunk)]) {
      h = m_.block(s_, b, h, c);
      p.policy->block_done(b);
    }
    T out;
    if (is_last(chunk)) {
      T logits = m_.head(s_, h, c);
      h = nullptr;
      out = m_.loss(s_, logits, tg);
    } else {
      out = h;
    }
    h = nullptr;
    s_.current = prev;
    T result;
    if (is_last(chunk)) {
      p.loss = out;
    } else {
      p.output = out;
      s_.mark_saved(*out->storage);
      result = out;
    }
    passes_[{chunk, micro}] = std::move(p);
    return result;
  }

  BufP backward(int chunk, int micro, const BufP& grad_output, bool split) {
    auto it = passes_.find({chunk, micro});
    PT_CHECK(it != passes_.end(), "memory plan: backward before forward");
    Pass& p = it->second;
    if (is_last(chunk))
      p.tape->backward({p.loss}, {s_.host()}, split);
    else
      p.tape->backward({p.output}, {grad_output}, split);
    BufP gin;
    if (!is_first(chunk)) {
      gin = p.tape->grad_of(p.input);
      if (!gin) gin = s_.alloc(device_bytes(p.input->shape, p.input->dt), Cat::act_grads);
    }
    p.output = nullptr;
    p.loss = nullptr;
    p.input = nullptr;
    if (!split) passes_.erase(it);
    return gin;
  }

  void backward_weights(int chunk, int micro) {
    auto it = passes_.find({chunk, micro});
    PT_CHECK(it != passes_.end(), "memory plan: weight gradients before backward");
    it->second.tape->backward_weights();
    passes_.erase(it);
  }

 private:
  struct Pass {
    std::unique_ptr<Policy> policy;  // outlives the tape (declared first, destroyed last)
    std::unique_ptr<STape> tape;
    T input, output, loss;
  };
  bool is_first(int chunk) const { return first_ && chunk == 0; }
  bool is_last(int chunk) const { return last_ && chunk == static_cast<int>(chunks_.size()) - 1; }

  Sim& s_;
  SModel& m_;
  const Dims& d_;
  std::vector<std::vector<int>> chunks_;
  bool first_, last_;
  Recompute mode_;
  int offload_;  // 0 = off, else the prefetch depth
  T inputs_, targets_;
  int64_t micro_ = 1;
  std::map<std::pair<int, int>, Pass> passes_;
};

}  // namespace

// ============================================================================ 6. plan, advice, reports

namespace {

/// Bytes per parameter element of the optimizer state (optim/adamw.h StateFormat):
///   master   a separate master copy: fp32 state 4 B (only where the weights are not fp32
///            themselves); compact states keep the master in the weights on the device, and
///            under offload in a host tensor of bf16 values, which the CPU stores as floats (4 B)
///   moments  fp32 / bf16-sr 8 B; 8bit 1 B each plus an fp32 absmax per kQuantBlock elements
///            (tensors under kQuantMinElements keep fp32 moments: a few KB, not modelled)
struct StateBytes {
  double master = 4, moments = 8;
  bool compact = false;
};
StateBytes state_bytes(const Config& cfg) {
  StateBytes b;
  // a compact state exists only in host memory (the CPU AdamW); with the state on the device
  // the device kernels hold fp32 (the trainer refuses a compact state there: see notes)
  if (!cfg.train.offload.optimizer) return b;
  b.compact = cfg.optim.state != OptimState::fp32;
  if (cfg.optim.state == OptimState::int8)
    b.moments = 2.0 + 2.0 * 4.0 / static_cast<double>(optim::kQuantBlock);
  return b;
}
int64_t times(int64_t n, double bytes_per) { return static_cast<int64_t>(std::ceil(static_cast<double>(n) * bytes_per)); }

struct ParamInfo {
  int64_t numel = 0, full_numel = 0, zero_share = 0;  ///< zero_share: moment elements of the largest ZeRO-1 range
  bool sharded = false, tied_replica = false;
};

/// One pipeline rank's simulated training (two steps: the second has the moments).
struct StageResult {
  int64_t peak = 0, reserved = 0, host_activations = 0;
  std::array<int64_t, kCats> at_peak{};
  Phase phase;
  int in_flight = 0;
  std::vector<ParamInfo> params;
  int64_t zero_numel = 0;  ///< moment elements of the largest ZeRO-1 share (all elements without ZeRO)
};

std::string describe_phase(const Phase& p) {
  if (p.step == 0) return "setup (weights, gradients, master)";
  if (p.action == 'O') return fmt::format("step {}, optimizer", p.step);
  if (p.action == 0) return fmt::format("step {}", p.step);
  std::string s = fmt::format("step {}, {} m{} c{}", p.step, p.action, p.micro, p.chunk);
  if (p.block >= 0) s += fmt::format(", block {}", p.block);
  if (p.block == -2) s += ", LM head and loss";
  if (p.block == -3) s += ", embedding";
  return s;
}

StageResult simulate_stage(const Config& cfg, int world, const GpuSpec& gpu, int pp_rank) {
  const ParallelConfig& par = cfg.parallel;
  const int pp = par.pp, v = par.virtual_stages, dp = cfg.resolved_dp(world);
  const bool low = is_low_precision(cfg.train.precision);
  const bool off_opt = cfg.train.offload.optimizer;
  const StateBytes sb = state_bytes(cfg);
  const Dims d = dims_of(cfg);
  const auto stages = parallel::partition_layers(cfg.model.layers, pp * v, par.stage_layers);
  std::vector<std::vector<int>> chunks;
  std::vector<int> mine;
  for (int c = 0; c < v; ++c) {
    chunks.push_back(stages[static_cast<size_t>(c * pp + pp_rank)]);
    for (int b : chunks.back()) mine.push_back(b);
  }
  const bool first = pp_rank == 0, last = pp_rank == pp - 1;

  parallel::ScheduleSpec spec;
  spec.kind = static_cast<parallel::ScheduleKind>(par.schedule);
  spec.pp = pp;
  spec.virtual_stages = v;
  spec.micro_batches = cfg.accumulation_steps(world);
  const std::vector<parallel::Action> list = parallel::make_all_schedules(spec)[static_cast<size_t>(pp_rank)];
  const bool split = parallel::splits_backward(spec.kind);

  StageResult r;
  Sim sim(gpu.total_bytes);
  SModel model(sim, d, pp == 1 && v == 1 ? std::vector<int>{} : mine, first, last);
  // Trainer::setup: per parameter, its gradient, then its fp32 master (low precision, not offloaded).
  const bool zero = cfg.optim.zero == 1 && dp > 1;
  int64_t owners = 0, norm_chunks = 0;
  std::vector<BufP> masters;
  for (SParam& p : model.params()) {
    const int64_t n = numel_of(p.shape);
    p.grad = sim.alloc(device_bytes(p.shape, cfg.train.grad_dtype), Cat::grads);
    if (low && !off_opt && !sb.compact) masters.push_back(sim.alloc(times(n, sb.master), Cat::master));
    r.params.push_back({n, numel_of(p.full_shape), zero ? n - n * (dp - 1) / dp : n, p.sharded, p.tied_replica});
    if (!p.tied_replica && (p.sharded || d.tp_rank == 0)) {
      ++owners;
      norm_chunks += (n + 4095) / 4096;  // kOptimChunk
    }
  }

  // data-parallel buckets (GradReducer): the two largest packed (non-in-place) flats in flight
  std::vector<int64_t> flats;
  if (dp > 1) {
    int64_t cur = 0, members = 0, numel = 0;
    const auto& ps = model.params();
    auto close = [&] {
      const bool in_place = members == 1 && cfg.train.grad_dtype == DType::f32;
      if (members > 0 && !in_place) flats.push_back(numel * 4);
      cur = members = numel = 0;
    };
    for (size_t i = ps.size(); i-- > 0;) {
      const int64_t n = numel_of(ps[i].shape), bytes = n * 4;
      if (members > 0 && cur + bytes > kGradBucketBytes) close();
      ++members;
      numel += n;
      cur += bytes;
    }
    close();
    std::sort(flats.rbegin(), flats.rend());
    if (flats.size() > 2) flats.resize(2);
  }

  SStage stage(sim, model, d, chunks, first, last, cfg.train.recompute,
               cfg.train.offload.activations ? cfg.train.offload.prefetch : 0);
  const int64_t Tn = cfg.train.seq_len, mb = cfg.train.micro_batch, local = cfg.train.global_batch / dp;
  const int S = pp * v;
  std::vector<BufP> moments;
  BufP optim_table;
  for (int step = 1; step <= 2; ++step) {
    sim.phase = Phase{step, 0, -1, -1, -1};
    {
      T in = fresh(sim, {local, Tn}, DType::i32, Cat::other), tg = fresh(sim, {local, Tn}, DType::i32, Cat::other);
      stage.set_batch(in, tg, mb);
    }
    std::vector<BufP> sends, buckets;
    std::map<int, T> local_acts;
    std::map<int, BufP> local_grads;
    for (size_t i = 0; i < list.size(); ++i) {
      const parallel::Action& a = list[i];
      const int g = a.chunk * pp + pp_rank, m = a.micro, c = a.chunk;
      sim.phase = Phase{step, a.kind == parallel::Action::F ? 'F' : a.kind == parallel::Action::B ? 'B' : 'W', m, c, -1};
      if (i + 1 == list.size())
        for (int64_t f : flats) buckets.push_back(sim.alloc(f, Cat::comm));
      switch (a.kind) {
        case parallel::Action::F: {
          T in;
          if (g > 0) {
            const int tag = parallel::pipeline_tag(spec, false, m, g);
            if ((g - 1) % pp == pp_rank) {
              in = local_acts.at(tag);
              local_acts.erase(tag);
            } else {
              in = fresh(sim, stage.input_shape(), d.dt, Cat::saved);
            }
          }
          T out = stage.forward(c, m, in);
          in = nullptr;
          if (g < S - 1) {
            if ((g + 1) % pp == pp_rank)
              local_acts[parallel::pipeline_tag(spec, false, m, g + 1)] = fresh(sim, out->shape, out->dt, Cat::saved);
            else
              sends.push_back(out->storage);
          }
          break;
        }
        case parallel::Action::B: {
          BufP gout;
          if (g < S - 1) {
            const int tag = parallel::pipeline_tag(spec, true, m, g);
            if ((g + 1) % pp == pp_rank) {
              gout = local_grads.at(tag);
              local_grads.erase(tag);
            } else {
              gout = sim.alloc(device_bytes(stage.input_shape(), d.dt), Cat::comm);
            }
          }
          BufP gin = stage.backward(c, m, gout, split);
          gout = nullptr;
          if (g > 0) {
            if ((g - 1) % pp == pp_rank)
              local_grads[parallel::pipeline_tag(spec, true, m, g - 1)] = sim.alloc(gin->bytes, Cat::comm);
            else
              sends.push_back(gin);
          }
          break;
        }
        case parallel::Action::W: stage.backward_weights(c, m); break;
      }
      r.in_flight = std::max(r.in_flight, stage.live_passes());
      sends.clear();  // completed by the next poll (the peer's receive is posted)
    }
    buckets.clear();
    sim.phase = Phase{step, 'O', -1, -1, -1};
    if (!off_opt) {  // device gradient norm: descriptor table, chunk partials, the result (offloaded: on the host)
      BufP table = sim.alloc(detail::optim_table_bytes(owners), Cat::other);
      BufP part = sim.alloc(std::max<int64_t>(8, norm_chunks * 8), Cat::scratch);
      BufP out = sim.alloc(8, Cat::scratch);
    }
    if (!off_opt) {  // AdamW::step creates the moments at the first update, then its table
      if (moments.empty())
        for (const SParam& p : model.params()) {
          const int64_t n = numel_of(p.shape), share = zero ? n - n * (dp - 1) / dp : n;
          moments.push_back(sim.alloc(times(share, sb.moments / 2), Cat::moments));
          moments.push_back(sim.alloc(times(share, sb.moments / 2), Cat::moments));
        }
      if (!optim_table) optim_table = sim.alloc(detail::optim_table_bytes(static_cast<int64_t>(model.params().size())), Cat::other);
    }
  }
  r.zero_numel = 0;
  for (const ParamInfo& p : r.params) r.zero_numel += p.zero_share;
  r.peak = sim.peak();
  r.reserved = sim.peak_reserved();
  r.at_peak = sim.at_peak();
  r.phase = sim.peak_phase();
  r.host_activations = sim.host_peak();
  return r;
}

int64_t cat(const StageResult& r, Cat c) { return r.at_peak[static_cast<size_t>(c)]; }

ValidationContext registry_context(int world) {
  ValidationContext c;
  c.world_size = world;
  c.archs = layers::layer_names(layers::LayerKind::arch);
  c.norms = layers::layer_names(layers::LayerKind::norm);
  c.mlps = layers::layer_names(layers::LayerKind::mlp);
  c.attentions = layers::layer_names(layers::LayerKind::attention);
  return c;
}

}  // namespace

const RankMemory& MemoryPlan::worst() const {
  PT_CHECK(!ranks.empty(), "memory plan without ranks");
  size_t w = 0;
  for (size_t i = 1; i < ranks.size(); ++i)
    if (ranks[i].device_required_bytes > ranks[w].device_required_bytes) w = i;
  return ranks[w];
}

Config apply_sets(const Config& cfg, const std::vector<std::string>& sets) {
  return parse_config(to_yaml(cfg), sets, "<plan>");
}

bool memory_model_covers(const Config& cfg, std::string* why) {
  try {
    const Dims d = dims_of(cfg);
    check_modelled("arch", "model.arch", cfg.model.arch);
    check_modelled("norm", "model.norm", d.norm);
    check_modelled("attention", "model.attention", d.attention);
    check_modelled("mlp", "model.mlp", d.mlp);
    return true;
  } catch (const UserError& e) {
    if (why) *why = e.what();
    return false;
  }
}

MemoryPlan plan_memory(const Config& cfg, int world, const GpuSpec& gpu, int64_t host_capacity_bytes) {
  const ParallelConfig& par = cfg.parallel;
  PT_USER_CHECK(world >= 1 && world % (par.tp * par.pp) == 0,
                "--np {}: the world size must be a multiple of parallel.tp * parallel.pp = {} * {} = {}", world, par.tp,
                par.pp, par.tp * par.pp);
  check_modelled("arch", "model.arch", cfg.model.arch);
  const Dims d = dims_of(cfg);
  check_modelled("norm", "model.norm", d.norm);
  check_modelled("attention", "model.attention", d.attention);
  check_modelled("mlp", "model.mlp", d.mlp);

  MemoryPlan plan;
  plan.gpu = gpu;
  plan.world = world;
  plan.device_capacity_bytes = gpu.total_bytes;
  plan.host_capacity_bytes = host_capacity_bytes;
  if (cfg.optim.state != OptimState::fp32 && !cfg.train.offload.optimizer)
    plan.notes.push_back(fmt::format(
        "optim.state: {} lives in host memory only (the CPU AdamW): with train.offload.optimizer: false the trainer "
        "refuses it on a GPU; modelled here as the fp32 state the device kernels hold",
        to_string(cfg.optim.state)));
  const int tp = par.tp, pp = par.pp, dp = cfg.resolved_dp(world);
  const bool off = cfg.train.offload.optimizer;
  const bool zero = cfg.optim.zero == 1 && dp > 1;
  const StateBytes sb = state_bytes(cfg);

  std::vector<StageResult> stages;
  for (int r = 0; r < pp; ++r) stages.push_back(simulate_stage(cfg, world, gpu, r));

  for (int rank = 0; rank < world; ++rank) {
    const int tp_rank = rank % tp, pp_rank = (rank / tp) % pp, dp_rank = rank / (tp * pp);
    const StageResult& s = stages[static_cast<size_t>(pp_rank)];
    RankMemory m;
    m.rank = rank;
    m.stage = pp_rank;
    m.tp_rank = tp_rank;
    m.dp_rank = dp_rank;
    m.in_flight = s.in_flight;
    int64_t elems = 0, max_local = 0, full = 0, writer_elems = 0, moment_elems = 0;
    for (const ParamInfo& p : s.params) {
      elems += p.numel;
      full += p.full_numel;
      max_local = std::max(max_local, p.numel);
      const bool unique = !p.tied_replica && (p.sharded || tp_rank == 0);
      if (dp_rank == 0 && unique) writer_elems += p.numel;
      // ZeRO-1: every DP rank writes its own range of the moments; else the writer all of them
      if (unique && (zero || dp_rank == 0)) moment_elems += p.zero_share;
    }
    m.params = elems;
    DeviceBreakdown& dv = m.device;
    dv.weights = cat(s, Cat::weights);
    dv.grads = cat(s, Cat::grads);
    dv.master = cat(s, Cat::master);
    dv.moments = cat(s, Cat::moments);
    dv.saved_activations = cat(s, Cat::saved);
    dv.logits = cat(s, Cat::logits);
    dv.activation_grads = cat(s, Cat::act_grads);
    dv.scratch = cat(s, Cat::scratch) + cat(s, Cat::act);
    dv.comm_buffers = cat(s, Cat::comm);
    dv.other = cat(s, Cat::other);
    dv.allocator_rounding = s.reserved - s.peak;
    dv.gemm_workspace = kGemmWorkspace;
    dv.cuda_context = gpu.context_bytes;
    m.device_peak_bytes = s.peak;
    m.device_reserved_bytes = s.reserved;
    m.device_required_bytes = s.reserved + kGemmWorkspace + gpu.context_bytes;
    m.peak_at = describe_phase(s.phase);

    HostBreakdown& h = m.host;
    if (off) {
      h.master = times(elems, sb.master);
      h.moments = times(s.zero_numel, sb.moments);
      // optim/offload.h: per staging slot, the largest parameter's staged gradient (host floats)
      // and its pinned download (gradient dtype) and upload (weights dtype) buffers
      const int64_t per = 4 + element_size(cfg.train.grad_dtype, Device::cuda) + element_size(cfg.train.precision, Device::cuda);
      h.grad_staging = optim::kOffloadSlots * max_local * per;
    }
    h.activations = s.host_activations;
    // Trainer::save_checkpoint: write_rank_file copies device tensors down (and decodes 8-bit
    // moments) one tensor at a time: the largest local tensor, as floats on the host
    (void)writer_elems;
    (void)moment_elems;
    h.checkpoint_staging = max_local * 4;
    h.init_staging = cfg.train.init_from ? full * 4 : max_local * 4;
    h.emulated_device = gpu.emulated ? s.reserved + kGemmWorkspace : 0;
    h.process = gpu.host_process_bytes;
    m.host_bytes = h.master + h.moments + h.grad_staging + h.emulated_device + h.process +
                   std::max({h.activations, h.checkpoint_staging, h.init_staging});
    plan.host_bytes += m.host_bytes;
    plan.ranks.push_back(std::move(m));
  }
  plan.device_fits = true;
  for (const RankMemory& m : plan.ranks) plan.device_fits = plan.device_fits && m.device_required_bytes <= gpu.total_bytes;
  plan.host_fits = plan.host_bytes <= host_capacity_bytes;
  plan.fits = plan.device_fits && plan.host_fits;
  return plan;
}

// ---- advice

namespace {

/// Alternatives of one kind of change, cheapest first (the first that fits is taken).
using Family = std::vector<std::vector<std::string>>;

std::vector<Family> candidate_families(const Config& c, int world, const MemoryPlan& plan) {
  std::vector<Family> fam;
  const TrainConfig& t = c.train;
  if (t.recompute == Recompute::none) fam.push_back({{"train.recompute=selective"}});
  if (t.recompute != Recompute::full) fam.push_back({{"train.recompute=full"}});
  if (!t.offload.optimizer) fam.push_back({{"train.offload.optimizer=true"}});
  if (!t.offload.activations) fam.push_back({{"train.offload.activations=true"}});
  {
    Family f;
    for (int mb = t.micro_batch - 1; mb >= 1; --mb)
      if (t.micro_batch % mb == 0) f.push_back({fmt::format("train.micro_batch={}", mb)});
    if (!f.empty()) fam.push_back(f);
  }
  {
    Family f;
    const ParallelConfig& p = c.parallel;
    for (int pp = p.pp + 1; p.tp * pp <= world; ++pp) {
      if (world % (p.tp * pp) != 0) continue;
      std::vector<std::string> sets = {fmt::format("parallel.pp={}", pp)};
      if (p.dp) sets.push_back(fmt::format("parallel.dp={}", world / (p.tp * pp)));
      if (p.stage_layers) sets.push_back("parallel.stage_layers=null");
      f.push_back(sets);
    }
    if (!f.empty()) fam.push_back(f);
  }
  // a compact state runs on the host AdamW only: with the state on the device it comes with offload
  if (c.optim.state != OptimState::int8) {
    if (t.offload.optimizer)
      fam.push_back({{"optim.state=8bit"}});
    else
      fam.push_back({{"optim.state=8bit", "train.offload.optimizer=true"}});
  }
  if (!plan.host_fits) {
    if (t.offload.optimizer && c.optim.state == OptimState::fp32) fam.push_back({{"train.offload.optimizer=false"}});
    if (t.offload.activations) fam.push_back({{"train.offload.activations=false"}});
  }
  return fam;
}

/// The plan of cfg with `sets`, or nullopt when that is not a valid config for `world`.
std::optional<PlanChange> try_change(const Config& cfg, int world, const GpuSpec& gpu, int64_t host,
                                     const std::vector<std::string>& sets) {
  try {
    Config c = apply_sets(cfg, sets);
    validate(c, registry_context(world));
    return PlanChange{sets, plan_memory(c, world, gpu, host)};
  } catch (const UserError&) {
    return std::nullopt;  // not a valid layout for this world: not advice
  }
}

}  // namespace

std::vector<PlanChange> plan_advice(const Config& cfg, int world, const GpuSpec& gpu, int64_t host_capacity_bytes,
                                    const MemoryPlan& plan) {
  std::vector<PlanChange> out;
  if (plan.fits) return out;
  const std::vector<Family> fam = candidate_families(cfg, world, plan);
  std::vector<PlanChange> device_only;  // make the devices fit, not the host
  for (const Family& f : fam) {
    bool device_found = false;
    for (const auto& sets : f) {
      auto ch = try_change(cfg, world, gpu, host_capacity_bytes, sets);
      if (!ch) continue;
      if (ch->plan.fits) {
        out.push_back(std::move(*ch));
        break;
      }
      if (!plan.device_fits && ch->plan.device_fits && !device_found) {
        device_only.push_back(std::move(*ch));
        device_found = true;
      }
    }
  }
  if (!out.empty()) return out;
  for (size_t i = 0; i < fam.size() && out.empty(); ++i)
    for (size_t j = i + 1; j < fam.size() && out.empty(); ++j) {
      bool found = false;
      for (const auto& a : fam[i]) {
        for (const auto& b : fam[j]) {
          if (a.front().substr(0, a.front().find('=')) == b.front().substr(0, b.front().find('='))) continue;
          std::vector<std::string> sets = a;
          sets.insert(sets.end(), b.begin(), b.end());
          auto ch = try_change(cfg, world, gpu, host_capacity_bytes, sets);
          if (ch && ch->plan.fits) {
            out.push_back(std::move(*ch));
            found = true;
            break;
          }
        }
        if (found) break;
      }
    }
  return out.empty() ? device_only : out;
}

// ---- reports

namespace {

std::string sets_line(const std::vector<std::string>& sets) {
  std::string s;
  for (const auto& x : sets) {
    if (!s.empty()) s += " ";
    s += "--set " + x;
  }
  return s;
}

std::string shortfall(const MemoryPlan& plan) {
  std::string s;
  if (!plan.device_fits) {
    const RankMemory& w = plan.worst();
    s += fmt::format("rank {} (stage {}) needs {} GiB of device memory, the {} has {} GiB", w.rank, w.stage,
                     gib(w.device_required_bytes), plan.gpu.name, gib(plan.device_capacity_bytes));
  }
  if (!plan.host_fits) {
    if (!s.empty()) s += "; ";
    s += fmt::format("the host needs {} GiB for {} rank{}, it has {} GiB", gib(plan.host_bytes), plan.world,
                     plan.world == 1 ? "" : "s", gib(plan.host_capacity_bytes));
  }
  return s;
}

}  // namespace

std::string format_plan(const MemoryPlan& plan, const std::vector<PlanChange>& advice) {
  // One column per pipeline stage (TP and DP ranks of a stage hold the same device bytes).
  std::vector<const RankMemory*> cols;
  std::map<int, std::vector<int>> ranks_of;
  for (const RankMemory& m : plan.ranks) {
    ranks_of[m.stage].push_back(m.rank);
    if (ranks_of[m.stage].size() == 1) cols.push_back(&m);
  }
  // the host column of a stage: its largest rank (dp rank 0 writes the checkpoint)
  std::map<int, const RankMemory*> host_of;
  for (const RankMemory& m : plan.ranks)
    if (!host_of[m.stage] || m.host_bytes > host_of[m.stage]->host_bytes) host_of[m.stage] = &m;

  std::string out = fmt::format("ptrain plan: {} x {} ({}, {} GiB each), host {} GiB\n", plan.world, plan.gpu.name,
                                plan.gpu.description, gib(plan.device_capacity_bytes), gib(plan.host_capacity_bytes));
  auto row = [&](const std::string& label, auto&& value) {
    out += fmt::format("  {:<30}", label);
    for (const RankMemory* c : cols) out += fmt::format("{:>14}", value(*c));
    out += "\n";
  };
  auto g = [](int64_t b) { return human(b); };
  out += fmt::format("  {:<30}", "");
  for (const RankMemory* c : cols) out += fmt::format("{:>14}", fmt::format("stage {}", c->stage));
  out += "\n";
  row("ranks", [&](const RankMemory& c) {
    const auto& r = ranks_of[c.stage];
    return r.size() == 1 ? std::to_string(r[0]) : fmt::format("{}..{} ({})", r.front(), r.back(), r.size());
  });
  row("parameters", [](const RankMemory& c) { return fmt::format("{:.1f}M", static_cast<double>(c.params) / 1e6); });
  row("micro-batches in flight", [](const RankMemory& c) { return std::to_string(c.in_flight); });
  out += "  device, at the allocator peak\n";
  row("  weights", [&](const RankMemory& c) { return g(c.device.weights); });
  row("  gradients", [&](const RankMemory& c) { return g(c.device.grads); });
  row("  fp32 master", [&](const RankMemory& c) { return g(c.device.master); });
  row("  Adam moments", [&](const RankMemory& c) { return g(c.device.moments); });
  row("  saved activations", [&](const RankMemory& c) { return g(c.device.saved_activations); });
  row("  logits", [&](const RankMemory& c) { return g(c.device.logits); });
  row("  activation gradients", [&](const RankMemory& c) { return g(c.device.activation_grads); });
  row("  scratch, op outputs", [&](const RankMemory& c) { return g(c.device.scratch); });
  row("  communication buffers", [&](const RankMemory& c) { return g(c.device.comm_buffers); });
  row("  tokens, RoPE, tables", [&](const RankMemory& c) { return g(c.device.other); });
  row("  = allocator peak", [&](const RankMemory& c) { return g(c.device_peak_bytes); });
  row("  + allocator rounding", [&](const RankMemory& c) { return g(c.device.allocator_rounding); });
  row("  + GEMM workspace", [&](const RankMemory& c) { return g(c.device.gemm_workspace); });
  row("  + CUDA context", [&](const RankMemory& c) { return g(c.device.cuda_context); });
  row("  = device required", [&](const RankMemory& c) { return g(c.device_required_bytes); });
  row("  of the card", [&](const RankMemory& c) {
    return fmt::format("{:.0f}%", 100.0 * static_cast<double>(c.device_required_bytes) /
                                      static_cast<double>(std::max<int64_t>(1, plan.device_capacity_bytes)));
  });
  out += "  host, per rank\n";
  auto hrow = [&](const std::string& label, auto&& value) {
    out += fmt::format("  {:<30}", label);
    for (const RankMemory* c : cols) out += fmt::format("{:>14}", value(*host_of[c->stage]));
    out += "\n";
  };
  hrow("  master (offloaded)", [&](const RankMemory& c) { return g(c.host.master); });
  hrow("  moments (offloaded)", [&](const RankMemory& c) { return g(c.host.moments); });
  hrow("  gradient staging", [&](const RankMemory& c) { return g(c.host.grad_staging); });
  hrow("  offloaded activations", [&](const RankMemory& c) { return g(c.host.activations); });
  hrow("  checkpoint staging", [&](const RankMemory& c) { return g(c.host.checkpoint_staging); });
  hrow("  init staging", [&](const RankMemory& c) { return g(c.host.init_staging); });
  if (plan.gpu.emulated) hrow("  emulated device memory", [&](const RankMemory& c) { return g(c.host.emulated_device); });
  hrow("  process", [&](const RankMemory& c) { return g(c.host.process); });
  hrow("  = host peak", [&](const RankMemory& c) { return g(c.host_bytes); });
  out += "  (a rank's host peak counts the larger of offloaded activations, checkpoint staging and init staging)\n";
  for (const std::string& n : plan.notes) out += "note: " + n + "\n";
  const RankMemory& w = plan.worst();
  out += fmt::format("device: largest need {} GiB on rank {} (peak at {}) of {} GiB: {}\n",
                     gib(w.device_required_bytes), w.rank, w.peak_at, gib(plan.device_capacity_bytes),
                     plan.device_fits ? "fits" : "does not fit");
  out += fmt::format("host: {} GiB for {} rank{} of {} GiB: {}\n", gib(plan.host_bytes), plan.world,
                     plan.world == 1 ? "" : "s", gib(plan.host_capacity_bytes), plan.host_fits ? "fits" : "does not fit");
  out += fmt::format("verdict: {}\n", plan.fits ? "fits" : "does not fit (" + shortfall(plan) + ")");
  if (!plan.fits) {
    if (advice.empty()) {
      out += "advice: no single change (or pair) among recompute, offload, a smaller micro-batch, more pipeline "
             "stages";
      out += " makes it fit;";
      if (!plan.device_fits) out += " use more or larger GPUs (--np, --gpu) or a smaller model;";
      if (!plan.host_fits)
        out += fmt::format(" the host needs at least {} GiB (--host-mem), or less state on it;", gib(plan.host_bytes));
      out += "\n";
    } else if (!advice.front().plan.fits) {
      out += "advice: no change tried makes both fit; these make the devices fit (each checked by rerunning the "
             "model of memory), with the host they would need:\n";
      for (const PlanChange& a : advice)
        out += fmt::format("  {:<60} device {} GiB (rank {}), host {} GiB of {} GiB\n", sets_line(a.sets),
                           gib(a.plan.worst().device_required_bytes), a.plan.worst().rank, gib(a.plan.host_bytes),
                           gib(a.plan.host_capacity_bytes));
    } else {
      out += "advice (each checked by rerunning the model of memory):\n";
      for (const PlanChange& a : advice)
        out += fmt::format("  {:<60} device {} GiB (rank {}), host {} GiB\n", sets_line(a.sets),
                           gib(a.plan.worst().device_required_bytes), a.plan.worst().rank, gib(a.plan.host_bytes));
    }
  }
  return out;
}

nlohmann::json plan_to_json(const MemoryPlan& plan, const std::vector<PlanChange>& advice) {
  nlohmann::json ranks = nlohmann::json::array();
  for (const RankMemory& m : plan.ranks) {
    const DeviceBreakdown& d = m.device;
    const HostBreakdown& h = m.host;
    ranks.push_back({{"rank", m.rank},
                     {"stage", m.stage},
                     {"tp_rank", m.tp_rank},
                     {"dp_rank", m.dp_rank},
                     {"params", m.params},
                     {"in_flight", m.in_flight},
                     {"device_peak_bytes", m.device_peak_bytes},
                     {"device_reserved_bytes", m.device_reserved_bytes},
                     {"device_required_bytes", m.device_required_bytes},
                     {"host_bytes", m.host_bytes},
                     {"peak_at", m.peak_at},
                     {"breakdown",
                      {{"device",
                        {{"weights", d.weights},
                         {"grads", d.grads},
                         {"master", d.master},
                         {"moments", d.moments},
                         {"saved_activations", d.saved_activations},
                         {"logits", d.logits},
                         {"activation_grads", d.activation_grads},
                         {"scratch", d.scratch},
                         {"comm_buffers", d.comm_buffers},
                         {"other", d.other},
                         {"allocator_rounding", d.allocator_rounding},
                         {"gemm_workspace", d.gemm_workspace},
                         {"cuda_context", d.cuda_context}}},
                       {"host",
                        {{"master", h.master},
                         {"moments", h.moments},
                         {"grad_staging", h.grad_staging},
                         {"activations", h.activations},
                         {"checkpoint_staging", h.checkpoint_staging},
                         {"init_staging", h.init_staging},
                         {"emulated_device", h.emulated_device},
                         {"process", h.process}}}}}});
  }
  nlohmann::json adv = nlohmann::json::array();
  for (const PlanChange& a : advice)
    adv.push_back({{"sets", a.sets},
                   {"fits", a.plan.fits},
                   {"device_fits", a.plan.device_fits},
                   {"host_fits", a.plan.host_fits},
                   {"device_required_bytes", a.plan.worst().device_required_bytes},
                   {"host_bytes", a.plan.host_bytes}});
  return {{"fits", plan.fits},
          {"notes", plan.notes},
          {"device_fits", plan.device_fits},
          {"host_fits", plan.host_fits},
          {"gpu", plan.gpu.name},
          {"world", plan.world},
          {"device_capacity_bytes", plan.device_capacity_bytes},
          {"host_capacity_bytes", plan.host_capacity_bytes},
          {"host_bytes", plan.host_bytes},
          {"ranks", ranks},
          {"advice", adv}};
}

std::string refusal_message(const MemoryPlan& plan, const std::vector<PlanChange>& advice) {
  std::string s = fmt::format("the model of memory says this run does not fit: {}", shortfall(plan));
  if (advice.empty())
    s += ". HINT: run `ptrain plan` with this config for the breakdown; no single change or pair of recompute, "
         "offload, micro-batch or pipeline stages makes it fit";
  else {
    s += advice.front().plan.fits ? ". HINT: " : ". HINT: for the devices (the host stays short): ";
    for (size_t i = 0; i < advice.size(); ++i) {
      if (i) s += ", or ";
      s += sets_line(advice[i].sets);
    }
    s += " (`ptrain plan` shows the breakdown)";
  }
  return s;
}

}  // namespace ptrain::launch
