// tests/cuda/test_caching_allocator.cpp — the device caching allocator over fake backings.
//
// FakeBacking hands out fake (never dereferenced) 2 MiB-aligned addresses up to a memory
// limit and keeps events incomplete until the test completes them, so stream awareness,
// OOM recovery and the statistics are tested without a GPU. HostBacking returns real host
// memory (host_addressable): it checks the NaN fill and, under AddressSanitizer, that the
// slack of a block and cached free blocks are poisoned and that nothing poisoned reaches
// raw_free. Every test checks the invariant reserved == live block sizes + cached + pending.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "core/cuda/caching_allocator.h"
#include "core/error.h"

#if defined(__SANITIZE_ADDRESS__)
#define PTRAIN_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PTRAIN_TEST_ASAN 1
#endif
#endif
#if defined(PTRAIN_TEST_ASAN)
#include <sanitizer/asan_interface.h>
#endif

namespace {

using ptrain::cuda::AllocatorStats;
using ptrain::cuda::CachingAllocator;
using ptrain::cuda::DeviceBacking;
using ptrain::cuda::EventId;
using ptrain::cuda::StreamId;

constexpr size_t KiB = size_t{1} << 10;
constexpr size_t MiB = size_t{1} << 20;

StreamId stream(int i) { return reinterpret_cast<StreamId>(static_cast<uintptr_t>(0x1000 * i)); }
const StreamId kA = stream(1);
const StreamId kB = stream(2);

/// Fake device: deterministic bump addresses, a byte limit, events completed by the test.
class FakeBacking : public DeviceBacking {
 public:
  explicit FakeBacking(size_t limit = size_t{64} << 30) : limit_(limit) {}
  ~FakeBacking() override {
    EXPECT_TRUE(live_.empty()) << live_.size() << " raw allocations leaked";
    EXPECT_EQ(live_events(), 0) << "events leaked";
  }

  void* raw_alloc(size_t bytes) override {
    ++raw_alloc_calls;
    if (used_ + bytes > limit_) return nullptr;
    void* p = reinterpret_cast<void*>(next_);
    next_ += (bytes + 2 * MiB - 1) / (2 * MiB) * (2 * MiB) + 2 * MiB;  // a gap between segments
    used_ += bytes;
    live_[p] = bytes;
    return p;
  }
  void raw_free(void* p) override {
    auto it = live_.find(p);
    ASSERT_NE(it, live_.end()) << "raw_free of " << p << " which raw_alloc did not return";
    EXPECT_GE(syncs, 1) << "raw_free before any synchronize_device";
    used_ -= it->second;
    live_.erase(it);
  }
  size_t device_total_memory() const override { return limit_; }
  EventId record_event(StreamId s) override {
    events_.push_back({s, false, true});
    return reinterpret_cast<EventId>(events_.size());  // 1-based index
  }
  bool event_done(EventId e) override { return ev(e).done; }
  void destroy_event(EventId e) override {
    EXPECT_TRUE(ev(e).alive) << "event destroyed twice";
    ev(e).alive = false;
  }
  void synchronize_device() override {
    ++syncs;
    for (auto& e : events_) e.done = true;
  }
  void fill_nan(void* p, size_t bytes, StreamId) override { fills.push_back({p, bytes}); }
  bool host_addressable() const override { return false; }

  /// Completes every event recorded on stream s so far.
  void complete_stream(StreamId s) {
    for (auto& e : events_)
      if (e.stream == s) e.done = true;
  }
  int live_events() const {
    int n = 0;
    for (const auto& e : events_) n += e.alive ? 1 : 0;
    return n;
  }
  size_t used() const { return used_; }
  size_t num_live() const { return live_.size(); }
  int events_recorded_on(StreamId s) const {
    int n = 0;
    for (const auto& e : events_) n += e.stream == s ? 1 : 0;
    return n;
  }

  int syncs = 0;
  int raw_alloc_calls = 0;
  std::vector<std::pair<void*, size_t>> fills;

