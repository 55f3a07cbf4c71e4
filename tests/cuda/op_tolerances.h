// tests/cuda/op_tolerances.h — the one table of tolerances of the CUDA ops against the CPU ops.
//
// A device result d passes against the CPU result c (core/cpu/kernels.h in float, rounded to
// the dtype where the op stores in it) when, element by element,
//     |d - c| <= atol + rtol * |c|
// and, against the fp64 reference r (the double instantiation of the same CPU kernel on the
// same inputs, unrounded), when max|d - r| <= max(2 * max|c - r|, max_i(atol + rtol * |r_i|)).
//
// How the numbers are chosen:
//  * 0 / 0 where the device performs exactly the CPU's floating-point operations in the same
//    order with one rounding on store (copies, one addition per element, the embedding
//    backward's token-order sums): any difference is a bug.
//  * bf16 / f16 outputs rounded once: fp32 arithmetic in a different order (reductions in a
//    tree instead of 16 CPU lanes, FMA contraction on the GPU) moves the fp32 value by a few
//    fp32 ulps, which can flip a rounding to the 8-bit (bf16) or 11-bit (f16) grid by one
//    ulp: 2^-7 = 7.8e-3 (bf16) and 2^-10 = 9.8e-4 (f16) of the value. rtol is that one ulp
//    plus a margin for the fp32 error; atol covers results that cancel to near zero.
//  * fp32 outputs: the fp32 error bound of the computation (unit roundoff u = 6e-8 times the
//    number of dependent roundings, for the harness's shapes), justified per row below. The
//    GPU's FMA contraction is inside these bounds (it removes a rounding, <= u each).
#pragma once

#include <string_view>

#include "core/dtype.h"

