// tests/cuda/test_gemm.cpp — the device GEMM layer (core/cuda/gemm.h) against the CPU GEMM.
//
// Every combination the backend uses: trans_a × trans_b, inputs f32/bf16/f16, C in the input
// dtype and in f32, beta 0 (C is NaN and must not be read) and 1, bias epilogue, strided
// batches (batch 3, strides with padding), odd shapes (M = 37, N = 100, K = 1, K = 513),
// leading dimensions larger than the row length (padding filled with random values, so an
// ignored ld reads the wrong numbers; C's padding must stay untouched).
// Reference: core/cpu/kernels.h gemm<double> (cblas_dgemm) on the same inputs already rounded
// to the dtype's grid, bias added in double. Tolerance per element (justified by dtype):
//   |dev - ref| <= (K + 4) · 2^-24 · S   +  u_out · |ref|  (+ 2^-24 absolute for f16 outputs)
// where S = |alpha| Σ_k |a||b| + |beta c| + |bias| (fp32 accumulation of K products, a few
// fp32 operations in the epilogue: the classic n·u bound), and u_out the relative rounding of
// the output once (0 for f32; 2^-8 for bf16, 2^-11 for f16: a half ulp of the output is at
// most 2^-9 / 2^-12 of |value|, doubled for the fp32 error before rounding). TF32 (fp32
// inputs rounded to 10 mantissa bits): 2 · 2^-11 · S more.
// A planted bug (a valid but wrong ld) is shown to be caught, and an invalid ld to be refused.
// The process-wide TF32 switch (set_allow_tf32) is shown to reach the GEMMs of the linear
// helpers and of attention (ops::linear on device tensors: tests/cuda/test_device_ops.cpp).
//
// Built twice (tests/cuda/gemm.cmake): test_gemm (label cuda: the emulated device in CI, a
// GPU when present) and, with PTRAIN_GEMM_GPU_TEST=1, test_gemm_gpu (label gpu: real cuBLASLt
// only, skipped in the emulated build or without a device; adds large shapes).
#include <gtest/gtest.h>

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/cpu/kernels.h"
#include "core/cuda/attention.h"
#include "core/cuda/device.h"
#include "core/cuda/gemm.h"
#include "core/cuda/launch_stats.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"

#if PTRAIN_CUDA_EMULATED
#include "core/simt/simt.h"
#endif
#include "tests/cuda/device_test_util.h"

#ifndef PTRAIN_GEMM_GPU_TEST
#define PTRAIN_GEMM_GPU_TEST 0
#endif

