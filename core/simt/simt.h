// core/simt/simt.h — the SIMT runtime: CUDA kernels compiled by g++ and run on the CPU.
//
// Included only through core/cuda/runtime.h (the one runtime header every .cu file includes
// first) when the build is emulated (PTRAIN_CUDA_EMULATION=ON). Kernel sources are the same
// as under nvcc; what differs lives here and in that header.
//
// Execution model (DESIGN.md, "Two backends, three builds"):
//  * Every GPU thread is a fiber (Boost.Context fcontext) on a pooled stack with a guard page;
//    the threads of a block run one at a time, each until it exits or meets a barrier or warp
//    operation, in a seeded shuffled order that changes every launch; blocks run in a shuffled
//    order too. So a result that depends on thread or block order changes between seeds.
//  * __syncthreads is a rendezvous keyed by its call site: every thread of the block that has
//    not exited must arrive at the same site, else the launch faults (barrier in a branch,
//    barriers in both arms of an if/else). Warp shuffles, votes and __syncwarp are rendezvous
//    over the lanes of their mask; a mask naming an exited or absent lane faults. When no
//    thread can move the launch faults with the waiting sites (deadlock).
//  * Shared memory lives in a per-block heap arena, each variable between redzones (poisoned
//    for AddressSanitizer, checked after the block otherwise) and filled with 0xFF bytes
//    (NaN for f32/bf16/f16) when the block starts. RTX 4090 limits: 48 KB static, 99 KB
//    dynamic (opt-in above 48 KB with cudaFuncSetAttribute), 1024 threads per block.
//  * Atomics are plain read-modify-writes: fibers never run concurrently.
//  * A fault inside a kernel (exception, barrier misuse, deadlock, redzone) becomes a sticky
//    error returned by the next synchronising CUDA call, with the kernel, block and thread
//    named by ptrain::simt::fault_message().
//
// Single host thread: the emulated device is driven by one host thread at a time (ptrain
// drives one device from one host thread).
#pragma once

// host_defines.h leaves __shared__ alone when it is already defined: a plain `__shared__`
// in a kernel would otherwise compile to a per-thread local. Shared memory is declared with
// PT_SHARED / PT_DYNAMIC_SHARED (core/cuda/runtime.h).
#undef __shared__
#define __shared__ static_assert(false, "declare shared memory with PT_SHARED or PT_DYNAMIC_SHARED (core/cuda/runtime.h)");

#include <cuda_runtime_api.h>
#include <vector_types.h>
#include <vector_functions.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#ifndef __restrict__
#define __restrict__ __restrict
#endif

namespace ptrain::simt {

/// A source location: barriers and warp operations are keyed by where they are called.
struct Site {
  const char* file;
  int line;
  const char* what;
};

/// The state of the GPU thread running now (valid only inside a kernel).
struct ThreadState {
  uint3 thread_idx;
  int linear;  ///< linear thread index in the block
};
struct BlockState {
  uint3 block_idx;
  dim3 block_dim, grid_dim;
};

namespace detail {
extern ThreadState* g_thread;
extern BlockState* g_block;

/// Waits at a block-wide barrier; returns the barrier's reduction of `pred` (count, and, or).
int barrier(Site site, int pred, int kind);
/// Warp rendezvous: every lane in `mask` deposits `value` and its parameters; returns the
/// value this lane reads. kind: 0 idx, 1 up, 2 down, 3 xor, 4 ballot, 5 any, 6 all, 7 syncwarp.
uint64_t warp_op(Site site, unsigned mask, int kind, uint64_t value, int param, int width);
/// Address of the static shared variable declared at `site` in this block (allocated, filled
/// with 0xFF and guarded by redzones on first use in the block).
struct SharedSite {
  const char* name;
  size_t bytes;
  size_t align;
};
void* static_shared(const SharedSite* site);
void* dynamic_shared();
/// Reports a fault from inside a kernel (throws; the launch records it with its context).
[[noreturn]] void kernel_fault(const char* fmt_message);

using Thunk = std::function<void()>;
/// Queues a kernel on `stream` (deferred until the next synchronisation). Launch
/// configuration errors are set as cudaGetLastError's (non-sticky) error, with a message.
void enqueue_kernel(const char* name, const void* fn, dim3 grid, dim3 block, size_t dynamic_smem,
                    cudaStream_t stream, Thunk thunk);
}  // namespace detail

/// Launches `k(args...)`: the arguments are converted to the kernel's parameter types and
/// captured by value now, as a GPU launch copies them.
template <class... P, class... A>
void launch(const char* name, void (*k)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  auto captured = std::make_tuple(static_cast<std::decay_t<P>>(std::forward<A>(args))...);
  detail::enqueue_kernel(name, reinterpret_cast<const void*>(k), grid, block, smem, stream,
                         [k, captured]() { std::apply(k, captured); });
}

// ---- configuration and introspection (tests, benchmarks, the trainer's per-step counters) ----
struct Counters {
  int64_t launches = 0;       ///< kernels executed
  int64_t gpu_threads = 0;    ///< GPU threads run
  int64_t synchronizations = 0;  ///< host waits: cudaDeviceSynchronize, cudaStreamSynchronize, cudaEventSynchronize, sync cudaMemcpy
  int64_t h2d_bytes = 0, d2h_bytes = 0, d2d_bytes = 0;
  int64_t memsets = 0;
};
Counters counters();
void reset_counters();
/// Seed of thread, block and stream orders (default 1, or PTRAIN_SIMT_SEED). Seed 0 runs
/// threads and blocks in index order; seed 1 in reversed order; others shuffle.
void set_seed(uint64_t seed);
uint64_t seed();
/// The message of the sticky fault (kernel, block, thread, what), "" when none.
const char* fault_message();
/// The emulated device memory arena [begin, end).
void device_arena(const void** begin, const void** end);
/// Emulated device memory in bytes (default 24 GiB, an RTX 4090; PTRAIN_SIMT_DEVICE_MEMORY,
/// e.g. "2G" or "512M"). Must be called before the first CUDA call.
void set_device_memory(size_t bytes);

}  // namespace ptrain::simt

