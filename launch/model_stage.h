// launch/model_stage.h — the pipeline Stage over this rank's chunks of a CausalLM.
//
// Chunk c of pipeline rank r is global stage g = c * pp + r and runs the decoder blocks
// `chunk_blocks[c]` (global indices, ascending); global stage 0 first embeds the tokens,
// the last global stage ends with the final norm, the LM head and the loss. One tape per
// (chunk, micro-batch) lives from its forward to its backward (or to its deferred weight
// gradients under zero-bubble), so the memory a schedule keeps is exactly its in-flight
// micro-batches. The stage knows nothing of the schedule: the schedule calls it. With a
// recompute mode other than none each tape gets a RecomputeHooks policy (core/recompute.h);
// with activation offload (offload_prefetch > 0, device tensors) an ActivationOffload
// (core/activation_offload.h) as its inner policy, told where each decoder block begins and ends.
//
// Invariants:
//  * set_batch() is called before a step's schedule runs; micro-batch m is rows
//    [m*micro, (m+1)*micro) of the step's local batch.
//  * The loss of micro-batch m is weight · Σ token CE (weight = 1 / tokens in the global
//    batch); its backward is seeded with the loss scale (fp16), so gradients come out scaled.
//  * The last backward (or weight-gradient) pass of each chunk in a step reports every
//    parameter gradient as final through the leaf hook (data-parallel buckets start then).
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "core/activation_offload.h"
#include "core/autograd.h"
#include "core/recompute.h"
#include "layers/model.h"
#include "parallel/stage.h"

namespace ptrain::launch {

class ModelStage : public parallel::Stage {
 public:
  /// chunk_blocks[c]: the blocks of local chunk c; first/last: whether chunk 0 is global stage 0
  /// and whether chunk v-1 is the last global stage.
  ModelStage(layers::CausalLM& model, std::vector<std::vector<int>> chunk_blocks, bool first, bool last,
             DType grad_dtype, RecomputeMode recompute = RecomputeMode::none, int offload_prefetch = 0);

  /// The step's tokens [local_batch, T] (i32), micro-batch size, loss weight and loss scale.
  void set_batch(Tensor inputs, Tensor targets, int64_t micro, double weight, double loss_scale);
  /// Called with each parameter tensor whose gradient is final for this step.
  void set_grad_ready_hook(std::function<void(const Tensor& param)> hook) { hook_ = std::move(hook); }
  /// Σ over this step's micro-batches (in micro-batch order) of their losses (last stage only).
  double loss_sum() const;

  Shape input_shape(int chunk) const override;
  DType activation_dtype() const override { return model_.spec().dtype; }
  Device activation_device() const override;
  Tensor forward(int chunk, int micro, const Tensor& input) override;
  Tensor backward(int chunk, int micro, const Tensor& grad_output, bool split) override;
  void backward_weights(int chunk, int micro) override;

  /// Forward only (evaluation, no tape): chunk c of micro-batch ids/targets; returns the output
  /// activation, or on the last global stage the loss (weight 1: Σ token CE).
  Tensor forward_only(int chunk, const Tensor& input, const Tensor& ids, const Tensor& targets);
  int num_chunks() const { return static_cast<int>(chunks_.size()); }

 private:
  struct Pass {
    std::unique_ptr<ActivationOffload> offload;  ///< inner policy of `hooks` (outlives both)
    std::unique_ptr<RecomputeHooks> hooks;  ///< the tape's recompute policy (outlives the tape)
    std::unique_ptr<Tape> tape;
    Tensor input, output, loss;
  };
  Tensor run_chunk(int chunk, const Tensor& input, const Tensor& ids, const Tensor& targets, double weight,
                   ActivationOffload* offload = nullptr);
  bool is_first(int chunk) const { return first_ && chunk == 0; }
  bool is_last(int chunk) const { return last_ && chunk == num_chunks() - 1; }
  Tensor micro_rows(const Tensor& t, int micro) const;

  layers::CausalLM& model_;
  std::vector<std::vector<int>> chunks_;
  bool first_, last_;
  DType grad_dtype_;
  RecomputeMode recompute_;
  int offload_prefetch_;
  Tensor inputs_, targets_;
  int64_t micro_ = 1, micro_batches_ = 1;
  double weight_ = 1, loss_scale_ = 1;
  std::map<std::pair<int, int>, Pass> passes_;
  std::vector<double> losses_;
  std::vector<int> backwards_done_;  ///< per chunk, this step
  std::function<void(const Tensor&)> hook_;
};

}  // namespace ptrain::launch
