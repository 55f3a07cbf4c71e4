// core/simt/cuda_api.cpp — the CUDA runtime subset of the emulated device.
//
// The functions keep the CUDA runtime's names and signatures (declared by the toolkit's
// cuda_runtime_api.h), so host code is the same in both builds; the emulated targets never
// link libcudart. Invariants:
//  * Device memory is one arena mapped PROT_NONE outside kernels and copies: host code that
//    dereferences a device pointer crashes (SIGSEGV, reported with the arena's range), as on a
//    GPU. cudaMalloc is first-fit at 512-byte alignment (what drivers return in practice; the
//    caching allocator requires it) and fills new memory with 0xFF (NaN);
//    allocations of 64 MiB or more are advised onto transparent huge pages (cheaper to touch
//    and to flip the protection of: tests/cuda/test_index64.cpp uses 4 GB buffers).
//  * Streams are deferred queues. Nothing runs until a synchronising call; then the ready heads
//    of the queues run one at a time in a seeded order (seed 0: issue order; 1: newest ready
//    first; other seeds: shuffled) that respects stream order, cudaStreamWaitEvent and the
//    legacy default stream. So a missing event wait changes results between seeds.
//  * A kernel fault is a sticky error: every later call returns it (cudaDeviceReset clears it),
//    queued work is dropped, and fault_message() names the kernel, block and thread.
//  * Counters: synchronisations, host<->device bytes, launches, GPU threads.
#include <cuda_runtime_api.h>
#include <execinfo.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/simt/internal.h"

#if PTRAIN_SIMT_ASAN || defined(__SANITIZE_UNDEFINED__)
#include <sanitizer/common_interface_defs.h>
#define PTRAIN_SIMT_SANITIZER 1
#else
#define PTRAIN_SIMT_SANITIZER 0
#endif

// The fault handler below reports a host dereference of device memory (and names the kernel
// of a crash); AddressSanitizer would otherwise claim SIGSEGV first.
#if PTRAIN_SIMT_ASAN
extern "C" const char* __asan_default_options() { return "handle_segv=0:handle_sigbus=0"; }
#endif
#if defined(PTRAIN_UBSAN)
// A UBSan finding inside a kernel prints the stack, which names the kernel function.
extern "C" const char* __ubsan_default_options() { return "print_stacktrace=1:halt_on_error=1"; }
#endif

struct CUstream_st {
  struct Op {
    enum Kind { kernel, copy, memset, record, wait, host, task } kind;
    uint64_t seq = 0;
    ptrain::simt::internal::KernelLaunch launch;  // kernel
    void* dst = nullptr;                          // copy / memset
    const void* src = nullptr;
    size_t bytes = 0;
    int value = 0;
    int dir = 0;  // 1 h2d, 2 d2h, 3 d2d, 0 h2h
    struct CUevent_st* event = nullptr;  // record / wait
    uint64_t event_gen = 0;
    cudaHostFn_t fn = nullptr;
    void* user = nullptr;
    std::string task_name;             // task (enqueue_device_task)
    std::function<void()> task_fn;
  };
  std::deque<Op> queue;
  unsigned flags = 0;
  bool is_default = false;
};

struct CUevent_st {
  uint64_t recorded = 0;  ///< cudaEventRecord calls so far
  uint64_t done = 0;      ///< records executed
  std::chrono::steady_clock::time_point when{};
};

