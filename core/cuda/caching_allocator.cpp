// core/cuda/caching_allocator.cpp — segments, blocks, pools and events of the caching allocator.
//
// Data structures (all guarded by Impl::mu):
//   * a segment is one raw_alloc; it is cut into Blocks linked in address order (prev/next);
//     the first Block of a segment (its head) is never deleted while the segment lives, and
//     `segments` maps base address -> head;
//   * a Block is Live (handed out, in `live`), Pending (freed, waiting for record_stream
//     events listed in `pending`) or Free (in exactly one Pool);
//   * two Pools (small: blocks of 2 MiB segments for requests <= 1 MiB; large: the rest),
//     each a std::set ordered by (stream, size, address): lower_bound on (stream, size, 0)
//     is the best fit on that stream, and the choice depends only on addresses and sizes;
//     `live` (a hash map) is used for lookup only, never iterated to choose a block.
// Invariants:
//   * no two Free blocks are neighbours (free_block coalesces);
//   * every Block's size is a multiple of 512 and its address is 512-aligned;
//   * reserved == sum(live sizes) + cached_free + pending_free;
//   * allocated == sum of the requested sizes of live blocks;
//   * with AddressSanitizer and a host-addressable backing, Free blocks and the slack
//     [ptr+requested, ptr+size) of Live blocks are poisoned, and a segment is fully unpoisoned
//     before raw_free. Pending blocks stay unpoisoned: other streams may still use them. The
//     poison is set when the host frees; an emulated runtime that runs stream work after the
//     host returns must finish the work queued before a free first (as a stream-ordered free
//     on the same stream implies).
#include "core/cuda/caching_allocator.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/error.h"

// AddressSanitizer detection. GCC defines __SANITIZE_ADDRESS__; Clang has
// __has_feature(address_sanitizer). The nested #if keeps preprocessors without
// __has_feature from parsing its call.
#if defined(__SANITIZE_ADDRESS__)
#define PTRAIN_ALLOC_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PTRAIN_ALLOC_ASAN 1
#endif
#endif
#if defined(PTRAIN_ALLOC_ASAN)
#include <sanitizer/asan_interface.h>
#endif

namespace ptrain::cuda {

namespace {

constexpr size_t kMinBlockSize = 512;             // every size is rounded up to this
constexpr size_t kSmallSize = size_t{1} << 20;    // requests <= 1 MiB use the small pool
constexpr size_t kSmallBuffer = size_t{2} << 20;  // segment size of the small pool
constexpr size_t kRoundLarge = size_t{2} << 20;   // large segments: request rounded to 2 MiB
constexpr size_t kMaxRequest = size_t{1} << 50;   // 1 PiB: larger is a bug (or an overflow)

size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

std::string human_bytes(size_t b) {
  const double x = static_cast<double>(b);
  if (b < (size_t{1} << 10)) return fmt::format("{} B", b);
  if (b < (size_t{1} << 20)) return fmt::format("{:.2f} KiB", x / 1024.0);
  if (b < (size_t{1} << 30)) return fmt::format("{:.2f} MiB", x / (1024.0 * 1024.0));
  return fmt::format("{:.2f} GiB", x / (1024.0 * 1024.0 * 1024.0));
}

enum class State { Live, Pending, Free };

struct Block {
  char* ptr = nullptr;
  size_t size = 0;              // multiple of kMinBlockSize
  StreamId stream = nullptr;    // the stream it was allocated on; its pool
  bool small = false;           // small pool (2 MiB segments) or large pool
  State state = State::Free;
  size_t requested = 0;         // bytes asked by the caller (Live only)
  Block* prev = nullptr;        // neighbours in the same segment, in address order
  Block* next = nullptr;
  std::vector<StreamId> stream_uses;  // other streams named by record_stream (Live only)
  int pending_events = 0;             // events still to complete (Pending only)
};

/// Orders free blocks by (stream, size, address): the best fit on a stream is a lower_bound.
struct BlockLess {
  bool operator()(const Block* a, const Block* b) const {
    const auto sa = reinterpret_cast<uintptr_t>(a->stream), sb = reinterpret_cast<uintptr_t>(b->stream);
    if (sa != sb) return sa < sb;
    if (a->size != b->size) return a->size < b->size;
    return reinterpret_cast<uintptr_t>(a->ptr) < reinterpret_cast<uintptr_t>(b->ptr);
  }
};

using Pool = std::set<Block*, BlockLess>;

}  // namespace

std::string AllocatorStats::str() const {
  return fmt::format(
      "allocated {} (peak {}), reserved {} (peak {}), cached free {} (largest block {}, fragmentation "
      "{:.1f}%), pending free {}, {} allocs ({} cache hits), {} device allocs, {} device frees, {} OOMs",
      human_bytes(allocated), human_bytes(peak_allocated), human_bytes(reserved), human_bytes(peak_reserved),
      human_bytes(cached_free), human_bytes(largest_free_block), 100.0 * fragmentation, human_bytes(pending_free),
      alloc_calls, cache_hits, device_allocs, device_frees, num_ooms);
}

void DeviceBacking::set_poison(void* p, size_t bytes, bool poisoned, StreamId) {
#if defined(PTRAIN_ALLOC_ASAN)
  if (poisoned)
    ASAN_POISON_MEMORY_REGION(p, bytes);
  else
    ASAN_UNPOISON_MEMORY_REGION(p, bytes);
#else
  (void)p, (void)bytes, (void)poisoned;
#endif
}

struct CachingAllocator::Impl {
  DeviceBacking& backing;
  Options opt;
  bool poison = false;  // ASan build and host-addressable backing

