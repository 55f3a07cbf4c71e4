// tests/cuda/test_optim_cuda.cpp — the optimizer-path kernels (core/cuda/optim_kernels.h)
// against the CPU optimizer (optim/adamw.cpp, optim/grad_clip.cpp).
//
// Cases: a list of tensors of odd sizes (0, 1, 3, 1000, 4095, 4096, 4097, 37x100, 8193,
// 100003 and a 2-D 300x500: ~270k elements, chunk boundaries on both sides), weight decay on
// the 2-D ones, gradients in f32 or bf16, the model copy in f32, bf16 or f16. From fixed-seed
// inputs (gradients already on the grad dtype's grid):
//  * AdamW: three steps with different learning rates and gradient scales (1, 0.37, 2.5) on
//    the device and through optim::AdamW on the CPU (fed g * (float)scale in fp32, which is
//    what the kernel uses); master, exp_avg, exp_avg_sq compared after every step, the model
//    copy against the CPU master rounded once to the model dtype (tolerance rows
//    "adamw_step.*" of tests/cuda/op_tolerances.h: 0 / 0, and the bits are compared too).
//  * Gradient norm: grad_sum_squares on the device against optim::grad_sum_squares (double)
//    within the row "grad_sum_squares.out".
//  * Determinism: the whole sequence gives the same bits under the SIMT runtime's orders
//    0, 1, 2, 3 (emulated build), run to run on a GPU.
//  * Launch counts: one AdamW launch per step, two launches per norm, whatever the number
//    of tensors.
//  * The comparisons catch planted errors (one ulp in one master element; a norm off by
//    more than the tolerance).
// Every test is skipped (with the reason) when cudaGetDeviceCount reports no device.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/cuda/launch_stats.h"
#include "core/cuda/optim_kernels.h"
#include "core/dtype.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "optim/adamw.h"
#include "optim/grad_clip.h"
#include "tests/cuda/device_test_util.h"
#include "tests/cuda/op_tolerances.h"

#if PTRAIN_CUDA_EMULATED
#include "core/simt/simt.h"
#endif

