// core/cuda/caching_allocator.h — the device caching allocator of the CUDA backend.
//
// Pure host C++ (no CUDA header): the device is reached through DeviceBacking, whose real
// implementation (cudaMalloc/cudaFree/cudaEvent*/cudaMemsetAsync) lives elsewhere, so the
// allocator is unit-tested on machines without a GPU. Modelled on PyTorch's CUDA caching
// allocator:
//   * request sizes are rounded up to 512 B; requests <= 1 MiB ("small") are carved from
//     2 MiB segments, larger requests from segments of the request rounded up to 2 MiB;
//     small and large blocks never share a segment;
//   * a block is split when the remainder is >= 512 B (small) or > 1 MiB (large); adjacent
//     free blocks of one segment coalesce on free; a request takes the smallest cached free
//     block of its pool and stream that fits (ties: lowest address);
//   * a freed block is reused only by allocations on the stream it was allocated on; when
//     record_stream() named other streams, it waits for events recorded on those streams at
//     the free before it becomes reusable;
//   * when the device is out of memory, cached segments are released and the request is
//     retried once; then ptrain::Error says what was asked, what is held and what to do.
// Invariants (checked by tests/cuda/test_caching_allocator.cpp):
//   reserved == sum(block_size of live blocks) + cached_free + pending_free;
//   allocated == sum of the requested sizes of live blocks;
//   the same sequence of calls on a deterministic backing gives the same addresses.
// Header kept C++17 and free of implementation types so nvcc-compiled code can include it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace ptrain::cuda {

/// An opaque stream handle (cudaStream_t in the real backing); nullptr = the default stream.
using StreamId = void*;
/// An opaque event handle (cudaEvent_t in the real backing).
using EventId = void*;

/// What the allocator needs from the device: raw allocations and events. The real backing
/// is written with the CUDA runtime; tests use a fake.
class DeviceBacking {
 public:
  virtual ~DeviceBacking() = default;
  /// A new device allocation of `bytes` (>= 512-byte aligned); nullptr when the device is
  /// out of memory (never throws for that).
  virtual void* raw_alloc(size_t bytes) = 0;
  /// Returns an allocation of raw_alloc. The allocator calls synchronize_device() first.
  virtual void raw_free(void* p) = 0;
  /// Total memory of the device in bytes (for the out-of-memory message).
  virtual size_t device_total_memory() const = 0;
  /// An event recorded on stream `s` now (completes when the work queued on s so far is done).
  virtual EventId record_event(StreamId s) = 0;
  /// Whether event `e` has completed; a query, never blocks.
  virtual bool event_done(EventId e) = 0;
  virtual void destroy_event(EventId e) = 0;
  /// Waits for all work on all streams; afterwards every recorded event is complete.
  virtual void synchronize_device() = 0;
  /// Fills [p, p+bytes) with 0xFF bytes on stream s (NaN for f32/bf16/f16); used in debug mode.
  virtual void fill_nan(void* p, size_t bytes, StreamId s) = 0;
  /// True when device pointers are host-addressable (the emulated device): then, in builds
  /// with AddressSanitizer, the allocator poisons block slack and cached free blocks.
  virtual bool host_addressable() const = 0;
  /// Marks [p, p+bytes) addressable (poisoned = false) or not for AddressSanitizer, in
  /// stream order on s: an emulated device runs queued kernels after the host has moved on,
  /// so the marking must not overtake the work queued before it. Called only in ASan builds
  /// with a host-addressable backing. Default: at once (backings that run work eagerly).
  virtual void set_poison(void* p, size_t bytes, bool poisoned, StreamId s);
};

/// Allocator figures; all byte counts are exact, not rounded for display.
struct AllocatorStats {
  size_t allocated = 0;        ///< bytes handed out to callers (sum of requested sizes of live blocks)
  size_t reserved = 0;         ///< bytes held from the device (sum of segment sizes)
  size_t peak_allocated = 0;   ///< max of `allocated` since construction or reset_peak()
  size_t peak_reserved = 0;    ///< max of `reserved` since construction or reset_peak()
  size_t cached_free = 0;      ///< bytes in cached free blocks (reusable now)
  size_t pending_free = 0;     ///< bytes freed but waiting for record_stream events
  int64_t device_allocs = 0;   ///< raw_alloc calls that succeeded
  int64_t device_frees = 0;    ///< raw_free calls
  int64_t alloc_calls = 0;     ///< allocate() calls with a non-zero size
  int64_t cache_hits = 0;      ///< allocate() calls served from a cached block
  size_t largest_free_block = 0;  ///< largest cached free block (any stream)
  double fragmentation = 0;    ///< 1 - largest_free_block / cached_free (0 when nothing is cached)
  int64_t num_ooms = 0;        ///< allocate() calls that threw for lack of device memory
  /// One line in human units, e.g. "allocated 1.50 GiB (peak 2.00 GiB), reserved ...".
  std::string str() const;
};

/// Caches device memory in segments and hands out blocks of them (see the file comment).
/// One mutex guards every call, so it may be shared by threads; ptrain drives one device
/// from one host thread, so the lock is uncontended. The backing is called with the lock held.
class CachingAllocator {
 public:
  struct Options {
    /// New allocations are filled with 0xFF (NaN) through backing.fill_nan on their stream.
    bool fill_nan_on_alloc = false;
  };

  explicit CachingAllocator(DeviceBacking& backing);
  CachingAllocator(DeviceBacking& backing, Options opt);
  /// Synchronizes the device, destroys pending events and frees every segment, including
  /// those with blocks still live (their pointers become invalid).
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  /// A block of at least `bytes` bytes (512-byte aligned) usable on `stream`; nullptr for 0
  /// bytes. Throws ptrain::Error when the device is out of memory even after the cache is
  /// released (the message gives the figures and a HINT).
  void* allocate(size_t bytes, StreamId stream);
  /// Returns a block of allocate() to its stream's pool (after the events of record_stream);
  /// nullptr is ignored. Throws ptrain::Error for a pointer this allocator does not hold live.
  void deallocate(void* p);
  /// Declares that live block p is also used on stream s: once p is freed, its reuse waits
  /// until the work queued on s up to the free is done. No-op for p's own stream.
  void record_stream(void* p, StreamId s);
  /// Synchronizes the device, completes pending frees and raw_frees every fully free segment.
  void empty_cache();
  /// Current figures (walks the cached blocks: O(number of cached blocks)).
  AllocatorStats stats() const;
  /// Sets the peaks to the current allocated and reserved bytes.
  void reset_peak();
  /// Size of the live block holding p: the request rounded up to 512 B, or more when the
  /// remainder of the block it came from was too small to split off.
  size_t block_size(void* p) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ptrain::cuda
