// tests/cuda/test_attention_cuda.cpp — device causal GQA attention (core/cuda/attention.h)
// against the CPU op (core/cpu/kernels.h attention_forward / attention_backward).
//
// For each case, from fixed-seed random inputs already on the dtype's grid:
//  * forward: out and probs against cpu::attention_forward<float> on the same inputs, with
//    store = dt (P rounded as the device stores it; in the backward dS, and dk/dv per group
//    member, likewise), its outputs rounded to dt (as the device stores them), with the table's tolerance
//    (tests/cuda/op_tolerances.h, "attention_forward.out" / ".probs"); and against the double
//    instantiation (fp64 reference r) with the table's cap: max|d - r| <= max(2 max|c - r|,
//    max_i(atol + rtol |r_i|)). Probs above the diagonal must be exact zeros.
//  * backward: the same inputs plus dout on the grid, probs = the CPU forward's rounded to dt
//    (the same saved tensor on both sides), dq/dk/dv starting from random values (the op
//    accumulates), against cpu::attention_backward<float> (rounded to dt) and <double>.
//  * launch counts: cublasLtMatmul g·B + Hq (forward), g·B + 3·Hq (backward), and g launches of
//    causal_softmax_{forward,backward}_kernel<T>, nothing else.
//  * determinism: the device bits are identical under SIMT seeds 0..3 (emulated build: thread
//    and block orders change) or run to run (GPU).
// Planted errors (q heads meeting the wrong kv heads; one output perturbed by 2e-5
// relative; the accumulation dropped) must be caught by the same comparison.
// CudaAttentionLowPrecision: bf16 / f16 device against the CPU rounding at the same points
// and against the CPU before it did (fp32 P·v and dS, dk/dv rounded once): fractions of
// elements that differ at all and by more than one grid step (T 37, D 64, GQA 1, 2, 4).
// Shapes: T in {1, 7, 37, 65} (no multiple of a tile), D in {40, 64, 128}, GQA ratios 1, 2, 4
// (Hq 4 with Hkv 4, 2, 1), B 1 and 2; f32 everywhere, bf16 and f16 on a subset.
// PTRAIN_OPS_STATS=1 prints the observed max errors per output.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <type_traits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/cpu/kernels.h"
#include "core/cuda/attention.h"
#include "core/cuda/device.h"
#include "core/cuda/launch_stats.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "tests/cuda/op_tolerances.h"

#if PTRAIN_CUDA_EMULATED
#include "core/simt/simt.h"
#endif
#include "tests/cuda/device_test_util.h"

