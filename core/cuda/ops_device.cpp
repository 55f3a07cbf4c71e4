// core/cuda/ops_device.cpp — device versions of the ops (see ops_device.h): kernels of
// core/cuda/ops.h on the default stream, tape records mirroring core/ops.cpp.
#include "core/cuda/ops_device.h"

#include <vector>

#include "core/autograd.h"
#include "core/cuda/ops.h"

namespace ptrain::ops::device {

namespace {

Tape* recording(std::initializer_list<const Tensor*> inputs) {
  return Tape::should_record(inputs) ? Tape::current() : nullptr;
}

/// Device scratch of at least `bytes` (from the caching allocator; freed with the tensor).
Tensor scratch(size_t bytes) { return Tensor::empty({static_cast<int64_t>((bytes + 3) / 4)}, DType::i32, Device::cuda); }

void* raw_or_null(const Tensor& t) { return t.defined() ? t.raw() : nullptr; }

}  // namespace

void accumulate(Tensor& dst, const Tensor& src) {
  cuda::accumulate(dst.raw(), src.raw(), dst.numel(), dst.dtype(), nullptr);
}

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor y = Tensor::empty(a.shape(), a.dtype(), Device::cuda);
  cuda::add_forward(a.raw(), b.raw(), y.raw(), a.numel(), a.dtype(), nullptr);
  if (Tape* tape = recording({&a, &b})) {
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

Tensor embedding(const Tensor& ids, const Tensor& table) {
  const int64_t n = ids.numel(), C = table.dim(1);
  Shape ys = ids.shape();
  ys.push_back(C);
  Tensor y = Tensor::empty(ys, table.dtype(), Device::cuda);
  cuda::embedding_forward(static_cast<const int32_t*>(ids.raw()), table.raw(), y.raw(), n, C, table.dtype(), nullptr);
  if (Tape* tape = recording({&table})) {
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
  if (Tape* tape = recording({&x, &w})) {
    SavedTensor sx = tape->save(x), sw = tape->save(w), sr = tape->save(rstd);
    tape->record(OpId::rms_norm, {&x, &w}, {&y}, [sx, sw, sr, rows, C](BackwardCtx& ctx) {
      const Tensor dy = ctx.grad_out();
      Tensor dx = ctx.grad_in(0), dw = ctx.grad_in(1);
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
  if (Tape* tape = recording({&logits})) {
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

}  // namespace ptrain::ops::device
