// launch/trainer.cpp — the single-rank training loop (see trainer.h for the order of work).
#include "launch/trainer.h"

#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <span>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <thread>

#include "core/activation_offload.h"
#include "core/autograd.h"
#include "core/cpu/threading.h"
#if PTRAIN_HAVE_CUDA
#include "core/cuda/device.h"
#include "core/cuda/device_memory.h"
#include "core/cuda/gemm.h"
#include "core/cuda/launch_stats.h"
#endif
#include "data/token_file.h"
#include "launch/checkpoint.h"
#include "launch/memory_plan.h"
#include "launch/weights_io.h"
#include "optim/grad_clip.h"
#include "parallel/partition.h"
#include "parallel/selftest.h"
#include "parallel/watchdog.h"

namespace fs = std::filesystem;

namespace ptrain::launch {

std::atomic<int>& stop_signal() {
  static std::atomic<int> s{0};
  return s;
}

namespace {

using Clock = std::chrono::steady_clock;

/// Resident set of this process (/proc/self/statm), bytes; -1 where unreadable.
int64_t host_resident_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return -1;
  long long size = 0, resident = 0;
  const int n = std::fscanf(f, "%lld %lld", &size, &resident);
  std::fclose(f);
  return n == 2 ? resident * static_cast<int64_t>(sysconf(_SC_PAGESIZE)) : -1;
}

RecomputeMode recompute_mode(Recompute r) {
  switch (r) {
    case Recompute::none: return RecomputeMode::none;
    case Recompute::selective: return RecomputeMode::selective;
    case Recompute::full: return RecomputeMode::full;
  }
  PT_CHECK(false, "train.recompute {}", static_cast<int>(r));
  return RecomputeMode::none;
}

std::string hms(double secs) {
  if (!std::isfinite(secs) || secs < 0) return "?";
  const auto s = static_cast<int64_t>(secs + 0.5);
  if (s >= 3600) return fmt::format("{}:{:02d}:{:02d}", s / 3600, (s / 60) % 60, s % 60);
  return fmt::format("{}:{:02d}", s / 60, s % 60);
}

std::string si(double v) {
  if (v >= 1e6) return fmt::format("{:.2f}M", v / 1e6);
  if (v >= 1e3) return fmt::format("{:.1f}k", v / 1e3);
  return fmt::format("{:.0f}", v);
}

/// "2 threads per rank (auto: 2 usable cores / 1 rank on this node); BLAS OpenBLAS 0.3.21 (openmp build), core ..."
/// plus a warning line when the cores are oversubscribed or the BLAS is not the OpenMP build.
std::string describe_threads(int threads, int configured, int local_ranks, int world_size, int world_threads) {
  const int cores = cpu::usable_cores();
  const bool bound = cpu::affinity_bound();  // the mask is this rank's own share of the node
  std::string s = fmt::format("{} thread{} per rank", threads, threads == 1 ? "" : "s");
  if (world_size > 1 && world_threads != threads * world_size)
    s = fmt::format("{} threads on rank 0, {} over {} ranks", threads, world_threads, world_size);
  s += configured > 0 ? " (train.threads)"
                      : bound ? fmt::format(" (train.threads auto: this rank is bound to {} core{})", cores,
                                            cores == 1 ? "" : "s")
                              : fmt::format(" (train.threads auto: {} usable core{} / {} rank{} on this node)",
                                            cores, cores == 1 ? "" : "s", local_ranks, local_ranks == 1 ? "" : "s");
  const cpu::BlasInfo blas = cpu::blas_info();
  s += "; " + blas.summary();
  if (bound ? threads > cores : threads * local_ranks > cores)
    s += fmt::format("\nptrain: warning: {} threads x {} rank{} exceed the {} usable core{}: expect slow steps. "
                     "HINT: set train.threads: 0 (auto)",
                     threads, bound ? 1 : local_ranks, bound || local_ranks == 1 ? "" : "s", cores,
                     cores == 1 ? "" : "s");
  if (blas.build != "openmp" && threads > 1)
    s += fmt::format("\nptrain: warning: the BLAS is OpenBLAS's {} build, whose threads compete with ptrain's "
                     "OpenMP threads{}. HINT: build against libopenblas-openmp-dev (-DPTRAIN_OPENBLAS=openmp)",
                     blas.build, std::getenv("OMP_WAIT_POLICY") ? " (OMP_WAIT_POLICY softens it)" : "");
  return s;
}

int resolve_threads(const Config& cfg, int local_ranks) {
  return cfg.train.threads > 0 ? cfg.train.threads : cpu::auto_threads(local_ranks);
}

}  // namespace

Device resolve_device(DeviceChoice choice, int world_size, int local_ranks) {
  if (choice == DeviceChoice::cpu) return Device::cpu;
#if PTRAIN_HAVE_CUDA
  constexpr bool have_cuda = true;
  const bool emulated = cuda::emulated();
  const int gpus = cuda::device_count();
#else
  constexpr bool have_cuda = false;
  const bool emulated = false;
  const int gpus = 0;
#endif
  if (choice == DeviceChoice::automatic) {
    // the emulated device only when asked for by name: it is a test vehicle, not a speed-up
    return !emulated && gpus > 0 && world_size == 1 ? Device::cuda : Device::cpu;
  }
  PT_USER_CHECK(have_cuda, "device: cuda, but this ptrain was built without the CUDA backend. HINT: build with "
                "nvcc on the PATH (PTRAIN_CUDA=AUTO|ON), or set device: cpu");
  PT_USER_CHECK(gpus > 0, "device: cuda, but no CUDA device is visible (no GPU, no driver, or CUDA_VISIBLE_DEVICES "
                "hides them). HINT: check nvidia-smi, or set device: cpu");
  // One rank per GPU (the local rank picks it). The emulated device is per process: any count.
  if (local_ranks < 1) local_ranks = world_size;
  PT_USER_CHECK(emulated || local_ranks <= gpus,
                "device: cuda with {} ranks on this machine but {} GPU{} visible: each rank needs a GPU of its own "
                "(sharing one GPU between ranks is not built yet). HINT: start at most {} rank{} per machine "
                "(mpirun -np {}), check CUDA_VISIBLE_DEVICES, or set device: cpu",
                local_ranks, gpus, gpus == 1 ? "" : "s", gpus, gpus == 1 ? "" : "s", gpus);
  return Device::cuda;
}

std::string describe_gpu() {
#if PTRAIN_HAVE_CUDA
  const auto info = cuda::device_info(0);
  return fmt::format("{}{}, {:.1f} GiB, compute capability {}.{}", info.name,
                     cuda::emulated() ? " (emulated: the SIMT runtime runs the kernels on the CPU)" : "",
                     static_cast<double>(info.total_memory) / (1024.0 * 1024.0 * 1024.0), info.major, info.minor);
#else
  return "no CUDA backend";
#endif
}

