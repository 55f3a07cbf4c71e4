// tests/cuda/test_simt_planted.cpp — the emulator is proven able to fail: one planted bug per
// failure mode (tests/cuda/simt_kernels.cu), each caught with a message naming the kernel.
// Bugs that only AddressSanitizer or UBSan can see (a global off-by-one inside the 256-byte
// rounding, a misaligned float4) run in the ASan + UBSan tree and say "skipped" elsewhere.
#include <gtest/gtest.h>

#include <cmath>

#include "tests/cuda/simt_kernels.h"
#include "tests/cuda/simt_test_util.h"

using namespace simt_test;

namespace {

class Planted : public ::testing::Test {
 protected:
  void SetUp() override {
    reset_device();
    ptrain::simt::set_seed(2);
  }
  void TearDown() override { reset_device(); }
};

std::vector<float> ramp(int n) {
  std::vector<float> v(n);
  for (int i = 0; i < n; ++i) v[i] = 1.0f + 0.5f * i;
  return v;
}

/// The sticky fault of the last synchronisation ("" when the kernels ran clean).
std::string sync_fault() {
  if (cudaDeviceSynchronize() == cudaSuccess) return "";
  return ptrain::simt::fault_message();
}

bool ubsan_build() {
#if defined(PTRAIN_UBSAN)
  return true;
#else
  return false;
#endif
}

}  // namespace

TEST_F(Planted, OffByOneTileBoundUnderAsan) {
  if (!asan_build()) GTEST_SKIP() << "a write into the allocation's slack needs AddressSanitizer (the ASan tree)";
  const int n = 100;  // 400 bytes: the 256-byte rounding leaves slack that only ASan guards
  EXPECT_DEATH(
      {
        DevBuf<float> x(ramp(n));
        DevBuf<float> y(n);
        off_by_one(x.p, y.p, n);
        (void)cudaDeviceSynchronize();
      },
      "AddressSanitizer(.|\n)*kernel bug_off_by_one");
}

TEST_F(Planted, OutOfBoundsSharedIndex) {
  DevBuf<float> x(ramp(64)), y(64);
  if (asan_build()) {
    EXPECT_DEATH(
        {
          shared_oob(x.p, y.p);
          (void)cudaDeviceSynchronize();
        },
        "(AddressSanitizer|runtime error)(.|\n)*bug_shared_oob");
    return;
  }
  shared_oob(x.p, y.p);
  const std::string m = sync_fault();
  EXPECT_NE(m.find("kernel bug_shared_oob"), std::string::npos) << m;
  EXPECT_NE(m.find("out-of-bounds write to shared memory after 'tile'"), std::string::npos) << m;
}

TEST_F(Planted, ReadOfSharedMemoryNeverWritten) {
  DevBuf<float> x(ramp(64)), y(64);
  shared_uninit(x.p, y.p);
  const std::string m = finite_check("bug_shared_uninit", y.download());
  EXPECT_NE(m.find("kernel bug_shared_uninit produced NaN at index 1"), std::string::npos) << m;
}

TEST_F(Planted, BarrierInsideABranch) {
  DevBuf<float> x(ramp(64)), y(64);
  barrier_in_branch(x.p, y.p, 50);  // threads 50..63 return before the barrier
  const std::string m = sync_fault();
  EXPECT_NE(m.find("kernel bug_barrier_in_branch"), std::string::npos) << m;
  EXPECT_NE(m.find("reached by 50 of 64 threads while 14 have exited"), std::string::npos) << m;
  // The same kernel with every thread on the path is fine.
  reset_device();
  DevBuf<float> x2(ramp(64)), y2(64);
  barrier_in_branch(x2.p, y2.p, 64);
  EXPECT_EQ(sync_fault(), "");
}

TEST_F(Planted, BarriersInBothArmsOfAnIfElse) {
  DevBuf<float> x(ramp(64)), y(64);
  barrier_both_arms(x.p, y.p);
  const std::string m = sync_fault();
  EXPECT_NE(m.find("kernel bug_barrier_both_arms"), std::string::npos) << m;
  EXPECT_NE(m.find("different barriers"), std::string::npos) << m;
  EXPECT_NE(m.find("32 thread(s) wait at __syncthreads"), std::string::npos) << m;
}

