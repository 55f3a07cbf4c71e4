// core/cpu/embedding.cpp — token embedding lookup and its gradient.
//
// Shapes: ids [n], table / dtable [V, C], out / dout [n, C].
// Invariants:
//  * ids are in [0, V); the caller checks them (the kernel does not know V).
//  * embedding_forward overwrites out (rows split across threads when large).
//  * embedding_backward accumulates dtable[ids[i], :] += dout[i, :] for i in order. Threads
//    split the columns, never the tokens, so repeated ids are summed in token order and the
//    result is bit-identical for any OMP thread count.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "core/cpu/kernels.h"

namespace ptrain::cpu {

namespace {

constexpr int64_t kParallelMin = 32768;
/// Smallest column block per thread in the backward pass (a multiple of 16 elements).
constexpr int64_t kMinColBlock = 64;

bool run_parallel(int64_t work) { return work >= kParallelMin && omp_get_max_threads() > 1 && !omp_in_parallel(); }

template <class T>
void embedding_backward_cols(const int32_t* __restrict__ ids, const T* __restrict__ dout, T* __restrict__ dtable,
                             int64_t n, int64_t C, int64_t j0, int64_t j1) {
  for (int64_t i = 0; i < n; ++i) {
    const T* __restrict__ src = dout + i * C;
    T* __restrict__ dst = dtable + static_cast<int64_t>(ids[i]) * C;
    for (int64_t j = j0; j < j1; ++j) dst[j] += src[j];
  }
}

}  // namespace

template <class T>
void embedding_forward(const int32_t* ids, const T* table, T* out, int64_t n, int64_t C) {
  const auto rows = [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      std::memcpy(out + i * C, table + static_cast<int64_t>(ids[i]) * C, static_cast<size_t>(C) * sizeof(T));
  };
  if (run_parallel(n * C)) {
#pragma omp parallel
    {
      const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
      rows(n * t / nt, n * (t + 1) / nt);
    }
  } else {
    rows(0, n);
  }
}

template <class T>
void embedding_backward(const int32_t* ids, const T* dout, T* dtable, int64_t n, int64_t C) {
  if (!dtable || n <= 0 || C <= 0) return;
  if (run_parallel(n * C) && C >= 2 * kMinColBlock) {
#pragma omp parallel
    {
      const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t nb = std::min<int64_t>(nt, C / kMinColBlock);  // blocks in use
      if (t < nb) {
        const int64_t j0 = (C * t / nb) & ~int64_t(15);
        const int64_t j1 = t + 1 == nb ? C : (C * (t + 1) / nb) & ~int64_t(15);
        embedding_backward_cols(ids, dout, dtable, n, C, j0, j1);
      }
    }
  } else {
    embedding_backward_cols(ids, dout, dtable, n, C, int64_t(0), C);
  }
}

#define PTRAIN_INSTANTIATE_EMBEDDING(T)                                               \
  template void embedding_forward<T>(const int32_t*, const T*, T*, int64_t, int64_t); \
  template void embedding_backward<T>(const int32_t*, const T*, T*, int64_t, int64_t);
PTRAIN_INSTANTIATE_EMBEDDING(float)
PTRAIN_INSTANTIATE_EMBEDDING(double)
#undef PTRAIN_INSTANTIATE_EMBEDDING

}  // namespace ptrain::cpu
