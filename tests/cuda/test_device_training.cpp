// tests/cuda/test_device_training.cpp — training end to end with `device: cuda` (in CI: the
// emulated device, the same kernels on the SIMT runtime) against `device: cpu`, the reference:
//  * fp32: the loss within 1e-5 relative of the CPU's at every one of 20 steps;
//  * bf16: within 1e-5 relative of the CPU's bf16 run (the same rounding points) and within
//    2e-2 of fp32 at every step;
//  * fp16: an injected overflow (a loss scale of 2^28 overflows the fp16 gradients) skips the
//    step, halves the scale and goes on, as on the CPU;
//  * resume on the device is bit-identical to the uninterrupted device run (fp32, bf16), and
//    the device checkpoint holds what a CPU checkpoint holds (same datasets, dtypes, shapes);
//  * the launch counters show every op of the op table ran its own kernel in device steps;
//  * `device` is chosen as DESIGN.md says; a multi-rank device run is refused.
// Label `cuda`: skipped (never passed) without a device.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "core/cuda/device.h"
#include "core/cuda/launch_stats.h"
#include "core/cuda/runtime.h"
#include "core/h5io.h"
#include "core/ops_table.h"
#include "data/prepare.h"
#include "launch/checkpoint.h"
#include "launch/config.h"
#include "launch/trainer.h"
#include "launch/weights_io.h"
#include "layers/model.h"
#include "layers/registry.h"
#include "tests/launch/trainer_test_util.h"

namespace fs = std::filesystem;
using namespace ptrain;
using namespace ptrain::launch;

// A researcher's MLP made of the two ops no built-in block uses (silu, scale), registered from
// the test as any user layer would be: down(silu(up(x)) * 0.5) ⊙-free, so it also shows that a
// layer written without a device in mind runs on the device.
namespace ptrain::layers {
namespace {
class SiluScaleMlp : public Layer {
 public:
  explicit SiluScaleMlp(const ModelSpec& s) {
    up_ = &register_module("up_proj", std::make_unique<Linear>(s.hidden, s.ffn_hidden, false, s.dtype, Init::Normal(0.02)));
    down_ = &register_module("down_proj", std::make_unique<Linear>(s.ffn_hidden, s.hidden, false, s.dtype, Init::Normal(0.02)));
  }
  Tensor forward(const Tensor& x, const ForwardCtx&) override {
    return down_->forward(ops::scale(ops::silu(up_->forward(x)), 0.5));
  }

 private:
  Linear *up_, *down_;
};
}  // namespace
PTRAIN_REGISTER_LAYER(mlp, "test_silu_scale", [](const ModelSpec& s, int) { return std::make_unique<SiluScaleMlp>(s); },
                      "test only: down_proj(0.5 * silu(up_proj(x)))");
}  // namespace ptrain::layers

namespace {

bool have_device() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

// Per process: ctest runs this binary as two cases at once (curves and the rest), each making
// its own runs (one would otherwise wipe the other's directory).
fs::path fresh_dir(const std::string& name) {
  return test::fresh_dir("device_training_", name + "_" + std::to_string(::getpid()));
}
std::string make_data(const fs::path& dir) { return test::make_data(dir, 4000); }
using test::config;
using test::metrics;
using test::train;

/// The tiny model of the trainer tests: T = 37 (a multiple of no tile), GQA ratio 2.
std::string yaml(const std::string& data, const fs::path& run) {
  return fmt::format(R"(
model: {{arch: llama, vocab_size: 256, hidden: 32, layers: 2, heads: 4, kv_heads: 2, ffn_hidden: 64,
         max_seq_len: 64}}
train: {{seq_len: 37, micro_batch: 2, global_batch: 4, steps: 20, seed: 3, precision: fp32,
         eval_every: 10, val_fraction: 0.05, eval_batches: 1, threads: 1, log_every: 1}}
optim: {{lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 2}}
data: {{path: {}, shuffle: true}}
checkpoint: {{dir: {}, every: 10, keep: 5}}
device: cpu
)",
                     data, run.string());
}

double rel(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-30); }

class DeviceTraining : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_device()) GTEST_SKIP() << "no CUDA device";
  }
};

/// The four 20-step runs of the comparison (cpu/cuda x fp32/bf16), made once per process and
/// kept (checkpoints at 10 and 20): the resume tests continue the device runs from step 10.
struct MatchRuns {
  fs::path dir;
  std::string data;
  std::vector<std::string> sets(const std::string& device, const std::string& precision) const {
    return {"device=" + device, "train.precision=" + precision, "optim.warmup_steps=20"};
  }
};
const MatchRuns& match_runs() {
  static const MatchRuns r = [] {
    MatchRuns m;
    m.dir = fresh_dir("match");
    m.data = make_data(m.dir);
    for (const std::string dev : {"cpu", "cuda"})
      for (const std::string prec : {"fp32", "bf16"})
        EXPECT_EQ(train(yaml(m.data, m.dir / (dev + prec)), false, m.sets(dev, prec)), 0) << dev << " " << prec;
    return m;
  }();
  return r;
}