namespace ptrain::simt {

namespace internal {
bool g_device_access = false;
}

namespace {

using internal::g_device_access;

// ------------------------------------------------------------------ state

struct DeviceState {
  bool initialised = false;
  size_t memory_bytes = size_t(24) << 30;  // an RTX 4090
  char* arena = nullptr;
  std::map<size_t, size_t> free_list;      // offset -> bytes
  struct Allocation {
    size_t bytes;      ///< rounded to 512
    size_t requested;  ///< what cudaMalloc was asked for: copies and (under ASan) kernels stay inside
  };
  std::map<size_t, Allocation> allocations;  // offset -> allocation
  size_t used = 0;
  CUstream_st default_stream;
  std::set<CUstream_st*> streams;
  uint64_t seq = 0;
  uint64_t launches_executed = 0;
  uint64_t drains = 0;
  cudaError_t sticky = cudaSuccess;
  cudaError_t last = cudaSuccess;
  std::string message;  ///< of the sticky fault, or of the last (non-sticky) error
  std::map<const void*, size_t> max_dynamic_smem;
  Counters counters;
  uint64_t seed = 1;
};
DeviceState& dev() {
  static DeviceState* d = new DeviceState();  // never destroyed: kernels may run at exit
  return *d;
}

size_t parse_bytes(const char* s) {
  char* end = nullptr;
  double v = std::strtod(s, &end);
  if (end == s || v <= 0) return 0;
  switch (*end) {
    case 'k': case 'K': v *= 1024.0; break;
    case 'm': case 'M': v *= 1024.0 * 1024; break;
    case 'g': case 'G': v *= 1024.0 * 1024 * 1024; break;
    default: break;
  }
  return static_cast<size_t>(v);
}

void init() {
  DeviceState& d = dev();
  if (d.initialised) return;
  d.initialised = true;
  if (const char* s = std::getenv("PTRAIN_SIMT_DEVICE_MEMORY")) {
    const size_t b = parse_bytes(s);
    if (b == 0) {
      std::fprintf(stderr, "PTRAIN_SIMT_DEVICE_MEMORY=%s is not a size (use e.g. 2G, 512M)\n", s);
      std::abort();
    }
    d.memory_bytes = b;
  }
  if (const char* s = std::getenv("PTRAIN_SIMT_SEED")) d.seed = std::strtoull(s, nullptr, 10);
  d.memory_bytes = (d.memory_bytes + 4095) / 4096 * 4096;
  void* m = mmap(nullptr, d.memory_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) {
    std::fprintf(stderr, "simt: cannot reserve %zu bytes of emulated device memory\n", d.memory_bytes);
    std::abort();
  }
  d.arena = static_cast<char*>(m);
  d.free_list[0] = d.memory_bytes;
  d.default_stream.is_default = true;
  internal::install_fault_handlers();
}

/// Makes the arena accessible for the scope (kernels, copies, fills).
struct DeviceAccess {
  bool was;
  DeviceAccess() : was(g_device_access) {
    if (!was) {
      mprotect(dev().arena, dev().memory_bytes, PROT_READ | PROT_WRITE);
      g_device_access = true;
    }
  }
  ~DeviceAccess() {
    if (!was) {
      mprotect(dev().arena, dev().memory_bytes, PROT_NONE);
      g_device_access = false;
    }
  }
};

bool in_arena(const void* p) {
  const char* c = static_cast<const char*>(p);
  return dev().arena && c >= dev().arena && c < dev().arena + dev().memory_bytes;
}

/// The allocation that holds [p, p + n), or false.
bool in_allocation(const void* p, size_t n) {
  if (!in_arena(p)) return false;
  const size_t off = static_cast<size_t>(static_cast<const char*>(p) - dev().arena);
  auto it = dev().allocations.upper_bound(off);
  if (it == dev().allocations.begin()) return false;
  --it;
  return off + n <= it->first + it->second.requested;
}

cudaError_t fail(cudaError_t e, std::string msg) {
  dev().last = e;
  dev().message = std::move(msg);
  return e;
}

// ------------------------------------------------------------------ the queues

void execute(CUstream_st::Op& op) {
  DeviceState& d = dev();
  switch (op.kind) {
    case CUstream_st::Op::kernel: {
      op.launch.launch_no = d.launches_executed++;
      std::string fault;
      const bool ok = [&] {
        DeviceAccess a;
        return internal::run_kernel(op.launch, fault);
      }();
      ++d.counters.launches;
      d.counters.gpu_threads += static_cast<int64_t>(op.launch.grid.x) * op.launch.grid.y * op.launch.grid.z *
                                op.launch.block.x * op.launch.block.y * op.launch.block.z;
      if (!ok) {
        d.sticky = cudaErrorLaunchFailure;
        d.message = fault;
      }
      break;
    }
    case CUstream_st::Op::copy: {
      DeviceAccess a;
      std::memmove(op.dst, op.src, op.bytes);
      break;
    }
    case CUstream_st::Op::memset: {
      DeviceAccess a;
      std::memset(op.dst, op.value, op.bytes);
      break;
    }
    case CUstream_st::Op::record:
      op.event->done = std::max(op.event->done, op.event_gen);
      op.event->when = std::chrono::steady_clock::now();
      break;
    case CUstream_st::Op::wait: break;
    case CUstream_st::Op::host: op.fn(op.user); break;
    case CUstream_st::Op::task: {
      std::string fault;
      {
        DeviceAccess a;
        internal::g_running_kernel = op.task_name.c_str();
        try {
          op.task_fn();
        } catch (const std::exception& e) {
          fault = fmt::format("device task {}: {}", op.task_name, e.what());
        } catch (...) {
          fault = fmt::format("device task {}: unknown exception", op.task_name);
        }
        internal::g_running_kernel = nullptr;
      }
      ++d.counters.launches;
      if (!fault.empty()) {
        d.sticky = cudaErrorLaunchFailure;
        d.message = std::move(fault);
      }
      break;
    }
  }
}

bool ready(const CUstream_st* s, const CUstream_st::Op& op) {
  DeviceState& d = dev();
  if (op.kind == CUstream_st::Op::wait && op.event->done < op.event_gen) return false;
  // Legacy default stream: it waits for all earlier work of blocking streams, and they wait for it.
  if (s->is_default) {
    for (CUstream_st* o : d.streams)
      if (!(o->flags & cudaStreamNonBlocking) && !o->queue.empty() && o->queue.front().seq < op.seq) return false;
  } else if (!(s->flags & cudaStreamNonBlocking)) {
    const auto& q = d.default_stream.queue;
    if (!q.empty() && q.front().seq < op.seq) return false;
  }
  return true;
}

void drop_all() {
  dev().default_stream.queue.clear();
  for (CUstream_st* s : dev().streams) s->queue.clear();
}

/// Runs every queued operation (seeded order among ready stream heads).
void drain() {
  DeviceState& d = dev();
  if (d.sticky != cudaSuccess) {
    drop_all();
    return;
  }
  const uint64_t drain_no = d.drains++;
  uint64_t picks = 0;
  std::vector<CUstream_st*> all;
  all.push_back(&d.default_stream);
  for (CUstream_st* s : d.streams) all.push_back(s);
  // One opening of the arena for the whole drain, not one per operation: mprotect of the
  // arena costs time in proportion to its resident pages (~1 ms at a few hundred MB), and a
  // training step queues thousands of operations between synchronisations.
  bool work = false;
  for (CUstream_st* s : all) work = work || !s->queue.empty();
  std::optional<DeviceAccess> access;
  if (work) access.emplace();
  for (;;) {
    std::vector<CUstream_st*> cands;
    bool any = false;
    for (CUstream_st* s : all) {
      if (s->queue.empty()) continue;
      any = true;
      if (ready(s, s->queue.front())) cands.push_back(s);
    }
    if (!any) return;
    if (cands.empty()) {
      d.sticky = cudaErrorLaunchFailure;
      d.message = "stream deadlock: every queued operation waits for an event that is recorded behind it";
      drop_all();
      return;
    }
    std::sort(cands.begin(), cands.end(),
              [](const CUstream_st* a, const CUstream_st* b) { return a->queue.front().seq < b->queue.front().seq; });
    size_t pick = 0;
    if (d.seed == 1)
      pick = cands.size() - 1;
    else if (d.seed > 1)
      pick = internal::mix(d.seed ^ internal::mix(drain_no * 1000003 + picks)) % cands.size();
    ++picks;
    CUstream_st* s = cands[pick];
    CUstream_st::Op op = std::move(s->queue.front());
    s->queue.pop_front();
    execute(op);
    if (d.sticky != cudaSuccess) {
      drop_all();
      return;
    }
  }
}

CUstream_st* resolve_stream(cudaStream_t s) {
  if (s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread) return &dev().default_stream;
  return s;
}

cudaError_t enqueue(cudaStream_t s, CUstream_st::Op op) {
  init();
  if (dev().sticky != cudaSuccess) return dev().sticky;
  CUstream_st* st = resolve_stream(s);
  if (st != &dev().default_stream && !dev().streams.count(st))
    return fail(cudaErrorInvalidResourceHandle, "stream handle is not a live stream");
  op.seq = ++dev().seq;
  st->queue.push_back(std::move(op));
  return cudaSuccess;
}

int direction(const void* dst, const void* src) {
  const bool dd = in_arena(dst), sd = in_arena(src);
  return dd && sd ? 3 : dd ? 1 : sd ? 2 : 0;
}

cudaError_t check_copy(void* dst, const void* src, size_t n, cudaMemcpyKind kind, int& dir) {
  dir = direction(dst, src);
  const int want = kind == cudaMemcpyHostToDevice ? 1 : kind == cudaMemcpyDeviceToHost ? 2
                   : kind == cudaMemcpyDeviceToDevice ? 3 : kind == cudaMemcpyHostToHost ? 0 : dir;
  if (want != dir)
    return fail(cudaErrorInvalidValue, fmt::format("cudaMemcpy kind {} does not match the pointers (dst {} device, "
                                                   "src {} device)",
                                                   static_cast<int>(kind), in_arena(dst) ? "is" : "is not",
                                                   in_arena(src) ? "is" : "is not"));
  if (n == 0) return cudaSuccess;
  if (in_arena(dst) && !in_allocation(dst, n))
    return fail(cudaErrorInvalidValue, fmt::format("cudaMemcpy of {} bytes to {} runs outside its device allocation",
                                                   n, dst));
  if (in_arena(src) && !in_allocation(src, n))
    return fail(cudaErrorInvalidValue, fmt::format("cudaMemcpy of {} bytes from {} runs outside its device allocation",
                                                   n, src));
  return cudaSuccess;
}

void count_copy(int dir, size_t n) {
  Counters& c = dev().counters;
  if (dir == 1) c.h2d_bytes += static_cast<int64_t>(n);
  if (dir == 2) c.d2h_bytes += static_cast<int64_t>(n);
  if (dir == 3) c.d2d_bytes += static_cast<int64_t>(n);
}

const char* error_name(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    default: return "cudaErrorUnknown";
  }
}

// ------------------------------------------------------------------ fault handlers

struct sigaction g_old_segv, g_old_bus;
char g_altstack[64 * 1024];

void write_str(const char* s) { (void)!write(2, s, std::strlen(s)); }

void on_fault(int sig, siginfo_t* info, void* uctx) {
  char buf[1024];
  const void* addr = info ? info->si_addr : nullptr;
  const DeviceState& d = dev();
  if (internal::in_stack_guard(addr)) {
    std::snprintf(buf, sizeof buf, "\nptrain simt: stack overflow of a GPU thread in kernel %s (fiber stacks are 256 KB)\n",
                  internal::g_running_kernel ? internal::g_running_kernel : "?");
  } else if (addr && d.arena && static_cast<const char*>(addr) >= d.arena &&
             static_cast<const char*>(addr) < d.arena + d.memory_bytes && !g_device_access) {
    std::snprintf(buf, sizeof buf,
                  "\nptrain simt: host code dereferenced device pointer %p (emulated device memory [%p, %p)); device "
                  "memory is reachable only from kernels and cudaMemcpy, as on a GPU\n",
                  addr, static_cast<const void*>(d.arena), static_cast<const void*>(d.arena + d.memory_bytes));
  } else if (internal::g_running_kernel) {
    std::snprintf(buf, sizeof buf, "\nptrain simt: signal %d (address %p) in kernel %s, block (%u,%u,%u), thread (%u,%u,%u)\n",
                  sig, addr, internal::g_running_kernel, detail::g_block ? detail::g_block->block_idx.x : 0,
                  detail::g_block ? detail::g_block->block_idx.y : 0, detail::g_block ? detail::g_block->block_idx.z : 0,
                  detail::g_thread ? detail::g_thread->thread_idx.x : 0, detail::g_thread ? detail::g_thread->thread_idx.y : 0,
                  detail::g_thread ? detail::g_thread->thread_idx.z : 0);
  } else {
    std::snprintf(buf, sizeof buf, "\nptrain simt: signal %d at address %p outside kernels\n", sig, addr);
  }
  write_str(buf);
  void* frames[48];
  const int n = backtrace(frames, 48);
  backtrace_symbols_fd(frames, n, 2);
  // Re-raise with the previous handler (default: core dump / death).
  const struct sigaction& old = sig == SIGBUS ? g_old_bus : g_old_segv;
  sigaction(sig, &old, nullptr);
  (void)uctx;
}

#if PTRAIN_SIMT_SANITIZER
void on_sanitizer_death() {
  if (!internal::g_running_kernel) return;
  char buf[512];
  std::snprintf(buf, sizeof buf, "ptrain simt: the error above happened in kernel %s, block (%u,%u,%u), thread (%u,%u,%u)\n",
                internal::g_running_kernel, detail::g_block ? detail::g_block->block_idx.x : 0,
                detail::g_block ? detail::g_block->block_idx.y : 0, detail::g_block ? detail::g_block->block_idx.z : 0,
                detail::g_thread ? detail::g_thread->thread_idx.x : 0, detail::g_thread ? detail::g_thread->thread_idx.y : 0,
                detail::g_thread ? detail::g_thread->thread_idx.z : 0);
  write_str(buf);
}
#endif

}  // namespace