// ---- what kernels see: built-in variables ----
#define threadIdx (::ptrain::simt::detail::g_thread->thread_idx)
#define blockIdx (::ptrain::simt::detail::g_block->block_idx)
#define blockDim (::ptrain::simt::detail::g_block->block_dim)
#define gridDim (::ptrain::simt::detail::g_block->grid_dim)
inline constexpr int warpSize = 32;

#define PTRAIN_SIMT_SITE(what) (::ptrain::simt::Site{__FILE__, __LINE__, what})

// ---- barriers ----
#define __syncthreads() ((void)::ptrain::simt::detail::barrier(PTRAIN_SIMT_SITE("__syncthreads"), 0, 0))
#define __syncthreads_count(p) ::ptrain::simt::detail::barrier(PTRAIN_SIMT_SITE("__syncthreads_count"), (p) ? 1 : 0, 1)
#define __syncthreads_and(p) ::ptrain::simt::detail::barrier(PTRAIN_SIMT_SITE("__syncthreads_and"), (p) ? 1 : 0, 2)
#define __syncthreads_or(p) ::ptrain::simt::detail::barrier(PTRAIN_SIMT_SITE("__syncthreads_or"), (p) ? 1 : 0, 3)

namespace ptrain::simt::detail {
template <class T> inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp shuffles move values of at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T> inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}
template <class T> inline T shfl(Site s, unsigned mask, T v, int param, int width, int kind) {
  return from_bits<T>(warp_op(s, mask, kind, to_bits(v), param, width));
}
}  // namespace ptrain::simt::detail

// ---- warp shuffles, votes, __syncwarp ----
#define __shfl_sync(mask, v, ...) \
  ::ptrain::simt::detail::shfl_call(PTRAIN_SIMT_SITE("__shfl_sync"), 0, mask, v, __VA_ARGS__)
#define __shfl_up_sync(mask, v, ...) \
  ::ptrain::simt::detail::shfl_call(PTRAIN_SIMT_SITE("__shfl_up_sync"), 1, mask, v, __VA_ARGS__)
#define __shfl_down_sync(mask, v, ...) \
  ::ptrain::simt::detail::shfl_call(PTRAIN_SIMT_SITE("__shfl_down_sync"), 2, mask, v, __VA_ARGS__)
#define __shfl_xor_sync(mask, v, ...) \
  ::ptrain::simt::detail::shfl_call(PTRAIN_SIMT_SITE("__shfl_xor_sync"), 3, mask, v, __VA_ARGS__)
#define __ballot_sync(mask, p) \
  static_cast<unsigned>(::ptrain::simt::detail::warp_op(PTRAIN_SIMT_SITE("__ballot_sync"), mask, 4, (p) ? 1 : 0, 0, 32))
#define __any_sync(mask, p) \
  static_cast<int>(::ptrain::simt::detail::warp_op(PTRAIN_SIMT_SITE("__any_sync"), mask, 5, (p) ? 1 : 0, 0, 32))
#define __all_sync(mask, p) \
  static_cast<int>(::ptrain::simt::detail::warp_op(PTRAIN_SIMT_SITE("__all_sync"), mask, 6, (p) ? 1 : 0, 0, 32))
#define __syncwarp(...) ::ptrain::simt::detail::syncwarp_call(PTRAIN_SIMT_SITE("__syncwarp") __VA_OPT__(, ) __VA_ARGS__)

