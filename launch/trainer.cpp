// launch/trainer.cpp — the single-rank training loop (see trainer.h for the order of work).
#include "launch/trainer.h"

#include <cblas.h>
#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <thread>

#include "core/autograd.h"
#include "data/token_file.h"
#include "launch/checkpoint.h"
#include "launch/weights_io.h"
#include "optim/grad_clip.h"

namespace fs = std::filesystem;

namespace ptrain::launch {

std::atomic<int>& stop_signal() {
  static std::atomic<int> s{0};
  return s;
}

namespace {

using Clock = std::chrono::steady_clock;

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

int resolve_threads(const Config& cfg, int local_ranks) {
  if (cfg.train.threads > 0) return cfg.train.threads;
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  return std::max(1, static_cast<int>(hw) / std::max(1, local_ranks));
}

}  // namespace

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

Trainer::Trainer(Config cfg, RunOptions opt) : cfg_(std::move(cfg)), opt_(opt) {}
Trainer::~Trainer() = default;

void Trainer::setup() {
  if (setup_done_) return;
  const int threads = resolve_threads(cfg_, opt_.local_ranks);
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);

  PT_USER_CHECK(cfg_.device != DeviceChoice::cuda,
                "device: cuda is not available in this build (the CPU backend runs it). HINT: set device: cpu or auto");
  PT_USER_CHECK(opt_.world_size == 1,
                "this ptrain runs one rank; got a world of {} ranks. HINT: run without mpirun (parallel layouts come "
                "with the parallel backend)",
                opt_.world_size);

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
  so.dp_size = 1;
  so.dp_rank = 0;
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
  std::optional<int64_t> latest;
  if (opt_.resume) {
    latest = latest_checkpoint(dir, /*clean=*/true);
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

  // ---- model and optimizer ----
  spec_ = model_spec(cfg_);
  model_ = layers::make_model(spec_);
  num_params_ = count_parameters(*model_);
  for (auto& np : model_->named_parameters()) {
    TrainParam p;
    p.name = np.name;
    p.param = np.param;
    p.master = is_low_precision(spec_.dtype) ? Tensor::zeros(np.param->value.shape(), DType::f32) : np.param->value;
    p.grad = np.param->value.grad_buffer(cfg_.train.grad_dtype);
    params_.push_back(std::move(p));
  }
  std::vector<optim::ParamRef> refs;
  for (auto& p : params_) refs.push_back({p.name, p.master, p.grad});
  optim::AdamWOptions ao;
  ao.beta1 = cfg_.optim.betas[0];
  ao.beta2 = cfg_.optim.betas[1];
  ao.eps = cfg_.optim.eps;
  ao.weight_decay = cfg_.optim.weight_decay;
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
    fmt::print("ptrain: {} {} params ({} layers, hidden {}, heads {}/{}), precision {}, device cpu, {} threads\n",
               spec_.arch, si(static_cast<double>(num_params_)), spec_.layers, spec_.hidden, spec_.heads,
               spec_.kv_heads, dtype_name(spec_.dtype), threads);
    fmt::print("ptrain: data {} ({} tokens, {} train windows), global batch {} x {} tokens, {} micro-batches of {}\n",
               cfg_.data.path, train_data_->num_tokens(), sampler_->num_windows(), G, T, accum_, micro_);
    std::fflush(stdout);
  }
  setup_done_ = true;
}

void Trainer::init_weights() {
  if (cfg_.train.init_from) {
    auto ws = model_->external_weights();
    std::vector<Tensor> targets;
    for (auto& w : ws) {
      // the fp32 tensor that holds this parameter's master
      Tensor t;
      for (auto& p : params_)
        if (p.param == w.param) t = p.master;
      PT_CHECK(t.defined(), "external weight {} has no parameter", w.name);
      targets.push_back(t);
    }
    auto extra = load_external_weights(*cfg_.train.init_from, ws, targets);
    if (!extra.empty() && opt_.rank == 0 && !opt_.quiet)
      fmt::print("warning: train.init_from: {} tensors in {} are not used by the model (first: {})\n", extra.size(),
                 *cfg_.train.init_from, extra.front());
  } else {
    for (auto& p : params_) layers::init_tensor(p.master, p.param->init, cfg_.train.seed, p.name);
  }
  for (auto& p : params_)
    if (!p.master.same(p.param->value)) p.param->value.copy_from(p.master);
}

