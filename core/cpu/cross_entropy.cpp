// core/cpu/cross_entropy.cpp — fused log-softmax + negative log-likelihood over padded logits.
//
// Shapes: logits / dlogits [N, Vp], of which columns [0, V) are real and [V, Vp) padding;
// targets, losses, lse, dloss [N].
// Invariants:
//  * Padding columns are never read and never written (as if masked to -inf).
//  * lse_i = max_i + log(sum_j exp(logit_ij - max_i)): the max is subtracted first, the sum of
//    exponentials is accumulated in kLanes interleaved lanes (in T within blocks of kBlock
//    columns, then in double), lanes combined in order, and log is taken in double. The float path evaluates exp with a branch-free
//    polynomial (Cephes expf, ~1 ulp on the range used) so the row loops vectorize; double
//    uses std::exp. lse is saved for every row, ignored rows included.
//  * target < 0 marks an ignored row: loss 0 and no gradient. 0 <= target < V otherwise; a
//    target >= V is a caller bug (PT_CHECK, before any output is written).
//  * Rows are independent and split across threads: results do not depend on the thread count.
//  * The backward accumulates (+=) into dlogits; the target column gets dloss * (p - 1) in one
//    rounding rather than dloss * p - dloss.
//  * The shard kernels (cross_entropy_lse, cross_entropy_backward_shard) serve vocab-parallel
//    cross-entropy: the same row arithmetic, with lse in double (V = 0 allowed: -inf) and, in the
//    backward, target >= V meaning "the target is in another shard" (softmax term only).
#include <omp.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "core/cpu/fast_math.h"
#include "core/cpu/kernels.h"
#include "core/error.h"

namespace ptrain::cpu {

namespace {

constexpr int64_t kParallelMin = 32768;
constexpr int kLanes = 16;
constexpr int64_t kBlock = 256;  // multiple of kLanes

template <class T> inline T exp_t(T x) { return exp_poly(x); }  // core/cpu/fast_math.h

// The row loops are compute-bound on exp: let them use 512-bit vectors where the ISA has them
// (results do not depend on the vector width: every reduction below has explicit lanes).
#if defined(__AVX512F__)
#define PTRAIN_WIDE_SIMD __attribute__((target("prefer-vector-width=512")))
#else
#define PTRAIN_WIDE_SIMD
#endif

/// Log-sum-exp of x[0, V), V >= 1, in double. Sum of exp: kLanes interleaved accumulators in T
/// over blocks of kBlock elements, each block's lanes added to kLanes double accumulators;
/// the lanes are combined in order at the end.
template <class T>
PTRAIN_WIDE_SIMD double row_lse(const T* __restrict__ x, int64_t V) {
  T m = x[0];
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < V; ++j) m = x[j] > m ? x[j] : m;
  if (m == -std::numeric_limits<T>::infinity()) return -std::numeric_limits<double>::infinity();
  if (std::isnan(m) || m == std::numeric_limits<T>::infinity()) return static_cast<double>(m);

  double acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kBlock <= V; j += kBlock) {
    T part[kLanes] = {};
    for (int64_t k = 0; k < kBlock; k += kLanes)
      for (int l = 0; l < kLanes; ++l) part[l] += exp_t<T>(x[j + k + l] - m);
    for (int l = 0; l < kLanes; ++l) acc[l] += static_cast<double>(part[l]);
  }
  for (int l = 0; j < V; ++j, l = (l + 1) % kLanes) acc[l] += static_cast<double>(exp_t<T>(x[j] - m));
  double s = 0;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return static_cast<double>(m) + std::log(s);
}

/// dx[0, V) += g * (exp(x - lse) - [j == t])

template <class T>
PTRAIN_WIDE_SIMD void row_backward(const T* __restrict__ x, T* __restrict__ dx, int64_t V, int32_t t, T g, T lse) {
  const T d_target = dx[t];
  for (int64_t j = 0; j < V; ++j) dx[j] = fmadd(g, exp_t<T>(x[j] - lse), dx[j]);
  dx[t] = fmadd(g, exp_t<T>(x[t] - lse) - T(1), d_target);
}

/// dx[0, V) += g * exp(x - lse): the gradient of a row whose target is in another vocabulary shard.
template <class T>
PTRAIN_WIDE_SIMD void row_backward_softmax(const T* __restrict__ x, T* __restrict__ dx, int64_t V, T g, T lse) {
  for (int64_t j = 0; j < V; ++j) dx[j] = fmadd(g, exp_t<T>(x[j] - lse), dx[j]);
}

