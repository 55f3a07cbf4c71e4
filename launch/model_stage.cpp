// launch/model_stage.cpp — see model_stage.h.
#include "launch/model_stage.h"

namespace ptrain::launch {

ModelStage::ModelStage(layers::CausalLM& model, std::vector<std::vector<int>> chunk_blocks, bool first, bool last,
                       DType grad_dtype, RecomputeMode recompute, int offload_prefetch)
    : model_(model),
      chunks_(std::move(chunk_blocks)),
      first_(first),
      last_(last),
      grad_dtype_(grad_dtype),
      recompute_(recompute),
      offload_prefetch_(offload_prefetch) {
  PT_CHECK(!chunks_.empty(), "a pipeline stage needs at least one chunk");
}

void ModelStage::set_batch(Tensor inputs, Tensor targets, int64_t micro, double weight, double loss_scale) {
  PT_CHECK(inputs.ndim() == 2 && inputs.dim(0) % micro == 0, "set_batch: inputs {} for micro-batch {}",
           shape_str(inputs.shape()), micro);
  inputs_ = std::move(inputs);
  targets_ = std::move(targets);
  micro_ = micro;
  micro_batches_ = inputs_.dim(0) / micro;
  weight_ = weight;
  loss_scale_ = loss_scale;
  passes_.clear();
  losses_.assign(static_cast<size_t>(micro_batches_), 0.0);
  backwards_done_.assign(chunks_.size(), 0);
}

double ModelStage::loss_sum() const {
  double s = 0;
  for (double l : losses_) s += l;  // in micro-batch order
  return s;
}

Tensor ModelStage::micro_rows(const Tensor& t, int micro) const {
  const int64_t T = t.dim(1);
  return t.rows(micro * micro_, (micro + 1) * micro_).view({micro_, T});
}

Device ModelStage::activation_device() const {
  for (const auto& np : model_.named_parameters()) return np.param->value.device();
  return Device::cpu;
}

Shape ModelStage::input_shape(int) const {
  const auto& s = model_.spec();
  int64_t rows = micro_ * inputs_.dim(1);
  if (s.sequence_parallel) rows /= s.tp_size();
  return {rows, s.hidden};
}

Tensor ModelStage::run_chunk(int chunk, const Tensor& input, const Tensor& ids, const Tensor& targets, double weight,
                             ActivationOffload* offload) {
  const layers::ForwardCtx ctx = model_.make_ctx(ids.dim(0), ids.dim(1));
  Tensor h = is_first(chunk) ? model_.embed(ids, ctx) : input;
  const std::vector<int>& blocks = chunks_[static_cast<size_t>(chunk)];
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (offload) offload->begin_block();
    h = model_.block(blocks[i], h, ctx);
    if (offload) offload->end_block(i + 1 == blocks.size());
  }
  if (!is_last(chunk)) return h;
  return model_.loss_from_logits(model_.head(h, ctx), targets, weight);
}

Tensor ModelStage::forward(int chunk, int micro, const Tensor& input) {
  Pass p;
  p.tape = std::make_unique<Tape>(grad_dtype_);
  if (offload_prefetch_ > 0) p.offload = ActivationOffload::create(offload_prefetch_);
  if (recompute_ != RecomputeMode::none || p.offload) {
    p.hooks = std::make_unique<RecomputeHooks>(recompute_, p.offload.get());
    p.tape->set_hooks(p.hooks.get());
  }
  TapeGuard guard(p.tape.get());
  if (!is_first(chunk)) {
    PT_CHECK(input.defined(), "chunk {} micro-batch {}: no input activation", chunk, micro);
    p.input = input;
    p.tape->watch(p.input);
  }
  Tensor out =
      run_chunk(chunk, p.input, micro_rows(inputs_, micro), micro_rows(targets_, micro), weight_, p.offload.get());
  Tensor result;
  if (is_last(chunk)) {
    p.loss = out;
    losses_[static_cast<size_t>(micro)] = out.to_double_vector()[0];
  } else {
    p.output = out;
    result = out;
  }
  passes_[{chunk, micro}] = std::move(p);
  return result;
}

Tensor ModelStage::backward(int chunk, int micro, const Tensor& grad_output, bool split) {
  auto it = passes_.find({chunk, micro});
  PT_CHECK(it != passes_.end(), "backward of chunk {} micro-batch {} before its forward", chunk, micro);
  Pass& p = it->second;
  const bool last_of_chunk = ++backwards_done_[static_cast<size_t>(chunk)] == micro_batches_;
  if (last_of_chunk && hook_) p.tape->set_leaf_hook(hook_);
  if (is_last(chunk)) {
    Tensor seed = Tensor::full({1}, loss_scale_, p.loss.dtype() == DType::f64 ? DType::f64 : DType::f32);
    p.tape->backward(std::vector<Tensor>{p.loss}, std::vector<Tensor>{seed}, split);
  } else {
    PT_CHECK(grad_output.defined(), "chunk {} micro-batch {}: no output gradient", chunk, micro);
    p.tape->backward(std::vector<Tensor>{p.output}, std::vector<Tensor>{grad_output}, split);
  }
  Tensor gin;
  if (!is_first(chunk)) {
    gin = p.tape->grad_of(p.input);
    if (!gin.defined()) gin = Tensor::zeros(p.input.shape(), p.input.dtype(), p.input.device());
  }
  p.output = Tensor();
  p.loss = Tensor();
  p.input = Tensor();
  if (!split) passes_.erase(it);
  return gin;
}

void ModelStage::backward_weights(int chunk, int micro) {
  auto it = passes_.find({chunk, micro});
  PT_CHECK(it != passes_.end(), "weight gradients of chunk {} micro-batch {} before its backward", chunk, micro);
  it->second.tape->backward_weights();
  passes_.erase(it);
}

Tensor ModelStage::forward_only(int chunk, const Tensor& input, const Tensor& ids, const Tensor& targets) {
  NoGradGuard no_grad;
  return run_chunk(chunk, input, ids, targets, 1.0);
}

}  // namespace ptrain::launch
