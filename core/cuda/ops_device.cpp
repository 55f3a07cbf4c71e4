// core/cuda/ops_device.cpp — device versions of the ops (see ops_device.h): kernels of
// core/cuda/ops.h on the default stream, tape records mirroring core/ops.cpp.
#include "core/cuda/ops_device.h"

#include <vector>

#include "core/autograd.h"
#include "core/cuda/attention.h"
#include "core/cuda/gemm.h"
#include "core/cuda/ops.h"

namespace ptrain::ops::device {

namespace {

/// Device scratch of at least `bytes` (from the caching allocator; freed with the tensor).
Tensor scratch(size_t bytes) { return Tensor::empty({static_cast<int64_t>((bytes + 3) / 4)}, DType::i32, Device::cuda); }

void* raw_or_null(const Tensor& t) { return t.defined() ? t.raw() : nullptr; }

/// Kernels that write activation gradients take one dtype: those gradients must be in dy's.
void same_dtype_grads(const char* op, const Tensor& dy, std::initializer_list<const Tensor*> grads) {
  for (const Tensor* g : grads)
    PT_CHECK(!g->defined() || g->dtype() == dy.dtype(),
             "{} on the device: a gradient in {} for an output gradient in {} (this kernel writes one dtype)", op,
             dtype_name(g->dtype()), dtype_name(dy.dtype()));
}

}  // namespace

void accumulate(Tensor& dst, const Tensor& src) {
  cuda::accumulate(dst.raw(), src.raw(), dst.numel(), dst.dtype(), nullptr);
}

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor y = Tensor::empty(a.shape(), a.dtype(), Device::cuda);
  cuda::add_forward(a.raw(), b.raw(), y.raw(), a.numel(), a.dtype(), nullptr);
  if (Tape* tape = Tape::recording({&a, &b})) {
    tape->record(OpId::add, {&a, &b}, {&y}, [](BackwardCtx& ctx) {
      const Tensor dy = ctx.grad_out();
      if (ctx.needs_grad(1)) {
        Tensor db = ctx.grad_in(1);
        accumulate(db, dy);
      }
      if (ctx.needs_grad(0)) ctx.accumulate(0, ctx.take_grad_out());
    });
  }
  return y;
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  const int64_t K = w.dim(1), N = w.dim(0), M = x.numel() / K;
  Shape ys = x.shape();
  ys.back() = N;
  Tensor y = Tensor::empty(ys, x.dtype(), Device::cuda);
  cuda::linear_forward(x.dtype(), x.raw(), w.raw(), raw_or_null(b), y.raw(), M, K, N, nullptr);
  if (Tape* tape = Tape::recording({&x, &w, &b})) {
    SavedTensor sx = tape->save(x), sw = tape->save(w);
    tape->record(OpId::linear, {&x, &w, &b}, {&y}, [sx, sw, M, K, N](BackwardCtx& ctx) {
      const Tensor dy = ctx.grad_out();
      if (ctx.needs_grad(0)) {
        Tensor dx = ctx.grad_in(0);
        const Tensor w = sw.get();
        cuda::linear_backward_input(dy.dtype(), dy.raw(), w.raw(), dx.raw(), M, K, N, nullptr);
      }
      if (ctx.needs_grad(1) || ctx.needs_grad(2)) {
        Tensor dw = ctx.grad_in(1), db = ctx.grad_in(2);
        ctx.weight_grad([sx, dy, dw, db, M, K, N]() mutable {
          const Tensor x = sx.get();
          const DType gdt = dw.defined() ? dw.dtype() : db.dtype();
          PT_CHECK(!dw.defined() || !db.defined() || dw.dtype() == db.dtype(),
                   "linear: weight and bias gradients in different dtypes ({} and {})", dtype_name(dw.dtype()),
                   dtype_name(db.dtype()));
          if (dw.defined()) {
            cuda::linear_backward_weight(dy.dtype(), dy.raw(), x.raw(), gdt, dw.raw(), raw_or_null(db), M, K, N,
                                         nullptr);
          } else {
            PT_CHECK(false, "linear: a bias gradient without the weight gradient is not supported on the device");
          }
        });
      }
    });
  }
  return y;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor y = Tensor::empty(a.shape(), a.dtype(), Device::cuda);
  cuda::mul_forward(a.raw(), b.raw(), y.raw(), a.numel(), a.dtype(), nullptr);
  if (Tape* tape = Tape::recording({&a, &b})) {
    SavedTensor sa = tape->save(a), sb = tape->save(b);
    tape->record(OpId::mul, {&a, &b}, {&y}, [sa, sb](BackwardCtx& ctx) {
      const Tensor dy = ctx.grad_out();
      Tensor da = ctx.grad_in(0), db = ctx.grad_in(1);
      const Tensor a = sa.get(), b = sb.get();
      same_dtype_grads("mul", dy, {&da, &db});
      cuda::mul_backward(dy.raw(), a.raw(), b.raw(), raw_or_null(da), raw_or_null(db), dy.numel(), dy.dtype(), nullptr);
    });
  }
  return y;
}