  mutable std::mutex mu;
  Pool small_pool, large_pool;
  std::map<uintptr_t, Block*> segments;       // base address -> head block
  std::unordered_map<void*, Block*> live;     // lookup only
  std::vector<std::pair<EventId, Block*>> pending;  // in the order the events were recorded

  AllocatorStats st;  // counters and byte totals; largest_free_block/fragmentation computed in stats()

  Impl(DeviceBacking& b, Options o) : backing(b), opt(o) {
#if defined(PTRAIN_ALLOC_ASAN)
    poison = backing.host_addressable();
#endif
  }

  // ---- AddressSanitizer ----
  void poison_range(const char* p, size_t n, StreamId s) const {
    if (poison && n > 0) backing.set_poison(const_cast<char*>(p), n, true, s);
  }
  void unpoison_range(const char* p, size_t n, StreamId s) const {
    if (poison && n > 0) backing.set_poison(const_cast<char*>(p), n, false, s);
  }

  // ---- pools ----
  Pool& pool_of(const Block* b) { return b->small ? small_pool : large_pool; }
  void pool_insert(Block* b) {
    pool_of(b).insert(b);
    st.cached_free += b->size;
  }
  void pool_erase(Block* b) {
    pool_of(b).erase(b);
    st.cached_free -= b->size;
  }

  /// Smallest free block of `pool` on `stream` with size >= `size` (lowest address on ties).
  static Block* best_fit(Pool& pool, StreamId stream, size_t size) {
    Block key;
    key.stream = stream;
    key.size = size;
    auto it = pool.lower_bound(&key);
    if (it == pool.end() || (*it)->stream != stream) return nullptr;
    return *it;
  }

  /// Block b (Live or Pending) becomes Free: merged with Free neighbours, put in its pool, poisoned.
  void free_block(Block* b) {
    if (b->state == State::Pending) st.pending_free -= b->size;
    b->state = State::Free;
    b->requested = 0;
    b->stream_uses.clear();
    b->pending_events = 0;
    if (b->prev != nullptr && b->prev->state == State::Free) {  // keep the lower block: heads survive
      Block* p = b->prev;
      pool_erase(p);
      p->size += b->size;
      p->next = b->next;
      if (b->next != nullptr) b->next->prev = p;
      delete b;
      b = p;
    }
    if (b->next != nullptr && b->next->state == State::Free) {
      Block* n = b->next;
      pool_erase(n);
      b->size += n->size;
      b->next = n->next;
      if (n->next != nullptr) n->next->prev = b;
      delete n;
    }
    pool_insert(b);
    poison_range(b->ptr, b->size, b->stream);
  }