namespace internal {

void install_fault_handlers() {
  static bool done = false;
  if (done) return;
  done = true;
  stack_t ss{};
  ss.ss_sp = g_altstack;
  ss.ss_size = sizeof g_altstack;
  sigaltstack(&ss, nullptr);
  struct sigaction sa {};
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &g_old_segv);
  sigaction(SIGBUS, &sa, &g_old_bus);
#if PTRAIN_SIMT_SANITIZER
  __sanitizer_set_death_callback(on_sanitizer_death);
#endif
}

size_t max_dynamic_shared(const void* fn) {
  auto it = dev().max_dynamic_smem.find(fn);
  return it == dev().max_dynamic_smem.end() ? kMaxDynamicSharedDefault : it->second;
}

void enqueue_device_task(cudaStream_t s, std::string name, std::function<void()> fn) {
  CUstream_st::Op op{};
  op.kind = CUstream_st::Op::task;
  op.task_name = std::move(name);
  op.task_fn = std::move(fn);
  (void)enqueue(s, std::move(op));
}

}  // namespace internal

// ------------------------------------------------------------------ ptrain::simt API

Counters counters() { return dev().counters; }
void reset_counters() { dev().counters = {}; }
void set_seed(uint64_t s) { dev().seed = s; }
uint64_t seed() { return dev().seed; }
const char* fault_message() { return dev().message.c_str(); }
void device_arena(const void** begin, const void** end) {
  init();
  *begin = dev().arena;
  *end = dev().arena + dev().memory_bytes;
}
void set_device_memory(size_t bytes) {
  if (dev().initialised) {
    std::fprintf(stderr, "simt::set_device_memory called after the device was initialised\n");
    std::abort();
  }
  dev().memory_bytes = bytes;
}