 private:
  struct Event {
    StreamId stream;
    bool done, alive;
  };
  Event& ev(EventId e) {
    const auto i = reinterpret_cast<uintptr_t>(e);
    EXPECT_TRUE(i >= 1 && i <= events_.size()) << "unknown event";
    return events_.at(i - 1);
  }
  size_t limit_, used_ = 0;
  uintptr_t next_ = uintptr_t{1} << 40;
  std::map<void*, size_t> live_;
  std::vector<Event> events_;
};

/// Host memory as device memory (the emulated device): real bytes, events always done.
class HostBacking : public DeviceBacking {
 public:
  explicit HostBacking(bool addressable = true) : addressable_(addressable) {}
  ~HostBacking() override { EXPECT_TRUE(live_.empty()) << "raw allocations leaked"; }
  void* raw_alloc(size_t bytes) override {
    void* p = std::aligned_alloc(4096, bytes);
    live_[p] = bytes;
    return p;
  }
  void raw_free(void* p) override {
    auto it = live_.find(p);
    ASSERT_NE(it, live_.end());
#if defined(PTRAIN_TEST_ASAN)
    // The allocator must unpoison a segment before it returns it.
    EXPECT_EQ(__asan_region_is_poisoned(p, it->second), nullptr) << "segment still poisoned at raw_free";
#endif
    live_.erase(it);
    std::free(p);
  }
  size_t device_total_memory() const override { return size_t{1} << 30; }
  EventId record_event(StreamId) override { return reinterpret_cast<EventId>(1); }
  bool event_done(EventId) override { return true; }
  void destroy_event(EventId) override {}
  void synchronize_device() override {}
  void fill_nan(void* p, size_t bytes, StreamId) override { std::memset(p, 0xFF, bytes); }
  bool host_addressable() const override { return addressable_; }

 private:
  bool addressable_;
  std::map<void*, size_t> live_;
};

/// Live blocks as the test sees them, to check the byte-accounting invariants.
struct Tracker {
  CachingAllocator& a;
  std::map<void*, size_t> live;  // ptr -> requested

  void* alloc(size_t n, StreamId s) {
    void* p = a.allocate(n, s);
    EXPECT_EQ(live.count(p), 0u) << "address handed out twice";
    live[p] = n;
    return p;
  }
  void free(void* p) {
    live.erase(p);
    a.deallocate(p);
  }
  void check() const {
    const AllocatorStats s = a.stats();
    size_t req = 0, sizes = 0;
    for (auto [p, n] : live) {
      req += n;
      sizes += a.block_size(p);
      EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 512, 0u);
      EXPECT_GE(a.block_size(p), n);
    }
    EXPECT_EQ(s.allocated, req);
    EXPECT_EQ(s.reserved, sizes + s.cached_free + s.pending_free) << s.str();
    EXPECT_GE(s.peak_allocated, s.allocated);
    EXPECT_GE(s.peak_reserved, s.reserved);
    EXPECT_LE(s.largest_free_block, s.cached_free);
  }
};

TEST(CachingAllocator, RoundingAndStats) {
  FakeBacking fake;
  CachingAllocator a(fake);
  Tracker t{a, {}};
  EXPECT_EQ(a.allocate(0, kA), nullptr);
  void* p1 = t.alloc(1, kA);
  EXPECT_EQ(a.block_size(p1), 512u);
  void* p2 = t.alloc(512, kA);
  EXPECT_EQ(a.block_size(p2), 512u);
  void* p3 = t.alloc(513, kA);
  EXPECT_EQ(a.block_size(p3), 1024u);
  // Three small blocks carved from one 2 MiB segment, back to back.
  EXPECT_EQ(static_cast<char*>(p2) - static_cast<char*>(p1), 512);
  EXPECT_EQ(static_cast<char*>(p3) - static_cast<char*>(p2), 512);
  AllocatorStats s = a.stats();
  EXPECT_EQ(s.allocated, 1u + 512u + 513u);
  EXPECT_EQ(s.reserved, 2 * MiB);
  EXPECT_EQ(s.cached_free, 2 * MiB - 2048);
  EXPECT_EQ(s.device_allocs, 1);
  EXPECT_EQ(s.alloc_calls, 3);
  EXPECT_EQ(s.cache_hits, 2);  // the 2nd and 3rd came from the first segment's remainder
  t.check();

  // Exactly 1 MiB is small: from the same segment.
  void* p4 = t.alloc(1 * MiB, kA);
  EXPECT_EQ(a.block_size(p4), 1 * MiB);
  EXPECT_EQ(a.stats().device_allocs, 1);
  // 1 MiB + 1 is large: its own 2 MiB segment; the 1 MiB - 512 remainder is too small to split.
  void* p5 = t.alloc(1 * MiB + 1, kA);
  EXPECT_EQ(a.block_size(p5), 2 * MiB);
  EXPECT_EQ(a.stats().reserved, 4 * MiB);
  // 10.5 MiB: a 12 MiB segment, 1.5 MiB remainder (> 1 MiB) split off and cached.
  void* p6 = t.alloc(10 * MiB + 512 * KiB, kA);
  EXPECT_EQ(a.block_size(p6), 10 * MiB + 512 * KiB);
  EXPECT_EQ(a.stats().reserved, 16 * MiB);
  // 11 MiB: a 12 MiB segment, the 1 MiB remainder is not split (needs > 1 MiB).
  void* p7 = t.alloc(11 * MiB, kA);
  EXPECT_EQ(a.block_size(p7), 12 * MiB);
  s = a.stats();
  EXPECT_EQ(s.reserved, 28 * MiB);
  EXPECT_EQ(s.device_allocs, 4);
  EXPECT_EQ(s.largest_free_block, 1 * MiB + 512 * KiB);
  t.check();
  EXPECT_NE(s.str().find("MiB"), std::string::npos) << s.str();
  for (void* p : {p1, p2, p3, p4, p5, p6, p7}) t.free(p);
  t.check();
  EXPECT_EQ(a.stats().allocated, 0u);
}

