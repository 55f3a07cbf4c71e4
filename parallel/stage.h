// parallel/stage.h — what a pipeline schedule drives: one rank's model chunks.
//
// A schedule knows no model: it calls forward/backward/backward_weights of a Stage for
// (chunk, micro-batch) pairs in its order, and moves activations and their gradients
// between ranks. The trainer implements Stage over the decoder blocks it owns; the
// bubble benchmark implements it with fixed sleeps.
//
// Chunks: with virtual_stages = v, pipeline rank r holds chunks c = 0..v-1, which are the
// global stages g = c * pp + r (Megatron's interleaving). Global stage 0 receives no input
// (it embeds the tokens itself), the last global stage sends no output (it computes the loss).
#pragma once
#include "core/tensor.h"

namespace ptrain::parallel {

class Stage {
 public:
  virtual ~Stage() = default;
  /// Shape of the activation entering chunk c from the previous global stage
  /// (and of its gradient, sent back).
  virtual Shape input_shape(int chunk) const = 0;
  /// dtype of those activations (the training precision).
  virtual DType activation_dtype() const = 0;
  /// Where they live (received activations and gradients are allocated there).
  virtual Device activation_device() const { return Device::cpu; }
  /// Forward of micro-batch m through chunk c. `input` is undefined on global stage 0.
  /// Returns the activation to send on (undefined on the last global stage).
  virtual Tensor forward(int chunk, int micro, const Tensor& input) = 0;
  /// Backward of (c, m). `grad_output` is undefined on the last global stage. With `split`,
  /// weight gradients are deferred to backward_weights(c, m) (zero-bubble schedules).
  /// Returns the gradient of the chunk's input (undefined on global stage 0).
  virtual Tensor backward(int chunk, int micro, const Tensor& grad_output, bool split) = 0;
  /// The weight-gradient work deferred by backward(c, m, ..., split = true).
  virtual void backward_weights(int chunk, int micro) = 0;
};

}  // namespace ptrain::parallel