TEST_F(DeviceTraining, Fp32AndBf16MatchTheCpuAtEveryStep) {
  const auto& r = match_runs();
  const auto cpu32 = metrics(r.dir / "cpufp32"), dev32 = metrics(r.dir / "cudafp32");
  const auto cpu16 = metrics(r.dir / "cpubf16"), dev16 = metrics(r.dir / "cudabf16");
  ASSERT_EQ(cpu32.size(), 20u);
  ASSERT_EQ(dev32.size(), 20u);
  ASSERT_EQ(cpu16.size(), 20u);
  ASSERT_EQ(dev16.size(), 20u);
  // Bounds (the issue's): fp32 within 1e-5 of the CPU, bf16 within 1e-5 of the CPU's bf16 run
  // and 2e-2 of fp32, at every step. In the emulated build the device kernels sum the row
  // statistics (norms, softmax, cross-entropy) in the CPU's order with the CPU's exp and
  // explicit fused multiply-adds, and the GEMMs run on the same BLAS: the bf16 run is then
  // bit-identical to the CPU's (measured: all 20 steps, in bf16 and in fp32). On silicon cuBLAS
  // sums in its own order: 1e-4 / 5e-3 there.
  const double bound16 = cuda::emulated() ? 1e-5 : 5e-3, bound32 = cuda::emulated() ? 1e-5 : 1e-4;
  double worst32 = 0, worst16 = 0, worst16_32 = 0, worst_norm32 = 0;
  int identical16 = 0;
  for (size_t k = 0; k < 20; ++k) {
    const double c32 = cpu32[k].at("loss"), d32 = dev32[k].at("loss"), c16 = cpu16[k].at("loss"),
                 d16 = dev16[k].at("loss");
    EXPECT_LE(rel(d32, c32), bound32) << "fp32 step " << k + 1 << ": device " << d32 << " cpu " << c32;
    EXPECT_LE(rel(d16, c16), bound16) << "bf16 step " << k + 1 << ": device " << d16 << " cpu " << c16;
    if (d16 == c16 && identical16 == static_cast<int>(k)) ++identical16;
    EXPECT_LE(rel(d16, d32), 2e-2) << "bf16 vs fp32 on the device, step " << k + 1;
    worst32 = std::max(worst32, rel(d32, c32));
    worst16 = std::max(worst16, rel(d16, c16));
    worst16_32 = std::max(worst16_32, rel(d16, d32));
    worst_norm32 = std::max(worst_norm32, rel(dev32[k].at("grad_norm"), cpu32[k].at("grad_norm")));
    EXPECT_LE(rel(dev32[k].at("grad_norm"), cpu32[k].at("grad_norm")), 10 * bound32) << "fp32 grad norm, step " << k + 1;
    if (cpu32[k].contains("val_loss")) {
      ASSERT_TRUE(dev32[k].contains("val_loss")) << "step " << k + 1;
      EXPECT_LE(rel(dev32[k].at("val_loss"), cpu32[k].at("val_loss")), bound32) << "val loss, step " << k + 1;
    }
    EXPECT_GT(dev32[k].at("mem_peak_bytes").get<int64_t>(), 0) << "device memory figures";
    EXPECT_TRUE(dev32[k].contains("mem_reserved_bytes"));
  }
  EXPECT_NE(cpu16.back().at("loss").get<double>(), cpu32.back().at("loss").get<double>()) << "bf16 must round";
  EXPECT_LT(dev32.back().at("loss").get<double>(), dev32.front().at("loss").get<double>() - 0.5) << "the loss falls";
  if (cuda::emulated()) {
    EXPECT_GE(identical16, 3) << "same rounding points: the first bf16 steps are bit-identical to the CPU's";
  }
  std::printf("worst relative loss difference over 20 steps: fp32 device vs cpu %.3g, bf16 device vs cpu %.3g "
              "(bit-identical for the first %d steps), bf16 vs fp32 (device) %.3g; fp32 grad norm %.3g\n",
              worst32, worst16, identical16, worst16_32, worst_norm32);
}

// train.recompute on the device: the same bits as no recompute at every one of 20 fp32 steps
// (the reference is the match runs' device fp32 run), and the peak falls from none to full.
TEST_F(DeviceTraining, RecomputeModesAreBitIdentical) {
  const auto& r = match_runs();
  const auto want = metrics(r.dir / "cudafp32");
  ASSERT_EQ(want.size(), 20u);
  std::map<std::string, int64_t> peak;
  peak["none"] = want.back().at("mem_peak_bytes").get<int64_t>();
  for (const std::string mode : {"selective", "full"}) {
    auto sets = r.sets("cuda", "fp32");
    sets.push_back("train.recompute=" + mode);
    const fs::path run = r.dir / ("recompute_" + mode);
    ASSERT_EQ(train(yaml(r.data, run), false, sets), 0) << mode;
    const auto got = metrics(run);
    ASSERT_EQ(got.size(), 20u);
    for (size_t k = 0; k < 20; ++k) {
      EXPECT_EQ(got[k].at("loss").get<double>(), want[k].at("loss").get<double>()) << mode << " step " << k + 1;
      EXPECT_EQ(got[k].at("grad_norm").get<double>(), want[k].at("grad_norm").get<double>())
          << mode << " step " << k + 1;
    }
    peak[mode] = got.back().at("mem_peak_bytes").get<int64_t>();
  }
  EXPECT_LT(peak["selective"], peak["none"]);
  EXPECT_LT(peak["full"], peak["selective"]);
  std::printf("device peak: recompute none %lld, selective %lld, full %lld bytes\n",
              static_cast<long long>(peak["none"]), static_cast<long long>(peak["selective"]),
              static_cast<long long>(peak["full"]));
}