TEST(CachingAllocator, SmallAndLargePoolsAreSeparate) {
  FakeBacking fake;
  CachingAllocator a(fake);
  void* big = a.allocate(2 * MiB, kA);
  a.deallocate(big);
  void* small = a.allocate(1000, kA);  // the cached 2 MiB large block does not serve it
  EXPECT_EQ(a.stats().device_allocs, 2);
  void* big2 = a.allocate(2 * MiB, kA);  // but a large request reuses it
  EXPECT_EQ(big2, big);
  EXPECT_EQ(a.stats().device_allocs, 2);
  a.deallocate(small);
  a.deallocate(big2);
}

TEST(CachingAllocator, ReuseHitsTheCache) {
  FakeBacking fake;
  CachingAllocator a(fake);
  Tracker t{a, {}};
  const std::vector<size_t> sizes = {100, 4 * KiB, 300 * KiB, 1 * MiB, 3 * MiB, 40 * MiB};
  std::vector<void*> first;
  for (size_t n : sizes) first.push_back(t.alloc(n, kA));
  for (void* p : first) t.free(p);
  const AllocatorStats s0 = a.stats();
  for (int it = 0; it < 100; ++it) {
    std::vector<void*> ps;
    for (size_t n : sizes) ps.push_back(t.alloc(n, kA));
    EXPECT_EQ(ps, first) << "iteration " << it;  // same sizes in the same order: same blocks
    t.check();
    for (void* p : ps) t.free(p);
  }
  const AllocatorStats s1 = a.stats();
  EXPECT_EQ(s1.device_allocs, s0.device_allocs);
  EXPECT_EQ(s1.device_frees, 0);
  EXPECT_EQ(s1.cache_hits - s0.cache_hits, 100 * static_cast<int64_t>(sizes.size()));
  EXPECT_EQ(s1.reserved, s0.reserved);
}

