// core/cpu/kernels.h — the CPU kernels of the op set, over raw pointers.
//
// These are the numerical reference of ptrain (DESIGN.md, "Two backends").
// Invariants shared by every kernel here:
//  * Templates over the scalar type T, explicitly instantiated for float and double
//    (double runs the finite-difference gradient tests).
//  * Row-major, contiguous. Shape comments use B (batch), T (time), H (heads),
//    D (head dim), C (channels), V (vocab).
//  * Forward kernels overwrite their outputs. Backward kernels ACCUMULATE (+=) into
//    input gradients (llm.c's convention), so a tensor used twice sums its gradients.
//    A gradient pointer may be nullptr: that gradient is then not computed.
//  * Deterministic: reductions over rows (weight/bias gradients, embedding backward,
//    norms) use fixed-size chunks combined in index order, never `omp reduction` or
//    atomics, so results are bit-identical for any OMP thread count.
//  * Loops are OpenMP-parallel (static schedules); statistics (norm rstd, softmax,
//    log-sum-exp) are computed in at least fp32 (double accumulators where cheap).
//  * Index arithmetic is 64-bit.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace ptrain::cpu {

/// Number of rows per chunk in chunked (deterministic) reductions.
inline constexpr int64_t kReduceChunk = 64;

// ---------------------------------------------------------------- GEMM (BLAS)
/// C[M,N] = alpha * op(A) * op(B) + beta * C, row-major; op(A) is [M,K], op(B) is [K,N].
/// lda/ldb/ldc are row strides of the stored (untransposed) matrices. float -> cblas_sgemm,
/// double -> cblas_dgemm.
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// ---------------------------------------------------------------- linear
/// y[M,N] = x[M,K] · w[N,K]^T (+ b[N] if b != nullptr).   (w in Hugging Face [out, in] layout)
template <class T> void linear_forward(const T* x, const T* w, const T* b, T* y, int64_t M, int64_t K, int64_t N);
/// dx[M,K] += dy[M,N] · w[N,K]
template <class T> void linear_backward_input(const T* dy, const T* w, T* dx, int64_t M, int64_t K, int64_t N);
/// dw[N,K] += dy^T · x ; db[N] += column sums of dy (db may be nullptr)
template <class T>
void linear_backward_weight(const T* dy, const T* x, T* dw, T* db, int64_t M, int64_t K, int64_t N);

// ---------------------------------------------------------------- elementwise
/// y = a + b
template <class T> void add_forward(const T* a, const T* b, T* y, int64_t n);
/// y = a * b
template <class T> void mul_forward(const T* a, const T* b, T* y, int64_t n);
/// da += dy*b ; db += dy*a   (either may be nullptr)
template <class T> void mul_backward(const T* dy, const T* a, const T* b, T* da, T* db, int64_t n);
/// y = s * x
template <class T> void scale_forward(const T* x, T s, T* y, int64_t n);
/// y += alpha * x
template <class T> void axpy(T alpha, const T* x, T* y, int64_t n);
/// Sum of squares in double, chunked in fixed blocks combined in order (deterministic).
template <class T> double sum_squares(const T* x, int64_t n);

// ---------------------------------------------------------------- embedding
/// out[n, C] = table[ids[n], :]      ids must be in [0, V) (checked by the caller)
template <class T> void embedding_forward(const int32_t* ids, const T* table, T* out, int64_t n, int64_t C);
/// dtable[ids[i], :] += dout[i, :] for i in order (deterministic: parallel over column blocks)
template <class T> void embedding_backward(const int32_t* ids, const T* dout, T* dtable, int64_t n, int64_t C);

// ---------------------------------------------------------------- norms
/// y = x * rstd * w, rstd[r] = 1/sqrt(mean(x[r]^2) + eps); x,y [rows, C], w [C], rstd [rows] (saved)
template <class T>
void rms_norm_forward(const T* x, const T* w, T* y, T* rstd, int64_t rows, int64_t C, double eps);
/// dx += ..., dw += sum_r dy*x*rstd   (dw reduction chunked by kReduceChunk rows)
template <class T>
void rms_norm_backward(const T* dy, const T* x, const T* w, const T* rstd, T* dx, T* dw, int64_t rows, int64_t C);
/// y = (x - mean) * rstd * w + b ; mean, rstd [rows] saved
template <class T>
void layer_norm_forward(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, int64_t rows, int64_t C,
                        double eps);
template <class T>
void layer_norm_backward(const T* dy, const T* x, const T* w, const T* mean, const T* rstd, T* dx, T* dw, T* db,
                         int64_t rows, int64_t C);

