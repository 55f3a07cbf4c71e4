// core/cuda/activation_offload.cpp — see core/activation_offload.h.
#include "core/activation_offload.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <map>
#include <mutex>

#include <fmt/format.h>

#include "core/cuda/device_memory.h"
#include "core/cuda/launch_stats.h"
#include "core/error.h"

namespace ptrain {

namespace {

constexpr cudaStream_t kCompute = nullptr;  // ptrain's kernels and the caching allocator's tensors

/// The process's copy streams, pinned host pool, events and trace (one device per process).
class Engine {
 public:
  cudaStream_t d2h = nullptr, h2d = nullptr;
  ActivationOffloadStats stats;

  Engine() {
    PT_CUDA_RT_CHECK(cudaStreamCreateWithFlags(&d2h, cudaStreamNonBlocking));
    PT_CUDA_RT_CHECK(cudaStreamCreateWithFlags(&h2d, cudaStreamNonBlocking));
  }

  /// An ordering event (no timing).
  cudaEvent_t event() {
    cudaEvent_t e = nullptr;
    PT_CUDA_RT_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    return e;
  }
  /// Events are destroyed in batches: queued waits may still name them, and the emulated
  /// runtime completes the queued work at each destruction.
  void retire(cudaEvent_t e) {
    if (!e) return;
    graveyard_.push_back(e);
    if (graveyard_.size() >= 256) {
      for (cudaEvent_t x : graveyard_) PT_CUDA_RT_CHECK(cudaEventDestroy(x));
      graveyard_.clear();
    }
  }

  void* host_alloc(size_t bytes) {
    auto& list = pool_[bytes];
    void* p = nullptr;
    if (!list.empty()) {
      p = list.back();
      list.pop_back();
    } else {
      PT_CUDA_RT_CHECK(cudaMallocHost(&p, bytes));
      stats.host_pool_bytes += static_cast<int64_t>(bytes);
    }
    stats.host_live_bytes += static_cast<int64_t>(bytes);
    stats.host_peak_bytes = std::max(stats.host_peak_bytes, stats.host_live_bytes);
    return p;
  }
  void host_free(void* p, size_t bytes) {
    if (!p) return;
    pool_[bytes].push_back(p);
    stats.host_live_bytes -= static_cast<int64_t>(bytes);
  }

  // ---- trace: timing events, resolved against an anchor on the compute stream
  bool tracing() const { return anchor_ != nullptr; }
  cudaEvent_t timing_event(cudaStream_t s) {
    cudaEvent_t e = nullptr;
    PT_CUDA_RT_CHECK(cudaEventCreate(&e));
    PT_CUDA_RT_CHECK(cudaEventRecord(e, s));
    return e;
  }
  void trace(std::string name, cudaEvent_t begin, cudaEvent_t end) { marks_.push_back({std::move(name), begin, end}); }
  void trace_start(double now_us) {
    drop_trace();
    anchor_ = timing_event(kCompute);
    anchor_us_ = now_us;
  }
  std::vector<DeviceSpan> trace_collect() {
    std::vector<DeviceSpan> out;
    if (!anchor_) return out;
    for (const Mark& m : marks_) {
      PT_CUDA_RT_CHECK(cudaEventSynchronize(m.end));
      float a = 0, b = 0;
      PT_CUDA_RT_CHECK(cudaEventElapsedTime(&a, anchor_, m.begin));
      PT_CUDA_RT_CHECK(cudaEventElapsedTime(&b, anchor_, m.end));
      if (b > a) out.push_back({m.name, anchor_us_ + 1e3 * a, anchor_us_ + 1e3 * b});
    }
    drop_trace();
    return out;
  }