layers::ModelSpec model_spec(const Config& cfg) {
  layers::ModelSpec s;
  const auto& m = cfg.model;
  s.arch = m.arch;
  s.vocab_size = m.vocab_size;
  s.padded_vocab = cfg.padded_vocab();
  s.hidden = m.hidden;
  s.layers = m.layers;
  s.heads = m.heads;
  s.kv_heads = m.resolved_kv_heads();
  s.ffn_hidden = m.ffn_hidden;
  s.max_seq_len = m.max_seq_len;
  s.norm_eps = m.norm_eps;
  s.rope_theta = m.rope_theta;
  s.tie_embeddings = m.resolved_tie_embeddings();
  s.norm = m.norm.value_or("");
  s.attention = m.attention.value_or("");
  s.mlp = m.mlp.value_or("");
  s.dtype = cfg.train.precision;
  return s;
}

int64_t count_parameters(layers::CausalLM& model) {
  int64_t n = 0;
  for (const auto& w : model.external_weights()) n += shape_numel(w.external_shape());
  return n;
}

Trainer::Trainer(Config cfg, RunOptions opt, std::unique_ptr<parallel::Communicator> world)
    : cfg_(std::move(cfg)), opt_(opt), world_in_(std::move(world)) {
  if (world_in_) {
    opt_.world_size = world_in_->size();
    opt_.rank = world_in_->rank();
  }
}
Trainer::~Trainer() = default;

// Memory features the config accepts: each works, or refuses here, before anything is
// allocated, naming what is missing (a key that silently does nothing is a defect).
void Trainer::check_memory_features() const {
  const auto& off = cfg_.train.offload;
  PT_USER_CHECK(!off.activations || device_ == Device::cuda,
                "train.offload.activations: true needs device: cuda (it moves saved activations from device memory to "
                "pinned host memory; on device: cpu they are in host memory already). HINT: set "
                "train.offload.activations: false; train.recompute: selective|full keeps fewer activations");
  PT_USER_CHECK(!off.optimizer || device_ == Device::cuda,
                "train.offload.optimizer: true needs device: cuda (it moves the master weights and Adam moments from "
                "device memory to host memory; on device: cpu they are in host memory already). HINT: set "
                "train.offload.optimizer: false");
  PT_USER_CHECK(device_ == Device::cpu || cfg_.optim.state == OptimState::fp32 || off.optimizer,
                "optim.state: {} on device: cuda needs train.offload.optimizer: true (a compact state is updated by "
                "the CPU AdamW in host memory; the device kernels take fp32 state only). HINT: set "
                "train.offload.optimizer: true, or optim.state: fp32",
                to_string(cfg_.optim.state));
}

void Trainer::check_inputs() {
  device_ = resolve_device(cfg_.device, opt_.world_size, opt_.local_ranks);
  if (device_ == Device::cuda && opt_.world_size > 1) {
    // device tensors cross ranks through the MPI communicator, staged through host memory
    // (parallel/mpi_comm.cpp); what has no device path yet refuses here
    PT_USER_CHECK(cfg_.parallel.tp == 1,
                  "device: cuda with parallel.tp: {}: tensor parallelism on the device is not built yet (its "
                  "vocabulary-parallel embedding and cross-entropy are CPU kernels). HINT: set parallel.tp: 1 "
                  "(pipeline and data parallelism train on the device), or device: cpu",
                  cfg_.parallel.tp);
#if PTRAIN_HAVE_CUDA
    cuda::select_device(cuda::emulated() ? 0 : opt_.local_rank % std::max(1, cuda::device_count()));
#endif
  }
  check_memory_features();
  // The model of memory `ptrain plan` prints (launch/memory_plan.h): a run that cannot fit the
  // device is refused before anything is allocated, with the plan's advice. (Layers the model
  // does not know, a researcher's own, are left to the allocator's own out-of-memory message.)
  if (device_ == Device::cuda && memory_model_covers(cfg_))
    if (auto gpu = current_device_spec()) {
      const int64_t host = host_memory_bytes();
      const MemoryPlan plan = plan_memory(cfg_, opt_.world_size, *gpu, host);
      if (!plan.device_fits) throw UserError(refusal_message(plan, plan_advice(cfg_, opt_.world_size, *gpu, host, plan)));
    }
#if PTRAIN_HAVE_CUDA
  if (cfg_.device == DeviceChoice::automatic && device_ == Device::cpu && opt_.world_size > 1 && !cuda::emulated() &&
      cuda::device_count() > 0 && opt_.rank == 0 && !opt_.quiet)
    fmt::print("warning: device: auto trains this {}-rank run on the CPU (multi-rank device tensors still cross "
               "ranks through host memory, so the GPUs are used only when asked for): set device: cuda for one "
               "rank per GPU\n",
               opt_.world_size);
#endif
  PT_USER_CHECK(opt_.world_size == 1 || world_in_,
                "a world of {} ranks was announced but no communicator was given (internal)", opt_.world_size);

  // ---- data (before anything heavy) ----
  auto info = data::inspect_token_file(cfg_.data.path);
  PT_USER_CHECK(info.vocab_size <= cfg_.model.vocab_size,
                "data.path: {} was tokenized with vocab_size {} but model.vocab_size = {}. HINT: set model.vocab_size "
                ">= {}",
                cfg_.data.path, info.vocab_size, cfg_.model.vocab_size, info.vocab_size);
  train_data_ = std::make_shared<data::TokenDataset>(cfg_.data.path);
  const int64_t T = cfg_.train.seq_len, G = cfg_.train.global_batch;
  const int64_t W = data::windows_in(train_data_->num_tokens(), T);
  int64_t w_val = 0;
  if (cfg_.data.val_path) {
    auto vinfo = data::inspect_token_file(*cfg_.data.val_path);
    PT_USER_CHECK(vinfo.vocab_size <= cfg_.model.vocab_size, "data.val_path: {} has vocab_size {} > model.vocab_size = {}",
                  *cfg_.data.val_path, vinfo.vocab_size, cfg_.model.vocab_size);
    val_data_ = std::make_shared<data::TokenDataset>(*cfg_.data.val_path);
  } else if (cfg_.train.val_fraction > 0) {
    w_val = std::max<int64_t>(1, static_cast<int64_t>(std::floor(cfg_.train.val_fraction * static_cast<double>(W))));
    PT_USER_CHECK(W - w_val >= 1, "train.val_fraction = {} leaves no training windows ({} windows of seq_len {} in {})",
                  cfg_.train.val_fraction, W, T, cfg_.data.path);
    val_data_ = train_data_;
  }
  PT_USER_CHECK(cfg_.train.eval_every == 0 || val_data_,
                "train.eval_every = {} needs held-out data. HINT: set train.val_fraction > 0 or data.val_path",
                cfg_.train.eval_every);
  data::SamplerOptions so;
  so.seq_len = T;
  so.global_batch = G;
  const int dp = cfg_.resolved_dp(opt_.world_size);
  so.dp_size = dp;
  so.dp_rank = opt_.rank / (cfg_.parallel.tp * cfg_.parallel.pp);
  so.shuffle = cfg_.data.shuffle;
  so.seed = cfg_.train.seed;
  so.first_window = 0;
  so.num_windows = W - w_val;
  sampler_ = std::make_unique<data::Sampler>(train_data_, so);
  if (val_data_) {
    data::SamplerOptions vo = so;
    vo.shuffle = false;
    if (cfg_.data.val_path) {
      vo.first_window = 0;
      vo.num_windows = -1;
    } else {
      vo.first_window = W - w_val;
      vo.num_windows = w_val;
    }
    val_sampler_ = std::make_unique<data::Sampler>(val_data_, vo);
  }
  accum_ = cfg_.accumulation_steps(opt_.world_size);
  micro_ = cfg_.train.micro_batch;

  // ---- run directory ----
  const std::string& dir = cfg_.checkpoint.dir;
  if (opt_.resume) {
    latest_ = latest_checkpoint(dir, /*clean=*/opt_.rank == 0);
  } else {
    auto existing = latest_checkpoint(dir, false);
    PT_USER_CHECK(!existing, "checkpoint.dir {} already holds checkpoints (newest: step {}). HINT: pass --resume to "
                  "continue that run, or set checkpoint.dir to a new directory",
                  dir, existing.value_or(0));
  }
  if (cfg_.train.init_from)
    PT_USER_CHECK(fs::exists(*cfg_.train.init_from), "train.init_from: {} does not exist. HINT: give a weights file "
                  "written by `ptrain export` or converted from Hugging Face",
                  *cfg_.train.init_from);

}

