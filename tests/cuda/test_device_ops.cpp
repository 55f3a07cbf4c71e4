// tests/cuda/test_device_ops.cpp — device Tensors and the ops with CUDA kernels through the
// tape: a small graph (embedding -> RMSNorm -> residual add -> fused cross-entropy) run on
// the CPU and on the device from the same values, forward and backward, compared at the
// harness's tolerances; per-op launch counters; host<->device traffic of a step; the last-dim
// split (qkv) through the tape; the process-wide TF32 switch reaching ops::linear's GEMMs;
// errors for mixed devices. Label cuda (emulated device in CI).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>

#include "core/autograd.h"
#include "core/cpu/kernels.h"
#include "core/cuda/gemm.h"
#include "core/cuda/launch_stats.h"
#include "core/ops.h"
#include "core/cuda/runtime.h"

using namespace ptrain;

namespace {

bool have_device() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

struct Result {
  double loss;
  std::vector<double> dtable, dw;
};

/// ids [B*T] -> x = table[ids] (C = Vp) -> h = rms_norm(x, w) -> r = h + x -> CE(r, targets, V).
Result run_graph(Device dev, DType dt, int64_t N, int64_t Vp, int64_t V) {
  Tensor table = Tensor::from_vector(randn(static_cast<size_t>(Vp * Vp), 11, 0.5f), {Vp, Vp}, dt).to_device(dev);
  Tensor w = Tensor::from_vector(randn(static_cast<size_t>(Vp), 12, 0.2f), {Vp}, dt);
  {
    auto wv = w.to_float_vector();
    for (auto& x : wv) x += 1.0f;
    w = Tensor::from_vector(wv, {Vp}, dt).to_device(dev);
  }
  std::vector<int32_t> ids(static_cast<size_t>(N)), tg(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) {
    ids[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7 + 3) % V);
    tg[static_cast<size_t>(i)] = i % 9 == 4 ? -1 : static_cast<int32_t>((i * 5 + 1) % V);  // some ignored rows
  }
  Tensor tids = Tensor::from_vector_i32(ids, {N}).to_device(dev);
  Tensor ttg = Tensor::from_vector_i32(tg, {N}).to_device(dev);
  table.set_requires_grad(true);
  w.set_requires_grad(true);
  Tape tape;
  TapeGuard guard(&tape);
  Tensor x = ops::embedding(tids, table);
  Tensor h = ops::rms_norm(x, w, 1e-5);
  Tensor r = ops::add(h, x);
  Tensor loss = ops::cross_entropy(r, ttg, V, 1.0 / static_cast<double>(N));
  tape.backward(loss);
  return {loss.to_double_vector()[0], table.grad().to_double_vector(), w.grad().to_double_vector()};
}

double max_rel(const std::vector<double>& a, const std::vector<double>& b, double floor) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]) / std::max(std::fabs(b[i]), floor));
  return m;
}

}  // namespace

TEST(DeviceOps, TensorRoundTripKeepsValuesInEveryDtype) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
    Tensor h = Tensor::from_vector(randn(1001, 3), {7, 143}, dt);
    Tensor d = h.to_device(Device::cuda);
    EXPECT_EQ(d.device(), Device::cuda);
    EXPECT_EQ(d.nbytes(), 1001u * (dt == DType::f32 ? 4u : 2u));
    EXPECT_EQ(d.to_float_vector(), h.to_float_vector()) << dtype_name(dt);
    Tensor c = d.clone();
    EXPECT_EQ(c.to_float_vector(), h.to_float_vector());
    Tensor z = Tensor::zeros({5}, dt, Device::cuda);
    for (float v : z.to_float_vector()) EXPECT_EQ(v, 0.0f);
    Tensor rows = d.rows(2, 4);
    auto hv = h.rows(2, 4).to_float_vector();
    EXPECT_EQ(rows.to_float_vector(), hv);
  }
  EXPECT_THROW((void)Tensor::from_vector({1, 2}, {2}).to_device(Device::cuda).data<float>(), Error);
}