  /// Completes the pending frees whose events are all done (queries only, never blocks).
  void process_events() {
    size_t keep = 0;
    for (size_t i = 0; i < pending.size(); ++i) {
      auto [e, b] = pending[i];
      if (backing.event_done(e)) {
        backing.destroy_event(e);
        if (--b->pending_events == 0) free_block(b);
      } else {
        pending[keep++] = pending[i];
      }
    }
    pending.resize(keep);
  }

  /// After synchronize_device() every event is complete: finish all pending frees.
  void complete_events_after_sync() {
    for (auto [e, b] : pending) {
      backing.destroy_event(e);
      if (--b->pending_events == 0) free_block(b);
    }
    pending.clear();
  }

  /// raw_free of a whole segment whose single block b is Free (and already out of its pool).
  void free_segment(Block* b) {
    segments.erase(reinterpret_cast<uintptr_t>(b->ptr));
    unpoison_range(b->ptr, b->size, b->stream);
    backing.raw_free(b->ptr);
    st.reserved -= b->size;
    ++st.device_frees;
    delete b;
  }

  /// Synchronizes the device, completes every pending free, and frees every fully free segment.
  void release_cached() {
    backing.synchronize_device();
    complete_events_after_sync();
    for (Pool* pool : {&small_pool, &large_pool}) {
      for (auto it = pool->begin(); it != pool->end();) {
        Block* b = *it;
        if (b->prev == nullptr && b->next == nullptr) {
          it = pool->erase(it);
          st.cached_free -= b->size;
          free_segment(b);
        } else {
          ++it;
        }
      }
    }
  }

  void fill_fragmentation(AllocatorStats& s) const {
    s.largest_free_block = 0;
    for (const Pool* pool : {&small_pool, &large_pool})
      for (const Block* b : *pool) s.largest_free_block = std::max(s.largest_free_block, b->size);
    s.fragmentation = s.cached_free == 0 ? 0.0
                                         : 1.0 - static_cast<double>(s.largest_free_block) /
                                                     static_cast<double>(s.cached_free);
  }

  AllocatorStats stats_locked() const {
    AllocatorStats s = st;
    fill_fragmentation(s);
    return s;
  }

  /// A new segment of `seg_size` bytes as one Free-state block (not in a pool); on failure
  /// releases the cache and retries once, then throws the out-of-memory error.
  Block* new_segment(size_t seg_size, StreamId stream, bool small, size_t requested) {
    void* p = backing.raw_alloc(seg_size);
    if (p == nullptr) {
      release_cached();
      p = backing.raw_alloc(seg_size);
    }
    if (p == nullptr) {
      ++st.num_ooms;
      const AllocatorStats s = stats_locked();
      PT_CHECK(p != nullptr,
               "CUDA out of memory: tried to allocate {} (a new segment of {}); device total {}, "
               "allocated {} (peak {}), reserved {} (peak {}), largest free block {}, fragmentation {:.1f}%\n"
               "HINT: reduce train.micro_batch, set train.recompute: selective|full, or raise parallel.pp",
               human_bytes(requested), human_bytes(seg_size), human_bytes(backing.device_total_memory()),
               human_bytes(s.allocated), human_bytes(s.peak_allocated), human_bytes(s.reserved),
               human_bytes(s.peak_reserved), human_bytes(s.largest_free_block), 100.0 * s.fragmentation);
    }
    PT_CHECK(reinterpret_cast<uintptr_t>(p) % kMinBlockSize == 0,
             "DeviceBacking::raw_alloc returned {} which is not {}-byte aligned\n"
             "HINT: the backing must return allocations aligned like cudaMalloc's",
             p, kMinBlockSize);
    auto* b = new Block;
    b->ptr = static_cast<char*>(p);
    b->size = seg_size;
    b->stream = stream;
    b->small = small;
    segments.emplace(reinterpret_cast<uintptr_t>(p), b);
    ++st.device_allocs;
    st.reserved += seg_size;
    st.peak_reserved = std::max(st.peak_reserved, st.reserved);
    poison_range(b->ptr, b->size, stream);
    return b;
  }