namespace ptrain::cuda {
namespace {

using ptrain::testing::find_op_tolerance;
using ptrain::testing::OpTolerance;

// ------------------------------------------------------------------ CUDA plumbing

using namespace ptrain::cuda::test;

#define SKIP_WITHOUT_DEVICE()                                                                                  \
  do {                                                                                                         \
    if (visible_devices() == 0)                                                                                \
      GTEST_SKIP() << "cudaGetDeviceCount reports no CUDA device: the optimizer kernels cannot run on this machine"; \
  } while (0)

void to_device(const DeviceBuffer& d, const Bytes& b) {
  if (!b.empty()) CU(cudaMemcpy(d.get(), b.data(), b.size(), cudaMemcpyHostToDevice));
}
Bytes from_device(const DeviceBuffer& d) {
  Bytes b(d.bytes());
  CU(cudaDeviceSynchronize());
  if (!b.empty()) CU(cudaMemcpy(b.data(), d.get(), b.size(), cudaMemcpyDeviceToHost));
  return b;
}

// ------------------------------------------------------------------ the case

constexpr uint64_t kSeed = 20261129;

struct TensorSpec {
  std::string name;
  Shape shape;
};
/// Odd sizes on both sides of the 4096-element chunk; 2-D ones decay (AdamW's default rule).
std::vector<TensorSpec> specs() {
  return {{"empty", {0}},      {"one", {1}},           {"three", {3}},       {"k", {1000}},
          {"c-1", {4095}},     {"c", {4096}},          {"c+1", {4097}},      {"mat37x100", {37, 100}},
          {"2c+1", {8193}},    {"big", {100003}},      {"mat300x500", {300, 500}}};
}

struct Hyper {
  double lr, scale;
};
constexpr Hyper kSteps[] = {{1e-3, 1.0}, {3e-3, 0.37}, {2e-3, 2.5}};
constexpr optim::AdamWOptions kOpt{0.9, 0.95, 1e-8, 0.1};

/// n values of N(0, scale) for tensor `name` at step `step`, rounded to dt's grid.
std::vector<float> normal(const std::string& name, int step, int64_t n, double scale, DType dt) {
  const PhiloxKey key = make_key(kSeed, name + "/" + std::to_string(step));
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<float>(scale * random_normal(key, static_cast<uint64_t>(i)));
  round_to_dtype(v.data(), n, dt);
  return v;
}

bool decays(const TensorSpec& s) { return s.shape.size() == 2; }

/// The device state of one run: per tensor master, grad, m, v, model; the uploaded table.
struct DeviceState {
  std::vector<std::unique_ptr<DeviceBuffer>> master, grad, m, v, model;
  std::unique_ptr<DeviceBuffer> table_buf, scratch, norm;
  OptimTable table;
};

DeviceState make_device(const std::vector<TensorSpec>& ts, DType gdt, DType mdt) {
  DeviceState d;
  std::vector<OptimTensor> list;
  for (const TensorSpec& s : ts) {
    const int64_t n = shape_numel(s.shape);
    const std::vector<float> p0 = normal(s.name, -1, n, 0.02, DType::f32);
    d.master.push_back(std::make_unique<DeviceBuffer>(n * 4));
    to_device(*d.master.back(), encode(p0.data(), n, DType::f32));
    d.grad.push_back(std::make_unique<DeviceBuffer>(n * dev_size(gdt)));
    d.m.push_back(std::make_unique<DeviceBuffer>(n * 4));
    d.v.push_back(std::make_unique<DeviceBuffer>(n * 4));
    if (n) CU(cudaMemset(d.m.back()->get(), 0, n * 4));
    if (n) CU(cudaMemset(d.v.back()->get(), 0, n * 4));
    d.model.push_back(std::make_unique<DeviceBuffer>(n * dev_size(mdt)));
    if (n) CU(cudaMemset(d.model.back()->get(), 0xFF, n * dev_size(mdt)));  // NaN: unwritten shows
    OptimTensor t;
    t.master = d.master.back()->as<float>();
    t.grad = d.grad.back()->get();
    t.exp_avg = d.m.back()->as<float>();
    t.exp_avg_sq = d.v.back()->as<float>();
    t.model = d.model.back()->get();
    t.numel = n;
    t.decay = decays(s);
    list.push_back(t);
  }
  const int64_t nt = static_cast<int64_t>(list.size());
  d.table_buf = std::make_unique<DeviceBuffer>(optim_table_bytes(nt));
  d.table = optim_upload_table(list.data(), nt, gdt, mdt, d.table_buf->get(), d.table_buf->bytes(), nullptr);
  d.scratch = std::make_unique<DeviceBuffer>(grad_sum_squares_scratch_bytes(d.table));
  d.norm = std::make_unique<DeviceBuffer>(sizeof(double));
  CU(cudaMemset(d.norm->get(), 0xFF, sizeof(double)));
  return d;
}

/// The CPU side: optim::AdamW over the non-empty tensors (an empty one owns no element).
struct CpuState {
  std::vector<optim::ParamRef> refs;
  std::vector<size_t> index;  ///< spec index of refs[k]
  std::unique_ptr<optim::AdamW> opt;
};

CpuState make_cpu(const std::vector<TensorSpec>& ts) {
  CpuState c;
  for (size_t i = 0; i < ts.size(); ++i) {
    const int64_t n = shape_numel(ts[i].shape);
    if (n == 0) continue;
    optim::ParamRef r;
    r.name = ts[i].name;
    r.param = Tensor::from_vector(normal(ts[i].name, -1, n, 0.02, DType::f32), ts[i].shape);
    r.grad = Tensor::zeros(ts[i].shape, DType::f32);
    r.decay = decays(ts[i]);
    c.refs.push_back(r);
    c.index.push_back(i);
  }
  c.opt = std::make_unique<optim::AdamW>(kOpt, c.refs);
  return c;
}

/// Mismatches of `dev` against `want` under tolerance t (|d - c| <= atol + rtol |c|, and equal
/// bits when the tolerance is 0 / 0); the first one is described in *first.
int64_t compare(const std::vector<float>& dev, const float* want, int64_t n, const OpTolerance& t,
                std::string* first) {
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = dev[i], c = want[i];
    const bool ok = (t.atol == 0 && t.rtol == 0) ? std::memcmp(&dev[i], &want[i], 4) == 0
                                                 : std::fabs(d - c) <= t.atol + t.rtol * std::fabs(c);
    if (!ok && bad++ == 0 && first) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "[%lld] device %.9g, cpu %.9g", static_cast<long long>(i), d, c);
      *first = buf;
    }
  }
  return bad;
}

const OpTolerance& tol(const char* op, DType dt) {
  const OpTolerance* t = find_op_tolerance(op, dt);
  if (!t) throw std::runtime_error(std::string("no tolerance row for ") + op + " " + std::string(dtype_name(dt)));
  return *t;
}

