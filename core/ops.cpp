// core/ops.cpp — op wrappers: shape checks, dispatch to the CPU kernels, tape records.
//
// Backward closures capture SavedTensors (through the tape's pack/unpack hooks) and
// the output's gradient; every gradient buffer an op writes is rounded once to its
// dtype when the op is done with it (Tensor::round_, a no-op for fp32/f64).
#include "core/ops.h"

#include <cmath>

#include "core/cpu/kernels.h"
#include "core/recompute.h"
#if PTRAIN_HAVE_CUDA
#include "core/cuda/ops_device.h"
/// Ops with a CUDA kernel hand device tensors to core/cuda/ops_device.cpp after the checks.
#define PT_DEVICE_OP(x, call) \
  if ((x).device() == Device::cuda) return device::call
#else
#define PT_DEVICE_OP(x, call) (void)0
#endif

namespace ptrain::ops {

namespace {

/// Calls f(T{}) with T = double for f64 tensors and float for f32/bf16/f16.
template <class F> void dispatch(const Tensor& t, F&& f) {
  if (t.dtype() == DType::f64)
    f(double{});
  else {
    PT_CHECK(t.dtype() != DType::i32, "float op given an i32 tensor");
    f(float{});
  }
}

/// A float tensor on the CPU (ops without a CUDA kernel yet).
void check_float(const Tensor& t, const char* op, const char* what) {
  PT_CHECK(t.defined(), "{}: {} is undefined", op, what);
  PT_CHECK(is_float(t.dtype()), "{}: {} must be a float tensor, got {}", op, what, dtype_name(t.dtype()));
  PT_CHECK(t.device() == Device::cpu, "{}: {} is on {}; this op has no CUDA kernel yet", op, what,
           device_name(t.device()));
}

/// A float tensor on `dev` (ops with a CUDA kernel: every input on the first input's device).
void check_float_on(const Tensor& t, Device dev, const char* op, const char* what) {
  PT_CHECK(t.defined(), "{}: {} is undefined", op, what);
  PT_CHECK(is_float(t.dtype()), "{}: {} must be a float tensor, got {}", op, what, dtype_name(t.dtype()));
  PT_CHECK(t.device() == dev, "{}: {} is on {} but the op runs on {}", op, what, device_name(t.device()),
           device_name(dev));
}

void check_same_family(const Tensor& a, const Tensor& b, const char* op) {
  PT_CHECK((a.dtype() == DType::f64) == (b.dtype() == DType::f64), "{}: mixing f64 ({}) and float ({}) tensors", op,
           dtype_name(a.dtype()), dtype_name(b.dtype()));
}

int64_t rows_of(const Tensor& x) { return x.numel() / x.dim(-1); }

}  // namespace

// ------------------------------------------------------------------ linear

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  check_float_on(x, x.device(), "linear", "x");
  check_float_on(w, x.device(), "linear", "weight");
  if (b.defined()) check_float_on(b, x.device(), "linear", "bias");
  check_same_family(x, w, "linear");
  PT_CHECK(w.ndim() == 2 && x.dim(-1) == w.dim(1), "linear: x {} does not match weight {} ([out, in])",
           shape_str(x.shape()), shape_str(w.shape()));
  if (b.defined())
    PT_CHECK(b.ndim() == 1 && b.dim(0) == w.dim(0), "linear: bias {} for weight {}", shape_str(b.shape()),
             shape_str(w.shape()));
  PT_CHECK(x.device() == Device::cpu || (x.dtype() == w.dtype() && (!b.defined() || b.dtype() == w.dtype())),
           "linear: x {} weight {} bias {}: the device GEMM takes one dtype", dtype_name(x.dtype()),
           dtype_name(w.dtype()), b.defined() ? dtype_name(b.dtype()) : "none");
  PT_DEVICE_OP(x, linear(x, w, b));
  const int64_t M = rows_of(x), K = w.dim(1), N = w.dim(0);
  Shape ys = x.shape();
  ys.back() = N;
  Tensor y = Tensor::empty(ys, x.dtype());
  dispatch(x, [&](auto tag) {
    using T = decltype(tag);
    cpu::linear_forward<T>(x.data<T>(), w.data<T>(), b.defined() ? b.data<T>() : nullptr, y.data<T>(), M, K, N);
  });
  y.round_();
  if (Tape* tape = Tape::recording({&x, &w, &b})) {
    SavedTensor sx = tape->save(x), sw = tape->save(w);
    tape->record(OpId::linear, {&x, &w, &b}, {&y}, [sx, sw, M, K, N](BackwardCtx& ctx) {
      const Tensor dy = ctx.grad_out();
      const Tensor w = sw.get();
      if (ctx.needs_grad(0)) {
        Tensor dx = ctx.grad_in(0);
        dispatch(dy, [&](auto tag) {
          using T = decltype(tag);
          cpu::linear_backward_input<T>(dy.data<T>(), w.data<T>(), dx.data<T>(), M, K, N);
        });
        dx.round_();
      }
      if (ctx.needs_grad(1) || ctx.needs_grad(2)) {
        Tensor dw = ctx.grad_in(1), db = ctx.grad_in(2);
        ctx.weight_grad([sx, dy, dw, db, M, K, N]() mutable {
          const Tensor x = sx.get();
          dispatch(dy, [&](auto tag) {
            using T = decltype(tag);
            cpu::linear_backward_weight<T>(dy.data<T>(), x.data<T>(), dw.defined() ? dw.data<T>() : nullptr,
                                           db.defined() ? db.data<T>() : nullptr, M, K, N);
          });
          if (dw.defined()) dw.round_();
          if (db.defined()) db.round_();
        });
      }
    });
  }
  return y;
}