Tensor scale(const Tensor& x, double s) {
  Tensor y = Tensor::empty(x.shape(), x.dtype(), Device::cuda);
  cuda::scale_forward(x.raw(), static_cast<float>(s), y.raw(), x.numel(), x.dtype(), nullptr);
  if (Tape* tape = Tape::recording({&x})) {
    tape->record(OpId::scale, {&x}, {&y}, [s](BackwardCtx& ctx) {
      const Tensor dy = ctx.grad_out();
      Tensor dx = ctx.grad_in(0);
      same_dtype_grads("scale", dy, {&dx});
      cuda::scale_backward(dy.raw(), static_cast<float>(s), dx.raw(), dy.numel(), dy.dtype(), nullptr);
    });
  }
  return y;
}

namespace {
using UnaryFwd = void (*)(const void*, void*, int64_t, DType, CUstream_st*);
using UnaryBwd = void (*)(const void*, const void*, void*, int64_t, DType, CUstream_st*);
Tensor unary(const Tensor& x, OpId op, UnaryFwd fwd, UnaryBwd bwd) {
  Tensor y = Tensor::empty(x.shape(), x.dtype(), Device::cuda);
  fwd(x.raw(), y.raw(), x.numel(), x.dtype(), nullptr);
  if (Tape* tape = Tape::recording({&x})) {
    SavedTensor sx = tape->save(x);
    tape->record(op, {&x}, {&y}, [sx, bwd, op](BackwardCtx& ctx) {
      const Tensor dy = ctx.grad_out();
      Tensor dx = ctx.grad_in(0);
      same_dtype_grads(op_name(op).data(), dy, {&dx});
      bwd(dy.raw(), sx.get().raw(), dx.raw(), dy.numel(), dy.dtype(), nullptr);
    });
  }
  return y;
}
}  // namespace

Tensor silu(const Tensor& x) { return unary(x, OpId::silu, cuda::silu_forward, cuda::silu_backward); }
Tensor gelu(const Tensor& x) { return unary(x, OpId::gelu, cuda::gelu_tanh_forward, cuda::gelu_tanh_backward); }

Tensor swiglu(const Tensor& gate, const Tensor& up) {
  Tensor y = Tensor::empty(gate.shape(), gate.dtype(), Device::cuda);
  cuda::swiglu_forward(gate.raw(), up.raw(), y.raw(), gate.numel(), gate.dtype(), nullptr);
  if (Tape* tape = Tape::recording({&gate, &up})) {
    SavedTensor sg = tape->save(gate), su = tape->save(up);
    tape->record(OpId::swiglu, {&gate, &up}, {&y}, [sg, su](BackwardCtx& ctx) {
      const Tensor dy = ctx.grad_out();
      Tensor dg = ctx.grad_in(0), du = ctx.grad_in(1);
      same_dtype_grads("swiglu", dy, {&dg, &du});
      cuda::swiglu_backward(dy.raw(), sg.get().raw(), su.get().raw(), raw_or_null(dg), raw_or_null(du), dy.numel(),
                            dy.dtype(), nullptr);
    });
  }
  return y;
}

