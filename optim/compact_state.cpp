// optim/compact_state.cpp — see compact_state.h.
#include "optim/compact_state.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/rng.h"

namespace ptrain::optim {

namespace {

// The dynamic-exponent map: magnitude 10^(e-6) * f for e = 0..6 (the "exponent": how many
// decades below 1), f the midpoints of an even split of [0.1, 1] into 2^(e+s) pieces (s = 0
// for the signed map, whose top bit is the sign; 1 for the unsigned one): more codes near 1,
// fewer near 1e-6, a relative error of a few percent over seven decades.
QuantMap build(bool is_signed) {
  std::vector<double> mags;
  for (int e = 0; e < 7; ++e) {
    const int pieces = 1 << (e + (is_signed ? 0 : 1));
    const double scale = std::pow(10.0, e - 6);
    for (int k = 0; k < pieces; ++k) {
      const double lo = 0.1 + 0.9 * k / pieces, hi = 0.1 + 0.9 * (k + 1) / pieces;
      mags.push_back(scale * (lo + hi) / 2);
    }
  }
  std::sort(mags.begin(), mags.end());  // 127 (signed) or 254 (unsigned) magnitudes
  std::vector<double> v = {0.0, 1.0};
  if (is_signed) {
    v.push_back(-1.0);
    for (double m : mags) v.push_back(m);
    for (size_t i = 1; i < mags.size(); ++i) v.push_back(-mags[i]);  // the smallest negative makes room for -1
  } else {
    for (double m : mags) v.push_back(m);
  }
  PT_CHECK(v.size() == 256, "quantisation map of {} codes", v.size());
  std::sort(v.begin(), v.end());
  QuantMap map;
  for (size_t i = 0; i < 256; ++i) map.code[i] = static_cast<float>(v[i]);
  for (size_t i = 0; i < 255; ++i) map.mid[i] = (map.code[i] + map.code[i + 1]) * 0.5f;
  map.mid[255] = std::numeric_limits<float>::infinity();
  const auto search = [&](float v) {
    return static_cast<int>(std::lower_bound(map.mid.begin(), map.mid.begin() + 255, v) - map.mid.begin());
  };
  for (uint32_t h = 0; h < 65536; ++h) {
    // the bucket's smallest and largest values: low bits 0 / all ones for a positive float, the
    // other way round for a negative one (a NaN bucket: NaN compares false, so index 0 and no
    // step, as lower_bound gives)
    const bool neg = (h & 0x8000u) != 0;
    const uint32_t lo_bits = (h << 16) | (neg ? 0xffffu : 0u), hi_bits = (h << 16) | (neg ? 0u : 0xffffu);
    float lo, hi;
    std::memcpy(&lo, &lo_bits, 4);
    std::memcpy(&hi, &hi_bits, 4);
    const int first = search(lo);
    map.start[h] = static_cast<uint8_t>(first);
    if (!std::isnan(lo)) map.steps = std::max(map.steps, search(hi) - first);
  }
  return map;
}

}  // namespace

const QuantMap& signed_map() {
  static const QuantMap m = build(true);
  return m;
}
const QuantMap& unsigned_map() {
  static const QuantMap m = build(false);
  return m;
}

void stochastic_round_bf16_stream(const std::array<uint32_t, 2>& key, uint64_t first, const float* in, float* out,
                                  int64_t n) {
  constexpr int64_t kBlocks = 256;  // Philox blocks per pass: 2048 elements
  uint32_t words[4 * kBlocks];
  for (int64_t done = 0; done < n;) {
    const uint64_t at = first + static_cast<uint64_t>(done), j0 = at >> 3;
    const int64_t skip = static_cast<int64_t>(at & 7u);  // elements of block j0 before `at`
    const int64_t count = std::min<int64_t>(n - done, 8 * kBlocks - skip);
    const int64_t blocks = (skip + count + 7) / 8;
    for (int64_t b = 0; b < blocks; ++b) {
      const uint64_t j = j0 + static_cast<uint64_t>(b);
      const PhiloxCounter r = philox4x32({static_cast<uint32_t>(j), static_cast<uint32_t>(j >> 32), 0u, 0u}, key);
      for (int w = 0; w < 4; ++w) words[4 * b + w] = r[static_cast<size_t>(w)];
    }
    for (int64_t k = 0; k < count; ++k) {
      const int64_t piece = skip + k;  // 16-bit piece `piece` of the words: word piece / 2, half piece % 2
      const uint32_t r16 = (words[piece >> 1] >> (16 * (piece & 1))) & 0xffffu;
      out[done + k] = stochastic_round_bf16(in[done + k], r16);
    }
    done += count;
  }
}

void Quantized::resize(int64_t n) {
  q.assign(static_cast<size_t>(n), 0);
  absmax.assign(static_cast<size_t>((n + kQuantBlock - 1) / kQuantBlock), 0.0f);
}

int64_t Quantized::block_len(int64_t b) const { return std::min(kQuantBlock, numel() - b * kQuantBlock); }

void Quantized::decode_block(const QuantMap& map, int64_t b, float* out) const {
  const int64_t n = block_len(b), o = b * kQuantBlock;
  const float a = absmax[static_cast<size_t>(b)];
  for (int64_t i = 0; i < n; ++i) out[i] = map.code[q[static_cast<size_t>(o + i)]] * a;
}

void Quantized::encode_block(const QuantMap& map, int64_t b, const float* in) {
  const int64_t n = block_len(b), o = b * kQuantBlock;
  float a = 0;
  for (int64_t i = 0; i < n; ++i) a = std::max(a, std::fabs(in[i]));
  absmax[static_cast<size_t>(b)] = a;
  // the code of the element at absmax is exactly +-1.0 (x / x == 1)
  for (int64_t i = 0; i < n; ++i) q[static_cast<size_t>(o + i)] = a > 0 ? map.encode(in[i] / a) : map.encode(0.0f);
}

}  // namespace ptrain::optim
