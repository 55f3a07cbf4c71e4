// tests/launch/test_trainer.cpp — the training loop end to end on tiny models:
// the loss falls; a resumed run reproduces the uninterrupted one bit for bit (fp32 and
// bf16); checkpoints are atomic (leftover *.tmp ignored, keep honoured, metrics cut
// back); SIGTERM writes a checkpoint and resume finishes identically; export writes
// what init_from reads.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/h5io.h"
#include "data/prepare.h"
#include "launch/checkpoint.h"
#include "launch/config.h"
#include "launch/trainer.h"
#include "launch/weights_io.h"
#include "tests/launch/trainer_test_util.h"

namespace fs = std::filesystem;
using namespace ptrain;
using namespace ptrain::launch;

namespace {

fs::path fresh_dir(const std::string& name) { return test::fresh_dir("trainer_", name); }
std::string make_data(const fs::path& dir) { return test::make_data(dir, 6000); }
using test::metrics;

std::string yaml(const std::string& data, const fs::path& run, const std::string& extra = "") {
  return fmt::format(R"(
model: {{arch: llama, vocab_size: 256, hidden: 32, layers: 2, heads: 4, kv_heads: 2, ffn_hidden: 64,
         max_seq_len: 64}}
train: {{seq_len: 32, micro_batch: 2, global_batch: 4, steps: 20, seed: 3, precision: fp32,
         eval_every: 0, threads: 1, log_every: 1}}
optim: {{lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 1}}
data: {{path: {}, shuffle: true}}
checkpoint: {{dir: {}, every: 10, keep: 5}}
device: cpu
{}
)",
                     data, run.string(), extra);
}


using test::train;

std::vector<double> losses(const std::vector<nlohmann::json>& rows) {
  std::vector<double> r;
  for (auto& j : rows) r.push_back(j.at("loss").get<double>());
  return r;
}

void expect_resume_bit_identical(const std::string& precision, const std::string& state = "fp32") {
  auto dir = fresh_dir("resume_" + precision + "_" + state);
  const std::string data = make_data(dir);
  const std::string extra = "";
  // uninterrupted
  ASSERT_EQ(train(yaml(data, dir / "full"), false, {"train.precision=" + precision, "optim.state=" + state}), 0);
  auto full = metrics(dir / "full");
  ASSERT_EQ(full.size(), 20u);
  // interrupted at 10: train 10 steps (same schedule length), then resume to 20
  ASSERT_EQ(train(yaml(data, dir / "part"), false,
                  {"train.precision=" + precision, "optim.state=" + state, "train.steps=20"}),
            0);
  // cut the run back to step 10 as if it had died after the checkpoint at step 10
  fs::remove_all(dir / "part" / step_dir_name(20));
  {
    std::ofstream torn(dir / "part" / "metrics.jsonl", std::ios::app);
    torn << "{\"step\": 21, \"loss\": 1.0";  // a torn line after a kill
  }
  fs::create_directories(dir / "part" / (step_dir_name(15) + ".tmp"));  // a half-written checkpoint
  std::ofstream(dir / "part" / (step_dir_name(15) + ".tmp") / "rank_00000.h5") << "partial";
  ASSERT_EQ(train(yaml(data, dir / "part"), true, {"train.precision=" + precision, "optim.state=" + state}), 0);
  EXPECT_FALSE(fs::exists(dir / "part" / (step_dir_name(15) + ".tmp"))) << "resume must remove *.tmp leftovers";
  auto part = metrics(dir / "part");
  ASSERT_EQ(part.size(), 20u) << "metrics.jsonl must be cut back to step 10, then continued";
  for (size_t k = 0; k < 20; ++k) {
    EXPECT_EQ(part[k].at("step").get<int64_t>(), static_cast<int64_t>(k + 1));
    EXPECT_EQ(part[k].at("loss").get<double>(), full[k].at("loss").get<double>()) << "step " << k + 1;
    EXPECT_EQ(part[k].at("grad_norm").get<double>(), full[k].at("grad_norm").get<double>()) << "step " << k + 1;
  }
  auto l = losses(full);
  EXPECT_LT(l.back(), l.front() - 0.5) << "the loss must fall";
}

}  // namespace