namespace detail {

void enqueue_kernel(const char* name, const void* fn, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                    Thunk thunk) {
  init();
  std::string n(name);
  while (n.size() > 2 && n.front() == '(' && n.back() == ')') n = n.substr(1, n.size() - 2);
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || block.x > 1024 || block.y > 1024 || block.z > 64 ||
      threads > internal::kMaxThreads) {
    fail(cudaErrorInvalidConfiguration,
         fmt::format("kernel {}: block ({},{},{}) = {} threads; the RTX 4090 allows 1024 threads per block (x, y <= "
                     "1024, z <= 64)",
                     n, block.x, block.y, block.z, threads));
    return;
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    fail(cudaErrorInvalidConfiguration,
         fmt::format("kernel {}: grid ({},{},{}) is empty or too large (x < 2^31, y, z <= 65535)", n, grid.x, grid.y,
                     grid.z));
    return;
  }
  const size_t limit = internal::max_dynamic_shared(fn);
  if (smem > limit) {
    fail(cudaErrorInvalidValue,
         fmt::format("kernel {}: {} bytes of dynamic shared memory exceed the limit of {} bytes{}", n, smem, limit,
                     limit < internal::kMaxSharedOptin
                         ? " (above 48 KB, opt in with cudaFuncSetAttribute(kernel, "
                           "cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), up to 99 KB on an RTX 4090)"
                         : " (99 KB per block on an RTX 4090)"));
    return;
  }
  CUstream_st::Op op{};
  op.kind = CUstream_st::Op::kernel;
  op.launch.name = std::move(n);
  op.launch.fn = fn;
  op.launch.grid = grid;
  op.launch.block = block;
  op.launch.dynamic_smem = smem;
  op.launch.thunk = std::move(thunk);
  (void)enqueue(stream, std::move(op));
}

}  // namespace detail
}  // namespace ptrain::simt