namespace ptrain::simt::detail {
template <class T> inline T shfl_call(Site s, int kind, unsigned mask, T v, int param, int width = 32) {
  return shfl<T>(s, mask, v, param, width, kind);
}
inline void syncwarp_call(Site s, unsigned mask = 0xffffffffu) { (void)warp_op(s, mask, 7, 0, 0, 32); }
unsigned active_mask();
}  // namespace ptrain::simt::detail
inline unsigned __activemask() { return ::ptrain::simt::detail::active_mask(); }
inline unsigned __lanemask_lt() { return (1u << (threadIdx.x % 32u)) - 1u; }

// ---- the templated conveniences of cuda_runtime.h (the emulated build includes only the C API) ----
template <class T> inline cudaError_t cudaMalloc(T** p, size_t bytes) { return ::cudaMalloc(reinterpret_cast<void**>(p), bytes); }
template <class T> inline cudaError_t cudaMallocHost(T** p, size_t bytes) {
  return ::cudaMallocHost(reinterpret_cast<void**>(p), bytes);
}
template <class T> inline cudaError_t cudaFuncSetAttribute(T* kernel, cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr, value);
}

// ---- fences (fibers never run concurrently: ordering is program order) ----
inline void __threadfence() {}
inline void __threadfence_block() {}

// ---- atomics (global and shared memory; plain read-modify-write between fibers) ----
inline int atomicAdd(int* p, int v) { int o = *p; *p = o + v; return o; }
inline unsigned atomicAdd(unsigned* p, unsigned v) { unsigned o = *p; *p = o + v; return o; }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { auto o = *p; *p = o + v; return o; }
inline float atomicAdd(float* p, float v) { float o = *p; *p = o + v; return o; }
inline double atomicAdd(double* p, double v) { double o = *p; *p = o + v; return o; }
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* p, __nv_bfloat16 v) {
  __nv_bfloat16 o = *p;
  *p = __float2bfloat16_rn(__bfloat162float(o) + __bfloat162float(v));
  return o;
}
inline __half atomicAdd(__half* p, __half v) {
  __half o = *p;
  *p = __float2half_rn(__half2float(o) + __half2float(v));
  return o;
}
inline int atomicSub(int* p, int v) { int o = *p; *p = o - v; return o; }
inline unsigned atomicSub(unsigned* p, unsigned v) { unsigned o = *p; *p = o - v; return o; }
inline int atomicMax(int* p, int v) { int o = *p; *p = o > v ? o : v; return o; }
inline unsigned atomicMax(unsigned* p, unsigned v) { unsigned o = *p; *p = o > v ? o : v; return o; }
inline int atomicMin(int* p, int v) { int o = *p; *p = o < v ? o : v; return o; }
inline unsigned atomicMin(unsigned* p, unsigned v) { unsigned o = *p; *p = o < v ? o : v; return o; }
inline int atomicExch(int* p, int v) { int o = *p; *p = v; return o; }
inline unsigned atomicExch(unsigned* p, unsigned v) { unsigned o = *p; *p = v; return o; }
inline float atomicExch(float* p, float v) { float o = *p; *p = v; return o; }
inline int atomicCAS(int* p, int c, int v) { int o = *p; if (o == c) *p = v; return o; }
inline unsigned atomicCAS(unsigned* p, unsigned c, unsigned v) { unsigned o = *p; if (o == c) *p = v; return o; }
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long c, unsigned long long v) {
  auto o = *p;
  if (o == c) *p = v;
  return o;
}

// ---- device intrinsics (the device's rounding where it differs from the host's) ----
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
/// ex2.approx of the product rounded to fp32, as the device computes __expf: the rounding of
/// x·log2(e) makes the relative error grow with |x| (about 2 + 1.5·|x| ulp), unlike expf.
inline float __expf(float x) { return std::exp2f(x * 1.44269504088896341f); }
inline float __exp10f(float x) { return std::exp2f(x * 3.32192809488736235f); }
/// lg2.approx times ln 2, product rounded.
inline float __logf(float x) { return std::log2f(x) * 0.693147180559945309f; }
inline float __log2f(float x) { return std::log2f(x); }
/// __fdividef returns 0 for 2^126 < |y| < 2^128 (the device's approximate reciprocal underflows).
inline float __fdividef(float x, float y) {
  const float ay = std::fabs(y);
  if (ay > 8.50705917e37f && ay < 3.40282347e38f) return std::isinf(x) ? NAN : 0.0f;
  return x / y;
}
/// rsqrt.approx: emulated as 1/sqrt with two roundings (within the device's 2 ulp).
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __frsqrt_rn(float x) { return static_cast<float>(1.0 / std::sqrt(static_cast<double>(x))); }
inline float __saturatef(float x) { return std::isnan(x) ? 0.0f : (x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x)); }
inline float __fmaf_rn(float a, float b, float c) { return std::fmaf(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanhf(float x) { return std::tanh(x); }
template <class T> inline T __ldg(const T* p) { return *p; }
// Device-side integer min/max overloads (CUDA declares them for device code).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