TEST(Trainer, ResumeIsBitIdenticalFp32) { expect_resume_bit_identical("fp32"); }
TEST(Trainer, ResumeIsBitIdenticalBf16) { expect_resume_bit_identical("bf16"); }
// optim.state bf16-sr and 8bit: the stochastic rounding draws from (seed, parameter, step,
// element) and the 8-bit moments round-trip through the checkpoint's decoded fp32 moments.
TEST(Trainer, ResumeIsBitIdenticalBf16Sr) { expect_resume_bit_identical("bf16", "bf16-sr"); }
TEST(Trainer, ResumeIsBitIdentical8bit) { expect_resume_bit_identical("bf16", "8bit"); }
TEST(Trainer, ResumeIsBitIdentical8bitFp32Weights) { expect_resume_bit_identical("fp32", "8bit"); }

// train.threads sets the one thread count of ptrain's kernels and the BLAS (core/cpu/threading.h):
// every step's loss and gradient norm are the same bits at 1, 2 and 4 threads, fp32 and bf16.
TEST(Trainer, BitIdenticalAcrossThreadCounts) {
  auto dir = fresh_dir("threads");
  const std::string data = make_data(dir);
  for (const std::string precision : {"fp32", "bf16"}) {
    std::vector<nlohmann::json> want;
    for (int threads : {1, 2, 4}) {
      const fs::path run = dir / fmt::format("{}_t{}", precision, threads);
      ASSERT_EQ(train(yaml(data, run), false,
                      {"train.precision=" + precision, fmt::format("train.threads={}", threads), "train.steps=8",
                       "checkpoint.every=0"}),
                0);
      auto rows = metrics(run);
      ASSERT_EQ(rows.size(), 8u);
      if (want.empty()) {
        want = rows;
        continue;
      }
      for (size_t k = 0; k < rows.size(); ++k) {
        EXPECT_EQ(rows[k].at("loss").get<double>(), want[k].at("loss").get<double>())
            << precision << " step " << k + 1 << " at " << threads << " threads";
        EXPECT_EQ(rows[k].at("grad_norm").get<double>(), want[k].at("grad_norm").get<double>())
            << precision << " step " << k + 1 << " at " << threads << " threads";
      }
    }
  }
}

// train.recompute (core/recompute.h): none, selective and full give the same bits every step
// (20 steps; llama fp32 and bf16, gpt2 fp32), and the modes actually change what is kept:
// the CPU peak falls from none to full.
TEST(Trainer, RecomputeModesBitIdentical) {
  auto dir = fresh_dir("recompute");
  const std::string data = make_data(dir);
  struct Case {
    std::string name;
    std::vector<std::string> sets;
  };
  const std::vector<Case> cases = {{"llama_fp32", {"train.precision=fp32"}},
                                   {"llama_bf16", {"train.precision=bf16"}},
                                   {"gpt2_fp32", {"model.arch=gpt2", "model.kv_heads=null", "train.precision=fp32"}}};
  for (const Case& c : cases) {
    std::vector<nlohmann::json> want;
    for (const std::string mode : {"none", "selective", "full"}) {
      const fs::path run = dir / (c.name + "_" + mode);
      auto sets = c.sets;
      sets.push_back("train.recompute=" + mode);
      sets.push_back("checkpoint.every=0");
      ASSERT_EQ(train(yaml(data, run), false, sets), 0) << c.name << " " << mode;
      auto rows = metrics(run);
      ASSERT_EQ(rows.size(), 20u);
      if (want.empty()) {
        want = rows;
        continue;
      }
      for (size_t k = 0; k < rows.size(); ++k) {
        EXPECT_EQ(rows[k].at("loss").get<double>(), want[k].at("loss").get<double>())
            << c.name << " recompute " << mode << " step " << k + 1;
        EXPECT_EQ(rows[k].at("grad_norm").get<double>(), want[k].at("grad_norm").get<double>())
            << c.name << " recompute " << mode << " step " << k + 1;
      }
    }
  }
  // What is kept: seq 64 makes the attention probabilities matter.
  std::map<std::string, int64_t> peak;
  for (const std::string mode : {"none", "selective", "full"}) {
    const fs::path run = dir / ("peak_" + mode);
    ASSERT_EQ(train(yaml(data, run), false,
                    {"train.recompute=" + mode, "train.seq_len=64", "train.micro_batch=4", "train.global_batch=4",
                     "train.steps=2", "checkpoint.every=0"}),
              0);
    peak[mode] = metrics(run).back().at("mem_peak_bytes").get<int64_t>();
  }
  EXPECT_LT(peak["selective"], peak["none"]);
  EXPECT_LT(peak["full"], peak["selective"]);
}

