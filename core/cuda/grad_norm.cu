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
//    bits), so the only roundings are double additions (u = 2^-53): each thread sums its 16
//    strided elements of the chunk in order, the block adds the 256 thread sums in a fixed
//    tree (shared memory, halving strides), and one block per chunk stores partial[chunk].
//  * The final kernel is one block: thread t adds the partials of its contiguous run in
//    index order, then the same fixed tree; thread 0 writes *out. Nothing depends on the
//    order blocks or threads run: bit-identical across runs, block orders and devices.
//  * Error against the CPU's double sum: all terms are >= 0, so any order of additions is
//    within (depth of the summation) * u of the exact sum, relatively; see
//    tests/cuda/op_tolerances.h ("grad_sum_squares.out").
#include "core/cuda/runtime.h"

#include <string>

#include "core/cuda/optim_kernels.h"
#include "core/cuda/optim_table.cuh"
#include "core/cuda/reduce.cuh"

namespace ptrain::cuda {

namespace {

using detail::OptimTensorDesc;
using kern::to_f32;

constexpr unsigned kNormThreads = 256;   // threads per chunk block: 16 elements each
constexpr unsigned kFinalThreads = 256;  // threads of the one final block

/// The tensor of chunk c (see adamw.cu: the last entry whose chunk0 <= c).

/// Sum of v over the block in a fixed tree (blockDim.x a power of two, <= 1024); every thread
/// gets the same bits. Called by every thread at the same site; ends with a barrier.
__device__ __forceinline__ double block_sum_f64(double v, double* red) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (unsigned w = blockDim.x / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) red[threadIdx.x] = red[threadIdx.x] + red[threadIdx.x + w];
    __syncthreads();
  }
  const double t = red[0];
  __syncthreads();  // red may be reused at once
  return t;
}

/// partial[c] = Σ_{i in chunk c} (double)g[i]², one block per chunk (grid-strided).
template <class G>
__global__ void grad_sum_squares_partial_kernel(const OptimTensorDesc* __restrict__ table, int64_t ntensors,
                                                int64_t nchunks, double* __restrict__ partial) {
  PT_SHARED(double, red, [kNormThreads]);
  for (int64_t c = blockIdx.x; c < nchunks; c += gridDim.x) {  // uniform across the block
    const OptimTensorDesc d = table[kern::tensor_of_chunk(table, ntensors, c)];
    const int64_t begin = (c - d.chunk0) * kOptimChunk;
    const int64_t end = begin + kOptimChunk < d.numel ? begin + kOptimChunk : d.numel;
    const G* __restrict__ g = static_cast<const G*>(d.grad);  // [numel]
    double acc = 0.0;
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      const double x = static_cast<double>(to_f32(g[i]));
      acc += x * x;  // the square is exact (an FMA here rounds the same)
    }
    const double s = block_sum_f64(acc, red);
    if (threadIdx.x == 0) partial[c] = s;
  }
}

/// *out = Σ_c partial[c]: thread t adds its contiguous run [t*L, (t+1)*L) in index order, then
/// the fixed tree. One block.
__global__ void grad_sum_squares_final_kernel(const double* __restrict__ partial, int64_t nchunks,
                                              double* __restrict__ out) {
  PT_SHARED(double, red, [kFinalThreads]);
  const int64_t run = (nchunks + blockDim.x - 1) / blockDim.x;
  const int64_t b = static_cast<int64_t>(threadIdx.x) * run;
  const int64_t e = b + run < nchunks ? b + run : nchunks;
  double acc = 0.0;
  for (int64_t k = b; k < e; ++k) acc += partial[k];
  const double s = block_sum_f64(acc, red);
  if (threadIdx.x == 0) *out = s;
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
  PT_LAUNCH(grad_sum_squares_final_kernel, 1, kFinalThreads, 0, stream, static_cast<const double*>(partial),
            table.chunks, out);
}

}  // namespace ptrain::cuda
