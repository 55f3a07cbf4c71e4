// optim/chunks.h — internal: fixed-size chunks over a list of parameters.
//
// Invariant: the chunk list depends only on the parameter shapes and the chunk size, never
// on the thread count, so a reduction that stores one partial per chunk and combines the
// partials in list order is bit-identical across thread counts (DESIGN.md, determinism).
#pragma once
#include <cstdint>
#include <vector>

#include "optim/param_ref.h"

namespace ptrain::optim::detail {

struct Chunk {
  size_t param;   ///< index into the ParamRef list
  int64_t begin;  ///< element range [begin, end) of that parameter
  int64_t end;
};

/// Chunks of `size` elements of every parameter in order (the last one of a parameter may be
/// shorter; empty parameters give none).
inline std::vector<Chunk> make_chunks(const std::vector<ParamRef>& params, int64_t size) {
  std::vector<Chunk> out;
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t n = params[i].param.numel();
    for (int64_t b = 0; b < n; b += size) out.push_back({i, b, b + size < n ? b + size : n});
  }
  return out;
}

/// Loops over fewer elements than this stay on one thread (a parallel region costs more).
inline constexpr int64_t kParallelMin = 1 << 15;

}  // namespace ptrain::optim::detail