// ------------------------------------------------------------------ the CUDA runtime subset

using namespace ptrain::simt;

namespace {
cudaError_t sticky_or(cudaError_t e) {
  return dev().sticky != cudaSuccess ? dev().sticky : e;
}
cudaError_t sync_all() {
  init();
  ++dev().counters.synchronizations;
  drain();
  return dev().sticky;
}
}  // namespace

extern "C" {

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  init();
  return device == 0 ? sticky_or(cudaSuccess) : fail(cudaErrorInvalidDevice, "the emulated build has one device (0)");
}
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device) {
  init();
  if (device != 0) return fail(cudaErrorInvalidDevice, "the emulated build has one device (0)");
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "ptrain emulated RTX 4090 (SIMT on the CPU)");
  p->major = 8;
  p->minor = 9;
  p->totalGlobalMem = dev().memory_bytes;
  p->sharedMemPerBlock = internal::kMaxStaticShared;
  p->sharedMemPerBlockOptin = internal::kMaxSharedOptin;
  p->sharedMemPerMultiprocessor = 100 * 1024;
  p->regsPerBlock = 65536;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  p->maxThreadsDim[0] = 1024;
  p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 2147483647;
  p->maxGridSize[1] = 65535;
  p->maxGridSize[2] = 65535;
  p->multiProcessorCount = 128;
  p->maxThreadsPerMultiProcessor = 1536;
  p->totalConstMem = 65536;
  p->l2CacheSize = 72 * 1024 * 1024;
  p->memoryBusWidth = 384;
  p->asyncEngineCount = 2;
  p->concurrentKernels = 1;
  p->unifiedAddressing = 1;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  cudaDeviceProp p;
  if (cudaError_t e = cudaGetDeviceProperties(&p, device); e != cudaSuccess) return e;
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = p.maxThreadsPerBlock; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = static_cast<int>(p.sharedMemPerBlock); break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(p.sharedMemPerBlockOptin); break;
    case cudaDevAttrMultiProcessorCount: *value = p.multiProcessorCount; break;
    case cudaDevAttrComputeCapabilityMajor: *value = p.major; break;
    case cudaDevAttrComputeCapabilityMinor: *value = p.minor; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    default: return fail(cudaErrorInvalidValue, fmt::format("device attribute {} is not emulated", static_cast<int>(attr)));
  }
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total) {
  init();
  *total = dev().memory_bytes;
  *free_bytes = dev().memory_bytes - dev().used;
  return sticky_or(cudaSuccess);
}

