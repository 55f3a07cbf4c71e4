// core/cpu/activation.cpp — SiLU, GELU (tanh approximation) and SwiGLU, forward and backward.
//
// Shapes: every array is [n] (elementwise).
// Invariants:
//  * Forward kernels overwrite y; backward kernels accumulate (+=) and skip a nullptr gradient.
//  * float runs in fp32 with a branch-free exp (Cephes polynomial, ~1 ulp on its range) that
//    g++ vectorises, as torch's Sleef kernels do; double uses std::exp.
//  * GELU-tanh is evaluated as x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3), which is
//    0.5 x (1 + tanh(u)) exactly in real arithmetic and avoids the cancellation of 1 + tanh(u)
//    for negative x.
//  * Work is split into fixed blocks of kBlock elements (threads take whole blocks), so every
//    element sees the same code path for any OMP thread count: bit-identical results.
#include <omp.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "core/cpu/kernels.h"

namespace ptrain::cpu {

namespace {

/// Below this many elements a kernel runs on the calling thread.
constexpr int64_t kParallelMin = 32768;
/// Elements per block of work (a multiple of 64 keeps blocks vector-aligned alike).
constexpr int64_t kBlock = 8192;

bool run_parallel(int64_t work) { return work >= kParallelMin && omp_get_max_threads() > 1 && !omp_in_parallel(); }

/// exp(x) in fp32 without branches, for the denominators 1 + exp(.) of the sigmoids here:
/// n = round(x log2 e), r = x - n ln 2 (two-part ln 2), exp(r) by the Cephes degree-6
/// polynomial (~1 ulp), times 2^n from the exponent bits (n in [-126, 127]). Returns 0 below
/// ln(FLT_MIN) (no denormals) and +inf above 127 ln 2 = 88.03 (exact exp is finite up to 88.72:
/// irrelevant for 1 / (1 + exp)), NaN for NaN.
inline float exp_fast(float x) {
  constexpr float kHi = 88.0296919f, kLo = -87.3365447f, kMagic = 12582912.0f;  // 1.5 * 2^23
  float xc = x > kHi ? kHi : x;
  xc = xc < kLo ? kLo : xc;
  const float t = xc * 1.44269504088896341f + kMagic;
  const float n = t - kMagic;
  const uint32_t ni = std::bit_cast<uint32_t>(t) - std::bit_cast<uint32_t>(kMagic);
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  float e = p * std::bit_cast<float>((ni + 127u) << 23);
  e = x > kHi ? std::numeric_limits<float>::infinity() : e;
  return x < kLo ? 0.0f : e;
}
inline double exp_fast(double x) { return std::exp(x); }

/// Calls f(i0, i1) over fixed blocks of kBlock elements covering [0, n).
template <class F>
void for_blocks(int64_t n, F f) {
  const int64_t nblocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (run_parallel(n))
  for (int64_t k = 0; k < nblocks; ++k) f(k * kBlock, k + 1 == nblocks ? n : (k + 1) * kBlock);
}

/// sqrt(2/pi) and the cubic coefficient of GELU's tanh approximation.
template <class T> constexpr T kGeluBeta = static_cast<T>(0.7978845608028654);
template <class T> constexpr T kGeluKappa = static_cast<T>(0.044715);

}  // namespace

template <class T>
void silu_forward(const T* x, T* y, int64_t n) {
  for_blocks(n, [=](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = x[i] / (T(1) + exp_fast(-x[i]));
  });
}

// d silu/dx = s (1 + x (1 - s)), s = sigmoid(x)
template <class T>
void silu_backward(const T* dy, const T* x, T* dx, int64_t n) {
  if (!dx) return;
  for_blocks(n, [=](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T s = T(1) / (T(1) + exp_fast(-x[i]));
      dx[i] += dy[i] * s * (T(1) + x[i] * (T(1) - s));
    }
  });
}

template <class T>
void gelu_tanh_forward(const T* x, T* y, int64_t n) {
  for_blocks(n, [=](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T v = x[i];
      const T u = kGeluBeta<T> * (v + kGeluKappa<T> * v * v * v);
      y[i] = v / (T(1) + exp_fast(T(-2) * u));
    }
  });
}

// y = x s, s = sigmoid(2u):  dy/dx = s + 2 x s (1 - s) u',  u' = beta (1 + 3 kappa x^2)
template <class T>
void gelu_tanh_backward(const T* dy, const T* x, T* dx, int64_t n) {
  if (!dx) return;
  for_blocks(n, [=](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T v = x[i];
      const T u = kGeluBeta<T> * (v + kGeluKappa<T> * v * v * v);
      const T du = kGeluBeta<T> * (T(1) + T(3) * kGeluKappa<T> * v * v);
      const T s = T(1) / (T(1) + exp_fast(T(-2) * u));
      dx[i] += dy[i] * (s + T(2) * v * s * (T(1) - s) * du);
    }
  });
}

template <class T>
void swiglu_forward(const T* gate, const T* up, T* y, int64_t n) {
  for_blocks(n, [=](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = (gate[i] / (T(1) + exp_fast(-gate[i]))) * up[i];
  });
}

// dgate += dy up s (1 + g (1 - s)) ; dup += dy g s      (s = sigmoid(g))
template <class T>
void swiglu_backward(const T* dy, const T* gate, const T* up, T* dgate, T* dup, int64_t n) {
  if (dgate && dup) {
    for_blocks(n, [=](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const T g = gate[i];
        const T s = T(1) / (T(1) + exp_fast(-g));
        dgate[i] += dy[i] * up[i] * s * (T(1) + g * (T(1) - s));
        dup[i] += dy[i] * g * s;
      }
    });
  } else if (dgate) {
    for_blocks(n, [=](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const T g = gate[i];
        const T s = T(1) / (T(1) + exp_fast(-g));
        dgate[i] += dy[i] * up[i] * s * (T(1) + g * (T(1) - s));
      }
    });
  } else if (dup) {
    for_blocks(n, [=](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const T g = gate[i];
        const T s = T(1) / (T(1) + exp_fast(-g));
        dup[i] += dy[i] * g * s;
      }
    });
  }
}

#define PTRAIN_INSTANTIATE_ACTIVATION(T)                                                  \
  template void silu_forward<T>(const T*, T*, int64_t);                                   \
  template void silu_backward<T>(const T*, const T*, T*, int64_t);                        \
  template void gelu_tanh_forward<T>(const T*, T*, int64_t);                              \
  template void gelu_tanh_backward<T>(const T*, const T*, T*, int64_t);                   \
  template void swiglu_forward<T>(const T*, const T*, T*, int64_t);                       \
  template void swiglu_backward<T>(const T*, const T*, const T*, T*, T*, int64_t);
PTRAIN_INSTANTIATE_ACTIVATION(float)
PTRAIN_INSTANTIATE_ACTIVATION(double)
#undef PTRAIN_INSTANTIATE_ACTIVATION

}  // namespace ptrain::cpu