namespace ptrain::cuda {
namespace {

#define SKIP_WITHOUT_DEVICE()                                                                   \
  do {                                                                                          \
    if (PTRAIN_GEMM_GPU_TEST && emulated()) GTEST_SKIP() << "needs real silicon (emulated build)"; \
    if (device_count() == 0) GTEST_SKIP() << "no CUDA device";                                  \
  } while (0)

void ok(cudaError_t e, const char* what) { ASSERT_EQ(e, cudaSuccess) << what << ": " << cudaGetErrorString(e); }

using test::decode;
using test::dev_size;
using test::encode;

/// A device buffer (freed at scope end).
struct DevBuf {
  void* p = nullptr;
  size_t bytes = 0;
  explicit DevBuf(size_t n) : bytes(n) {
    if (cudaMalloc(&p, std::max<size_t>(n, 1)) != cudaSuccess) throw Error("cudaMalloc failed in test");
  }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  void upload(const std::vector<uint8_t>& h) {
    if (cudaMemcpy(p, h.data(), h.size(), cudaMemcpyHostToDevice) != cudaSuccess) throw Error("upload failed");
  }
  std::vector<uint8_t> download() const {
    std::vector<uint8_t> h(bytes);
    if (cudaMemcpy(h.data(), p, bytes, cudaMemcpyDeviceToHost) != cudaSuccess) throw Error("download failed");
    return h;
  }
};

std::vector<float> random_on_grid(size_t n, DType t, uint64_t seed) {
  std::vector<float> v(n);
  const PhiloxKey key{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
  for (size_t i = 0; i < n; ++i) {
    const auto r = philox4x32({static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32), 0, 0}, key);
    v[i] = static_cast<float>(u32_to_unit(r[0]) * 2.0 - 1.0);  // (-1, 1]
  }
  round_to_dtype(v.data(), static_cast<int64_t>(n), t);
  return v;
}

struct Case {
  bool ta = false, tb = false;
  int64_t M = 1, N = 1, K = 1;
  DType ab = DType::f32, c = DType::f32;
  float alpha = 1.0f, beta = 0.0f;
  bool bias = false;
  int batch = 1;
  int64_t pad = 0;         ///< extra elements per row (ld = row length + pad)
  int64_t stride_pad = 0;  ///< extra elements between batch matrices
  bool tf32 = false;
  std::string name() const {
    return std::string("ta=") + (ta ? "1" : "0") + " tb=" + (tb ? "1" : "0") + " M=" + std::to_string(M) +
           " N=" + std::to_string(N) + " K=" + std::to_string(K) + " " + std::string(dtype_name(ab)) + "->" +
           std::string(dtype_name(c)) + " beta=" + std::to_string(beta) + (bias ? " bias" : "") +
           " batch=" + std::to_string(batch) + " pad=" + std::to_string(pad) + (tf32 ? " tf32" : "");
  }
};

/// Result of one device run compared with the fp64 CPU GEMM.
struct Outcome {
  int64_t bad = 0;          ///< elements outside the tolerance
  int64_t pad_changed = 0;  ///< padding elements of C that changed
  double worst = 0;         ///< max |err| / tol
  std::string first;
};

/// Runs case `c` on the device. `lie_lda`: the lda passed to gemm (0: the true one) — the
/// planted bug.
Outcome run_case(const Case& c, uint64_t seed, int64_t lie_lda = 0) {
  const int64_t a_rows = c.ta ? c.K : c.M, a_cols = c.ta ? c.M : c.K;
  const int64_t b_rows = c.tb ? c.N : c.K, b_cols = c.tb ? c.K : c.N;
  const int64_t lda = a_cols + c.pad, ldb = b_cols + c.pad, ldc = c.N + c.pad;
  const int64_t sa = a_rows * lda + c.stride_pad, sb = b_rows * ldb + c.stride_pad, sc = c.M * ldc + c.stride_pad;
  const size_t na = static_cast<size_t>(sa * c.batch), nb = static_cast<size_t>(sb * c.batch),
               nc = static_cast<size_t>(sc * c.batch);
  const auto ha = random_on_grid(na, c.ab, seed), hb = random_on_grid(nb, c.ab, seed + 1);
  const auto hc0 = random_on_grid(nc, c.c, seed + 2), hbias = random_on_grid(static_cast<size_t>(c.N), c.c, seed + 3);
  DevBuf da(na * dev_size(c.ab)), db(nb * dev_size(c.ab)), dc(nc * dev_size(c.c)), dbias(hbias.size() * dev_size(c.c));
  da.upload(encode(ha, c.ab));
  db.upload(encode(hb, c.ab));
  dbias.upload(encode(hbias, c.c));
  std::vector<uint8_t> c_before;
  if (c.beta != 0.0f) {
    c_before = encode(hc0, c.c);
  } else {
    c_before.assign(nc * dev_size(c.c), 0xFF);  // NaN everywhere: beta = 0 must not read C
  }
  dc.upload(c_before);

  GemmDesc d;
  d.trans_a = c.ta, d.trans_b = c.tb, d.M = c.M, d.N = c.N, d.K = c.K;
  d.ab_dtype = c.ab, d.c_dtype = c.c;
  d.lda = lie_lda ? lie_lda : lda, d.ldb = ldb, d.ldc = ldc;
  d.batch = c.batch, d.stride_a = sa, d.stride_b = sb, d.stride_c = sc;
  d.allow_tf32 = c.tf32;
  gemm(d, c.alpha, da.p, db.p, c.beta, dc.p, c.bias ? dbias.p : nullptr);
  if (cudaDeviceSynchronize() != cudaSuccess) throw Error("cudaDeviceSynchronize failed after gemm");
  const auto raw = dc.download();
  const auto out = decode(raw, c.c);
  const auto before = decode(c_before, c.c);

  // fp64 reference and S = Σ|terms| with the CPU GEMM.
  std::vector<double> A(ha.begin(), ha.end()), B(hb.begin(), hb.end()), absA(na), absB(nb);
  for (size_t i = 0; i < na; ++i) absA[i] = std::fabs(A[i]);
  for (size_t i = 0; i < nb; ++i) absB[i] = std::fabs(B[i]);
  std::vector<double> ref(static_cast<size_t>(c.M * c.N)), mag(ref.size());
  const double u_out = c.c == DType::bf16 ? 0x1p-8 : c.c == DType::f16 ? 0x1p-11 : 0.0;
  const double abs_floor = c.c == DType::f16 ? 0x1p-24 : 0.0;
  const double acc_u = (static_cast<double>(c.K) + 4.0) * 0x1p-24 + (c.tf32 ? 2.0 * 0x1p-11 : 0.0);
  Outcome o;
  for (int b = 0; b < c.batch; ++b) {
    cpu::gemm<double>(c.ta, c.tb, c.M, c.N, c.K, c.alpha, A.data() + b * sa, lda, B.data() + b * sb, ldb, 0.0,
                      ref.data(), c.N);
    cpu::gemm<double>(c.ta, c.tb, c.M, c.N, c.K, std::fabs(c.alpha), absA.data() + b * sa, lda, absB.data() + b * sb,
                      ldb, 0.0, mag.data(), c.N);
    for (int64_t i = 0; i < c.M; ++i)
      for (int64_t j = 0; j < c.N; ++j) {
        const size_t r = static_cast<size_t>(i * c.N + j), ci = static_cast<size_t>(b * sc + i * ldc + j);
        double want = ref[r], s = mag[r];
        if (c.beta != 0.0f) {
          want += static_cast<double>(c.beta) * hc0[ci];
          s += std::fabs(static_cast<double>(c.beta) * hc0[ci]);
        }
        if (c.bias) {
          want += hbias[static_cast<size_t>(j)];
          s += std::fabs(static_cast<double>(hbias[static_cast<size_t>(j)]));
        }
        const double tol = acc_u * s + u_out * std::fabs(want) + abs_floor + 1e-30;
        const double err = std::fabs(static_cast<double>(out[ci]) - want);
        const double ratio = std::isfinite(err) ? err / tol : std::numeric_limits<double>::infinity();
        o.worst = std::max(o.worst, ratio);
        if (!(err <= tol)) {
          if (o.bad++ == 0)
            o.first = "batch " + std::to_string(b) + " C[" + std::to_string(i) + "," + std::to_string(j) +
                      "] = " + std::to_string(out[ci]) + ", want " + std::to_string(want) + " (tol " +
                      std::to_string(tol) + ")";
        }
      }
  }
  // Padding of C (columns N..ldc, gaps between batches) must be untouched.
  std::vector<bool> inside(nc, false);
  for (int b = 0; b < c.batch; ++b)
    for (int64_t i = 0; i < c.M; ++i)
      for (int64_t j = 0; j < c.N; ++j) inside[static_cast<size_t>(b * sc + i * ldc + j)] = true;
  const size_t es = dev_size(c.c);
  for (size_t i = 0; i < nc; ++i)
    if (!inside[i] && std::memcmp(&raw[i * es], &c_before[i * es], es) != 0) ++o.pad_changed;
  return o;
}

std::vector<Case> backend_cases() {
  std::vector<Case> cases;
  const DType dts[] = {DType::f32, DType::bf16, DType::f16};
  // Every transposition × input dtype × output dtype × beta × bias, on an odd shape with ld padding.
  for (DType ab : dts)
    for (DType cd : {ab, DType::f32}) {
      if (ab == DType::f32 && cd != ab) continue;
      for (int t = 0; t < 4; ++t)
        for (float beta : {0.0f, 1.0f})
          for (bool bias : {false, true}) {
            Case c;
            c.ta = t & 1, c.tb = (t >> 1) & 1, c.M = 37, c.N = 100, c.K = 67, c.ab = ab, c.c = cd;
            c.beta = beta, c.bias = bias, c.pad = 3;
            cases.push_back(c);
          }
    }
  // Odd K, strided batches, alpha != 1, no padding.
  for (DType ab : dts) {
    for (int64_t K : {int64_t(1), int64_t(513)}) {
      Case c;
      c.M = 37, c.N = 100, c.K = K, c.ab = ab, c.c = ab, c.tb = true, c.bias = true;
      cases.push_back(c);
    }
    Case b;  // strided batch with padding between matrices and rows
    b.M = 37, b.N = 100, b.K = 33, b.ab = ab, b.c = ab == DType::f32 ? ab : DType::f32, b.batch = 3, b.pad = 5,
    b.stride_pad = 7, b.beta = 1.0f, b.alpha = 0.5f, b.ta = true;
    cases.push_back(b);
    b.c = ab, b.ta = false, b.tb = true, b.bias = true, b.beta = 0.0f;
    cases.push_back(b);
  }
  Case tf;  // TF32 (train.tf32: true)
  tf.M = 64, tf.N = 96, tf.K = 128, tf.tf32 = true, tf.tb = true;
  cases.push_back(tf);
  if (PTRAIN_GEMM_GPU_TEST) {  // sizes where cuBLASLt picks tensor-core / split-K kernels
    for (DType ab : dts) {
      Case big;
      big.M = 1024, big.N = 768, big.K = 4096, big.ab = ab, big.c = ab, big.tb = true, big.bias = true;
      cases.push_back(big);
      big.c = DType::f32, big.bias = false, big.ta = true, big.tb = false, big.beta = 1.0f;
      cases.push_back(big);
    }
  }
  return cases;
}

TEST(CudaGemm, EveryBackendCombinationMatchesCpuGemm) {
  SKIP_WITHOUT_DEVICE();
  uint64_t seed = 1000;
  int n = 0;
  for (const Case& c : backend_cases()) {
    const int64_t before = launch_count("cublasLtMatmul");
    const Outcome o = run_case(c, seed += 10);
    EXPECT_EQ(o.bad, 0) << c.name() << ": " << o.first;
    EXPECT_EQ(o.pad_changed, 0) << c.name() << ": C's padding was written";
    EXPECT_EQ(launch_count("cublasLtMatmul"), before + 1) << c.name();
    ++n;
  }
  std::printf("%d GEMM cases checked\n", n);
}

// The planted bug: a leading dimension that is valid but wrong (the rows of A are 3 elements
// longer than the lda passed) reads the wrong numbers, and the comparison catches it.
TEST(CudaGemm, PlantedWrongLeadingDimensionIsCaught) {
  SKIP_WITHOUT_DEVICE();
  Case c;
  c.M = 37, c.N = 100, c.K = 67, c.pad = 3, c.ab = DType::bf16, c.c = DType::bf16;
  const Outcome good = run_case(c, 77);
  EXPECT_EQ(good.bad, 0) << good.first;
  const Outcome bad = run_case(c, 77, /*lie_lda=*/c.K);
  EXPECT_GT(bad.bad, c.M * c.N / 2) << "a wrong lda went unnoticed";
  // An lda shorter than a row is refused before reaching cuBLASLt.
  EXPECT_THROW(run_case(c, 77, /*lie_lda=*/c.K - 1), Error);
}

// cuBLASLt itself (the emulated subset, and the real library) refuses ld < rows.
TEST(CudaGemm, CublasLtRefusesLeadingDimensionBelowRows) {
  SKIP_WITHOUT_DEVICE();
  cublasLtHandle_t h = nullptr;
  ASSERT_EQ(cublasLtCreate(&h), CUBLAS_STATUS_SUCCESS);
  cublasLtMatmulDesc_t desc = nullptr;
  ASSERT_EQ(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), CUBLAS_STATUS_SUCCESS);
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, cl = nullptr;
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&a, CUDA_R_32F, 16, 8, 15), CUBLAS_STATUS_SUCCESS);  // ld 15 < 16 rows
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&b, CUDA_R_32F, 8, 4, 8), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&cl, CUDA_R_32F, 16, 4, 16), CUBLAS_STATUS_SUCCESS);
  DevBuf da(16 * 8 * 4), db(8 * 4 * 4), dc(16 * 4 * 4);
  const float alpha = 1, beta = 0;
  const cublasStatus_t st =
      cublasLtMatmul(h, desc, &alpha, da.p, a, db.p, b, &beta, dc.p, cl, dc.p, cl, nullptr, nullptr, 0, nullptr);
  EXPECT_TRUE(st == CUBLAS_STATUS_INVALID_VALUE || st == CUBLAS_STATUS_NOT_SUPPORTED) << cublasLtGetStatusName(st);
  cublasLtMatrixLayoutDestroy(a);
  cublasLtMatrixLayoutDestroy(b);
  cublasLtMatrixLayoutDestroy(cl);
  cublasLtMatmulDescDestroy(desc);
  cublasLtDestroy(h);
  ok(cudaDeviceSynchronize(), "sync");
}