namespace ptrain::cuda {
namespace {

#define SKIP_WITHOUT_DEVICE()                                            \
  do {                                                                   \
    if (device_count() == 0) GTEST_SKIP() << "no CUDA device (real or emulated)"; \
  } while (0)

using test::decode;
using test::dev_size;
using test::encode;

/// A device buffer (freed at scope end); fresh contents are 0xFF bytes (NaN) unless uploaded.
struct DevBuf {
  void* p = nullptr;
  size_t bytes = 0;
  explicit DevBuf(size_t n) : bytes(n) {
    if (cudaMalloc(&p, std::max<size_t>(n, 1)) != cudaSuccess) throw Error("cudaMalloc failed in test");
    std::vector<uint8_t> nan(std::max<size_t>(n, 1), 0xFF);
    if (cudaMemcpy(p, nan.data(), nan.size(), cudaMemcpyHostToDevice) != cudaSuccess) throw Error("fill failed");
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

std::vector<float> random_on_grid(size_t n, DType t, const std::string& name, double amp) {
  std::vector<float> v(n);
  const PhiloxKey key = make_key(20240611, name);
  for (size_t i = 0; i < n; ++i) {
    const auto r = philox4x32({static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32), 0, 0}, key);
    v[i] = static_cast<float>((u32_to_unit(r[0]) * 2.0 - 1.0) * amp);
  }
  round_to_dtype(v.data(), static_cast<int64_t>(n), t);
  return v;
}

struct Case {
  int64_t B, T, Hq, Hkv, D;
  DType dt;
  std::string name() const {
    return std::string(dtype_name(dt)) + "_B" + std::to_string(B) + "_T" + std::to_string(T) + "_Hq" +
           std::to_string(Hq) + "_Hkv" + std::to_string(Hkv) + "_D" + std::to_string(D);
  }
  int64_t nq() const { return B * T * Hq * D; }
  int64_t nkv() const { return B * T * Hkv * D; }
  int64_t np() const { return B * Hq * T * T; }
};

std::string kname(const char* base, DType dt) {
  const char* t = dt == DType::f32 ? "float" : dt == DType::bf16 ? "__nv_bfloat16" : "__half";
  return std::string(base) + "<" + t + ">";
}

/// Host inputs of a case.
struct Inputs {
  std::vector<float> q, k, v, dout, dq0, dk0, dv0;
};
Inputs make_inputs(const Case& c) {
  const std::string s = c.name();
  Inputs in;
  in.q = random_on_grid(c.nq(), c.dt, s + "/q", 3.0);  // sharper softmaxes than uniform ones
  in.k = random_on_grid(c.nkv(), c.dt, s + "/k", 1.0);
  in.v = random_on_grid(c.nkv(), c.dt, s + "/v", 1.0);
  in.dout = random_on_grid(c.nq(), c.dt, s + "/dout", 1.0);
  in.dq0 = random_on_grid(c.nq(), c.dt, s + "/dq0", 1.0);
  in.dk0 = random_on_grid(c.nkv(), c.dt, s + "/dk0", 1.0);
  in.dv0 = random_on_grid(c.nkv(), c.dt, s + "/dv0", 1.0);
  return in;
}

struct Outputs {
  std::vector<float> out, probs, dq, dk, dv;
  std::vector<uint8_t> raw;  ///< all device bytes, for bit comparisons
};

/// CPU reference in S (float or double) on the same inputs; `probs_in` is the saved tensor
/// the backward reads (the float forward's rounded to dt). Outputs of the float run are
/// rounded to dt. The float run rounds its intermediates (P, dS, dk/dv per group member) to
/// dt, as the device and core/ops.cpp do, unless `store_f32` (the CPU before it rounded them:
/// only for measuring what the rounding buys); the double run never rounds.
template <class S>
Outputs run_cpu(const Case& c, const Inputs& in, const std::vector<float>* probs_in, bool store_f32 = false) {
  const DType store = std::is_same_v<S, float> && !store_f32 ? c.dt : DType::f32;
  auto cv = [](const std::vector<float>& x) { return std::vector<S>(x.begin(), x.end()); };
  auto back = [&](const std::vector<S>& x) {
    std::vector<float> f(x.begin(), x.end());
    if constexpr (std::is_same_v<S, float>) round_to_dtype(f.data(), static_cast<int64_t>(f.size()), c.dt);
    return f;
  };
  const auto q = cv(in.q), k = cv(in.k), v = cv(in.v), dout = cv(in.dout);
  std::vector<S> out(c.nq()), probs(c.np());
  cpu::attention_forward<S>(q.data(), k.data(), v.data(), out.data(), probs.data(), c.B, c.T, c.Hq, c.Hkv, c.D,
                            store);
  Outputs o;
  o.out = back(out);
  o.probs = back(probs);
  const auto p = probs_in ? cv(*probs_in) : cv(o.probs);
  auto dq = cv(in.dq0), dk = cv(in.dk0), dv = cv(in.dv0);
  cpu::attention_backward<S>(dout.data(), q.data(), k.data(), v.data(), p.data(), dq.data(), dk.data(), dv.data(),
                             c.B, c.T, c.Hq, c.Hkv, c.D, store, store, store);
  o.dq = back(dq);
  o.dk = back(dk);
  o.dv = back(dv);
  return o;
}

/// Planted bugs (each must be caught).
enum class Plant { none, head_mod, perturb_out, no_accumulate };

/// Device forward (inputs from `in`) and backward (probs = `probs_in`, the same saved tensor
/// the CPU backward reads).
Outputs run_device(const Case& c, const Inputs& in, const std::vector<float>& probs_in, Plant plant = Plant::none) {
  const size_t es = dev_size(c.dt);
  DevBuf q(c.nq() * es), k(c.nkv() * es), v(c.nkv() * es), out(c.nq() * es), probs(c.np() * es);
  DevBuf dout(c.nq() * es), p_in(c.np() * es), dq(c.nq() * es), dk(c.nkv() * es), dv(c.nkv() * es);
  const size_t fs = attention_forward_scratch_bytes(c.dt, c.B, c.T, c.Hq, c.Hkv);
  const size_t bs = attention_backward_scratch_bytes(c.dt, c.B, c.T, c.Hq, c.Hkv);
  DevBuf scratch(std::max(fs, bs));
  q.upload(encode(in.q, c.dt));
  if (plant == Plant::head_mod && c.Hkv > 1 && c.Hq != c.Hkv) {
    // kv heads rotated by one on upload: every q head meets the wrong kv head's k and v, as a
    // launcher with a wrong h -> kv head mapping (e.g. h % Hkv instead of h / g) would make it.
    auto rot = [&](const std::vector<float>& x) {
      std::vector<float> y(x.size());
      for (int64_t bt = 0; bt < c.B * c.T; ++bt)
        for (int64_t j = 0; j < c.Hkv; ++j)
          for (int64_t d = 0; d < c.D; ++d)
            y[(bt * c.Hkv + j) * c.D + d] = x[(bt * c.Hkv + (j + 1) % c.Hkv) * c.D + d];
      return y;
    };
    k.upload(encode(rot(in.k), c.dt));
    v.upload(encode(rot(in.v), c.dt));
  } else {
    k.upload(encode(in.k, c.dt));
    v.upload(encode(in.v, c.dt));
  }
  dout.upload(encode(in.dout, c.dt));
  p_in.upload(encode(probs_in, c.dt));
  dq.upload(encode(plant == Plant::no_accumulate ? std::vector<float>(in.dq0.size(), 0.0f) : in.dq0, c.dt));
  dk.upload(encode(in.dk0, c.dt));
  dv.upload(encode(in.dv0, c.dt));

  attention_forward(q.p, k.p, v.p, out.p, probs.p, c.B, c.T, c.Hq, c.Hkv, c.D, c.dt, scratch.p, nullptr);
  attention_backward(dout.p, q.p, k.p, v.p, p_in.p, dq.p, dk.p, dv.p, c.B, c.T, c.Hq, c.Hkv, c.D, c.dt, scratch.p,
                     nullptr);
  if (cudaDeviceSynchronize() != cudaSuccess) {
    std::string msg = "cudaDeviceSynchronize failed after attention";
#if PTRAIN_CUDA_EMULATED
    msg += std::string("\n") + ptrain::simt::fault_message();
#endif
    throw Error(msg);
  }
  Outputs o;
  for (DevBuf* b : {&out, &probs, &dq, &dk, &dv}) {
    const auto raw = b->download();
    o.raw.insert(o.raw.end(), raw.begin(), raw.end());
  }
  o.out = decode(out.download(), c.dt);
  o.probs = decode(probs.download(), c.dt);
  o.dq = decode(dq.download(), c.dt);
  o.dk = decode(dk.download(), c.dt);
  o.dv = decode(dv.download(), c.dt);
  if (plant == Plant::perturb_out) {
    const size_t i = o.out.size() / 2;
    o.out[i] += 2e-5f * std::max(std::fabs(o.out[i]), 1.0f);
  }
  return o;
}

/// Number of elements outside the table's tolerance (plus fp64-cap failures), with a message.
struct Check {
  int64_t bad = 0;
  std::string msg;
};
Check compare(const std::string& op, DType dt, const std::vector<float>& d, const std::vector<float>& cf,
              const std::vector<float>& r) {
  Check ch;
  const testing::OpTolerance* tol = testing::find_op_tolerance(op, dt);
  if (!tol) {
    ch.bad = 1;
    ch.msg = "no tolerance row for " + op + " " + std::string(dtype_name(dt));
    return ch;
  }
  double worst = 0, max_cr = 0, max_dr = 0, cap_tol = 0, need_atol = 0;
  for (size_t i = 0; i < d.size(); ++i) {
    const double err = std::fabs(static_cast<double>(d[i]) - cf[i]);
    const double lim = tol->atol + tol->rtol * std::fabs(static_cast<double>(cf[i]));
    if (!(err <= lim)) {
      if (ch.bad++ == 0)
        ch.msg += op + "[" + std::to_string(i) + "]: device " + std::to_string(d[i]) + " cpu " + std::to_string(cf[i]) +
                  " |err| " + std::to_string(err) + " > " + std::to_string(lim) + "\n";
    }
    worst = std::max(worst, err);
    need_atol = std::max(need_atol, err - tol->rtol * std::fabs(static_cast<double>(cf[i])));
    max_cr = std::max(max_cr, std::fabs(static_cast<double>(cf[i]) - r[i]));
    max_dr = std::max(max_dr, std::fabs(static_cast<double>(d[i]) - r[i]));
    cap_tol = std::max(cap_tol, tol->atol + tol->rtol * std::fabs(static_cast<double>(r[i])));
  }
  const double cap = std::max(2 * max_cr, cap_tol);
  if (!(max_dr <= cap)) {
    ++ch.bad;
    ch.msg += op + ": max|device - fp64| " + std::to_string(max_dr) + " > cap " + std::to_string(cap) + "\n";
  }
  if (std::getenv("PTRAIN_OPS_STATS"))
    std::printf("  %-28s %-5s max|d-c| %.3g (atol needed at this rtol: %.3g)  max|d-r| %.3g  max|c-r| %.3g\n",
                op.c_str(), std::string(dtype_name(dt)).c_str(), worst, need_atol, max_dr, max_cr);
  return ch;
}

struct Refs {
  Inputs in;
  Outputs cpu, ref;
};
Refs make_refs(const Case& c) {
  Refs r;
  r.in = make_inputs(c);
  r.cpu = run_cpu<float>(c, r.in, nullptr);
  r.ref = run_cpu<double>(c, r.in, &r.cpu.probs);
  return r;
}

int64_t check_all(const Case& c, const Refs& r, const Outputs& dev, std::string* msg) {
  int64_t bad = 0;
  auto add = [&](const Check& ch) {
    bad += ch.bad;
    *msg += ch.msg;
  };
  add(compare("attention_forward.out", c.dt, dev.out, r.cpu.out, r.ref.out));
  add(compare("attention_forward.probs", c.dt, dev.probs, r.cpu.probs, r.ref.probs));
  add(compare("attention_backward.dq", c.dt, dev.dq, r.cpu.dq, r.ref.dq));
  add(compare("attention_backward.dk", c.dt, dev.dk, r.cpu.dk, r.ref.dk));
  add(compare("attention_backward.dv", c.dt, dev.dv, r.cpu.dv, r.ref.dv));
  return bad;
}

std::vector<Case> all_cases() {
  std::vector<Case> cs;
  const std::vector<std::array<int64_t, 5>> f32_shapes = {
      // B, T, Hq, Hkv, D
      {1, 1, 4, 4, 64},  {2, 1, 4, 1, 40},  {2, 7, 4, 2, 64},   {1, 7, 4, 4, 128}, {1, 37, 4, 1, 128},
      {2, 37, 4, 2, 40}, {1, 65, 4, 4, 64}, {2, 65, 4, 1, 64},  {1, 65, 4, 2, 128}, {2, 37, 2, 2, 64},
  };
  for (const auto& s : f32_shapes) cs.push_back({s[0], s[1], s[2], s[3], s[4], DType::f32});
  const std::vector<std::array<int64_t, 5>> low_shapes = {
      {1, 1, 4, 2, 64}, {2, 7, 4, 1, 40}, {2, 37, 4, 2, 64}, {1, 65, 4, 4, 128}, {1, 65, 4, 1, 64},
  };
  for (const auto& s : low_shapes) cs.push_back({s[0], s[1], s[2], s[3], s[4], DType::bf16});
  cs.push_back({2, 37, 4, 2, 64, DType::f16});
  cs.push_back({1, 65, 4, 1, 128, DType::f16});
  return cs;
}

class CudaAttention : public ::testing::TestWithParam<Case> {};

TEST_P(CudaAttention, MatchesCpuCountsLaunchesAndIsDeterministic) {
  SKIP_WITHOUT_DEVICE();
  const Case& c = GetParam();
  if (std::getenv("PTRAIN_OPS_STATS")) std::printf("%s\n", c.name().c_str());
  const Refs r = make_refs(c);

  reset_launch_counts();
  const Outputs dev = run_device(c, r.in, r.cpu.probs);
  const int64_t G = c.Hq / c.Hkv;
  const std::map<std::string, int64_t> want = {
      {"cublasLtMatmul", (G * c.B + c.Hq) + (G * c.B + 3 * c.Hq)},
      {kname("causal_softmax_forward_kernel", c.dt), G},
      {kname("causal_softmax_backward_kernel", c.dt), G},
  };
  EXPECT_EQ(launch_counts(), want) << c.name();

  std::string msg;
  EXPECT_EQ(check_all(c, r, dev, &msg), 0) << c.name() << "\n" << msg;

  // Exact zeros above the diagonal.
  int64_t nonzero = 0;
  for (int64_t bh = 0; bh < c.B * c.Hq; ++bh)
    for (int64_t t = 0; t < c.T; ++t)
      for (int64_t u = t + 1; u < c.T; ++u) nonzero += dev.probs[(bh * c.T + t) * c.T + u] != 0.0f;
  EXPECT_EQ(nonzero, 0) << c.name() << ": probs above the diagonal must be exact zeros";

#if PTRAIN_CUDA_EMULATED
  const uint64_t saved = ptrain::simt::seed();
  for (uint64_t s : {0, 1, 2, 3}) {
    ptrain::simt::set_seed(s);
    const Outputs again = run_device(c, r.in, r.cpu.probs);
    EXPECT_TRUE(again.raw == dev.raw) << c.name() << ": device bits differ under SIMT seed " << s;
  }
  ptrain::simt::set_seed(saved);
#else
  ASSERT_FALSE(emulated()) << "emulated build without PTRAIN_CUDA_EMULATED for this test";
  EXPECT_TRUE(run_device(c, r.in, r.cpu.probs).raw == dev.raw) << c.name() << ": device bits differ run to run";
#endif
}

INSTANTIATE_TEST_SUITE_P(Attention, CudaAttention, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name(); });

TEST(CudaAttentionPlanted, WrongKvHeadMappingIsCaught) {
  SKIP_WITHOUT_DEVICE();
  const Case c{2, 37, 4, 2, 64, DType::f32};
  const Refs r = make_refs(c);
  std::string msg;
  EXPECT_GT(check_all(c, r, run_device(c, r.in, r.cpu.probs, Plant::head_mod), &msg), 0)
      << "a wrong q head -> kv head mapping went unnoticed";
}

TEST(CudaAttentionPlanted, SmallPerturbationIsCaught) {
  SKIP_WITHOUT_DEVICE();
  const Case c{1, 37, 4, 1, 64, DType::f32};
  const Refs r = make_refs(c);
  std::string msg;
  EXPECT_EQ(check_all(c, r, run_device(c, r.in, r.cpu.probs), &msg), 0) << msg;
  msg.clear();
  EXPECT_GT(check_all(c, r, run_device(c, r.in, r.cpu.probs, Plant::perturb_out), &msg), 0)
      << "a 2e-5 relative error in one output went unnoticed";
}

TEST(CudaAttentionPlanted, DroppedAccumulationIsCaught) {
  SKIP_WITHOUT_DEVICE();
  const Case c{1, 7, 4, 2, 40, DType::bf16};
  const Refs r = make_refs(c);
  std::string msg;
  EXPECT_GT(check_all(c, r, run_device(c, r.in, r.cpu.probs, Plant::no_accumulate), &msg), 0)
      << "dq overwritten instead of accumulated went unnoticed";
}

/// One grid step of dt at |x| (x on dt's grid or not): bf16 8 significant bits, f16 11 with
/// subnormals below 2^-14; f32 24 bits.
double grid_ulp(double x, DType dt) {
  int e = 0;
  (void)std::frexp(std::fabs(x), &e);  // |x| = m 2^e, m in [0.5, 1)
  --e;                                 // |x| in [2^e, 2^(e+1))
  if (x == 0.0) e = -126;
  switch (dt) {
    case DType::bf16: return std::ldexp(1.0, std::max(e, -126) - 7);
    case DType::f16: return std::ldexp(1.0, std::max(e, -14) - 10);
    default: return std::ldexp(1.0, std::max(e, -126) - 23);
  }
}

/// Agreement of a device output d with a CPU output c (both on dt's grid).
struct Agreement {
  double frac_diff = 0;      ///< fraction of elements with d != c
  double frac_over_ulp = 0;  ///< fraction of elements with |d - c| > one grid step of max(|d|, |c|)
  double max_rel = 0;        ///< max |d - c| / max |c| (normwise relative)
  int64_t max_ulps = 0;      ///< largest |d - c| in grid steps of max(|d|, |c|)
};
Agreement agreement(const std::vector<float>& d, const std::vector<float>& c, DType dt) {
  Agreement a;
  double max_c = 0, max_err = 0;
  int64_t over = 0, diff = 0;
  for (size_t i = 0; i < d.size(); ++i) {
    const double err = std::fabs(static_cast<double>(d[i]) - c[i]);
    diff += d[i] != c[i];
    const double ulp = grid_ulp(std::max(std::fabs(d[i]), std::fabs(c[i])), dt);
    over += err > ulp;
    a.max_ulps = std::max(a.max_ulps, static_cast<int64_t>(std::llround(err / ulp)));
    max_c = std::max(max_c, std::fabs(static_cast<double>(c[i])));
    max_err = std::max(max_err, err);
  }
  a.frac_over_ulp = d.empty() ? 0.0 : static_cast<double>(over) / static_cast<double>(d.size());
  a.frac_diff = d.empty() ? 0.0 : static_cast<double>(diff) / static_cast<double>(d.size());
  a.max_rel = max_c > 0 ? max_err / max_c : max_err;
  return a;
}

// bf16 / f16: the CPU reference rounds P (saved, and read so by P·v), dS (scale folded in)
// and dk / dv after each group member exactly where the device stores in dt, so the two
// differ only by fp32 summation order: a stored value sits one grid step apart where that
// order flips a rounding, and rarely further (a flipped P or dS element moves a sum by one
// step of that element). Before, the CPU kept P·v and dS in fp32 and rounded dk / dv once:
// out moved by up to 2^-9 Σ p |v|, dq by the dS rounding, dk / dv by G - 1 extra roundings.
// T = 37 (no multiple of a tile), D = 64 with GQA 1, 2, 4, D = 40 and 8 with GQA 2;
// PTRAIN_OPS_STATS=1 prints both.
// Emulated build (the same sgemm as the CPU): bit-identical now; before, per output, 6% (dq)
// to 47% (dk, GQA 4) of the elements differed and 0.7% to 11% by more than one step, by up
// to ~1000 steps (near-zero values). The bounds below (3% differing, 0.5% beyond one step)
// leave a GPU's FMA / summation order room (the CPU kernel against a double reference with
// the same rounding points, tests/core/test_kernels_attention.cpp: <= 0.54% and 0.13%, f16)
// and are still below every "before" that is not 0. max_rel, max|d - c| / max|c|, is
// reported and capped at two steps of the largest value (a sanity bound: before was within
// it too, as a flip on the largest element alone reaches one step).
TEST(CudaAttentionLowPrecision, CpuRoundsWhereTheDeviceStores) {
  SKIP_WITHOUT_DEVICE();
  const bool stats = std::getenv("PTRAIN_OPS_STATS") != nullptr;
  // D 64 (scale 1/8, a power of two) for GQA 1, 2, 4; D 40 and D 8 (as the device training
  // test's model): the scale folded into dS before its rounding matters there.
  const std::array<int64_t, 3> shapes[] = {{1, 4, 64}, {1, 2, 64}, {1, 1, 64}, {2, 2, 40}, {2, 2, 8}};  // B, Hkv, D
  for (DType dt : {DType::bf16, DType::f16})
    for (const auto& sh : shapes) {
      const Case c{sh[0], 37, 4, sh[1], sh[2], dt};
      const Inputs in = make_inputs(c);
      const Outputs now = run_cpu<float>(c, in, nullptr);
      const Outputs before = run_cpu<float>(c, in, nullptr, /*store_f32=*/true);
      // The device backward reads the CPU's saved P (as the harness does); the device
      // forward's own probs are compared with it below.
      const Outputs dev = run_device(c, in, now.probs);
      const char* names[] = {"out", "probs", "dq", "dk", "dv"};
      const std::vector<float>* dv_[] = {&dev.out, &dev.probs, &dev.dq, &dev.dk, &dev.dv};
      const std::vector<float>* nw[] = {&now.out, &now.probs, &now.dq, &now.dk, &now.dv};
      const std::vector<float>* bf[] = {&before.out, &before.probs, &before.dq, &before.dk, &before.dv};
      for (int i = 0; i < 5; ++i) {
        const Agreement a = agreement(*dv_[i], *nw[i], dt), b = agreement(*dv_[i], *bf[i], dt);
        if (stats)
          std::printf("  %s %-5s now: !=%.4f >1ulp %.4f max %lld ulp rel %.2e | before: !=%.4f >1ulp %.4f max %lld "
                      "ulp rel %.2e\n",
                      c.name().c_str(), names[i], a.frac_diff, a.frac_over_ulp, static_cast<long long>(a.max_ulps),
                      a.max_rel, b.frac_diff, b.frac_over_ulp, static_cast<long long>(b.max_ulps), b.max_rel);
        const std::string what = c.name() + " " + names[i];
        EXPECT_LE(a.frac_diff, 0.03) << what;
        EXPECT_LE(a.frac_over_ulp, 0.005) << what;
        EXPECT_LE(a.max_rel, dt == DType::bf16 ? 0x1p-6 : 0x1p-9) << what;
        // The comparison sees the old reference's gap (where it had one): not vacuous.
        if (i == 0) {
          EXPECT_GT(b.frac_diff, 0.1) << what << ": the fp32-P reference agrees as well?";
        }
      }
    }
}

TEST(CudaAttentionApi, RejectsBadArgumentsAndEmptyWork) {
  SKIP_WITHOUT_DEVICE();
  EXPECT_THROW(attention_forward(nullptr, nullptr, nullptr, nullptr, nullptr, 1, 4, 3, 2, 64, DType::f32, nullptr,
                                 nullptr),
               Error);  // Hq % Hkv != 0
  EXPECT_THROW(attention_forward(nullptr, nullptr, nullptr, nullptr, nullptr, 1, 4, 4, 2, 64, DType::i32, nullptr,
                                 nullptr),
               std::invalid_argument);
  reset_launch_counts();
  attention_forward(nullptr, nullptr, nullptr, nullptr, nullptr, 0, 4, 4, 2, 64, DType::f32, nullptr, nullptr);
  attention_backward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 1, 0, 4, 2, 64,
                     DType::bf16, nullptr, nullptr);
  EXPECT_TRUE(launch_counts().empty());
  EXPECT_EQ(attention_forward_scratch_bytes(DType::f32, 2, 37, 4, 2), 0u);
  EXPECT_GE(attention_forward_scratch_bytes(DType::bf16, 2, 37, 4, 2), size_t(2 * 2 * 37 * 37 * 4));
  EXPECT_GE(attention_backward_scratch_bytes(DType::bf16, 2, 37, 4, 2), size_t(2 * 2 * 37 * 37 * 6));
  EXPECT_GE(attention_backward_scratch_bytes(DType::bf16, 2, 37, 4, 2),
            attention_forward_scratch_bytes(DType::bf16, 2, 37, 4, 2));
}

}  // namespace
}  // namespace ptrain::cuda