Tensor rope(const Tensor& x, const Tensor& cos, const Tensor& sin) {
  const int64_t B = x.dim(0), Tn = x.dim(1), H = x.dim(2), D = x.dim(3);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), Device::cuda);
  cuda::rope_forward(x.raw(), static_cast<const float*>(cos.raw()), static_cast<const float*>(sin.raw()), y.raw(), B, Tn,
                     H, D, x.dtype(), nullptr);
  if (Tape* tape = Tape::recording({&x})) {
    tape->record(OpId::rope, {&x}, {&y}, [cos, sin, B, Tn, H, D](BackwardCtx& ctx) {
      const Tensor dy = ctx.grad_out();
      Tensor dx = ctx.grad_in(0);
      same_dtype_grads("rope", dy, {&dx});
      cuda::rope_backward(dy.raw(), static_cast<const float*>(cos.raw()), static_cast<const float*>(sin.raw()),
                          dx.raw(), B, Tn, H, D, dy.dtype(), nullptr);
    });
  }
  return y;
}

Tensor layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  const int64_t C = x.dim(-1), rows = x.numel() / C;
  Tensor y = Tensor::empty(x.shape(), x.dtype(), Device::cuda);
  Tensor mean = Tensor::empty({rows}, DType::f32, Device::cuda), rstd = Tensor::empty({rows}, DType::f32, Device::cuda);
  cuda::layer_norm_forward(x.raw(), w.raw(), b.raw(), y.raw(), static_cast<float*>(mean.raw()),
                           static_cast<float*>(rstd.raw()), rows, C, eps, x.dtype(), nullptr);
  if (Tape* tape = Tape::recording({&x, &w, &b})) {
    SavedTensor sx = tape->save(x), sw = tape->save(w), sm = tape->save(mean), sr = tape->save(rstd);
    tape->record(OpId::layer_norm, {&x, &w, &b}, {&y}, [sx, sw, sm, sr, rows, C](BackwardCtx& ctx) {
      const Tensor dy = ctx.grad_out();
      Tensor dx = ctx.grad_in(0), dw = ctx.grad_in(1), db = ctx.grad_in(2);
      same_dtype_grads("layer_norm", dy, {&dx});  // dw, db have their own dtype (train.grad_dtype)
      auto run = [sx, sw, sm, sr, dy, rows, C](Tensor dx, Tensor dw, Tensor db) {
        const Tensor x = sx.get(), w = sw.get(), m = sm.get(), r = sr.get();
        const DType gdt = dw.defined() ? dw.dtype() : db.defined() ? db.dtype() : dy.dtype();
        PT_CHECK(!dw.defined() || !db.defined() || dw.dtype() == db.dtype(),
                 "layer_norm: weight and bias gradients in different dtypes");
        Tensor s = dw.defined() || db.defined() ? scratch(cuda::layer_norm_backward_scratch_bytes(rows, C)) : Tensor();
        cuda::layer_norm_backward(dy.raw(), x.raw(), w.raw(), static_cast<const float*>(m.raw()),
                                  static_cast<const float*>(r.raw()), raw_or_null(dx), raw_or_null(dw), raw_or_null(db),
                                  rows, C, dy.dtype(), gdt, raw_or_null(s), nullptr);
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

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v) {
  const int64_t B = q.dim(0), Tn = q.dim(1), Hq = q.dim(2), D = q.dim(3), Hkv = k.dim(2);
  const DType dt = q.dtype();
  Tensor out = Tensor::empty(q.shape(), dt, Device::cuda);
  Tensor probs = Tensor::empty({B, Hq, Tn, Tn}, dt, Device::cuda);
  {
    Tensor s = scratch(cuda::attention_forward_scratch_bytes(dt, B, Tn, Hq, Hkv));
    cuda::attention_forward(q.raw(), k.raw(), v.raw(), out.raw(), probs.raw(), B, Tn, Hq, Hkv, D, dt, s.raw(), nullptr);
  }
  if (Tape* tape = Tape::recording({&q, &k, &v})) {
    SavedTensor sq = tape->save(q), sk = tape->save(k), sv = tape->save(v), sp = tape->save(probs);
    tape->record(OpId::attention, {&q, &k, &v}, {&out}, [sq, sk, sv, sp, B, Tn, Hq, Hkv, D](BackwardCtx& ctx) {
      const Tensor dout = ctx.grad_out();
      Tensor dq = ctx.grad_in(0), dk = ctx.grad_in(1), dv = ctx.grad_in(2);
      same_dtype_grads("attention", dout, {&dq, &dk, &dv});
      Tensor s = scratch(cuda::attention_backward_scratch_bytes(dout.dtype(), B, Tn, Hq, Hkv));
      cuda::attention_backward(dout.raw(), sq.get().raw(), sk.get().raw(), sv.get().raw(), sp.get().raw(),
                               raw_or_null(dq), raw_or_null(dk), raw_or_null(dv), B, Tn, Hq, Hkv, D, dout.dtype(),
                               s.raw(), nullptr);
    });
  }
  return out;
}

Tensor embedding(const Tensor& ids, const Tensor& table) {
  const int64_t n = ids.numel(), C = table.dim(1);
  Shape ys = ids.shape();
  ys.push_back(C);
  Tensor y = Tensor::empty(ys, table.dtype(), Device::cuda);
  cuda::embedding_forward(static_cast<const int32_t*>(ids.raw()), table.raw(), y.raw(), n, C, table.dtype(), nullptr);
  if (Tape* tape = Tape::recording({&table})) {
    SavedTensor sids = tape->save(ids);
    tape->record(OpId::embedding, {&ids, &table}, {&y}, [sids, n, C](BackwardCtx& ctx) {
      const Tensor dy = ctx.grad_out();
      Tensor dt = ctx.grad_in(1);
      ctx.weight_grad([sids, dy, dt, n, C]() mutable {
        const Tensor ids = sids.get();
        Tensor s = scratch(cuda::embedding_backward_scratch_bytes(n));
        cuda::embedding_backward(static_cast<const int32_t*>(ids.raw()), dy.raw(), dt.raw(), n, C, dy.dtype(),
                                 dt.dtype(), s.raw(), nullptr);
      });
    });
  }
  return y;
}

Tensor rms_norm(const Tensor& x, const Tensor& w, double eps) {
  const int64_t C = x.dim(-1), rows = x.numel() / C;
  Tensor y = Tensor::empty(x.shape(), x.dtype(), Device::cuda);
  Tensor rstd = Tensor::empty({rows}, DType::f32, Device::cuda);
  cuda::rms_norm_forward(x.raw(), w.raw(), y.raw(), static_cast<float*>(rstd.raw()), rows, C, eps, x.dtype(), nullptr);
  if (Tape* tape = Tape::recording({&x, &w})) {
    SavedTensor sx = tape->save(x), sw = tape->save(w), sr = tape->save(rstd);
    tape->record(OpId::rms_norm, {&x, &w}, {&y}, [sx, sw, sr, rows, C](BackwardCtx& ctx) {
      const Tensor dy = ctx.grad_out();
      Tensor dx = ctx.grad_in(0), dw = ctx.grad_in(1);
      same_dtype_grads("rms_norm", dy, {&dx});  // dw has its own dtype (train.grad_dtype)
      auto run = [sx, sw, sr, dy, rows, C](Tensor dx, Tensor dw) {
        const Tensor x = sx.get(), w = sw.get(), r = sr.get();
        Tensor s = dw.defined() ? scratch(cuda::rms_norm_backward_scratch_bytes(rows, C)) : Tensor();
        cuda::rms_norm_backward(dy.raw(), x.raw(), w.raw(), static_cast<const float*>(r.raw()), raw_or_null(dx),
                                raw_or_null(dw), rows, C, dy.dtype(), dw.defined() ? dw.dtype() : dy.dtype(),
                                raw_or_null(s), nullptr);
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

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t V, double weight) {
  const int64_t N = logits.dim(0), Vp = logits.dim(1);
  Tensor losses = Tensor::empty({N}, DType::f32, Device::cuda), lse = Tensor::empty({N}, DType::f32, Device::cuda);
  cuda::cross_entropy_forward(logits.raw(), static_cast<const int32_t*>(targets.raw()), static_cast<float*>(losses.raw()),
                              static_cast<float*>(lse.raw()), N, Vp, V, logits.dtype(), nullptr);
  // The loss on the host: Σ losses in double, in index order (the CPU op's sum), times weight.
  const std::vector<double> l = losses.to_double_vector();
  double s = 0;
  for (double v : l) s += v;
  Tensor loss = Tensor::empty({1}, DType::f32);
  loss.data<float>()[0] = static_cast<float>(s * weight);
  if (Tape* tape = Tape::recording({&logits})) {
    SavedTensor sl = tape->save(logits), st = tape->save(targets), slse = tape->save(lse);
    tape->record(OpId::cross_entropy, {&logits, &targets}, {&loss}, [sl, st, slse, N, Vp, V, weight](BackwardCtx& ctx) {
      const Tensor dloss = ctx.grad_out();  // host [1] (the loss lives on the host)
      Tensor dlogits = ctx.grad_in(0);
      const Tensor logits = sl.get(), targets = st.get(), lse = slse.get();
      const float g = static_cast<float>(dloss.to_double_vector()[0] * weight);
      Tensor drow = Tensor::full({N}, g).to_device(Device::cuda);
      cuda::cross_entropy_backward(logits.raw(), static_cast<const int32_t*>(targets.raw()),
                                   static_cast<const float*>(lse.raw()), static_cast<const float*>(drow.raw()),
                                   dlogits.raw(), N, Vp, V, logits.dtype(), nullptr);
    });
  }
  return loss;
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes) {
  const int64_t S = x.dim(-1), rows = x.numel() / S;
  std::vector<Tensor> outs;
  std::vector<int64_t> offs;
  int64_t off = 0;
  for (int64_t s : sizes) {
    Shape sh = x.shape();
    sh.back() = s;
    outs.push_back(Tensor::empty(sh, x.dtype(), Device::cuda));
    cuda::split_columns(x.raw(), outs.back().raw(), rows, s, S, off, x.dtype(), nullptr);
    offs.push_back(off);
    off += s;
  }
  if (Tape* tape = Tape::recording({&x})) {
    std::vector<Tensor*> outp;
    for (auto& o : outs) outp.push_back(&o);
    tape->record(OpId::split, {&x}, outp, [sizes, offs, rows, S](BackwardCtx& ctx) {
      Tensor dx = ctx.grad_in(0);
      for (size_t p = 0; p < sizes.size(); ++p) {
        const Tensor& g = ctx.grad_out(p);
        if (!g.defined()) continue;  // an unused piece contributes nothing
        PT_CHECK(g.device() == Device::cuda, "split on the device: the gradient of piece {} is on {}", p,
                 device_name(g.device()));
        PT_CHECK(dx.dtype() == g.dtype() || dx.dtype() == DType::f32,
                 "split on the device: a gradient in {} for piece gradients in {} (the kernel writes their dtype or "
                 "f32)", dtype_name(dx.dtype()), dtype_name(g.dtype()));
        cuda::split_columns_backward(g.raw(), dx.raw(), rows, sizes[p], S, offs[p], g.dtype(), dx.dtype(), nullptr);
      }
    });
  }
  return outs;
}

}  // namespace ptrain::ops::device