namespace ptrain::testing {

struct OpTolerance {
  std::string_view op;  ///< "<op>.<output>" as the harness names it
  DType dt;             ///< the op's dtype (its activations / weights / gradients)
  double atol, rtol;
};

// clang-format off
// "observed": the largest |device - cpu| over the harness's cases in the emulated build
// (PTRAIN_OPS_STATS=1 prints it per case), for scale; the bounds come from the error analysis.
inline constexpr OpTolerance kOpTolerances[] = {
    // embedding forward: a row copy, no arithmetic: bit-exact in every dtype.
    {"embedding_forward.out", DType::f32, 0, 0},
    {"embedding_forward.out", DType::bf16, 0, 0},
    {"embedding_forward.out", DType::f16, 0, 0},
    // embedding backward: acc = dtable[id]; acc += dout[i] for the id's tokens in token order
    // (fp32), one rounding: the CPU's exact sequence of operations (no products, so no FMA
    // contraction either): bit-exact.
    {"embedding_backward.dtable", DType::f32, 0, 0},
    {"embedding_backward.dtable", DType::bf16, 0, 0},
    {"embedding_backward.dtable", DType::f16, 0, 0},
    // rms_norm forward, y = w (x rstd): rstd differs from the CPU's only through the order of
    // the C-term Σx² (CPU: 16 lanes of C/16 sequential adds; device: a tree), a few fp32 ulps
    // (observed 1.6e-7 relative); y adds two products (observed 4.8e-7 absolute, 3.4e-7
    // relative). fp32: 2e-6 relative (~16 ulps), 1e-6 absolute for y near 0 (|y| <~ 5).
    {"rms_norm_forward.y", DType::f32, 1e-6, 2e-6},
    {"rms_norm_forward.rstd", DType::f32, 0, 2e-6},
    // bf16/f16 y: the fp32 difference above can flip the one rounding by one ulp: 2^-7 =
    // 7.8e-3 (bf16), 2^-10 = 9.8e-4 (f16) of |y|, never two. rstd is fp32 in every dtype.
    {"rms_norm_forward.y", DType::bf16, 1e-6, 8e-3},
    {"rms_norm_forward.rstd", DType::bf16, 0, 2e-6},
    {"rms_norm_forward.y", DType::f16, 1e-6, 1e-3},
    {"rms_norm_forward.rstd", DType::f16, 0, 2e-6},
    // rms_norm backward dx += rstd w dy - (Σ dy w x) rstd³/C x: two O(1) terms whose
    // difference may cancel to ~0, so the bound is absolute: a few ulps of the terms plus the
    // reordered C-term dot (observed 4.8e-7): 2e-6, with 2e-6 relative as the forward's.
    // dw += Σ_rows dy x rstd: the CPU's 64-row chunks in the CPU's order, but the GPU
    // contracts acc += (dy x) rstd into an FMA and the host compiler may too: each of the R
    // accumulations moves by <= 1/2 ulp of the partial sum (|partial| ~ sqrt(64), |dw| ~
    // sqrt(R), R <= 200 here), a random walk of ~sqrt(R) u |dw| ~ 1e-5 (observed 5.7e-6): 3e-5.
    {"rms_norm_backward.dx", DType::f32, 2e-6, 2e-6},
    {"rms_norm_backward.dw", DType::f32, 3e-5, 2e-6},
    // bf16/f16: one rounding flip on top of the fp32 differences above.
    {"rms_norm_backward.dx", DType::bf16, 2e-6, 8e-3},
    {"rms_norm_backward.dw", DType::bf16, 3e-5, 8e-3},
    {"rms_norm_backward.dx", DType::f16, 2e-6, 1e-3},
    {"rms_norm_backward.dw", DType::f16, 3e-5, 1e-3},
    // add / accumulate: one fp32 addition of two values of the grid, one rounding: the CPU's
    // add_forward / axpy(1, ...) + round-on-store exactly: bit-exact.
    {"add_forward.y", DType::f32, 0, 0},
    {"add_forward.y", DType::bf16, 0, 0},
    {"add_forward.y", DType::f16, 0, 0},
    {"accumulate.dst", DType::f32, 0, 0},
    {"accumulate.dst", DType::bf16, 0, 0},
    {"accumulate.dst", DType::f16, 0, 0},
    // split: the forward is a copy of a column block; the backward adds one piece gradient
    // into each element of its column block (fp32, one rounding): the CPU op's dx += g and
    // round-on-store exactly: bit-exact.
    {"split_forward.piece", DType::f32, 0, 0},
    {"split_forward.piece", DType::bf16, 0, 0},
    {"split_forward.piece", DType::f16, 0, 0},
    {"split_backward.dx", DType::f32, 0, 0},
    {"split_backward.dx", DType::bf16, 0, 0},
    {"split_backward.dx", DType::f16, 0, 0},
    // cross_entropy forward, lse = m + log Σ exp(x - m): the CPU sums in double lanes and
    // takes log in double; the device sums V <= ~5000 fp32 exps (expf <= 2 ulp on a GPU) in a
    // tree of ~13 levels and takes logf: |Δlse| <= ~15 u relative to the sum, i.e. ~1e-6
    // absolute, plus 1/2 ulp of lse (~5e-7 at 8..16); observed 9.5e-7 (lse), 1.9e-6 (loss =
    // lse - x[t], whose own rounding adds an ulp). The loss can be small, so the bound is
    // absolute: 4e-6, plus 1e-6 relative. Inputs are fp32 once widened and the outputs fp32,
    // so every dtype has the same bounds.
    {"cross_entropy_forward.loss", DType::f32, 4e-6, 1e-6},
    {"cross_entropy_forward.lse", DType::f32, 4e-6, 1e-6},
    {"cross_entropy_forward.loss", DType::bf16, 4e-6, 1e-6},
    {"cross_entropy_forward.lse", DType::bf16, 4e-6, 1e-6},
    {"cross_entropy_forward.loss", DType::f16, 4e-6, 1e-6},
    {"cross_entropy_forward.lse", DType::f16, 4e-6, 1e-6},
    // cross_entropy backward, dlogits += g (exp(x - lse) - [j == t]): expf (<= 2 ulp on a
    // GPU) against the CPU's polynomial exp (~1 ulp) of the same argument, one product, one
    // add: ~4 u of |g p| <= |g| ~ 2, i.e. <= 1e-6 absolute (observed 3e-8), 1e-6 relative;
    // bf16/f16: one rounding flip.
    {"cross_entropy_backward.dlogits", DType::f32, 1e-6, 1e-6},
    {"cross_entropy_backward.dlogits", DType::bf16, 1e-6, 8e-3},
    {"cross_entropy_backward.dlogits", DType::f16, 1e-6, 1e-3},
    // silu / gelu_tanh / swiglu forward, y = v / (1 + exp(-a)): the device's IEEE expf (<= 2
    // ulp) against the CPU's polynomial exp (~1 ulp) of the same argument, one division, one
    // product (swiglu): a few ulps relative; GELU's argument a = -2u carries ~3 roundings of
    // |2u| <~ 20 into exp, ~20 * 3u = 4e-6 relative where y is not negligible (observed
    // 3.2e-7 relative). fp32: 1e-5 relative (the bar), 1e-6 absolute for y near 0.
    // bf16/f16: one rounding flip, 2^-7 = 7.8e-3 / 2^-10 = 9.8e-4 of |y|.
    {"silu_forward.y", DType::f32, 1e-6, 1e-5},
    {"silu_forward.y", DType::bf16, 1e-6, 8e-3},
    {"silu_forward.y", DType::f16, 1e-6, 1e-3},
    {"gelu_tanh_forward.y", DType::f32, 1e-6, 1e-5},
    {"gelu_tanh_forward.y", DType::bf16, 1e-6, 8e-3},
    {"gelu_tanh_forward.y", DType::f16, 1e-6, 1e-3},
    {"swiglu_forward.y", DType::f32, 1e-6, 1e-5},
    {"swiglu_forward.y", DType::bf16, 1e-6, 8e-3},
    {"swiglu_forward.y", DType::f16, 1e-6, 1e-3},
    // silu / gelu_tanh / swiglu backward, dx += dy f'(x): the factor carries the forward's few
    // ulps (sigmoid through expf) and ~4 more roundings (FMA-contracted on the GPU); the
    // accumulation into a random dx can cancel to ~0, so the bound is absolute: ~4 ulps of
    // |dy f'| <~ 8 (4.8e-7 per ulp) = 2e-6 (observed 9.5e-7), with 1e-5 relative.
    // bf16/f16: one rounding flip.
    {"silu_backward.dx", DType::f32, 2e-6, 1e-5},
    {"silu_backward.dx", DType::bf16, 2e-6, 8e-3},
    {"silu_backward.dx", DType::f16, 2e-6, 1e-3},
    {"gelu_tanh_backward.dx", DType::f32, 2e-6, 1e-5},
    {"gelu_tanh_backward.dx", DType::bf16, 2e-6, 8e-3},
    {"gelu_tanh_backward.dx", DType::f16, 2e-6, 1e-3},
    {"swiglu_backward.dgate", DType::f32, 2e-6, 1e-5},
    {"swiglu_backward.dgate", DType::bf16, 2e-6, 8e-3},
    {"swiglu_backward.dgate", DType::f16, 2e-6, 1e-3},
    {"swiglu_backward.dup", DType::f32, 2e-6, 1e-5},
    {"swiglu_backward.dup", DType::bf16, 2e-6, 8e-3},
    {"swiglu_backward.dup", DType::f16, 2e-6, 1e-3},
    // mul / scale forward: one fp32 product, one rounding: the CPU's operation exactly
    // (a bf16 or f16 product is even exact in fp32): bit-exact.
    {"mul_forward.y", DType::f32, 0, 0},
    {"mul_forward.y", DType::bf16, 0, 0},
    {"mul_forward.y", DType::f16, 0, 0},
    {"scale_forward.y", DType::f32, 0, 0},
    {"scale_forward.y", DType::bf16, 0, 0},
    {"scale_forward.y", DType::f16, 0, 0},
    // mul backward, da += dy b: the GPU contracts it into an FMA (the CPU may not), which
    // skips the product's rounding: <= u |dy b| (|dy b| <~ 20: 1.2e-6) plus one ulp of the
    // result: 2e-6 absolute (the sum may cancel), 1e-6 relative. bf16/f16: a product of two
    // 8-bit (11-bit) significands is exact in fp32, so FMA or not the fp32 sum is the same
    // and so is its one rounding: bit-exact.
    {"mul_backward.da", DType::f32, 2e-6, 1e-6},
    {"mul_backward.db", DType::f32, 2e-6, 1e-6},
    {"mul_backward.da", DType::bf16, 0, 0},
    {"mul_backward.db", DType::bf16, 0, 0},
    {"mul_backward.da", DType::f16, 0, 0},
    {"mul_backward.db", DType::f16, 0, 0},
    // scale backward, dx += s dy (s = -1.37, not on the bf16/f16 grid, so s dy is inexact):
    // FMA contraction as for mul: <= u |s dy| (<~ 7: 4e-7) plus one ulp of the result: 1e-6
    // absolute, 1e-6 relative; bf16/f16: that can flip the one rounding.
    {"scale_backward.dx", DType::f32, 1e-6, 1e-6},
    {"scale_backward.dx", DType::bf16, 1e-6, 8e-3},
    {"scale_backward.dx", DType::f16, 1e-6, 1e-3},
    // rope forward / backward, x1 c - x2 s (and the three like it): two products and an add,
    // which the GPU contracts into an FMA: <= u |x2 s| (|x| <~ 5: 3e-7) plus one ulp of the
    // result; the difference can cancel, so 1e-6 absolute, 1e-6 relative (observed 0 in the
    // emulated build, which does not contract). bf16/f16: one rounding flip. The tables are
    // fp32 inputs (core/cpu's rope_tables<float>) in every dtype.
    {"rope_forward.y", DType::f32, 1e-6, 1e-6},
    {"rope_forward.y", DType::bf16, 1e-6, 8e-3},
    {"rope_forward.y", DType::f16, 1e-6, 1e-3},
    {"rope_backward.dx", DType::f32, 1e-6, 1e-6},
    {"rope_backward.dx", DType::bf16, 1e-6, 8e-3},
    {"rope_backward.dx", DType::f16, 1e-6, 1e-3},
    // layer_norm forward: mean = Σx / C and var = Σ(x - mean)² / C differ from the CPU's only
    // through the order of the C-term sums (tree vs 16 lanes), a few fp32 ulps of Σ|x| / C
    // (|x| ~ 2): the mean can be ~0, so 1e-6 absolute (observed 1.2e-7), 2e-6 relative; rstd
    // 2e-6 relative (observed 1.5e-7). y = (x - mean) rstd w + b adds ~3 roundings and may
    // cancel against b: 2e-6 absolute (observed 7.2e-7), 2e-6 relative, as rms_norm's y.
    // mean and rstd are fp32 in every dtype; bf16/f16 y: one rounding flip.
    {"layer_norm_forward.y", DType::f32, 2e-6, 2e-6},
    {"layer_norm_forward.y", DType::bf16, 2e-6, 8e-3},
    {"layer_norm_forward.y", DType::f16, 2e-6, 1e-3},
    {"layer_norm_forward.mean", DType::f32, 1e-6, 2e-6},
    {"layer_norm_forward.mean", DType::bf16, 1e-6, 2e-6},
    {"layer_norm_forward.mean", DType::f16, 1e-6, 2e-6},
    {"layer_norm_forward.rstd", DType::f32, 0, 2e-6},
    {"layer_norm_forward.rstd", DType::bf16, 0, 2e-6},
    {"layer_norm_forward.rstd", DType::f16, 0, 2e-6},
    // layer_norm backward dx += rstd (g - mean(g) - xh mean(g xh)): two reordered C-term dots
    // and O(1) terms that may cancel: 2e-6 absolute (observed 4.8e-7), 2e-6 relative, as
    // rms_norm's dx. dw += Σ_rows dy xh: the CPU's 64-row chunks in the CPU's order, but each
    // accumulation may be FMA-contracted on one side only: a random walk of ~sqrt(R) u |dw|
    // (R <= 200 rows here) as rms_norm's dw: 3e-5 absolute (observed 4.8e-6), 2e-6 relative.
    // db += Σ_rows dy: additions only, in the CPU's exact order (rows within a chunk, then
    // chunks, then the add into db), one rounding: bit-exact in every dtype.
    // bf16/f16 dx, dw: one rounding flip.
    {"layer_norm_backward.dx", DType::f32, 2e-6, 2e-6},
    {"layer_norm_backward.dx", DType::bf16, 2e-6, 8e-3},
    {"layer_norm_backward.dx", DType::f16, 2e-6, 1e-3},
    {"layer_norm_backward.dw", DType::f32, 3e-5, 2e-6},
    {"layer_norm_backward.dw", DType::bf16, 3e-5, 8e-3},
    {"layer_norm_backward.dw", DType::f16, 3e-5, 1e-3},
    {"layer_norm_backward.db", DType::f32, 0, 0},
    {"layer_norm_backward.db", DType::bf16, 0, 0},
    {"layer_norm_backward.db", DType::f16, 0, 0},
    // ---- activations, RoPE, LayerNorm, mul/scale (rows of core/cuda/{activation,rope,layer_norm,elementwise}.cu above this line) ----
    // adamw_step (core/cuda/adamw.cu), keyed by the gradient dtype (master, moments) and by
    // the model-copy dtype (model): the kernel performs optim/adamw.cpp's float operations in
    // its order, each rounded separately (__fmul_rn, __fadd_rn, __fdiv_rn, __fsqrt_rn), and
    // fuses exactly its two fmadds (lerp_, addcmul_); g * scale is the one fp32 product the
    // CPU's scale_grads computes. On an FMA host (where adamw.cpp's fmadd is std::fma) every
    // step is bit-identical, and the model copy is the CPU master rounded once (RNE): 0 / 0.
    {"adamw_step.master", DType::f32, 0, 0},
    {"adamw_step.master", DType::bf16, 0, 0},
    {"adamw_step.exp_avg", DType::f32, 0, 0},
    {"adamw_step.exp_avg", DType::bf16, 0, 0},
    {"adamw_step.exp_avg_sq", DType::f32, 0, 0},
    {"adamw_step.exp_avg_sq", DType::bf16, 0, 0},
    {"adamw_step.model", DType::f32, 0, 0},
    {"adamw_step.model", DType::bf16, 0, 0},
    {"adamw_step.model", DType::f16, 0, 0},
    // grad_sum_squares (core/cuda/grad_norm.cu) against optim::grad_sum_squares, both in
    // double: every square of a float is exact in double, so the only roundings are additions
    // of non-negative terms, each <= u = 2^-53 = 1.1e-16 of the partial sum. The error of any
    // order is then <= (longest chain of additions) u relative: CPU <= 256 lane adds + 4 tree
    // + 15 tail + nchunks (~70 here) ~ 350; device 16 + 8 tree + run + 8 tree ~ 35. Both
    // together < 4e-14 relative; 1e-12 keeps a margin for up to ~9000 chunks (3.7e7
    // elements) and still rejects any fp32-precision error (>= 6e-8). Same in bf16 (the
    // values on bf16's grid are exact floats).
    {"grad_sum_squares.out", DType::f32, 0, 1e-12},
    {"grad_sum_squares.out", DType::bf16, 0, 1e-12},
    // attention (core/cuda/attention.cpp + causal_softmax.cu) against cpu::attention_* in
    // float, inputs on the grid, outputs rounded to dt; the harness's shapes: T <= 65, D <= 128,
    // q in (-3, 3), k, v, dout, initial dq/dk/dv in (-1, 1). "needed": the largest
    // |d - c| - rtol |c| observed in the emulated build at the row's rtol.
    // fp32: the same products in a different blocking (device: full square GEMMs, CPU: 64-row
    // causal blocks over a transposed K), expf (<= 2 ulp on a GPU) vs the CPU's polynomial exp
    // (~1 ulp), scale applied after the GEMM (CPU: as its alpha): a few ulps relative (observed
    // <= 6e-7 absolute on values <= ~3). rtol 1e-5 (the bar). probs: relative (exp of
    // an argument that differs by a few ulps); 1e-7 absolute only for underflowing tails
    // (device denormals vs the CPU's flush below ln FLT_MIN). out = Σ p v (<= 65 terms) and
    // dq/dk/dv accumulated into random values can cancel to ~0: absolute floors of ~(terms) u
    // |sum of |terms||, random-walk sized: 1e-6 (out, dq; needed 1.4e-7, 2.4e-8) and 2e-6
    // (dk, dv: up to G·T = 260 terms; needed 3.2e-7, 1.1e-7).
    {"attention_forward.out", DType::f32, 1e-6, 1e-5},
    {"attention_forward.probs", DType::f32, 1e-7, 1e-5},
    {"attention_backward.dq", DType::f32, 1e-6, 1e-5},
    {"attention_backward.dk", DType::f32, 2e-6, 1e-5},
    {"attention_backward.dv", DType::f32, 2e-6, 1e-5},
    // bf16: rtol 8e-3 is the one-ulp rounding flip of the stored output (2^-7 = 7.8e-3).
    // Intermediates the device stores in bf16 because the next GEMM reads them (P, dS; dk and
    // dv once per group member) are rounded at the same points by the CPU reference (its
    // `store` argument), so they add absolute terms only where fp32 order flips one of those
    // roundings: out = P·v with one P element a step off (<= 2^-8 p |v|; atol 4e-3), dq = dS·k
    // with one dS element off (atol 2e-3), dk / dv with a partial sum (<= ~2.5) a step off at
    // a member's rounding (atol 1.2e-2). These atols date from before the CPU rounded there
    // (needed then 1.4e-3 out, 5.6e-4 dq, 4.7e-3 dk, 7.5e-3 dv); needed now in the emulated
    // build: 0 for every output (bit-identical), so they are generous; kept until measured
    // on a GPU. probs: computed in fp32 as on the CPU and rounded once: the flip only.
    // tests/cuda/test_attention_cuda.cpp (CudaAttentionLowPrecision) bounds the fraction of
    // elements that differ at all (3%) and by more than one step (0.5%).
    {"attention_forward.out", DType::bf16, 4e-3, 8e-3},
    {"attention_forward.probs", DType::bf16, 1e-7, 8e-3},
    {"attention_backward.dq", DType::bf16, 2e-3, 8e-3},
    {"attention_backward.dk", DType::bf16, 1.2e-2, 8e-3},
    {"attention_backward.dv", DType::bf16, 1.2e-2, 8e-3},
    // f16: the same analysis with 2^-10 (flip, rtol 1e-3) and 2^-12 (half ulp) instead:
    // out atol 5e-4, dq 2e-4, dk/dv 2e-3 (needed before the CPU rounded P, dS, dk/dv at the
    // device's points: 2e-4, 4.7e-5, 6.6e-4, 8.7e-4; now <= 1.6e-5, emulated build).
    {"attention_forward.out", DType::f16, 5e-4, 1e-3},
    {"attention_forward.probs", DType::f16, 1e-7, 1e-3},
    {"attention_backward.dq", DType::f16, 2e-4, 1e-3},
    {"attention_backward.dk", DType::f16, 2e-3, 1e-3},
    {"attention_backward.dv", DType::f16, 2e-3, 1e-3},
    // ---- attention (rows of core/cuda/{attention.cpp,causal_softmax.cu} above this line) ----
    // ---- optimizer and gradient norm (rows of core/cuda/{adamw,grad_norm}.cu above this line) ----
};
// clang-format on

/// The table's row for (op, dt), or nullptr when there is none (the harness fails then).
inline const OpTolerance* find_op_tolerance(std::string_view op, DType dt) {
  for (const OpTolerance& t : kOpTolerances)
    if (t.op == op && t.dt == dt) return &t;
  return nullptr;
}

}  // namespace ptrain::testing
