// core/cuda/ops.h — host launchers of the CUDA op kernels (embedding, RMSNorm, residual add,
// fused softmax cross-entropy, activations, RoPE, LayerNorm, last-dim split), callable from
// plain C++ (no CUDA header needed).
//
// Kernels: core/cuda/{embedding,rms_norm,add,cross_entropy}.cu. Reference semantics: the CPU
// kernels of core/cpu/kernels.h, against which tests/cuda/test_ops_cuda.cpp checks every op.
// Invariants shared by every launcher here:
//  * All pointers are device pointers; rows are contiguous (row-major). Activations, weights
//    and their gradients are in `dt` (DType::f32, bf16 or f16; anything else throws
//    std::invalid_argument); ids and targets are int32; saved statistics (rstd, lse) and the
//    cross-entropy losses and their gradients are fp32.
//  * Mixed precision: low-precision values are read, all arithmetic is fp32, and every stored
//    value is rounded once, to nearest even (__float2bfloat16_rn / __float2half_rn).
//  * Forward launchers overwrite their outputs; backward launchers ACCUMULATE (+=) into
//    gradients (llm.c's convention). A gradient pointer may be nullptr: not computed.
//  * Deterministic: no floating-point atomics; every reduction has a fixed order, so results
//    are bit-identical across runs and across thread and block orders.
//  * Asynchronous on `stream` (nullptr: the legacy default stream); no host synchronisation,
//    no allocation: scratch memory is passed in by the caller, sized by *_scratch_bytes.
//  * Every kernel is launched through PT_LAUNCH and counted by core/cuda/launch_stats.h under
//    its instantiated name, e.g. "rms_norm_forward_kernel<__nv_bfloat16>" (T = float,
//    __nv_bfloat16 or __half in the names below).
//  * Shapes are the caller's to check (the op structs do it with messages); the launchers
//    only reject a bad dtype or a missing scratch buffer. Sizes are 64-bit; indices into a
//    tensor are computed in 64 bits. Zero-sized work launches nothing.
#pragma once
#include <cstdint>

#include "core/dtype.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace ptrain::cuda {

// ---------------------------------------------------------------- embedding
/// out[n, C] = table[ids[n], :]. ids must be in [0, V) (the table's rows; not checked here).
/// Kernel: embedding_forward_kernel<T>.
void embedding_forward(const int32_t* ids, const void* table, void* out, int64_t n, int64_t C, DType dt,
                       CUstream_st* stream);
/// Bytes of scratch that embedding_backward needs for n tokens (0 when n == 0).
size_t embedding_backward_scratch_bytes(int64_t n);
/// dtable[ids[i], :] += dout[i, :]: for each distinct id, the rows of dout are summed in fp32
/// in token order starting from the current dtable row, and stored rounded once (for f32,
/// bit-identical to core/cpu's embedding_backward). ids in [0, V), n < 2^31.
/// Kernels: embedding_backward_keys_kernel, embedding_backward_sort_tile_kernel,
/// embedding_backward_sort_step_kernel, embedding_backward_sort_merge_kernel (a bitonic sort
/// of (id, token) keys) and embedding_backward_segments_kernel<T>.
/// `scratch`: embedding_backward_scratch_bytes(n) bytes of device memory, 8-byte aligned.
void embedding_backward(const int32_t* ids, const void* dout, void* dtable, int64_t n, int64_t C, DType dt,
                        void* scratch, CUstream_st* stream);
/// The same with dtable in dtable_dt: dt, or f32 (fp32 gradients of low-precision weights).
void embedding_backward(const int32_t* ids, const void* dout, void* dtable, int64_t n, int64_t C, DType dt,
                        DType dtable_dt, void* scratch, CUstream_st* stream);

// ---------------------------------------------------------------- RMSNorm
/// y = x * rstd * w, rstd[r] = 1/sqrt(mean(x[r]^2) + eps); x, y [rows, C], w [C], rstd [rows]
/// fp32 (saved for the backward). Kernel: rms_norm_forward_kernel<T>.
void rms_norm_forward(const void* x, const void* w, void* y, float* rstd, int64_t rows, int64_t C, double eps,
                      DType dt, CUstream_st* stream);
/// Rows per chunk of the dw reduction (as core/cpu's kReduceChunk).
inline constexpr int64_t kRmsNormDwChunk = 64;
/// Bytes of fp32 scratch that rms_norm_backward needs for dw: ceil(rows / 64) * C floats.
size_t rms_norm_backward_scratch_bytes(int64_t rows, int64_t C);
/// dx += rstd * w * dy - (rstd^3 / C) * x * Σ_c dy*w*x ;  dw += Σ_rows dy * x * rstd.
/// dw: per-chunk partials over fixed chunks of 64 rows (rows in order) into `scratch`, then
/// summed in chunk order. dx or dw may be nullptr; `scratch` (rms_norm_backward_scratch_bytes,
/// 4-byte aligned) may be nullptr when dw is.
/// Kernels: rms_norm_backward_dx_kernel<T>, rms_norm_backward_dw_partial_kernel<T>,
/// rms_norm_backward_dw_sum_kernel<T>.
void rms_norm_backward(const void* dy, const void* x, const void* w, const float* rstd, void* dx, void* dw,
                       int64_t rows, int64_t C, DType dt, void* scratch, CUstream_st* stream);