std::vector<CkptEntry> Trainer::checkpoint_entries(bool for_write) {
  std::vector<CkptEntry> e;
  const bool low = is_low_precision(spec_.dtype);
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i];
    Shape full = p.param->value.shape();
    for (const auto& w : model_->external_weights())
      if (w.param == p.param && w.rows >= 0) full[0] = w.rows;
    e.push_back({"param", p.name, p.param->value, full, {}, spec_.dtype, true});
    if (low) e.push_back({"master", p.name, p.master, full, {}, DType::f32, true});
    e.push_back({"exp_avg", p.name, for_write ? adam_->exp_avg(i) : Tensor::zeros(p.master.shape()), full, {},
                 DType::f32, true});
    e.push_back({"exp_avg_sq", p.name, for_write ? adam_->exp_avg_sq(i) : Tensor::zeros(p.master.shape()), full, {},
                 DType::f32, true});
  }
  return e;
}

void Trainer::save_checkpoint(int64_t step) {
  const std::string& dir = cfg_.checkpoint.dir;
  auto entries = checkpoint_entries(true);
  write_rank_file(dir, step, opt_.rank, entries);
  if (opt_.rank != 0) return;
  nlohmann::json meta;
  meta["format"] = "ptrain-checkpoint-1";
  meta["step"] = step;
  meta["config"] = to_json(cfg_.resolved(opt_.world_size));
  meta["layout"] = {{"world_size", opt_.world_size}, {"tp", 1}, {"pp", 1}, {"dp", 1}, {"zero", 0}};
  meta["sampler"] = sampler_->position(step);
  meta["rng"] = {{"seed", cfg_.train.seed}, {"kind", "philox4x32-10, counter-based: no state beyond the seed"}};
  meta["loss_scaler"] = scaler_.to_json();
  meta["optimizer"] = {{"name", "adamw"}, {"step_count", adam_->step_count()}};
  meta["params"] = num_params_;
  finalize_checkpoint(dir, step, meta, cfg_.checkpoint.keep);
}

void Trainer::resume_from(int64_t step) {
  const std::string& dir = cfg_.checkpoint.dir;
  auto meta = read_meta(dir, step);
  PT_USER_CHECK(meta.value("format", "") == "ptrain-checkpoint-1", "checkpoint {}/{}: unknown format. HINT: it was not "
                "written by this ptrain",
                dir, step_dir_name(step));
  sampler_->check_position(meta.at("sampler"), step);
  auto entries = checkpoint_entries(false);
  const bool low = is_low_precision(spec_.dtype);
  std::vector<CkptEntry> want;
  for (auto& e : entries)
    if (!(low && e.group == "param")) want.push_back(e);  // low precision: weights come from the masters
  read_checkpoint(dir, step, want);
  size_t k = 0;
  for (size_t i = 0; i < params_.size(); ++i) {
    // per parameter: weights, exp_avg, exp_avg_sq (see checkpoint_entries; "param" dropped when low precision)
    ++k;  // the weights: "master" (low precision) or "param" (fp32, the same tensor), read in place
    Tensor m = want[k++].tensor, v = want[k++].tensor;
    adam_->set_state(i, m, v);
  }
  for (auto& p : params_)
    if (!p.master.same(p.param->value)) p.param->value.copy_from(p.master);
  adam_->set_step_count(meta.at("optimizer").at("step_count").get<int64_t>());
  scaler_.from_json(meta.at("loss_scaler"));
  start_step_ = step;
  if (opt_.rank == 0 && !opt_.quiet) fmt::print("resumed from {}/{}\n", dir, step_dir_name(step));
}

MicroBatch Trainer::micro_batch(const std::vector<int32_t>& in, const std::vector<int32_t>& tg, int64_t m) const {
  const int64_t T = cfg_.train.seq_len;
  const auto b = static_cast<ptrdiff_t>(m * micro_ * T), e = static_cast<ptrdiff_t>((m + 1) * micro_ * T);
  return {Tensor::from_vector_i32(std::vector<int32_t>(in.begin() + b, in.begin() + e), {micro_, T}),
          Tensor::from_vector_i32(std::vector<int32_t>(tg.begin() + b, tg.begin() + e), {micro_, T})};
}