TEST(Trainer, Bf16TracksFp32) {
  auto dir = fresh_dir("bf16_vs_fp32");
  const std::string data = make_data(dir);
  ASSERT_EQ(train(yaml(data, dir / "a"), false, {"train.precision=fp32"}), 0);
  ASSERT_EQ(train(yaml(data, dir / "b"), false, {"train.precision=bf16"}), 0);
  auto a = losses(metrics(dir / "a")), b = losses(metrics(dir / "b"));
  ASSERT_EQ(a.size(), b.size());
  for (size_t k = 0; k < a.size(); ++k) EXPECT_NEAR(b[k], a[k], 0.02 * a[k]) << "step " << k + 1;
  EXPECT_NE(a.back(), b.back()) << "bf16 must actually round";
  // bf16 checkpoints hold bf16 weights and fp32 masters
  h5::File f = h5::File::open((dir / "b" / step_dir_name(20) / "rank_00000.h5").string());
  EXPECT_EQ(h5::stored_type(f, "param/model.norm.weight"), h5::StoredType::bf16);
  EXPECT_EQ(h5::stored_type(f, "master/model.norm.weight"), h5::StoredType::f32);
}

TEST(Trainer, Fp16SkipsOverflowingStepsAndBacksOff) {
  auto dir = fresh_dir("fp16");
  const std::string data = make_data(dir);
  // An initial scale of 2^28 overflows fp16 gradients: those steps are skipped and the scale halves.
  ASSERT_EQ(train(yaml(data, dir / "r"), false, {"train.precision=fp16", "optim.loss_scale.initial=268435456"}), 0);
  auto rows = metrics(dir / "r");
  ASSERT_EQ(rows.size(), 20u);
  EXPECT_TRUE(rows[0].at("skipped").get<bool>());
  EXPECT_LT(rows[1].at("loss_scale").get<double>(), 268435456.0);
  int skipped = 0;
  for (auto& r : rows) skipped += r.at("skipped").get<bool>();
  EXPECT_GT(skipped, 0);
  EXPECT_LT(skipped, 20);
  auto meta = read_meta((dir / "r").string(), 20);
  EXPECT_EQ(meta["optimizer"]["step_count"].get<int64_t>(), 20 - skipped) << "skipped steps do not advance Adam";
  EXPECT_EQ(meta["loss_scaler"]["skipped_steps"].get<int64_t>(), skipped);
}

TEST(Trainer, KeepRetainsNewestCheckpoints) {
  auto dir = fresh_dir("keep");
  const std::string data = make_data(dir);
  ASSERT_EQ(train(yaml(data, dir / "r"), false, {"checkpoint.every=4", "checkpoint.keep=2"}), 0);
  std::vector<std::string> names;
  for (auto& e : fs::directory_iterator(dir / "r"))
    if (e.is_directory()) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{step_dir_name(16), step_dir_name(20)}));
  EXPECT_EQ(latest_checkpoint((dir / "r").string(), false), 20);
}

TEST(Trainer, FreshRunRefusesADirectoryWithCheckpoints) {
  auto dir = fresh_dir("refuse");
  const std::string data = make_data(dir);
  ASSERT_EQ(train(yaml(data, dir / "r"), false, {"train.steps=2"}), 0);
  EXPECT_THROW(train(yaml(data, dir / "r"), false, {"train.steps=2"}), UserError);
  // --resume with a finished run does nothing and succeeds
  EXPECT_EQ(train(yaml(data, dir / "r"), true, {"train.steps=2"}), 0);
}