void Trainer::setup() {
  if (setup_done_) return;
  const int threads = resolve_threads(cfg_, opt_.local_ranks);
  cpu::set_threads(threads);

  // ---- input checks (data, run directory, init_from), before any collective ----
  std::string failure;
  try {
    check_inputs();
  } catch (const UserError& e) {
    failure = e.what();
  }
  if (world_in_ && world_in_->size() > 1) {
    double sums[2] = {failure.empty() ? 0.0 : 1.0, static_cast<double>(threads)};  // failures, threads
    world_in_->all_reduce(std::span<double>(sums, 2));
    const double failed = sums[0];
    world_threads_ = static_cast<int>(sums[1]);
    inputs_failed_everywhere_ = failed == world_in_->size();
    if (failed > 0 && failure.empty())
      throw PeerFailed(fmt::format("{} of {} ranks failed their input checks (see their messages)",
                                   static_cast<int>(failed), world_in_->size()));
  } else {
    inputs_failed_everywhere_ = true;
  }
  if (!failure.empty()) throw UserError(failure);
  // mem_peak_bytes is this run's high-water mark (a process may run several trainers: tests)
  reset_cpu_peak();
#if PTRAIN_HAVE_CUDA
  if (device_ == Device::cuda) cuda::device_allocator().reset_peak();
#endif
  reset_activation_offload_stats();
  const std::string& dir = cfg_.checkpoint.dir;
  const int64_t T = cfg_.train.seq_len, G = cfg_.train.global_batch;
  const std::optional<int64_t> latest = latest_;

  // ---- process grid (the first collective: every input check above ran on every rank) ----
  build_grid();
  if (opt_.world_size > 1) {  // parallel.timeout_s: every blocking call of every group is timed
    watchdog_ = std::make_shared<parallel::CommWatchdog>(cfg_.parallel.timeout_s,
                                                         fmt::format("rank {}", opt_.rank));
    grid_->wrap_groups([&](std::unique_ptr<parallel::Communicator> c) { return parallel::watched(std::move(c), watchdog_); });
  }
  // ---- the communicator self-test (parallel/selftest.h): every group, on the tensors' device.
  // Every rank walks the groups in the same order (a group of one is skipped everywhere alike).
  if (cfg_.parallel.selftest && opt_.world_size > 1) {
    const auto t0 = Clock::now();
    std::string groups;
    for (parallel::Communicator* c : {&grid_->world(), &grid_->tp(), &grid_->pp(), &grid_->dp(), &grid_->embed()}) {
      if (c->size() == 1) continue;
      parallel::self_test(*c, device_, 30.0);
      groups += fmt::format("{}{} ({} ranks)", groups.empty() ? "" : ", ", c->name(), c->size());
    }
    selftest_line_ = fmt::format("communicator self-test passed in {:.0f} ms on {} tensors: {}",
                                 1e3 * std::chrono::duration<double>(Clock::now() - t0).count(), device_name(device_),
                                 groups);
  }

  // ---- model and optimizer ----
  spec_ = model_spec(cfg_);
  spec_.device = device_;
#if PTRAIN_HAVE_CUDA
  if (device_ == Device::cuda) {
    cuda::set_allow_tf32(cfg_.train.tf32);
    if (!cuda::emulated())
      peak_flops_ = gpu_peak_flops(cuda::device_info(0).name, spec_.dtype, cfg_.train.tf32).value_or(0.0);
  }
#endif
  const auto& g = grid_->shape();
  const auto& c = grid_->coord();
  const int v = cfg_.parallel.virtual_stages;
  const auto stages = parallel::partition_layers(cfg_.model.layers, g.pp * v, cfg_.parallel.stage_layers);
  chunk_blocks_.clear();
  spec_.blocks.clear();
  for (int ch = 0; ch < v; ++ch) {
    chunk_blocks_.push_back(stages[static_cast<size_t>(ch * g.pp + c.pp)]);
    for (int b : chunk_blocks_.back()) spec_.blocks.push_back(b);
  }
  if (g.pp == 1 && v == 1) spec_.blocks.clear();  // the whole model
  spec_.build_embed = grid_->first_stage();
  spec_.build_head = grid_->last_stage();
  spec_.tp = g.tp > 1 ? &grid_->tp() : nullptr;
  spec_.sequence_parallel = cfg_.parallel.sequence_parallel && g.tp > 1;
  model_ = layers::make_model(spec_);
  {
    // parameters of the whole model, counted once (for the banner and MFU)
    // by names and shapes of a one-block model: no rank builds the whole model to count it
    layers::ModelSpec whole = model_spec(cfg_);
    whole.layers = 1;
    whole.dtype = DType::f32;
    auto one = layers::make_model(whole);
    int64_t block = 0, rest = 0;
    for (const auto& w : one->external_weights()) {
      const bool in_block = w.name.find(".layers.0.") != std::string::npos || w.name.find(".h.0.") != std::string::npos;
      (in_block ? block : rest) += shape_numel(w.external_shape());
    }
    num_params_ = rest + block * cfg_.model.layers;
  }
  zero_ = cfg_.optim.zero == 1 && g.dp > 1;
  const int tp_rank = c.tp, dp_rank = c.dp, dp_size = g.dp;
  const bool offload = cfg_.train.offload.optimizer;  // device only (check_memory_features)
  std::vector<Tensor> offload_weights, offload_grads;
  for (auto& np : model_->named_parameters()) {
    TrainParam p;
    p.name = np.name;
    p.param = np.param;
    p.grad = np.param->value.grad_buffer(cfg_.train.grad_dtype);
    if (offload) {  // optim/offload.h: the master (and below, the moments) in host memory
      offload_weights.push_back(np.param->value);
      offload_grads.push_back(p.grad);
    } else {
      // fp32 weights, or a compact state (optim.state: the bf16 weights are the master): no copy
      const bool own_master = is_low_precision(spec_.dtype) && cfg_.optim.state == OptimState::fp32;
      p.master = own_master ? Tensor::zeros(np.param->value.shape(), DType::f32, device_) : np.param->value;
      p.opt_grad = p.grad;
    }
    const bool tp_unique = np.param->sharding.sharded() || tp_rank == 0;
    p.norm_owner = !np.param->tied_replica && tp_unique && dp_rank == 0;
    p.writer = !np.param->tied_replica && tp_unique && dp_rank == 0;
    const int64_t n = np.param->value.numel();
    p.zero_begin = zero_ ? n * dp_rank / dp_size : 0;
    p.zero_end = zero_ ? n * (dp_rank + 1) / dp_size : n;
    param_index_[np.param->value.id()] = params_.size();
    params_.push_back(std::move(p));
  }
  if (offload) {
    // the host master: f32, or bf16 values under a compact state
    offload_ = std::make_unique<optim::HostOffload>(offload_weights, offload_grads,
                                                    cfg_.optim.state == OptimState::fp32 ? DType::f32 : DType::bf16);
    for (size_t i = 0; i < params_.size(); ++i) {
      params_[i].master = offload_->host_master(i);
      params_[i].opt_grad = offload_->staged_grad(i);
    }
  }
  stage_ = std::make_unique<ModelStage>(*model_, chunk_blocks_, grid_->first_stage(), grid_->last_stage(),
                                        cfg_.train.grad_dtype, recompute_mode(cfg_.train.recompute),
                                        cfg_.train.offload.activations ? cfg_.train.offload.prefetch : 0);
  if (g.dp > 1) {
    std::vector<Tensor> grads;
    for (auto& p : params_) grads.push_back(p.grad);
    reducer_ = std::make_unique<parallel::GradReducer>(grads, grid_->dp());
  }
  if (reducer_ || offload_) {  // a final gradient starts its bucket's all-reduce / its host update
    stage_->set_grad_ready_hook([this](const Tensor& t) {
      auto it = param_index_.find(t.id());
      if (it == param_index_.end()) return;
      if (reducer_) reducer_->mark_ready(it->second);
      if (offload_) offload_->grad_ready(it->second);
    });
  }
  sched_.kind = static_cast<parallel::ScheduleKind>(cfg_.parallel.schedule);
  sched_.pp = g.pp;
  sched_.virtual_stages = v;
  sched_.micro_batches = static_cast<int>(cfg_.accumulation_steps(opt_.world_size));
  std::vector<optim::ParamRef> refs;
  for (auto& p : params_) {
    if (!zero_) {
      // the optimizer writes the forward's low-precision copy in the same pass as the update
      // (offloaded: HostOffload::weights_up() uploads it instead)
      const bool own_copy = !offload_ && !p.master.same(p.param->value);
      refs.push_back({p.name, p.master, p.opt_grad, std::nullopt, own_copy ? p.param->value : Tensor()});
      continue;
    }
    // ZeRO-1: the optimizer sees only this DP rank's flat range (same decay rule as the whole)
    const bool decay = p.master.ndim() == 2;
    refs.push_back({p.name, p.master.view({-1}).rows(p.zero_begin, p.zero_end),
                    p.opt_grad.view({-1}).rows(p.zero_begin, p.zero_end), decay});
  }
  optim::AdamWOptions ao;
  ao.beta1 = cfg_.optim.betas[0];
  ao.beta2 = cfg_.optim.betas[1];
  ao.eps = cfg_.optim.eps;
  ao.weight_decay = cfg_.optim.weight_decay;
  ao.state = cfg_.optim.state == OptimState::fp32      ? optim::StateFormat::fp32
             : cfg_.optim.state == OptimState::bf16_sr ? optim::StateFormat::bf16_sr
                                                        : optim::StateFormat::int8;
  ao.seed = cfg_.train.seed;
  adam_ = std::make_unique<optim::AdamW>(ao, refs);
  schedule_.lr = cfg_.optim.lr;
  schedule_.min_lr = cfg_.optim.min_lr;
  schedule_.warmup = cfg_.optim.warmup_steps;
  schedule_.steps = cfg_.train.steps;
  schedule_.kind = cfg_.optim.schedule == LrSchedule::cosine ? optim::LrSchedule::cosine : optim::LrSchedule::constant;
  optim::LossScalerOptions lo;
  lo.initial_scale = cfg_.optim.loss_scale.initial;
  lo.growth_interval = cfg_.optim.loss_scale.growth_interval;
  scaler_ = optim::LossScaler(lo);

  if (latest) {
    resume_from(*latest);
  } else {
    if (opt_.resume && opt_.rank == 0 && !opt_.quiet)
      fmt::print("no checkpoint in {}: starting at step 0\n", dir);
    init_weights();
  }
  if (opt_.rank == 0) {
    fs::create_directories(dir);
    metrics_ = std::make_unique<MetricsWriter>((fs::path(dir) / "metrics.jsonl").string(), start_step_);
  }
  if (opt_.rank == 0 && !opt_.quiet) {
    fmt::print("ptrain: {} {} params ({} layers, hidden {}, heads {}/{}), precision {}, device {}\n", spec_.arch,
               si(static_cast<double>(num_params_)), spec_.layers, spec_.hidden, spec_.heads, spec_.kv_heads,
               dtype_name(spec_.dtype), device_ == Device::cuda ? "cuda" : "cpu");
    fmt::print("ptrain: {}\n", describe_threads(threads, cfg_.train.threads, opt_.local_ranks, opt_.world_size,
                                                 world_threads_ > 0 ? world_threads_ : threads));
    if (device_ == Device::cuda)
      fmt::print("ptrain: {}; MFU {}\n", describe_gpu(),
                 peak_flops_ > 0 ? fmt::format("against a peak of {:.1f} TFLOP/s ({})", peak_flops_ / 1e12,
                                               dtype_name(spec_.dtype))
                                 : std::string("not reported (no peak FLOP/s known for this device)"));
    if (opt_.world_size > 1)
      fmt::print("ptrain: {} ranks = dp {} x pp {} x tp {}{}, schedule {}{}, theoretical bubble {:.3f}{}\n",
                 opt_.world_size, g.dp, g.pp, g.tp, spec_.sequence_parallel ? " (sequence parallel)" : "",
                 to_string(cfg_.parallel.schedule), v > 1 ? fmt::format(" x {} virtual stages", v) : "",
                 parallel::theoretical_bubble(sched_), zero_ ? ", ZeRO-1" : "");
    if (opt_.world_size > 1)
      fmt::print("ptrain: {}\n", cfg_.parallel.selftest ? selftest_line_
                                                       : std::string("communicator self-test skipped (parallel.selftest: false)"));
    fmt::print("ptrain: data {} ({} tokens, {} train windows), global batch {} x {} tokens, {} micro-batches of {}\n",
               cfg_.data.path, train_data_->num_tokens(), sampler_->num_windows(), G, T, accum_, micro_);
    std::fflush(stdout);
  }
  setup_done_ = true;
}

