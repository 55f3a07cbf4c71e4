// core/cpu/elementwise.cpp — elementwise kernels (add, mul, scale, axpy) and sum of squares.
//
// Invariants:
//  * Forward kernels overwrite y; mul_backward and axpy accumulate (+=). In-place use with an
//    output equal to an input (y == a, y == x) is allowed; partial overlaps are not.
//  * Work is split into contiguous per-thread ranges only above kParallelMin elements; each
//    element's arithmetic does not depend on the split, so results are thread-count independent.
//  * sum_squares accumulates in double over fixed chunks of kSumChunk elements (kLanes
//    interleaved accumulators inside a chunk, combined in lane order), and the chunk sums are
//    added in index order: bit-identical for any OMP thread count and any vector ISA.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/cpu/kernels.h"

namespace ptrain::cpu {

namespace {

constexpr int64_t kParallelMin = 32768;
constexpr int64_t kSumChunk = 4096;
constexpr int kLanes = 32;  // enough independent accumulators to hide the add latency

/// Calls f(begin, end) on contiguous ranges covering [0, n): one per thread when n is large.
template <class F>
void for_ranges(int64_t n, F&& f) {
  if (n >= kParallelMin && omp_get_max_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel
    {
      const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
      // Range edges on multiples of 16 elements keep each thread's vectors aligned alike.
      const int64_t b = std::min(n, (n * t / nt) & ~int64_t(15));
      const int64_t e = t + 1 == nt ? n : std::min(n, (n * (t + 1) / nt) & ~int64_t(15));
      if (b < e) f(b, e);
    }
  } else if (n > 0) {
    f(int64_t(0), n);
  }
}

/// Sum of x[i]^2 over [0, n) with n <= kSumChunk, in double, kLanes fixed accumulators.
template <class T>
double chunk_sum_squares(const T* __restrict__ x, int64_t n) {
  double acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const double v = static_cast<double>(x[i + l]);
      acc[l] += v * v;
    }
  for (int l = 0; i < n; ++i, ++l) {
    const double v = static_cast<double>(x[i]);
    acc[l] += v * v;
  }
  double s = 0;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

}  // namespace

template <class T>
void add_forward(const T* a, const T* b, T* y, int64_t n) {
  for_ranges(n, [=](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = a[i] + b[i];
  });
}

template <class T>
void mul_forward(const T* a, const T* b, T* y, int64_t n) {
  for_ranges(n, [=](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = a[i] * b[i];
  });
}

template <class T>
void mul_backward(const T* dy, const T* a, const T* b, T* da, T* db, int64_t n) {
  if (da && db) {
    for_ranges(n, [=](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const T g = dy[i];
        da[i] += g * b[i];
        db[i] += g * a[i];
      }
    });
  } else if (da) {
    for_ranges(n, [=](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) da[i] += dy[i] * b[i];
    });
  } else if (db) {
    for_ranges(n, [=](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) db[i] += dy[i] * a[i];
    });
  }
}

template <class T>
void scale_forward(const T* x, T s, T* y, int64_t n) {
  for_ranges(n, [=](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = s * x[i];
  });
}

template <class T>
void axpy(T alpha, const T* x, T* y, int64_t n) {
  for_ranges(n, [=](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] += alpha * x[i];
  });
}

template <class T>
double sum_squares(const T* x, int64_t n) {
  if (n <= 0) return 0.0;
  const int64_t nchunks = (n + kSumChunk - 1) / kSumChunk;
  if (nchunks == 1) return chunk_sum_squares(x, n);
  std::vector<double> part(static_cast<size_t>(nchunks));
  const auto run = [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      part[c] = chunk_sum_squares(x + c * kSumChunk, std::min(kSumChunk, n - c * kSumChunk));
  };
  if (n >= kParallelMin && omp_get_max_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel
    {
      const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
      run(nchunks * t / nt, nchunks * (t + 1) / nt);
    }
  } else {
    run(0, nchunks);
  }
  double s = 0;
  for (int64_t c = 0; c < nchunks; ++c) s += part[c];
  return s;
}

#define PTRAIN_INSTANTIATE_ELEMENTWISE(T)                                         \
  template void add_forward<T>(const T*, const T*, T*, int64_t);                  \
  template void mul_forward<T>(const T*, const T*, T*, int64_t);                  \
  template void mul_backward<T>(const T*, const T*, const T*, T*, T*, int64_t);   \
  template void scale_forward<T>(const T*, T, T*, int64_t);                       \
  template void axpy<T>(T, const T*, T*, int64_t);                                \
  template double sum_squares<T>(const T*, int64_t);
PTRAIN_INSTANTIATE_ELEMENTWISE(float)
PTRAIN_INSTANTIATE_ELEMENTWISE(double)
#undef PTRAIN_INSTANTIATE_ELEMENTWISE

}  // namespace ptrain::cpu
