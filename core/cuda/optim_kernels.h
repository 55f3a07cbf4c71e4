// core/cuda/optim_kernels.h — host launchers of the optimizer-path kernels: the fused
// multi-tensor AdamW step and the deterministic global gradient sum of squares. Plain C++ (no
// CUDA header needed).
//
// Kernels: core/cuda/adamw.cu, core/cuda/grad_norm.cu. Reference semantics: optim/adamw.cpp
// (AdamW::step) and optim/grad_clip.cpp (grad_sum_squares); tests/cuda/test_optim_cuda.cpp
// checks both against them.
//
// The multi-tensor pattern (apex / Megatron multi_tensor_apply): the parameter list is a
// device-side table of per-tensor descriptors, uploaded ONCE (optim_upload_table: the
// pointers do not change between steps), in which every tensor is cut into chunks of
// kOptimChunk elements; one launch runs one block per chunk (grid-strided), each block finds
// its tensor by a binary search of the table's chunk offsets. A step with hundreds of
// parameters is then one AdamW launch, and the gradient norm two launches, whatever the
// number of tensors.
//
// Invariants:
//  * All tensor pointers are device pointers, contiguous, `numel` elements each.
//    Master weights, exp_avg and exp_avg_sq are fp32; gradients in the table's grad dtype
//    (train.grad_dtype: f32 or bf16; f16 accepted); the model copy in the table's model dtype
//    (f32, bf16 or f16), written from the updated master with one round-to-nearest-even.
//  * AdamW is elementwise: bit-identical for any block order. The grad norm reduces over
//    fixed chunks (independent of the number of SMs) in a fixed order: bit-identical across
//    runs and block orders.
//  * Asynchronous on `stream` (nullptr: the legacy default stream), no allocation, no host
//    synchronisation — except optim_upload_table, which synchronises `stream` once so that
//    the caller's host array may be freed on return.
//  * Launches are counted by core/cuda/launch_stats.h, e.g.
//    "adamw_multi_tensor_kernel<float, __nv_bfloat16>" (grad type, the table's model type),
//    "grad_sum_squares_partial_kernel<float>" (grad type),
//    "grad_sum_squares_final_kernel".
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace ptrain::cuda {

/// Elements per chunk of a multi-tensor launch. Equal to optim::kNormChunk (4096), so that
/// the grad norm's chunk partials are the CPU's chunks (fixed: changing it changes the bits
/// of the norm).
inline constexpr int64_t kOptimChunk = 4096;
/// Chunk partials of the gradient norm are added in groups of this many consecutive chunks
/// (each group in order, then the group sums in order). Equal to optim::kNormGroup.
inline constexpr int64_t kNormGroup = 1024;

/// One tensor of a multi-tensor launch (host-side description; optim_upload_table copies a
/// list of them to the device). Pointers the caller does not need may be nullptr: the grad
/// norm reads only `grad` and `numel`; AdamW needs master, grad, exp_avg, exp_avg_sq.
struct OptimTensor {
  float* master = nullptr;      ///< [numel] fp32 master weights, updated in place
  const void* grad = nullptr;   ///< [numel] gradient in the table's grad dtype (read only)
  float* exp_avg = nullptr;     ///< [numel] fp32 first moment m (zero before step 1)
  float* exp_avg_sq = nullptr;  ///< [numel] fp32 second moment v (zero before step 1)
  void* model = nullptr;        ///< [numel] model copy in the model dtype, or nullptr (none);
                                ///< never the master itself
  int64_t numel = 0;            ///< elements (0 allowed: the tensor has no chunk)
  bool decay = false;           ///< weight decay applies (AdamW::decays(i): 2-D parameters)
};

namespace detail {
/// The device-side descriptor (layout shared by adamw.cu and grad_norm.cu): an OptimTensor
/// plus the index of its first chunk (chunk0 = Σ chunks of the tensors before it).
struct OptimTensorDesc {
  float* master;
  const void* grad;
  float* exp_avg;
  float* exp_avg_sq;
  void* model;
  int64_t numel;
  int64_t chunk0;
  int32_t decay;  ///< 0 or 1
  int32_t pad;
};
}  // namespace detail

/// The uploaded table, as the launchers need it (a small value; keep it with the buffer).
struct OptimTable {
  const void* device = nullptr;  ///< the caller's device buffer holding the descriptors
  int64_t tensors = 0;           ///< entries
  int64_t chunks = 0;            ///< Σ ceil(numel / kOptimChunk)
  DType grad_dtype = DType::f32;
  DType model_dtype = DType::f32;
  bool adamw_ready = false;      ///< every non-empty tensor has master, grad, exp_avg, exp_avg_sq
};

/// Bytes of the device buffer that holds the descriptor table of `n` tensors.
size_t optim_table_bytes(int64_t n);

/// Copies the descriptors of tensors[0..n) (with each tensor's first chunk index) into
/// `device_table` (a device buffer of at least optim_table_bytes(n) bytes, `device_bytes`)
/// with an async copy on `stream`, then synchronises `stream` (one sync per upload: do it
/// once, at setup, and again only when a pointer changes). grad_dtype: f32, bf16 or f16;
/// model_dtype: f32, bf16 or f16 (ignored for tensors without a model copy). Throws
/// std::invalid_argument for a bad dtype, a short buffer, a negative numel, or a non-empty
/// tensor without a gradient.
OptimTable optim_upload_table(const OptimTensor* tensors, int64_t n, DType grad_dtype, DType model_dtype,
                              void* device_table, size_t device_bytes, CUstream_st* stream);

/// The hyperparameters of one AdamW update (optim::AdamWOptions, the learning rate, Adam's t).
struct AdamWStepArgs {
  double lr = 0.0;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  int64_t step = 1;          ///< Adam's t of this update, 1-based (AdamW::step_count() after ++)
  double grad_scale = 1.0;   ///< g_used = g * (float)grad_scale in fp32 (clip coefficient and/or
                             ///< 1/loss_scale); not rounded to the grad dtype
};

/// One AdamW update of every tensor of `table` (requires table.adamw_ready), one launch
/// (none when the table has no chunk). Per element, with the scalars of optim/adamw.cpp
/// computed in double and converted to float where torch converts them:
///   g  = to_f32(grad) * scale
///   p  = p * (1 - lr*wd)                       (tensors with decay, when wd != 0)
///   m  = fma(w1, g - m, m)  (or fma(w1-1, g - m, g) when |w1| >= 0.5), w1 = 1 - beta1
///   v  = fma((1-beta2)*g, g, v*beta2)
///   p  = p + (-lr/(1-beta1^t)) * m / (sqrt(v)/sqrt(1-beta2^t) + eps)
///   model = round_to_model_dtype(p)            (tensors with a model copy)
/// every other operation rounded separately, in this order (bit-identical to AdamW::step
/// on an FMA host). Throws std::invalid_argument for step < 1 or a table not adamw_ready.
/// Kernel: adamw_multi_tensor_kernel<G, P>.
void adamw_step(const OptimTable& table, const AdamWStepArgs& args, CUstream_st* stream);

/// Bytes of scratch that grad_sum_squares needs for `table` (8 per chunk; 0 when no chunk).
size_t grad_sum_squares_scratch_bytes(const OptimTable& table);

/// *out = Σ_tensors Σ_i (double)grad[i]² (the CPU's optim::grad_sum_squares; the caller takes
/// the square root after reading the scalar back, or sums ranks first). Squares are exact in
/// double; each chunk of kOptimChunk elements is summed in double by one block (per-thread
/// strided sums, then a fixed tree), the chunk partials are combined by a second one-block
/// kernel (contiguous runs in index order per thread, then a fixed tree). Deterministic for
/// any block order and SM count. `out`: one device double; `scratch`: grad_sum_squares_
/// scratch_bytes(table). An empty table writes 0. Kernels: grad_sum_squares_partial_kernel<G>
/// (G = float, __nv_bfloat16 or __half; skipped when no chunk), grad_sum_squares_final_kernel.
void grad_sum_squares(const OptimTable& table, double* out, void* scratch, CUstream_st* stream);

}  // namespace ptrain::cuda
