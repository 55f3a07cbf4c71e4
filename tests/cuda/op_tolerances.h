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
    // ---- activations, RoPE, LayerNorm, mul/scale (rows of core/cuda/{activation,rope,layer_norm,elementwise}.cu above this line) ----
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