void Trainer::build_grid() {
  parallel::GridShape shape;
  shape.tp = cfg_.parallel.tp;
  shape.pp = cfg_.parallel.pp;
  shape.dp = cfg_.resolved_dp(opt_.world_size);
  if (!world_in_) {
    PT_CHECK(shape.world() == 1, "a {}-rank layout without a communicator", shape.world());
    grid_ = parallel::Grid::single();
    return;
  }
  grid_ = std::make_unique<parallel::Grid>(std::move(world_in_), shape);
}

void Trainer::init_weights() {
  // drawn or read on the host (the CPU path's exact values), then placed where the master lives
  auto host_of = [](const Tensor& t) { return t.device() == Device::cpu ? t : Tensor::zeros(t.shape(), t.dtype()); };
  if (cfg_.train.init_from) {
    auto ws = model_->external_weights();
    std::vector<Tensor> targets;
    for (auto& w : ws) {
      // a full-shape fp32 buffer, sliced into this rank's master below
      PT_CHECK(param_index_.count(w.param->value.id()), "external weight {} has no parameter", w.name);
      targets.push_back(Tensor::zeros(w.param->full_shape, DType::f32));
    }
    auto extra = load_external_weights(*cfg_.train.init_from, ws, targets);
    for (size_t i = 0; i < ws.size(); ++i) {
      auto& p = params_[param_index_.at(ws[i].param->value.id())];
      Tensor h = host_of(p.master);
      p.param->slice_from_full(targets[i], h);
      if (!h.same(p.master)) p.master.copy_from(h);
    }
    if (!extra.empty() && opt_.rank == 0 && !opt_.quiet)
      fmt::print("warning: train.init_from: {} tensors in {} are not used by the model (first: {})\n", extra.size(),
                 *cfg_.train.init_from, extra.front());
  } else {
    for (auto& p : params_) {
      Tensor h = host_of(p.master);
      layers::init_parameter(h, *p.param, cfg_.train.seed, p.name);
      if (!h.same(p.master)) p.master.copy_from(h);
    }
  }
  for (auto& p : params_)
    if (!p.master.same(p.param->value)) p.param->value.copy_from(p.master);
}

