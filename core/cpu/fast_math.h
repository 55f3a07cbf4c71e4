// core/cpu/fast_math.h — the float arithmetic the CPU reference kernels share and the device
// kernels reproduce operation for operation (core/cuda/fast_math.cuh): a fused multiply-add
// written out, and the exp of softmax and cross-entropy.
//
// Why written out: the compiler may contract a*b + c into one fma or not, differently per
// site, target and compiler (nvcc contracts by default). Results that must agree bit for bit
// between the CPU and the device (DESIGN.md: "the CPU reference rounds exactly where the
// kernel stores", and in the emulated build the device run equals the CPU run) therefore
// spell out every multiply-add that matters as fmadd (std::fma where the target has FMA, as
// every x86 CPU of the last decade and every GPU does; a plain multiply and add otherwise, in
// which case the CPU and the device may differ in the last bit) and every other operation
// as a separate rounding.
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>

namespace ptrain::cpu {

/// a*b + c with one rounding where the target has FMA (see the file comment).
inline float fmadd(float a, float b, float c) {
#ifdef __FMA__
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}
inline double fmadd(double a, double b, double c) { return a * b + c; }  // f64 (gradient tests)

/// exp(x) in fp32 for softmax arguments (x <= ~0), branch-free (vectorisable): n = round(x
/// log2 e) by the 1.5 * 2^23 trick, r = x - n ln 2 (Cody-Waite two-part ln 2), exp(r) by the
/// Cephes degree-6 minimax polynomial (~1 ulp), times 2^n from the exponent bits. 0 below
/// ln(FLT_MIN) (no denormals); x > 88 is clamped; NaN propagates. Mirrored by cuda's cpu_exp.
inline float exp_poly(float x) {
  constexpr float kLo = -87.3365478f, kMagic = 12582912.0f;  // ln(FLT_MIN), 1.5 * 2^23
  const float xc = x < kLo ? kLo : (x > 88.0f ? 88.0f : x);
  const float t = fmadd(xc, 1.44269504088896341f, kMagic);
  const float n = t - kMagic;
  float r = fmadd(-n, 0.693359375f, xc);
  r = fmadd(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = fmadd(p, r, 1.3981999507e-3f);
  p = fmadd(p, r, 8.3334519073e-3f);
  p = fmadd(p, r, 4.1665795894e-2f);
  p = fmadd(p, r, 1.6666665459e-1f);
  p = fmadd(p, r, 5.0000001201e-1f);
  p = fmadd(p, r * r, r) + 1.0f;
  // 2^n from the bits of t: bits(t) = bits(kMagic) + n, so the exponent field is n + 127.
  const uint32_t e = (std::bit_cast<uint32_t>(t) - std::bit_cast<uint32_t>(kMagic) + 127u) << 23;
  const float y = p * std::bit_cast<float>(e);
  return x < kLo ? 0.0f : y;
}
inline double exp_poly(double x) { return std::exp(x); }  // f64 (gradient tests)

}  // namespace ptrain::cpu