TEST(Trainer, ExportWritesWhatInitFromReads) {
  auto dir = fresh_dir("export");
  const std::string data = make_data(dir);
  for (const std::string arch : {"llama", "gpt2"}) {
    const auto run = dir / ("run_" + arch);
    const std::vector<std::string> sets = {"model.arch=" + arch, "model.kv_heads=4", "train.steps=3",
                                           "model.vocab_size=300"};
    ASSERT_EQ(train(yaml(data, run), false, sets), 0);
    const std::string out = (dir / (arch + ".h5")).string();
    const std::string cmd = fmt::format("{} export --run {} --step 3 --out {} > /dev/null", PTRAIN_BINARY, run.string(), out);
    ASSERT_EQ(std::system(cmd.c_str()), 0);
    // the exported tensors equal the checkpoint's parameters, in HF layout
    h5::File f = h5::File::open(out);
    h5::File ck = h5::File::open((run / step_dir_name(3) / "rank_00000.h5").string());
    if (arch == "gpt2") {
      EXPECT_EQ(h5::shape(f, "transformer.h.0.attn.c_attn.weight"), (Shape{32, 96}));  // Conv1D [in, out]
      EXPECT_EQ(h5::shape(f, "transformer.wte.weight"), (Shape{300, 32}));            // unpadded vocab
      EXPECT_FALSE(h5::has(f, "lm_head.weight"));
      Tensor a = h5::read(f, "transformer.h.1.mlp.c_fc.weight"), b = h5::read(ck, "param/transformer.h.1.mlp.c_fc.weight");
      for (int64_t i = 0; i < 32; ++i)
        for (int64_t j = 0; j < 64; ++j) ASSERT_EQ(a.data<float>()[i * 64 + j], b.data<float>()[j * 32 + i]);
    } else {
      EXPECT_EQ(h5::shape(f, "model.embed_tokens.weight"), (Shape{300, 32}));
      Tensor a = h5::read(f, "model.layers.1.self_attn.k_proj.weight"),
             b = h5::read(ck, "param/model.layers.1.self_attn.k_proj.weight");
      ASSERT_EQ(a.to_float_vector(), b.to_float_vector());
    }
    // and a run started from the export begins with exactly the checkpoint's weights
    auto sets2 = sets;
    sets2.push_back("train.init_from=" + out);
    Config cfg = parse_config(yaml(data, dir / ("init_" + arch)), sets2);
    RunOptions opt;
    opt.quiet = true;
    Trainer t(cfg, opt);
    t.setup();
    for (const auto& p : t.params()) {
      Tensor want = h5::read(ck, "param/" + p.name);
      Tensor got = p.master.rows(0, want.dim(0));
      ASSERT_EQ(got.to_float_vector(), want.to_float_vector()) << p.name;
      for (int64_t r = want.dim(0); r < p.master.dim(0); ++r)  // padded vocabulary rows stay zero
        for (int64_t c = 0; c < p.master.dim(1); ++c) ASSERT_EQ(p.master.data<float>()[r * p.master.dim(1) + c], 0.0f);
    }
  }
}

TEST(Trainer, SigtermCheckpointsAndResumeMatches) {
  auto dir = fresh_dir("sigterm");
  const std::string data = make_data(dir);
  const fs::path cfg_path = dir / "cfg.yaml";
  std::ofstream(cfg_path) << yaml(data, dir / "r", "");
  const std::vector<std::string> base = {PTRAIN_BINARY, "--cfg", cfg_path.string(), "--quiet", "--set",
                                         "train.steps=200", "--set", "checkpoint.every=0"};
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::vector<char*> argv;
    for (auto& s : base) argv.push_back(const_cast<char*>(s.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  // wait until a few steps are logged, then SIGTERM
  for (int i = 0; i < 600 && metrics(dir / "r").size() < 3; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << "ptrain must exit cleanly on SIGTERM";
  EXPECT_EQ(WEXITSTATUS(status), 128 + SIGTERM);
  auto latest = latest_checkpoint((dir / "r").string(), false);
  ASSERT_TRUE(latest.has_value()) << "a checkpoint must be written on SIGTERM";
  const int64_t stopped = *latest;
  EXPECT_EQ(static_cast<int64_t>(metrics(dir / "r").size()), stopped);
  EXPECT_LT(stopped, 200);
  // resume to the end; the whole curve equals an uninterrupted run. Both through the executable,
  // as the interrupted run: it may run another OpenBLAS core than this test process
  // (core/cpu/threading.h: a generic fallback core is replaced), whose GEMMs round differently.
  const fs::path full_cfg = dir / "full.yaml";
  std::ofstream(full_cfg) << yaml(data, dir / "full", "");
  for (const auto& [cfg, resume] : {std::pair{cfg_path, true}, std::pair{full_cfg, false}}) {
    const std::string cmd = fmt::format("{} --cfg {} --quiet --set train.steps=200 --set checkpoint.every=0{}",
                                        PTRAIN_BINARY, cfg.string(), resume ? " --resume" : "");
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
  auto a = metrics(dir / "r"), b = metrics(dir / "full");
  ASSERT_EQ(a.size(), 200u);
  ASSERT_EQ(b.size(), 200u);
  for (size_t k = 0; k < 200; ++k) ASSERT_EQ(a[k].at("loss").get<double>(), b[k].at("loss").get<double>()) << k + 1;
}
