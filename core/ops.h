// core/ops.h — the op set as free functions over Tensors, recorded on the current tape.
//
// Each function checks shapes (messages name both shapes), runs the CPU kernel of
// core/cpu/kernels.h for float (f32/bf16/f16, computed in fp32) or double (f64, for
// gradient tests), rounds its output once to the output dtype (low-precision
// emulation: the point where a GPU kernel stores), and records a backward closure
// that saves only what the formula needs. The output dtype is the dtype of the first
// (activation) input unless stated. Shapes: B batch, T time, H heads, D head dim,
// C channels, V vocab; `...` is any number of leading dims.
#pragma once
#include <vector>

#include "core/autograd.h"
#include "core/tensor.h"

namespace ptrain::ops {

/// y[..., N] = x[..., K] · w[N, K]^T (+ b[N])
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b = Tensor());
/// y = a + b (same shapes)
Tensor add(const Tensor& a, const Tensor& b);
/// y = a ⊙ b (same shapes)
Tensor mul(const Tensor& a, const Tensor& b);
/// y = s · x
Tensor scale(const Tensor& x, double s);
/// y[..., C] = table[ids[...], :]; ids i32 in [0, V)
Tensor embedding(const Tensor& ids, const Tensor& table);
/// y = x · rsqrt(mean(x², -1) + eps) · w
Tensor rms_norm(const Tensor& x, const Tensor& w, double eps);
/// y = (x − mean) · rsqrt(var + eps) · w + b   (biased variance, over the last dim)
Tensor layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps);
/// Rotate-half RoPE of x [B, T, H, D] with tables cos/sin [T, D/2] (see cpu::rope_tables).
Tensor rope(const Tensor& x, const Tensor& cos, const Tensor& sin);
/// Causal softmax attention with grouped-query heads: q [B, T, Hq, D], k/v [B, T, Hkv, D] -> [B, T, Hq, D].
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v);
/// x · sigmoid(x)
Tensor silu(const Tensor& x);
/// GELU, tanh approximation
Tensor gelu(const Tensor& x);
/// silu(gate) ⊙ up
Tensor swiglu(const Tensor& gate, const Tensor& up);
/// weight · Σ_i CE(logits[i, :V], targets[i]) as a 1-element fp32 (f64 for f64 logits) tensor.
/// logits [N, Vp] with Vp >= V (columns >= V are padding, masked out); targets i32 [N],
/// target < 0 is ignored. weight = 1 / (tokens in the global batch) gives the mean.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t V, double weight);
/// dst += src for device tensors of one dtype (autograd's gradient accumulation on the device).
void device_accumulate(Tensor& dst, const Tensor& src);
/// Same data, new shape (no copy).
Tensor view(const Tensor& x, Shape shape);
/// Splits the last dimension into pieces of the given sizes (copies).
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes);

}  // namespace ptrain::ops