double Trainer::train_step(int64_t s) {
  const int64_t T = cfg_.train.seq_len, G = cfg_.train.global_batch;
  const int64_t local = sampler_->local_batch();
  std::vector<int32_t> in(static_cast<size_t>(local * T)), tg(static_cast<size_t>(local * T));
  sampler_->batch(s, in.data(), tg.data(), cfg_.model.vocab_size);

  std::vector<optim::ParamRef> refs;
  for (auto& p : params_) refs.push_back({p.name, p.master, p.grad});
  optim::zero_grads(refs);

  const bool fp16 = spec_.dtype == DType::f16;
  const double loss_scale = fp16 ? scaler_.scale() : 1.0;
  const double weight = 1.0 / static_cast<double>(G * T);
  double loss_sum = 0;
  for (int64_t m = 0; m < accum_; ++m) {
    MicroBatch mb = micro_batch(in, tg, m);
    Tape tape(cfg_.train.grad_dtype);
    TapeGuard guard(&tape);
    Tensor loss = model_->loss(mb.inputs, mb.targets, weight);
    loss_sum += loss.to_double_vector()[0];
    Tensor seed = Tensor::full({1}, loss_scale);
    tape.backward(loss, seed);
  }
  if (fp16) optim::scale_grads(refs, 1.0 / loss_scale);  // unscale (rounds back to the gradient dtype)
  const double norm = optim::global_grad_norm(refs);
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
  optim::scale_grads(refs, optim::clip_coefficient(norm, cfg_.optim.grad_clip));
  last_lr_ = schedule_.at(adam_->step_count());
  adam_->step(last_lr_);
  for (auto& p : params_)
    if (!p.master.same(p.param->value)) p.param->value.copy_from(p.master);
  return loss_sum;
}

double Trainer::evaluate() {
  NoGradGuard no_grad;
  const int64_t T = cfg_.train.seq_len, G = cfg_.train.global_batch;
  const int64_t local = val_sampler_->local_batch();
  std::vector<int32_t> in(static_cast<size_t>(local * T)), tg(static_cast<size_t>(local * T));
  const int64_t batches = cfg_.train.eval_batches;
  double sum = 0;
  for (int64_t b = 0; b < batches; ++b) {
    val_sampler_->batch(b, in.data(), tg.data(), cfg_.model.vocab_size);
    for (int64_t m = 0; m < local / micro_; ++m) {
      MicroBatch mb = micro_batch(in, tg, m);
      sum += model_->loss(mb.inputs, mb.targets, 1.0).to_double_vector()[0];
    }
  }
  return sum / static_cast<double>(batches * G * T);
}

void Trainer::log_step(int64_t step, double loss, double secs, double val_loss, bool skipped) {
  const int64_t tokens = static_cast<int64_t>(cfg_.train.global_batch) * cfg_.train.seq_len;
  const double tps = static_cast<double>(tokens) / secs;
  const auto mem = cpu_memory_stats();
  if (metrics_) {
    MetricsRow r;
    r.add("step", step).add("loss", loss).add("lr", last_lr_).add("grad_norm", last_grad_norm_);
    r.add("tokens_per_s", tps).add("step_time_s", secs);
    r.add_null("mfu");  // no peak FLOP/s table for CPUs: MFU is reported on GPUs only
    r.add("mem_allocated_bytes", mem.allocated).add("mem_peak_bytes", mem.peak);
    if (std::isfinite(val_loss)) r.add("val_loss", val_loss);
    if (spec_.dtype == DType::f16) r.add("loss_scale", scaler_.scale()).add("skipped", skipped);
    metrics_->write(r);
  }
  if (opt_.rank != 0 || opt_.quiet) return;
  if (cfg_.train.log_every > 0 && (step % cfg_.train.log_every == 0 || step == cfg_.train.steps || std::isfinite(val_loss))) {
    const double avg = elapsed_ / static_cast<double>(std::max<int64_t>(1, timed_steps_));
    std::string line = fmt::format("step {:>{}}/{} | loss {:.4f} | lr {:.3e} | grad norm {:.4f} | {} tok/s | elapsed {} | ETA {}",
                                   step, std::to_string(cfg_.train.steps).size(), cfg_.train.steps, loss, last_lr_,
                                   last_grad_norm_, si(tps), hms(elapsed_), hms(avg * static_cast<double>(cfg_.train.steps - step)));
    if (std::isfinite(val_loss)) line += fmt::format(" | val loss {:.4f}", val_loss);
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
  for (int64_t s = start_step_; s < steps; ++s) {
    const auto t0 = Clock::now();
    const int64_t applied_before = adam_->step_count();
    const double loss = train_step(s);
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    elapsed_ += secs;
    ++timed_steps_;
    const int64_t step = s + 1;
    const bool skipped = adam_->step_count() == applied_before;
    double val = std::nan("");
    if (cfg_.train.eval_every > 0 && step % cfg_.train.eval_every == 0) val = evaluate();
    log_step(step, loss, secs, val, skipped);
    const bool last = step == steps;
    const int sig = stop_signal().load();
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