TEST(DeviceOps, GraphMatchesTheCpuForwardAndBackward) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  const int64_t N = 37, Vp = 67, V = 61;  // odd sizes, padded vocabulary
  for (DType dt : {DType::f32, DType::bf16}) {
    const Result cpu = run_graph(Device::cpu, dt, N, Vp, V);
    cuda::reset_launch_counts();
    const Result dev = run_graph(Device::cuda, dt, N, Vp, V);
    const double tol = dt == DType::f32 ? 1e-5 : 1e-2;  // issue 6's bar: fp32 1e-5, bf16 1e-2 relative
    std::printf("%s: loss cpu %.9g dev %.9g (rel %.2e); dtable max rel %.2e; dw max rel %.2e\n", dtype_name(dt).data(),
                cpu.loss, dev.loss, std::fabs(dev.loss - cpu.loss) / std::fabs(cpu.loss),
                max_rel(dev.dtable, cpu.dtable, 1e-3), max_rel(dev.dw, cpu.dw, 1e-3));
    EXPECT_NEAR(dev.loss, cpu.loss, tol * std::fabs(cpu.loss)) << dtype_name(dt);
    EXPECT_LE(max_rel(dev.dtable, cpu.dtable, 1e-3), tol) << dtype_name(dt);
    EXPECT_LE(max_rel(dev.dw, cpu.dw, 1e-3), tol) << dtype_name(dt);
    // Every op ran its own kernel(s), each once.
    const std::string sfx = dt == DType::f32 ? "<float>" : "<__nv_bfloat16>";
    const auto counts = cuda::launch_counts();
    for (const char* k : {"embedding_forward_kernel", "rms_norm_forward_kernel", "add_forward_kernel",
                          "cross_entropy_forward_kernel", "cross_entropy_backward_kernel"}) {
      bool found = false;
      for (const auto& [name, c] : counts)
        if (name.rfind(k, 0) == 0) found = true;
      EXPECT_TRUE(found) << k << " did not run (" << dtype_name(dt) << ")";
    }
  }
}

namespace {
struct BlockResult {
  double loss;
  std::vector<std::vector<double>> grads;
};

/// A chain through every other op with a kernel: linear (+bias), swiglu, silu, gelu, mul,
/// scale, layer_norm, rope, then cross-entropy. fp32 gradients of dt parameters.
BlockResult run_block(Device dev, DType dt) {
  const int64_t B = 2, T = 5, H = 2, D = 6, C = H * D, F = 14, N = B * T, V = 11, Vp = 13;
  auto param = [&](Shape s, uint32_t seed, float scale, float shift = 0.0f) {
    auto v = randn(static_cast<size_t>(shape_numel(s)), seed, scale);
    for (auto& x : v) x += shift;
    Tensor t = Tensor::from_vector(v, s, dt).to_device(dev);
    t.set_requires_grad(true);
    return t;
  };
  Tensor x0 = Tensor::from_vector(randn(static_cast<size_t>(N * C), 21), {B, T, C}, dt).to_device(dev);
  Tensor wg = param({F, C}, 22, 0.3f), wu = param({F, C}, 23, 0.3f), wd = param({C, F}, 24, 0.3f);
  Tensor bd = param({C}, 25, 0.1f), lw = param({C}, 26, 0.1f, 1.0f), lb = param({C}, 27, 0.1f);
  Tensor wo = param({Vp, C}, 28, 0.3f), wk = param({D, C}, 29, 0.3f);
  Tensor cos = Tensor::empty({T, D / 2}), sin = Tensor::empty({T, D / 2});
  cpu::rope_tables<float>(cos.data<float>(), sin.data<float>(), T, D, 10000.0);
  cos = cos.to_device(dev);  // f32 tables on both (the model's)
  sin = sin.to_device(dev);
  std::vector<int32_t> tg(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) tg[static_cast<size_t>(i)] = static_cast<int32_t>((i * 3 + 2) % V);
  Tensor ttg = Tensor::from_vector_i32(tg, {N}).to_device(dev);
  Tape tape;
  TapeGuard guard(&tape);
  Tensor g = ops::linear(x0, wg), u = ops::linear(x0, wu);
  Tensor h = ops::swiglu(g, u);
  Tensor h2 = ops::mul(ops::silu(h), ops::gelu(h));
  Tensor y = ops::linear(ops::scale(h2, 0.5), wd, bd);
  Tensor r = ops::rope(ops::view(ops::add(y, x0), {B, T, H, D}), cos, sin);
  // GQA attention (2 q heads over 1 kv head): the CPU and the device round at the same points
  // (bf16: P, dS, dk/dv per q head of the group; core/cpu/attention.cpp).
  {
    Tensor kv = ops::view(ops::linear(x0, wk), {B, T, 1, D});
    r = ops::attention(r, kv, kv);
  }
  Tensor z = ops::layer_norm(ops::view(r, {N, C}), lw, lb, 1e-5);
  Tensor logits = ops::linear(z, wo);
  Tensor loss = ops::cross_entropy(logits, ttg, V, 1.0 / static_cast<double>(N));
  tape.backward(loss);
  BlockResult res{loss.to_double_vector()[0], {}};
  for (Tensor* p : {&wg, &wu, &wd, &bd, &lw, &lb, &wo}) res.grads.push_back(p->grad().to_double_vector());
  res.grads.push_back(wk.grad().to_double_vector());
  return res;
}
}  // namespace