TEST(CachingAllocator, SplitCoalesceAndFragmentation) {
  FakeBacking fake;
  CachingAllocator a(fake);
  Tracker t{a, {}};
  // Four 512 KiB blocks fill one 2 MiB small segment exactly.
  std::vector<void*> q;
  for (int i = 0; i < 4; ++i) q.push_back(t.alloc(512 * KiB, kA));
  for (int i = 1; i < 4; ++i) EXPECT_EQ(static_cast<char*>(q[i]) - static_cast<char*>(q[i - 1]), 512 * 1024);
  AllocatorStats s = a.stats();
  EXPECT_EQ(s.device_allocs, 1);
  EXPECT_EQ(s.cached_free, 0u);
  EXPECT_EQ(s.fragmentation, 0.0);
  // Free blocks 1 and 3: two separate 512 KiB holes -> fragmentation 1 - 512/1024 = 0.5.
  t.free(q[1]);
  t.free(q[3]);
  s = a.stats();
  EXPECT_EQ(s.cached_free, 1 * MiB);
  EXPECT_EQ(s.largest_free_block, 512 * KiB);
  EXPECT_DOUBLE_EQ(s.fragmentation, 0.5);
  t.check();
  // Free block 2: 1, 2, 3 coalesce into one 1.5 MiB block.
  t.free(q[2]);
  s = a.stats();
  EXPECT_EQ(s.largest_free_block, 1 * MiB + 512 * KiB);
  EXPECT_DOUBLE_EQ(s.fragmentation, 0.0);
  // Free block 0: the whole segment is one free block again.
  t.free(q[0]);
  s = a.stats();
  EXPECT_EQ(s.largest_free_block, 2 * MiB);
  EXPECT_EQ(s.cached_free, 2 * MiB);
  EXPECT_EQ(s.fragmentation, 0.0);
  // Two 1 MiB requests split it again without a device allocation.
  void* h0 = t.alloc(1 * MiB, kA);
  void* h1 = t.alloc(1 * MiB, kA);
  EXPECT_EQ(h0, q[0]);
  EXPECT_EQ(static_cast<char*>(h1) - static_cast<char*>(h0), 1024 * 1024);
  EXPECT_EQ(a.stats().device_allocs, 1);
  t.check();
  t.free(h0);
  t.free(h1);
}

TEST(CachingAllocator, FragmentationAcrossSegments) {
  FakeBacking fake;
  CachingAllocator a(fake);
  Tracker t{a, {}};
  // Four large segments of 4, 4, 2 and 2 MiB (one block each); the 2nd and 3rd are freed.
  void* l0 = t.alloc(4 * MiB, kA);
  void* l1 = t.alloc(4 * MiB, kA);
  void* m0 = t.alloc(2 * MiB, kA);
  void* m1 = t.alloc(2 * MiB, kA);
  t.free(l1);
  t.free(m0);
  AllocatorStats s = a.stats();
  EXPECT_EQ(s.cached_free, 6 * MiB);
  EXPECT_EQ(s.largest_free_block, 4 * MiB);
  EXPECT_DOUBLE_EQ(s.fragmentation, 1.0 - 4.0 / 6.0);
  t.check();
  // Best fit: a 2 MiB request takes the 2 MiB hole, not the 4 MiB one.
  void* m2 = t.alloc(2 * MiB, kA);
  EXPECT_EQ(m2, m0);
  // A 1.5 MiB request now takes the 4 MiB block and splits it (remainder 2.5 MiB > 1 MiB).
  void* m3 = t.alloc(1 * MiB + 512 * KiB, kA);
  EXPECT_EQ(m3, l1);
  EXPECT_EQ(a.block_size(m3), 1 * MiB + 512 * KiB);
  EXPECT_EQ(a.stats().largest_free_block, 2 * MiB + 512 * KiB);
  t.check();
  for (void* p : {l0, m1, m2, m3}) t.free(p);
}

TEST(CachingAllocator, FreedBlockIsReusedOnlyOnItsStream) {
  FakeBacking fake;
  CachingAllocator a(fake);
  void* p = a.allocate(4 * MiB, kA);
  a.deallocate(p);
  void* q = a.allocate(4 * MiB, kB);
  EXPECT_NE(q, p);
  EXPECT_EQ(a.stats().device_allocs, 2);
  void* r = a.allocate(4 * MiB, kA);
  EXPECT_EQ(r, p);
  void* s = a.allocate(100, kA);
  void* u = a.allocate(100, kB);  // small pool: separate segments per stream as well
  EXPECT_EQ(a.stats().device_allocs, 4);
  EXPECT_EQ(fake.live_events(), 0);  // no record_stream: no events
  for (void* x : {q, r, s, u}) a.deallocate(x);
}