/// Allocations of at least this size are advised onto transparent huge pages (cudaMalloc).
constexpr size_t kHugePageAllocation = size_t(64) << 20;

cudaError_t cudaMalloc(void** ptr, size_t size) {
  init();
  DeviceState& d = dev();
  if (d.sticky != cudaSuccess) return d.sticky;
  const size_t n = std::max<size_t>(512, (size + 511) / 512 * 512);
  for (auto it = d.free_list.begin(); it != d.free_list.end(); ++it) {
    if (it->second < n) continue;
    const size_t off = it->first, rest = it->second - n;
    d.free_list.erase(it);
    if (rest) d.free_list[off + n] = rest;
    d.allocations[off] = {n, size};
    d.used += n;
    *ptr = d.arena + off;
#if PTRAIN_SIMT_ASAN
    ASAN_UNPOISON_MEMORY_REGION(d.arena + off, n);
#endif
    if (n >= kHugePageAllocation) {
      // Big buffers on 2 MiB pages (transparent huge pages, where the kernel allows them):
      // every synchronising call flips the whole arena's protection, whose cost grows with
      // the number of mapped pages: with 4 KiB pages a 4 GB buffer makes each call take
      // ~0.25 s, with 2 MiB pages ~1 ms (and the first touch below is twice as fast).
      const auto a = reinterpret_cast<uintptr_t>(d.arena + off), e = a + n;
      const uintptr_t page = 4096, lo = (a + page - 1) / page * page, hi = e / page * page;
      if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
    }
    {
      DeviceAccess a;
      std::memset(d.arena + off, 0xFF, n);
    }
#if PTRAIN_SIMT_ASAN
    ASAN_POISON_MEMORY_REGION(d.arena + off + size, n - size);  // the slack: an off-by-one fails
#endif
    return cudaSuccess;
  }
  *ptr = nullptr;
  return fail(cudaErrorMemoryAllocation,
              fmt::format("cudaMalloc of {} bytes: emulated device memory exhausted ({} of {} bytes in use)", size,
                          d.used, d.memory_bytes));
}