void check_targets(const int32_t* targets, int64_t N, int64_t V) {
  for (int64_t i = 0; i < N; ++i)
    PT_CHECK(targets[i] < V, "cross_entropy: target {} at row {} is >= the vocabulary size {}", targets[i], i, V);
}

bool run_parallel(int64_t work) { return work >= kParallelMin && omp_get_max_threads() > 1 && !omp_in_parallel(); }

}  // namespace

template <class T>
void cross_entropy_forward(const T* logits, const int32_t* targets, T* losses, T* lse, int64_t N, int64_t Vp,
                           int64_t V) {
  PT_CHECK(V >= 1 && V <= Vp, "cross_entropy_forward: need 1 <= V <= Vp, got V={} Vp={}", V, Vp);
  check_targets(targets, N, V);
  const auto row = [=](int64_t i) {
    const T* x = logits + i * Vp;  // [Vp]
    const double l = row_lse(x, V);
    lse[i] = static_cast<T>(l);
    const int32_t t = targets[i];
    losses[i] = t < 0 ? T(0) : static_cast<T>(l - static_cast<double>(x[t]));
  };
  if (run_parallel(N * V)) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) row(i);
  } else {
    for (int64_t i = 0; i < N; ++i) row(i);
  }
}

template <class T>
void cross_entropy_backward(const T* logits, const int32_t* targets, const T* lse, const T* dloss, T* dlogits,
                            int64_t N, int64_t Vp, int64_t V) {
  if (!dlogits) return;
  PT_CHECK(V >= 1 && V <= Vp, "cross_entropy_backward: need 1 <= V <= Vp, got V={} Vp={}", V, Vp);
  check_targets(targets, N, V);
  const auto row = [=](int64_t i) {
    const int32_t t = targets[i];
    if (t >= 0) row_backward(logits + i * Vp, dlogits + i * Vp, V, t, dloss[i], lse[i]);  // rows [Vp]
  };
  if (run_parallel(N * V)) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) row(i);
  } else {
    for (int64_t i = 0; i < N; ++i) row(i);
  }
}

template <class T> void cross_entropy_lse(const T* logits, double* lse, int64_t N, int64_t Vp, int64_t V) {
  PT_CHECK(V >= 0 && V <= Vp, "cross_entropy_lse: need 0 <= V <= Vp, got V={} Vp={}", V, Vp);
  if (V == 0) {
    for (int64_t i = 0; i < N; ++i) lse[i] = -std::numeric_limits<double>::infinity();
    return;
  }
  const auto row = [=](int64_t i) { lse[i] = row_lse(logits + i * Vp, V); };  // rows [Vp]
  if (run_parallel(N * V)) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) row(i);
  } else {
    for (int64_t i = 0; i < N; ++i) row(i);
  }
}

template <class T>
void cross_entropy_backward_shard(const T* logits, const int32_t* targets, const T* lse, const T* dloss, T* dlogits,
                                  int64_t N, int64_t Vp, int64_t V) {
  PT_CHECK(V >= 0 && V <= Vp, "cross_entropy_backward_shard: need 0 <= V <= Vp, got V={} Vp={}", V, Vp);
  if (!dlogits || V == 0) return;
  const auto row = [=](int64_t i) {
    const int32_t t = targets[i];
    if (t < 0) return;
    if (t < V)
      row_backward(logits + i * Vp, dlogits + i * Vp, V, t, dloss[i], lse[i]);  // rows [Vp]
    else
      row_backward_softmax(logits + i * Vp, dlogits + i * Vp, V, dloss[i], lse[i]);
  };
  if (run_parallel(N * V)) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) row(i);
  } else {
    for (int64_t i = 0; i < N; ++i) row(i);
  }
}

#define PTRAIN_INSTANTIATE_CROSS_ENTROPY(T)                                                                \
  template void cross_entropy_forward<T>(const T*, const int32_t*, T*, T*, int64_t, int64_t, int64_t);    \
  template void cross_entropy_backward<T>(const T*, const int32_t*, const T*, const T*, T*, int64_t, int64_t, \
                                          int64_t);                                                \
  template void cross_entropy_lse<T>(const T*, double*, int64_t, int64_t, int64_t);                     \
  template void cross_entropy_backward_shard<T>(const T*, const int32_t*, const T*, const T*, T*, int64_t, \
                                                int64_t, int64_t);
PTRAIN_INSTANTIATE_CROSS_ENTROPY(float)
PTRAIN_INSTANTIATE_CROSS_ENTROPY(double)
#undef PTRAIN_INSTANTIATE_CROSS_ENTROPY

}  // namespace ptrain::cpu