TEST(DeviceOps, EveryKernelOpInAChainMatchesTheCpu) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  for (DType dt : {DType::f32, DType::bf16}) {
    const BlockResult cpu = run_block(Device::cpu, dt);
    cuda::reset_launch_counts();
    const BlockResult dev = run_block(Device::cuda, dt);
    const double tol = dt == DType::f32 ? 1e-5 : 1e-2;
    EXPECT_NEAR(dev.loss, cpu.loss, tol * std::fabs(cpu.loss)) << dtype_name(dt);
    double worst = 0;
    for (size_t i = 0; i < cpu.grads.size(); ++i) worst = std::max(worst, max_rel(dev.grads[i], cpu.grads[i], 1e-2));
    EXPECT_LE(worst, tol) << dtype_name(dt);
    for (const char* k : {"causal_softmax_forward_kernel", "causal_softmax_backward_kernel"}) {
      bool found = false;
      for (const auto& [name, c] : cuda::launch_counts())
        if (name.rfind(k, 0) == 0) found = true;
      EXPECT_TRUE(found) << k << " did not run (" << dtype_name(dt) << ")";
    }
    std::printf("%s chain: loss cpu %.9g dev %.9g; worst grad rel %.2e\n", dtype_name(dt).data(), cpu.loss, dev.loss,
                worst);
    for (const char* k : {"swiglu_forward_kernel", "silu_forward_kernel", "gelu_tanh_forward_kernel", "mul_forward_kernel",
                          "scale_forward_kernel", "rope_forward_kernel", "layer_norm_forward_kernel", "cublasLtMatmul",
                          "swiglu_backward_kernel", "silu_backward_kernel", "gelu_tanh_backward_kernel",
                          "mul_backward_kernel", "scale_backward_kernel", "rope_backward_kernel",
                          "layer_norm_backward_dx_kernel"}) {
      bool found = false;
      for (const auto& [name, c] : cuda::launch_counts())
        if (name.rfind(k, 0) == 0) found = true;
      EXPECT_TRUE(found) << k << " did not run (" << dtype_name(dt) << ")";
    }
  }
}

TEST(DeviceOps, MixedDevicesAreRefused) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  Tensor a = Tensor::from_vector({1, 2, 3}, {3}).to_device(Device::cuda);
  Tensor b = Tensor::from_vector({1, 2, 3}, {3});
  try {
    (void)ops::add(a, b);
    FAIL() << "add of a device and a host tensor ran";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is on cpu but the op runs on cuda"), std::string::npos) << e.what();
  }
}

namespace {
struct SplitResult {
  std::vector<std::vector<double>> pieces;
  std::vector<double> dx;
};

/// x [2, 5, 24] -> split into 8 + 9 + 7 columns (a qkv split with unequal, odd pieces); the
/// middle piece is unused (its gradient undefined: it contributes nothing). on_leaf: split of
/// the leaf x itself, whose gradient buffer is fp32 (the tape's default parameter-gradient
/// dtype). Else h = scale(x, 0.5) is split and also consumed by add(h, h), recorded after the
/// split: the add's backward runs first, so the split's backward adds into a gradient that
/// already holds values (the tape's gradients in dt).
SplitResult run_split(Device dev, DType dt, bool on_leaf) {
  const int64_t B = 2, T = 5, S = 24;
  auto tensor = [&](Shape s, uint32_t seed) {
    return Tensor::from_vector(randn(static_cast<size_t>(shape_numel(s)), seed), s, dt).to_device(dev);
  };
  Tensor x = tensor({B, T, S}, 31);
  x.set_requires_grad(true);
  Tape tape(on_leaf ? DType::f32 : dt);
  TapeGuard guard(&tape);
  Tensor h = on_leaf ? x : ops::scale(x, 0.5);
  const std::vector<Tensor> p = ops::split(h, {8, 9, 7});
  std::vector<Tensor> roots{p[0], p[2]}, seeds{tensor({B, T, 8}, 32), tensor({B, T, 7}, 33)};
  if (!on_leaf) {
    roots.push_back(ops::add(h, h));
    seeds.push_back(tensor({B, T, S}, 34));
  }
  tape.backward(roots, seeds);
  SplitResult r;
  for (const Tensor& t : p) r.pieces.push_back(t.to_double_vector());
  r.dx = x.grad().to_double_vector();
  return r;
}
}  // namespace