// ------------------------------------------------------------------ elementwise

Tensor add(const Tensor& a, const Tensor& b) {
  check_float_on(a, a.device(), "add", "a");
  check_float_on(b, a.device(), "add", "b");
  check_same_family(a, b, "add");
  check_same_shape(a, b, "add");
  PT_DEVICE_OP(a, add(a, b));
  Tensor y = Tensor::empty(a.shape(), a.dtype());
  dispatch(a, [&](auto tag) {
    using T = decltype(tag);
    cpu::add_forward<T>(a.data<T>(), b.data<T>(), y.data<T>(), a.numel());
  });
  y.round_();
  if (Tape* tape = Tape::recording({&a, &b})) {
    tape->record(OpId::add, {&a, &b}, {&y}, [](BackwardCtx& ctx) {
      const Tensor dy = ctx.grad_out();
      if (ctx.needs_grad(1)) {
        Tensor db = ctx.grad_in(1);
        dispatch(dy, [&](auto tag) {
          using T = decltype(tag);
          cpu::axpy<T>(T(1), dy.data<T>(), db.data<T>(), dy.numel());
        });
        db.round_();
      }
      if (ctx.needs_grad(0)) ctx.accumulate(0, ctx.take_grad_out());
    });
  }
  return y;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  check_float_on(a, a.device(), "mul", "a");
  check_float_on(b, a.device(), "mul", "b");
  check_same_family(a, b, "mul");
  check_same_shape(a, b, "mul");
  PT_DEVICE_OP(a, mul(a, b));
  Tensor y = Tensor::empty(a.shape(), a.dtype());
  dispatch(a, [&](auto tag) {
    using T = decltype(tag);
    cpu::mul_forward<T>(a.data<T>(), b.data<T>(), y.data<T>(), a.numel());
  });
  y.round_();
  if (Tape* tape = Tape::recording({&a, &b})) {
    SavedTensor sa = tape->save(a), sb = tape->save(b);
    tape->record(OpId::mul, {&a, &b}, {&y}, [sa, sb](BackwardCtx& ctx) {
      const Tensor dy = ctx.grad_out();
      Tensor da = ctx.grad_in(0), db = ctx.grad_in(1);
      const Tensor a = sa.get(), b = sb.get();
      dispatch(dy, [&](auto tag) {
        using T = decltype(tag);
        cpu::mul_backward<T>(dy.data<T>(), a.data<T>(), b.data<T>(), da.defined() ? da.data<T>() : nullptr,
                             db.defined() ? db.data<T>() : nullptr, dy.numel());
      });
      if (da.defined()) da.round_();
      if (db.defined()) db.round_();
    });
  }
  return y;
}

