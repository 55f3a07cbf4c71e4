// core/cpu/linear.cpp — fully connected layer y = x · w^T + b over the BLAS gemm.
//
// Shapes: x [M, K], w [N, K] (Hugging Face [out, in] layout), b [N], y [M, N].
// Invariants:
//  * linear_forward overwrites y: the bias (or zero) is written first, then gemm adds
//    x · w^T with beta = 1, so y is never read before being written.
//  * Backward kernels accumulate (+=) through gemm with beta = 1; a nullptr gradient is skipped.
//  * db column sums are deterministic: rows are summed in chunks of kReduceChunk, each chunk
//    serially in row order, and the chunk partials are added in chunk order. Threads split
//    the columns, never the rows, so every column sees the same arithmetic for any
//    OMP thread count.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "core/cpu/kernels.h"
#include "core/error.h"

namespace ptrain::cpu {

namespace {

/// Below this many elements a kernel runs on the calling thread.
constexpr int64_t kParallelMin = 32768;
/// Columns per block in the bias-gradient reduction (partials live on the stack).
constexpr int64_t kColBlock = 512;

bool run_parallel(int64_t work) { return work >= kParallelMin && omp_get_max_threads() > 1 && !omp_in_parallel(); }

/// db[j0:j1] += sum over rows of dy[:, j0:j1], chunked by kReduceChunk rows.
template <class T>
void column_sums_block(const T* __restrict__ dy, T* __restrict__ db, int64_t M, int64_t N, int64_t j0, int64_t j1) {
  T acc[kColBlock];
  T part[kColBlock];
  const int64_t w = j1 - j0;
  for (int64_t j = 0; j < w; ++j) acc[j] = T(0);
  for (int64_t r0 = 0; r0 < M; r0 += kReduceChunk) {
    const int64_t r1 = std::min(M, r0 + kReduceChunk);
    const T* row = dy + r0 * N + j0;
    for (int64_t j = 0; j < w; ++j) part[j] = row[j];
    for (int64_t r = r0 + 1; r < r1; ++r) {
      row = dy + r * N + j0;
      for (int64_t j = 0; j < w; ++j) part[j] += row[j];
    }
    for (int64_t j = 0; j < w; ++j) acc[j] += part[j];
  }
  for (int64_t j = 0; j < w; ++j) db[j0 + j] += acc[j];
}

}  // namespace

template <class T>
void linear_forward(const T* x, const T* w, const T* b, T* y, int64_t M, int64_t K, int64_t N) {
  // y [M, N] <- b (broadcast over rows) or 0
  const auto fill = [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* __restrict__ yr = y + r * N;
      if (b) {
        for (int64_t j = 0; j < N; ++j) yr[j] = b[j];
      } else {
        std::memset(yr, 0, static_cast<size_t>(N) * sizeof(T));
      }
    }
  };
  if (run_parallel(M * N)) {
#pragma omp parallel
    {
      const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
      fill(M * t / nt, M * (t + 1) / nt);
    }
  } else {
    fill(0, M);
  }
  // y [M, N] += x [M, K] · w [N, K]^T
  gemm<T>(false, true, M, N, K, T(1), x, K, w, K, T(1), y, N);
}

template <class T>
void linear_backward_input(const T* dy, const T* w, T* dx, int64_t M, int64_t K, int64_t N) {
  if (!dx) return;
  // dx [M, K] += dy [M, N] · w [N, K]
  gemm<T>(false, false, M, K, N, T(1), dy, N, w, K, T(1), dx, K);
}

template <class T>
void linear_backward_weight(const T* dy, const T* x, T* dw, T* db, int64_t M, int64_t K, int64_t N) {
  // dw [N, K] += dy [M, N]^T · x [M, K]
  if (dw) gemm<T>(true, false, N, K, M, T(1), dy, N, x, K, T(1), dw, K);
  if (!db || M == 0 || N == 0) return;
  // db [N] += column sums of dy, column blocks split across threads.
  const int64_t nblocks = (N + kColBlock - 1) / kColBlock;
  if (nblocks > 1 && run_parallel(M * N)) {
#pragma omp parallel for schedule(static)
    for (int64_t blk = 0; blk < nblocks; ++blk)
      column_sums_block(dy, db, M, N, blk * kColBlock, std::min(N, (blk + 1) * kColBlock));
  } else {
    for (int64_t blk = 0; blk < nblocks; ++blk)
      column_sums_block(dy, db, M, N, blk * kColBlock, std::min(N, (blk + 1) * kColBlock));
  }
}

#define PTRAIN_INSTANTIATE_LINEAR(T)                                                                 \
  template void linear_forward<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t);      \
  template void linear_backward_input<T>(const T*, const T*, T*, int64_t, int64_t, int64_t);         \
  template void linear_backward_weight<T>(const T*, const T*, T*, T*, int64_t, int64_t, int64_t);
PTRAIN_INSTANTIATE_LINEAR(float)
PTRAIN_INSTANTIATE_LINEAR(double)
#undef PTRAIN_INSTANTIATE_LINEAR

}  // namespace ptrain::cpu