/// The same with dw in dw_dt (any float dtype; dx stays in dt).
void rms_norm_backward(const void* dy, const void* x, const void* w, const float* rstd, void* dx, void* dw,
                       int64_t rows, int64_t C, DType dt, DType dw_dt, void* scratch, CUstream_st* stream);

// ---------------------------------------------------------------- residual add
/// y = a + b over n elements (y may alias a or b). Kernel: add_forward_kernel<T>.
void add_forward(const void* a, const void* b, void* y, int64_t n, DType dt, CUstream_st* stream);
/// dst += src over n elements: the add's backward (da += dy, db += dy). Kernel: accumulate_kernel<T>.
void accumulate(void* dst, const void* src, int64_t n, DType dt, CUstream_st* stream);

// ---------------------------------------------------------------- cross-entropy (fused softmax)
/// logits [N, Vp] in dt, of which columns [0, V) are real (1 <= V <= Vp; columns >= V are
/// never read, as if masked to -inf); targets [N] in [0, V), or < 0 for an ignored row.
/// lse[i] = log Σ_{j<V} exp(logits[i, j]) (fp32, saved for every row); losses[i] = lse[i] -
/// logits[i, targets[i]] (fp32), 0 for an ignored row. One block per row, online max/sum-exp.
/// Kernel: cross_entropy_forward_kernel<T>.
void cross_entropy_forward(const void* logits, const int32_t* targets, float* losses, float* lse, int64_t N,
                           int64_t Vp, int64_t V, DType dt, CUstream_st* stream);
/// dlogits[i, j] += dloss[i] * (exp(logits[i, j] - lse[i]) - [j == targets[i]]) for j < V;
/// padded columns and ignored rows are not written. dloss, lse fp32 [N]; dlogits [N, Vp] in dt.
/// Kernel: cross_entropy_backward_kernel<T>.
void cross_entropy_backward(const void* logits, const int32_t* targets, const float* lse, const float* dloss,
                            void* dlogits, int64_t N, int64_t Vp, int64_t V, DType dt, CUstream_st* stream);

// ---------------------------------------------------------------- activations
// Kernels: core/cuda/activation.cu. Elementwise over n elements; forward outputs may alias
// their inputs. fp32 arithmetic with the IEEE expf.
/// y = x * sigmoid(x). Kernel: silu_forward_kernel<T>.
void silu_forward(const void* x, void* y, int64_t n, DType dt, CUstream_st* stream);
/// dx += dy * s (1 + x (1 - s)), s = sigmoid(x). Kernel: silu_backward_kernel<T>.
void silu_backward(const void* dy, const void* x, void* dx, int64_t n, DType dt, CUstream_st* stream);
/// y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), evaluated as x * sigmoid(2u).
/// Kernel: gelu_tanh_forward_kernel<T>.
void gelu_tanh_forward(const void* x, void* y, int64_t n, DType dt, CUstream_st* stream);
/// dx += dy * (s + 2 x s (1 - s) u'), s = sigmoid(2u), u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2).
/// Kernel: gelu_tanh_backward_kernel<T>.
void gelu_tanh_backward(const void* dy, const void* x, void* dx, int64_t n, DType dt, CUstream_st* stream);
/// y = silu(gate) * up. Kernel: swiglu_forward_kernel<T>.
void swiglu_forward(const void* gate, const void* up, void* y, int64_t n, DType dt, CUstream_st* stream);
/// dgate += dy up s (1 + gate (1 - s)); dup += dy gate s (s = sigmoid(gate)); either may be
/// nullptr. Kernel: swiglu_backward_kernel<T> (one launch for both).
void swiglu_backward(const void* dy, const void* gate, const void* up, void* dgate, void* dup, int64_t n, DType dt,
                     CUstream_st* stream);

// ---------------------------------------------------------------- elementwise mul / scale
// Kernels: core/cuda/elementwise.cu. Elementwise over n elements; y may alias an input.
/// y = a * b. Kernel: mul_forward_kernel<T>.
void mul_forward(const void* a, const void* b, void* y, int64_t n, DType dt, CUstream_st* stream);
/// da += dy * b; db += dy * a (either may be nullptr). Kernel: mul_backward_kernel<T>.
void mul_backward(const void* dy, const void* a, const void* b, void* da, void* db, int64_t n, DType dt,
                  CUstream_st* stream);
