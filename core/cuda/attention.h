// core/cuda/attention.h — causal softmax attention with grouped-query heads on the device,
// forward and backward: host launchers callable from plain C++ (no CUDA header needed).
//
// Semantics: exactly core/cpu/kernels.h attention_forward / attention_backward.
//   q, out, dout, dq [B, T, Hq, D]; k, v, dk, dv [B, T, Hkv, D] (Hq % Hkv == 0, g = Hq / Hkv:
//   q head h uses kv head h / g); probs [B, Hq, T, T] saved by the forward: the softmax of
//   q·kᵀ/sqrt(D) over keys t' <= t, exact zeros above the diagonal.
//
// Composition (core/cuda/attention.cpp), over the GEMM layer (core/cuda/gemm.h) and two fused
// kernels (core/cuda/causal_softmax.cu). The work is done per GQA group member r < g, in
// order; "chunk r" is the q heads {j g + r : j < Hkv} for every batch b, i.e. B·Hkv score
// matrices [T, T]:
//   forward, for each r:
//     S = q_h · k_jᵀ   one GEMM per b, strided-batched over the Hkv kv heads j (lda = Hq·D,
//                      ldb = Hkv·D), alpha = 1, into probs (f32) or the fp32 scratch (bf16/f16);
//     P = causal_softmax(S / sqrt(D)), in place or scratch -> probs (one launch);
//     out_h = P_h · v_j one GEMM per kv head j, strided-batched over b (the outputs of the Hkv
//                      heads interleave inside each row of `out`, so the GEMM layer's
//                      non-overlap check admits batches over b only).
//   backward, for each r (so that dk / dv receive the q heads of a group in head order):
//     dv_j += P_hᵀ · dout_h              per j, batched over b, beta = 1;
//     dP   = dout_h · v_jᵀ (fp32)        per b, batched over j, into the scratch;
//     dS   = P ⊙ (dP − rowsum(dP ⊙ P)) / sqrt(D), rounded once to dt (one launch);
//     dq_h += dS_h · k_j ;  dk_j += dS_hᵀ · q_h   per j, batched over b, beta = 1.
//   GEMM calls: forward g·B + Hq; backward g·B + 3·Hq (fewer when gradients are nullptr).
//   Kernel launches: g of causal_softmax_forward_kernel<T> (forward),
//                    g of causal_softmax_backward_kernel<T> (backward, when dq or dk).
//
// Invariants:
//  * All pointers are device pointers; dt is f32, bf16 or f16 (std::invalid_argument
//    otherwise). Arithmetic is fp32 (GEMMs accumulate in fp32; softmax statistics fp32);
//    each stored value is rounded once to dt (RNE). Intermediate values stored in dt because
//    the next GEMM reads them: P (saved, as on the CPU) and, in bf16/f16, dS. dk / dv are
//    rounded once per group member (one beta = 1 GEMM each).
//  * Forward overwrites out and probs; backward ACCUMULATES (+=) into dq, dk, dv; any of them
//    may be nullptr (not computed).
//  * Deterministic: no atomics; fixed-tree block reductions (core/cuda/reduce.cuh), GEMMs
//    sequenced on one stream, dk/dv summed over the group in head order by beta = 1 GEMMs.
//  * Asynchronous on `stream`; no allocation, no host synchronisation. The GEMMs use the GEMM
//    layer's default per-stream workspace.
//  * Index arithmetic in 64 bits. B == 0 or T == 0: nothing is launched. Shapes are checked
//    here (ptrain::Error naming them).
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace ptrain::cuda {

/// Bytes of device scratch attention_forward needs: 0 in f32 (the scores are computed in
/// place in `probs`); in bf16/f16 one chunk of fp32 scores, B·Hkv·T·T floats, so that the
/// scores are not rounded to dt before the softmax (probs are rounded once).
size_t attention_forward_scratch_bytes(DType dt, int64_t B, int64_t T, int64_t Hq, int64_t Hkv);

/// out, probs = causal GQA attention of q, k, v (see above). `scratch`: at least
/// attention_forward_scratch_bytes(...) bytes of device memory, 256-byte aligned (nullptr
/// allowed when that is 0). The scratch is dead when the call's work has run, so one buffer
/// can serve the forward and the backward (the backward's is never smaller).
void attention_forward(const void* q, const void* k, const void* v, void* out, void* probs, int64_t B, int64_t T,
                       int64_t Hq, int64_t Hkv, int64_t D, DType dt, void* scratch, CUstream_st* stream);

/// Bytes of device scratch attention_backward needs: one chunk of dP in fp32 (B·Hkv·T·T
/// floats; fp32 because dP − rowsum(dP ⊙ P) cancels), plus, in bf16/f16, the chunk of dS in
/// dt (the GEMMs dq += dS·k, dk += dSᵀ·q take A and B of one dtype), each region 256-byte
/// aligned. In f32 dS overwrites dP in place. A chunk is one GQA member's heads (B·Hkv of the
/// B·Hq score matrices): the scratch is 1/g of a full dP, and it is reused for every member.
/// Example: bf16, B 4, T 2048, Hkv 8: 4·8·2048²·(4 + 2) B = 768 MiB (forward: 512 MiB).
size_t attention_backward_scratch_bytes(DType dt, int64_t B, int64_t T, int64_t Hq, int64_t Hkv);

/// dq, dk, dv += gradients of causal GQA attention (dk / dv summed over the q heads of a
/// group in head order). probs: the forward's. `scratch`: attention_backward_scratch_bytes
/// bytes, 256-byte aligned (may be nullptr when dq and dk are).
void attention_backward(const void* dout, const void* q, const void* k, const void* v, const void* probs, void* dq,
                        void* dk, void* dv, int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D, DType dt,
                        void* scratch, CUstream_st* stream);

// ---------------------------------------------------------------- fused kernels
// core/cuda/causal_softmax.cu. Rows of length T are addressed by (o, i, t), o < n_outer,
// i < n_inner, t < T: row (o, i, t) of a buffer X starts at X + o·x_so + i·x_si + t·T
// (elements). One block per row (grid-strided), threads striding the columns; statistics are
// fp32 block reductions with a fixed tree. Arguments are checked by the caller.

/// p[row][t'] = softmax_{t' <= t}(scale · s[row][t']) rounded once to dt; 0 for t' > t.
/// s fp32; p in dt. In f32, s may equal p (in place, same strides).
/// Kernel: causal_softmax_forward_kernel<T>.
void causal_softmax_forward(const float* s, void* p, int64_t n_outer, int64_t n_inner, int64_t T, int64_t s_so,
                            int64_t s_si, int64_t p_so, int64_t p_si, float scale, DType dt, CUstream_st* stream);

/// ds[row][t'] = scale · p (dp − Σ_{t'' <= t} dp p) for t' <= t, 0 above; rounded once to dt.
/// p in dt (probs), dp fp32, ds in dt with dp's strides; in f32 ds may equal dp (in place).
/// Kernel: causal_softmax_backward_kernel<T>.
void causal_softmax_backward(const void* p, const float* dp, void* ds, int64_t n_outer, int64_t n_inner, int64_t T,
                             int64_t p_so, int64_t p_si, int64_t d_so, int64_t d_si, float scale, DType dt,
                             CUstream_st* stream);

}  // namespace ptrain::cuda
