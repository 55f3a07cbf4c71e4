// core/cpu/rope.cpp — rotary position embedding, rotate-half form (Hugging Face LLaMA).
//
// Shapes: x, y, dy, dx [B, Tn, H, D]; cos, sin [Tn, D/2] (row t holds position t + pos0).
// Invariants:
//  * Tables follow HF's arithmetic in the scalar type T: inv_freq[i] = 1 / theta^(2i/D)
//    (fp32 for float, as `1.0 / (base ** (arange(0, D, 2).float() / D))`), angle =
//    T(t + pos0) * inv_freq[i] (one rounding, like HF's outer product), then cos/sin of that
//    angle. For T = double everything is double.
//  * rope_forward overwrites y (y == x in place is allowed: each pair is read before it is
//    written); rope_backward accumulates dx += R^T dy and skips a nullptr dx.
//  * Pure per-element arithmetic: results do not depend on the OMP thread count.
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "core/cpu/kernels.h"
#include "core/error.h"

namespace ptrain::cpu {

namespace {

/// Below this many elements a kernel runs on the calling thread.
constexpr int64_t kParallelMin = 32768;

bool run_parallel(int64_t work) { return work >= kParallelMin && omp_get_max_threads() > 1 && !omp_in_parallel(); }

}  // namespace

template <class T>
void rope_tables(T* cos, T* sin, int64_t Tn, int64_t D, double theta, int64_t pos0) {
  PT_CHECK(D > 0 && D % 2 == 0, "rope_tables: head dim D={} must be even and positive", D);
  PT_CHECK(pos0 >= 0, "rope_tables: pos0={} must be >= 0", pos0);
  const int64_t half = D / 2;
  const T base = static_cast<T>(theta);
  std::vector<T> inv_freq(static_cast<size_t>(half));  // [D/2]
  for (int64_t i = 0; i < half; ++i)
    inv_freq[i] = T(1) / std::pow(base, static_cast<T>(2 * i) / static_cast<T>(D));
#pragma omp parallel for schedule(static) if (run_parallel(Tn * half * 16))
  for (int64_t t = 0; t < Tn; ++t) {
    const T pos = static_cast<T>(t + pos0);
    for (int64_t i = 0; i < half; ++i) {
      const T angle = pos * inv_freq[i];
      cos[t * half + i] = std::cos(angle);
      sin[t * half + i] = std::sin(angle);
    }
  }
}

// y[i] = x[i] c - x[i+h] s ; y[i+h] = x[i+h] c + x[i] s   (h = D/2, i < h)
template <class T>
void rope_forward(const T* x, const T* cos, const T* sin, T* y, int64_t B, int64_t Tn, int64_t H, int64_t D) {
  PT_CHECK(D % 2 == 0, "rope_forward: head dim D={} must be even", D);
  const int64_t half = D / 2;
#pragma omp parallel for schedule(static) if (run_parallel(B * Tn * H * D))
  for (int64_t bt = 0; bt < B * Tn; ++bt) {
    const int64_t t = bt % Tn;
    const T* __restrict__ c = cos + t * half;  // [D/2]
    const T* __restrict__ s = sin + t * half;  // [D/2]
    for (int64_t h = 0; h < H; ++h) {
      const T* xr = x + (bt * H + h) * D;  // [D]
      T* yr = y + (bt * H + h) * D;        // [D]
      for (int64_t i = 0; i < half; ++i) {
        const T x1 = xr[i], x2 = xr[i + half];
        yr[i] = x1 * c[i] - x2 * s[i];
        yr[i + half] = x2 * c[i] + x1 * s[i];
      }
    }
  }
}

// dx[i] += dy[i] c + dy[i+h] s ; dx[i+h] += dy[i+h] c - dy[i] s
template <class T>
void rope_backward(const T* dy, const T* cos, const T* sin, T* dx, int64_t B, int64_t Tn, int64_t H, int64_t D) {
  if (!dx) return;
  PT_CHECK(D % 2 == 0, "rope_backward: head dim D={} must be even", D);
  const int64_t half = D / 2;
#pragma omp parallel for schedule(static) if (run_parallel(B * Tn * H * D))
  for (int64_t bt = 0; bt < B * Tn; ++bt) {
    const int64_t t = bt % Tn;
    const T* __restrict__ c = cos + t * half;  // [D/2]
    const T* __restrict__ s = sin + t * half;  // [D/2]
    for (int64_t h = 0; h < H; ++h) {
      const T* __restrict__ g = dy + (bt * H + h) * D;  // [D]
      T* __restrict__ dxr = dx + (bt * H + h) * D;      // [D]
      for (int64_t i = 0; i < half; ++i) {
        const T g1 = g[i], g2 = g[i + half];
        dxr[i] += g1 * c[i] + g2 * s[i];
        dxr[i + half] += g2 * c[i] - g1 * s[i];
      }
    }
  }
}

#define PTRAIN_INSTANTIATE_ROPE(T)                                                                      \
  template void rope_tables<T>(T*, T*, int64_t, int64_t, double, int64_t);                              \
  template void rope_forward<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t); \
  template void rope_backward<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t);
PTRAIN_INSTANTIATE_ROPE(float)
PTRAIN_INSTANTIATE_ROPE(double)
#undef PTRAIN_INSTANTIATE_ROPE

}  // namespace ptrain::cpu