// Where this DP rank's ZeRO-1 range of parameter p starts in the row-major full tensor, or -1
// when it is not one contiguous range there (no ZeRO, or a parameter split along a dimension
// other than rows, or in several pieces): those are gathered for the checkpoint instead.
int64_t Trainer::zero_shard_in_full(const TrainParam& p, const Shape& full) const {
  if (!zero_) return -1;
  const auto& sh = p.param->sharding;
  const auto pieces = p.param->pieces();
  if (sh.sharded() && (sh.dim != 0 || pieces.size() != 1)) return -1;
  const int64_t row = full.size() >= 2 ? shape_numel(full) / full[0] : 1;
  const int64_t first_row = sh.sharded() ? pieces.at(0).full_begin : 0;
  return first_row * row + p.zero_begin;
}

std::pair<Tensor, Tensor> Trainer::full_moments(size_t i) {
  auto& p = params_[i];
  Tensor m = adam_->exp_avg(i), v = adam_->exp_avg_sq(i);
  if (!zero_) return {m, v};
  auto gather = [&](const Tensor& shard) {
    Tensor full = Tensor::zeros(p.master.shape());
    zero_gather(p, shard, full.data<float>());
    return full;
  };
  return {gather(m), gather(v)};
}

void Trainer::zero_gather(const TrainParam& p, const Tensor& shard, float* whole) {
  // the DP ranks' flat ranges, padded to equal chunks, all-gathered on the host
  const int dp = grid_->shape().dp;
  const int64_t n = p.master.numel(), chunk = (n + dp - 1) / dp;
  const Tensor mine = shard.device() == Device::cpu ? shard : shard.to_device(Device::cpu);
  Tensor in = Tensor::zeros({chunk}), out = Tensor::zeros({chunk * dp});
  std::copy_n(mine.data<float>(), mine.numel(), in.data<float>());
  grid_->dp().all_gather(in, out);
  const float* o = out.data<float>();
  for (int r = 0; r < dp; ++r) {
    const int64_t b = n * r / dp, e = n * (r + 1) / dp;
    std::copy_n(o + r * chunk, e - b, whole + b);
  }
}

/// One entry per (group, parameter, shard piece): the pieces a rank holds of the full tensor.
std::vector<CkptEntry> Trainer::checkpoint_entries(bool for_write, std::vector<Tensor>& moments) {
  std::vector<CkptEntry> e;
  const bool low = is_low_precision(spec_.dtype);
  std::map<const layers::Parameter*, int64_t> vocab_rows;
  for (const auto& w : model_->external_weights())
    if (w.rows >= 0) vocab_rows[w.param] = w.rows;
  moments.clear();
  staged_.clear();
  // Checkpoint files are written from and read into host memory: device tensors are copied
  // down by write_rank_file one at a time (write), or read into host buffers that resume_from
  // uploads (read, staged_).
  auto host = [&](const Tensor& t) -> Tensor {
    if (t.device() == Device::cpu || for_write) return t;
    Tensor h = Tensor::zeros(t.shape(), t.dtype());
    staged_.emplace_back(h, t);
    return h;
  };
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i];
    Tensor m, v;
    Shape full = p.param->full_shape;
    if (auto it = vocab_rows.find(p.param); it != vocab_rows.end()) full[0] = it->second;
    if (for_write && zero_shard_in_full(p, full) >= 0) {
      // ZeRO-1: each DP rank writes its own range of the moments (no gather to any rank); the
      // masters and weights (replicated after the step's all-gather) come from the writer
      const bool tp_unique = p.param->sharding.sharded() || grid_->coord().tp == 0;
      if (!p.param->tied_replica && tp_unique) {
        const int64_t base = zero_shard_in_full(p, full), stored = shape_numel(full);
        const int64_t n = std::max<int64_t>(0, std::min(p.zero_end - p.zero_begin, stored - base));
        if (n > 0) {
          // produced when written (8-bit moments are decoded then: one tensor at a time)
          CkptEntry em{"exp_avg", p.name, Tensor(), full, {}, DType::f32, true, base};
          em.make = [this, i, n] { return adam_->exp_avg(i).view({-1}).rows(0, n); };
          CkptEntry ev{"exp_avg_sq", p.name, Tensor(), full, {}, DType::f32, true, base};
          ev.make = [this, i, n] { return adam_->exp_avg_sq(i).view({-1}).rows(0, n); };
          e.push_back(std::move(em));
          e.push_back(std::move(ev));
        }
      }
      if (!p.writer) continue;
      moments.push_back(Tensor());
      moments.push_back(Tensor());
      auto add_weights = [&](const std::string& group, const Tensor& t, DType store) {
        Shape off(full.size(), 0);
        if (p.param->sharding.sharded()) off[0] = p.param->pieces().at(0).full_begin;
        e.push_back({group, p.name, t, full, off, store, true});
      };
      add_weights("param", host(p.param->value), spec_.dtype);
      if (low) add_weights("master", host(p.master), DType::f32);
      continue;
    }
    // moments produced when written (one decoded 8-bit tensor at a time) unless a ZeRO-1
    // gather is needed, which is a collective every rank makes now, in order
    std::function<Tensor()> make_m, make_v;
    if (for_write && !zero_) {
      if (!p.writer) continue;
      make_m = [this, i] { return adam_->exp_avg(i); };
      make_v = [this, i] { return adam_->exp_avg_sq(i); };
    } else if (for_write) {
      std::tie(m, v) = full_moments(i);
      if (!p.writer) continue;
    } else {
      m = Tensor::zeros(p.master.shape());
      v = Tensor::zeros(p.master.shape());
    }
    moments.push_back(m);
    moments.push_back(v);
    auto add = [&](const std::string& group, const Tensor& t, DType store, std::function<Tensor()> make = {}) {
      const auto& sh = p.param->sharding;
      for (const auto& run : p.param->pieces()) {
        Shape off(full.size(), 0);
        Tensor block = t;
        int64_t r0 = -1, r1 = -1;  // the piece's local rows (dim-0 sharding)
        if (sh.sharded()) {
          off[static_cast<size_t>(sh.dim)] = run.full_begin;
          if (sh.dim == 0) {
            r0 = run.local_begin;
            r1 = run.local_begin + run.length;
            if (t.defined()) block = t.rows(r0, r1);
          } else {
            PT_CHECK(sh.groups == 1, "{}: sections along dim {} are not supported in checkpoints", p.name, sh.dim);
          }
        }
        CkptEntry ce{group, p.name, block, full, off, store, true};
        if (make) ce.make = [make, r0, r1] { return r0 < 0 ? make() : make().rows(r0, r1); };
        e.push_back(std::move(ce));
      }
    };
    // low precision: weights are resumed from the fp32 masters ("param" is written, not read);
    // fp32: "param" is read into the master (the weights themselves, or their host copy under
    // optimizer offload), which resume_from then places in the weights
    add("param", for_write ? host(p.param->value) : low ? p.param->value : host(p.master), spec_.dtype);
    if (low) add("master", host(p.master), DType::f32);
    add("exp_avg", m, DType::f32, make_m);
    add("exp_avg_sq", v, DType::f32, make_v);
  }
  return e;
}