cudaError_t cudaFree(void* ptr) {
  init();
  if (!ptr) return cudaSuccess;
  DeviceState& d = dev();
  drain();  // cudaFree synchronises the device
  if (!in_arena(ptr)) return fail(cudaErrorInvalidDevicePointer, fmt::format("cudaFree({}): not device memory", ptr));
  const size_t off = static_cast<size_t>(static_cast<char*>(ptr) - d.arena);
  auto it = d.allocations.find(off);
  if (it == d.allocations.end())
    return fail(cudaErrorInvalidDevicePointer, fmt::format("cudaFree({}): not the start of a live allocation", ptr));
  size_t start = off, n = it->second.bytes;
  d.allocations.erase(it);
  d.used -= n;
#if PTRAIN_SIMT_ASAN
  ASAN_POISON_MEMORY_REGION(d.arena + off, n);
#endif
  // Coalesce with the neighbours.
  auto next = d.free_list.lower_bound(start);
  if (next != d.free_list.end() && next->first == start + n) {
    n += next->second;
    next = d.free_list.erase(next);
  }
  if (next != d.free_list.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == start) {
      start = prev->first;
      n += prev->second;
      d.free_list.erase(prev);
    }
  }
  d.free_list[start] = n;
  if (n >= (size_t(1) << 20)) madvise(d.arena + start, n, MADV_DONTNEED);  // give big frees back to the OS
  return sticky_or(cudaSuccess);
}

cudaError_t cudaMallocHost(void** ptr, size_t size) {
  *ptr = std::aligned_alloc(4096, std::max<size_t>(4096, (size + 4095) / 4096 * 4096));
  return *ptr ? cudaSuccess : fail(cudaErrorMemoryAllocation, "cudaMallocHost: out of host memory");
}
cudaError_t cudaFreeHost(void* ptr) {
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) {
  init();
  int dir = 0;
  if (cudaError_t e = check_copy(dst, src, n, kind, dir); e != cudaSuccess) return e;
  ++dev().counters.synchronizations;
  DeviceAccess a;  // open once for the queued work and the copy
  drain();
  if (dev().sticky != cudaSuccess) return dev().sticky;
  std::memmove(dst, src, n);
  count_copy(dir, n);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind kind, cudaStream_t stream) {
  init();
  int dir = 0;
  if (cudaError_t e = check_copy(dst, src, n, kind, dir); e != cudaSuccess) return e;
  CUstream_st::Op op{};
  op.kind = CUstream_st::Op::copy;
  op.dst = dst;
  op.src = src;
  op.bytes = n;
  op.dir = dir;
  count_copy(dir, n);
  return enqueue(stream, std::move(op));
}

