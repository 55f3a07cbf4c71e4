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
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/sampler.h"
#include "launch/config.h"
#include "launch/metrics.h"
#include "launch/model_stage.h"
#include "layers/model.h"
#include "optim/adamw.h"
#include "optim/offload.h"
#include "optim/loss_scaler.h"
#include "optim/lr_schedule.h"
#include "parallel/grad_reducer.h"
#include "parallel/grid.h"
#include "parallel/schedule.h"
#include "parallel/timeline.h"
#include "parallel/watchdog.h"

namespace ptrain::launch {

struct RunOptions {
  bool resume = false;
  int world_size = 1;
  int rank = 0;
  int local_ranks = 1;  ///< ranks on this machine (threads = cores / local_ranks)
  int local_rank = 0;   ///< this rank's index among them (picks the GPU: one rank per GPU)
  bool quiet = false;   ///< no progress lines (tests)
};

/// Thrown, before any collective, on the ranks whose own input checks passed when another
/// rank's failed: every rank stops with exit status 2 and nobody waits in a collective.
class PeerFailed : public UserError {
 public:
  using UserError::UserError;
};

/// Set by SIGTERM/SIGINT handlers; the loop checkpoints and stops after the current step.
std::atomic<int>& stop_signal();

/// One trainable tensor: the weights the forward reads, its fp32 master and gradient.
struct TrainParam {
  std::string name;
  layers::Parameter* param;  ///< value: dtype = precision (bf16/fp16 emulated on CPU); this rank's slice
  Tensor master;             ///< fp32; the same tensor as param->value in fp32 runs
  Tensor grad;               ///< param->value's gradient buffer (train.grad_dtype)
  Tensor opt_grad;           ///< the gradient the norm and the optimizer read: grad, or its host copy (offload)
  bool norm_owner = true;    ///< counted in the global gradient norm by this rank (each element once)
  bool writer = true;        ///< written to checkpoints by this rank (each element once)
  int64_t zero_begin = 0, zero_end = -1;  ///< ZeRO-1: this DP rank's flat range of the local tensor
};

/// Inputs/targets [B, T] of one micro-batch.
struct MicroBatch {
  Tensor inputs, targets;
};

class Trainer {
 public:
  /// `world`: the ranks of this job (nullptr: a single process). The trainer builds the
  /// process grid from it; it never touches MPI_COMM_WORLD itself.
  Trainer(Config cfg, RunOptions opt, std::unique_ptr<parallel::Communicator> world = nullptr);
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
  parallel::Grid& grid() { return *grid_; }
  /// Whether this rank has entered collectives with its peers (a failure then aborts the job).
  bool collectives_started() const { return grid_ != nullptr; }
  /// Whether the input checks failed on every rank (rank 0's message then speaks for all).
  bool inputs_failed_everywhere() const { return inputs_failed_everywhere_; }
  /// Measured bubble fraction of the last step's pipeline schedule (mean over pipeline ranks).
  double last_bubble() const { return last_bubble_; }
  double last_lr() const { return last_lr_; }
  int64_t start_step() const { return start_step_; }

 private:
  void init_weights();
  void resume_from(int64_t step);
  std::vector<struct CkptEntry> checkpoint_entries(bool for_write, std::vector<Tensor>& moments);
  MicroBatch micro_batch(const std::vector<int32_t>& in, const std::vector<int32_t>& tg, int64_t m) const;
  /// Token ids as an i32 tensor where the model lives (uploaded once per step or micro-batch).
  Tensor tokens(const std::vector<int32_t>& ids, Shape shape) const;
  void log_step(int64_t step, double loss, double secs, double val_loss, bool skipped);
  void build_grid();
  void sync_grads();
  /// Pre-clip global norm of the unscaled gradients (they still carry `loss_scale`).
  double grad_norm(double loss_scale);
  /// AdamW at `lr` reading grad * grad_scale; ZeRO-1 then all-gathers the masters. `started`:
  /// the offloaded optimizer's updates began in backward (HostOffload eager mode).
  void optimizer_step(double lr, double grad_scale, bool started = false);
  /// Full local moments of parameter i (ZeRO-1: gathered over DP; else the optimizer's own).
  int64_t zero_shard_in_full(const TrainParam& p, const Shape& full) const;
  std::pair<Tensor, Tensor> full_moments(size_t i);
  /// ZeRO-1: every DP rank's range of parameter p (this rank's: `shard`, host or device) into
  /// `whole` (host floats, the parameter's numel). A collective over dp.
  void zero_gather(const TrainParam& p, const Tensor& shard, float* whole);
  bool zero() const { return zero_; }

  Config cfg_;
  RunOptions opt_;
  std::unique_ptr<parallel::Communicator> world_in_;
  Device device_ = Device::cpu;  ///< where the model, gradients and optimizer state live
  double peak_flops_ = 0;        ///< the GPU's dense peak for this precision (0: unknown, no MFU)
  std::vector<std::pair<Tensor, Tensor>> staged_;  ///< (host, device) buffers of a checkpoint read
  std::unique_ptr<parallel::Grid> grid_;
  std::vector<std::vector<int>> chunk_blocks_;
  std::unique_ptr<ModelStage> stage_;
  std::unique_ptr<parallel::GradReducer> reducer_;
  std::map<const TensorImpl*, size_t> param_index_;
  parallel::ScheduleSpec sched_;
  parallel::Timeline timeline_;
  bool zero_ = false;
  bool inputs_failed_everywhere_ = false;
  int world_threads_ = 0;  ///< sum of every rank's thread count (0 until setup, single rank)
  double last_bubble_ = 0;
  void check_inputs();
  void check_memory_features() const;
  std::optional<int64_t> latest_;  ///< the checkpoint --resume continues from
  layers::ModelSpec spec_;
  std::unique_ptr<layers::CausalLM> model_;
  std::vector<TrainParam> params_;
  std::unique_ptr<optim::AdamW> adam_;
  std::string selftest_line_;  ///< the banner's report of the communicator self-test
  std::shared_ptr<parallel::CommWatchdog> watchdog_;  ///< parallel.timeout_s (multi-rank runs)
  std::unique_ptr<optim::HostOffload> offload_;  ///< train.offload.optimizer: master and moments on the host
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

/// The device a run uses (DESIGN.md, "Builds and devices"): `auto` is a real GPU when the build
/// has the nvcc backend, the machine has one and the run is single-rank, else the CPU; `cuda`
/// is the GPU, or in an emulated build the SIMT runtime on the CPU. Throws UserError for
/// `cuda` without a CUDA build or device, or with more than one rank.
Device resolve_device(DeviceChoice choice, int world_size, int local_ranks = 0);
/// "NVIDIA GeForce RTX 4090, 23.6 GiB, compute capability 8.9" (or the emulated device).
std::string describe_gpu();

/// Parameters counted once, without vocabulary padding (for MFU and the banner).
int64_t count_parameters(layers::CausalLM& model);
/// ModelSpec of a config (padded vocab, resolved kv_heads/tie, dtype = precision).
layers::ModelSpec model_spec(const Config& cfg);

}  // namespace ptrain::launch
