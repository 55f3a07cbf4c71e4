// tests/cuda/test_simt.cpp — the SIMT runtime runs correct kernels correctly: indices, shared
// memory, barriers, warp primitives, atomics, thread orders, launch limits, streams and
// events, sticky faults, counters, device properties.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "tests/cuda/simt_kernels.h"
#include "tests/cuda/simt_test_util.h"

using namespace simt_test;

namespace {

class Simt : public ::testing::Test {
 protected:
  void SetUp() override {
    reset_device();
    ptrain::simt::set_seed(2);
  }
  void TearDown() override { reset_device(); }
};

std::string launch_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_F(Simt, ScaleOddSize) {
  const int n = 1001;
  std::vector<float> x(n);
  for (int i = 0; i < n; ++i) x[i] = 0.5f * i;
  DevBuf<float> dx(x), dy(n);
  scale(dx.p, dy.p, 3.0f, n);
  auto y = dy.download();
  for (int i = 0; i < n; ++i) ASSERT_EQ(y[i], 1.5f * i) << i;
}

TEST_F(Simt, RowSumWithBarriersAndShufflesIsOrderIndependent) {
  const int rows = 5, cols = 777;
  std::vector<float> x(rows * cols);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>((i * 37) % 101) * 0.25f;
  DevBuf<float> dx(x), dout(rows);
  EXPECT_EQ(order_check("k_row_sum", [&] {
              row_sum(dx.p, dout.p, rows, cols);
              return dout.download();
            }),
            "");
  auto out = dout.download();
  for (int r = 0; r < rows; ++r) {
    double ref = 0;
    for (int c = 0; c < cols; ++c) ref += x[r * cols + c];
    EXPECT_NEAR(out[r], ref, 1e-6 * ref) << r;  // integers * 0.25: exact in fp32 here
  }
}

TEST_F(Simt, WarpPrimitivesMatchTheirDefinitions) {
  const int threads = 64;
  DevBuf<int> d(8 * threads);
  warp_ops(d.p, threads);
  auto o = d.download();
  for (int t = 0; t < threads; ++t) {
    const int lane = t % 32, base = t - lane;
    unsigned ballot = 0;
    for (int k = 0; k < 32; ++k)
      if (k % 3 == 0) ballot |= 1u << k;
    EXPECT_EQ(o[8 * t + 0], base + (lane ^ 5)) << t;
    EXPECT_EQ(o[8 * t + 1], lane >= 3 ? t - 3 : t) << t;
    EXPECT_EQ(o[8 * t + 2], lane + 3 < 32 ? t + 3 : t) << t;
    EXPECT_EQ(o[8 * t + 3], base + 7) << t;
    EXPECT_EQ(static_cast<unsigned>(o[8 * t + 4]), ballot) << t;
    EXPECT_EQ(o[8 * t + 5], t >= 32 ? 1 : 0) << t;  // lane 8 of warp 1 is thread 40
    EXPECT_EQ(o[8 * t + 6], 0) << t;
    EXPECT_EQ(o[8 * t + 7], base + (lane ^ 4)) << t;  // width 8: xor 4 stays in the segment
  }
}

TEST_F(Simt, DynamicSharedMemoryAnd2dIndices) {
  const int n = 300;
  std::vector<float> x(n);
  std::iota(x.begin(), x.end(), 1.0f);
  DevBuf<float> dx(x), dy(n);
  reverse(dx.p, dy.p, n, 128);
  auto y = dy.download();
  for (int b = 0; b * 128 < n; ++b) {
    for (int t = 0; t < 128; ++t) {
      const int j = b * 128 + (127 - t), i = b * 128 + t;
      if (j < n) {
        EXPECT_EQ(y[j], i < n ? x[i] : 0.0f) << j;
      }
    }
  }
  const int rows = 13, cols = 35;
  DevBuf<int> d2(rows * cols);
  index2d(d2.p, rows, cols);
  auto v = d2.download();
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) ASSERT_EQ(v[r * cols + c], r * 1000 + c);
}

TEST_F(Simt, ThreadOrderFollowsTheSeed) {
  const int threads = 96;
  auto run = [&](uint64_t seed) {
    ptrain::simt::set_seed(seed);
    DevBuf<int> ticket(1), ord(threads), count(1);
    ticket.zero();
    order(ticket.p, ord.p, count.p, threads);
    EXPECT_EQ(count.download()[0], threads / 4);
    return ord.download();
  };
  auto o0 = run(0), o1 = run(1), o2 = run(2), o3 = run(3);
  for (int t = 0; t < threads; ++t) {
    EXPECT_EQ(o0[t], t);
    EXPECT_EQ(o1[t], threads - 1 - t);
  }
  EXPECT_NE(o2, o0);
  EXPECT_NE(o2, o1);
  EXPECT_NE(o2, o3);
  std::vector<int> sorted = o2;
  std::sort(sorted.begin(), sorted.end());
  for (int t = 0; t < threads; ++t) EXPECT_EQ(sorted[t], t);  // a permutation
}

