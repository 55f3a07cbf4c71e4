// tests/cuda/test_ops_cuda.cpp — every CUDA op against its CPU op (ggml-style op harness).
//
// A table of cases (op × dtype {f32, bf16, f16} × shapes, odd ones included: rows = 37,
// C = 100, C = 1, V = 1000 in Vp = 1003 padded columns, sizes not a multiple of any block).
// For each case, from fixed-seed random inputs already on the dtype's grid:
//  * the CPU result: core/cpu/kernels.h in float, outputs rounded to the dtype where the op
//    stores in it (the CPU emulates bf16/f16 as floats rounded on store);
//  * the fp64 reference: the double instantiation of the same CPU kernels, same inputs;
//  * the device result: the launchers of core/cuda/ops.h on cudaMalloc'ed copies
//    (bf16/f16 converted on the host with __float2bfloat16_rn / __float2half_rn).
// Checks: |dev - cpu| <= atol + rtol |cpu| per element (tests/cuda/op_tolerances.h, the one
// table), and the device's max error against fp64 <= max(2 × the CPU's, the table tolerance);
// the exact set of kernels each op launched, by name and count (core/cuda/launch_stats.h);
// determinism: bit-identical outputs under the SIMT runtime's thread/block orders 0 (index
// order), 1 (reversed), 2 and 3 in the emulated build, run to run on a GPU; one chain of ops
// on two streams joined by an event gives the bits of the same chain on one stream.
// The comparison itself is shown to catch planted errors. Every test is skipped (with the
// reason) when cudaGetDeviceCount reports no device.
#include <gtest/gtest.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/cpu/kernels.h"
#include "core/cuda/launch_stats.h"
#include "core/cuda/ops.h"
#include "core/dtype.h"
#include "core/rng.h"
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

#define SKIP_WITHOUT_DEVICE()                                                                            \
  do {                                                                                                   \
    if (visible_devices() == 0)                                                                          \
      GTEST_SKIP() << "cudaGetDeviceCount reports no CUDA device: the CUDA ops cannot run on this machine"; \
  } while (0)