Tensor scale(const Tensor& x, double s) {
  check_float_on(x, x.device(), "scale", "x");
  PT_DEVICE_OP(x, scale(x, s));
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  dispatch(x, [&](auto tag) {
    using T = decltype(tag);
    cpu::scale_forward<T>(x.data<T>(), static_cast<T>(s), y.data<T>(), x.numel());
  });
  y.round_();
  if (Tape* tape = Tape::recording({&x})) {
    tape->record(OpId::scale, {&x}, {&y}, [s](BackwardCtx& ctx) {
      const Tensor dy = ctx.grad_out();
      Tensor dx = ctx.grad_in(0);
      dispatch(dy, [&](auto tag) {
        using T = decltype(tag);
        cpu::axpy<T>(static_cast<T>(s), dy.data<T>(), dx.data<T>(), dy.numel());
      });
      dx.round_();
    });
  }
  return y;
}

// ------------------------------------------------------------------ embedding

Tensor embedding(const Tensor& ids, const Tensor& table) {
  PT_CHECK(ids.defined() && ids.dtype() == DType::i32, "embedding: ids must be i32");
  check_float_on(table, ids.device(), "embedding", "table");
  PT_CHECK(table.ndim() == 2, "embedding: table must be [V, C], got {}", shape_str(table.shape()));
  PT_DEVICE_OP(table, embedding(ids, table));
  const int64_t n = ids.numel(), V = table.dim(0), C = table.dim(1);
  const int32_t* id = ids.data<int32_t>();
  for (int64_t i = 0; i < n; ++i)
    PT_CHECK(id[i] >= 0 && id[i] < V, "embedding: token id {} at position {} is outside [0, {})", id[i], i, V);
  Shape ys = ids.shape();
  ys.push_back(C);
  Tensor y = Tensor::empty(ys, table.dtype());
  dispatch(table, [&](auto tag) {
    using T = decltype(tag);
    cpu::embedding_forward<T>(id, table.data<T>(), y.data<T>(), n, C);
  });
  if (Tape* tape = Tape::recording({&table})) {
    SavedTensor sids = tape->save(ids);
    tape->record(OpId::embedding, {&ids, &table}, {&y}, [sids, n, C](BackwardCtx& ctx) {
      const Tensor dy = ctx.grad_out();
      Tensor dt = ctx.grad_in(1);
      ctx.weight_grad([sids, dy, dt, n, C]() mutable {
        const Tensor ids = sids.get();
        dispatch(dy, [&](auto tag) {
          using T = decltype(tag);
          cpu::embedding_backward<T>(ids.data<int32_t>(), dy.data<T>(), dt.data<T>(), n, C);
        });
        dt.round_();
      });
    });
  }
  return y;
}

// ------------------------------------------------------------------ norms

