// tests/cuda/simt_test_util.h — device buffers and seed sweeps for the SIMT runtime tests.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/cuda/runtime.h"

namespace simt_test {

/// A cudaMalloc'd array (freed at scope exit; errors are not thrown from the destructor).
template <class T> struct DevBuf {
  T* p = nullptr;
  size_t n = 0;
  explicit DevBuf(size_t count) : n(count) { CUDA_CHECK(cudaMalloc(&p, count * sizeof(T))); }
  DevBuf(const std::vector<T>& v) : DevBuf(v.size()) { upload(v); }
  ~DevBuf() { (void)cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  void upload(const std::vector<T>& v) { CUDA_CHECK(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice)); }
  std::vector<T> download() const {
    std::vector<T> v(n);
    CUDA_CHECK(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return v;
  }
  void zero() { CUDA_CHECK(cudaMemset(p, 0, n * sizeof(T))); }
};

/// Clears a sticky fault of an earlier test (cudaDeviceReset) so tests stay independent.
inline void reset_device() { (void)cudaDeviceReset(); }

/// Runs `f` (which launches, synchronises and returns the result bits) under the seeds
/// 0 (index order), 1 (reversed), 2, 3 and returns "" when all agree, else a message naming
/// `kernel`, the two seeds and the first differing index.
inline std::string order_check(const std::string& kernel, const std::function<std::vector<float>()>& f) {
  const uint64_t saved = ptrain::simt::seed();
  std::vector<float> ref;
  std::string msg;
  for (uint64_t s : {0, 1, 2, 3}) {
    ptrain::simt::set_seed(s);
    std::vector<float> r = f();
    if (s == 0) {
      ref = r;
      continue;
    }
    for (size_t i = 0; i < r.size() && msg.empty(); ++i)
      if (std::memcmp(&r[i], &ref[i], sizeof(float)) != 0)
        msg = "kernel " + kernel + ": result depends on the thread/block/stream order: seed 0 and seed " +
              std::to_string(s) + " differ at index " + std::to_string(i) + " (" + std::to_string(ref[i]) + " vs " +
              std::to_string(r[i]) + ")";
  }
  ptrain::simt::set_seed(saved);
  return msg;
}

/// "" when every value is finite, else a message naming `kernel` and the first NaN/Inf.
inline std::string finite_check(const std::string& kernel, const std::vector<float>& v) {
  for (size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(v[i]))
      return "kernel " + kernel + " produced " + (std::isnan(v[i]) ? std::string("NaN") : std::to_string(v[i])) + " at index " + std::to_string(i) +
             " (a read of memory never written: fresh device and shared memory hold NaN)";
  return "";
}

inline bool asan_build() {
#if defined(__SANITIZE_ADDRESS__)
  return true;
#else
  return false;
#endif
}

}  // namespace simt_test
