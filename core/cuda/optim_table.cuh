// core/cuda/optim_table.cuh — device-side lookup in the multi-tensor table of
// core/cuda/optim_kernels.h, shared by the AdamW and gradient-norm kernels. Device code only,
// included by .cu files after core/cuda/runtime.h.
#pragma once

#include <cstdint>

#include "core/cuda/optim_kernels.h"

namespace ptrain::cuda::kern {

/// The tensor of chunk c: the last entry whose chunk0 <= c (empty tensors own no chunk, so
/// they are skipped: an empty entry shares its chunk0 with the next one). c < total chunks.
__device__ __forceinline__ int64_t tensor_of_chunk(const detail::OptimTensorDesc* __restrict__ table, int64_t n, int64_t c) {
  int64_t lo = 0, hi = n - 1;  // invariant: table[lo].chunk0 <= c (table[0].chunk0 == 0)
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (table[mid].chunk0 <= c)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

}  // namespace ptrain::cuda::kern
