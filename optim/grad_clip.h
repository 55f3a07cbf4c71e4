// optim/grad_clip.h — global gradient norm, clipping, finiteness check.
//
// Contract (DESIGN.md): clipping by the global norm over all parameters (each counted once),
// coefficient clip/(norm+1e-6) capped at 1. The norm is computed in double and is
// deterministic: squares summed over fixed chunks of kNormChunk elements, the chunk partials
// combined in index order (in groups of kNormGroup) (parameters in list order), never with an omp reduction, so the
// result is bit-identical across thread counts. A distributed run sums grad_sum_squares()
// of every rank's owned parameters (in rank order) and takes the square root itself.
#pragma once
#include <cstdint>
#include <vector>

#include "optim/param_ref.h"

namespace ptrain::optim {

/// Elements per partial sum of grad_sum_squares (fixed: changing it changes the bits).
inline constexpr int64_t kNormChunk = 4096;
/// The chunk partials are added in groups of kNormGroup consecutive chunks, each group in
/// index order, then the group sums in order (fixed: the device's final kernel sums the same
/// way, one thread per group, so its result is these bits).
inline constexpr int64_t kNormGroup = 1024;

/// sum_p sum_i (double)grad_p[i]^2 over the given parameters, deterministic (see above).
double grad_sum_squares(const std::vector<ParamRef>& params);

/// sqrt(grad_sum_squares(params)): the pre-clip global L2 norm of the gradients.
double global_grad_norm(const std::vector<ParamRef>& params);

/// min(1, max_norm / (norm + 1e-6)); 1 (no clipping) when max_norm <= 0 or norm is not finite
/// (a non-finite norm is the caller's to detect: fp16 overflow skip, or stop the run).
double clip_coefficient(double norm, double max_norm);

/// grad *= (float)coef for every parameter, in float as torch's clip_grad_norm_ does
/// (bf16/f16 gradients are rounded again on store). No-op when coef == 1.
void scale_grads(std::vector<ParamRef>& params, double coef);

/// Single-process convenience: norm = global_grad_norm; scale_grads(clip_coefficient(norm,
/// max_norm)); returns the pre-clip norm.
double clip_grad_norm(std::vector<ParamRef>& params, double max_norm);

/// True when no gradient element is Inf or NaN.
bool all_finite(const std::vector<ParamRef>& params);

}  // namespace ptrain::optim
