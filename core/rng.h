// core/rng.h — counter-based random numbers (Philox4x32-10, Salmon et al. 2011).
//
// Every random draw in ptrain is a pure function of (key, counter), never of a
// generator's history: parameter init keys by (seed, full parameter name) and
// counts by element index, so any slice of a tensor can be drawn on its own and
// every parallel layout starts from the same weights; the data sampler keys by
// (seed, epoch). Results are identical across compilers and standard libraries
// (no std::*_distribution, no std::shuffle).
#pragma once
#include <array>
#include <cmath>
#include <cstdint>
#include <string_view>
#include <vector>

namespace ptrain {

using PhiloxKey = std::array<uint32_t, 2>;
using PhiloxCounter = std::array<uint32_t, 4>;

/// Philox4x32 with 10 rounds.
inline PhiloxCounter philox4x32(PhiloxCounter c, PhiloxKey k) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    const uint64_t p0 = static_cast<uint64_t>(M0) * c[0];
    const uint64_t p1 = static_cast<uint64_t>(M1) * c[2];
    c = {static_cast<uint32_t>(p1 >> 32) ^ c[1] ^ k[0], static_cast<uint32_t>(p1),
         static_cast<uint32_t>(p0 >> 32) ^ c[3] ^ k[1], static_cast<uint32_t>(p0)};
    k[0] += W0;
    k[1] += W1;
  }
  return c;
}

/// 64-bit FNV-1a of a string, mixed with splitmix64: a stable hash for keys.
inline uint64_t stable_hash(std::string_view s, uint64_t seed = 0) {
  uint64_t h = 1469598103934665603ull ^ (seed * 0x9E3779B97F4A7C15ull);
  for (unsigned char ch : s) {
    h ^= ch;
    h *= 1099511628211ull;
  }
  h += 0x9E3779B97F4A7C15ull;
  h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
  h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
  return h ^ (h >> 31);
}

/// A key from (seed, name): used for parameter init.
inline PhiloxKey make_key(uint64_t seed, std::string_view name) {
  const uint64_t h = stable_hash(name, seed);
  return {static_cast<uint32_t>(h), static_cast<uint32_t>(h >> 32)};
}
/// A key from (seed, domain tag, index): used for e.g. the sampler's epoch permutations.
inline PhiloxKey make_key(uint64_t seed, std::string_view domain, uint64_t index) {
  const uint64_t h = stable_hash(domain, seed ^ (index * 0xD6E8FEB86659FD93ull));
  return {static_cast<uint32_t>(h), static_cast<uint32_t>(h >> 32)};
}

/// Uniform in (0, 1] from 32 random bits (never 0, so log() is safe).
inline double u32_to_unit(uint32_t x) { return (static_cast<double>(x) + 1.0) * (1.0 / 4294967296.0); }

/// 64 random bits at counter `i` (and stream `stream`).
inline uint64_t random_u64(PhiloxKey key, uint64_t i, uint32_t stream = 0) {
  auto r = philox4x32({static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32), stream, 0u}, key);
  return (static_cast<uint64_t>(r[1]) << 32) | r[0];
}

/// Uniform integer in [0, n) at counter i (multiply-shift; deterministic everywhere).
inline uint64_t random_below(PhiloxKey key, uint64_t i, uint64_t n, uint32_t stream = 0) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(random_u64(key, i, stream)) * n) >> 64);
}

/// Element `i` of a standard-normal sequence under `key` (Box-Muller on one Philox block;
/// elements 2j and 2j+1 share a block). Computed in double.
inline double random_normal(PhiloxKey key, uint64_t i) {
  const uint64_t j = i >> 1;
  auto r = philox4x32({static_cast<uint32_t>(j), static_cast<uint32_t>(j >> 32), 0x6e6f726du, 0u}, key);
  const double u1 = u32_to_unit(r[0]);
  const double u2 = u32_to_unit(r[1]);
  const double rad = std::sqrt(-2.0 * std::log(u1));
  const double ang = 6.283185307179586476925 * u2;
  return (i & 1) ? rad * std::sin(ang) : rad * std::cos(ang);
}

/// Fisher–Yates permutation of [0, n) driven by `key` (step i swaps i with a draw below i+1).
inline std::vector<int64_t> random_permutation(PhiloxKey key, int64_t n) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[static_cast<size_t>(i)] = i;
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(random_below(key, static_cast<uint64_t>(i), static_cast<uint64_t>(i + 1)));
    std::swap(p[static_cast<size_t>(i)], p[static_cast<size_t>(j)]);
  }
  return p;
}

}  // namespace ptrain
