// core/ops_table.h — the table of ops. Adding an op means adding it here, and the
// static_assert makes sure its name is added too (ggml's OP_COUNT guard).
#pragma once
#include <array>
#include <cstdint>
#include <string_view>

namespace ptrain {

enum class OpId : uint8_t {
  linear,
  add,
  mul,
  scale,
  embedding,
  rms_norm,
  layer_norm,
  rope,
  attention,
  silu,
  gelu,
  swiglu,
  cross_entropy,
  view,
  split,
  count
};

inline constexpr std::array<std::string_view, static_cast<size_t>(OpId::count)> kOpNames = {
    "linear", "add", "mul", "scale", "embedding", "rms_norm", "layer_norm", "rope",
    "attention", "silu", "gelu", "swiglu", "cross_entropy", "view", "split"};
constexpr bool all_ops_named() {
  for (auto n : kOpNames)
    if (n.empty()) return false;
  return true;
}
static_assert(all_ops_named(), "an op was added to OpId without a name in kOpNames");

inline std::string_view op_name(OpId op) { return kOpNames[static_cast<size_t>(op)]; }

}  // namespace ptrain
