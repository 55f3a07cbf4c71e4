// core/dtype.cpp — dtype names and IEEE half conversion.
#include "core/dtype.h"

#include "core/error.h"

namespace ptrain {

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "fp32";
    case DType::bf16: return "bf16";
    case DType::f16: return "fp16";
    case DType::i32: return "i32";
    case DType::f64: return "f64";
  }
  return "?";
}

std::string_view device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

DType parse_dtype(std::string_view s) {
  if (s == "fp32" || s == "f32" || s == "float32") return DType::f32;
  if (s == "bf16" || s == "bfloat16") return DType::bf16;
  if (s == "fp16" || s == "f16" || s == "float16") return DType::f16;
  if (s == "i32" || s == "int32") return DType::i32;
  if (s == "f64" || s == "fp64" || s == "float64") return DType::f64;
  throw UserError(fmt::format("unknown dtype '{}' (accepted: fp32, bf16, fp16)", s));
}

uint16_t float_to_f16_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520 -> inf
  if (ax < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    // value = ax as float; half subnormal unit is 2^-24. Round to nearest even.
    float af;
    std::memcpy(&af, &ax, 4);
    float scaled = af * 16777216.0f;  // / 2^-24, exact (power of two)
    float r = std::nearbyint(scaled);   // default rounding mode is nearest-even
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(r));
  }
  // normal: rebias exponent 127 -> 15, keep 10 mantissa bits with RNE.
  uint32_t mant_round = ax + 0xfffu + ((ax >> 13) & 1u);
  uint32_t h = (mant_round >> 13) - ((127u - 15u) << 10);
  return static_cast<uint16_t>(sign | h);
}

float f16_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  uint32_t out;
  if (exp == 0) {
    float v = static_cast<float>(mant) * (1.0f / 16777216.0f);
    std::memcpy(&out, &v, 4);
    out |= sign;
  } else if (exp == 31) {
    out = sign | 0x7f800000u | (mant << 13);
  } else {
    out = sign | ((exp + 112u) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &out, 4);
  return f;
}

void round_to_dtype(float* x, int64_t n, DType t) {
  if (t == DType::bf16) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) x[i] = round_bf16(x[i]);
  } else if (t == DType::f16) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) x[i] = round_f16(x[i]);
  }
}

}  // namespace ptrain