Tensor rms_norm(const Tensor& x, const Tensor& w, double eps) {
  check_float_on(x, x.device(), "rms_norm", "x");
  check_float_on(w, x.device(), "rms_norm", "weight");
  check_same_family(x, w, "rms_norm");
  PT_CHECK(w.ndim() == 1 && w.dim(0) == x.dim(-1), "rms_norm: weight {} for x {}", shape_str(w.shape()),
           shape_str(x.shape()));
  PT_CHECK(x.device() == Device::cpu || x.dtype() == w.dtype(), "rms_norm: x is {} but the weight is {} (the device "
           "kernel takes one dtype)", dtype_name(x.dtype()), dtype_name(w.dtype()));
  PT_DEVICE_OP(x, rms_norm(x, w, eps));
  const int64_t rows = rows_of(x), C = x.dim(-1);
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  Tensor rstd = Tensor::empty({rows}, x.dtype() == DType::f64 ? DType::f64 : DType::f32);
  dispatch(x, [&](auto tag) {
    using T = decltype(tag);
    cpu::rms_norm_forward<T>(x.data<T>(), w.data<T>(), y.data<T>(), rstd.data<T>(), rows, C, eps);
  });
  y.round_();
  if (Tape* tape = Tape::recording({&x, &w})) {
    SavedTensor sx = tape->save(x), sw = tape->save(w), sr = tape->save(rstd);
    tape->record(OpId::rms_norm, {&x, &w}, {&y}, [sx, sw, sr, rows, C](BackwardCtx& ctx) {
      const Tensor dy = ctx.grad_out();
      Tensor dx = ctx.grad_in(0), dw = ctx.grad_in(1);
      auto run = [sx, sw, sr, dy, rows, C](Tensor dx, Tensor dw) {
        const Tensor x = sx.get(), w = sw.get(), r = sr.get();
        dispatch(dy, [&](auto tag) {
          using T = decltype(tag);
          cpu::rms_norm_backward<T>(dy.data<T>(), x.data<T>(), w.data<T>(), r.data<T>(),
                                    dx.defined() ? dx.data<T>() : nullptr, dw.defined() ? dw.data<T>() : nullptr,
                                    rows, C);
        });
        if (dx.defined()) dx.round_();
        if (dw.defined()) dw.round_();
      };
      if (ctx.splitting()) {
        if (dx.defined()) run(dx, Tensor());
        if (dw.defined()) ctx.weight_grad([run, dw] { run(Tensor(), dw); });
      } else {
        run(dx, dw);
      }
    });
  }
  return y;
}

Tensor layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  check_float_on(x, x.device(), "layer_norm", "x");
  check_float_on(w, x.device(), "layer_norm", "weight");
  check_float_on(b, x.device(), "layer_norm", "bias");
  check_same_family(x, w, "layer_norm");
  PT_CHECK(w.ndim() == 1 && w.dim(0) == x.dim(-1) && b.shape() == w.shape(), "layer_norm: weight {} bias {} for x {}",
           shape_str(w.shape()), shape_str(b.shape()), shape_str(x.shape()));
  PT_CHECK(x.device() == Device::cpu || (x.dtype() == w.dtype() && w.dtype() == b.dtype()),
           "layer_norm: x, weight and bias must share one dtype on the device");
  PT_DEVICE_OP(x, layer_norm(x, w, b, eps));
  const int64_t rows = rows_of(x), C = x.dim(-1);
  const DType st = x.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  Tensor mean = Tensor::empty({rows}, st), rstd = Tensor::empty({rows}, st);
  dispatch(x, [&](auto tag) {
    using T = decltype(tag);
    cpu::layer_norm_forward<T>(x.data<T>(), w.data<T>(), b.data<T>(), y.data<T>(), mean.data<T>(), rstd.data<T>(),
                               rows, C, eps);
  });
  y.round_();
  if (Tape* tape = Tape::recording({&x, &w, &b})) {
    SavedTensor sx = tape->save(x), sw = tape->save(w), sm = tape->save(mean), sr = tape->save(rstd);
    tape->record(OpId::layer_norm, {&x, &w, &b}, {&y}, [sx, sw, sm, sr, rows, C](BackwardCtx& ctx) {
      const Tensor dy = ctx.grad_out();
      Tensor dx = ctx.grad_in(0), dw = ctx.grad_in(1), db = ctx.grad_in(2);
      auto run = [sx, sw, sm, sr, dy, rows, C](Tensor dx, Tensor dw, Tensor db) {
        const Tensor x = sx.get(), w = sw.get(), m = sm.get(), r = sr.get();
        dispatch(dy, [&](auto tag) {
          using T = decltype(tag);
          cpu::layer_norm_backward<T>(dy.data<T>(), x.data<T>(), w.data<T>(), m.data<T>(), r.data<T>(),
                                      dx.defined() ? dx.data<T>() : nullptr, dw.defined() ? dw.data<T>() : nullptr,
                                      db.defined() ? db.data<T>() : nullptr, rows, C);
        });
        for (Tensor* g : {&dx, &dw, &db})
          if (g->defined()) g->round_();
      };
      if (ctx.splitting()) {
        if (dx.defined()) run(dx, Tensor(), Tensor());
        if (dw.defined() || db.defined()) ctx.weight_grad([run, dw, db] { run(Tensor(), dw, db); });
      } else {
        run(dx, dw, db);
      }
    });
  }
  return y;
}