TEST_F(Simt, IntegerAtomicsOnSharedAndGlobalMemory) {
  const int n = 1000;
  std::vector<int> x(n);
  for (int i = 0; i < n; ++i) x[i] = (i * 7) % 23;
  DevBuf<int> dx(x), hist(16);
  hist.zero();
  histogram(dx.p, hist.p, n);
  auto h = hist.download();
  std::vector<int> ref(16, 0);
  for (int v : x) ++ref[v & 15];
  EXPECT_EQ(h, ref);
}

TEST_F(Simt, LaunchLimitsOfAnRtx4090AreRefused) {
  DevBuf<float> y(2048);
  EXPECT_NO_THROW(launch_threads(y.p, 1024));
  const std::string e = launch_error([&] { launch_threads(y.p, 1025); });
  EXPECT_NE(e.find("k_noop_store"), std::string::npos) << e;
  EXPECT_NE(e.find("1024 threads"), std::string::npos) << e;
  // Dynamic shared memory: 60 KB needs the opt-in; 100 KB is over the 99 KB of a 4090.
  const std::string d = launch_error([&] { big_dynamic_shared(y.p, 15 * 1024, false); });
  EXPECT_NE(d.find("opt in"), std::string::npos) << d;
  EXPECT_NO_THROW(big_dynamic_shared(y.p, 15 * 1024, true));
  EXPECT_EQ(y.download()[0], 15 * 1024 - 1.0f);
  const std::string d2 = launch_error([&] { big_dynamic_shared(y.p, 25 * 1024, true); });
  EXPECT_NE(d2.find("99 KB"), std::string::npos) << d2;
}

TEST_F(Simt, StaticSharedOver48KbFaultsNamingTheKernel) {
  DevBuf<float> y(64);
  big_static_shared(y.p);
  const cudaError_t e = cudaDeviceSynchronize();
  EXPECT_EQ(e, cudaErrorLaunchFailure);
  const std::string m = ptrain::simt::fault_message();
  EXPECT_NE(m.find("k_big_static_shared"), std::string::npos) << m;
  EXPECT_NE(m.find("48 KB"), std::string::npos) << m;
}

TEST_F(Simt, ExceptionInAKernelIsAStickyErrorNamingKernelBlockThread) {
  DevBuf<int> y(32);
  throw_in_kernel(y.p);  // deferred: the launch itself succeeds
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
  const std::string m = ptrain::simt::fault_message();
  EXPECT_NE(m.find("kernel k_throw, block (2,0,0), thread (5,0,0)"), std::string::npos) << m;
  EXPECT_NE(m.find("planted exception"), std::string::npos) << m;
  // Sticky: later calls fail too, until the device is reset.
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, 16), cudaErrorLaunchFailure);
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
  const std::string thrown = launch_error([&] { throw_in_kernel(y.p); });
  EXPECT_NE(thrown.find("k_throw"), std::string::npos) << thrown;
  reset_device();
  EXPECT_EQ(cudaMalloc(&p, 16), cudaSuccess);
  EXPECT_EQ(cudaFree(p), cudaSuccess);
}

TEST_F(Simt, DeadlockIsReportedWithTheWaitingSites) {
  DevBuf<int> y(32);
  deadlock(y.p);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
  const std::string m = ptrain::simt::fault_message();
  EXPECT_NE(m.find("k_deadlock"), std::string::npos) << m;
  EXPECT_NE(m.find("__shfl_xor_sync"), std::string::npos) << m;
  EXPECT_NE(m.find("__syncthreads"), std::string::npos) << m;
}

TEST_F(Simt, StreamsWithEventsGiveTheSameBitsUnderEveryStreamOrder) {
  const int n = 333;
  std::vector<float> x(n);
  for (int i = 0; i < n; ++i) x[i] = 0.1f * i;
  DevBuf<float> dx(x), buf(n), dy(n);
  cudaStream_t s1, s2;
  cudaEvent_t ev;
  CUDA_CHECK(cudaStreamCreate(&s1));
  CUDA_CHECK(cudaStreamCreate(&s2));
  CUDA_CHECK(cudaEventCreate(&ev));
  EXPECT_EQ(order_check("k_produce/k_consume", [&] {
              produce(dx.p, buf.p, n, s1);
              CUDA_CHECK(cudaEventRecord(ev, s1));
              CUDA_CHECK(cudaStreamWaitEvent(s2, ev, 0));
              consume(buf.p, dy.p, n, s2);
              CUDA_CHECK(cudaStreamSynchronize(s2));
              auto r = dy.download();
              CUDA_CHECK(cudaMemset(buf.p, 0xFF, n * sizeof(float)));  // poison for the next round
              return r;
            }),
            "");
  auto y = dy.download();
  for (int i = 0; i < n; ++i) ASSERT_EQ(y[i], 2.0f * (x[i] + 1.0f));
  CUDA_CHECK(cudaEventDestroy(ev));
  CUDA_CHECK(cudaStreamDestroy(s1));
  CUDA_CHECK(cudaStreamDestroy(s2));
}

