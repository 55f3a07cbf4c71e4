// core/cuda/device_memory.h — device memory of this process: the caching allocator over the
// CUDA runtime (cudaMalloc/cudaFree, events, cudaMemsetAsync), one per process (one device
// per rank), and its ptrain::Allocator face for device Tensors.
//
// In the emulated build new allocations are filled with NaN (0xFF bytes) so a forgotten
// zeroing shows, and under AddressSanitizer block slack and cached free blocks are poisoned
// in stream order (a host function queued on the block's stream).
#pragma once
#include "core/cuda/caching_allocator.h"
#include "core/tensor.h"

namespace ptrain::cuda {

/// DeviceBacking over the CUDA runtime of the current device.
class CudaBacking final : public DeviceBacking {
 public:
  void* raw_alloc(size_t bytes) override;
  void raw_free(void* p) override;
  size_t device_total_memory() const override;
  EventId record_event(StreamId s) override;
  bool event_done(EventId e) override;
  void destroy_event(EventId e) override;
  void synchronize_device() override;
  void fill_nan(void* p, size_t bytes, StreamId s) override;
  bool host_addressable() const override;
  void set_poison(void* p, size_t bytes, bool poisoned, StreamId s) override;
};

/// Synchronous copies between host and device memory of the current device (and device to
/// device, ordered on the default stream); counted by the emulated runtime's counters.
void copy_host_to_device(void* dst, const void* src, size_t bytes);
void copy_device_to_host(void* dst, const void* src, size_t bytes);
void copy_device_to_device(void* dst, const void* src, size_t bytes);
/// Zeroes device memory (ordered on the default stream).
void zero_device(void* p, size_t bytes);

/// The process's device allocator (created on first use; NaN fill on in the emulated build).
CachingAllocator& device_allocator();
/// device_allocator() as the ptrain::Allocator behind Tensors on Device::cuda (default stream).
Allocator& cuda_tensor_allocator();

}  // namespace ptrain::cuda