// ------------------------------------------------------------------ rope

Tensor rope(const Tensor& x, const Tensor& cos, const Tensor& sin) {
  check_float_on(x, x.device(), "rope", "x");
  PT_CHECK(x.ndim() == 4, "rope: x must be [B, T, H, D], got {}", shape_str(x.shape()));
  const int64_t B = x.dim(0), Tn = x.dim(1), H = x.dim(2), D = x.dim(3);
  PT_CHECK(D % 2 == 0, "rope: head dim {} must be even", D);
  PT_CHECK(cos.ndim() == 2 && cos.dim(0) >= Tn && cos.dim(1) == D / 2 && sin.shape() == cos.shape(),
           "rope: tables {} / {} for x {}", shape_str(cos.shape()), shape_str(sin.shape()), shape_str(x.shape()));
  check_same_family(x, cos, "rope");
  PT_CHECK(x.device() == Device::cpu || (cos.device() == Device::cuda && sin.device() == Device::cuda &&
                                         cos.dtype() == DType::f32 && sin.dtype() == DType::f32),
           "rope on the device needs f32 cos/sin tables on the device");
  PT_DEVICE_OP(x, rope(x, cos, sin));
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  dispatch(x, [&](auto tag) {
    using T = decltype(tag);
    cpu::rope_forward<T>(x.data<T>(), cos.data<T>(), sin.data<T>(), y.data<T>(), B, Tn, H, D);
  });
  y.round_();
  if (Tape* tape = Tape::recording({&x})) {
    tape->record(OpId::rope, {&x}, {&y}, [cos, sin, B, Tn, H, D](BackwardCtx& ctx) {
      const Tensor dy = ctx.grad_out();
      Tensor dx = ctx.grad_in(0);
      dispatch(dy, [&](auto tag) {
        using T = decltype(tag);
        cpu::rope_backward<T>(dy.data<T>(), cos.data<T>(), sin.data<T>(), dx.data<T>(), B, Tn, H, D);
      });
      dx.round_();
    });
  }
  return y;
}

// ------------------------------------------------------------------ attention
// In bf16 / f16 the CPU op rounds where the device attention stores (core/cuda/attention.h):
// P after the fp32 softmax (saved so; out = P·v reads it rounded), dS (scale folded in),
// dk / dv once per q head of a group, out and dq once. f32 / f64: no intermediate rounding.

