// tests/cuda/test_cuda_device.cpp — the nvcc build's first kernel on a real GPU.
// Skipped (never passed) where the machine has no GPU.
#include <gtest/gtest.h>

#include <vector>

#include "core/cuda/device.h"

TEST(CudaDevice, SaxpyMatchesHost) {
  if (ptrain::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device on this machine";
  auto info = ptrain::cuda::device_info(0);
  EXPECT_GE(info.major, 7);
  const long n = 1000003;  // not a multiple of the block size
  std::vector<float> x(n), y(n), ref(n);
  for (long i = 0; i < n; ++i) {
    x[i] = static_cast<float>(i % 97) * 0.5f;
    y[i] = static_cast<float>(i % 13);
    ref[i] = 3.0f * x[i] + y[i];
  }
  ptrain::cuda::saxpy_roundtrip(0, 3.0f, x.data(), y.data(), n);
  for (long i = 0; i < n; ++i) ASSERT_EQ(y[i], ref[i]) << "at " << i;
}