/// The model's three uses against core/cpu/kernels.h linear_* in double.
TEST(CudaGemm, LinearHelpersMatchCpuLinear) {
  SKIP_WITHOUT_DEVICE();
  const int64_t M = 37, K = 65, N = 100;
  for (DType dt : {DType::f32, DType::bf16, DType::f16})
    for (DType gdt : {dt, DType::f32}) {
      if (dt == DType::f32 && gdt != dt) continue;
      SCOPED_TRACE(std::string(dtype_name(dt)) + " grads " + std::string(dtype_name(gdt)));
      const auto x = random_on_grid(M * K, dt, 1), w = random_on_grid(N * K, dt, 2), b = random_on_grid(N, dt, 3);
      const auto dy = random_on_grid(M * N, dt, 4), dx0 = random_on_grid(M * K, dt, 5);
      const auto dw0 = random_on_grid(N * K, gdt, 6), db0 = random_on_grid(N, gdt, 7);
      DevBuf dx_(x.size() * dev_size(dt)), dw_(w.size() * dev_size(dt)), db_(b.size() * dev_size(dt)),
          dy_(dy.size() * dev_size(dt)), y_(M * N * dev_size(dt)), dxo(dx0.size() * dev_size(dt)),
          dwo(dw0.size() * dev_size(gdt)), dbo(db0.size() * dev_size(gdt));
      dx_.upload(encode(x, dt));
      dw_.upload(encode(w, dt));
      db_.upload(encode(b, dt));
      dy_.upload(encode(dy, dt));
      dxo.upload(encode(dx0, dt));
      dwo.upload(encode(dw0, gdt));
      dbo.upload(encode(db0, gdt));
      reset_launch_counts();
      linear_forward(dt, dx_.p, dw_.p, db_.p, y_.p, M, K, N);
      linear_backward_input(dt, dy_.p, dw_.p, dxo.p, M, K, N);
      linear_backward_weight(dt, dy_.p, dx_.p, gdt, dwo.p, dbo.p, M, K, N);
      ok(cudaDeviceSynchronize(), "sync");
      EXPECT_EQ(launch_count("cublasLtMatmul"), 3);
      int64_t bias_kernels = 0;
      for (const auto& [k, v] : launch_counts())
        if (k.rfind("bias_grad_kernel", 0) == 0) bias_kernels += v;
      EXPECT_EQ(bias_kernels, 1);

      std::vector<double> X(x.begin(), x.end()), W(w.begin(), w.end()), Bv(b.begin(), b.end()), DY(dy.begin(), dy.end());
      std::vector<double> Y(M * N), DX(dx0.begin(), dx0.end()), DW(dw0.begin(), dw0.end()), DB(db0.begin(), db0.end());
      cpu::linear_forward<double>(X.data(), W.data(), Bv.data(), Y.data(), M, K, N);
      cpu::linear_backward_input<double>(DY.data(), W.data(), DX.data(), M, K, N);
      cpu::linear_backward_weight<double>(DY.data(), X.data(), DW.data(), DB.data(), M, K, N);
      // Inputs are in [-1, 1]: S <= (inner length + 2), so one bound per output.
      auto check = [&](const char* what, const DevBuf& d, DType t, const std::vector<double>& want, int64_t inner) {
        const auto got = decode(d.download(), t);
        const double u_out = t == DType::bf16 ? 0x1p-8 : t == DType::f16 ? 0x1p-11 : 0.0;
        int64_t bad = 0;
        for (size_t i = 0; i < want.size(); ++i) {
          const double tol = (inner + 4) * 0x1p-24 * (inner + 2) + u_out * std::fabs(want[i]) + 0x1p-24;
          if (!(std::fabs(got[i] - want[i]) <= tol) && bad++ == 0)
            ADD_FAILURE() << what << "[" << i << "] = " << got[i] << ", want " << want[i];
        }
        EXPECT_EQ(bad, 0) << what;
      };
      check("y", y_, dt, Y, K);
      check("dx", dxo, dt, DX, N);
      check("dw", dwo, gdt, DW, M);
      check("db", dbo, gdt, DB, M);
    }
}