 private:
  struct Mark {
    std::string name;
    cudaEvent_t begin, end;
  };
  void drop_trace() {
    for (const Mark& m : marks_) {
      retire(m.begin);
      retire(m.end);
    }
    marks_.clear();
    retire(anchor_);
    anchor_ = nullptr;
  }
  std::map<size_t, std::vector<void*>> pool_;
  std::vector<cudaEvent_t> graveyard_;
  cudaEvent_t anchor_ = nullptr;
  double anchor_us_ = 0;
  std::vector<Mark> marks_;
};

Engine& engine() {
  static Engine* e = new Engine();  // lives to the end of the process (the runtime outlives no static)
  return *e;
}

struct Group;

/// One device storage that a group's saves live in.
struct Entry {
  std::shared_ptr<Storage> dev;  ///< on the device (the original, or the restored copy); null while down
  void* host = nullptr;          ///< pinned copy (while down, and until its H2D was waited for)
  size_t bytes = 0;
  bool down = false;             ///< a D2H copy was issued
  std::shared_ptr<Group> group;
  ~Entry();
};

/// The saves of one block of one tape.
struct Group {
  int index = 0;
  std::vector<std::weak_ptr<Entry>> entries;
  cudaEvent_t d2h_done = nullptr, h2d_done = nullptr;
  bool copied = false;    ///< D2H issued
  bool released = false;  ///< device storages let go
  bool up = false;        ///< H2D issued
  bool waited = false;    ///< the compute stream waits for the H2D
  std::string label;
  /// The compute stream waits for the H2D copy (once); host buffers go back to the pool.
  void wait_up() {
    if (!up || waited) return;
    Engine& e = engine();
    cudaEvent_t before = e.tracing() ? e.timing_event(kCompute) : nullptr;
    PT_CUDA_RT_CHECK(cudaStreamWaitEvent(kCompute, h2d_done, 0));
    if (before) e.trace("wait " + label, before, e.timing_event(kCompute));
    waited = true;
    ++e.stats.compute_waits;
    for (auto& w : entries)
      if (auto en = w.lock(); en && en->host && en->dev) {
        e.host_free(en->host, en->bytes);
        en->host = nullptr;
      }
  }
  ~Group() {
    engine().retire(d2h_done);
    engine().retire(h2d_done);
  }
};

Entry::~Entry() {
  // An H2D copy nobody waited for may still read the host buffer: order compute after it, so
  // the D2H that next fills the buffer (after a later compute event) cannot overtake it. The
  // restored device block is covered by record_stream.
  if (group && group->up && !group->waited && host && dev) group->wait_up();
  if (host) engine().host_free(host, bytes);
}

struct Handle {
  Tensor kept;                   ///< saves that stay (outside blocks, parameters, host tensors)
  std::shared_ptr<Entry> entry;  ///< else the storage, and the view into it
  int64_t offset = 0;
  Shape shape;
  DType dtype = DType::f32;
};

class Offload final : public ActivationOffload {
 public:
  explicit Offload(int prefetch) : prefetch_(prefetch) {
    PT_CHECK(prefetch >= 1, "activation offload: prefetch depth {} (must be >= 1)", prefetch);
  }

  void begin_block() override {
    PT_CHECK(!open_, "activation offload: begin_block inside a block");
    open_ = true;
    auto g = std::make_shared<Group>();
    g->index = static_cast<int>(groups_.size());
    g->label = fmt::format("block {}", g->index);
    groups_.push_back(g);
  }

  void end_block(bool last) override {
    PT_CHECK(open_, "activation offload: end_block outside a block");
    open_ = false;
    Group& g = *groups_.back();
    if (groups_.size() >= 2) release(*groups_[groups_.size() - 2]);
    if (!last) copy_down(g);
  }

  std::shared_ptr<void> pack(const Tensor& t) override {
    auto h = std::make_shared<Handle>();
    if (!open_ || t.device() != Device::cuda || t.requires_grad()) {
      h->kept = t;
      return h;
    }
    const TensorImpl* impl = t.id();
    std::shared_ptr<Entry> e;
    if (auto it = index_.find(impl->storage.get()); it != index_.end()) e = it->second.lock();
    if (!e) {
      e = std::make_shared<Entry>();
      e->dev = impl->storage;
      e->bytes = impl->storage->bytes;
      e->group = groups_.back();
      e->group->entries.push_back(e);
      index_[impl->storage.get()] = e;
    }
    h->entry = std::move(e);
    h->offset = impl->offset;
    h->shape = impl->shape;
    h->dtype = impl->dtype;
    return h;
  }

  Tensor unpack(const std::shared_ptr<void>& handle) override {
    auto* h = static_cast<Handle*>(handle.get());
    if (!h->entry) return h->kept;
    Entry& e = *h->entry;
    Group& g = *e.group;
    if (g.index != cursor_) {  // backward reached a new block: it must be here, the next ones come
      cursor_ = g.index;
      copy_up(g);
      g.wait_up();
      for (int k = 1; k <= prefetch_ && g.index - k >= 0; ++k) copy_up(*groups_[static_cast<size_t>(g.index - k)]);
    }
    PT_CHECK(e.dev, "activation offload: a saved tensor of {} is not on the device at its backward", g.label);
    return Tensor::over(e.dev, h->offset, h->shape, h->dtype, Device::cuda);
  }

