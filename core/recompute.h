// core/recompute.h — activation recomputation as a saved-tensor hook policy beside the tape.
//
// Code marks *regions*: a function of some input tensors (a decoder block; the attention core;
// an activation function) run through recompute_region(). Outside a RecomputeHooks policy that
// drops the region's kind, recompute_region() just calls the function: a model costs nothing
// for being recomputable. Under such a policy (Tape::set_hooks), while the region runs:
//   * every tensor an op saves (Tape::save) is dropped, except the region's inputs (and views
//     of them) and parameters, which are kept as they are; the saved tensor becomes a handle
//     (region, index of the save);
//   * for kinds whose output is cheap to recompute (activation), the region's outputs are
//     remembered, so when a later op outside the region saves one of them it is dropped too.
// In backward, the first unpack of a dropped tensor reruns the region's function once, on
// aliases of its kept inputs, on a scratch tape whose hooks capture the saves in order (the
// same code runs, so the i-th save is the same tensor; the count is checked), then hands out
// the captured tensors. A captured tensor is freed as soon as the last handle to it dies (its
// tape entry ran backward), so a block's recomputed activations live only through the
// block's backward. TP collectives inside a region run again, in the same order on every TP
// rank (every rank runs the same backward). No op today draws random numbers; one that does
// must draw from a counter-based stream keyed by (seed, step, micro-batch, op), so the rerun
// draws the same values (core/rng.h).
//
// Modes (train.recompute):
//   none       no region drops anything.
//   selective  attention_core and activation regions: the attention probabilities [B,H,T,T]
//              and the activation functions' outputs are recomputed (Megatron's selective).
//   full       block regions: each block keeps only its input; its forward reruns inside its
//              backward.
// Invariants: results are bit-identical to `none` (the same kernels on the same inputs);
// nested regions inside a dropping region run as plain calls; regions never nest across
// tapes (a pipeline chunk's tape owns its regions).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string_view>
#include <vector>

#include "core/autograd.h"

namespace ptrain {

enum class RecomputeMode : uint8_t { none, selective, full };
/// What a region is, so a policy can choose what to recompute.
enum class RegionKind : uint8_t { block, attention_core, activation };

std::string_view recompute_mode_name(RecomputeMode m);

using RegionFn = std::function<std::vector<Tensor>(const std::vector<Tensor>&)>;

namespace detail {
struct Region;
}

/// The recompute policy of one tape (install with Tape::set_hooks; it must outlive the tape's
/// backward). `inner` (optional) receives the tensors the policy keeps, and the activation inputs
/// of each dropping region once its forward ended (e.g. activation offload: core/activation_offload.h).
class RecomputeHooks : public SavedTensorHooks {
 public:
  explicit RecomputeHooks(RecomputeMode mode, SavedTensorHooks* inner = nullptr);
  ~RecomputeHooks() override;
  std::shared_ptr<void> pack(const Tensor& t) override;
  Tensor unpack(const std::shared_ptr<void>& handle) override;

  RecomputeMode mode() const { return mode_; }
  /// Whether regions of `kind` drop their saves under this policy.
  bool drops(RegionKind kind) const;

  struct Stats {
    int64_t regions = 0;      ///< dropping regions entered in forward
    int64_t dropped = 0;      ///< saves dropped (handed out as handles)
    int64_t kept = 0;         ///< saves kept (inputs, parameters, outside regions)
    int64_t recomputed = 0;   ///< regions rerun in backward
  };
  const Stats& stats() const { return stats_; }

 private:
  friend std::vector<Tensor> recompute_region(RegionKind, const std::vector<Tensor>&, const RegionFn&);
  void recompute(detail::Region& r);
  std::shared_ptr<void> keep(const Tensor& t);

  RecomputeMode mode_;
  SavedTensorHooks* inner_;
  Tape* tape_ = nullptr;  ///< the tape whose forward entered the first region (set on entry)
  std::vector<std::shared_ptr<detail::Region>> stack_;  ///< regions running now (innermost last)
  /// Outputs of regions whose outputs are recomputed: slot on tape_ -> (region, output index).
  /// Held until backward starts (the first unpack): a later save of the output needs the region
  /// even when nothing inside it was dropped; after forward nothing saves any more.
  std::map<int64_t, std::pair<std::shared_ptr<detail::Region>, size_t>> outputs_;
  Stats stats_;
};

/// Runs fn(inputs) as a region of `kind` (see the header comment). fn must be a deterministic
/// function of its inputs, the parameters and what it captures by value.
std::vector<Tensor> recompute_region(RegionKind kind, const std::vector<Tensor>& inputs, const RegionFn& fn);
/// One output.
Tensor recompute_region(RegionKind kind, const std::vector<Tensor>& inputs,
                        const std::function<Tensor(const std::vector<Tensor>&)>& fn);

}  // namespace ptrain
