// optim/compact_state.h — the pieces of a compact optimizer state (optim.state: bf16-sr | 8bit).
//
// * Stochastic rounding to bf16: x rounds up to the next bf16 value with probability equal to
//   its distance from the lower one (add 16 random bits below bf16's mantissa, truncate). The
//   bits come from a counter-based stream (core/rng.h) keyed by (seed, parameter, step) and
//   counted by element (element e: 16 bits of Philox block e / 8), so a draw depends on nothing
//   but those: any thread count, any chunking, and a resumed run draw the same bits.
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

/// The 16 random bits of element e of a stochastic-rounding stream: Philox block e / 8 under
/// `key`, its (e % 8)-th 16-bit piece (one Philox call serves eight elements).
inline uint32_t sr_bits(const uint32_t (&block)[4], uint64_t e) {
  return (block[(e & 7u) >> 1] >> (16u * (e & 1u))) & 0xffffu;
}

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

/// out[k] = in[k] stochastically rounded to bf16 with the bits of element first + k of the stream
/// `key` (sr_bits of Philox block (first + k) / 8), for k in [0, n): the Philox blocks are drawn
/// in one pass (a loop the compiler vectorises), then the rounding in another. `out` may be `in`.
void stochastic_round_bf16_stream(const std::array<uint32_t, 2>& key, uint64_t first, const float* in, float* out,
                                  int64_t n);

/// A 256-entry dynamic-exponent code book (ascending).
struct QuantMap {
  std::array<float, 256> code{};
  /// mid[i]: the midpoint between code[i] and code[i + 1] (nearest-code search); mid[255] = +inf
  std::array<float, 256> mid{};
  /// Per bucket of floats sharing their top 16 bits (sign, exponent, 7 mantissa bits): the
  /// index of the first midpoint >= the bucket's smallest value. encode() starts there and takes
  /// `steps` branch-free steps over the midpoints inside the bucket (steps: the most any bucket
  /// holds, 1 or 2): exactly std::lower_bound over the midpoints, without its eight
  /// unpredictable branches.
  std::array<uint8_t, 65536> start{};
  int steps = 0;
  /// The nearest code's index for v (ties: the lower code): the first midpoint >= v.
  uint8_t encode(float v) const {
    uint32_t b;
    std::memcpy(&b, &v, 4);
    unsigned i = start[b >> 16];
    for (int k = 0; k < steps; ++k) i += mid[i] < v ? 1u : 0u;  // stays once mid[i] >= v; mid[255] stops it
    return static_cast<uint8_t>(i);
  }
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
