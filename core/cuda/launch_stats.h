// core/cuda/launch_stats.h — per-kernel launch counters and the CUDA error path.
//
// Every launch goes through PT_LAUNCH (core/cuda/runtime.h), which calls after_launch:
// the launch is counted under the kernel's name (so a test can prove that an op ran its
// own kernel, and a benchmark can count launches per step), and a refused launch throws.
// Host-only C++ (no CUDA types), includable from nvcc and g++ translation units.
#pragma once
#include <cstdint>
#include <map>
#include <string>

namespace ptrain::cuda {

/// Counts the launch of `kernel` (its source spelling, parentheses stripped) and throws
/// ptrain::Error naming it when `err` (an int-cast cudaError_t) is not success.
void after_launch(const char* kernel, int err);
template <class E> inline void after_launch(const char* kernel, E err) { after_launch(kernel, static_cast<int>(err)); }
/// Throws ptrain::Error for a failed CUDA call: the error's name and text, the call, the
/// place, and in the emulated build the fault's kernel, block and thread.
[[noreturn]] void throw_cuda_error(int err, const char* call, const char* file, int line);
template <class E>
[[noreturn]] inline void throw_cuda_error(E err, const char* call, const char* file, int line) {
  throw_cuda_error(static_cast<int>(err), call, file, line);
}
/// Checks a CUDA runtime call in host code that does not include core/cuda/runtime.h (whose
/// CUDA_CHECK is the same check): throws through throw_cuda_error when it is not success.
#define PT_CUDA_RT_CHECK(expr)                                                                   \
  do {                                                                                           \
    const auto pt_rt_err_ = (expr);                                                              \
    if (static_cast<int>(pt_rt_err_) != 0)                                                       \
      ::ptrain::cuda::throw_cuda_error(pt_rt_err_, #expr, __FILE__, __LINE__);                   \
  } while (0)
/// Launches per kernel name since the last reset.
std::map<std::string, int64_t> launch_counts();
int64_t launch_count(const std::string& kernel);
void reset_launch_counts();
/// True in the emulated build (SIMT runtime on the CPU).
bool emulated();

}  // namespace ptrain::cuda