TEST(CachingAllocator, RecordStreamDelaysReuseUntilEventsComplete) {
  FakeBacking fake;
  CachingAllocator a(fake);
  Tracker t{a, {}};
  void* p = t.alloc(4 * MiB, kA);
  a.record_stream(p, kA);  // its own stream: nothing to wait for
  a.record_stream(p, kB);
  a.record_stream(p, kB);  // named twice: one event
  const StreamId kC = stream(3);
  a.record_stream(p, kC);
  t.free(p);
  EXPECT_EQ(fake.events_recorded_on(kA), 0);
  EXPECT_EQ(fake.events_recorded_on(kB), 1);
  EXPECT_EQ(fake.events_recorded_on(kC), 1);
  AllocatorStats s = a.stats();
  EXPECT_EQ(s.pending_free, 4 * MiB);
  EXPECT_EQ(s.cached_free, 0u);
  t.check();

  void* q = t.alloc(4 * MiB, kA);  // events pending: not reused
  EXPECT_NE(q, p);
  fake.complete_stream(kB);
  void* r = t.alloc(4 * MiB, kA);  // kC still pending
  EXPECT_NE(r, p);
  EXPECT_EQ(fake.live_events(), 1);
  fake.complete_stream(kC);
  void* w = t.alloc(4 * MiB, kA);  // all done: the block is back in stream A's pool
  EXPECT_EQ(w, p);
  EXPECT_EQ(fake.live_events(), 0);
  s = a.stats();
  EXPECT_EQ(s.device_allocs, 3);
  EXPECT_EQ(s.pending_free, 0u);
  EXPECT_EQ(fake.syncs, 0);  // never blocked
  t.check();
  // Reuse stays on stream A: a request on B does not get it after a free either.
  t.free(w);
  void* x = t.alloc(4 * MiB, kB);
  EXPECT_NE(x, w);
  for (void* y : {q, r, x}) t.free(y);
  t.check();
}

TEST(CachingAllocator, OomReleasesCacheAndRetries) {
  FakeBacking fake(64 * MiB);
  CachingAllocator a(fake);
  void* p = a.allocate(40 * MiB, kA);
  a.deallocate(p);  // cached on stream A
  void* q = a.allocate(40 * MiB, kB);  // 80 MiB > 64 MiB: release A's segment, retry, succeed
  ASSERT_NE(q, nullptr);
  AllocatorStats s = a.stats();
  EXPECT_EQ(s.device_frees, 1);
  EXPECT_EQ(s.num_ooms, 0);
  EXPECT_EQ(s.reserved, 40 * MiB);
  EXPECT_EQ(fake.syncs, 1);
  EXPECT_EQ(fake.raw_alloc_calls, 3);
  a.deallocate(q);
}

TEST(CachingAllocator, OomCompletesPendingFreesBeforeRetrying) {
  FakeBacking fake(64 * MiB);
  CachingAllocator a(fake);
  void* p = a.allocate(40 * MiB, kA);
  a.record_stream(p, kB);
  a.deallocate(p);  // pending on an event of stream B that the fake leaves incomplete
  EXPECT_EQ(a.stats().pending_free, 40 * MiB);
  void* q = a.allocate(40 * MiB, kA);  // OOM -> synchronize -> the event is done -> released
  ASSERT_NE(q, nullptr);
  const AllocatorStats s = a.stats();
  EXPECT_EQ(s.pending_free, 0u);
  EXPECT_EQ(s.reserved, 40 * MiB);
  EXPECT_EQ(s.num_ooms, 0);
  EXPECT_EQ(fake.live_events(), 0);
  a.deallocate(q);
}

