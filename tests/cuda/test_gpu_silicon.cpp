// tests/cuda/test_gpu_silicon.cpp — checks that need real silicon (label gpu): the device is an
// sm_89/sm_90-class GPU and the nvcc-built kernel runs on it. Skipped (never passed) in the
// emulated build and on machines without a GPU.
#include <gtest/gtest.h>

#include <vector>

#include "core/cuda/device.h"
#include "core/cuda/launch_stats.h"

TEST(GpuSilicon, RealDeviceRunsTheNvccKernel) {
  if (ptrain::cuda::emulated()) GTEST_SKIP() << "emulated build: no real GPU behind the CUDA API";
  if (ptrain::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device on this machine";
  const auto info = ptrain::cuda::device_info(0);
  EXPECT_GE(info.major * 10 + info.minor, 89) << info.name << " is older than the sm_89 build targets";
  const long n = 1 << 20;
  std::vector<float> x(n, 2.0f), y(n, 1.0f);
  ptrain::cuda::saxpy_roundtrip(0, 0.5f, x.data(), y.data(), n);
  for (long i = 0; i < n; i += 4099) ASSERT_EQ(y[i], 2.0f);
}