TEST_F(Planted, MissingBarrierIsCaughtByTheOrderCheck) {
  DevBuf<float> x(ramp(64)), y(64);
  const std::string m = order_check("bug_missing_barrier", [&] {
    missing_barrier(x.p, y.p);
    return y.download();
  });
  EXPECT_NE(m.find("kernel bug_missing_barrier: result depends on the thread/block/stream order"), std::string::npos)
      << m;
}

TEST_F(Planted, MissingStreamEventWait) {
  const int n = 200;
  DevBuf<float> x(ramp(n)), buf(n), y(n);
  cudaStream_t s1, s2;
  CUDA_CHECK(cudaStreamCreate(&s1));
  CUDA_CHECK(cudaStreamCreate(&s2));
  const std::string m = order_check("k_produce/k_consume", [&] {
    produce(x.p, buf.p, n, s1);
    consume(buf.p, y.p, n, s2);  // no cudaStreamWaitEvent(s2, recorded on s1)
    CUDA_CHECK(cudaDeviceSynchronize());
    auto r = y.download();
    CUDA_CHECK(cudaMemset(buf.p, 0xFF, n * sizeof(float)));
    return r;
  });
  EXPECT_NE(m.find("kernel k_produce/k_consume: result depends on the thread/block/stream order"), std::string::npos)
      << m;
  CUDA_CHECK(cudaStreamDestroy(s1));
  CUDA_CHECK(cudaStreamDestroy(s2));
}

TEST_F(Planted, UnzeroedAccumulator) {
  const int n = 256;
  DevBuf<float> x(ramp(n)), acc(n / 64);
  unzeroed_accumulator(x.p, acc.p, n);
  const std::string m = finite_check("bug_unzeroed_accumulator", acc.download());
  EXPECT_NE(m.find("kernel bug_unzeroed_accumulator produced NaN at index 0"), std::string::npos) << m;
  // Zeroed, the same kernel is right.
  acc.zero();
  unzeroed_accumulator(x.p, acc.p, n);
  EXPECT_EQ(finite_check("bug_unzeroed_accumulator", acc.download()), "");
}

TEST_F(Planted, HostDereferenceOfADevicePointer) {
  EXPECT_DEATH(
      {
        float* d = nullptr;
        CUDA_CHECK(cudaMalloc(&d, 64 * sizeof(float)));
        volatile float* v = d;
        v[3] = 1.0f;  // host code writing device memory
      },
      "host code dereferenced device pointer");
}

TEST_F(Planted, MisalignedFloat4Load) {
  if (!ubsan_build()) GTEST_SKIP() << "a misaligned vector load is caught by UBSan (the ASan + UBSan tree)";
  EXPECT_DEATH(
      {
        DevBuf<float> x(ramp(132));
        DevBuf<float> y(32);
        misaligned_float4(x.p, y.p, 32);
        (void)cudaDeviceSynchronize();
      },
      "misaligned(.|\n)*bug_misaligned_float4");
}

TEST_F(Planted, ShuffleOverExitedLanes) {
  DevBuf<float> x(ramp(32)), y(32);
  shuffle_exited(x.p, y.p);
  const std::string m = sync_fault();
  EXPECT_NE(m.find("kernel bug_shuffle_exited"), std::string::npos) << m;
  EXPECT_NE(m.find("has exited (a shuffle or vote over exited lanes)"), std::string::npos) << m;
}

TEST_F(Planted, FloatAtomicWhoseOrderChangesTheBits) {
  const int n = 4096;
  std::vector<float> v(n);
  for (int i = 0; i < n; ++i) v[i] = (i % 5 == 0 ? 1000.0f : 1.0f) / static_cast<float>(1 + i % 97);
  DevBuf<float> x(v), sum(1);
  const std::string m = order_check("bug_float_atomic", [&] {
    sum.zero();
    float_atomic(x.p, sum.p, n);
    return sum.download();
  });
  EXPECT_NE(m.find("kernel bug_float_atomic: result depends on the thread/block/stream order"), std::string::npos) << m;
}