static Tensor attention_op(const Tensor& q, const Tensor& k, const Tensor& v) {
  check_float_on(q, q.device(), "attention", "q");
  check_float_on(k, q.device(), "attention", "k");
  check_float_on(v, q.device(), "attention", "v");
  check_same_family(q, k, "attention");
  PT_CHECK(q.ndim() == 4 && k.ndim() == 4 && k.shape() == v.shape(), "attention: q {} k {} v {} must be [B, T, H, D]",
           shape_str(q.shape()), shape_str(k.shape()), shape_str(v.shape()));
  const int64_t B = q.dim(0), Tn = q.dim(1), Hq = q.dim(2), D = q.dim(3), Hkv = k.dim(2);
  PT_CHECK(k.dim(0) == B && k.dim(1) == Tn && k.dim(3) == D && Hkv > 0 && Hq % Hkv == 0,
           "attention: q {} and k/v {} do not match (need the same B, T, D and Hq % Hkv == 0)", shape_str(q.shape()),
           shape_str(k.shape()));
  PT_CHECK(q.device() == Device::cpu || (q.dtype() == k.dtype() && k.dtype() == v.dtype()),
           "attention: q, k and v must share one dtype on the device");
  PT_DEVICE_OP(q, attention(q, k, v));
  Tensor out = Tensor::empty(q.shape(), q.dtype());
  // probs are saved in q's dtype (bf16 / f16: rounded after the fp32 softmax, and out = P·v
  // reads them rounded; out rounded once below), as the device does (core/cuda/attention.h).
  Tensor probs = Tensor::empty({B, Hq, Tn, Tn}, q.dtype());
  dispatch(q, [&](auto tag) {
    using T = decltype(tag);
    cpu::attention_forward<T>(q.data<T>(), k.data<T>(), v.data<T>(), out.data<T>(), probs.data<T>(), B, Tn, Hq, Hkv,
                              D, q.dtype());
  });
  out.round_();
  if (Tape* tape = Tape::recording({&q, &k, &v})) {
    SavedTensor sq = tape->save(q), sk = tape->save(k), sv = tape->save(v), sp = tape->save(probs);
    tape->record(OpId::attention, {&q, &k, &v}, {&out}, [sq, sk, sv, sp, B, Tn, Hq, Hkv, D](BackwardCtx& ctx) {
      const Tensor dout = ctx.grad_out();
      Tensor dq = ctx.grad_in(0), dk = ctx.grad_in(1), dv = ctx.grad_in(2);
      const Tensor q = sq.get(), k = sk.get(), v = sv.get(), p = sp.get();
      // dS rounded to dout's dtype, dk / dv to their own after each q head of a group, dq once
      // below (the device's rounding points; see cpu::attention_backward).
      dispatch(dout, [&](auto tag) {
        using T = decltype(tag);
        cpu::attention_backward<T>(dout.data<T>(), q.data<T>(), k.data<T>(), v.data<T>(), p.data<T>(),
                                   dq.defined() ? dq.data<T>() : nullptr, dk.defined() ? dk.data<T>() : nullptr,
                                   dv.defined() ? dv.data<T>() : nullptr, B, Tn, Hq, Hkv, D, dout.dtype(),
                                   dk.defined() ? dk.dtype() : DType::f32, dv.defined() ? dv.dtype() : DType::f32);
      });
      for (Tensor* g : {&dq, &dk, &dv})
        if (g->defined()) g->round_();
    });
  }
  return out;
}

// ------------------------------------------------------------------ activations

namespace {
template <class Fwd, class Bwd>
Tensor unary(const Tensor& x, OpId op, Fwd fwd, Bwd bwd) {
  check_float(x, op_name(op).data(), "x");  // device tensors are dispatched by the callers
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  dispatch(x, [&](auto tag) {
    using T = decltype(tag);
    fwd(x.data<T>(), y.data<T>(), x.numel());
  });
  y.round_();
  if (Tape* tape = Tape::recording({&x})) {
    SavedTensor sx = tape->save(x);
    tape->record(op, {&x}, {&y}, [sx, bwd](BackwardCtx& ctx) {
      const Tensor dy = ctx.grad_out();
      Tensor dx = ctx.grad_in(0);
      const Tensor x = sx.get();
      dispatch(dy, [&](auto tag) {
        using T = decltype(tag);
        bwd(dy.data<T>(), x.data<T>(), dx.data<T>(), dy.numel());
      });
      dx.round_();
    });
  }
  return y;
}
}  // namespace

static Tensor silu_op(const Tensor& x) {
  check_float_on(x, x.device(), "silu", "x");
  PT_DEVICE_OP(x, silu(x));
  return unary(
      x, OpId::silu, [](auto* a, auto* b, int64_t n) { cpu::silu_forward(a, b, n); },
      [](auto* dy, auto* a, auto* dx, int64_t n) { cpu::silu_backward(dy, a, dx, n); });
}

static Tensor gelu_op(const Tensor& x) {
  check_float_on(x, x.device(), "gelu", "x");
  PT_DEVICE_OP(x, gelu(x));
  return unary(
      x, OpId::gelu, [](auto* a, auto* b, int64_t n) { cpu::gelu_tanh_forward(a, b, n); },
      [](auto* dy, auto* a, auto* dx, int64_t n) { cpu::gelu_tanh_backward(dy, a, dx, n); });
}

