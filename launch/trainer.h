// launch/trainer.h — the training loop of one rank.
//
// Order of work (DESIGN.md contracts): validate the config, inspect the data and any
// init_from file (all before any heavy allocation), build the model, initialise (or
// load) weights, then per update s = 0..steps-1: zero gradients; for each micro-batch
// record a tape, forward, loss weighted by 1/(tokens in the global batch), backward
// (parameter gradients accumulate); global gradient norm (pre-clip); NaN/Inf stop; clip;
// AdamW at lr(s); copy fp32 masters to the low-precision weights; metrics; evaluation;
// checkpoint. Gradient accumulation is exactly a larger batch: the reported loss is the
// mean token cross-entropy over the whole global batch.
#pragma once
#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/sampler.h"
#include "launch/config.h"
#include "launch/metrics.h"
#include "layers/model.h"
#include "optim/adamw.h"
#include "optim/loss_scaler.h"
#include "optim/lr_schedule.h"

namespace ptrain::launch {

struct RunOptions {
  bool resume = false;
  int world_size = 1;
  int rank = 0;
  int local_ranks = 1;  ///< ranks on this machine (threads = cores / local_ranks)
  bool quiet = false;   ///< no progress lines (tests)
};

/// Set by SIGTERM/SIGINT handlers; the loop checkpoints and stops after the current step.
std::atomic<int>& stop_signal();

/// One trainable tensor: the weights the forward reads, its fp32 master and gradient.
struct TrainParam {
  std::string name;
  layers::Parameter* param;  ///< value: dtype = precision (bf16/fp16 emulated on CPU)
  Tensor master;             ///< fp32; the same tensor as param->value in fp32 runs
  Tensor grad;               ///< param->value's gradient buffer (train.grad_dtype)
};

/// Inputs/targets [B, T] of one micro-batch.
struct MicroBatch {
  Tensor inputs, targets;
};

class Trainer {
 public:
  Trainer(Config cfg, RunOptions opt);
  ~Trainer();
  /// Runs the whole job; returns the process exit status (0, or 128+signal after a
  /// checkpoint on SIGTERM/SIGINT). Throws UserError for bad input.
  int run();

  // ---- pieces, public for tests ----
  /// Checks data files, init_from, the run directory; builds the model and initial state.
  void setup();
  /// One update at 0-based index s; returns the mean loss of the global batch.
  double train_step(int64_t s);
  /// Mean validation loss over train.eval_batches global batches.
  double evaluate();
  void save_checkpoint(int64_t step);
  layers::CausalLM& model() { return *model_; }
  const std::vector<TrainParam>& params() const { return params_; }
  double last_grad_norm() const { return last_grad_norm_; }
  double last_lr() const { return last_lr_; }
  int64_t start_step() const { return start_step_; }

 private:
  void init_weights();
  void resume_from(int64_t step);
  std::vector<struct CkptEntry> checkpoint_entries(bool for_write);
  MicroBatch micro_batch(const std::vector<int32_t>& in, const std::vector<int32_t>& tg, int64_t m) const;
  void log_step(int64_t step, double loss, double secs, double val_loss, bool skipped);

  Config cfg_;
  RunOptions opt_;
  layers::ModelSpec spec_;
  std::unique_ptr<layers::CausalLM> model_;
  std::vector<TrainParam> params_;
  std::unique_ptr<optim::AdamW> adam_;
  optim::LrSchedule schedule_;
  optim::LossScaler scaler_;
  std::shared_ptr<const data::TokenDataset> train_data_, val_data_;
  std::unique_ptr<data::Sampler> sampler_, val_sampler_;
  std::unique_ptr<MetricsWriter> metrics_;
  int64_t start_step_ = 0;
  int64_t num_params_ = 0;
  int64_t accum_ = 1;
  int64_t micro_ = 1;
  double last_grad_norm_ = 0, last_lr_ = 0;
  double elapsed_ = 0;
  int64_t timed_steps_ = 0;
  bool setup_done_ = false;
};

/// Parameters counted once, without vocabulary padding (for MFU and the banner).
int64_t count_parameters(layers::CausalLM& model);
/// ModelSpec of a config (padded vocab, resolved kv_heads/tie, dtype = precision).
layers::ModelSpec model_spec(const Config& cfg);

}  // namespace ptrain::launch
