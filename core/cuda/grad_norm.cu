// core/cuda/grad_norm.cu — the global gradient sum of squares over a multi-tensor table
// (core/cuda/optim_kernels.h), deterministic, in double.
//
// Shapes: for every tensor of the table, grad [numel] in G (float, __nv_bfloat16, __half);
// scratch [chunks] double; out [1] double.
// Invariants:
//  * Chunks are the CPU's (optim::grad_sum_squares, kNormChunk = kOptimChunk = 4096 elements
//    of one tensor, tensors in table order); the chunk list depends only on the tensor sizes,
//    never on the GPU's SM count or on the grid size.
//  * Squares are exact in double (a float has a 24-bit significand, its square at most 48
//    bits), so the only roundings are double additions, and they are done in
//    optim/grad_clip.cpp's order: the result is the CPU's bits.
//      partial[c]: 16 lanes (one thread each) over the chunk's whole vectors of 16, lane j
//                  adding x[i + j]² in order; the lanes combined by the fixed halving tree
//                  (j += j + 8, + 4, + 2, + 1); then the tail in order (kNormLanes below);
//      *out:       the partials in groups of kNormGroup consecutive chunks, each group summed
//                  in index order (one thread per group), then the group sums in order.
//    Nothing depends on the order blocks or threads run: bit-identical across runs, block
//    orders and devices, and equal to optim::grad_sum_squares.
#include "core/cuda/runtime.h"

#include <string>

#include "core/cuda/optim_kernels.h"
#include "core/cuda/optim_table.cuh"
#include "core/cuda/reduce.cuh"

namespace ptrain::cuda {

namespace {

using detail::OptimTensorDesc;
using kern::to_f32;

constexpr unsigned kNormThreads = 32;    // threads per chunk block (16 lanes work)
constexpr int kNormLanes = 16;           // optim/grad_clip.cpp's kLanes
constexpr unsigned kFinalThreads = 256;  // threads of the one final block

/// partial[c] = Σ_{i in chunk c} (double)g[i]² in the CPU's lane order, one block per chunk
/// (grid-strided).
template <class G>
__global__ void grad_sum_squares_partial_kernel(const OptimTensorDesc* __restrict__ table, int64_t ntensors,
                                                int64_t nchunks, double* __restrict__ partial) {
  PT_SHARED(double, lanes, [kNormLanes]);
  for (int64_t c = blockIdx.x; c < nchunks; c += gridDim.x) {  // uniform across the block
    const OptimTensorDesc d = table[kern::tensor_of_chunk(table, ntensors, c)];
    const int64_t begin = (c - d.chunk0) * kOptimChunk;
    const int64_t end = begin + kOptimChunk < d.numel ? begin + kOptimChunk : d.numel;
    const int64_t full = begin + (end - begin) / kNormLanes * kNormLanes;
    const G* __restrict__ g = static_cast<const G*>(d.grad);  // [numel]
    if (threadIdx.x < static_cast<unsigned>(kNormLanes)) {
      double acc = 0.0;
      for (int64_t i = begin + threadIdx.x; i < full; i += kNormLanes) {
        const double x = static_cast<double>(to_f32(g[i]));
        acc = __dadd_rn(acc, __dmul_rn(x, x));  // the square is exact
      }
      lanes[threadIdx.x] = acc;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = kNormLanes / 2; w >= 1; w /= 2)
        for (int j = 0; j < w; ++j) lanes[j] = __dadd_rn(lanes[j], lanes[j + w]);
      double s = lanes[0];
      for (int64_t i = full; i < end; ++i) {
        const double x = static_cast<double>(to_f32(g[i]));
        s = __dadd_rn(s, __dmul_rn(x, x));
      }
      partial[c] = s;
    }
    __syncthreads();  // lanes are reused for the next chunk
  }
}

/// *out = Σ_groups (Σ_{c in group} partial[c] in order), groups of kNormGroup consecutive
/// chunks in order (optim::grad_sum_squares' order). One block: thread t sums groups t,
/// t + blockDim, ... and leaves each sum in the group's first partial; thread 0 adds them.
__global__ void grad_sum_squares_final_kernel(double* __restrict__ partial, int64_t nchunks,
                                              double* __restrict__ out) {
  const int64_t groups = (nchunks + kNormGroup - 1) / kNormGroup;
  for (int64_t k = threadIdx.x; k < groups; k += blockDim.x) {
    const int64_t b = k * kNormGroup, e = b + kNormGroup < nchunks ? b + kNormGroup : nchunks;
    double acc = 0.0;
    for (int64_t i = b; i < e; ++i) acc = __dadd_rn(acc, partial[i]);
    partial[b] = acc;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double s = 0.0;
    for (int64_t k = 0; k < groups; ++k) s = __dadd_rn(s, partial[k * kNormGroup]);
    *out = s;
  }
}

}  // namespace

size_t grad_sum_squares_scratch_bytes(const OptimTable& table) {
  return table.chunks > 0 ? static_cast<size_t>(table.chunks) * sizeof(double) : 0;
}

void grad_sum_squares(const OptimTable& table, double* out, void* scratch, CUstream_st* stream) {
  kern::check_dtype("grad_sum_squares", table.grad_dtype);
  if (!out) throw std::invalid_argument("grad_sum_squares: out is nullptr");
  if (table.chunks > 0 && !scratch)
    throw std::invalid_argument("grad_sum_squares: needs scratch (grad_sum_squares_scratch_bytes), got nullptr");
  auto* partial = static_cast<double*>(scratch);  // [chunks]
  if (table.chunks > 0) {
    const auto* d = static_cast<const OptimTensorDesc*>(table.device);
#define PT_GRAD_SUM_SQUARES(G)                                                                                    \
  PT_LAUNCH((grad_sum_squares_partial_kernel<G>), kern::grid_blocks(table.chunks), kNormThreads, 0, stream, d, \
            table.tensors, table.chunks, partial)
    PT_DTYPE_SWITCH(table.grad_dtype, PT_GRAD_SUM_SQUARES)
#undef PT_GRAD_SUM_SQUARES
  }
  PT_LAUNCH(grad_sum_squares_final_kernel, 1, kFinalThreads, 0, stream, partial, table.chunks, out);
}

}  // namespace ptrain::cuda
