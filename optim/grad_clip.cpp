// optim/grad_clip.cpp — deterministic chunked gradient norm, clipping and finiteness check.
//
// Parallel loops run over the chunk list of optim/chunks.h; a reduction stores one partial
// per chunk and combines them in index order afterwards (no omp reduction).
#include "optim/grad_clip.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "optim/chunks.h"
#include "optim/device_optim.h"

namespace ptrain::optim {

namespace {

// Sum of squares of x[0..n) in double: kLanes fixed lanes (vectorised; 4 AVX accumulators
// hide the add latency), combined by a fixed pairwise tree, then the tail in order. Depends
// only on the data, so it is the same on every thread (and, with -ffp-contract=off, on every
// x86 build, FMA or not).
constexpr int kLanes = 16;
double chunk_sum_squares(const float* x, int64_t n) {
  double acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const double v = x[i + j];
      acc[j] += v * v;
    }
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  double s = acc[0];
  for (; i < n; ++i) {
    const double v = x[i];
    s += v * v;
  }
  return s;
}

int64_t total_numel(const std::vector<ParamRef>& params) {
  int64_t n = 0;
  for (const ParamRef& p : params) n += p.grad.numel();
  return n;
}

}  // namespace

double grad_sum_squares(const std::vector<ParamRef>& params) {
  if (check_param_refs(params) == Device::cuda) return detail::device_grad_sum_squares(params);
  const std::vector<detail::Chunk> chunks = detail::make_chunks(params, kNormChunk);
  std::vector<double> partial(chunks.size());
  const int64_t nc = static_cast<int64_t>(chunks.size());
#pragma omp parallel for schedule(static) if (total_numel(params) > detail::kParallelMin)
  for (int64_t k = 0; k < nc; ++k) {
    const detail::Chunk& c = chunks[k];
    partial[k] = chunk_sum_squares(params[c.param].grad.data<float>() + c.begin, c.end - c.begin);
  }
  double sum = 0.0;  // index order, in groups of kNormGroup (the device kernel's order)
  for (size_t b = 0; b < partial.size(); b += kNormGroup) {
    double group = 0.0;
    for (size_t i = b; i < std::min(partial.size(), b + kNormGroup); ++i) group += partial[i];
    sum += group;
  }
  return sum;
}

double global_grad_norm(const std::vector<ParamRef>& params) { return std::sqrt(grad_sum_squares(params)); }

double clip_coefficient(double norm, double max_norm) {
  if (!(max_norm > 0) || !std::isfinite(norm)) return 1.0;
  const double c = max_norm / (norm + 1e-6);
  return c < 1.0 ? c : 1.0;
}

void scale_grads(std::vector<ParamRef>& params, double coef) {
  if (coef == 1.0) return;
  check_param_refs(params);
  const float c = static_cast<float>(coef);
  const std::vector<detail::Chunk> chunks = detail::make_chunks(params, 16384);
  const int64_t nc = static_cast<int64_t>(chunks.size());
#pragma omp parallel for schedule(static) if (total_numel(params) > detail::kParallelMin)
  for (int64_t k = 0; k < nc; ++k) {
    const detail::Chunk& ch = chunks[k];
    const Tensor& g = params[ch.param].grad;
    float* x = g.data<float>() + ch.begin;
    const int64_t n = ch.end - ch.begin;
    for (int64_t i = 0; i < n; ++i) x[i] *= c;
    round_to_dtype(x, n, g.dtype());  // bf16/f16 emulation: round on store (no-op for f32)
  }
}

double clip_grad_norm(std::vector<ParamRef>& params, double max_norm) {
  const double norm = global_grad_norm(params);
  scale_grads(params, clip_coefficient(norm, max_norm));
  return norm;
}

bool all_finite(const std::vector<ParamRef>& params) {
  check_param_refs(params);
  const std::vector<detail::Chunk> chunks = detail::make_chunks(params, 16384);
  const int64_t nc = static_cast<int64_t>(chunks.size());
  std::vector<unsigned char> bad(chunks.size(), 0);
#pragma omp parallel for schedule(static) if (total_numel(params) > detail::kParallelMin)
  for (int64_t k = 0; k < nc; ++k) {
    const detail::Chunk& ch = chunks[k];
    const float* x = params[ch.param].grad.data<float>() + ch.begin;
    const int64_t n = ch.end - ch.begin;
    uint32_t any = 0;  // exponent all ones <=> Inf or NaN; bit test vectorises, isfinite may not
    for (int64_t i = 0; i < n; ++i) {
      uint32_t u;
      std::memcpy(&u, x + i, 4);
      any |= static_cast<uint32_t>((u & 0x7f800000u) == 0x7f800000u);
    }
    bad[k] = any != 0;
  }
  for (unsigned char b : bad)
    if (b) return false;
  return true;
}

}  // namespace ptrain::optim