struct RunResult {
  Bytes bits;                    ///< every device output of every step, concatenated
  std::vector<double> norms;     ///< device sum of squares per step
  int64_t mismatches = 0;
  std::string report;
};

/// The three AdamW steps and norms on the device and (when cpu) on the CPU, compared.
RunResult run_steps(DType gdt, DType mdt, bool with_cpu, int64_t plant_step = -1) {
  const std::vector<TensorSpec> ts = specs();
  DeviceState d = make_device(ts, gdt, mdt);
  CpuState c;
  if (with_cpu) c = make_cpu(ts);
  RunResult r;
  for (int s = 0; s < static_cast<int>(std::size(kSteps)); ++s) {
    const Hyper h = kSteps[s];
    // gradients on the grad dtype's grid; the CPU gets g * (float)scale in fp32
    std::vector<std::vector<float>> g(ts.size());
    for (size_t i = 0; i < ts.size(); ++i) {
      const int64_t n = shape_numel(ts[i].shape);
      g[i] = normal(ts[i].name, s, n, 1e-2 * (1 + static_cast<double>(i % 3)), gdt);
      to_device(*d.grad[i], encode(g[i].data(), n, gdt));
    }
    // the norm of the unscaled gradients, then the step
    reset_launch_counts();
    grad_sum_squares(d.table, d.norm->as<double>(), d.scratch->get(), nullptr);
    const auto norm_launches = launch_counts();
    reset_launch_counts();
    AdamWStepArgs a;
    a.lr = h.lr;
    a.beta1 = kOpt.beta1;
    a.beta2 = kOpt.beta2;
    a.eps = kOpt.eps;
    a.weight_decay = kOpt.weight_decay;
    a.step = s + 1;
    a.grad_scale = h.scale;
    adamw_step(d.table, a, nullptr);
    const auto step_launches = launch_counts();
    CU(cudaDeviceSynchronize());
    double norm_dev;
    CU(cudaMemcpy(&norm_dev, d.norm->get(), sizeof(double), cudaMemcpyDeviceToHost));
    r.norms.push_back(norm_dev);
    // launch counts: one AdamW launch, two norm launches, whatever the number of tensors
    const std::string gname = gdt == DType::f32 ? "float" : gdt == DType::bf16 ? "__nv_bfloat16" : "__half";
    const std::string mname = mdt == DType::f32 ? "float" : mdt == DType::bf16 ? "__nv_bfloat16" : "__half";
    EXPECT_EQ(step_launches.size(), 1u);
    EXPECT_EQ(launch_count("adamw_multi_tensor_kernel<" + gname + ", " + mname + ">"), 1);
    EXPECT_EQ(norm_launches.size(), 2u);
    EXPECT_EQ(norm_launches.count("grad_sum_squares_partial_kernel<" + gname + ">"), 1u);
    EXPECT_EQ(norm_launches.count("grad_sum_squares_final_kernel"), 1u);

    if (s == plant_step) {  // one ulp on one master element of the largest tensor
      const size_t i = 9;
      float x;
      CU(cudaMemcpy(&x, d.master[i]->as<float>() + 777, 4, cudaMemcpyDeviceToHost));
      uint32_t u;
      std::memcpy(&u, &x, 4);
      u ^= 1u;
      std::memcpy(&x, &u, 4);
      CU(cudaMemcpy(d.master[i]->as<float>() + 777, &x, 4, cudaMemcpyHostToDevice));
    }

    std::vector<Bytes> outs;
    for (size_t i = 0; i < ts.size(); ++i)
      for (const DeviceBuffer* b : {d.master[i].get(), d.m[i].get(), d.v[i].get(), d.model[i].get()})
        outs.push_back(from_device(*b));
    for (const Bytes& b : outs) r.bits.insert(r.bits.end(), b.begin(), b.end());
    if (!with_cpu) continue;

    // CPU: norm of the unscaled gradients, then the step on g * scale
    for (size_t k = 0; k < c.refs.size(); ++k) {
      const size_t i = c.index[k];
      float* gp = c.refs[k].grad.data<float>();
      for (size_t e = 0; e < g[i].size(); ++e) gp[e] = g[i][e];
    }
    const double norm_cpu = optim::grad_sum_squares(c.refs);
    const OpTolerance& tn = tol("grad_sum_squares.out", gdt);
    if (!(std::fabs(norm_dev - norm_cpu) <= tn.atol + tn.rtol * std::fabs(norm_cpu))) {
      ++r.mismatches;
      char buf[200];
      std::snprintf(buf, sizeof buf, "step %d grad_sum_squares: device %.17g, cpu %.17g (rel %.3g)\n", s + 1,
                    norm_dev, norm_cpu, std::fabs(norm_dev - norm_cpu) / norm_cpu);
      r.report += buf;
    }
    // the device sums in the CPU's order (core/cuda/grad_norm.cu): the same bits
    if (std::memcmp(&norm_dev, &norm_cpu, sizeof(double)) != 0) {
      ++r.mismatches;
      r.report += fmt::format("step {} grad_sum_squares: device {:.17g} is not the CPU's {:.17g} bit for bit\n", s + 1,
                              norm_dev, norm_cpu);
    }
    if (std::getenv("PTRAIN_OPS_STATS"))
      std::printf("  %s/%s step %d: sum_squares device %.17g cpu %.17g rel %.3g\n", std::string(dtype_name(gdt)).c_str(),
                  std::string(dtype_name(mdt)).c_str(), s + 1, norm_dev, norm_cpu,
                  std::fabs(norm_dev - norm_cpu) / norm_cpu);
    for (size_t k = 0; k < c.refs.size(); ++k) {
      float* gp = c.refs[k].grad.data<float>();
      const float sc = static_cast<float>(h.scale);
      for (int64_t e = 0; e < c.refs[k].grad.numel(); ++e) gp[e] = gp[e] * sc;  // optim::scale_grads in fp32
    }
    c.opt->step(h.lr);
    for (size_t k = 0; k < c.refs.size(); ++k) {
      const size_t i = c.index[k];
      const int64_t n = shape_numel(ts[i].shape);
      const float* cm = c.opt->exp_avg(k).data<float>();
      const float* cv = c.opt->exp_avg_sq(k).data<float>();
      std::vector<float> model_want(c.refs[k].param.data<float>(), c.refs[k].param.data<float>() + n);
      round_to_dtype(model_want.data(), n, mdt);
      struct Item {
        const char* op;
        DType dt;
        const Bytes* bytes;
        DType store;
        const float* want;
      } items[] = {{"adamw_step.master", gdt, &outs[4 * i], DType::f32, c.refs[k].param.data<float>()},
                   {"adamw_step.exp_avg", gdt, &outs[4 * i + 1], DType::f32, cm},
                   {"adamw_step.exp_avg_sq", gdt, &outs[4 * i + 2], DType::f32, cv},
                   {"adamw_step.model", mdt, &outs[4 * i + 3], mdt, model_want.data()}};
      for (const Item& it : items) {
        std::string first;
        const int64_t bad = compare(decode(*it.bytes, it.store), it.want, n, tol(it.op, it.dt), &first);
        if (bad) {
          r.mismatches += bad;
          r.report += "step " + std::to_string(s + 1) + " " + it.op + " of " + ts[i].name + ": " +
                      std::to_string(bad) + " mismatches, first " + first + "\n";
        }
      }
    }
  }
  return r;
}