static Tensor swiglu_op(const Tensor& gate, const Tensor& up) {
  check_float_on(gate, gate.device(), "swiglu", "gate");
  check_float_on(up, gate.device(), "swiglu", "up");
  check_same_shape(gate, up, "swiglu");
  check_same_family(gate, up, "swiglu");
  PT_DEVICE_OP(gate, swiglu(gate, up));
  Tensor y = Tensor::empty(gate.shape(), gate.dtype());
  dispatch(gate, [&](auto tag) {
    using T = decltype(tag);
    cpu::swiglu_forward<T>(gate.data<T>(), up.data<T>(), y.data<T>(), gate.numel());
  });
  y.round_();
  if (Tape* tape = Tape::recording({&gate, &up})) {
    SavedTensor sg = tape->save(gate), su = tape->save(up);
    tape->record(OpId::swiglu, {&gate, &up}, {&y}, [sg, su](BackwardCtx& ctx) {
      const Tensor dy = ctx.grad_out();
      Tensor dg = ctx.grad_in(0), du = ctx.grad_in(1);
      const Tensor g = sg.get(), u = su.get();
      dispatch(dy, [&](auto tag) {
        using T = decltype(tag);
        cpu::swiglu_backward<T>(dy.data<T>(), g.data<T>(), u.data<T>(), dg.defined() ? dg.data<T>() : nullptr,
                                du.defined() ? du.data<T>() : nullptr, dy.numel());
      });
      if (dg.defined()) dg.round_();
      if (du.defined()) du.round_();
    });
  }
  return y;
}

// ------------------------------------------------------------------ recompute regions
// The attention core and the activation functions are recompute regions (core/recompute.h):
// under train.recompute: selective their internals (the probabilities; an activation's
// output) are dropped in forward and rerun in backward. Elsewhere these are plain calls.

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v) {
  return recompute_region(RegionKind::attention_core, {q, k, v},
                          [](const std::vector<Tensor>& in) { return attention_op(in[0], in[1], in[2]); });
}
Tensor silu(const Tensor& x) {
  return recompute_region(RegionKind::activation, {x}, [](const std::vector<Tensor>& in) { return silu_op(in[0]); });
}
Tensor gelu(const Tensor& x) {
  return recompute_region(RegionKind::activation, {x}, [](const std::vector<Tensor>& in) { return gelu_op(in[0]); });
}
Tensor swiglu(const Tensor& gate, const Tensor& up) {
  return recompute_region(RegionKind::activation, {gate, up},
                          [](const std::vector<Tensor>& in) { return swiglu_op(in[0], in[1]); });
}

// ------------------------------------------------------------------ cross-entropy

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t V, double weight) {
  check_float_on(logits, logits.device(), "cross_entropy", "logits");
  PT_CHECK(logits.ndim() == 2, "cross_entropy: logits must be [N, Vp], got {}", shape_str(logits.shape()));
  PT_CHECK(targets.defined() && targets.dtype() == DType::i32 && targets.numel() == logits.dim(0),
           "cross_entropy: targets {} for logits {}", targets.defined() ? shape_str(targets.shape()) : "undefined",
           shape_str(logits.shape()));
  PT_CHECK(targets.device() == logits.device(), "cross_entropy: targets on {}, logits on {}",
           device_name(targets.device()), device_name(logits.device()));
  const int64_t N = logits.dim(0), Vp = logits.dim(1);
  PT_CHECK(V > 0 && V <= Vp, "cross_entropy: V = {} outside (0, {}]", V, Vp);
  PT_DEVICE_OP(logits, cross_entropy(logits, targets, V, weight));
  const int32_t* tg = targets.data<int32_t>();
  for (int64_t i = 0; i < N; ++i)
    PT_CHECK(tg[i] < V, "cross_entropy: target {} at row {} is >= vocab {}", tg[i], i, V);
  const bool f64 = logits.dtype() == DType::f64;
  const DType st = f64 ? DType::f64 : DType::f32;
  Tensor losses = Tensor::empty({N}, st), lse = Tensor::empty({N}, st);
  Tensor loss = Tensor::empty({1}, st);
  dispatch(logits, [&](auto tag) {
    using T = decltype(tag);
    cpu::cross_entropy_forward<T>(logits.data<T>(), tg, losses.data<T>(), lse.data<T>(), N, Vp, V);
    double s = 0;  // in index order, in double
    const T* l = losses.data<T>();
    for (int64_t i = 0; i < N; ++i) s += static_cast<double>(l[i]);
    loss.data<T>()[0] = static_cast<T>(s * weight);
  });
  if (Tape* tape = Tape::recording({&logits})) {
    SavedTensor sl = tape->save(logits), st_ = tape->save(targets), slse = tape->save(lse);
    tape->record(OpId::cross_entropy, {&logits, &targets}, {&loss}, [sl, st_, slse, N, Vp, V, weight](BackwardCtx& ctx) {
      const Tensor dloss = ctx.grad_out();
      Tensor dlogits = ctx.grad_in(0);
      const Tensor logits = sl.get(), targets = st_.get(), lse = slse.get();
      dispatch(logits, [&](auto tag) {
        using T = decltype(tag);
        std::vector<T> drow(static_cast<size_t>(N), static_cast<T>(dloss.data<T>()[0] * weight));
        cpu::cross_entropy_backward<T>(logits.data<T>(), targets.data<int32_t>(), lse.data<T>(), drow.data(),
                                       dlogits.data<T>(), N, Vp, V);
      });
      dlogits.round_();
    });
  }
  return loss;
}

