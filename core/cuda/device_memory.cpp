// core/cuda/device_memory.cpp — the CUDA runtime behind the caching allocator (both builds).
#include "core/cuda/device_memory.h"

#include <cuda_runtime_api.h>

#include "core/cuda/launch_stats.h"
#include "core/error.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define PTRAIN_DEVMEM_ASAN 1
#endif

#define DEVMEM_CHECK(expr)                                                                       \
  do {                                                                                           \
    const cudaError_t e_ = (expr);                                                               \
    if (e_ != cudaSuccess) ::ptrain::cuda::throw_cuda_error(e_, #expr, __FILE__, __LINE__);      \
  } while (0)

namespace ptrain::cuda {

namespace {
cudaStream_t as_stream(StreamId s) { return static_cast<cudaStream_t>(s); }

#if defined(PTRAIN_DEVMEM_ASAN)
struct PoisonArgs {
  void* p;
  size_t n;
  bool poisoned;
};
void CUDART_CB apply_poison(void* user) {
  auto* a = static_cast<PoisonArgs*>(user);
  if (a->poisoned)
    ASAN_POISON_MEMORY_REGION(a->p, a->n);
  else
    ASAN_UNPOISON_MEMORY_REGION(a->p, a->n);
  delete a;
}
#endif
}  // namespace

void* CudaBacking::raw_alloc(size_t bytes) {
  void* p = nullptr;
  if (cudaMalloc(&p, bytes) != cudaSuccess) {
    const cudaError_t e = cudaGetLastError();  // clears a non-sticky out-of-memory
    if (e != cudaSuccess && e != cudaErrorMemoryAllocation) throw_cuda_error(e, "cudaMalloc", __FILE__, __LINE__);
    return nullptr;
  }
  return p;
}
void CudaBacking::raw_free(void* p) { DEVMEM_CHECK(cudaFree(p)); }
size_t CudaBacking::device_total_memory() const {
  size_t free_b = 0, total = 0;
  DEVMEM_CHECK(cudaMemGetInfo(&free_b, &total));
  return total;
}
EventId CudaBacking::record_event(StreamId s) {
  cudaEvent_t e = nullptr;
  DEVMEM_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  DEVMEM_CHECK(cudaEventRecord(e, as_stream(s)));
  return e;
}
bool CudaBacking::event_done(EventId e) {
  const cudaError_t r = cudaEventQuery(static_cast<cudaEvent_t>(e));
  if (r == cudaErrorNotReady) return false;
  DEVMEM_CHECK(r);
  return true;
}
void CudaBacking::destroy_event(EventId e) { DEVMEM_CHECK(cudaEventDestroy(static_cast<cudaEvent_t>(e))); }
void CudaBacking::synchronize_device() { DEVMEM_CHECK(cudaDeviceSynchronize()); }
void CudaBacking::fill_nan(void* p, size_t bytes, StreamId s) { DEVMEM_CHECK(cudaMemsetAsync(p, 0xFF, bytes, as_stream(s))); }
bool CudaBacking::host_addressable() const { return emulated(); }
void CudaBacking::set_poison(void* p, size_t bytes, bool poisoned, StreamId s) {
#if defined(PTRAIN_DEVMEM_ASAN)
  DEVMEM_CHECK(cudaLaunchHostFunc(as_stream(s), apply_poison, new PoisonArgs{p, bytes, poisoned}));
#else
  (void)p, (void)bytes, (void)poisoned, (void)s;
#endif
}

void copy_host_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes) DEVMEM_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}
void copy_device_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes) DEVMEM_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}
void copy_device_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes) DEVMEM_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, nullptr));
}
void zero_device(void* p, size_t bytes) {
  if (bytes) DEVMEM_CHECK(cudaMemsetAsync(p, 0, bytes, nullptr));
}

CachingAllocator& device_allocator() {
  // Never destroyed: at exit the CUDA runtime may already be torn down, and the process's
  // device memory goes with it.
  static CudaBacking* backing = new CudaBacking();
  static CachingAllocator* alloc = new CachingAllocator(*backing, CachingAllocator::Options{emulated()});
  return *alloc;
}

namespace {
class TensorAllocator final : public Allocator {
 public:
  void* allocate(size_t bytes) override { return device_allocator().allocate(bytes, nullptr); }
  void deallocate(void* p, size_t) override { device_allocator().deallocate(p); }
  Device device() const override { return Device::cuda; }
};
}  // namespace

Allocator& cuda_tensor_allocator() {
  static TensorAllocator a;
  return a;
}

}  // namespace ptrain::cuda