TEST(DeviceOps, SplitMatchesTheCpuOpForwardAndBackward) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  for (DType dt : {DType::f32, DType::bf16, DType::f16})
    for (bool on_leaf : {false, true}) {
      const std::string what = std::string(dtype_name(dt)) + (on_leaf ? " split of a leaf (fp32 dx)" : " split");
      const SplitResult cpu = run_split(Device::cpu, dt, on_leaf);
      cuda::reset_launch_counts();
      const SplitResult dev = run_split(Device::cuda, dt, on_leaf);
      // Copies and one addition per element, rounded once, in the CPU's order: bit-identical.
      ASSERT_EQ(dev.pieces.size(), 3u) << what;
      for (size_t i = 0; i < 3; ++i) EXPECT_EQ(dev.pieces[i], cpu.pieces[i]) << what << ": piece " << i;
      EXPECT_EQ(dev.dx, cpu.dx) << what << ": dx";
      const std::string T = dt == DType::f32 ? "float" : dt == DType::bf16 ? "__nv_bfloat16" : "__half";
      EXPECT_EQ(cuda::launch_count("split_columns_kernel<" + T + ">"), 3) << what;
      const std::string bwd = on_leaf && dt != DType::f32 ? "split_columns_backward_kernel<" + T + ", float>"
                                                          : "split_columns_backward_kernel<" + T + ">";
      EXPECT_EQ(cuda::launch_count(bwd), 2) << what << ": one launch per defined piece gradient";
    }
}

/// cuda::set_allow_tf32 (core/cuda/gemm.h) reaches the three GEMMs of ops::linear on device
/// tensors (core/cuda/ops_device.cpp: forward, dx, dw). fp32 values one TF32 rounding cannot
/// keep: 1 + 2^-12 is below half a TF32 ulp of 1, so it becomes exactly 1 under any rounding
/// (the emulated cuBLASLt's ties-away rounding, ties-to-even, or truncation): x = 1 + 2^-12,
/// w = 1 and dy = 1 make y = K (1 + 2^-12) and dw = M (1 + 2^-12) in fp32 (exact), K and M
/// with TF32; x = 1, w = 1 and dy = 1 + 2^-12 make dx = N (1 + 2^-12), or N. The emulated
/// cuBLASLt rounds whenever CUBLAS_COMPUTE_32F_FAST_TF32 is asked for; real cuBLASLt may pick
/// an fp32 kernel (FAST_TF32 allows TF32, it does not require it): on a GPU the TF32 results
/// are reported only, the fp32 ones (no TF32 without the switch) checked.
TEST(DeviceOps, LinearHonoursTheTf32Switch) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  const bool saved = cuda::allow_tf32();
  const int64_t M = 64, K = 64, N = 96;
  const float one_plus = 1.0f + 0x1p-12f;
  struct Run {
    std::vector<float> y, dx, dw;
  };
  auto run = [&](float xval, float dyval) {
    Tensor x = Tensor::full({M, K}, xval).to_device(Device::cuda);
    Tensor w = Tensor::full({N, K}, 1.0).to_device(Device::cuda);
    x.set_requires_grad(true);
    w.set_requires_grad(true);
    Tape tape;
    TapeGuard guard(&tape);
    Tensor y = ops::linear(x, w);
    tape.backward(y, Tensor::full({M, N}, dyval).to_device(Device::cuda));
    return Run{y.to_float_vector(), x.grad().to_float_vector(), w.grad().to_float_vector()};
  };
  auto expect = [&](const std::vector<float>& got, float want, bool tf32, const char* what) {
    if (tf32 && !cuda::emulated()) {
      size_t same = 0;
      for (float v : got) same += v == want;
      std::printf("%s with TF32 on real cuBLASLt: %zu of %zu elements took the TF32 value\n", what, same, got.size());
      return;
    }
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_EQ(got[i], want) << what << "[" << i << "] with TF32 " << (tf32 ? "on" : "off");
  };
  for (bool on : {false, true}) {
    cuda::set_allow_tf32(on);
    const Run a = run(one_plus, 1.0f), b = run(1.0f, one_plus);
    expect(a.y, on ? static_cast<float>(K) : static_cast<float>(K) * one_plus, on, "y");
    expect(a.dw, on ? static_cast<float>(M) : static_cast<float>(M) * one_plus, on, "dw");
    expect(b.dx, on ? static_cast<float>(N) : static_cast<float>(N) * one_plus, on, "dx");
  }
  // bf16 GEMMs ignore the switch (TF32 is for fp32 inputs only).
  cuda::set_allow_tf32(false);
  Tensor xb = Tensor::from_vector(randn(static_cast<size_t>(M * K), 41), {M, K}, DType::bf16).to_device(Device::cuda);
  Tensor wb = Tensor::from_vector(randn(static_cast<size_t>(N * K), 42), {N, K}, DType::bf16).to_device(Device::cuda);
  const std::vector<double> off = ops::linear(xb, wb).to_double_vector();
  cuda::set_allow_tf32(true);
  EXPECT_EQ(ops::linear(xb, wb).to_double_vector(), off) << "a bf16 GEMM changed with the TF32 switch";
  cuda::set_allow_tf32(saved);
}