// train.offload.activations (core/activation_offload.h): each block's saves go to pinned host
// memory on a copy stream and come back ahead of backward. The emulated runtime runs the copy
// streams deferred and interleaved with compute in a seeded shuffled order, so a copy that is
// not ordered by an event against the kernels that write or read its memory gives other bits.
// Must-show 1 of issue 13: losses and gradient norms over 20 fp32 steps identical for recompute
// none / selective / full with activation offload on and off, optimizer offload on and off; a
// deeper prefetch too. Bytes go down and come back (the same amount); the device peak falls.
TEST_F(DeviceTraining, ActivationOffloadIsBitIdentical) {
  const auto& r = match_runs();
  const std::vector<std::string> four = {"model.layers=4"};
  auto base = r.sets("cuda", "fp32");
  base.insert(base.end(), four.begin(), four.end());
  const fs::path ref_run = r.dir / "act_ref";
  ASSERT_EQ(train(yaml(r.data, ref_run), false, base), 0);
  const auto want = metrics(ref_run);
  ASSERT_EQ(want.size(), 20u);
  struct Case {
    std::string name;
    std::vector<std::string> sets;
  };
  const std::vector<Case> cases = {
      {"none", {"train.offload.activations=true"}},
      {"selective", {"train.offload.activations=true", "train.recompute=selective"}},
      {"full", {"train.offload.activations=true", "train.recompute=full"}},
      {"none+optimizer", {"train.offload.activations=true", "train.offload.optimizer=true"}},
      {"full+optimizer", {"train.offload.activations=true", "train.offload.optimizer=true", "train.recompute=full"}},
      {"prefetch3", {"train.offload.activations=true", "train.offload.prefetch=3"}},
  };
  std::map<std::string, int64_t> peak;
  for (const Case& c : cases) {
    auto sets = base;
    sets.insert(sets.end(), c.sets.begin(), c.sets.end());
    const fs::path run = r.dir / ("act_" + c.name);
    ASSERT_EQ(train(yaml(r.data, run), false, sets), 0) << c.name;
    const auto got = metrics(run);
    ASSERT_EQ(got.size(), 20u);
    for (size_t k = 0; k < 20; ++k) {
      EXPECT_EQ(got[k].at("loss").get<double>(), want[k].at("loss").get<double>()) << c.name << " step " << k + 1;
      EXPECT_EQ(got[k].at("grad_norm").get<double>(), want[k].at("grad_norm").get<double>())
          << c.name << " step " << k + 1;
      if (want[k].contains("val_loss")) {
        EXPECT_EQ(got[k].at("val_loss").get<double>(), want[k].at("val_loss").get<double>()) << c.name;
      }
      const int64_t down = got[k].at("offload_down_bytes").get<int64_t>();
      EXPECT_GT(down, 0) << c.name << " step " << k + 1 << ": nothing went to the host";
      EXPECT_EQ(got[k].at("offload_up_bytes").get<int64_t>(), down) << c.name << " step " << k + 1;
      EXPECT_GT(got[k].at("offload_host_peak_bytes").get<int64_t>(), 0) << c.name;
      // one wait per group that came back: 3 of the 4 blocks go down (the last stays), 2 micro-batches
      EXPECT_EQ(got[k].at("offload_compute_waits").get<int64_t>(), 3 * 2) << c.name << " step " << k + 1;
    }
    peak[c.name] = got.back().at("mem_peak_bytes").get<int64_t>();
    std::printf("activation offload %s: device peak %lld (no offload %lld), %lld bytes down per step\n",
                c.name.c_str(), static_cast<long long>(peak[c.name]),
                static_cast<long long>(want.back().at("mem_peak_bytes").get<int64_t>()),
                static_cast<long long>(got.back().at("offload_down_bytes").get<int64_t>()));
  }
  EXPECT_LT(peak["none"], want.back().at("mem_peak_bytes").get<int64_t>()) << "offload must lower the device peak";
  EXPECT_GE(peak["prefetch3"], peak["none"]) << "a deeper prefetch keeps more on the device";
  // the trace of step 2 shows the copies on their own track
  std::ifstream in(r.dir / "act_none" / "trace.json");
  const std::string trace((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(trace.find("\"offload\""), std::string::npos);
  EXPECT_NE(trace.find("D2H block 0"), std::string::npos);
  EXPECT_NE(trace.find("H2D block 0"), std::string::npos);
}

// train.offload.optimizer (optim/offload.h): the master weights and moments in host memory, a
// CPU AdamW: the same bits as the device optimizer at every one of 20 steps, fp32 and bf16
// (and with full recompute on top); the device peak falls by the state it no longer holds;
// the checkpoint holds the same datasets, and a resumed offloaded run is bit-identical.
TEST_F(DeviceTraining, OptimizerOffloadIsBitIdenticalToTheDeviceOptimizer) {
  const auto& r = match_runs();
  for (const std::string prec : {"fp32", "bf16"}) {
    const auto want = metrics(r.dir / ("cuda" + prec));
    ASSERT_EQ(want.size(), 20u);
    for (const std::string recompute : {"none", "full"}) {
      if (prec == "bf16" && recompute == "full") continue;
      auto sets = r.sets("cuda", prec);
      sets.push_back("train.offload.optimizer=true");
      sets.push_back("train.recompute=" + recompute);
      const fs::path run = r.dir / ("offload_" + prec + "_" + recompute);
      ASSERT_EQ(train(yaml(r.data, run), false, sets), 0) << prec;
      const auto got = metrics(run);
      ASSERT_EQ(got.size(), 20u);
      for (size_t k = 0; k < 20; ++k) {
        EXPECT_EQ(got[k].at("loss").get<double>(), want[k].at("loss").get<double>()) << prec << " step " << k + 1;
        EXPECT_EQ(got[k].at("grad_norm").get<double>(), want[k].at("grad_norm").get<double>())
            << prec << " step " << k + 1;
        if (want[k].contains("val_loss")) {
          EXPECT_EQ(got[k].at("val_loss").get<double>(), want[k].at("val_loss").get<double>());
        }
        EXPECT_GT(got[k].at("host_resident_bytes").get<int64_t>(), 0);
      }
      if (recompute == "none") {
        // fp32 master (bf16 only: fp32 runs update the weights themselves) and two fp32 moments
        const int64_t saved = want.back().at("mem_peak_bytes").get<int64_t>() - got.back().at("mem_peak_bytes").get<int64_t>();
        EXPECT_GT(saved, 0) << prec << ": offloading the optimizer state must lower the device peak";
        std::printf("%s: device peak %lld without offload, %lld with (%lld bytes less)\n", prec.c_str(),
                    static_cast<long long>(want.back().at("mem_peak_bytes").get<int64_t>()),
                    static_cast<long long>(got.back().at("mem_peak_bytes").get<int64_t>()), static_cast<long long>(saved));
        h5::File a = h5::File::open((r.dir / ("cuda" + prec) / step_dir_name(20) / "rank_00000.h5").string());
        h5::File b = h5::File::open((run / step_dir_name(20) / "rank_00000.h5").string());
        EXPECT_EQ(h5::list_datasets(a), h5::list_datasets(b)) << prec;
      }
    }
    // resume an offloaded run from its step-10 checkpoint: the same 20 steps
    const fs::path part = r.dir / ("offload_" + prec + "_none_resumed");
    fs::create_directories(part);
    fs::copy(r.dir / ("offload_" + prec + "_none") / step_dir_name(10), part / step_dir_name(10),
             fs::copy_options::recursive);
    {
      std::ifstream in(r.dir / ("offload_" + prec + "_none") / "metrics.jsonl");
      std::ofstream out(part / "metrics.jsonl");
      std::string line;
      for (int k = 0; k < 10 && std::getline(in, line); ++k) out << line << "\n";
    }
    auto sets = r.sets("cuda", prec);
    sets.push_back("train.offload.optimizer=true");
    ASSERT_EQ(train(yaml(r.data, part), true, sets), 0);
    const auto got = metrics(part);
    ASSERT_EQ(got.size(), 20u);
    for (size_t k = 10; k < 20; ++k)
      EXPECT_EQ(got[k].at("loss").get<double>(), want[k].at("loss").get<double>()) << prec << " resumed, step " << k + 1;
  }
}

// The offloaded optimizer's eager mode (optim/offload.h): with no gradient clipping (and no
// fp16 loss scale) each parameter's host update starts from backward, as soon as its gradient
// is final, over the staging slots and the copy stream; the run stays bit-identical to the
// device optimizer's (fp32 and bf16, with full recompute and activation offload on top), every
// parameter is sent from backward, some of the host update runs before backward ends, and the
// trace shows the updates on their own track.
TEST_F(DeviceTraining, OptimizerOffloadUpdatesDuringBackward) {
  const auto& r = match_runs();
  const fs::path dir = fresh_dir("eager");
  for (const std::string prec : {"fp32", "bf16"}) {
    auto base = r.sets("cuda", prec);
    base.push_back("optim.grad_clip=0");
    const fs::path ref = dir / ("device_" + prec);
    ASSERT_EQ(train(yaml(r.data, ref), false, base), 0) << prec;
    const auto want = metrics(ref);
    ASSERT_EQ(want.size(), 20u);
    for (const std::string extra : {"none", "full+activations"}) {
      auto sets = base;
      sets.push_back("train.offload.optimizer=true");
      if (extra != "none") {
        sets.push_back("train.recompute=full");
        sets.push_back("train.offload.activations=true");
      }
      const fs::path run = dir / ("offload_" + prec + "_" + extra);
      ASSERT_EQ(train(yaml(r.data, run), false, sets), 0) << prec << " " << extra;
      const auto got = metrics(run);
      ASSERT_EQ(got.size(), 20u);
      double hidden = 0, update = 0;
      for (size_t k = 0; k < 20; ++k) {
        EXPECT_EQ(got[k].at("loss").get<double>(), want[k].at("loss").get<double>()) << prec << " " << extra << " step " << k + 1;
        EXPECT_EQ(got[k].at("grad_norm").get<double>(), want[k].at("grad_norm").get<double>()) << prec << " step " << k + 1;
        if (want[k].contains("val_loss")) {
          EXPECT_EQ(got[k].at("val_loss").get<double>(), want[k].at("val_loss").get<double>());
        }
        EXPECT_EQ(got[k].at("opt_early_params").get<int64_t>(), 2 * 9 + 3) << "every parameter sent from backward";
        EXPECT_GT(got[k].at("opt_down_bytes").get<int64_t>(), 0);
        EXPECT_GT(got[k].at("opt_up_bytes").get<int64_t>(), 0);
        hidden += got[k].at("opt_host_hidden_s").get<double>();
        update += got[k].at("opt_host_update_s").get<double>();
        EXPECT_LE(got[k].at("opt_host_hidden_s").get<double>(), got[k].at("opt_host_update_s").get<double>());
      }
      EXPECT_GT(hidden, 0) << prec << " " << extra << ": no host update ran during backward";
      std::printf("eager offload %s %s: host update %.4f s over 20 steps, %.4f s of it before backward ended\n",
                  prec.c_str(), extra.c_str(), update, hidden);
      std::ifstream in(run / "trace.json");
      const std::string trace((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      EXPECT_NE(trace.find("\"host adam\""), std::string::npos);
      EXPECT_NE(trace.find("adam model.embed_tokens.weight"), std::string::npos);
    }
  }
}

// optim.state 8bit on the device: refused without optimizer offload (the device kernels take
// fp32 state), trained by the host AdamW with it: the same bits as the CPU's 8bit run for the
// first steps (bf16, where the emulated device matches the CPU bit for bit), and the loss falls.
TEST_F(DeviceTraining, CompactStateNeedsOffloadAndMatchesTheCpu) {
  const auto& r = match_runs();
  launch::RunOptions opt;
  opt.quiet = true;
  opt.local_ranks = 1;
  const fs::path refused = r.dir / "state8_refused";
  try {
    launch::Trainer t(config(yaml(r.data, refused), {"device=cuda", "train.precision=bf16", "optim.state=8bit"}), opt);
    t.run();
    FAIL() << "optim.state: 8bit on the device without offload must refuse";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("train.offload.optimizer: true"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(refused));
  std::vector<nlohmann::json> rows[2];
  for (int d = 0; d < 2; ++d) {
    auto sets = r.sets(d ? "cuda" : "cpu", "bf16");
    sets.push_back("optim.state=8bit");
    if (d) sets.push_back("train.offload.optimizer=true");
    const fs::path run = r.dir / (d ? "state8_cuda" : "state8_cpu");
    ASSERT_EQ(train(yaml(r.data, run), false, sets), 0);
    rows[d] = metrics(run);
    ASSERT_EQ(rows[d].size(), 20u);
  }
  if (cuda::emulated())
    for (size_t k = 0; k < 3; ++k)
      EXPECT_EQ(rows[1][k].at("loss").get<double>(), rows[0][k].at("loss").get<double>()) << "step " << k + 1;
  for (size_t k = 0; k < 20; ++k)
    EXPECT_LE(rel(rows[1][k].at("loss"), rows[0][k].at("loss")), 2e-2) << "step " << k + 1;
  EXPECT_LT(rows[1].back().at("loss").get<double>(), rows[1].front().at("loss").get<double>() - 0.5);
}

// The trainer runs `ptrain plan`'s model of memory at start-up: a run that cannot fit the
// device (here 1.6B fp32 parameters with Adam on the emulated 24 GiB card) is refused before
// anything is allocated, naming the shortfall and the changes that fit.
TEST_F(DeviceTraining, StartUpRefusesWhatThePlanSaysCannotFit) {
  auto dir = fresh_dir("plan_refused");
  const std::string data = make_data(dir);
  const fs::path run = dir / "big";
  launch::RunOptions opt;
  opt.quiet = true;
  opt.local_ranks = 1;
  const std::vector<std::string> big = {"device=cuda", "model.hidden=4096", "model.layers=8", "model.heads=32",
                                        "model.kv_heads=32", "model.ffn_hidden=11008", "model.vocab_size=32000"};
  const auto t0 = std::chrono::steady_clock::now();
  try {
    launch::Trainer t(config(yaml(data, run), big), opt);
    t.run();
    FAIL() << "a run that does not fit the device must be refused at start-up";
  } catch (const UserError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("does not fit"), std::string::npos) << m;
    EXPECT_NE(m.find("--set"), std::string::npos) << "the refusal names changes that fit: " << m;
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0)
      << "refused before allocating (a 1.6B model would take far longer to build)";
  EXPECT_FALSE(fs::exists(run));
}

TEST_F(DeviceTraining, Gpt2Bf16IsBitIdenticalToTheCpu) {
  // LayerNorm with bias, learned positions, GELU, the fused qkv split, tied embeddings
  auto dir = fresh_dir("gpt2");
  const std::string data = make_data(dir);
  const std::vector<std::string> sets = {"model.arch=gpt2", "model.kv_heads=4", "train.precision=bf16",
                                         "train.steps=10", "checkpoint.every=0", "train.eval_every=0"};
  std::vector<nlohmann::json> rows[2];
  for (int d = 0; d < 2; ++d) {
    auto s = sets;
    s.push_back(d ? "device=cuda" : "device=cpu");
    ASSERT_EQ(train(yaml(data, dir / (d ? "cuda" : "cpu")), false, s), 0);
    rows[d] = metrics(dir / (d ? "cuda" : "cpu"));
    ASSERT_EQ(rows[d].size(), 10u);
  }
  const double bound = cuda::emulated() ? 1e-5 : 5e-3;
  double worst = 0;
  for (size_t k = 0; k < 10; ++k) {
    const double c = rows[0][k].at("loss"), g = rows[1][k].at("loss");
    EXPECT_LE(rel(g, c), bound) << "gpt2 bf16 step " << k + 1 << ": device " << g << " cpu " << c;
    worst = std::max(worst, rel(g, c));
  }
  std::printf("gpt2 bf16, device vs cpu: worst relative loss difference over 10 steps %.3g\n", worst);
}

TEST_F(DeviceTraining, Fp16OverflowIsSkippedAndTheScaleHalvesAsOnTheCpu) {
  auto dir = fresh_dir("fp16");
  const std::string data = make_data(dir);
  const std::vector<std::string> sets = {"train.precision=fp16", "optim.loss_scale.initial=268435456",
                                         "checkpoint.every=0"};
  auto with = [&](const std::string& device) {
    auto s = sets;
    s.push_back("device=" + device);
    return s;
  };
  ASSERT_EQ(train(yaml(data, dir / "dev"), false, with("cuda")), 0);
  ASSERT_EQ(train(yaml(data, dir / "cpu"), false, with("cpu")), 0);
  auto dev = metrics(dir / "dev"), cpu = metrics(dir / "cpu");
  ASSERT_EQ(dev.size(), 20u);
  EXPECT_TRUE(dev[0].at("skipped").get<bool>()) << "2^28 overflows fp16 gradients";
  int skipped = 0;
  double prev = 268435456.0;
  for (size_t k = 0; k < dev.size(); ++k) {
    const double scale = dev[k].at("loss_scale").get<double>();  // after this step's update
    if (dev[k].at("skipped").get<bool>()) {
      EXPECT_EQ(scale, prev / 2) << "the scale halves after an overflow, step " << k + 1;
    } else {
      EXPECT_EQ(scale, prev) << "no growth within growth_interval clean steps, step " << k + 1;
    }
    prev = scale;
    skipped += dev[k].at("skipped").get<bool>();
    EXPECT_EQ(dev[k].at("skipped").get<bool>(), cpu[k].at("skipped").get<bool>()) << "step " << k + 1;
    EXPECT_EQ(dev[k].at("loss_scale").get<double>(), cpu[k].at("loss_scale").get<double>()) << "step " << k + 1;
    EXPECT_LE(rel(dev[k].at("loss"), cpu[k].at("loss")), 1e-3) << "step " << k + 1;
  }
  EXPECT_GT(skipped, 0);
  EXPECT_LT(skipped, 20) << "training goes on once the scale fits";
  auto meta = read_meta((dir / "dev").string(), 20);
  EXPECT_EQ(meta["optimizer"]["step_count"].get<int64_t>(), 20 - skipped) << "skipped steps do not advance Adam";
  EXPECT_EQ(meta["loss_scaler"]["skipped_steps"].get<int64_t>(), skipped);
}

void expect_resume_bit_identical(const std::string& precision) {
  // the device run of the comparison, uninterrupted (checkpoints at 10 and 20), and a copy of
  // it cut back to step 10 as if it had died there, then resumed
  const auto& r = match_runs();
  const fs::path full_dir = r.dir / ("cuda" + precision), dir = fresh_dir("resume_" + precision);
  fs::copy(full_dir, dir / "part", fs::copy_options::recursive);
  fs::remove_all(dir / "part" / step_dir_name(20));
  ASSERT_EQ(train(yaml(r.data, dir / "part"), true, r.sets("cuda", precision)), 0);
  auto full = metrics(full_dir), part = metrics(dir / "part");
  ASSERT_EQ(full.size(), 20u);
  ASSERT_EQ(part.size(), 20u);
  for (size_t k = 0; k < 20; ++k) {
    EXPECT_EQ(part[k].at("loss").get<double>(), full[k].at("loss").get<double>()) << precision << " step " << k + 1;
    EXPECT_EQ(part[k].at("grad_norm").get<double>(), full[k].at("grad_norm").get<double>())
        << precision << " step " << k + 1;
  }
  // the final weights too, bit for bit
  h5::File a = h5::File::open((full_dir / step_dir_name(20) / "rank_00000.h5").string());
  h5::File b = h5::File::open((dir / "part" / step_dir_name(20) / "rank_00000.h5").string());
  for (const char* name : {"master/model.layers.1.mlp.down_proj.weight", "exp_avg_sq/model.embed_tokens.weight"}) {
    if (precision == "fp32" && std::string(name).rfind("master", 0) == 0) continue;
    EXPECT_EQ(h5::read(a, name).to_float_vector(), h5::read(b, name).to_float_vector()) << precision << " " << name;
  }
}

TEST_F(DeviceTraining, ResumeIsBitIdenticalFp32) { expect_resume_bit_identical("fp32"); }
TEST_F(DeviceTraining, ResumeIsBitIdenticalBf16) { expect_resume_bit_identical("bf16"); }

TEST_F(DeviceTraining, CheckpointHoldsWhatTheCpuWrites) {
  auto dir = fresh_dir("ckpt");
  const std::string data = make_data(dir);
  for (const std::string dev : {"cpu", "cuda"})
    ASSERT_EQ(train(yaml(data, dir / dev), false, {"device=" + dev, "train.precision=bf16", "train.steps=2",
                                                   "train.eval_every=0"}),
              0);
  h5::File a = h5::File::open((dir / "cpu" / step_dir_name(2) / "rank_00000.h5").string());
  h5::File b = h5::File::open((dir / "cuda" / step_dir_name(2) / "rank_00000.h5").string());
  const auto names = h5::list_datasets(a);
  EXPECT_EQ(names, h5::list_datasets(b));
  ASSERT_FALSE(names.empty());
  for (const auto& n : names) {
    EXPECT_EQ(h5::stored_type(a, n), h5::stored_type(b, n)) << n;
    const auto x = h5::read(a, n).to_float_vector(), y = h5::read(b, n).to_float_vector();
    ASSERT_EQ(x.size(), y.size()) << n;
    double worst = 0;
    for (size_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::abs(static_cast<double>(x[i]) - y[i]));
    EXPECT_LE(worst, 1e-2) << n << ": the device run's values are the CPU run's (up to bf16 rounding)";
  }
}

TEST_F(DeviceTraining, InitFromPlacesTheFileOnTheDevice) {
  auto dir = fresh_dir("init_from");
  const std::string data = make_data(dir);
  for (const std::string arch : {"llama", "gpt2"}) {
    // weights written from a CPU model (padded vocabulary: 300 -> 384 rows), read on the device
    const std::vector<std::string> sets = {"model.arch=" + arch, "model.kv_heads=4", "model.vocab_size=300",
                                           "train.precision=bf16"};
    RunOptions opt;
    opt.quiet = true;
    Trainer src(config(yaml(data, dir / ("src_" + arch)), sets), opt);
    src.setup();
    src.train_step(0);
    std::vector<Tensor> values;
    auto ws = src.model().external_weights();
    for (auto& w : ws) {
      for (const auto& p : src.params())
        if (p.param == w.param) values.push_back(p.master);
    }
    const std::string file = (dir / (arch + ".h5")).string();
    write_external_weights(file, ws, values, DType::f32);
    auto sets2 = sets;
    sets2.push_back("train.init_from=" + file);
    for (const std::string dev : {"cpu", "cuda"}) {
      auto s3 = sets2;
      s3.push_back("device=" + dev);
      Trainer t(config(yaml(data, dir / ("init_" + dev + arch)), s3), opt);
      t.setup();
      for (size_t i = 0; i < t.params().size(); ++i) {
        const auto& p = t.params()[i];
        EXPECT_EQ(p.master.device(), dev == "cuda" ? Device::cuda : Device::cpu);
        EXPECT_EQ(p.param->value.device(), p.master.device()) << "weights live where the masters live";
        ASSERT_EQ(p.master.to_float_vector(), src.params()[i].master.to_float_vector()) << dev << " " << p.name;
        ASSERT_EQ(p.param->value.to_float_vector(), src.params()[i].param->value.to_float_vector()) << dev << " " << p.name;
      }
    }
  }
}

/// The kernels that prove an op ran on the device: a launch-count name prefix for its forward
/// and for its backward. Every core op of the op table must be listed (view: none, it is a view).
const std::map<OpId, std::pair<std::vector<std::string>, std::vector<std::string>>>& op_kernels() {
  static const std::map<OpId, std::pair<std::vector<std::string>, std::vector<std::string>>> k = {
      {OpId::linear, {{"cublasLtMatmul"}, {"cublasLtMatmul", "bias_grad_kernel"}}},
      {OpId::add, {{"add_forward_kernel"}, {}}},  // backward: the gradient passes through
      {OpId::mul, {{"mul_forward_kernel"}, {"mul_backward_kernel"}}},
      {OpId::scale, {{"scale_forward_kernel"}, {"scale_backward_kernel"}}},
      {OpId::embedding, {{"embedding_forward_kernel"}, {"embedding_backward_segments_kernel"}}},
      {OpId::rms_norm, {{"rms_norm_forward_kernel"}, {"rms_norm_backward_dx_kernel", "rms_norm_backward_dw_sum_kernel"}}},
      {OpId::layer_norm,
       {{"layer_norm_forward_kernel"}, {"layer_norm_backward_dx_kernel", "layer_norm_backward_dwdb_sum_kernel"}}},
      {OpId::rope, {{"rope_forward_kernel"}, {"rope_backward_kernel"}}},
      {OpId::attention, {{"causal_softmax_forward_kernel"}, {"causal_softmax_backward_kernel"}}},
      {OpId::silu, {{"silu_forward_kernel"}, {"silu_backward_kernel"}}},
      {OpId::gelu, {{"gelu_tanh_forward_kernel"}, {"gelu_tanh_backward_kernel"}}},
      {OpId::swiglu, {{"swiglu_forward_kernel"}, {"swiglu_backward_kernel"}}},
      {OpId::cross_entropy, {{"cross_entropy_forward_kernel"}, {"cross_entropy_backward_kernel"}}},
      {OpId::view, {{}, {}}},
      {OpId::split, {{"split_columns_kernel"}, {"split_columns_backward_kernel"}}},
  };
  return k;
}

int64_t launched(const std::map<std::string, int64_t>& counts, const std::string& prefix) {
  int64_t n = 0;
  for (const auto& [name, c] : counts)
    if (name.rfind(prefix, 0) == 0) n += c;
  return n;
}

TEST_F(DeviceTraining, EveryOpOfTheTableRanItsKernelInADeviceStep) {
  auto dir = fresh_dir("ops");
  const std::string data = make_data(dir);
  // llama (+ the test MLP for silu/scale, + GEGLU for mul), gpt2 (layer_norm, gelu, split, biases)
  const std::vector<std::vector<std::string>> models = {
      {},
      {"model.mlp=test_silu_scale"},
      {"model.mlp=geglu"},
      {"model.arch=gpt2", "model.kv_heads=4"},
  };
  std::set<std::string> seen_kernels;
  std::map<std::string, int64_t> all;
  for (size_t i = 0; i < models.size(); ++i) {
    auto sets = models[i];
    sets.insert(sets.end(), {"device=cuda", "train.precision=bf16", "train.eval_every=0"});
    RunOptions opt;
    opt.quiet = true;
    Config cfg = config(yaml(data, dir / std::to_string(i)), sets);
    Trainer t(cfg, opt);
    t.setup();
    cuda::reset_launch_counts();
    t.train_step(0);
    for (const auto& [name, c] : cuda::launch_counts()) all[name] += c;
    EXPECT_GT(cuda::launch_count("adamw_multi_tensor_kernel<float, __nv_bfloat16>"), 0)
        << "the optimizer step runs on the device and writes the bf16 weights";
    EXPECT_EQ(cuda::launch_count("adamw_multi_tensor_kernel<float, __nv_bfloat16>"), 1) << "one launch for all tensors";
    EXPECT_GT(launched(cuda::launch_counts(), "grad_sum_squares_partial_kernel"), 0);
  }
  const auto& table = op_kernels();
  for (size_t o = 0; o < static_cast<size_t>(OpId::count); ++o) {
    const auto op = static_cast<OpId>(o);
    if (op_lives_in_parallel(op)) continue;  // they take a communicator: multi-rank, CPU only for now
    auto it = table.find(op);
    ASSERT_NE(it, table.end()) << "op '" << op_name(op) << "' has no kernel listed here: add it";
    for (const auto& k : it->second.first)
      EXPECT_GT(launched(all, k), 0) << op_name(op) << " forward: no launch of " << k;
    for (const auto& k : it->second.second)
      EXPECT_GT(launched(all, k), 0) << op_name(op) << " backward: no launch of " << k;
  }
}

TEST(DeviceChoice, AsDesignSays) {
  EXPECT_EQ(resolve_device(DeviceChoice::cpu, 1), Device::cpu);
  EXPECT_EQ(resolve_device(DeviceChoice::cpu, 4), Device::cpu);
  // auto: a real GPU only; the emulated device is used only when asked for by name
  const bool real_gpu = have_device() && !cuda::emulated();
  EXPECT_EQ(resolve_device(DeviceChoice::automatic, 1), real_gpu ? Device::cuda : Device::cpu);
  EXPECT_EQ(resolve_device(DeviceChoice::automatic, 2), Device::cpu) << "multi-rank runs stay on the CPU";
  if (have_device()) {
    EXPECT_EQ(resolve_device(DeviceChoice::cuda, 1), Device::cuda);
  }
  // one rank per GPU: more ranks on a machine than GPUs is refused, naming both counts (the
  // emulated device is per process: any count)
  if (have_device() && cuda::emulated()) {
    EXPECT_EQ(resolve_device(DeviceChoice::cuda, 2, 2), Device::cuda);
  } else if (have_device()) {
    const int gpus = cuda::device_count();
    try {
      resolve_device(DeviceChoice::cuda, gpus + 1, gpus + 1);
      FAIL() << "more ranks than GPUs must be refused";
    } catch (const UserError& e) {
      EXPECT_NE(std::string(e.what()).find(std::to_string(gpus + 1) + " ranks"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(std::to_string(gpus) + " GPU"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("HINT"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
