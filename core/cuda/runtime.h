// core/cuda/runtime.h — the one runtime header: every .cu file includes it first.
//
// The same kernel sources build twice (DESIGN.md, "Two backends, three builds"):
//  * under nvcc (sm_89, sm_90) against the CUDA runtime;
//  * under g++ against the SIMT runtime of core/simt (PTRAIN_CUDA_EMULATION=ON), which runs
//    each GPU thread as a fiber and provides the CUDA runtime subset over host memory.
// Everything that differs between the two lives here; kernel bodies carry no #ifdef.
//
//   PT_SHARED(T, name, dims)      static shared memory:   PT_SHARED(float, tile, [32][33]);
//                                 a scalar leaves dims empty: PT_SHARED(float, total, );
//   PT_DYNAMIC_SHARED(T, name)    dynamic shared memory (size given at launch) as T* name
//   PT_LAUNCH(kernel, grid, block, smem_bytes, stream, args...)
//                                 the one launch (no `<<<>>>` anywhere else); a template
//                                 kernel goes in parentheses: PT_LAUNCH((k<float, 4>), ...).
//                                 Counts the launch by kernel name and throws ptrain::Error
//                                 naming the kernel when the launch is refused.
//   CUDA_CHECK(expr)              throws ptrain::Error with the CUDA error, file and line
//                                 (and, emulated, the fault's kernel, block and thread).
//
// `__shared__` and `<<<` are refused outside this header by scripts/check_cuda_sources.sh.
#pragma once

// PTRAIN_CUDA_EMULATED comes from the build (a public definition of ptrain_cuda): 1 in the
// emulated build, 0 in the nvcc build (for .cu files and for host .cpp files alike).
#if !defined(PTRAIN_CUDA_EMULATED)
#error "core/cuda/runtime.h needs PTRAIN_CUDA_EMULATED: link the target against ptrain_cuda"
#endif
#if PTRAIN_CUDA_EMULATED
#include "core/simt/simt.h"
#else
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

#include "core/cuda/launch_stats.h"

// PT_DEPAREN((a<b, c>)) -> a<b, c>; PT_DEPAREN(a) -> a
#define PT_DEPAREN(X) PT_DEPAREN_ESC_(PT_DEPAREN_ISH_ X)
#define PT_DEPAREN_ISH_(...) PT_DEPAREN_ISH_ __VA_ARGS__
#define PT_DEPAREN_ESC_(...) PT_DEPAREN_ESC2_(__VA_ARGS__)
#define PT_DEPAREN_ESC2_(...) PT_DEPAREN_VAN_##__VA_ARGS__
#define PT_DEPAREN_VAN_PT_DEPAREN_ISH_

#define CUDA_CHECK(expr)                                                                                  \
  do {                                                                                                    \
    const cudaError_t pt_cuda_err_ = (expr);                                                              \
    if (pt_cuda_err_ != cudaSuccess) ::ptrain::cuda::throw_cuda_error(pt_cuda_err_, #expr, __FILE__, __LINE__); \
  } while (0)

#if PTRAIN_CUDA_EMULATED
#define PT_SHARED(T, name, dims)                                                                    \
  static const ::ptrain::simt::detail::SharedSite name##_pt_site_{#name, sizeof(T dims), alignof(T dims)}; \
  T(&name) dims = *static_cast<T(*) dims>(::ptrain::simt::detail::static_shared(&name##_pt_site_))
#define PT_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(::ptrain::simt::detail::dynamic_shared())
#define PT_LAUNCH(kernel, grid, block, smem, stream, ...)                                            \
  do {                                                                                               \
    ::ptrain::simt::launch(#kernel, PT_DEPAREN(kernel), dim3(grid), dim3(block), (smem), (stream) __VA_OPT__(, ) __VA_ARGS__); \
    ::ptrain::cuda::after_launch(#kernel, cudaGetLastError());                                       \
  } while (0)
#else
#define PT_SHARED(T, name, dims) __shared__ T name dims
#define PT_DYNAMIC_SHARED(T, name)                                    \
  extern __shared__ __align__(16) unsigned char name##_pt_raw_[];    \
  T* name = reinterpret_cast<T*>(name##_pt_raw_)
#define PT_LAUNCH(kernel, grid, block, smem, stream, ...)                                     \
  do {                                                                                        \
    PT_DEPAREN(kernel)<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__);                  \
    ::ptrain::cuda::after_launch(#kernel, cudaGetLastError());                                \
  } while (0)
#endif
