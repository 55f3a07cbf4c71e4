// optim/compact_state.h — the pieces of a compact optimizer state (optim.state: bf16-sr | 8bit).
//
// * Stochastic rounding to bf16: x rounds up to the next bf16 value with probability equal to
//   its distance from the lower one (add 16 random bits below bf16's mantissa, truncate). The
//   bits come from a counter-based stream (core/rng.h) keyed by (seed, parameter, step) and
//   counted by element, so a draw depends on nothing but those: any thread count, any chunking,
//   and a resumed run draw the same bits.
// * Block-wise 8-bit quantisation (Dettmers et al. 2021, "8-bit Optimizers via Block-wise
//   Quantization"): blocks of kQuantBlock elements, each scaled by its absmax, each value the
//   nearest of 256 codes of a dynamic-exponent map (a signed map for the first moment, an
//   unsigned one for the second). Both maps hold 0 and 1.0 (the signed map -1.0 too), so the
//   element that sets a block's absmax decodes to it exactly and quantise(dequantise(q)) == q:
//   a checkpoint may hold the decoded fp32 moments and a resume is still bit-exact.
#pragma once
#include <array>
#include <cstdint>
#include <cstring>
#include <vector>

namespace ptrain::optim {

inline constexpr int64_t kQuantBlock = 2048;
/// Parameters smaller than this keep fp32 moments under 8bit (norm weights, biases: a few KB;
/// quantising them saves nothing and costs accuracy).
inline constexpr int64_t kQuantMinElements = 4096;

/// x rounded to bf16 (as a float) using the low 16 bits of `r`.
inline float stochastic_round_bf16(float x, uint32_t r) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  if ((b & 0x7f800000u) == 0x7f800000u) return x;  // inf / nan: left as they are
  b = (b + (r & 0xffffu)) & 0xffff0000u;
  float y;
  std::memcpy(&y, &b, 4);
  return y;
}

/// A 256-entry dynamic-exponent code book (ascending).
struct QuantMap {
  std::array<float, 256> code{};
  std::array<float, 255> mid{};  ///< midpoints between neighbours (nearest-code search)
  /// The nearest code's index for v in [-1, 1] (ties: the lower code).
  uint8_t encode(float v) const;
  float decode(uint8_t q) const { return code[q]; }
};
const QuantMap& signed_map();
const QuantMap& unsigned_map();

/// 8-bit codes of one tensor and one absmax per block.
struct Quantized {
  std::vector<uint8_t> q;
  std::vector<float> absmax;
  int64_t numel() const { return static_cast<int64_t>(q.size()); }
  void resize(int64_t n);  ///< zeros
  /// values[0, n) of block b decoded into out.
  void decode_block(const QuantMap& map, int64_t b, float* out) const;
  /// values of block b (n = its length) quantised.
  void encode_block(const QuantMap& map, int64_t b, const float* in);
  int64_t block_len(int64_t b) const;
  size_t bytes() const { return q.size() + absmax.size() * sizeof(float); }
};

}  // namespace ptrain::optim