void Trainer::save_checkpoint(int64_t step) {
  const std::string& dir = cfg_.checkpoint.dir;
  std::vector<Tensor> moments;
  auto entries = checkpoint_entries(true, moments);
  write_rank_file(dir, step, opt_.rank, entries);
  grid_->world().barrier();  // every rank's file is complete (and fsync'd) before meta.json
  if (opt_.rank == 0) {
    nlohmann::json meta;
    meta["format"] = "ptrain-checkpoint-1";
    meta["step"] = step;
    meta["config"] = to_json(cfg_.resolved(opt_.world_size));
    const auto& g = grid_->shape();
    meta["layout"] = {{"world_size", opt_.world_size}, {"tp", g.tp}, {"pp", g.pp}, {"dp", g.dp},
                      {"virtual_stages", cfg_.parallel.virtual_stages}, {"zero", zero_ ? 1 : 0}};
    meta["sampler"] = sampler_->position(step);
    meta["rng"] = {{"seed", cfg_.train.seed}, {"kind", "philox4x32-10, counter-based: no state beyond the seed"}};
    meta["loss_scaler"] = scaler_.to_json();
    meta["optimizer"] = {{"name", "adamw"}, {"step_count", adam_->step_count()}};
    meta["params"] = num_params_;
    finalize_checkpoint(dir, step, meta, cfg_.checkpoint.keep);
  }
  grid_->world().barrier();  // nobody goes on (or exits) before the checkpoint is in place
}

void Trainer::resume_from(int64_t step) {
  const std::string& dir = cfg_.checkpoint.dir;
  auto meta = read_meta(dir, step);
  PT_USER_CHECK(meta.value("format", "") == "ptrain-checkpoint-1", "checkpoint {}/{}: unknown format. HINT: it was not "
                "written by this ptrain",
                dir, step_dir_name(step));
  sampler_->check_position(meta.at("sampler"), step);
  const bool low = is_low_precision(spec_.dtype);
  std::vector<Tensor> moments;
  auto entries = checkpoint_entries(false, moments);
  // Weights come from "master" (low precision: the fp32 masters are the truth) or "param".
  std::vector<CkptEntry> want;
  for (auto& e : entries) {
    if (low && e.group == "param") continue;
    want.push_back(e);
  }
  read_checkpoint(dir, step, want);
  for (auto& [h, d] : staged_) d.copy_from(h);  // device runs: read on the host, placed on the device
  staged_.clear();
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i];
    Tensor m = moments[2 * i], v = moments[2 * i + 1];
    if (zero_) {
      m = m.view({-1}).rows(p.zero_begin, p.zero_end).clone();
      v = v.view({-1}).rows(p.zero_begin, p.zero_end).clone();
    }
    adam_->set_state(i, m, v);
  }
  for (auto& p : params_)
    if (!p.master.same(p.param->value)) p.param->value.copy_from(p.master);
  adam_->set_step_count(meta.at("optimizer").at("step_count").get<int64_t>());
  scaler_.from_json(meta.at("loss_scaler"));
  start_step_ = step;
  if (opt_.rank == 0 && !opt_.quiet) {
    const auto& l = meta.at("layout");
    fmt::print("resumed from {}/{} (written by {} ranks: dp {} x pp {} x tp {})\n", dir, step_dir_name(step),
               l.value("world_size", 1), l.value("dp", 1), l.value("pp", 1), l.value("tp", 1));
  }
}

MicroBatch Trainer::micro_batch(const std::vector<int32_t>& in, const std::vector<int32_t>& tg, int64_t m) const {
  const int64_t T = cfg_.train.seq_len;
  const auto b = static_cast<ptrdiff_t>(m * micro_ * T), e = static_cast<ptrdiff_t>((m + 1) * micro_ * T);
  return {tokens({in.begin() + b, in.begin() + e}, {micro_, T}), tokens({tg.begin() + b, tg.begin() + e}, {micro_, T})};
}

Tensor Trainer::tokens(const std::vector<int32_t>& ids, Shape shape) const {
  return Tensor::from_vector_i32(ids, std::move(shape)).to_device(device_);
}

void Trainer::sync_grads() {
  parallel::Timeline::Scope span(&timeline_, "grad sync", "comm");
  if (reducer_) reducer_->finish();  // data parallel: sum over DP replicas
  for (auto& p : params_) {
    if (p.param->tp_partial_grad) grid_->tp().all_reduce(p.grad);  // partial over TP ranks
  }
  // tied embedding: the first stage's table and the last stage's replica get the summed gradient
  if (spec_.tie_embeddings && grid_->embed().size() > 1) {
    for (auto& p : params_)
      if (p.name == "model.embed_tokens.weight" || p.name == "transformer.wte.weight") grid_->embed().all_reduce(p.grad);
  }
}

double Trainer::grad_norm(double loss_scale) {
  std::vector<optim::ParamRef> mine;
  for (auto& p : params_)
    if (p.norm_owner) {
      // offloaded: the device gradients themselves (the norm reads only gradients; the device
      // sums in the CPU's chunk order, so either place gives the same number)
      if (offload_)
        mine.push_back({p.name, p.grad, p.grad});
      else
        mine.push_back({p.name, p.master, p.opt_grad});
    }
  double ss = optim::grad_sum_squares(mine);
  if (opt_.world_size > 1) {
    // per-rank partial sums in world-rank order, summed in double
    const auto all = grid_->world().gather_strings(std::string(reinterpret_cast<const char*>(&ss), sizeof ss), 0);
    double tot = 0;
    for (const auto& b : all) {
      double x;
      std::memcpy(&x, b.data(), sizeof x);
      tot += x;
    }
    Tensor t = Tensor::full({1}, tot, DType::f64);
    grid_->world().broadcast(t, 0);
    ss = t.to_double_vector()[0];
  }
  // The gradients still carry the fp16 loss scale, a power of two: dividing the sum of squares
  // by its square is exact, so this is the norm of the unscaled gradients, bit for bit.
  return std::sqrt(ss / (loss_scale * loss_scale));
}