/// Bits do not depend on the order of streams, blocks and threads (seeds of the SIMT
/// runtime), nor on a non-default stream; on a GPU, run to run.
TEST(CudaGemm, DeterministicAcrossSeedsAndStreams) {
  SKIP_WITHOUT_DEVICE();
  const int64_t M = 37, K = 65, N = 100;
  const DType dt = DType::bf16;
  const auto x = random_on_grid(M * K, dt, 11), dy = random_on_grid(M * N, dt, 12);
  DevBuf dx(x.size() * 2), ddy(dy.size() * 2), dw(N * K * 4), db(N * 4);
  dx.upload(encode(x, dt));
  ddy.upload(encode(dy, dt));
  cudaStream_t s = nullptr;
  ok(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream");
  std::vector<uint8_t> first_w, first_b;
  for (uint64_t seed : {0, 1, 2, 3}) {
#if PTRAIN_CUDA_EMULATED
    simt::set_seed(seed);
#endif
    ok(cudaMemset(dw.p, 0, dw.bytes), "memset");
    ok(cudaMemset(db.p, 0, db.bytes), "memset");
    linear_backward_weight(dt, ddy.p, dx.p, DType::f32, dw.p, db.p, M, K, N, seed % 2 ? s : nullptr);
    ok(cudaStreamSynchronize(s), "sync");
    ok(cudaDeviceSynchronize(), "sync");
    const auto w = dw.download(), b = db.download();
    if (first_w.empty()) {
      first_w = w, first_b = b;
    } else {
      EXPECT_EQ(w, first_w) << "seed " << seed;
      EXPECT_EQ(b, first_b) << "seed " << seed;
    }
  }
#if PTRAIN_CUDA_EMULATED
  simt::set_seed(1);
#endif
  ok(cudaStreamDestroy(s), "stream destroy");
}

/// Restores the process-wide TF32 switch at scope end.
struct Tf32Scope {
  bool saved = allow_tf32();
  ~Tf32Scope() { set_allow_tf32(saved); }
};

/// fp32 values one TF32 rounding cannot keep: 1 + 2^-12 is below half a TF32 ulp of 1 (2^-11),
/// so it becomes exactly 1 whether the inputs are rounded to nearest (ties away, as the
/// emulated cuBLASLt does with cvt.rna.tf32.f32, or to even) or truncated (tensor cores
/// reading fp32 operands may simply drop the low 13 mantissa bits): the TF32 result is exact
/// and the same under every rounding mode, and differs from the fp32 one. The emulated
/// cuBLASLt rounds whenever CUBLAS_COMPUTE_32F_FAST_TF32 is asked for, so there the switch is
/// observable exactly; real cuBLASLt may pick a non-tensor-core kernel for a small problem
/// and stay in fp32 (FAST_TF32 allows TF32, it does not require it): on silicon the "on"
/// results are only reported, the "off" results (no TF32 without the switch) still checked.
constexpr float kOnePlus = 1.0f + 0x1p-12f;

/// The value TF32 products must give: exact in the emulated build, reported on a GPU.
void expect_tf32(const std::vector<float>& got, float want, const char* what) {
  if (!emulated()) {
    size_t same = 0;
    for (float v : got) same += v == want;
    std::printf("%s with TF32 on real cuBLASLt: %zu of %zu elements took the TF32 value %.9g\n", what, same,
                got.size(), want);
    return;
  }
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_EQ(got[i], want) << what << "[" << i << "]: the TF32 switch did not reach the GEMM";
}
void expect_all(const std::vector<float>& got, float want, const char* what) {
  for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want) << what << "[" << i << "]";
}