  /// Splits b (out of its pool) to `size` bytes when the remainder is worth keeping.
  void maybe_split(Block* b, size_t size) {
    const size_t rest = b->size - size;
    const bool split = b->small ? rest >= kMinBlockSize : rest > kSmallSize;
    if (!split) return;
    auto* r = new Block;
    r->ptr = b->ptr + size;
    r->size = rest;
    r->stream = b->stream;
    r->small = b->small;
    r->prev = b;
    r->next = b->next;
    if (b->next != nullptr) b->next->prev = r;
    b->next = r;
    b->size = size;
    pool_insert(r);  // its neighbours are not Free: b is about to be Live, b->next was not Free
  }

  Block* find_live(void* p, const char* what) const {
    auto it = live.find(p);
    PT_CHECK(it != live.end(),
             "CachingAllocator::{}({}): not a live block of this allocator\n"
             "HINT: the pointer was freed already, or did not come from this allocator's allocate()",
             what, p);
    return it->second;
  }

  ~Impl() {
    backing.synchronize_device();
    for (auto [e, b] : pending) backing.destroy_event(e);
    pending.clear();
    for (auto [base, head] : segments) {
      size_t seg_size = 0;
      for (Block* b = head; b != nullptr;) {
        Block* n = b->next;
        seg_size += b->size;
        if (b != head) delete b;
        b = n;
      }
      unpoison_range(head->ptr, seg_size, head->stream);
      backing.raw_free(head->ptr);
      delete head;
    }
    segments.clear();
  }
};

CachingAllocator::CachingAllocator(DeviceBacking& backing) : CachingAllocator(backing, Options{}) {}

CachingAllocator::CachingAllocator(DeviceBacking& backing, Options opt)
    : impl_(std::make_unique<Impl>(backing, opt)) {}

CachingAllocator::~CachingAllocator() = default;

void* CachingAllocator::allocate(size_t bytes, StreamId stream) {
  if (bytes == 0) return nullptr;
  PT_CHECK(bytes <= kMaxRequest,
           "CachingAllocator::allocate: {} bytes requested\nHINT: the size was probably computed with an "
           "overflow or a negative dimension",
           bytes);
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  ++m.st.alloc_calls;
  m.process_events();

  const size_t size = round_up(bytes, kMinBlockSize);
  const bool small = size <= kSmallSize;
  Block* b = Impl::best_fit(small ? m.small_pool : m.large_pool, stream, size);
  if (b != nullptr) {
    ++m.st.cache_hits;
    m.pool_erase(b);
  } else {
    b = m.new_segment(small ? kSmallBuffer : round_up(size, kRoundLarge), stream, small, bytes);
  }
  m.maybe_split(b, size);

  b->state = State::Live;
  b->requested = bytes;
  m.live.emplace(b->ptr, b);
  m.st.allocated += bytes;
  m.st.peak_allocated = std::max(m.st.peak_allocated, m.st.allocated);

  m.unpoison_range(b->ptr, bytes, stream);  // the slack [bytes, size) stays poisoned
  if (m.opt.fill_nan_on_alloc) m.backing.fill_nan(b->ptr, bytes, stream);
  return b->ptr;
}

void CachingAllocator::deallocate(void* p) {
  if (p == nullptr) return;
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  Block* b = m.find_live(p, "deallocate");
  m.live.erase(p);
  m.st.allocated -= b->requested;
  if (b->stream_uses.empty()) {
    m.free_block(b);
    return;
  }
  // Used on other streams: reusable once the work queued on them up to now is done.
  b->state = State::Pending;
  b->requested = 0;
  m.st.pending_free += b->size;
  for (StreamId s : b->stream_uses) {
    m.pending.emplace_back(m.backing.record_event(s), b);
    ++b->pending_events;
  }
  b->stream_uses.clear();
}

void CachingAllocator::record_stream(void* p, StreamId s) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  Block* b = m.find_live(p, "record_stream");
  if (s == b->stream) return;
  if (std::find(b->stream_uses.begin(), b->stream_uses.end(), s) == b->stream_uses.end())
    b->stream_uses.push_back(s);
}

void CachingAllocator::empty_cache() {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  m.release_cached();
}

AllocatorStats CachingAllocator::stats() const {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  return m.stats_locked();
}

void CachingAllocator::reset_peak() {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  m.st.peak_allocated = m.st.allocated;
  m.st.peak_reserved = m.st.reserved;
}

size_t CachingAllocator::block_size(void* p) const {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  return m.find_live(p, "block_size")->size;
}

}  // namespace ptrain::cuda