TEST(CachingAllocator, OomThrowsWithFiguresAndHint) {
  FakeBacking fake(64 * MiB);
  CachingAllocator a(fake);
  void* p = a.allocate(40 * MiB, kA);
  void* small = a.allocate(3 * KiB, kA);
  a.deallocate(small);  // a cached 2 MiB segment: released by the retry, not enough anyway
  std::string msg;
  try {
    a.allocate(30 * MiB, kA);
    ADD_FAILURE() << "allocate of 30 MiB on a 64 MiB device with 40 MiB live did not throw";
  } catch (const ptrain::Error& e) {
    msg = e.what();
  }
  EXPECT_NE(msg.find("out of memory"), std::string::npos) << msg;
  EXPECT_NE(msg.find("30.00 MiB"), std::string::npos) << msg;  // requested
  EXPECT_NE(msg.find("64.00 MiB"), std::string::npos) << msg;  // device total
  EXPECT_NE(msg.find("allocated 40.00 MiB"), std::string::npos) << msg;
  EXPECT_NE(msg.find("reserved 40.00 MiB (peak 42.00 MiB)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("largest free block"), std::string::npos) << msg;
  EXPECT_NE(msg.find("fragmentation"), std::string::npos) << msg;
  EXPECT_NE(msg.find("HINT"), std::string::npos) << msg;
  EXPECT_NE(msg.find("train.micro_batch"), std::string::npos) << msg;
  EXPECT_NE(msg.find("train.recompute"), std::string::npos) << msg;
  EXPECT_NE(msg.find("parallel.pp"), std::string::npos) << msg;
  AllocatorStats s = a.stats();
  EXPECT_EQ(s.num_ooms, 1);
  EXPECT_EQ(s.device_frees, 1);  // the cached small segment went back
  // Still usable: after freeing the 40 MiB block the request fits.
  a.deallocate(p);
  void* q = a.allocate(30 * MiB, kA);
  EXPECT_NE(q, nullptr);
  EXPECT_EQ(a.stats().num_ooms, 1);
  a.deallocate(q);
}

TEST(CachingAllocator, EmptyCacheReturnsEverythingWhenNothingIsLive) {
  FakeBacking fake;
  CachingAllocator a(fake);
  Tracker t{a, {}};
  std::vector<void*> ps;
  for (int i = 0; i < 6; ++i) {
    StreamId s = i % 2 ? kA : kB;
    ps.push_back(t.alloc(static_cast<size_t>(i + 1) * 700 * KiB, s));
    ps.push_back(t.alloc(static_cast<size_t>(i + 1) * 1000, s));
  }
  a.record_stream(ps[0], kA);  // one pending free: empty_cache synchronizes and completes it
  void* keep = t.alloc(5 * MiB, kA);
  for (void* p : ps) t.free(p);
  a.empty_cache();
  AllocatorStats s = a.stats();
  EXPECT_EQ(s.reserved, 6 * MiB);  // the live block's segment stays
  t.check();
  t.free(keep);
  a.empty_cache();
  s = a.stats();
  EXPECT_EQ(s.reserved, 0u);
  EXPECT_EQ(s.cached_free, 0u);
  EXPECT_EQ(s.pending_free, 0u);
  EXPECT_EQ(s.device_frees, s.device_allocs);
  EXPECT_EQ(fake.num_live(), 0u);
  EXPECT_EQ(fake.live_events(), 0);
}

TEST(CachingAllocator, PeakTracking) {
  FakeBacking fake;
  CachingAllocator a(fake);
  void* p = a.allocate(3 * MiB, kA);
  void* q = a.allocate(5 * MiB, kA);
  a.deallocate(p);
  AllocatorStats s = a.stats();
  EXPECT_EQ(s.allocated, 5 * MiB);
  EXPECT_EQ(s.peak_allocated, 8 * MiB);
  EXPECT_EQ(s.reserved, 4 * MiB + 6 * MiB);
  EXPECT_EQ(s.peak_reserved, 10 * MiB);
  a.empty_cache();
  s = a.stats();
  EXPECT_EQ(s.reserved, 6 * MiB);
  EXPECT_EQ(s.peak_reserved, 10 * MiB);
  a.reset_peak();
  s = a.stats();
  EXPECT_EQ(s.peak_allocated, 5 * MiB);
  EXPECT_EQ(s.peak_reserved, 6 * MiB);
  void* r = a.allocate(1 * MiB, kA);
  EXPECT_EQ(a.stats().peak_allocated, 6 * MiB);
  a.deallocate(r);
  a.deallocate(q);
  EXPECT_EQ(a.stats().peak_allocated, 6 * MiB);
}

TEST(CachingAllocator, DeterministicAddresses) {
  auto run = [](std::vector<void*>& out) {
    FakeBacking fake;
    CachingAllocator a(fake);
    std::mt19937 rng(1234);
    std::vector<void*> live;
    for (int i = 0; i < 2000; ++i) {
      const unsigned r = rng() % 10;
      if (r < 6 || live.empty()) {
        size_t n = (rng() % 3 == 0) ? 1 + rng() % (24 * MiB) : 1 + rng() % (600 * KiB);
        StreamId s = stream(1 + static_cast<int>(rng() % 3));
        live.push_back(a.allocate(n, s));
        out.push_back(live.back());
        if (rng() % 4 == 0) a.record_stream(live.back(), stream(1 + static_cast<int>(rng() % 3)));
      } else {
        size_t k = rng() % live.size();
        a.deallocate(live[k]);
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(k));
      }
      if (i % 500 == 499) fake.synchronize_device();
    }
    for (void* p : live) a.deallocate(p);
  };
  std::vector<void*> x, y;
  run(x);
  run(y);
  EXPECT_EQ(x, y);
}

TEST(CachingAllocator, RandomOpsKeepInvariants) {
  FakeBacking fake(256 * MiB);
  CachingAllocator a(fake);
  Tracker t{a, {}};
  std::mt19937 rng(99);
  for (int i = 0; i < 3000; ++i) {
    const unsigned r = rng() % 20;
    if (r < 11 || t.live.empty()) {
      size_t n = (rng() % 4 == 0) ? 1 + rng() % (16 * MiB) : 1 + rng() % (1200 * KiB);
      try {
        void* p = t.alloc(n, stream(1 + static_cast<int>(rng() % 2)));
        if (rng() % 5 == 0) a.record_stream(p, stream(3));
      } catch (const ptrain::Error&) {
        // out of the 256 MiB: allowed, state must stay consistent
      }
    } else if (r < 19) {
      auto it = t.live.begin();
      std::advance(it, static_cast<std::ptrdiff_t>(rng() % t.live.size()));
      t.free(it->first);
    } else if (rng() % 2) {
      fake.complete_stream(stream(3));
    } else {
      a.empty_cache();
    }
    if (i % 100 == 0) t.check();
  }
  t.check();
  while (!t.live.empty()) t.free(t.live.begin()->first);
  a.empty_cache();
  EXPECT_EQ(a.stats().reserved, 0u);
}

TEST(CachingAllocator, MisuseThrows) {
  FakeBacking fake;
  CachingAllocator a(fake);
  void* p = a.allocate(100, kA);
  int x = 0;
  EXPECT_THROW(a.deallocate(&x), ptrain::Error);
  EXPECT_THROW(a.block_size(&x), ptrain::Error);
  EXPECT_THROW(a.record_stream(&x, kB), ptrain::Error);
  a.deallocate(p);
  try {
    a.deallocate(p);
    ADD_FAILURE() << "double free did not throw";
  } catch (const ptrain::Error& e) {
    EXPECT_NE(std::string(e.what()).find("HINT"), std::string::npos) << e.what();
  }
  a.deallocate(nullptr);  // ignored
  EXPECT_THROW(a.allocate(~size_t{0} - 100, kA), ptrain::Error);
}

TEST(CachingAllocator, DestructorFreesEverySegment) {
  FakeBacking fake;  // its destructor checks for leaked segments and events
  {
    CachingAllocator a(fake);
    a.allocate(100, kA);       // live at destruction
    a.allocate(5 * MiB, kB);   // live
    void* p = a.allocate(3 * MiB, kA);
    a.record_stream(p, kB);
    a.deallocate(p);           // pending
    void* q = a.allocate(200, kB);
    a.deallocate(q);           // cached
  }
  EXPECT_EQ(fake.num_live(), 0u);
  EXPECT_EQ(fake.live_events(), 0);
}

TEST(CachingAllocator, FillNanOnAllocate) {
  {
    FakeBacking fake;
    CachingAllocator a(fake);  // off by default
    a.deallocate(a.allocate(100, kA));
    EXPECT_TRUE(fake.fills.empty());
  }
  HostBacking host;
  CachingAllocator::Options opt;
  opt.fill_nan_on_alloc = true;
  CachingAllocator a(host, opt);
  auto* f = static_cast<float*>(a.allocate(1000 * sizeof(float), kA));
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(std::isnan(f[i])) << i;
  for (int i = 0; i < 1000; ++i) f[i] = 1.0f;
  a.deallocate(f);
  auto* g = static_cast<float*>(a.allocate(1000 * sizeof(float), kA));  // the same block, refilled
  EXPECT_EQ(g, f);
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(std::isnan(g[i])) << i;
  a.deallocate(g);
}

#if defined(PTRAIN_TEST_ASAN)
TEST(CachingAllocatorDeathTest, WriteIntoSlackAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  HostBacking host;
  CachingAllocator a(host);
  auto* p = static_cast<volatile char*>(a.allocate(1000, kA));  // block of 1024 bytes
  p[0] = 1;
  p[999] = 1;  // the last requested byte is fine
  EXPECT_DEATH(p[1000] = 1, "AddressSanitizer");
  EXPECT_DEATH(p[1023] = 1, "AddressSanitizer");
  a.deallocate(const_cast<char*>(p));
}

TEST(CachingAllocatorDeathTest, UseOfCachedFreeBlockAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  HostBacking host;
  CachingAllocator a(host);
  auto* p = static_cast<volatile char*>(a.allocate(4096, kA));
  auto* next = static_cast<volatile char*>(a.allocate(4096, kA));
  a.deallocate(const_cast<char*>(p));
  EXPECT_DEATH(p[0] = 1, "AddressSanitizer");  // freed, cached
  EXPECT_DEATH((void)next[5000], "AddressSanitizer");  // the never-used rest of the segment
  // Handed out again: addressable.
  auto* q = static_cast<volatile char*>(a.allocate(4096, kA));
  ASSERT_EQ(q, p);
  q[0] = 1;
  q[4095] = 1;
  a.deallocate(const_cast<char*>(q));
  a.deallocate(const_cast<char*>(next));
  a.empty_cache();  // HostBacking::raw_free checks the segment is unpoisoned
}
#else
TEST(CachingAllocatorDeathTest, WriteIntoSlackAborts) {
  GTEST_SKIP() << "built without AddressSanitizer: poisoning is compiled out";
}
TEST(CachingAllocatorDeathTest, UseOfCachedFreeBlockAborts) {
  GTEST_SKIP() << "built without AddressSanitizer: poisoning is compiled out";
}
#endif

TEST(CachingAllocator, NoPoisoningWhenNotHostAddressable) {
#if defined(PTRAIN_TEST_ASAN)
  // Real host memory, but the backing says device memory is not host-addressable (a real
  // GPU): the allocator must not touch ASan's shadow for it.
  HostBacking host(/*addressable=*/false);
  CachingAllocator a(host);
  auto* p = static_cast<char*>(a.allocate(1000, kA));
  EXPECT_EQ(__asan_region_is_poisoned(p, 2 * MiB), nullptr);  // slack and rest of the segment
  a.deallocate(p);
  EXPECT_EQ(__asan_region_is_poisoned(p, 2 * MiB), nullptr);  // cached free block
#else
  GTEST_SKIP() << "built without AddressSanitizer: poisoning is compiled out";
#endif
}

#if defined(PTRAIN_TEST_ASAN)
TEST(CachingAllocator, PoisonStateFollowsBlocks) {
  HostBacking host;
  CachingAllocator a(host);
  auto* p = static_cast<char*>(a.allocate(1000, kA));
  EXPECT_EQ(__asan_region_is_poisoned(p, 1000), nullptr);
  EXPECT_EQ(__asan_region_is_poisoned(p, 1024), p + 1000);  // slack
  auto* q = static_cast<char*>(a.allocate(3000, kA));       // split from the rest
  EXPECT_EQ(q, p + 1024);
  EXPECT_EQ(__asan_region_is_poisoned(q, 3000), nullptr);
  EXPECT_EQ(__asan_region_is_poisoned(q, 2 * MiB - 1024), q + 3000);
  a.record_stream(q, kB);
  a.deallocate(q);  // pending on kB's event (HostBacking: done at the next allocate)
  EXPECT_EQ(__asan_region_is_poisoned(q, 3000), nullptr);   // other streams may still use it
  a.deallocate(p);
  EXPECT_EQ(__asan_region_is_poisoned(p, 1), p);
  void* r = a.allocate(8 * MiB, kA);  // processes events: q joins the pool, coalesced
  EXPECT_EQ(__asan_region_is_poisoned(q, 1), q);
  a.deallocate(r);
  a.empty_cache();  // raw_free checks each segment was unpoisoned
  EXPECT_EQ(a.stats().reserved, 0u);
}
#else
TEST(CachingAllocator, PoisonStateFollowsBlocks) {
  GTEST_SKIP() << "built without AddressSanitizer: poisoning is compiled out";
}
#endif

}  // namespace