void Trainer::optimizer_step(double lr, double grad_scale, bool started) {
  {
    parallel::Timeline::Scope span(&timeline_, "optimizer", "optimizer");
    if (offload_ && started)  // the updates began in backward: the rest, then wait for all
      offload_->finish(grad_scale);
    else if (offload_)  // gradient down, host update, weights up: pipelined over the slots
      offload_->step(*adam_, lr, grad_scale, !zero_);
    else
      adam_->step(lr, grad_scale);  // also writes the low-precision weights (ParamRef::model)
  }
  if (zero_) {
    parallel::Timeline::Scope span(&timeline_, "zero all-gather", "comm");
    for (auto& p : params_) {
      // gathered on the host: into the master itself, or (a device master) into a copy that goes up
      const Tensor mine = p.master.view({-1}).rows(p.zero_begin, p.zero_end);
      if (p.master.device() == Device::cpu) {
        zero_gather(p, mine, p.master.data<float>());
      } else {
        Tensor whole = Tensor::zeros(p.master.shape());
        zero_gather(p, mine, whole.data<float>());
        p.master.copy_from(whole);
      }
    }
    for (auto& p : params_)  // the gathered masters -> the forward's weights
      if (!p.master.same(p.param->value)) p.param->value.copy_from(p.master);
  }
}

double Trainer::train_step(int64_t s) {
  const int64_t T = cfg_.train.seq_len, G = cfg_.train.global_batch;
  const int64_t local = sampler_->local_batch();
  std::vector<int32_t> in(static_cast<size_t>(local * T)), tg(static_cast<size_t>(local * T));
  sampler_->batch(s, in.data(), tg.data(), cfg_.model.vocab_size);

  for (auto& p : params_) p.grad.zero_();

  const bool fp16 = spec_.dtype == DType::f16;
  const double loss_scale = fp16 ? scaler_.scale() : 1.0;
  const double weight = 1.0 / static_cast<double>(G * T);
  stage_->set_batch(tokens(in, {local, T}), tokens(tg, {local, T}), micro_, weight, loss_scale);
  if (reducer_) reducer_->begin_step();
  // Offloaded optimizer: with nothing to wait for (no clipping, no fp16 loss scale, no ZeRO
  // gather) each parameter's host update starts from backward as its gradient is final.
  const bool eager = offload_ && !fp16 && !zero_ && !(cfg_.optim.grad_clip > 0);
  const double lr = schedule_.at(adam_->step_count());
  if (eager) offload_->begin_step(*adam_, lr, true);
  const auto stats = parallel::run_schedule(sched_, *stage_, grid_->pp(), &timeline_);
  sync_grads();
  // the loss: Σ over micro-batches on the last stage, one TP rank per DP replica, summed over DP
  double loss_sum = grid_->last_stage() && grid_->coord().tp == 0 ? stage_->loss_sum() : 0.0;
  if (opt_.world_size > 1) {
    double v[2] = {loss_sum, stats.bubble()};
    grid_->world().all_reduce(std::span<double>(v, 2));
    loss_sum = v[0];
    last_bubble_ = v[1] / opt_.world_size;
  } else {
    last_bubble_ = stats.bubble();
  }
  const double norm = grad_norm(loss_scale);
  last_grad_norm_ = norm;
  const bool finite = std::isfinite(norm) && std::isfinite(loss_sum);
  if (fp16) {
    if (!scaler_.update(!finite)) {
      last_lr_ = schedule_.at(adam_->step_count());
      return loss_sum;  // skipped: batch used, Adam's count and the schedule not advanced
    }
  } else if (!finite) {
    throw Error(fmt::format("non-finite {} at step {} (loss {}, grad norm {}); stopping without checkpointing these "
                            "weights. HINT: lower optim.lr, raise warmup, or use precision fp32/bf16",
                            std::isfinite(loss_sum) ? "gradient" : "loss", s + 1, loss_sum, norm));
  }
  // unscale and clip in the optimizer's read of the gradients: g * (float)(coef / scale), with
  // coef / scale exact (a power-of-two scale), so the same as unscaling, then clipping
  last_lr_ = lr;
  optimizer_step(last_lr_, optim::clip_coefficient(norm, cfg_.optim.grad_clip) / loss_scale, eager);
  return loss_sum;
}

double Trainer::evaluate() {
  NoGradGuard no_grad;
  const int64_t T = cfg_.train.seq_len, G = cfg_.train.global_batch;
  const int64_t local = val_sampler_->local_batch();
  std::vector<int32_t> in(static_cast<size_t>(local * T)), tg(static_cast<size_t>(local * T));
  const int64_t batches = cfg_.train.eval_batches;
  const int pp = grid_->shape().pp, r = grid_->coord().pp, v = cfg_.parallel.virtual_stages;
  const int S = pp * v;
  double sum = 0;
  for (int64_t b = 0; b < batches; ++b) {
    val_sampler_->batch(b, in.data(), tg.data(), cfg_.model.vocab_size);
    for (int64_t m = 0; m < local / micro_; ++m) {
      MicroBatch mb = micro_batch(in, tg, m);
      // forward only, stage after stage (activations passed on with blocking messages)
      Tensor h;
      for (int gs = 0; gs < S; ++gs) {
        if (gs % pp != r) continue;
        const int chunk = gs / pp;
        if (gs > 0 && pp > 1) {
          h = Tensor::empty(stage_->input_shape(chunk), spec_.dtype, device_);
          grid_->pp().recv(h, (gs - 1) % pp, gs);  // no schedule message is in flight here
        }
        Tensor out = stage_->forward_only(chunk, h, mb.inputs, mb.targets);
        if (gs == S - 1) {
          if (grid_->coord().tp == 0) sum += out.to_double_vector()[0];
        } else if (pp > 1) {
          grid_->pp().isend(out, (gs + 1) % pp, gs + 1)->wait();
        } else {
          h = out;
        }
      }
    }
  }
  if (opt_.world_size > 1) grid_->world().all_reduce(std::span<double>(&sum, 1));
  return sum / static_cast<double>(batches * G * T);
}