TEST_F(Simt, CountersSeeSynchronisationsAndTransfers) {
  ptrain::simt::reset_counters();
  DevBuf<float> d(256);
  std::vector<float> h(256, 1.0f);
  d.upload(h);
  scale(d.p, d.p, 2.0f, 256);
  auto r = d.download();
  const auto c = ptrain::simt::counters();
  EXPECT_EQ(c.h2d_bytes, 1024);
  EXPECT_EQ(c.d2h_bytes, 1024);
  EXPECT_EQ(c.launches, 1);
  EXPECT_EQ(c.gpu_threads, 256);
  EXPECT_EQ(c.synchronizations, 2);  // the two blocking copies
  EXPECT_EQ(ptrain::cuda::launch_count("k_scale") > 0, true);
}

TEST_F(Simt, FreshDeviceMemoryIsNaNAndPropertiesAreA4090) {
  DevBuf<float> d(100);
  for (float v : d.download()) ASSERT_TRUE(std::isnan(v));
  cudaDeviceProp p;
  CUDA_CHECK(cudaGetDeviceProperties(&p, 0));
  EXPECT_EQ(p.major * 10 + p.minor, 89);
  EXPECT_EQ(p.maxThreadsPerBlock, 1024);
  EXPECT_EQ(p.sharedMemPerBlock, 48u * 1024);
  EXPECT_EQ(p.sharedMemPerBlockOptin, 99u * 1024);
  size_t free_b = 0, total = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total));
  EXPECT_EQ(total, p.totalGlobalMem);
  EXPECT_LT(free_b, total);
}

TEST_F(Simt, CopyOutsideAnAllocationIsRefused) {
  DevBuf<float> d(10);
  std::vector<float> h(11, 0.0f);
  EXPECT_EQ(cudaMemcpy(d.p, h.data(), 11 * sizeof(float), cudaMemcpyHostToDevice), cudaErrorInvalidValue);
  EXPECT_NE(std::string(ptrain::simt::fault_message()).find("outside its device allocation"), std::string::npos);
  (void)cudaGetLastError();
  EXPECT_EQ(cudaMemcpy(h.data(), d.p, 10 * sizeof(float), cudaMemcpyHostToDevice), cudaErrorInvalidValue);  // wrong kind
}

TEST_F(Simt, StackOverflowHitsTheGuardPage) {
  EXPECT_DEATH(
      {
        DevBuf<int> y(1);
        stack_overflow(y.p);
        (void)cudaDeviceSynchronize();
      },
      "stack overflow of a GPU thread in kernel k_stack_overflow");
}

TEST_F(Simt, IntrinsicsRoundLikeTheDevice) {
  // __expf rounds x·log2(e) to fp32 first: its error grows with |x|; expf stays within 1-2 ulp.
  const std::vector<float> x = {0.5f, -3.0f, 20.0f, 80.0f, -80.0f, 3.0e38f};
  DevBuf<float> dx(x), dy(4 * x.size());
  intrinsics(dx.p, dy.p, static_cast<int>(x.size()));
  auto y = dy.download();
  for (size_t i = 0; i < x.size() - 1; ++i) {
    const double ref = std::exp(static_cast<double>(x[i]));
    EXPECT_NEAR(y[4 * i + 1] / ref, 1.0, 3e-7) << x[i];
    EXPECT_NEAR(y[4 * i + 0] / ref, 1.0, 2e-7 * (2.0 + 1.5 * std::fabs(x[i]))) << x[i];
    EXPECT_NEAR(y[4 * i + 3], 1.0 / std::sqrt(std::fabs(x[i]) + 1.0), 2e-7) << x[i];
  }
  EXPECT_NE(y[4 * 3 + 0], y[4 * 3 + 1]) << "__expf(80) should differ from expf(80) in the last bits";
  EXPECT_EQ(y[4 * 5 + 2], 0.0f) << "__fdividef(1, y) is 0 for 2^126 < |y| < 2^128 on the device";
}