TEST(CudaGemm, Tf32SwitchReachesTheLinearHelpers) {
  SKIP_WITHOUT_DEVICE();
  Tf32Scope scope;
  set_allow_tf32(false);
  EXPECT_FALSE(allow_tf32());
  const int64_t M = 64, K = 64, N = 96;  // tensor-core sized on a GPU
  const float y_fp32 = static_cast<float>(K) * kOnePlus;  // K (1 + 2^-12): exact in fp32
  const float dx_fp32 = static_cast<float>(N) * kOnePlus, dw_fp32 = static_cast<float>(M) * kOnePlus;

  // The helpers of core/cuda/gemm.h take the switch as their default: y = x wᵀ, dx += dy w,
  //    dw += dyᵀ x with x = 1 + 2^-12 (y, dw) or dy = 1 + 2^-12 (dx), the other operand 1.
  const std::vector<float> ones_nk(N * K, 1.0f), plus_mk(M * K, kOnePlus), plus_mn(M * N, kOnePlus),
      ones_mn(M * N, 1.0f);
  DevBuf x(M * K * 4), w(N * K * 4), y(M * N * 4), dyp(M * N * 4), dy1(M * N * 4), dx(M * K * 4), dw(N * K * 4);
  x.upload(encode(plus_mk, DType::f32));
  w.upload(encode(ones_nk, DType::f32));
  dyp.upload(encode(plus_mn, DType::f32));
  dy1.upload(encode(ones_mn, DType::f32));
  auto run_helpers = [&](std::vector<float>& yv, std::vector<float>& dxv, std::vector<float>& dwv) {
    ok(cudaMemset(dx.p, 0, dx.bytes), "memset dx");
    ok(cudaMemset(dw.p, 0, dw.bytes), "memset dw");
    linear_forward(DType::f32, x.p, w.p, nullptr, y.p, M, K, N);
    linear_backward_input(DType::f32, dyp.p, w.p, dx.p, M, K, N);
    linear_backward_weight(DType::f32, dy1.p, x.p, DType::f32, dw.p, nullptr, M, K, N);
    ok(cudaDeviceSynchronize(), "sync");
    yv = decode(y.download(), DType::f32), dxv = decode(dx.download(), DType::f32), dwv = decode(dw.download(), DType::f32);
  };
  std::vector<float> yv, dxv, dwv;
  run_helpers(yv, dxv, dwv);
  expect_all(yv, y_fp32, "y (switch off)");
  expect_all(dxv, dx_fp32, "dx (switch off)");
  expect_all(dwv, dw_fp32, "dw (switch off)");
  set_allow_tf32(true);
  EXPECT_TRUE(allow_tf32());
  run_helpers(yv, dxv, dwv);
  expect_tf32(yv, static_cast<float>(K), "y");
  expect_tf32(dxv, static_cast<float>(N), "dx");
  expect_tf32(dwv, static_cast<float>(M), "dw");
  // An explicit argument still wins over the switch, and bf16 products ignore it.
  linear_forward(DType::f32, x.p, w.p, nullptr, y.p, M, K, N, nullptr, /*tf32=*/false);
  ok(cudaDeviceSynchronize(), "sync");
  expect_all(decode(y.download(), DType::f32), y_fp32, "y (switch on, tf32=false passed)");
  {
    const auto xb = random_on_grid(M * K, DType::bf16, 41), wb = random_on_grid(N * K, DType::bf16, 42);
    DevBuf bx(M * K * 2), bw(N * K * 2), by(M * N * 2);
    bx.upload(encode(xb, DType::bf16));
    bw.upload(encode(wb, DType::bf16));
    linear_forward(DType::bf16, bx.p, bw.p, nullptr, by.p, M, K, N);
    ok(cudaDeviceSynchronize(), "sync");
    const auto on = by.download();
    linear_forward(DType::bf16, bx.p, bw.p, nullptr, by.p, M, K, N, nullptr, false);
    ok(cudaDeviceSynchronize(), "sync");
    EXPECT_EQ(on, by.download()) << "a bf16 GEMM changed with the TF32 switch";
  }

  // ops::linear on device tensors (core/cuda/ops_device.cpp, through the tape):
  // tests/cuda/test_device_ops.cpp, DeviceOps.LinearHonoursTheTf32Switch.
}

