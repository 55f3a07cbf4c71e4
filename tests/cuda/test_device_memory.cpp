// tests/cuda/test_device_memory.cpp — the caching allocator over the CUDA runtime (label cuda:
// runs on the emulated device in CI, on a GPU when there is one). The ctest case runs with
// PTRAIN_SIMT_DEVICE_MEMORY=256M so the out-of-memory path is reachable.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/cuda/device_memory.h"
#include "core/cuda/launch_stats.h"
#include "core/cuda/runtime.h"

using ptrain::cuda::device_allocator;

namespace {
bool have_device() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}
}  // namespace

TEST(DeviceMemory, ReuseStatsAndNaNFill) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  auto& a = device_allocator();
  a.empty_cache();
  const auto s0 = a.stats();
  void* p = a.allocate(1000, nullptr);
  ASSERT_NE(p, nullptr);
  if (ptrain::cuda::emulated()) {
    std::vector<float> h(250);
    CUDA_CHECK(cudaMemcpy(h.data(), p, 1000, cudaMemcpyDeviceToHost));
    for (float v : h) ASSERT_TRUE(std::isnan(v)) << "new allocations are NaN-filled in the emulated build";
  }
  a.deallocate(p);
  for (int i = 0; i < 100; ++i) a.deallocate(a.allocate(1000 + i, nullptr));
  const auto s1 = a.stats();
  EXPECT_EQ(s1.device_allocs - s0.device_allocs, 1) << s1.str();  // one 2 MiB segment, reused
  EXPECT_EQ(s1.allocated, 0u);
  EXPECT_GE(s1.cache_hits - s0.cache_hits, 100);
  a.empty_cache();
  EXPECT_EQ(a.stats().reserved, 0u);
}

TEST(DeviceMemory, OutOfMemoryNamesTheFiguresAndWhatToChange) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  if (!ptrain::cuda::emulated()) GTEST_SKIP() << "needs the emulated device's configured memory size";
  auto& a = device_allocator();
  void* keep = a.allocate(100u << 20, nullptr);
  try {
    (void)a.allocate(200u << 20, nullptr);
    FAIL() << "a 200 MiB allocation on a 256 MiB device holding 100 MiB succeeded";
  } catch (const ptrain::Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("out of memory"), std::string::npos) << m;
    EXPECT_NE(m.find("reserved"), std::string::npos) << m;
    EXPECT_NE(m.find("largest free block"), std::string::npos) << m;
    EXPECT_NE(m.find("train.micro_batch"), std::string::npos) << m;
    EXPECT_NE(m.find("train.recompute"), std::string::npos) << m;
    EXPECT_NE(m.find("parallel.pp"), std::string::npos) << m;
  }
  a.deallocate(keep);
  // After freeing, the same request fits (the cache is released on demand).
  void* big = a.allocate(200u << 20, nullptr);
  EXPECT_NE(big, nullptr);
  a.deallocate(big);
  a.empty_cache();
}

TEST(DeviceMemory, TensorAllocatorIsOnTheDevice) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  auto& ta = ptrain::cuda::cuda_tensor_allocator();
  EXPECT_EQ(ta.device(), ptrain::Device::cuda);
  void* p = ta.allocate(4096);
  EXPECT_EQ(device_allocator().block_size(p), 4096u);
  ta.deallocate(p, 4096);
}
