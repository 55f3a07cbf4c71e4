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
  // Implemented in parallel/tp_ops.h (they need a Communicator); see op_lives_in_parallel().
  tp_copy,              ///< Megatron f: identity forward, all-reduce of the gradient
  tp_reduce,            ///< Megatron g: all-reduce forward, identity backward
  sp_gather,            ///< sequence parallel: all-gather rows / reduce-scatter gradient
  sp_reduce_scatter,    ///< sequence parallel: reduce-scatter rows / all-gather gradient
  sp_split,             ///< sequence parallel: this rank's rows / all-gather gradient
  vocab_cross_entropy,  ///< vocab-parallel cross-entropy over a logits shard
  vocab_embedding,      ///< vocab-parallel embedding over a table shard
  count
};

inline constexpr std::array<std::string_view, static_cast<size_t>(OpId::count)> kOpNames = {
    "linear", "add", "mul", "scale", "embedding", "rms_norm", "layer_norm", "rope",
    "attention", "silu", "gelu", "swiglu", "cross_entropy", "view", "split",
    "tp_copy", "tp_reduce", "sp_gather", "sp_reduce_scatter", "sp_split", "vocab_cross_entropy", "vocab_embedding"};
constexpr bool all_ops_named() {
  for (auto n : kOpNames)
    if (n.empty()) return false;
  return true;
}
static_assert(all_ops_named(), "an op was added to OpId without a name in kOpNames");

inline std::string_view op_name(OpId op) { return kOpNames[static_cast<size_t>(op)]; }

/// Ops whose implementation lives in parallel/tp_ops.cpp rather than core/ops.cpp (they take a
/// Communicator, which core must not know). core's op-coverage test exempts exactly these;
/// tests/parallel/test_tp_ops.cpp requires a finite-difference case for each of them instead.
constexpr bool op_lives_in_parallel(OpId op) {
  switch (op) {
    case OpId::tp_copy:
    case OpId::tp_reduce:
    case OpId::sp_gather:
    case OpId::sp_reduce_scatter:
    case OpId::sp_split:
    case OpId::vocab_cross_entropy:
    case OpId::vocab_embedding:
      return true;
    default:
      return false;
  }
}

}  // namespace ptrain
