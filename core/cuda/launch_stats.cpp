// core/cuda/launch_stats.cpp — launch counters and CUDA error messages (both CUDA builds).
#include "core/cuda/launch_stats.h"

#include <cuda_runtime_api.h>

#include <string_view>

#include "core/error.h"
#if PTRAIN_CUDA_EMULATED
#include "core/simt/simt.h"
#endif

namespace ptrain::cuda {

namespace {
std::map<std::string, int64_t>& counts() {
  static std::map<std::string, int64_t> c;
  return c;
}
std::string clean_name(const char* k) {
  std::string_view s(k);
  while (!s.empty() && s.front() == '(' && s.back() == ')') s = s.substr(1, s.size() - 2);
  return std::string(s);
}
std::string detail() {
#if PTRAIN_CUDA_EMULATED
  const char* m = ptrain::simt::fault_message();
  if (m && *m) return std::string("\n") + m;
#endif
  return {};
}
}  // namespace

bool emulated() { return PTRAIN_CUDA_EMULATED != 0; }

void after_launch(const char* kernel, int err) {
  const std::string name = clean_name(kernel);
  ++counts()[name];
  if (err != 0) {
    const auto e = static_cast<cudaError_t>(err);
    throw Error(fmt::format("launch of kernel {} failed: {} ({}){}\nHINT: check the grid/block sizes and shared memory against the "
            "RTX 4090 limits (1024 threads, 48 KB static, 99 KB dynamic shared memory per block)",
            name, cudaGetErrorName(e), cudaGetErrorString(e), detail()));
  }
}

void throw_cuda_error(int err, const char* call, const char* file, int line) {
  const auto e = static_cast<cudaError_t>(err);
  throw Error(fmt::format("CUDA error {} ({}) in {} at {}:{}{}\nHINT: a kernel fault is reported by the next synchronising call; "
          "rerun with CUDA_LAUNCH_BLOCKING=1 (GPU) or in the emulated build to name the kernel",
          cudaGetErrorName(e), cudaGetErrorString(e), call, file, line, detail()));
}

std::map<std::string, int64_t> launch_counts() { return counts(); }
int64_t launch_count(const std::string& kernel) {
  auto it = counts().find(kernel);
  return it == counts().end() ? 0 : it->second;
}
void reset_launch_counts() { counts().clear(); }

}  // namespace ptrain::cuda