cudaError_t cudaMemsetAsync(void* dst, int value, size_t n, cudaStream_t stream) {
  init();
  if (n && !in_allocation(dst, n))
    return fail(cudaErrorInvalidValue, fmt::format("cudaMemset of {} bytes at {} runs outside a device allocation", n, dst));
  ++dev().counters.memsets;
  CUstream_st::Op op{};
  op.kind = CUstream_st::Op::memset;
  op.dst = dst;
  op.bytes = n;
  op.value = value;
  return enqueue(stream, std::move(op));
}
cudaError_t cudaMemset(void* dst, int value, size_t n) {
  if (cudaError_t e = cudaMemsetAsync(dst, value, n, nullptr); e != cudaSuccess) return e;
  return sync_all();
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags) {
  init();
  auto* st = new CUstream_st();
  st->flags = flags;
  dev().streams.insert(st);
  *s = st;
  return sticky_or(cudaSuccess);
}
cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  init();
  if (!dev().streams.count(s)) return fail(cudaErrorInvalidResourceHandle, "cudaStreamDestroy: not a live stream");
  drain();
  dev().streams.erase(s);
  delete s;
  return sticky_or(cudaSuccess);
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return sync_all(); }
cudaError_t cudaStreamQuery(cudaStream_t) {
  init();
  drain();
  return sticky_or(cudaSuccess);
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
  CUstream_st::Op op{};
  op.kind = CUstream_st::Op::wait;
  op.event = e;
  op.event_gen = e->recorded;
  return enqueue(s, std::move(op));
}
cudaError_t cudaLaunchHostFunc(cudaStream_t s, cudaHostFn_t fn, void* user) {
  CUstream_st::Op op{};
  op.kind = CUstream_st::Op::host;
  op.fn = fn;
  op.user = user;
  return enqueue(s, std::move(op));
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) {
  *e = new CUevent_st();
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* e) { return cudaEventCreateWithFlags(e, 0); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  // Queued waits may still name the event: drain first (the GPU defers the destruction).
  init();
  drain();
  delete e;
  return sticky_or(cudaSuccess);
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  CUstream_st::Op op{};
  op.kind = CUstream_st::Op::record;
  op.event = e;
  op.event_gen = ++e->recorded;
  return enqueue(s, std::move(op));
}
cudaError_t cudaEventQuery(cudaEvent_t e) {
  init();
  drain();  // the emulated device finishes its queued work when asked
  if (dev().sticky != cudaSuccess) return dev().sticky;
  return e->done >= e->recorded ? cudaSuccess : cudaErrorNotReady;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return sync_all(); }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  if (a->done == 0 || b->done == 0) return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: event not recorded");
  *ms = std::chrono::duration<float, std::milli>(b->when - a->when).count();
  return sticky_or(cudaSuccess);
}

cudaError_t cudaDeviceSynchronize(void) { return sync_all(); }

cudaError_t cudaDeviceReset(void) {
  init();
  DeviceState& d = dev();
  drop_all();
  for (CUstream_st* s : d.streams) delete s;
  d.streams.clear();
#if PTRAIN_SIMT_ASAN
  for (auto& [off, a] : d.allocations) ASAN_POISON_MEMORY_REGION(d.arena + off, a.bytes);
#endif
  d.allocations.clear();
  d.free_list.clear();
  d.free_list[0] = d.memory_bytes;
  d.used = 0;
  d.sticky = cudaSuccess;
  d.last = cudaSuccess;
  d.message.clear();
  d.max_dynamic_smem.clear();
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* fn, cudaFuncAttribute attr, int value) {
  init();
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return sticky_or(cudaSuccess);
  if (value < 0 || static_cast<size_t>(value) > internal::kMaxSharedOptin)
    return fail(cudaErrorInvalidValue, fmt::format("cudaFuncSetAttribute: {} bytes of dynamic shared memory exceed the "
                                                   "RTX 4090's 99 KB ({} bytes) per block",
                                                   value, internal::kMaxSharedOptin));
  dev().max_dynamic_smem[fn] = static_cast<size_t>(value);
  return sticky_or(cudaSuccess);
}

cudaError_t cudaGetLastError(void) {
  DeviceState& d = dev();
  if (d.sticky != cudaSuccess) return d.sticky;
  const cudaError_t e = d.last;
  d.last = cudaSuccess;
  if (e == cudaSuccess) d.message.clear();
  return e;
}
cudaError_t cudaPeekAtLastError(void) {
  DeviceState& d = dev();
  return d.sticky != cudaSuccess ? d.sticky : d.last;
}
const char* cudaGetErrorName(cudaError_t e) { return error_name(e); }
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    default: return "unknown error";
  }
}

}  // extern "C"