void Trainer::log_step(int64_t step, double loss, double secs, double val_loss, bool skipped) {
  const int64_t tokens = static_cast<int64_t>(cfg_.train.global_batch) * cfg_.train.seq_len;
  const double tps = static_cast<double>(tokens) / secs;
  MemoryStats mem = cpu_memory_stats();
  int64_t reserved = -1;
#if PTRAIN_HAVE_CUDA
  if (device_ == Device::cuda) {  // the device's figures (the caching allocator's)
    const auto st = cuda::device_allocator().stats();
    mem.allocated = static_cast<int64_t>(st.allocated);
    mem.peak = static_cast<int64_t>(st.peak_allocated);
    reserved = static_cast<int64_t>(st.reserved);
  }
#endif
  const int64_t host_rss = host_resident_bytes();
  if (metrics_) {
    MetricsRow r;
    r.add("step", step).add("loss", loss).add("lr", last_lr_).add("grad_norm", last_grad_norm_);
    r.add("tokens_per_s", tps).add("step_time_s", secs);
    // MFU = tokens/s * (6 N + 12 layers hidden seq_len) / peak; GPUs with a known peak only
    if (peak_flops_ > 0)
      r.add("mfu", tps * model_flops_per_token(num_params_, spec_.layers, spec_.hidden, cfg_.train.seq_len) /
                       peak_flops_);
    else
      r.add_null("mfu");
    r.add("mem_allocated_bytes", mem.allocated).add("mem_peak_bytes", mem.peak);
    if (reserved >= 0) r.add("mem_reserved_bytes", reserved);
    r.add("host_resident_bytes", host_rss);
    if (cfg_.train.offload.activations) {  // this step's copies and the pinned bytes they needed at most
      const ActivationOffloadStats st = activation_offload_stats();
      r.add("offload_down_bytes", st.bytes_down).add("offload_up_bytes", st.bytes_up);
      r.add("offload_host_peak_bytes", st.host_peak_bytes).add("offload_compute_waits", st.compute_waits);
    }
    if (offload_) {  // the host AdamW: this step's update time, and how much of it ran during backward
      const auto& st = offload_->stats();
      r.add("opt_host_update_s", st.update_s).add("opt_host_hidden_s", st.hidden_s);
      r.add("opt_down_bytes", st.bytes_down).add("opt_up_bytes", st.bytes_up).add("opt_early_params", st.early);
    }
    if (std::isfinite(val_loss)) r.add("val_loss", val_loss);
    if (spec_.dtype == DType::f16) r.add("loss_scale", scaler_.scale()).add("skipped", skipped);
    if (sched_.pp > 1) r.add("bubble", last_bubble_).add("bubble_theory", parallel::theoretical_bubble(sched_));
    metrics_->write(r);
  }
  if (cfg_.train.offload.activations) reset_activation_offload_stats();  // the figures are per step
  if (opt_.rank != 0 || opt_.quiet) return;
  if (cfg_.train.log_every > 0 && (step % cfg_.train.log_every == 0 || step == cfg_.train.steps || std::isfinite(val_loss))) {
    const double avg = elapsed_ / static_cast<double>(std::max<int64_t>(1, timed_steps_));
    std::string line = fmt::format("step {:>{}}/{} | loss {:.4f} | lr {:.3e} | grad norm {:.4f} | {} tok/s | elapsed {} | ETA {}",
                                   step, std::to_string(cfg_.train.steps).size(), cfg_.train.steps, loss, last_lr_,
                                   last_grad_norm_, si(tps), hms(elapsed_), hms(avg * static_cast<double>(cfg_.train.steps - step)));
    if (std::isfinite(val_loss)) line += fmt::format(" | val loss {:.4f}", val_loss);
    constexpr double GiB = 1024.0 * 1024.0 * 1024.0;
    line += fmt::format(" | {} mem {:.2f}/{:.2f} GiB (peak {:.2f}), host {:.2f} GiB",
                        device_ == Device::cuda ? "device" : "cpu", static_cast<double>(mem.allocated) / GiB,
                        static_cast<double>(reserved >= 0 ? reserved : mem.allocated) / GiB,
                        static_cast<double>(mem.peak) / GiB, static_cast<double>(host_rss) / GiB);
    if (sched_.pp > 1)
      line += fmt::format(" | bubble {:.3f} (theory {:.3f})", last_bubble_, parallel::theoretical_bubble(sched_));
    if (skipped) line += " | skipped (fp16 overflow)";
    fmt::print("{}\n", line);
    std::fflush(stdout);
  }
}

int Trainer::run() {
  setup();
  const int64_t steps = cfg_.train.steps;
  if (start_step_ >= steps) {
    if (opt_.rank == 0 && !opt_.quiet) fmt::print("run already complete at step {} of {}\n", start_step_, steps);
    return 0;
  }
  // one step's timeline goes to a Chrome trace (the second step: the first one warms up)
  const int64_t trace_step = std::min<int64_t>(start_step_ + 2, steps);
  // test hook (tests/launch/timeout.sh): PTRAIN_TEST_STALL="RANK:STEP" makes that rank hang
  // before that step, as a stuck GPU or a deadlock would, while its peers wait in a collective
  int64_t stall_step = -1;
  if (const char* stall = std::getenv("PTRAIN_TEST_STALL")) {
    int rank = -1;
    long long at = -1;
    if (std::sscanf(stall, "%d:%lld", &rank, &at) == 2 && rank == opt_.rank) stall_step = at;
  }
  for (int64_t s = start_step_; s < steps; ++s) {
    const int64_t step = s + 1;
    if (step == trace_step) {
      grid_->world().barrier();  // aligns the ranks' clocks (t = 0 at the barrier)
      timeline_.start();
      if (cfg_.train.offload.activations) activation_offload_trace_start(timeline_.now_us());
    }
    if (step == stall_step) std::this_thread::sleep_for(std::chrono::hours(1));
    const auto t0 = Clock::now();
    const int64_t applied_before = adam_->step_count();
    const double loss = train_step(s);
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    elapsed_ += secs;
    ++timed_steps_;
    const bool skipped = adam_->step_count() == applied_before;
    if (step == trace_step) {
      if (cfg_.train.offload.activations)  // the copies and the compute stream's waits, on their own track
        for (const DeviceSpan& d : activation_offload_trace_collect()) timeline_.add(d.name, "offload", d.start_us, d.end_us);
      if (offload_) {  // the host AdamW's updates (the worker thread), on their own track
        const double now = timeline_.now_us();
        const auto tnow = Clock::now();
        auto us = [&](Clock::time_point t) { return now - std::chrono::duration<double, std::micro>(tnow - t).count(); };
        for (const auto& sp : offload_->stats().spans)
          timeline_.add("adam " + params_[sp.param].name, "host adam", us(sp.start), us(sp.end));
      }
      timeline_.stop();
      const auto& c = grid_->coord();
      parallel::write_chrome_trace(timeline_, grid_->world(),
                                   fmt::format("(dp {}, pp {}, tp {})", c.dp, c.pp, c.tp),
                                   (fs::path(cfg_.checkpoint.dir) / "trace.json").string());
    }
    double val = std::nan("");
    if (cfg_.train.eval_every > 0 && step % cfg_.train.eval_every == 0) val = evaluate();
    log_step(step, loss, secs, val, skipped);
    const bool last = step == steps;
    // a signal reaches ranks at different moments: agree on it, so all checkpoint and stop together
    int sig = stop_signal().load();
    if (opt_.world_size > 1) {
      double d = sig;
      grid_->world().all_reduce(std::span<double>(&d, 1), parallel::ReduceOp::max);
      sig = static_cast<int>(d);
    }
    if (last || sig || (cfg_.checkpoint.every > 0 && step % cfg_.checkpoint.every == 0)) save_checkpoint(step);
    if (sig && !last) {
      if (opt_.rank == 0 && !opt_.quiet)
        fmt::print("stopped by signal {} after step {}; checkpoint {} written. Resume with --resume\n", sig, step,
                   step_dir_name(step));
      return 128 + sig;
    }
  }
  return 0;
}

}  // namespace ptrain::launch