// ---------------------------------------------------------------- RoPE (rotate-half, Hugging Face LLaMA)
/// cos/sin [Tn, D/2]: angle(t, i) = (t + pos0) * theta^(-2i/D), inv_freq computed in float as HF does.
template <class T> void rope_tables(T* cos, T* sin, int64_t Tn, int64_t D, double theta, int64_t pos0 = 0);
/// x, y [B, Tn, H, D]: y[..i] = x[i] cos - x[i+D/2] sin ; y[..i+D/2] = x[i+D/2] cos + x[i] sin  (i < D/2)
template <class T>
void rope_forward(const T* x, const T* cos, const T* sin, T* y, int64_t B, int64_t Tn, int64_t H, int64_t D);
/// dx += R^T dy (rotation by the opposite angle)
template <class T>
void rope_backward(const T* dy, const T* cos, const T* sin, T* dx, int64_t B, int64_t Tn, int64_t H, int64_t D);

// ---------------------------------------------------------------- attention (causal, GQA)
/// q [B, Tn, Hq, D], k/v [B, Tn, Hkv, D] (Hq % Hkv == 0; q head h uses kv head h / (Hq/Hkv)),
/// out [B, Tn, Hq, D]; probs [B, Hq, Tn, Tn] saved (softmax of q·k^T/sqrt(D), zero above the diagonal).
/// store (float only): bf16 / f16 round the probs to that grid after the fp32 softmax, and
/// out = P·v multiplies the rounded P, as the device does (core/cuda/attention.h); out itself
/// is left in T for the caller to round once. f32 / f64 (default): nothing rounded.
template <class T>
void attention_forward(const T* q, const T* k, const T* v, T* out, T* probs, int64_t B, int64_t Tn, int64_t Hq,
                       int64_t Hkv, int64_t D, DType store = DType::f32);
/// dq, dk, dv += gradients (dk/dv sum over the q heads of a group, in head order).
/// store (float only; bf16 / f16, as the device): dS = scale·P ⊙ (dP − rowsum(dP ⊙ P)) is rounded
/// to it before dq += dS·k, dk += dSᵀ·q (dP stays fp32); dk_store / dv_store (the dtypes of
/// dk / dv): the slice of a (batch, kv head) is rounded after each q head of its group has
/// been added. dq is not rounded (one contribution per element; the caller rounds once).
/// All f32 / f64 (default): nothing rounded, the scale applied as the dq / dk GEMMs' alpha.
template <class T>
void attention_backward(const T* dout, const T* q, const T* k, const T* v, const T* probs, T* dq, T* dk, T* dv,
                        int64_t B, int64_t Tn, int64_t Hq, int64_t Hkv, int64_t D, DType store = DType::f32,
                        DType dk_store = DType::f32, DType dv_store = DType::f32);

// ---------------------------------------------------------------- activations
/// y = x * sigmoid(x)
template <class T> void silu_forward(const T* x, T* y, int64_t n);
template <class T> void silu_backward(const T* dy, const T* x, T* dx, int64_t n);
/// y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
template <class T> void gelu_tanh_forward(const T* x, T* y, int64_t n);
template <class T> void gelu_tanh_backward(const T* dy, const T* x, T* dx, int64_t n);
/// y = silu(gate) * up
template <class T> void swiglu_forward(const T* gate, const T* up, T* y, int64_t n);
template <class T> void swiglu_backward(const T* dy, const T* gate, const T* up, T* dgate, T* dup, int64_t n);

// ---------------------------------------------------------------- cross-entropy (fused softmax)
/// logits [N, Vp] of which the first V columns are real (columns >= V are padding, masked to -inf).
/// losses[i] = lse_i - logits[i, target_i]; lse [N] saved. target < 0 means "ignored": loss 0.
template <class T>
void cross_entropy_forward(const T* logits, const int32_t* targets, T* losses, T* lse, int64_t N, int64_t Vp,
                           int64_t V);
/// dlogits[i, j] += dloss[i] * (softmax_ij - [j == target_i]) for j < V; padded columns get nothing.
template <class T>
void cross_entropy_backward(const T* logits, const int32_t* targets, const T* lse, const T* dloss, T* dlogits,
                            int64_t N, int64_t Vp, int64_t V);
/// Vocabulary-shard partials (vocab-parallel cross-entropy, parallel/tp_ops.cpp):
/// lse[i] = log Σ_{j<V} exp(logits[i, j]) in double, computed exactly as cross_entropy_forward
/// computes it before rounding; 0 <= V <= Vp, and V = 0 (a shard of padding only) gives -inf.
template <class T> void cross_entropy_lse(const T* logits, double* lse, int64_t N, int64_t Vp, int64_t V);
/// Gradient of one vocabulary shard: dlogits[i, j] += dloss[i] * (exp(logits[i, j] - lse[i]) - [j == targets[i]])
/// for j < V, with lse the log-sum-exp over the whole vocabulary (all shards). targets[i] < 0: ignored
/// row (nothing written); 0 <= targets[i] < V: the target is in this shard; targets[i] >= V: the target
/// is in another shard (softmax term only). Same arithmetic as cross_entropy_backward row for row.
template <class T>
void cross_entropy_backward_shard(const T* logits, const int32_t* targets, const T* lse, const T* dloss, T* dlogits,
                                  int64_t N, int64_t Vp, int64_t V);

}  // namespace ptrain::cpu