/// y = s * x (s an fp32 host scalar). Kernel: scale_forward_kernel<T>.
void scale_forward(const void* x, float s, void* y, int64_t n, DType dt, CUstream_st* stream);
/// dx += s * dy. Kernel: scale_backward_kernel<T>.
void scale_backward(const void* dy, float s, void* dx, int64_t n, DType dt, CUstream_st* stream);

// ---------------------------------------------------------------- RoPE (rotate-half, Hugging Face LLaMA)
// Kernels: core/cuda/rope.cu. x, y, dy, dx [B, Tn, H, D]; cos, sin [Tn, D/2] fp32 in every
// dtype (as core/cpu's rope_tables<float> computes them). D must be even and positive
// (std::invalid_argument otherwise).
/// y[.., i] = x[i] cos - x[i + D/2] sin; y[.., i + D/2] = x[i + D/2] cos + x[i] sin (i < D/2).
/// y == x (in place) is allowed. Kernel: rope_forward_kernel<T>.
void rope_forward(const void* x, const float* cos, const float* sin, void* y, int64_t B, int64_t Tn, int64_t H,
                  int64_t D, DType dt, CUstream_st* stream);
/// dx += R^T dy: dx[i] += dy[i] cos + dy[i + D/2] sin; dx[i + D/2] += dy[i + D/2] cos - dy[i] sin.
/// Kernel: rope_backward_kernel<T>.
void rope_backward(const void* dy, const float* cos, const float* sin, void* dx, int64_t B, int64_t Tn, int64_t H,
                   int64_t D, DType dt, CUstream_st* stream);

// ---------------------------------------------------------------- last-dim split
// Kernels: core/cuda/split.cu. x / dx [rows, ld] row-major; a piece / its gradient [rows, cols]
// is the column block [off, off + cols) of x. 0 <= off and off + cols <= ld, else
// std::invalid_argument (checked here: the launchers index x's rows with ld).
/// dst[r, c] = src[r, off + c] (a copy: bit-exact). Kernel: split_columns_kernel<T>.
void split_columns(const void* src, void* dst, int64_t rows, int64_t cols, int64_t ld, int64_t off, DType dt,
                   CUstream_st* stream);
/// dx[r, off + c] += dpiece[r, c], in fp32, rounded once to dx_dt (dt, or f32: an fp32
/// gradient buffer of a low-precision tensor). dx == nullptr: nothing.
/// Kernels: split_columns_backward_kernel<T> (dx_dt == dt), split_columns_backward_kernel<T, float>.
void split_columns_backward(const void* dpiece, void* dx, int64_t rows, int64_t cols, int64_t ld, int64_t off,
                            DType dt, DType dx_dt, CUstream_st* stream);

// ---------------------------------------------------------------- LayerNorm
// Kernels: core/cuda/layer_norm.cu. x, y, dy, dx [rows, C]; w, b, dw, db [C]; mean, rstd
// [rows] fp32 (saved for the backward).
/// mean[r] = Σ x / C; rstd[r] = 1/sqrt(Σ (x - mean)² / C + eps) (biased variance, two passes);
/// y = (x - mean) * rstd * w + b (b may be nullptr: no bias). Kernel: layer_norm_forward_kernel<T>.
void layer_norm_forward(const void* x, const void* w, const void* b, void* y, float* mean, float* rstd, int64_t rows,
                        int64_t C, double eps, DType dt, CUstream_st* stream);
/// Rows per chunk of the dw/db reduction (as core/cpu's kReduceChunk).
inline constexpr int64_t kLayerNormDwChunk = 64;
/// Bytes of fp32 scratch that layer_norm_backward needs for dw/db: 2 * ceil(rows / 64) * C floats.
size_t layer_norm_backward_scratch_bytes(int64_t rows, int64_t C);
/// With xh = (x - mean) rstd, g = dy w:  dx += rstd (g - mean_c(g) - xh mean_c(g xh));
/// dw += Σ_rows dy xh;  db += Σ_rows dy. dw/db: per-chunk partials over fixed chunks of 64
/// rows (rows in order) into `scratch`, then summed in chunk order. dx, dw or db may be
/// nullptr; `scratch` (layer_norm_backward_scratch_bytes, 4-byte aligned) may be nullptr when
/// dw and db both are.
/// Kernels: layer_norm_backward_dx_kernel<T>, layer_norm_backward_dwdb_partial_kernel<T>,
/// layer_norm_backward_dwdb_sum_kernel<T>.
void layer_norm_backward(const void* dy, const void* x, const void* w, const float* mean, const float* rstd, void* dx,
                         void* dw, void* db, int64_t rows, int64_t C, DType dt, void* scratch, CUstream_st* stream);
/// The same with dw and db in dwdb_dt (any float dtype; dx stays in dt).
void layer_norm_backward(const void* dy, const void* x, const void* w, const float* mean, const float* rstd, void* dx,
                         void* dw, void* db, int64_t rows, int64_t C, DType dt, DType dwdb_dt, void* scratch,
                         CUstream_st* stream);

}  // namespace ptrain::cuda