// ------------------------------------------------------------------ tests

struct Combo {
  DType grad, model;
};
class AdamWCuda : public ::testing::TestWithParam<Combo> {};

TEST_P(AdamWCuda, MatchesCpuAdamWAndNorm) {
  SKIP_WITHOUT_DEVICE();
#if !defined(__FMA__)
  GTEST_SKIP() << "the CPU reference is built without FMA (PTRAIN_NATIVE=OFF or an old target): optim/adamw.cpp "
                  "then rounds the two multiply-adds that the kernel (and torch's AVX2 kernels) fuse, so the "
                  "0/0 rows of adamw_step do not apply";
#endif
  const Combo c = GetParam();
  const RunResult r = run_steps(c.grad, c.model, true);
  EXPECT_EQ(r.mismatches, 0) << r.report;
  for (double n : r.norms) EXPECT_TRUE(std::isfinite(n) && n > 0) << n;
}

INSTANTIATE_TEST_SUITE_P(Dtypes, AdamWCuda,
                         ::testing::Values(Combo{DType::f32, DType::f32}, Combo{DType::f32, DType::bf16},
                                           Combo{DType::bf16, DType::bf16}, Combo{DType::bf16, DType::f16},
                                           Combo{DType::bf16, DType::f32}),
                         [](const ::testing::TestParamInfo<Combo>& i) {
                           return "grad_" + std::string(dtype_name(i.param.grad)) + "_model_" +
                                  std::string(dtype_name(i.param.model));
                         });

