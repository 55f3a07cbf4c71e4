// core/dtype.h — element types and low-precision rounding.
//
// On the CPU, bf16 and f16 tensors are *emulated*: they are stored as float,
// and every value stored is rounded to the low-precision grid (round to
// nearest even, as __float2bfloat16_rn / __float2half_rn). So mixed-precision
// logic runs, and is tested, without a GPU. On a CUDA device the same dtypes
// are stored in 2 bytes. f64 exists for finite-difference gradient tests only.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace ptrain {

enum class DType : uint8_t { f32, bf16, f16, i32, f64 };
enum class Device : uint8_t { cpu, cuda };

std::string_view dtype_name(DType t);
std::string_view device_name(Device d);
/// Parses "fp32"/"f32"/"float32", "bf16"/"bfloat16", "fp16"/"f16"/"float16", "i32", "f64"; throws UserError.
DType parse_dtype(std::string_view s);

/// Bytes per element in memory on `dev` (CPU emulates bf16/f16 in 4-byte floats).
inline size_t element_size(DType t, Device dev = Device::cpu) {
  switch (t) {
    case DType::f32: return 4;
    case DType::bf16:
    case DType::f16: return dev == Device::cpu ? 4 : 2;
    case DType::i32: return 4;
    case DType::f64: return 8;
  }
  return 0;
}
inline bool is_float(DType t) { return t != DType::i32; }
inline bool is_low_precision(DType t) { return t == DType::bf16 || t == DType::f16; }

/// fp32 -> bf16 bits, round to nearest even; NaN stays NaN (quiet).
inline uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_bits_to_float(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float round_bf16(float f) { return bf16_bits_to_float(float_to_bf16_bits(f)); }

/// fp32 -> IEEE half bits, round to nearest even, overflow to inf, subnormals kept.
uint16_t float_to_f16_bits(float f);
float f16_bits_to_float(uint16_t h);
inline float round_f16(float f) { return f16_bits_to_float(float_to_f16_bits(f)); }

/// Rounds `n` floats in place to the grid of `t` (no-op for f32).
void round_to_dtype(float* x, int64_t n, DType t);

}  // namespace ptrain