template <class T> Bytes raw_bytes(const std::vector<T>& v) {
  Bytes b(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

/// A device copy of `bytes` (synchronous, or ordered on `stream` when given).
std::unique_ptr<DeviceBuffer> upload(const Bytes& bytes, cudaStream_t stream = nullptr) {
  auto d = std::make_unique<DeviceBuffer>(bytes.size());
  if (!bytes.empty()) {
    if (stream)
      CU(cudaMemcpyAsync(d->get(), bytes.data(), bytes.size(), cudaMemcpyHostToDevice, stream));
    else
      CU(cudaMemcpy(d->get(), bytes.data(), bytes.size(), cudaMemcpyHostToDevice));
  }
  return d;
}

/// An output buffer filled with 0xFF bytes (NaN in every float dtype), so an element the
/// kernel forgets to write shows.
std::unique_ptr<DeviceBuffer> poisoned(size_t bytes) {
  auto d = std::make_unique<DeviceBuffer>(bytes);
  if (bytes) CU(cudaMemset(d->get(), 0xFF, bytes));
  return d;
}

Bytes download(const DeviceBuffer& d) {
  Bytes b(d.bytes());
  CU(cudaDeviceSynchronize());
  if (!b.empty()) CU(cudaMemcpy(b.data(), d.get(), b.size(), cudaMemcpyDeviceToHost));
  return b;
}

// ------------------------------------------------------------------ cases and inputs

/// One op on one dtype and shape. Shape fields by op:
///   embedding_*: a = tokens n, b = vocabulary rows V, c = channels C
///   rms_norm_*: a = rows, b = C          add_forward / accumulate: a = elements n
///   cross_entropy_*: a = rows N, b = padded vocabulary Vp, c = real vocabulary V
///   silu_*, gelu_tanh_*, swiglu_*, mul_*, scale_*: a = elements n; for swiglu_backward and
///     mul_backward c selects the gradients: 0 both, 1 the first only, 2 the second only
///   rope_*: a = B, b = Tn, c = H, d = head dim D
///   layer_norm_*: a = rows, b = C; forward c = 1: no bias; backward c = 0: dx, dw, db,
///     1: dx only, 2: dw and db only
///   split_*: a = rows, b = the split tensor's last dim S, c = the piece's columns, d = its
///     first column (the piece is columns [d, d + c) of x [rows, S])
struct Case {
  std::string op;
  DType dt;
  int64_t a = 0, b = 0, c = 0, d = 0;
};

std::string shape_str(const Case& c) {
  std::ostringstream s;
  if (c.op.rfind("embedding", 0) == 0)
    s << "n" << c.a << "_V" << c.b << "_C" << c.c;
  else if (c.op.rfind("rms_norm", 0) == 0)
    s << "rows" << c.a << "_C" << c.b;
  else if (c.op.rfind("layer_norm", 0) == 0)
    s << "rows" << c.a << "_C" << c.b << (c.c ? "_v" + std::to_string(c.c) : "");
  else if (c.op.rfind("rope", 0) == 0)
    s << "B" << c.a << "_T" << c.b << "_H" << c.c << "_D" << c.d;
  else if (c.op.rfind("cross_entropy", 0) == 0)
    s << "N" << c.a << "_Vp" << c.b << "_V" << c.c;
  else if (c.op.rfind("split", 0) == 0)
    s << "rows" << c.a << "_S" << c.b << "_cols" << c.c << "_off" << c.d;
  else
    s << "n" << c.a << (c.c ? "_v" + std::to_string(c.c) : "");
  return s.str();
}
std::string describe(const Case& c) { return c.op + " " + std::string(dtype_name(c.dt)) + " " + shape_str(c); }

void PrintTo(const Case& c, std::ostream* os) { *os << describe(c); }

constexpr uint64_t kSeed = 20240611;
constexpr double kEps = 1e-5;

/// Inputs are a pure function of (shape, input name), rounded to the case's dtype: every
/// backend and every determinism rerun sees the same values.
class Inputs {
 public:
  explicit Inputs(const Case& c) : tag_(shape_str(c)), dt_(c.dt) {}
  /// n values mean + scale * N(0, 1), rounded to the dtype's grid.
  std::vector<float> normal(const char* name, int64_t n, double scale = 1.0, double mean = 0.0) const {
    const PhiloxKey key = make_key(kSeed, tag_ + "/" + name);
    std::vector<float> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[i] = static_cast<float>(mean + scale * random_normal(key, i));
    round_to_dtype(v.data(), n, dt_);
    return v;
  }
  std::vector<int32_t> below(const char* name, int64_t n, int64_t bound) const {
    const PhiloxKey key = make_key(kSeed, tag_ + "/" + name);
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[i] = static_cast<int32_t>(random_below(key, i, bound));
    return v;
  }

 private:
  std::string tag_;
  DType dt_;
};

template <class T> std::vector<T> as(const std::vector<float>& v) { return std::vector<T>(v.begin(), v.end()); }
std::vector<double> widen(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

enum class Backend { cpu_f32, cpu_f64, device };

struct Output {
  std::string name;            ///< "<op>.<output>", the tolerance table's key
  std::vector<double> values;  ///< every backend's values (float results widened exactly)
  Bytes raw;                   ///< the device's bytes (device backend only)
};
using Outputs = std::vector<Output>;

/// The result of f in float (rounded to dt where `rounded`), or in double.
template <class F> std::vector<double> cpu_result(Backend be, DType dt, bool rounded, std::vector<float> init, F f) {
  if (be == Backend::cpu_f64) {
    std::vector<double> d = widen(init);
    f(d);
    return d;
  }
  f(init);
  if (rounded) round_to_dtype(init.data(), static_cast<int64_t>(init.size()), dt);
  return widen(init);
}

Output device_output(const std::string& name, const DeviceBuffer& d, DType dt) {
  Output o{name, {}, download(d)};
  const std::vector<float> f = decode(o.raw, dt);
  o.values.assign(f.begin(), f.end());
  return o;
}

// ------------------------------------------------------------------ the ops

Outputs run_embedding_forward(const Case& c, Backend be) {
  const int64_t n = c.a, V = c.b, C = c.c;
  const Inputs in(c);
  const auto ids = in.below("ids", n, V);
  const auto table = in.normal("table", V * C);
  if (be != Backend::device) {
    return {{"embedding_forward.out", cpu_result(be, c.dt, true, std::vector<float>(n * C), [&](auto& out) {
               using T = typename std::decay_t<decltype(out)>::value_type;
               const auto t = as<T>(table);
               cpu::embedding_forward<T>(ids.data(), t.data(), out.data(), n, C);
             })}};
  }
  auto d_ids = upload(raw_bytes(ids));
  auto d_table = upload(encode(table, c.dt));
  auto d_out = poisoned(n * C * dev_size(c.dt));
  embedding_forward(d_ids->as<int32_t>(), d_table->get(), d_out->get(), n, C, c.dt, nullptr);
  return {device_output("embedding_forward.out", *d_out, c.dt)};
}

Outputs run_embedding_backward(const Case& c, Backend be) {
  const int64_t n = c.a, V = c.b, C = c.c;
  const Inputs in(c);
  const auto ids = in.below("ids", n, V);
  const auto dout = in.normal("dout", n * C);
  const auto dtable0 = in.normal("dtable", V * C);
  if (be != Backend::device) {
    return {{"embedding_backward.dtable", cpu_result(be, c.dt, true, dtable0, [&](auto& dtable) {
               using T = typename std::decay_t<decltype(dtable)>::value_type;
               const auto g = as<T>(dout);
               cpu::embedding_backward<T>(ids.data(), g.data(), dtable.data(), n, C);
             })}};
  }
  auto d_ids = upload(raw_bytes(ids));
  auto d_dout = upload(encode(dout, c.dt));
  auto d_dtable = upload(encode(dtable0, c.dt));
  auto d_scratch = poisoned(embedding_backward_scratch_bytes(n));
  embedding_backward(d_ids->as<int32_t>(), d_dout->get(), d_dtable->get(), n, C, c.dt, d_scratch->get(), nullptr);
  return {device_output("embedding_backward.dtable", *d_dtable, c.dt)};
}

struct RmsInputs {
  std::vector<float> x, w, dy, dx0, dw0, rstd;
};
RmsInputs rms_inputs(const Case& c) {
  const int64_t rows = c.a, C = c.b;
  const Inputs in(c);
  RmsInputs r{in.normal("x", rows * C), in.normal("w", C, 0.1, 1.0), in.normal("dy", rows * C),
              in.normal("dx", rows * C), in.normal("dw", C), std::vector<float>(rows)};
  // The backward's saved statistic: the CPU forward's fp32 rstd, the same input for all backends.
  std::vector<float> y(rows * C);
  cpu::rms_norm_forward<float>(r.x.data(), r.w.data(), y.data(), r.rstd.data(), rows, C, kEps);
  return r;
}

Outputs run_rms_norm_forward(const Case& c, Backend be) {
  const int64_t rows = c.a, C = c.b;
  const RmsInputs r = rms_inputs(c);
  if (be != Backend::device) {
    std::vector<double> rstd;
    auto y = cpu_result(be, c.dt, true, std::vector<float>(rows * C), [&](auto& yv) {
      using T = typename std::decay_t<decltype(yv)>::value_type;
      const auto x = as<T>(r.x), w = as<T>(r.w);
      std::vector<T> rs(rows);
      cpu::rms_norm_forward<T>(x.data(), w.data(), yv.data(), rs.data(), rows, C, kEps);
      rstd.assign(rs.begin(), rs.end());  // fp32 in float: not rounded to the dtype
    });
    return {{"rms_norm_forward.y", y}, {"rms_norm_forward.rstd", rstd}};
  }
  auto d_x = upload(encode(r.x, c.dt));
  auto d_w = upload(encode(r.w, c.dt));
  auto d_y = poisoned(rows * C * dev_size(c.dt));
  auto d_rstd = poisoned(rows * sizeof(float));
  rms_norm_forward(d_x->get(), d_w->get(), d_y->get(), d_rstd->as<float>(), rows, C, kEps, c.dt, nullptr);
  return {device_output("rms_norm_forward.y", *d_y, c.dt), device_output("rms_norm_forward.rstd", *d_rstd, DType::f32)};
}

Outputs run_rms_norm_backward(const Case& c, Backend be) {
  const int64_t rows = c.a, C = c.b;
  const RmsInputs r = rms_inputs(c);
  if (be != Backend::device) {
    std::vector<double> dw;
    auto dx = cpu_result(be, c.dt, true, r.dx0, [&](auto& dxv) {
      using T = typename std::decay_t<decltype(dxv)>::value_type;
      const auto dy = as<T>(r.dy), x = as<T>(r.x), w = as<T>(r.w), rs = as<T>(r.rstd);
      std::vector<T> dwv = as<T>(r.dw0);
      cpu::rms_norm_backward<T>(dy.data(), x.data(), w.data(), rs.data(), dxv.data(), dwv.data(), rows, C);
      if constexpr (std::is_same_v<T, float>) round_to_dtype(dwv.data(), C, c.dt);
      dw.assign(dwv.begin(), dwv.end());
    });
    return {{"rms_norm_backward.dx", dx}, {"rms_norm_backward.dw", dw}};
  }
  auto d_dy = upload(encode(r.dy, c.dt));
  auto d_x = upload(encode(r.x, c.dt));
  auto d_w = upload(encode(r.w, c.dt));
  auto d_rstd = upload(raw_bytes(r.rstd));
  auto d_dx = upload(encode(r.dx0, c.dt));
  auto d_dw = upload(encode(r.dw0, c.dt));
  auto d_scratch = poisoned(rms_norm_backward_scratch_bytes(rows, C));
  rms_norm_backward(d_dy->get(), d_x->get(), d_w->get(), d_rstd->as<float>(), d_dx->get(), d_dw->get(), rows, C, c.dt,
                    d_scratch->get(), nullptr);
  return {device_output("rms_norm_backward.dx", *d_dx, c.dt), device_output("rms_norm_backward.dw", *d_dw, c.dt)};
}

Outputs run_add_forward(const Case& c, Backend be) {
  const int64_t n = c.a;
  const Inputs in(c);
  const auto a = in.normal("a", n), b = in.normal("b", n, 0.5);
  if (be != Backend::device) {
    return {{"add_forward.y", cpu_result(be, c.dt, true, std::vector<float>(n), [&](auto& y) {
               using T = typename std::decay_t<decltype(y)>::value_type;
               const auto av = as<T>(a), bv = as<T>(b);
               cpu::add_forward<T>(av.data(), bv.data(), y.data(), n);
             })}};
  }
  auto d_a = upload(encode(a, c.dt));
  auto d_b = upload(encode(b, c.dt));
  auto d_y = poisoned(n * dev_size(c.dt));
  add_forward(d_a->get(), d_b->get(), d_y->get(), n, c.dt, nullptr);
  return {device_output("add_forward.y", *d_y, c.dt)};
}

Outputs run_accumulate(const Case& c, Backend be) {
  const int64_t n = c.a;
  const Inputs in(c);
  const auto dst0 = in.normal("dst", n), src = in.normal("src", n, 0.5);
  if (be != Backend::device) {
    return {{"accumulate.dst", cpu_result(be, c.dt, true, dst0, [&](auto& dst) {
               using T = typename std::decay_t<decltype(dst)>::value_type;
               const auto s = as<T>(src);
               cpu::axpy<T>(T(1), s.data(), dst.data(), n);
             })}};
  }
  auto d_dst = upload(encode(dst0, c.dt));
  auto d_src = upload(encode(src, c.dt));
  accumulate(d_dst->get(), d_src->get(), n, c.dt, nullptr);
  return {device_output("accumulate.dst", *d_dst, c.dt)};
}

struct CeInputs {
  std::vector<float> logits, dloss, dlogits0, lse;
  std::vector<int32_t> targets;
};
CeInputs ce_inputs(const Case& c) {
  const int64_t N = c.a, Vp = c.b, V = c.c;
  const Inputs in(c);
  CeInputs r{in.normal("logits", N * Vp, 3.0), in.normal("dloss", N), in.normal("dlogits", N * Vp), {},
             in.below("targets", N, V)};
  // Padded columns hold NaN: a kernel reading them would show it. About 1 row in 5 is ignored
  // (target < 0), row 1 always (when it exists).
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = V; j < Vp; ++j) r.logits[i * Vp + j] = std::numeric_limits<float>::quiet_NaN();
  const auto skip = in.below("ignored", N, 5);
  for (int64_t i = 0; i < N; ++i)
    if (skip[i] == 0 || i == 1) r.targets[i] = i % 2 ? -1 : -100;
  // The backward's saved statistic: the CPU forward's fp32 lse, the same input for all backends.
  std::vector<float> losses(N);
  r.lse.resize(N);
  cpu::cross_entropy_forward<float>(r.logits.data(), r.targets.data(), losses.data(), r.lse.data(), N, Vp, V);
  return r;
}

Outputs run_cross_entropy_forward(const Case& c, Backend be) {
  const int64_t N = c.a, Vp = c.b, V = c.c;
  const CeInputs r = ce_inputs(c);
  if (be != Backend::device) {
    std::vector<double> lse;
    auto loss = cpu_result(be, c.dt, false, std::vector<float>(N), [&](auto& losses) {
      using T = typename std::decay_t<decltype(losses)>::value_type;
      const auto x = as<T>(r.logits);
      std::vector<T> l(N);
      cpu::cross_entropy_forward<T>(x.data(), r.targets.data(), losses.data(), l.data(), N, Vp, V);
      lse.assign(l.begin(), l.end());
    });
    return {{"cross_entropy_forward.loss", loss}, {"cross_entropy_forward.lse", lse}};
  }
  auto d_logits = upload(encode(r.logits, c.dt));
  auto d_targets = upload(raw_bytes(r.targets));
  auto d_losses = poisoned(N * sizeof(float));
  auto d_lse = poisoned(N * sizeof(float));
  cross_entropy_forward(d_logits->get(), d_targets->as<int32_t>(), d_losses->as<float>(), d_lse->as<float>(), N, Vp, V,
                        c.dt, nullptr);
  return {device_output("cross_entropy_forward.loss", *d_losses, DType::f32),
          device_output("cross_entropy_forward.lse", *d_lse, DType::f32)};
}

Outputs run_cross_entropy_backward(const Case& c, Backend be) {
  const int64_t N = c.a, Vp = c.b, V = c.c;
  const CeInputs r = ce_inputs(c);
  if (be != Backend::device) {
    return {{"cross_entropy_backward.dlogits", cpu_result(be, c.dt, true, r.dlogits0, [&](auto& dl) {
               using T = typename std::decay_t<decltype(dl)>::value_type;
               const auto x = as<T>(r.logits), lse = as<T>(r.lse), g = as<T>(r.dloss);
               cpu::cross_entropy_backward<T>(x.data(), r.targets.data(), lse.data(), g.data(), dl.data(), N, Vp, V);
             })}};
  }
  auto d_logits = upload(encode(r.logits, c.dt));
  auto d_targets = upload(raw_bytes(r.targets));
  auto d_lse = upload(raw_bytes(r.lse));
  auto d_dloss = upload(raw_bytes(r.dloss));
  auto d_dlogits = upload(encode(r.dlogits0, c.dt));
  cross_entropy_backward(d_logits->get(), d_targets->as<int32_t>(), d_lse->as<float>(), d_dloss->as<float>(),
                         d_dlogits->get(), N, Vp, V, c.dt, nullptr);
  return {device_output("cross_entropy_backward.dlogits", *d_dlogits, c.dt)};
}

// ---- activations, mul/scale (elementwise over n = c.a)

/// y = f(x) of an elementwise unary op: x = scale * N(0, 1).
template <class CpuF, class DevF>
Outputs run_unary_forward(const Case& c, Backend be, const std::string& name, double scale, CpuF cpu_f, DevF dev_f) {
  const int64_t n = c.a;
  const Inputs in(c);
  const auto x = in.normal("x", n, scale);
  if (be != Backend::device) {
    return {{name, cpu_result(be, c.dt, true, std::vector<float>(n), [&](auto& y) {
               using T = typename std::decay_t<decltype(y)>::value_type;
               const auto xv = as<T>(x);
               cpu_f(xv.data(), y.data(), n);
             })}};
  }
  auto d_x = upload(encode(x, c.dt));
  auto d_y = poisoned(n * dev_size(c.dt));
  dev_f(d_x->get(), d_y->get(), n, c.dt);
  return {device_output(name, *d_y, c.dt)};
}

/// dx += f'(x) dy of an elementwise unary op, from a nonzero dx.
template <class CpuF, class DevF>
Outputs run_unary_backward(const Case& c, Backend be, const std::string& name, double scale, CpuF cpu_f, DevF dev_f) {
  const int64_t n = c.a;
  const Inputs in(c);
  const auto dy = in.normal("dy", n), x = in.normal("x", n, scale), dx0 = in.normal("dx", n);
  if (be != Backend::device) {
    return {{name, cpu_result(be, c.dt, true, dx0, [&](auto& dx) {
               using T = typename std::decay_t<decltype(dx)>::value_type;
               const auto dyv = as<T>(dy), xv = as<T>(x);
               cpu_f(dyv.data(), xv.data(), dx.data(), n);
             })}};
  }
  auto d_dy = upload(encode(dy, c.dt));
  auto d_x = upload(encode(x, c.dt));
  auto d_dx = upload(encode(dx0, c.dt));
  dev_f(d_dy->get(), d_x->get(), d_dx->get(), n, c.dt);
  return {device_output(name, *d_dx, c.dt)};
}

/// y = f(a, b) of an elementwise binary op: a = scale_a * N(0, 1), b = N(0, 1).
template <class CpuF, class DevF>
Outputs run_binary_forward(const Case& c, Backend be, const std::string& name, double scale_a, CpuF cpu_f,
                           DevF dev_f) {
  const int64_t n = c.a;
  const Inputs in(c);
  const auto a = in.normal("a", n, scale_a), b = in.normal("b", n);
  if (be != Backend::device) {
    return {{name, cpu_result(be, c.dt, true, std::vector<float>(n), [&](auto& y) {
               using T = typename std::decay_t<decltype(y)>::value_type;
               const auto av = as<T>(a), bv = as<T>(b);
               cpu_f(av.data(), bv.data(), y.data(), n);
             })}};
  }
  auto d_a = upload(encode(a, c.dt));
  auto d_b = upload(encode(b, c.dt));
  auto d_y = poisoned(n * dev_size(c.dt));
  dev_f(d_a->get(), d_b->get(), d_y->get(), n, c.dt);
  return {device_output(name, *d_y, c.dt)};
}

/// da += ..., db += ... of an elementwise binary op from nonzero gradients; c.c selects the
/// gradients: 0 both, 1 da only, 2 db only (the other pointer nullptr).
template <class CpuF, class DevF>
Outputs run_binary_backward(const Case& c, Backend be, const std::string& name_a, const std::string& name_b,
                            double scale_a, CpuF cpu_f, DevF dev_f) {
  const int64_t n = c.a;
  const bool want_a = c.c != 2, want_b = c.c != 1;
  const Inputs in(c);
  const auto dy = in.normal("dy", n), a = in.normal("a", n, scale_a), b = in.normal("b", n);
  const auto da0 = in.normal("da", n), db0 = in.normal("db", n);
  Outputs out;
  if (be != Backend::device) {
    std::vector<double> db;
    auto da = cpu_result(be, c.dt, true, da0, [&](auto& dav) {
      using T = typename std::decay_t<decltype(dav)>::value_type;
      const auto dyv = as<T>(dy), av = as<T>(a), bv = as<T>(b);
      std::vector<T> dbv = as<T>(db0);
      cpu_f(dyv.data(), av.data(), bv.data(), want_a ? dav.data() : nullptr, want_b ? dbv.data() : nullptr, n);
      if constexpr (std::is_same_v<T, float>) round_to_dtype(dbv.data(), n, c.dt);
      db.assign(dbv.begin(), dbv.end());
    });
    if (want_a) out.push_back({name_a, da, {}});
    if (want_b) out.push_back({name_b, db, {}});
    return out;
  }
  auto d_dy = upload(encode(dy, c.dt));
  auto d_a = upload(encode(a, c.dt));
  auto d_b = upload(encode(b, c.dt));
  auto d_da = upload(encode(da0, c.dt));
  auto d_db = upload(encode(db0, c.dt));
  dev_f(d_dy->get(), d_a->get(), d_b->get(), want_a ? d_da->get() : nullptr, want_b ? d_db->get() : nullptr, n, c.dt);
  if (want_a) out.push_back(device_output(name_a, *d_da, c.dt));
  if (want_b) out.push_back(device_output(name_b, *d_db, c.dt));
  return out;
}

/// The scale of scale_forward / scale_backward: not on the bf16 or f16 grid, so s * x rounds.
constexpr float kScale = -1.37f;

Outputs run_elementwise(const Case& c, Backend be) {
  if (c.op == "silu_forward")
    return run_unary_forward(
        c, be, "silu_forward.y", 3.0, [](const auto* x, auto* y, int64_t n) { cpu::silu_forward(x, y, n); },
        [](const void* x, void* y, int64_t n, DType dt) { silu_forward(x, y, n, dt, nullptr); });
  if (c.op == "silu_backward")
    return run_unary_backward(
        c, be, "silu_backward.dx", 3.0,
        [](const auto* dy, const auto* x, auto* dx, int64_t n) { cpu::silu_backward(dy, x, dx, n); },
        [](const void* dy, const void* x, void* dx, int64_t n, DType dt) { silu_backward(dy, x, dx, n, dt, nullptr); });
  if (c.op == "gelu_tanh_forward")
    return run_unary_forward(
        c, be, "gelu_tanh_forward.y", 3.0, [](const auto* x, auto* y, int64_t n) { cpu::gelu_tanh_forward(x, y, n); },
        [](const void* x, void* y, int64_t n, DType dt) { gelu_tanh_forward(x, y, n, dt, nullptr); });
  if (c.op == "gelu_tanh_backward")
    return run_unary_backward(
        c, be, "gelu_tanh_backward.dx", 3.0,
        [](const auto* dy, const auto* x, auto* dx, int64_t n) { cpu::gelu_tanh_backward(dy, x, dx, n); },
        [](const void* dy, const void* x, void* dx, int64_t n, DType dt) {
          gelu_tanh_backward(dy, x, dx, n, dt, nullptr);
        });
  if (c.op == "scale_forward")
    return run_unary_forward(
        c, be, "scale_forward.y", 1.0,
        [](const auto* x, auto* y, int64_t n) {
          using T = std::remove_const_t<std::remove_pointer_t<decltype(x)>>;
          cpu::scale_forward<T>(x, static_cast<T>(kScale), y, n);
        },
        [](const void* x, void* y, int64_t n, DType dt) { scale_forward(x, kScale, y, n, dt, nullptr); });
  if (c.op == "scale_backward")
    return run_unary_backward(
        c, be, "scale_backward.dx", 1.0,
        [](const auto* dy, const auto*, auto* dx, int64_t n) {
          using T = std::remove_const_t<std::remove_pointer_t<decltype(dy)>>;
          cpu::axpy<T>(static_cast<T>(kScale), dy, dx, n);
        },
        [](const void* dy, const void*, void* dx, int64_t n, DType dt) {
          scale_backward(dy, kScale, dx, n, dt, nullptr);
        });
  if (c.op == "swiglu_forward")
    return run_binary_forward(
        c, be, "swiglu_forward.y", 3.0,
        [](const auto* g, const auto* u, auto* y, int64_t n) { cpu::swiglu_forward(g, u, y, n); },
        [](const void* g, const void* u, void* y, int64_t n, DType dt) { swiglu_forward(g, u, y, n, dt, nullptr); });
  if (c.op == "swiglu_backward")
    return run_binary_backward(
        c, be, "swiglu_backward.dgate", "swiglu_backward.dup", 3.0,
        [](const auto* dy, const auto* g, const auto* u, auto* dg, auto* du, int64_t n) {
          cpu::swiglu_backward(dy, g, u, dg, du, n);
        },
        [](const void* dy, const void* g, const void* u, void* dg, void* du, int64_t n, DType dt) {
          swiglu_backward(dy, g, u, dg, du, n, dt, nullptr);
        });
  if (c.op == "mul_forward")
    return run_binary_forward(
        c, be, "mul_forward.y", 1.0,
        [](const auto* a, const auto* b, auto* y, int64_t n) { cpu::mul_forward(a, b, y, n); },
        [](const void* a, const void* b, void* y, int64_t n, DType dt) { mul_forward(a, b, y, n, dt, nullptr); });
  if (c.op == "mul_backward")
    return run_binary_backward(
        c, be, "mul_backward.da", "mul_backward.db", 1.0,
        [](const auto* dy, const auto* a, const auto* b, auto* da, auto* db, int64_t n) {
          cpu::mul_backward(dy, a, b, da, db, n);
        },
        [](const void* dy, const void* a, const void* b, void* da, void* db, int64_t n, DType dt) {
          mul_backward(dy, a, b, da, db, n, dt, nullptr);
        });
  throw std::invalid_argument("unknown elementwise op " + c.op);
}

// ---- RoPE: a = B, b = Tn, c = H, d = D

/// Tables of core/cpu's rope_tables<float> (theta 10000, positions from 3): the same fp32
/// input for every backend (widened for the fp64 reference), as the model passes them.
struct RopeInputs {
  std::vector<float> x, dx0, cos, sin;
};
RopeInputs rope_inputs(const Case& c) {
  const int64_t B = c.a, Tn = c.b, H = c.c, D = c.d, n = B * Tn * H * D;
  const Inputs in(c);
  RopeInputs r{in.normal("x", n), in.normal("dx", n), std::vector<float>(Tn * D / 2), std::vector<float>(Tn * D / 2)};
  cpu::rope_tables<float>(r.cos.data(), r.sin.data(), Tn, D, 10000.0, 3);
  return r;
}

Outputs run_rope(const Case& c, Backend be) {
  const int64_t B = c.a, Tn = c.b, H = c.c, D = c.d, n = B * Tn * H * D;
  const bool fwd = c.op == "rope_forward";
  const std::string name = fwd ? "rope_forward.y" : "rope_backward.dx";
  const RopeInputs r = rope_inputs(c);  // x is dy for the backward
  if (be != Backend::device) {
    return {{name, cpu_result(be, c.dt, true, fwd ? std::vector<float>(n) : r.dx0, [&](auto& out) {
               using T = typename std::decay_t<decltype(out)>::value_type;
               const auto x = as<T>(r.x), cs = as<T>(r.cos), sn = as<T>(r.sin);
               if (fwd)
                 cpu::rope_forward<T>(x.data(), cs.data(), sn.data(), out.data(), B, Tn, H, D);
               else
                 cpu::rope_backward<T>(x.data(), cs.data(), sn.data(), out.data(), B, Tn, H, D);
             })}};
  }
  auto d_x = upload(encode(r.x, c.dt));
  auto d_cos = upload(raw_bytes(r.cos));
  auto d_sin = upload(raw_bytes(r.sin));
  auto d_out = fwd ? poisoned(n * dev_size(c.dt)) : upload(encode(r.dx0, c.dt));
  if (fwd)
    rope_forward(d_x->get(), d_cos->as<float>(), d_sin->as<float>(), d_out->get(), B, Tn, H, D, c.dt, nullptr);
  else
    rope_backward(d_x->get(), d_cos->as<float>(), d_sin->as<float>(), d_out->get(), B, Tn, H, D, c.dt, nullptr);
  return {device_output(name, *d_out, c.dt)};
}

// ---- LayerNorm: a = rows, b = C; forward c = 1: no bias; backward c: 0 dx, dw, db; 1 dx
// only; 2 dw and db only

struct LnInputs {
  std::vector<float> x, w, b, dy, dx0, dw0, db0, mean, rstd;
};
LnInputs ln_inputs(const Case& c) {
  const int64_t rows = c.a, C = c.b;
  const Inputs in(c);
  LnInputs r{in.normal("x", rows * C, 2.0, 0.5), in.normal("w", C, 0.1, 1.0), in.normal("b", C, 0.1),
             in.normal("dy", rows * C),          in.normal("dx", rows * C),    in.normal("dw", C),
             in.normal("db", C),                 std::vector<float>(rows),     std::vector<float>(rows)};
  // The backward's saved statistics: the CPU forward's fp32 mean and rstd, for all backends.
  std::vector<float> y(rows * C);
  cpu::layer_norm_forward<float>(r.x.data(), r.w.data(), r.b.data(), y.data(), r.mean.data(), r.rstd.data(), rows, C,
                                 kEps);
  return r;
}

Outputs run_layer_norm_forward(const Case& c, Backend be) {
  const int64_t rows = c.a, C = c.b;
  const bool bias = c.c != 1;
  const LnInputs r = ln_inputs(c);
  if (be != Backend::device) {
    std::vector<double> mean, rstd;
    auto y = cpu_result(be, c.dt, true, std::vector<float>(rows * C), [&](auto& yv) {
      using T = typename std::decay_t<decltype(yv)>::value_type;
      const auto x = as<T>(r.x), w = as<T>(r.w), b = as<T>(r.b);
      std::vector<T> m(rows), rs(rows);
      cpu::layer_norm_forward<T>(x.data(), w.data(), bias ? b.data() : nullptr, yv.data(), m.data(), rs.data(), rows,
                                 C, kEps);
      mean.assign(m.begin(), m.end());  // fp32 in float: not rounded to the dtype
      rstd.assign(rs.begin(), rs.end());
    });
    return {{"layer_norm_forward.y", y, {}},
            {"layer_norm_forward.mean", mean, {}},
            {"layer_norm_forward.rstd", rstd, {}}};
  }
  auto d_x = upload(encode(r.x, c.dt));
  auto d_w = upload(encode(r.w, c.dt));
  auto d_b = upload(encode(r.b, c.dt));
  auto d_y = poisoned(rows * C * dev_size(c.dt));
  auto d_mean = poisoned(rows * sizeof(float));
  auto d_rstd = poisoned(rows * sizeof(float));
  layer_norm_forward(d_x->get(), d_w->get(), bias ? d_b->get() : nullptr, d_y->get(), d_mean->as<float>(),
                     d_rstd->as<float>(), rows, C, kEps, c.dt, nullptr);
  return {device_output("layer_norm_forward.y", *d_y, c.dt),
          device_output("layer_norm_forward.mean", *d_mean, DType::f32),
          device_output("layer_norm_forward.rstd", *d_rstd, DType::f32)};
}

Outputs run_layer_norm_backward(const Case& c, Backend be) {
  const int64_t rows = c.a, C = c.b;
  const bool want_dx = c.c != 2, want_dwdb = c.c != 1;
  const LnInputs r = ln_inputs(c);
  Outputs out;
  if (be != Backend::device) {
    std::vector<double> dw, db;
    auto dx = cpu_result(be, c.dt, true, r.dx0, [&](auto& dxv) {
      using T = typename std::decay_t<decltype(dxv)>::value_type;
      const auto dy = as<T>(r.dy), x = as<T>(r.x), w = as<T>(r.w), m = as<T>(r.mean), rs = as<T>(r.rstd);
      std::vector<T> dwv = as<T>(r.dw0), dbv = as<T>(r.db0);
      cpu::layer_norm_backward<T>(dy.data(), x.data(), w.data(), m.data(), rs.data(), want_dx ? dxv.data() : nullptr,
                                  want_dwdb ? dwv.data() : nullptr, want_dwdb ? dbv.data() : nullptr, rows, C);
      if constexpr (std::is_same_v<T, float>) {
        round_to_dtype(dwv.data(), C, c.dt);
        round_to_dtype(dbv.data(), C, c.dt);
      }
      dw.assign(dwv.begin(), dwv.end());
      db.assign(dbv.begin(), dbv.end());
    });
    if (want_dx) out.push_back({"layer_norm_backward.dx", dx, {}});
    if (want_dwdb) {
      out.push_back({"layer_norm_backward.dw", dw, {}});
      out.push_back({"layer_norm_backward.db", db, {}});
    }
    return out;
  }
  auto d_dy = upload(encode(r.dy, c.dt));
  auto d_x = upload(encode(r.x, c.dt));
  auto d_w = upload(encode(r.w, c.dt));
  auto d_mean = upload(raw_bytes(r.mean));
  auto d_rstd = upload(raw_bytes(r.rstd));
  auto d_dx = upload(encode(r.dx0, c.dt));
  auto d_dw = upload(encode(r.dw0, c.dt));
  auto d_db = upload(encode(r.db0, c.dt));
  auto d_scratch = poisoned(layer_norm_backward_scratch_bytes(rows, C));
  layer_norm_backward(d_dy->get(), d_x->get(), d_w->get(), d_mean->as<float>(), d_rstd->as<float>(),
                      want_dx ? d_dx->get() : nullptr, want_dwdb ? d_dw->get() : nullptr,
                      want_dwdb ? d_db->get() : nullptr, rows, C, c.dt, want_dwdb ? d_scratch->get() : nullptr,
                      nullptr);
  if (want_dx) out.push_back(device_output("layer_norm_backward.dx", *d_dx, c.dt));
  if (want_dwdb) {
    out.push_back(device_output("layer_norm_backward.dw", *d_dw, c.dt));
    out.push_back(device_output("layer_norm_backward.db", *d_db, c.dt));
  }
  return out;
}

// ---- last-dim split: a = rows, b = S, c = cols, d = off (the piece is x[:, off:off+cols])

/// The CPU reference is core/ops.cpp's split loops (the op has no core/cpu kernel), on the
/// same inputs: forward piece[r, c] = x[r, S·r + off + c]; backward dx[r, off + c] +=
/// dpiece[r, c] into a nonzero dx, then rounded once (the op's dx.round_()). The whole dx is
/// compared, so a write outside the column block shows.
Outputs run_split(const Case& c, Backend be) {
  const int64_t rows = c.a, S = c.b, cols = c.c, off = c.d;
  const bool fwd = c.op == "split_forward";
  const std::string name = fwd ? "split_forward.piece" : "split_backward.dx";
  const Inputs in(c);
  const auto x = in.normal("x", rows * S), dpiece = in.normal("dpiece", rows * cols), dx0 = in.normal("dx", rows * S);
  if (be != Backend::device) {
    return {{name, cpu_result(be, c.dt, true, fwd ? std::vector<float>(rows * cols) : dx0, [&](auto& out) {
               using T = typename std::decay_t<decltype(out)>::value_type;
               if (fwd) {
                 const auto xv = as<T>(x);
                 for (int64_t r = 0; r < rows; ++r)
                   for (int64_t k = 0; k < cols; ++k) out[r * cols + k] = xv[r * S + off + k];
               } else {
                 const auto g = as<T>(dpiece);
                 for (int64_t r = 0; r < rows; ++r)
                   for (int64_t k = 0; k < cols; ++k) out[r * S + off + k] += g[r * cols + k];
               }
             })}};
  }
  if (fwd) {
    auto d_x = upload(encode(x, c.dt));
    auto d_piece = poisoned(rows * cols * dev_size(c.dt));
    split_columns(d_x->get(), d_piece->get(), rows, cols, S, off, c.dt, nullptr);
    return {device_output(name, *d_piece, c.dt)};
  }
  auto d_g = upload(encode(dpiece, c.dt));
  auto d_dx = upload(encode(dx0, c.dt));
  split_columns_backward(d_g->get(), d_dx->get(), rows, cols, S, off, c.dt, c.dt, nullptr);
  return {device_output(name, *d_dx, c.dt)};
}

Outputs run_case(const Case& c, Backend be) {
  if (c.op == "embedding_forward") return run_embedding_forward(c, be);
  if (c.op == "embedding_backward") return run_embedding_backward(c, be);
  if (c.op == "rms_norm_forward") return run_rms_norm_forward(c, be);
  if (c.op == "rms_norm_backward") return run_rms_norm_backward(c, be);
  if (c.op == "add_forward") return run_add_forward(c, be);
  if (c.op == "accumulate") return run_accumulate(c, be);
  if (c.op == "cross_entropy_forward") return run_cross_entropy_forward(c, be);
  if (c.op == "cross_entropy_backward") return run_cross_entropy_backward(c, be);
  for (const char* op : {"silu_forward", "silu_backward", "gelu_tanh_forward", "gelu_tanh_backward", "swiglu_forward",
                         "swiglu_backward", "mul_forward", "mul_backward", "scale_forward", "scale_backward"})
    if (c.op == op) return run_elementwise(c, be);
  if (c.op == "rope_forward" || c.op == "rope_backward") return run_rope(c, be);
  if (c.op == "layer_norm_forward") return run_layer_norm_forward(c, be);
  if (c.op == "layer_norm_backward") return run_layer_norm_backward(c, be);
  if (c.op == "split_forward" || c.op == "split_backward") return run_split(c, be);
  throw std::invalid_argument("unknown op " + c.op);
}

// ------------------------------------------------------------------ expected kernel launches

std::string type_name(DType dt) {
  switch (dt) {
    case DType::f32: return "float";
    case DType::bf16: return "__nv_bfloat16";
    default: return "__half";
  }
}

int log2_exact(int64_t v) {
  int l = 0;
  while ((int64_t(1) << l) < v) ++l;
  return l;
}

/// The kernels each op must launch, by PT_LAUNCH's name, with their counts.
std::map<std::string, int64_t> expected_launches(const Case& c) {
  std::string T = "<";
  T += type_name(c.dt);
  T += '>';
  if (c.op == "embedding_forward") return {{"embedding_forward_kernel" + T, 1}};
  if (c.op == "embedding_backward") {
    // Bitonic sort of the padded keys (>= 64, a power of two): one tile kernel (tiles of
    // <= 2048 keys), then per merge stage k > 2048 one global step per partner distance
    // j in [2048, k/2] and one shared-memory merge for j < 2048.
    int64_t n_pad = 64;
    while (n_pad < c.a) n_pad <<= 1;
    const int64_t tile = std::min<int64_t>(n_pad, 2048);
    int64_t steps = 0, merges = 0;
    for (int64_t k = 2 * tile; k <= n_pad; k <<= 1, ++merges) steps += log2_exact(k) - 11;
    std::map<std::string, int64_t> m{{"embedding_backward_keys_kernel", 1},
                                     {"embedding_backward_sort_tile_kernel", 1},
                                     {"embedding_backward_segments_kernel" + T, 1}};
    if (steps) m["embedding_backward_sort_step_kernel"] = steps;
    if (merges) m["embedding_backward_sort_merge_kernel"] = merges;
    return m;
  }
  if (c.op == "rms_norm_forward") return {{"rms_norm_forward_kernel" + T, 1}};
  if (c.op == "rms_norm_backward")
    return {{"rms_norm_backward_dx_kernel" + T, 1},
            {"rms_norm_backward_dw_partial_kernel" + T, 1},
            {"rms_norm_backward_dw_sum_kernel" + T, 1}};
  if (c.op == "add_forward") return {{"add_forward_kernel" + T, 1}};
  if (c.op == "accumulate") return {{"accumulate_kernel" + T, 1}};
  if (c.op == "cross_entropy_forward") return {{"cross_entropy_forward_kernel" + T, 1}};
  if (c.op == "cross_entropy_backward") return {{"cross_entropy_backward_kernel" + T, 1}};
  for (const char* op : {"silu_forward", "silu_backward", "gelu_tanh_forward", "gelu_tanh_backward", "swiglu_forward",
                         "swiglu_backward", "mul_forward", "mul_backward", "scale_forward", "scale_backward",
                         "rope_forward", "rope_backward", "layer_norm_forward"})
    if (c.op == op) return {{c.op + "_kernel" + T, 1}};
  if (c.op == "split_forward") return {{"split_columns_kernel" + T, 1}};
  if (c.op == "split_backward") return {{"split_columns_backward_kernel" + T, 1}};
  if (c.op == "layer_norm_backward") {
    std::map<std::string, int64_t> m;
    if (c.c != 2) m["layer_norm_backward_dx_kernel" + T] = 1;
    if (c.c != 1) {
      m["layer_norm_backward_dwdb_partial_kernel" + T] = 1;
      m["layer_norm_backward_dwdb_sum_kernel" + T] = 1;
    }
    return m;
  }
  return {};
}

// ------------------------------------------------------------------ comparison

struct Verdict {
  bool ok = true;
  std::string report;
};

std::string fmt_double(double v) {
  std::ostringstream s;
  s.precision(9);
  s << v;
  return s.str();
}

/// Device result `dev` against the CPU's `cpu` and the fp64 reference `ref` of one output.
/// `where` names the case (op, dtype, shape) in the report.
Verdict compare_output(const std::string& where, const std::string& name, const OpTolerance& tol,
                       const std::vector<double>& dev, const std::vector<double>& cpu,
                       const std::vector<double>& ref) {
  Verdict v;
  std::ostringstream r;
  if (dev.size() != cpu.size() || dev.size() != ref.size()) {
    r << where << " " << name << ": sizes differ: device " << dev.size() << ", cpu " << cpu.size() << ", fp64 "
      << ref.size() << "\n";
    return {false, r.str()};
  }
  // 1. Element by element against the CPU.
  int64_t bad = 0;
  for (size_t i = 0; i < dev.size(); ++i) {
    const double allowed = tol.atol + tol.rtol * std::fabs(cpu[i]);
    const bool both_nan = std::isnan(dev[i]) && std::isnan(cpu[i]);
    const double diff = std::fabs(dev[i] - cpu[i]);
    if (both_nan || dev[i] == cpu[i] || diff <= allowed) continue;  // equal infinities pass; a NaN diff fails
    if (bad++ < 5)
      r << where << " " << name << " [" << i << "]: device " << fmt_double(dev[i]) << ", cpu " << fmt_double(cpu[i])
        << ", fp64 " << fmt_double(ref[i]) << ": |device - cpu| = " << fmt_double(diff) << " > "
        << fmt_double(allowed) << " (atol " << tol.atol << ", rtol " << tol.rtol << ")\n";
  }
  if (bad) {
    v.ok = false;
    r << where << " " << name << ": " << bad << " of " << dev.size() << " elements outside the tolerance\n";
  }
  // 2. Capped against fp64: the device may not be further from fp64 than twice the CPU, or
  //    than the table's tolerance.
  double e_dev = 0, e_cpu = 0, t_max = 0;
  size_t worst = 0;
  for (size_t i = 0; i < dev.size(); ++i) {
    if (!std::isfinite(ref[i])) continue;  // non-finite results are checked against the CPU above
    const double ed = std::fabs(dev[i] - ref[i]);
    if (!(ed <= e_dev)) {  // NaN device values count as the worst
      e_dev = std::isnan(ed) ? std::numeric_limits<double>::infinity() : ed;
      worst = i;
    }
    e_cpu = std::max(e_cpu, std::fabs(cpu[i] - ref[i]));
    t_max = std::max(t_max, tol.atol + tol.rtol * std::fabs(ref[i]));
  }
  if (!(e_dev <= std::max(2 * e_cpu, t_max))) {
    v.ok = false;
    r << where << " " << name << ": max |device - fp64| = " << fmt_double(e_dev) << " at [" << worst << "] (device "
      << fmt_double(dev[worst]) << ", fp64 " << fmt_double(ref[worst]) << ") exceeds max(2 * max |cpu - fp64| = "
      << fmt_double(2 * e_cpu) << ", table tolerance " << fmt_double(t_max) << ")\n";
  }
  v.report = r.str();
  return v;
}

/// PTRAIN_OPS_STATS=1: one line per output with the errors behind the tolerance table —
/// max |dev - cpu|, the largest fraction of the tolerance used, max |dev - fp64|, max |cpu - fp64|.
void print_stats(const Case& c, const std::string& name, const OpTolerance& tol, const std::vector<double>& dev,
                 const std::vector<double>& cpu, const std::vector<double>& ref) {
  double d_cpu = 0, used = 0, e_dev = 0, e_cpu = 0, rel = 0;
  for (size_t i = 0; i < dev.size(); ++i) {
    if (!std::isfinite(ref[i])) continue;
    const double d = std::fabs(dev[i] - cpu[i]);
    d_cpu = std::max(d_cpu, d);
    if (d > 0) used = std::max(used, tol.atol + tol.rtol * std::fabs(cpu[i]) > 0 ? d / (tol.atol + tol.rtol * std::fabs(cpu[i])) : INFINITY);
    if (cpu[i] != 0) rel = std::max(rel, d / std::fabs(cpu[i]));
    e_dev = std::max(e_dev, std::fabs(dev[i] - ref[i]));
    e_cpu = std::max(e_cpu, std::fabs(cpu[i] - ref[i]));
  }
  std::printf("[stats] %-50s %-32s max|dev-cpu| %.3g (rel %.3g, %.3g of tol)  max|dev-fp64| %.3g  max|cpu-fp64| %.3g\n",
              describe(c).c_str(), name.c_str(), d_cpu, rel, used, e_dev, e_cpu);
}

/// Compares every output of a case; fails the test with the reports.
void expect_outputs_match(const Case& c, const Outputs& dev, const Outputs& cpu, const Outputs& ref) {
  ASSERT_EQ(dev.size(), cpu.size());
  ASSERT_EQ(dev.size(), ref.size());
  for (size_t k = 0; k < dev.size(); ++k) {
    ASSERT_EQ(dev[k].name, cpu[k].name);
    const OpTolerance* tol = find_op_tolerance(dev[k].name, c.dt);
    ASSERT_NE(tol, nullptr) << "no tolerance for " << dev[k].name << " " << dtype_name(c.dt)
                            << " in tests/cuda/op_tolerances.h";
    const Verdict v = compare_output(describe(c), dev[k].name, *tol, dev[k].values, cpu[k].values, ref[k].values);
    EXPECT_TRUE(v.ok) << v.report;
    if (std::getenv("PTRAIN_OPS_STATS")) print_stats(c, dev[k].name, *tol, dev[k].values, cpu[k].values, ref[k].values);
  }
}

void expect_same_bits(const Case& c, const Outputs& want, const Outputs& got, const std::string& how) {
  ASSERT_EQ(want.size(), got.size());
  for (size_t k = 0; k < want.size(); ++k) {
    ASSERT_EQ(want[k].raw.size(), got[k].raw.size()) << describe(c) << " " << want[k].name << " " << how;
    size_t first = want[k].raw.size();
    for (size_t i = 0; i < want[k].raw.size(); ++i)
      if (want[k].raw[i] != got[k].raw[i]) {
        first = i;
        break;
      }
    const size_t es = want[k].values.empty() ? 1 : std::max<size_t>(1, want[k].raw.size() / want[k].values.size());
    EXPECT_EQ(first, want[k].raw.size()) << describe(c) << " " << want[k].name << ": not bit-identical " << how
                                         << " (first differing element " << first / es << ")";
  }
}

// ------------------------------------------------------------------ the case table

std::vector<Case> all_cases() {
  struct Shape {
    const char* op;
    int64_t a, b, c, d = 0;
  };
  const Shape shapes[] = {
      {"embedding_forward", 37, 1000, 100},  {"embedding_forward", 5, 3, 1},     {"embedding_forward", 300, 7, 33},
      {"embedding_backward", 37, 1000, 100}, {"embedding_backward", 5, 3, 1},    {"embedding_backward", 300, 7, 33},
      {"embedding_backward", 3000, 50, 3},   {"embedding_backward", 5000, 9, 2},  // global sort steps
      {"rms_norm_forward", 37, 100, 0},      {"rms_norm_forward", 200, 33, 0},   {"rms_norm_forward", 3, 1, 0},
      {"rms_norm_forward", 2, 1000, 0},      {"rms_norm_forward", 1, 4099, 0},
      {"rms_norm_backward", 37, 100, 0},     {"rms_norm_backward", 200, 33, 0},  {"rms_norm_backward", 3, 1, 0},
      {"rms_norm_backward", 2, 1000, 0},     {"rms_norm_backward", 130, 257, 0},
      {"add_forward", 1, 0, 0},              {"add_forward", 1000, 0, 0},        {"add_forward", 3703, 0, 0},
      {"add_forward", 70001, 0, 0},
      {"accumulate", 1, 0, 0},               {"accumulate", 1000, 0, 0},         {"accumulate", 3703, 0, 0},
      {"accumulate", 70001, 0, 0},
      {"cross_entropy_forward", 37, 1003, 1000}, {"cross_entropy_forward", 4, 64, 64},
      {"cross_entropy_forward", 5, 1, 1},        {"cross_entropy_forward", 3, 5000, 4999},
      {"cross_entropy_forward", 6, 70, 3},
      {"cross_entropy_backward", 37, 1003, 1000}, {"cross_entropy_backward", 4, 64, 64},
      {"cross_entropy_backward", 5, 1, 1},        {"cross_entropy_backward", 3, 5000, 4999},
      {"cross_entropy_backward", 6, 70, 3},
      // activations, mul/scale: n; backward c = 1 / 2: only the first / second gradient
      {"silu_forward", 1, 0, 0},        {"silu_forward", 1000, 0, 0},        {"silu_forward", 70001, 0, 0},
      {"silu_backward", 1, 0, 0},       {"silu_backward", 1000, 0, 0},       {"silu_backward", 70001, 0, 0},
      {"gelu_tanh_forward", 1, 0, 0},   {"gelu_tanh_forward", 3703, 0, 0},   {"gelu_tanh_forward", 70001, 0, 0},
      {"gelu_tanh_backward", 1, 0, 0},  {"gelu_tanh_backward", 3703, 0, 0},  {"gelu_tanh_backward", 70001, 0, 0},
      {"swiglu_forward", 1, 0, 0},      {"swiglu_forward", 3703, 0, 0},      {"swiglu_forward", 70001, 0, 0},
      {"swiglu_backward", 1, 0, 0},     {"swiglu_backward", 3703, 0, 0},     {"swiglu_backward", 70001, 0, 0},
      {"swiglu_backward", 1000, 0, 1},  {"swiglu_backward", 1000, 0, 2},
      {"mul_forward", 1, 0, 0},         {"mul_forward", 3703, 0, 0},         {"mul_forward", 70001, 0, 0},
      {"mul_backward", 1, 0, 0},        {"mul_backward", 3703, 0, 0},        {"mul_backward", 70001, 0, 0},
      {"mul_backward", 1000, 0, 1},     {"mul_backward", 1000, 0, 2},
      {"scale_forward", 1, 0, 0},       {"scale_forward", 3703, 0, 0},       {"scale_forward", 70001, 0, 0},
      {"scale_backward", 1, 0, 0},      {"scale_backward", 3703, 0, 0},      {"scale_backward", 70001, 0, 0},
      // RoPE: B, Tn, H, D (D/2 odd in 6, 50 and 130; Tn not a multiple of anything)
      {"rope_forward", 2, 37, 3, 64},   {"rope_forward", 1, 5, 2, 128},      {"rope_forward", 3, 7, 5, 6},
      {"rope_forward", 1, 3, 1, 2},     {"rope_forward", 2, 13, 4, 50},      {"rope_forward", 1, 9, 3, 130},
      {"rope_backward", 2, 37, 3, 64},  {"rope_backward", 1, 5, 2, 128},     {"rope_backward", 3, 7, 5, 6},
      {"rope_backward", 1, 3, 1, 2},    {"rope_backward", 2, 13, 4, 50},     {"rope_backward", 1, 9, 3, 130},
      // LayerNorm: rows, C; forward c = 1: no bias; backward c = 1: dx only, 2: dw and db only
      {"layer_norm_forward", 37, 100, 0}, {"layer_norm_forward", 200, 33, 0}, {"layer_norm_forward", 3, 1, 0},
      {"layer_norm_forward", 2, 1000, 0}, {"layer_norm_forward", 1, 4099, 0}, {"layer_norm_forward", 37, 100, 1},
      {"layer_norm_backward", 37, 100, 0}, {"layer_norm_backward", 200, 33, 0}, {"layer_norm_backward", 3, 1, 0},
      {"layer_norm_backward", 2, 1000, 0}, {"layer_norm_backward", 130, 257, 0}, {"layer_norm_backward", 37, 100, 1},
      {"layer_norm_backward", 130, 257, 2},
      // split: rows, S, cols, off — the three pieces of a qkv split with S = 100 (33 + 34 + 33:
      // odd offsets, so bf16/f16 blocks start unaligned), one column, more columns than a
      // block has threads (257, 300), a 3·768 qkv row's last piece
      {"split_forward", 37, 100, 33, 0},  {"split_forward", 37, 100, 34, 33},  {"split_forward", 37, 100, 33, 67},
      {"split_forward", 1, 1, 1, 0},      {"split_forward", 300, 7, 1, 3},     {"split_forward", 3, 600, 257, 343},
      {"split_forward", 2, 300, 300, 0},  {"split_forward", 5, 2304, 768, 1536},
      {"split_backward", 37, 100, 33, 0}, {"split_backward", 37, 100, 34, 33}, {"split_backward", 37, 100, 33, 67},
      {"split_backward", 1, 1, 1, 0},     {"split_backward", 300, 7, 1, 3},    {"split_backward", 3, 600, 257, 343},
      {"split_backward", 2, 300, 300, 0}, {"split_backward", 5, 2304, 768, 1536},
  };
  std::vector<Case> cases;
  for (DType dt : {DType::f32, DType::bf16, DType::f16})
    for (const Shape& s : shapes) cases.push_back({s.op, dt, s.a, s.b, s.c, s.d});
  return cases;
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  return info.param.op + "_" + std::string(dtype_name(info.param.dt)) + "_" + shape_str(info.param);
}

// ------------------------------------------------------------------ tests

class CudaOp : public ::testing::TestWithParam<Case> {};

TEST_P(CudaOp, MatchesCpuWithinToleranceAndIsDeterministic) {
  SKIP_WITHOUT_DEVICE();
  const Case& c = GetParam();
  const Outputs cpu = run_case(c, Backend::cpu_f32);
  const Outputs ref = run_case(c, Backend::cpu_f64);
  reset_launch_counts();
  const Outputs dev = run_case(c, Backend::device);
  EXPECT_EQ(launch_counts(), expected_launches(c)) << describe(c) << ": the op did not launch its own kernels";
  expect_outputs_match(c, dev, cpu, ref);

#if PTRAIN_CUDA_EMULATED
  const uint64_t saved = ptrain::simt::seed();
  for (uint64_t s : {0, 1, 2, 3}) {
    ptrain::simt::set_seed(s);
    const Outputs again = run_case(c, Backend::device);
    expect_same_bits(c, dev, again, "under SIMT seed " + std::to_string(s));
  }
  ptrain::simt::set_seed(saved);
#else
  ASSERT_FALSE(emulated()) << "emulated build without PTRAIN_CUDA_EMULATED defined for this test: the SIMT "
                              "seeds would not be exercised (HINT: tests/cuda/ops.cmake defines it)";
  for (int run = 0; run < 2; ++run) expect_same_bits(c, dev, run_case(c, Backend::device), "run to run");
#endif
}

INSTANTIATE_TEST_SUITE_P(Ops, CudaOp, ::testing::ValuesIn(all_cases()), case_name);

/// A chain of ops: rms_norm forward, then (depending on its y and rstd) rms_norm backward,
/// add and cross-entropy. With two streams, the forward runs on s1 and the rest on s2 after
/// cudaStreamWaitEvent on an event recorded on s1; the bits must equal the one-stream chain.
Outputs run_chain(DType dt, bool two_streams) {
  const int64_t rows = 37, C = 100;
  const Case c{"rms_norm_backward", dt, rows, C, 0};
  const RmsInputs r = rms_inputs(c);
  cudaStream_t s1 = nullptr, s2 = nullptr;
  cudaEvent_t ev = nullptr;
  if (two_streams) {
    CU(cudaStreamCreate(&s1));
    CU(cudaStreamCreate(&s2));
    CU(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  }
  const size_t es = dev_size(dt);
  std::vector<int32_t> targets(rows);
  for (int64_t i = 0; i < rows; ++i) targets[i] = static_cast<int32_t>((i * 7) % C);
  const std::vector<float> dloss(rows, 1.0f / static_cast<float>(rows));
  // Host sources of asynchronous copies stay alive until the streams are synchronised.
  const Bytes h_x = encode(r.x, dt), h_w = encode(r.w, dt), h_dy = encode(r.dy, dt), h_dx = encode(r.dx0, dt),
              h_dw = encode(r.dw0, dt), h_targets = raw_bytes(targets), h_dloss = raw_bytes(dloss);
  auto d_x = upload(h_x, s1);
  auto d_w = upload(h_w, s1);
  auto d_dy = upload(h_dy, s1);
  auto d_dx = upload(h_dx, s1);
  auto d_dw = upload(h_dw, s1);
  auto d_targets = upload(h_targets, s1);
  auto d_dloss = upload(h_dloss, s1);
  auto d_y = poisoned(rows * C * es);
  auto d_sum = poisoned(rows * C * es);
  auto d_rstd = poisoned(rows * sizeof(float));
  auto d_scratch = poisoned(rms_norm_backward_scratch_bytes(rows, C));
  auto d_losses = poisoned(rows * sizeof(float));
  auto d_lse = poisoned(rows * sizeof(float));
  auto d_dlogits = poisoned(rows * C * es);
  CU(cudaMemsetAsync(d_dlogits->get(), 0, rows * C * es, s1));  // zero bits are +0 in every float dtype

  rms_norm_forward(d_x->get(), d_w->get(), d_y->get(), d_rstd->as<float>(), rows, C, kEps, dt, s1);
  if (two_streams) {
    CU(cudaEventRecord(ev, s1));
    CU(cudaStreamWaitEvent(s2, ev, 0));
  }
  rms_norm_backward(d_dy->get(), d_x->get(), d_w->get(), d_rstd->as<float>(), d_dx->get(), d_dw->get(), rows, C, dt,
                    d_scratch->get(), s2);
  add_forward(d_y->get(), d_x->get(), d_sum->get(), rows * C, dt, s2);
  cross_entropy_forward(d_sum->get(), d_targets->as<int32_t>(), d_losses->as<float>(), d_lse->as<float>(), rows, C, C,
                        dt, s2);
  cross_entropy_backward(d_sum->get(), d_targets->as<int32_t>(), d_lse->as<float>(), d_dloss->as<float>(),
                         d_dlogits->get(), rows, C, C, dt, s2);
  if (two_streams) CU(cudaStreamSynchronize(s2));
  Outputs out{device_output("y", *d_y, dt),         device_output("rstd", *d_rstd, DType::f32),
              device_output("dx", *d_dx, dt),       device_output("dw", *d_dw, dt),
              device_output("sum", *d_sum, dt),     device_output("losses", *d_losses, DType::f32),
              device_output("lse", *d_lse, DType::f32), device_output("dlogits", *d_dlogits, dt)};
  if (two_streams) {
    CU(cudaEventDestroy(ev));
    CU(cudaStreamDestroy(s1));
    CU(cudaStreamDestroy(s2));
  }
  return out;
}

TEST(CudaOpsStreams, TwoStreamsJoinedByAnEventGiveTheOneStreamBits) {
  SKIP_WITHOUT_DEVICE();
  for (DType dt : {DType::f32, DType::bf16}) {
    const Case c{"stream chain", dt, 37, 100, 0};
    const Outputs one = run_chain(dt, false);
    for (const Output& o : one)
      for (double v : o.values) ASSERT_TRUE(std::isfinite(v)) << o.name << ": an element was not written";
#if PTRAIN_CUDA_EMULATED
    const uint64_t saved = ptrain::simt::seed();
    for (uint64_t s : {0, 1, 2, 3}) {
      ptrain::simt::set_seed(s);
      expect_same_bits(c, one, run_chain(dt, true), "on two streams, SIMT seed " + std::to_string(s));
    }
    ptrain::simt::set_seed(saved);
#else
    expect_same_bits(c, one, run_chain(dt, true), "on two streams");
#endif
  }
}

/// Non-finite logits: a NaN in a real column makes that row's lse, loss and gradient NaN (so a
/// NaN is detected, as on the CPU); -inf logits contribute nothing, also as a thread's first
/// column, and a row of -inf only gives lse = -inf (its loss NaN) as on the CPU.
TEST(CudaOpsNonFinite, CrossEntropyNanAndMinusInfLogitsAsOnTheCpu) {
  SKIP_WITHOUT_DEVICE();
  const int64_t N = 4, Vp = 70, V = 67;
  const float inf = std::numeric_limits<float>::infinity();
  for (DType dt : {DType::f32, DType::bf16}) {
    const Case c{"cross_entropy_forward", dt, N, Vp, V};
    CeInputs r = ce_inputs(c);
    r.targets = {3, -1, 5, 7};
    r.logits[0 * Vp + 10] = std::numeric_limits<float>::quiet_NaN();
    for (int64_t j = 0; j < V; j += 2) r.logits[2 * Vp + j] = -inf;  // every thread's first column too
    for (int64_t j = 0; j < V; ++j) r.logits[3 * Vp + j] = -inf;
    std::vector<float> loss(N), lse(N);
    cpu::cross_entropy_forward<float>(r.logits.data(), r.targets.data(), loss.data(), lse.data(), N, Vp, V);
    std::vector<double> loss64(N), lse64(N);
    const std::vector<double> logits64 = widen(r.logits);
    cpu::cross_entropy_forward<double>(logits64.data(), r.targets.data(), loss64.data(), lse64.data(), N, Vp, V);
    std::vector<float> dl = r.dlogits0;
    cpu::cross_entropy_backward<float>(r.logits.data(), r.targets.data(), lse.data(), r.dloss.data(), dl.data(), N, Vp,
                                       V);
    round_to_dtype(dl.data(), N * Vp, dt);
    std::vector<double> dl64 = widen(r.dlogits0);
    const std::vector<double> lse_in = widen(lse), dloss64 = widen(r.dloss);
    cpu::cross_entropy_backward<double>(logits64.data(), r.targets.data(), lse_in.data(), dloss64.data(), dl64.data(),
                                        N, Vp, V);
    ASSERT_TRUE(std::isnan(loss[0]) && std::isnan(lse[0]) && std::isfinite(lse[2]) && lse[3] == -inf);

    const Bytes h_logits = encode(r.logits, dt), h_targets = raw_bytes(r.targets), h_lse = raw_bytes(lse),
                h_dloss = raw_bytes(r.dloss), h_dl = encode(r.dlogits0, dt);
    auto d_logits = upload(h_logits), d_targets = upload(h_targets), d_lse_in = upload(h_lse),
         d_dloss = upload(h_dloss), d_dl = upload(h_dl);
    auto d_loss = poisoned(N * sizeof(float)), d_lse = poisoned(N * sizeof(float));
    cross_entropy_forward(d_logits->get(), d_targets->as<int32_t>(), d_loss->as<float>(), d_lse->as<float>(), N, Vp, V,
                          dt, nullptr);
    cross_entropy_backward(d_logits->get(), d_targets->as<int32_t>(), d_lse_in->as<float>(), d_dloss->as<float>(),
                           d_dl->get(), N, Vp, V, dt, nullptr);
    const Output dev_loss = device_output("cross_entropy_forward.loss", *d_loss, DType::f32);
    const Output dev_lse = device_output("cross_entropy_forward.lse", *d_lse, DType::f32);
    const Output dev_dl = device_output("cross_entropy_backward.dlogits", *d_dl, dt);
    const std::string where = "non-finite " + describe(c);
    for (const auto& [o, cpu_v, ref_v] : {std::tuple{&dev_loss, widen(loss), loss64}, std::tuple{&dev_lse, widen(lse), lse64},
                                          std::tuple{&dev_dl, widen(dl), dl64}}) {
      const Verdict v = compare_output(where, o->name, *find_op_tolerance(o->name, dt), o->values, cpu_v, ref_v);
      EXPECT_TRUE(v.ok) << v.report;
    }
    EXPECT_TRUE(std::isnan(dev_loss.values[0])) << "a NaN logit must make the loss NaN";
    EXPECT_EQ(dev_lse.values[3], -inf);
    for (int64_t j = 0; j < V; ++j) EXPECT_TRUE(std::isnan(dev_dl.values[j])) << "row 0 column " << j;
  }
}

/// rope_forward in place (y == x, as the attention layer applies it to q and k) gives the bits
/// of the out-of-place launch; an odd head dim is refused before anything is launched.
TEST(CudaOpsRope, InPlaceGivesTheOutOfPlaceBitsAndAnOddHeadDimThrows) {
  SKIP_WITHOUT_DEVICE();
  for (DType dt : {DType::f32, DType::bf16}) {
    const Case c{"rope_forward", dt, 2, 13, 4, 50};
    const int64_t n = c.a * c.b * c.c * c.d;
    const Outputs want = run_case(c, Backend::device);
    const RopeInputs r = rope_inputs(c);
    const Bytes h_x = encode(r.x, dt);
    auto d_x = upload(h_x);
    auto d_cos = upload(raw_bytes(r.cos));
    auto d_sin = upload(raw_bytes(r.sin));
    rope_forward(d_x->get(), d_cos->as<float>(), d_sin->as<float>(), d_x->get(), c.a, c.b, c.c, c.d, dt, nullptr);
    expect_same_bits(c, want, {device_output("rope_forward.y", *d_x, dt)}, "in place");
    ASSERT_EQ(want[0].values.size(), static_cast<size_t>(n));
  }
  reset_launch_counts();
  EXPECT_THROW(rope_forward(nullptr, nullptr, nullptr, nullptr, 1, 1, 1, 7, DType::f32, nullptr), std::invalid_argument);
  EXPECT_THROW(rope_backward(nullptr, nullptr, nullptr, nullptr, 1, 1, 1, 7, DType::f32, nullptr),
               std::invalid_argument);
  EXPECT_TRUE(launch_counts().empty());
}

/// split_columns_backward into an fp32 dx (the fp32 gradient buffer of a low-precision leaf):
/// dx[r, off + c] += dpiece[r, c] in fp32, nothing rounded to the pieces' dtype (the CPU's
/// float sum exactly); columns outside the block untouched. A column block outside the rows,
/// or a dx dtype that is neither the pieces' nor f32, throws before anything is launched.
TEST(CudaOpsSplit, BackwardIntoAnFp32GradientAndBadBlocksThrow) {
  SKIP_WITHOUT_DEVICE();
  const int64_t rows = 37, S = 100, cols = 34, off = 33;
  for (DType dt : {DType::bf16, DType::f16}) {
    const Case c{"split_backward", dt, rows, S, cols, off};
    const Inputs in(c);
    const auto dpiece = in.normal("dpiece", rows * cols);  // on dt's grid
    std::vector<float> dx = Inputs(Case{"split_backward", DType::f32, rows, S, cols, off}).normal("dx", rows * S);
    const Bytes h_g = encode(dpiece, dt), h_dx = raw_bytes(dx);
    auto d_g = upload(h_g);
    auto d_dx = upload(h_dx);
    reset_launch_counts();
    split_columns_backward(d_g->get(), d_dx->get(), rows, cols, S, off, dt, DType::f32, nullptr);
    EXPECT_EQ(launch_counts(), (std::map<std::string, int64_t>{
                                   {"split_columns_backward_kernel<" + type_name(dt) + ", float>", 1}}));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k = 0; k < cols; ++k) dx[r * S + off + k] += dpiece[r * cols + k];
    const Output got = device_output("split_backward.dx", *d_dx, DType::f32);
    const Output want{"split_backward.dx", std::vector<double>(dx.begin(), dx.end()), raw_bytes(dx)};
    expect_same_bits(c, {want}, {got}, "into an fp32 dx");
  }
  reset_launch_counts();
  auto d = poisoned(64);
  EXPECT_THROW(split_columns(d->get(), d->get(), 2, 5, 8, 4, DType::f32, nullptr), std::invalid_argument);
  EXPECT_THROW(split_columns(d->get(), d->get(), 2, 1, 8, -1, DType::f32, nullptr), std::invalid_argument);
  EXPECT_THROW(split_columns_backward(d->get(), d->get(), 2, 9, 8, 0, DType::f32, DType::f32, nullptr),
               std::invalid_argument);
  EXPECT_THROW(split_columns_backward(d->get(), d->get(), 2, 4, 8, 0, DType::f32, DType::bf16, nullptr),
               std::invalid_argument);
  EXPECT_THROW(split_columns(d->get(), d->get(), 2, 4, 8, 0, DType::f64, nullptr), std::invalid_argument);
  split_columns_backward(d->get(), nullptr, 2, 4, 8, 0, DType::f32, DType::f32, nullptr);  // no dx: nothing
  split_columns(d->get(), d->get(), 0, 4, 8, 0, DType::f32, nullptr);                      // no rows: nothing
  EXPECT_TRUE(launch_counts().empty());
}

// ------------------------------------------------------------------ the harness catches errors

TEST(CudaOpsHarness, ComparisonCatchesAPlantedError) {
  SKIP_WITHOUT_DEVICE();
  // A toleranced output: one element of a real device result moved by 10× its tolerance.
  {
    const Case c{"rms_norm_forward", DType::f32, 37, 100, 0};
    const Outputs cpu = run_case(c, Backend::cpu_f32), ref = run_case(c, Backend::cpu_f64);
    Outputs dev = run_case(c, Backend::device);
    const OpTolerance* tol = find_op_tolerance(dev[0].name, c.dt);
    ASSERT_NE(tol, nullptr);
    ASSERT_TRUE(compare_output(describe(c), dev[0].name, *tol, dev[0].values, cpu[0].values, ref[0].values).ok);
    const size_t k = 1234;
    dev[0].values[k] += 10 * (tol->atol + tol->rtol * std::fabs(cpu[0].values[k]));
    const Verdict v = compare_output(describe(c), dev[0].name, *tol, dev[0].values, cpu[0].values, ref[0].values);
    EXPECT_FALSE(v.ok) << "a planted error of 10x the tolerance passed";
    EXPECT_NE(v.report.find("[1234]"), std::string::npos) << v.report;
    EXPECT_NE(v.report.find("rms_norm_forward fp32 rows37_C100"), std::string::npos) << v.report;
  }
  // A bit-exact output: one element one bf16 ulp off.
  {
    const Case c{"add_forward", DType::bf16, 1000, 0, 0};
    const Outputs cpu = run_case(c, Backend::cpu_f32), ref = run_case(c, Backend::cpu_f64);
    Outputs dev = run_case(c, Backend::device);
    const OpTolerance* tol = find_op_tolerance(dev[0].name, c.dt);
    ASSERT_NE(tol, nullptr);
    ASSERT_TRUE(compare_output(describe(c), dev[0].name, *tol, dev[0].values, cpu[0].values, ref[0].values).ok);
    const size_t k = 77;
    const float v0 = static_cast<float>(dev[0].values[k]);
    dev[0].values[k] = bf16_bits_to_float(static_cast<uint16_t>(float_to_bf16_bits(v0) + 1));  // one bf16 ulp away
    ASSERT_NE(dev[0].values[k], v0);
    const Verdict v = compare_output(describe(c), dev[0].name, *tol, dev[0].values, cpu[0].values, ref[0].values);
    EXPECT_FALSE(v.ok) << "a planted one-ulp error in a bit-exact op passed";
    EXPECT_NE(v.report.find("[77]"), std::string::npos) << v.report;
  }
}

TEST(CudaOpsHarness, FloatingPointCapCatchesADeviceWorseThanTheCpu) {
  SKIP_WITHOUT_DEVICE();
  // Within the tolerance of the CPU element by element, but twice as far from fp64 as the
  // CPU and beyond the table's tolerance: rejected by the cap alone.
  const OpTolerance tol{"synthetic", DType::f32, 0.0, 1e-3};
  const std::vector<double> ref(10, 1.0), cpu(10, 1.0 + 0.5e-3);
  std::vector<double> dev = cpu;
  dev[3] = 1.0 + 1.4e-3;
  const Verdict v = compare_output("synthetic", "out", tol, dev, cpu, ref);
  EXPECT_FALSE(v.ok);
  EXPECT_NE(v.report.find("max |device - fp64|"), std::string::npos) << v.report;
  EXPECT_EQ(v.report.find("outside the tolerance"), std::string::npos) << v.report;
  dev[3] = 1.0 + 0.9e-3;  // within 2x the CPU's error: accepted
  EXPECT_TRUE(compare_output("synthetic", "out", tol, dev, cpu, ref).ok);
}

TEST(CudaOpsHarness, EveryCaseHasATolerance) {
  SKIP_WITHOUT_DEVICE();
  for (const Case& c : all_cases())
    for (const Output& o : run_case(c, Backend::cpu_f32))
      EXPECT_NE(find_op_tolerance(o.name, c.dt), nullptr) << o.name << " " << dtype_name(c.dt);
}

}  // namespace
}  // namespace ptrain::cuda