void device_accumulate(Tensor& dst, const Tensor& src) {
#if PTRAIN_HAVE_CUDA
  device::accumulate(dst, src);
#else
  (void)dst, (void)src;
  PT_CHECK(false, "a device gradient in a build without the CUDA backend");
#endif
}

// ------------------------------------------------------------------ shapes

Tensor view(const Tensor& x, Shape shape) {
  Tensor y = x.view(std::move(shape));
  if (Tape* tape = Tape::recording({&x})) {
    tape->record(OpId::view, {&x}, {&y}, [](BackwardCtx& ctx) { ctx.accumulate(0, ctx.take_grad_out()); });
  }
  return y;
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes) {
  check_float_on(x, x.device(), "split", "x");
  int64_t total = 0;
  for (auto s : sizes) {
    PT_CHECK(s > 0, "split: non-positive piece size {}", s);
    total += s;
  }
  const int64_t S = x.dim(-1), rows = rows_of(x);
  PT_CHECK(total == S, "split: pieces sum to {} but the last dim of {} is {}", total, shape_str(x.shape()), S);
  PT_DEVICE_OP(x, split(x, sizes));
  std::vector<Tensor> outs;
  std::vector<int64_t> offs;
  int64_t off = 0;
  for (auto s : sizes) {
    Shape sh = x.shape();
    sh.back() = s;
    outs.push_back(Tensor::empty(sh, x.dtype()));
    offs.push_back(off);
    off += s;
  }
  dispatch(x, [&](auto tag) {
    using T = decltype(tag);
    const T* src = x.data<T>();
    for (size_t p = 0; p < sizes.size(); ++p) {
      T* dst = outs[p].data<T>();
      const int64_t s = sizes[p], o = offs[p];
#pragma omp parallel for schedule(static) if (rows * s > 65536)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < s; ++c) dst[r * s + c] = src[r * S + o + c];
    }
  });
  if (Tape* tape = Tape::recording({&x})) {
    std::vector<Tensor*> outp;
    for (auto& o : outs) outp.push_back(&o);
    tape->record(OpId::split, {&x}, outp, [sizes, offs, rows, S](BackwardCtx& ctx) {
      Tensor dx = ctx.grad_in(0);
      dispatch(dx, [&](auto tag) {
        using T = decltype(tag);
        T* d = dx.data<T>();
        for (size_t p = 0; p < sizes.size(); ++p) {
          const Tensor& g = ctx.grad_out(p);
          if (!g.defined()) continue;
          const T* src = g.data<T>();
          const int64_t s = sizes[p], o = offs[p];
#pragma omp parallel for schedule(static) if (rows * s > 65536)
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < s; ++c) d[r * S + o + c] += src[r * s + c];
        }
      });
      dx.round_();
    });
  }
  return outs;
}

}  // namespace ptrain::ops