TEST(AdamWCudaDeterminism, BitIdenticalAcrossOrders) {
  SKIP_WITHOUT_DEVICE();
#if PTRAIN_CUDA_EMULATED
  const uint64_t saved = ptrain::simt::seed();
  std::vector<RunResult> runs;
  for (uint64_t seed : {0, 1, 2, 3}) {
    ptrain::simt::set_seed(seed);
    runs.push_back(run_steps(DType::bf16, DType::bf16, false));
  }
  ptrain::simt::set_seed(saved);
#else
  std::vector<RunResult> runs;
  for (int k = 0; k < 2; ++k) runs.push_back(run_steps(DType::bf16, DType::bf16, false));
#endif
  for (size_t k = 1; k < runs.size(); ++k) {
    EXPECT_TRUE(runs[k].bits == runs[0].bits) << "AdamW outputs differ between order 0 and order " << k;
    ASSERT_EQ(runs[k].norms.size(), runs[0].norms.size());
    for (size_t s = 0; s < runs[0].norms.size(); ++s)
      EXPECT_EQ(std::memcmp(&runs[k].norms[s], &runs[0].norms[s], sizeof(double)), 0)
          << "grad_sum_squares differs between order 0 and order " << k << " at step " << s + 1 << ": "
          << runs[0].norms[s] << " vs " << runs[k].norms[s];
  }
}

TEST(AdamWCudaPlanted, OneUlpInOneMasterElementIsCaught) {
  SKIP_WITHOUT_DEVICE();
#if !defined(__FMA__)
  GTEST_SKIP() << "the CPU reference is built without FMA (see MatchesCpuAdamWAndNorm)";
#endif
  const RunResult r = run_steps(DType::f32, DType::bf16, true, /*plant_step=*/1);
  // the planted ulp shows at step 2 and propagates to steps 3 (master, then m/v stay exact:
  // they do not read p) — at least the step-2 master element is reported
  EXPECT_GE(r.mismatches, 1);
  EXPECT_NE(r.report.find("step 2 adamw_step.master of big"), std::string::npos) << r.report;
}

TEST(AdamWCudaPlanted, NormComparisonCatchesAPerturbation) {
  // the row's bound rejects a relative error of 1e-9 (far below fp32's 6e-8, far above the
  // double summation error): the comparison is not vacuous
  const OpTolerance& t = tol("grad_sum_squares.out", DType::f32);
  const double c = 12.345;
  EXPECT_TRUE(std::fabs(c * (1 + 1e-14) - c) <= t.atol + t.rtol * c);
  EXPECT_FALSE(std::fabs(c * (1 + 1e-9) - c) <= t.atol + t.rtol * c);
}

TEST(AdamWCudaApi, RejectsBadArguments) {
  SKIP_WITHOUT_DEVICE();
  DeviceBuffer buf(optim_table_bytes(1));
  OptimTensor t;
  t.numel = 10;
  // no gradient
  EXPECT_THROW(optim_upload_table(&t, 1, DType::f32, DType::f32, buf.get(), buf.bytes(), nullptr),
               std::invalid_argument);
  DeviceBuffer g(40);
  t.grad = g.get();
  // short buffer, bad dtype
  EXPECT_THROW(optim_upload_table(&t, 1, DType::f32, DType::f32, buf.get(), buf.bytes() - 1, nullptr),
               std::invalid_argument);
  EXPECT_THROW(optim_upload_table(&t, 1, DType::i32, DType::f32, buf.get(), buf.bytes(), nullptr),
               std::invalid_argument);
  // a grad-only table serves the norm but not AdamW
  const OptimTable tab = optim_upload_table(&t, 1, DType::f32, DType::f32, buf.get(), buf.bytes(), nullptr);
  EXPECT_FALSE(tab.adamw_ready);
  EXPECT_EQ(tab.chunks, 1);
  AdamWStepArgs a;
  EXPECT_THROW(adamw_step(tab, a, nullptr), std::invalid_argument);
  // an empty table: the norm is 0, AdamW launches nothing
  const OptimTable empty = optim_upload_table(nullptr, 0, DType::f32, DType::f32, nullptr, 0, nullptr);
  DeviceBuffer out(sizeof(double));
  reset_launch_counts();
  grad_sum_squares(empty, out.as<double>(), nullptr, nullptr);
  adamw_step(empty, a, nullptr);
  EXPECT_EQ(launch_count("grad_sum_squares_final_kernel"), 1);
  EXPECT_EQ(launch_counts().size(), 1u);
  double v = -1;
  CU(cudaDeviceSynchronize());
  CU(cudaMemcpy(&v, out.get(), sizeof v, cudaMemcpyDeviceToHost));
  EXPECT_EQ(v, 0.0);
}

}  // namespace
}  // namespace ptrain::cuda
