// core/simt/internal.h — shared between the SIMT scheduler (scheduler.cpp) and the CUDA
// runtime subset (cuda_api.cpp). Not for kernels or users.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "core/simt/simt.h"

// AddressSanitizer in this build (GCC: __SANITIZE_ADDRESS__; Clang: __has_feature).
#if defined(__SANITIZE_ADDRESS__)
#define PTRAIN_SIMT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PTRAIN_SIMT_ASAN 1
#endif
#endif
#ifndef PTRAIN_SIMT_ASAN
#define PTRAIN_SIMT_ASAN 0
#endif
#if PTRAIN_SIMT_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace ptrain::simt::internal {

/// A queued kernel, executed at the next synchronisation.
struct KernelLaunch {
  std::string name;
  const void* fn = nullptr;
  dim3 grid, block;
  size_t dynamic_smem = 0;
  detail::Thunk thunk;
  uint64_t launch_no = 0;  ///< position among launches executed (seeds the orders)
};

/// Queues `fn` on stream `s` as a device operation named `name` (the emulated cuBLASLt's
/// matmuls): it runs at the stream's turn with device memory accessible, is counted in
/// counters().launches, and an exception it throws becomes the sticky launch fault
/// ("device task NAME: what"), as a kernel fault does.
void enqueue_device_task(cudaStream_t s, std::string name, std::function<void()> fn);

/// Runs every block of `k` (blocks and threads in the seeded order). Returns false and sets
/// `fault` ("kernel K, block (..), thread (..): what") when the kernel faulted.
bool run_kernel(const KernelLaunch& k, std::string& fault);

/// splitmix64: the seeded orders of threads, blocks and streams.
inline uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/// True while a kernel or a copy runs (device memory is then accessible).
extern bool g_device_access;
/// Name of the kernel running now (nullptr outside kernels), for fault handlers.
extern const char* g_running_kernel;

/// Installs the SIGSEGV/SIGBUS handler and the sanitizer death callback (once).
void install_fault_handlers();
/// Whether `p` lies in a guard page of a fiber stack.
bool in_stack_guard(const void* p);

/// Limits of the emulated device (RTX 4090).
inline constexpr size_t kMaxStaticShared = 48 * 1024;
inline constexpr size_t kMaxDynamicSharedDefault = 48 * 1024;
inline constexpr size_t kMaxSharedOptin = 99 * 1024;  // 101376 bytes
inline constexpr unsigned kMaxThreads = 1024;

/// The dynamic shared memory limit set for `fn` with cudaFuncSetAttribute (default 48 KB).
size_t max_dynamic_shared(const void* fn);

}  // namespace ptrain::simt::internal