 private:
  void copy_down(Group& g) {
    Engine& en = engine();
    std::vector<std::shared_ptr<Entry>> todo;
    for (auto& w : g.entries) {
      auto e = w.lock();
      if (!e) continue;
      if (e->dev.use_count() > 1) {  // held elsewhere too: moving it would free nothing
        ++en.stats.kept_shared;
        continue;
      }
      todo.push_back(std::move(e));
    }
    if (todo.empty()) return;
    cudaEvent_t ready = en.event();
    PT_CUDA_RT_CHECK(cudaEventRecord(ready, kCompute));
    PT_CUDA_RT_CHECK(cudaStreamWaitEvent(en.d2h, ready, 0));
    en.retire(ready);
    cudaEvent_t begin = en.tracing() ? en.timing_event(en.d2h) : nullptr;
    int64_t bytes = 0;
    for (auto& e : todo) {
      e->host = en.host_alloc(e->bytes);
      PT_CUDA_RT_CHECK(cudaMemcpyAsync(e->host, e->dev->ptr, e->bytes, cudaMemcpyDeviceToHost, en.d2h));
      cuda::device_allocator().record_stream(e->dev->ptr, en.d2h);
      e->down = true;
      bytes += static_cast<int64_t>(e->bytes);
    }
    g.d2h_done = en.event();
    PT_CUDA_RT_CHECK(cudaEventRecord(g.d2h_done, en.d2h));
    if (begin) en.trace(fmt::format("D2H {} ({:.1f} MB)", g.label, bytes / 1e6), begin, en.timing_event(en.d2h));
    g.copied = true;
    en.stats.bytes_down += bytes;
    ++en.stats.groups_down;
  }

  void release(Group& g) {
    if (!g.copied || g.released) return;
    g.released = true;
    for (auto& w : g.entries) {
      auto e = w.lock();
      if (!e || !e->down || e->dev.use_count() > 1) continue;  // a new holder appeared: it stays
      index_.erase(e->dev.get());
      e->dev.reset();  // the allocator reuses the block once the D2H copy is done (record_stream)
    }
  }

  void copy_up(Group& g) {
    if (!g.released || g.up) return;
    Engine& en = engine();
    std::vector<std::shared_ptr<Entry>> todo;
    for (auto& w : g.entries)
      if (auto e = w.lock(); e && !e->dev && e->host) todo.push_back(std::move(e));
    g.up = true;
    if (todo.empty()) {
      g.waited = true;
      return;
    }
    // Fresh blocks come from the compute stream's pool: they may have been freed by queued
    // kernels, and the allocator may queue work on them (the emulated build's NaN fill). So
    // allocate first, then the copy waits for the compute stream as it is now, and for the
    // group's D2H.
    for (auto& e : todo) e->dev = std::make_shared<Storage>(e->bytes, cuda::cuda_tensor_allocator());
    cudaEvent_t ready = en.event();
    PT_CUDA_RT_CHECK(cudaEventRecord(ready, kCompute));
    PT_CUDA_RT_CHECK(cudaStreamWaitEvent(en.h2d, ready, 0));
    PT_CUDA_RT_CHECK(cudaStreamWaitEvent(en.h2d, g.d2h_done, 0));
    en.retire(ready);
    cudaEvent_t begin = en.tracing() ? en.timing_event(en.h2d) : nullptr;
    int64_t bytes = 0;
    for (auto& e : todo) {
      PT_CUDA_RT_CHECK(cudaMemcpyAsync(e->dev->ptr, e->host, e->bytes, cudaMemcpyHostToDevice, en.h2d));
      cuda::device_allocator().record_stream(e->dev->ptr, en.h2d);
      bytes += static_cast<int64_t>(e->bytes);
    }
    g.h2d_done = en.event();
    PT_CUDA_RT_CHECK(cudaEventRecord(g.h2d_done, en.h2d));
    if (begin) en.trace(fmt::format("H2D {} ({:.1f} MB)", g.label, bytes / 1e6), begin, en.timing_event(en.h2d));
    en.stats.bytes_up += bytes;
    ++en.stats.groups_up;
  }

  int prefetch_;
  bool open_ = false;
  int cursor_ = -1;
  std::vector<std::shared_ptr<Group>> groups_;
  std::map<const Storage*, std::weak_ptr<Entry>> index_;  ///< storages on the device, while forward runs
};

}  // namespace

std::unique_ptr<ActivationOffload> ActivationOffload::create(int prefetch) { return std::make_unique<Offload>(prefetch); }

ActivationOffloadStats activation_offload_stats() { return engine().stats; }
void reset_activation_offload_stats() {
  ActivationOffloadStats& s = engine().stats;
  const int64_t live = s.host_live_bytes, pool = s.host_pool_bytes;
  s = ActivationOffloadStats{};
  s.host_live_bytes = s.host_peak_bytes = live;
  s.host_pool_bytes = pool;
}
void activation_offload_trace_start(double now_us) { engine().trace_start(now_us); }
std::vector<DeviceSpan> activation_offload_trace_collect() { return engine().trace_collect(); }

}  // namespace ptrain
