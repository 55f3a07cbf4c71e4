// optim/compact_state.cpp — see compact_state.h.
#include "optim/compact_state.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

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
  return map;
}

}  // namespace

uint8_t QuantMap::encode(float v) const {
  // the first midpoint above v: codes below it are nearer
  const auto it = std::lower_bound(mid.begin(), mid.end(), v);
  return static_cast<uint8_t>(it - mid.begin());
}

const QuantMap& signed_map() {
  static const QuantMap m = build(true);
  return m;
}
const QuantMap& unsigned_map() {
  static const QuantMap m = build(false);
  return m;
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
