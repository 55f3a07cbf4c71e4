// parallel/partition.h — decoder blocks of each pipeline stage.
//
// S = pp * virtual_stages global stages; global stage g = c * pp + r is chunk c of pipeline
// rank r (Megatron's interleaving). Blocks are assigned in order, contiguously: stage g gets
// counts[g] blocks. Balanced split: every stage gets floor(L/S); the L % S extra blocks go to
// the middle stages first (1 .. S-2), then to stage 0 and the last stage, which already carry
// the embedding and the LM head with the loss.
#pragma once
#include <optional>
#include <vector>

namespace ptrain::parallel {

/// Blocks per global stage (explicit `counts` are checked: S entries, each >= 1, sum L).
std::vector<int> stage_layer_counts(int layers, int stages, const std::optional<std::vector<int>>& counts = {});
/// Global block indices of every global stage.
std::vector<std::vector<int>> partition_layers(int layers, int stages, const std::optional<std::vector<int>>& counts = {});

}  // namespace ptrain::parallel