/// Attention's GEMMs (core/cuda/attention.cpp) read the switch: fp32 outputs and all three
/// gradients change when it is on (every product rounds its inputs to TF32), and switching it
/// off again gives the first bits back (the plan cache keys on it).
TEST(CudaGemm, Tf32SwitchReachesAttention) {
  SKIP_WITHOUT_DEVICE();
  Tf32Scope scope;
  const int64_t B = 2, T = 16, Hq = 4, Hkv = 2, D = 32, nq = B * T * Hq * D, nkv = B * T * Hkv * D;
  const DType dt = DType::f32;
  const auto q = random_on_grid(nq, dt, 51), k = random_on_grid(nkv, dt, 52), v = random_on_grid(nkv, dt, 53),
             dout = random_on_grid(nq, dt, 54);
  DevBuf dq_in(nq * 4), dk_in(nkv * 4), dv_in(nkv * 4), ddout(nq * 4), out(nq * 4), probs(B * Hq * T * T * 4),
      dq(nq * 4), dk(nkv * 4), dv(nkv * 4),
      scratch(std::max<size_t>(1, attention_backward_scratch_bytes(dt, B, T, Hq, Hkv)));
  dq_in.upload(encode(q, dt));
  dk_in.upload(encode(k, dt));
  dv_in.upload(encode(v, dt));
  ddout.upload(encode(dout, dt));
  auto run = [&] {
    attention_forward(dq_in.p, dk_in.p, dv_in.p, out.p, probs.p, B, T, Hq, Hkv, D, dt, nullptr, nullptr);
    for (DevBuf* g : {&dq, &dk, &dv}) ok(cudaMemset(g->p, 0, g->bytes), "memset");
    attention_backward(ddout.p, dq_in.p, dk_in.p, dv_in.p, probs.p, dq.p, dk.p, dv.p, B, T, Hq, Hkv, D, dt, scratch.p,
                       nullptr);
    ok(cudaDeviceSynchronize(), "sync");
    return std::vector<std::vector<uint8_t>>{out.download(), dq.download(), dk.download(), dv.download()};
  };
  set_allow_tf32(false);
  const auto off = run();
  set_allow_tf32(true);
  const auto on = run();
  set_allow_tf32(false);
  const auto off_again = run();
  const char* names[] = {"out", "dq", "dk", "dv"};
  for (size_t i = 0; i < off.size(); ++i) {
    EXPECT_EQ(off_again[i], off[i]) << names[i] << ": switching TF32 off again did not restore the fp32 bits";
    if (emulated())
      EXPECT_NE(on[i], off[i]) << names[i] << ": the TF32 switch did not reach attention's GEMMs";
    else if (on[i] == off[i])
      std::printf("attention %s: identical with TF32 on real cuBLASLt (an fp32 kernel was chosen)\n", names[i]);
  }
}

TEST(CudaGemm, ShapeErrorsNameTheShapes) {
  SKIP_WITHOUT_DEVICE();
  GemmDesc d;
  d.M = 4, d.N = 4, d.K = 4, d.lda = 4, d.ldb = 4, d.ldc = 3;
  try {
    gemm(d, 1.0f, nullptr, nullptr, 0.0f, nullptr);
    ADD_FAILURE() << "ldc < N accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ldc=3"), std::string::npos) << e.what();
  }
  d.ldc = 4;
  d.c_dtype = DType::bf16;  // f32 inputs, bf16 output: not a backend combination
  EXPECT_THROW(gemm(d, 1.0f, nullptr, nullptr, 0.0f, nullptr), Error);
}

}  // namespace
}  // namespace ptrain::cuda
