// parallel/partition.cpp — see partition.h.
#include "parallel/partition.h"

#include "core/error.h"

namespace ptrain::parallel {

std::vector<int> stage_layer_counts(int layers, int stages, const std::optional<std::vector<int>>& counts) {
  PT_CHECK(stages >= 1 && layers >= stages, "cannot split {} layers over {} pipeline stages", layers, stages);
  if (counts) {
    PT_CHECK(static_cast<int>(counts->size()) == stages, "stage_layers has {} entries for {} stages", counts->size(),
             stages);
    int sum = 0;
    for (int c : *counts) {
      PT_CHECK(c >= 1, "stage_layers entries must be >= 1");
      sum += c;
    }
    PT_CHECK(sum == layers, "stage_layers sum to {}, expected {}", sum, layers);
    return *counts;
  }
  std::vector<int> r(static_cast<size_t>(stages), layers / stages);
  int extra = layers % stages;
  std::vector<int> order;
  for (int g = 1; g + 1 < stages; ++g) order.push_back(g);
  order.push_back(0);
  if (stages > 1) order.push_back(stages - 1);
  for (size_t i = 0; extra > 0; i = (i + 1) % order.size(), --extra) ++r[static_cast<size_t>(order[i])];
  return r;
}

std::vector<std::vector<int>> partition_layers(int layers, int stages, const std::optional<std::vector<int>>& counts) {
  const auto n = stage_layer_counts(layers, stages, counts);
  std::vector<std::vector<int>> r(n.size());
  int next = 0;
  for (size_t g = 0; g < n.size(); ++g)
    for (int k = 0; k < n[g]; ++k) r[g].push_back(next++);
  return r;
}

}  // namespace ptrain::parallel
