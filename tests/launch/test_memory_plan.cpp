// tests/launch/test_memory_plan.cpp — the model of memory (launch/memory_plan.h) and `ptrain plan`.
//
//  * parameter counts and weight/gradient bytes per rank equal the real model's (built through
//    the layer registry, as the trainer builds a rank's piece) for llama and gpt2 (tied: the
//    last stage's embedding replica) at tp 1/2 and pp 1/2;
//  * saved activations: recompute full < selective < none; 1f1b keeps fewer micro-batches in
//    flight than gpipe (pp - stage against all); optimizer and activation offload move bytes
//    from the device to the host;
//  * every piece of advice fits when applied (rechecked here); the JSON has its fields;
//  * the restated scratch formulas equal core/cuda's, and the emulated GPU's capacity equals
//    what the emulated runtime reports (CUDA builds);
//  * calibration (emulated build): the predicted device_peak_bytes is within 10% of the run's
//    mem_peak_bytes (the caching allocator's peak) for a llama of hidden 256, 4 layers, seq 256
//    under recompute none / selective / full and with the optimizer offloaded;
//  * `ptrain plan` end to end: JSON output, exit 2 for an unknown --gpu and for --np that tp*pp
//    does not divide, well under a second.
// No MPI; label cpu. The calibration cases say skipped without the emulated device.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "launch/config.h"
#include "launch/memory_plan.h"
#include "launch/trainer.h"
#include "layers/model.h"
#include "parallel/partition.h"
#include "tests/launch/trainer_test_util.h"
#if PTRAIN_HAVE_CUDA
#include "core/cuda/attention.h"
#include "core/cuda/device.h"
#include "core/cuda/ops.h"
#include "core/cuda/optim_kernels.h"
#endif

namespace fs = std::filesystem;
using namespace ptrain;
using namespace ptrain::launch;

namespace {

/// A TP group of `size` ranks that only answers rank() and size() (enough to build a shard).
class ShapeOnlyComm final : public parallel::Communicator {
 public:
  ShapeOnlyComm(int size, int rank) : size_(size), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  void all_reduce(Tensor&, parallel::ReduceOp) override { fail(); }
  std::unique_ptr<parallel::Request> all_reduce_async(Tensor&, parallel::ReduceOp) override { fail(); return nullptr; }
  void all_reduce(std::span<double>, parallel::ReduceOp) override { fail(); }
  void all_gather(const Tensor&, Tensor&) override { fail(); }
  void reduce_scatter(const Tensor&, Tensor&) override { fail(); }
  void broadcast(Tensor&, int) override { fail(); }
  std::unique_ptr<parallel::Request> isend(const Tensor&, int, int) override { fail(); return nullptr; }
  void recv(Tensor&, int, int) override { fail(); }
  std::unique_ptr<parallel::Request> irecv(Tensor&, int, int) override { fail(); return nullptr; }
  void barrier() override { fail(); }
  std::vector<std::string> gather_strings(const std::string&, int) override { fail(); return {}; }

 private:
  static void fail() { PT_CHECK(false, "ShapeOnlyComm: no communication in this test"); }
  int size_, rank_;
  std::string name_ = "tp";
};

const char* kSmall = R"(
model: {arch: llama, vocab_size: 300, hidden: 64, layers: 4, heads: 4, kv_heads: 2, ffn_hidden: 96, max_seq_len: 64}
train: {seq_len: 32, micro_batch: 2, global_batch: 8, steps: 10, precision: bf16}
optim: {warmup_steps: 1}
)";

/// A llama of the calibration size (hidden 256, 4 layers, seq 256).
const char* kCalibration = R"(
model: {arch: llama, vocab_size: 256, hidden: 256, layers: 4, heads: 4, kv_heads: 2, ffn_hidden: 704, max_seq_len: 256}
train: {seq_len: 256, micro_batch: 1, global_batch: 1, steps: 2, precision: fp32, log_every: 1}
optim: {warmup_steps: 1}
checkpoint: {every: 0}
)";

Config make(const char* yaml, const std::vector<std::string>& sets, int world) {
  Config c = parse_config(yaml, sets);
  ValidationContext ctx;
  ctx.world_size = world;
  validate(c, ctx);
  return c;
}

GpuSpec big_gpu() { return *find_gpu("a100-80g"); }
constexpr int64_t kHost = int64_t{512} << 30;

/// Parameter elements of rank `rank`'s piece of the real model (built through the registry).
int64_t real_params(const Config& cfg, int world, int rank) {
  const int tp = cfg.parallel.tp, pp = cfg.parallel.pp;
  const int tp_rank = rank % tp, pp_rank = (rank / tp) % pp;
  (void)world;
  layers::ModelSpec spec = model_spec(cfg);
  spec.dtype = DType::f32;
  const auto stages = parallel::partition_layers(cfg.model.layers, pp, cfg.parallel.stage_layers);
  if (pp > 1) spec.blocks = stages[static_cast<size_t>(pp_rank)];
  spec.build_embed = pp_rank == 0;
  spec.build_head = pp_rank == pp - 1;
  ShapeOnlyComm comm(tp, tp_rank);
  if (tp > 1) spec.tp = &comm;
  auto model = layers::make_model(spec);
  int64_t n = 0;
  for (const auto& np : model->named_parameters()) n += np.param->value.numel();
  return n;
}

}  // namespace

TEST(MemoryPlan, ParameterBytesEqualTheRealModelPerRank) {
  for (const std::string arch : {"llama", "gpt2"}) {
    for (int tp : {1, 2}) {
      for (int pp : {1, 2}) {
        std::vector<std::string> sets = {"model.arch=" + arch, fmt::format("parallel.tp={}", tp),
                                         fmt::format("parallel.pp={}", pp)};
        if (arch == "gpt2") sets.push_back("model.kv_heads=null");
        const int world = tp * pp;
        const Config cfg = make(kSmall, sets, world);
        const MemoryPlan plan = plan_memory(cfg, world, big_gpu(), kHost);
        ASSERT_EQ(plan.ranks.size(), static_cast<size_t>(world));
        for (const RankMemory& r : plan.ranks) {
          SCOPED_TRACE(fmt::format("{} tp {} pp {} rank {}", arch, tp, pp, r.rank));
          const int64_t n = real_params(cfg, world, r.rank);
          EXPECT_EQ(r.params, n);
          EXPECT_EQ(r.device.weights, n * 2);  // bf16 on the device
          EXPECT_EQ(r.device.grads, n * 4);    // train.grad_dtype fp32
          EXPECT_EQ(r.device.master, n * 4);   // fp32 master of a bf16 run
        }
      }
    }
  }
}

TEST(MemoryPlan, RecomputeKeepsLessFullThanSelectiveThanNone) {
  auto saved = [](const std::string& mode) {
    const Config c = make(kCalibration, {"train.recompute=" + mode, "train.micro_batch=2", "train.global_batch=4"}, 1);
    const MemoryPlan p = plan_memory(c, 1, big_gpu(), kHost);
    return std::pair{p.ranks[0].device.saved_activations, p.ranks[0].device_peak_bytes};
  };
  const auto none = saved("none"), sel = saved("selective"), full = saved("full");
  EXPECT_LT(full.first, sel.first);
  EXPECT_LT(sel.first, none.first);
  EXPECT_LT(full.second, sel.second);
  EXPECT_LT(sel.second, none.second);
}

TEST(MemoryPlan, OneFOneBKeepsFewerMicroBatchesThanGpipe) {
  auto plan = [](const std::string& schedule) {
    const Config c = make(kSmall, {"parallel.pp=2", "parallel.schedule=" + schedule, "train.micro_batch=1"}, 2);
    return plan_memory(c, 2, big_gpu(), kHost);
  };
  const MemoryPlan g = plan("gpipe"), f = plan("1f1b"), z = plan("zero-bubble");
  // 8 micro-batches per step: gpipe keeps all of them, 1f1b pp - stage
  EXPECT_EQ(g.ranks[0].in_flight, 8);
  EXPECT_EQ(f.ranks[0].in_flight, 2);
  EXPECT_EQ(f.ranks[1].in_flight, 1);
  // zero-bubble keeps a tape from F to its deferred W: more than 1f1b, fewer than gpipe
  EXPECT_GE(z.ranks[0].in_flight, f.ranks[0].in_flight);
  EXPECT_LT(z.ranks[0].in_flight, g.ranks[0].in_flight);
  EXPECT_LT(f.ranks[0].device.saved_activations, g.ranks[0].device.saved_activations);
  EXPECT_LT(f.ranks[0].device_peak_bytes, g.ranks[0].device_peak_bytes);
}

TEST(MemoryPlan, OffloadMovesBytesFromDeviceToHost) {
  const Config base = make(kCalibration, {"train.precision=bf16"}, 1);
  const MemoryPlan p0 = plan_memory(base, 1, big_gpu(), kHost);
  const MemoryPlan po = plan_memory(make(kCalibration, {"train.precision=bf16", "train.offload.optimizer=true"}, 1),
                                    1, big_gpu(), kHost);
  const RankMemory &a = p0.ranks[0], &b = po.ranks[0];
  EXPECT_GT(a.device.master, 0);
  EXPECT_GT(a.device.moments, 0);
  EXPECT_EQ(b.device.master, 0);
  EXPECT_EQ(b.device.moments, 0);
  EXPECT_EQ(b.host.master, a.params * 4);
  EXPECT_EQ(b.host.moments, a.params * 8);
  EXPECT_LT(b.device_peak_bytes, a.device_peak_bytes);
  EXPECT_GT(b.host_bytes, a.host_bytes);

  const MemoryPlan pa = plan_memory(make(kCalibration, {"train.precision=bf16", "train.offload.activations=true"}, 1),
                                    1, big_gpu(), kHost);
  EXPECT_LT(pa.ranks[0].device.saved_activations, a.device.saved_activations);
  EXPECT_GT(pa.ranks[0].host.activations, 0);
  EXPECT_EQ(a.host.activations, 0);
}

TEST(MemoryPlan, AdviceFitsWhenApplied) {
  const Config cfg = make(kCalibration, {"train.micro_batch=2", "train.global_batch=4", "train.precision=bf16"}, 1);
  const GpuSpec probe = big_gpu();
  const int64_t none = plan_memory(cfg, 1, probe, kHost).ranks[0].device_required_bytes;
  const int64_t full =
      plan_memory(apply_sets(cfg, {"train.recompute=full"}), 1, probe, kHost).ranks[0].device_required_bytes;
  ASSERT_LT(full, none);
  GpuSpec small{"small", "a card between full recompute and none", (none + full) / 2, probe.context_bytes, false};
  const MemoryPlan plan = plan_memory(cfg, 1, small, kHost);
  ASSERT_FALSE(plan.fits);
  const auto advice = plan_advice(cfg, 1, small, kHost, plan);
  ASSERT_FALSE(advice.empty());
  bool has_full = false;
  for (const PlanChange& a : advice) {
    SCOPED_TRACE(fmt::format("advice {}", a.sets.front()));
    EXPECT_TRUE(a.plan.fits);
    Config changed = apply_sets(cfg, a.sets);
    ValidationContext ctx;
    validate(changed, ctx);
    EXPECT_TRUE(plan_memory(changed, 1, small, kHost).fits);
    has_full = has_full || a.sets.front() == "train.recompute=full";
  }
  EXPECT_TRUE(has_full);
  const std::string text = format_plan(plan, advice);
  EXPECT_NE(text.find("does not fit"), std::string::npos) << text;
  EXPECT_NE(text.find("--set train.recompute=full"), std::string::npos) << text;
  EXPECT_NE(refusal_message(plan, advice).find("--set "), std::string::npos);
  // a plan that fits needs no advice
  EXPECT_TRUE(plan_advice(cfg, 1, probe, kHost, plan_memory(cfg, 1, probe, kHost)).empty());
}

TEST(MemoryPlan, JsonHasTheFields) {
  const Config cfg = make(kSmall, {"parallel.tp=2", "parallel.pp=2"}, 8);
  const nlohmann::json j = plan_to_json(plan_memory(cfg, 8, *find_gpu("rtx4090-24g"), kHost), {});
  for (const char* k : {"fits", "device_capacity_bytes", "host_capacity_bytes", "host_bytes", "ranks"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_TRUE(j["fits"].is_boolean());
  ASSERT_EQ(j["ranks"].size(), 8u);
  for (const auto& r : j["ranks"]) {
    for (const char* k : {"rank", "stage", "tp_rank", "device_peak_bytes", "host_bytes", "breakdown"})
      EXPECT_TRUE(r.contains(k)) << k;
    EXPECT_TRUE(r["breakdown"]["device"].contains("saved_activations"));
    EXPECT_TRUE(r["breakdown"]["host"].contains("checkpoint_staging"));
  }
  EXPECT_EQ(j["ranks"][5]["stage"], 0);  // rank 5 = dp 1, pp 0, tp 1
  EXPECT_EQ(j["ranks"][5]["tp_rank"], 1);
}

TEST(MemoryPlan, UnknownLayerIsAUserError) {
  const Config cfg = make(kSmall, {}, 1);
  Config odd = cfg;
  odd.model.mlp = "someone_elses_mlp";
  EXPECT_THROW(plan_memory(odd, 1, big_gpu(), kHost), UserError);
  std::string why;
  EXPECT_FALSE(memory_model_covers(odd, &why));
  EXPECT_NE(why.find("someone_elses_mlp"), std::string::npos) << why;
  EXPECT_TRUE(memory_model_covers(cfg));
  EXPECT_EQ(find_gpu("gtx1080"), nullptr);
  EXPECT_NE(known_gpu_names().find("rtx4090-24g"), std::string::npos);
}

#if PTRAIN_HAVE_CUDA
TEST(MemoryPlan, ScratchFormulasEqualTheDeviceOps) {
  for (DType dt : {DType::f32, DType::bf16})
    for (int64_t B : {1, 3})
      for (int64_t T : {1, 17, 256}) {
        EXPECT_EQ(launch::detail::attention_forward_scratch_bytes(dt, B, T, 2),
                  static_cast<int64_t>(cuda::attention_forward_scratch_bytes(dt, B, T, 4, 2)));
        EXPECT_EQ(launch::detail::attention_backward_scratch_bytes(dt, B, T, 2),
                  static_cast<int64_t>(cuda::attention_backward_scratch_bytes(dt, B, T, 4, 2)));
      }
  for (int64_t rows : {1, 63, 64, 65, 4096})
    for (int64_t C : {8, 5120}) {
      EXPECT_EQ(launch::detail::rms_norm_backward_scratch_bytes(rows, C), static_cast<int64_t>(cuda::rms_norm_backward_scratch_bytes(rows, C)));
      EXPECT_EQ(launch::detail::layer_norm_backward_scratch_bytes(rows, C),
                static_cast<int64_t>(cuda::layer_norm_backward_scratch_bytes(rows, C)));
    }
  for (int64_t n : {1, 64, 65, 2048, 4097})
    EXPECT_EQ(launch::detail::embedding_backward_scratch_bytes(n), static_cast<int64_t>(cuda::embedding_backward_scratch_bytes(n)));
  for (int64_t n : {0, 1, 37}) EXPECT_EQ(launch::detail::optim_table_bytes(n), static_cast<int64_t>(cuda::optim_table_bytes(n)));
}
#endif

#if PTRAIN_CUDA_EMULATED
TEST(MemoryPlan, EmulatedCapacityIsWhatTheRuntimeReports) {
  ASSERT_GT(cuda::device_count(), 0);
  EXPECT_EQ(find_gpu("emulated")->total_bytes, static_cast<int64_t>(cuda::device_info(0).total_memory));
  const auto here = current_device_spec();
  ASSERT_TRUE(here.has_value());
  EXPECT_TRUE(here->emulated);
  EXPECT_EQ(here->total_bytes, find_gpu("emulated")->total_bytes);
}

// Must-show (2): the plan's device peak against the emulated device's measured allocator peak.
TEST(MemoryPlan, CalibrationAgainstTheEmulatedDevice) {
  const fs::path dir = test::fresh_dir("memory_plan_", "calibration");
  const std::string data = test::make_data(dir, 40000);
  const std::vector<std::vector<std::string>> cases = {
      {"train.recompute=none"},
      {"train.recompute=selective"},
      {"train.recompute=full"},
      {"train.recompute=none", "train.offload.optimizer=true", "train.precision=bf16"},
      {"train.recompute=none", "train.offload.activations=true"},
      {"train.recompute=full", "train.offload.activations=true", "train.offload.prefetch=2"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    std::vector<std::string> sets = cases[i];
    sets.push_back("device=cuda");
    sets.push_back("data.path=" + data);
    sets.push_back(fmt::format("checkpoint.dir={}", (dir / fmt::format("run{}", i)).string()));
    const Config cfg = make(kCalibration, sets, 1);
    const MemoryPlan plan = plan_memory(cfg, 1, *find_gpu("emulated"), kHost);
    ASSERT_EQ(test::train(kCalibration, false, sets), 0);
    const auto rows = test::metrics(dir / fmt::format("run{}", i));
    ASSERT_FALSE(rows.empty());
    const double measured = rows.back().at("mem_peak_bytes").get<double>();
    const double predicted = static_cast<double>(plan.ranks[0].device_peak_bytes);
    std::printf("calibration %s: predicted %.0f, measured %.0f bytes (%+.2f%%)\n",
                fmt::format("{}", fmt::join(cases[i], " ")).c_str(), predicted, measured,
                100.0 * (predicted - measured) / measured);
    EXPECT_NEAR(predicted, measured, 0.10 * measured) << fmt::format("{}", fmt::join(cases[i], " "));
  }
}
#endif

// ---------------------------------------------------------------- the executable

namespace {

struct CliRun {
  int code = -1;
  std::string out, err;
  double seconds = 0;
};

/// Runs PTRAIN_BINARY with args (no shell quoting needed: simple arguments only).
CliRun run_ptrain(const std::vector<std::string>& args) {
  const fs::path dir = test::fresh_dir("memory_plan_", "cli");
  std::string cmd = std::string("'") + PTRAIN_BINARY + "'";
  for (const auto& a : args) cmd += " '" + a + "'";
  cmd += " >" + (dir / "out").string() + " 2>" + (dir / "err").string();
  const auto t0 = std::chrono::steady_clock::now();
  const int st = std::system(cmd.c_str());
  CliRun r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  auto slurp = [](const fs::path& p) {
    std::ifstream in(p);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  };
  r.out = slurp(dir / "out");
  r.err = slurp(dir / "err");
  return r;
}

std::string config_path(const char* name) { return (fs::path(PTRAIN_SOURCE_DIR) / "configs" / name).string(); }

}  // namespace

TEST(PlanCommand, JsonForTheTinyConfigUnderASecond) {
  const CliRun r = run_ptrain({"plan", "--cfg", config_path("tiny.yaml"), "--gpu", "emulated", "--np", "1", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_TRUE(j.at("fits").get<bool>());
  EXPECT_GT(j.at("device_capacity_bytes").get<int64_t>(), 0);
  EXPECT_GT(j.at("host_capacity_bytes").get<int64_t>(), 0);
  EXPECT_GT(j.at("host_bytes").get<int64_t>(), 0);
  ASSERT_EQ(j.at("ranks").size(), 1u);
  const auto& r0 = j["ranks"][0];
  for (const char* k : {"rank", "stage", "tp_rank", "device_peak_bytes", "host_bytes", "breakdown"})
    EXPECT_TRUE(r0.contains(k)) << k;
  EXPECT_GT(r0["device_peak_bytes"].get<int64_t>(), 0);
  EXPECT_LT(r.seconds, 1.0);
}

TEST(PlanCommand, HumanReportNamesTheVerdict) {
  const CliRun r = run_ptrain({"plan", "--cfg", config_path("tiny.yaml"), "--gpu", "rtx4090-24g", "--np", "2",
                            "--host-mem", "16"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("verdict: fits"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("saved activations"), std::string::npos) << r.out;
}

TEST(PlanCommand, UnknownGpuExits2NamingTheKnownOnes) {
  const CliRun r = run_ptrain({"plan", "--cfg", config_path("tiny.yaml"), "--gpu", "gtx1080", "--np", "1"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("ptrain: error: plan: --gpu gtx1080"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("rtx4090-24g"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("emulated"), std::string::npos) << r.err;
}

TEST(PlanCommand, LayoutThatCannotBeBuiltExits2) {
  const CliRun r = run_ptrain({"plan", "--cfg", config_path("tiny-tp2-pp2.yaml"), "--gpu", "rtx4090-24g", "--np", "3"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("ptrain: error: config error: parallel.dp"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("world size 3"), std::string::npos) << r.err;
  const CliRun m = run_ptrain({"plan", "--cfg", config_path("tiny.yaml"), "--gpu", "emulated"});
  EXPECT_EQ(m.code, 2);
  EXPECT_NE(m.err.find("--np"), std::string::npos) << m.err;
}

// The headline (issue 13, point 3): configs/13b.yaml on 4 x RTX 4090 and a 128 GB host fits;
// with an fp32 optimizer state the host does not and the advice names the compact state;
// without the offload the cards do not and the advice names the offload. Also 7b on 2 cards.
TEST(PlanCommand, Llama13bOnFour4090sAnd128GB) {
  auto plan = [](std::vector<std::string> sets, const char* cfg = "13b.yaml", const char* np = "4") {
    std::vector<std::string> args = {"plan", "--cfg", config_path(cfg), "--gpu", "rtx4090-24g", "--np", np,
                                     "--host-mem", "128", "--json"};
    for (auto& s : sets) {
      args.push_back("--set");
      args.push_back(s);
    }
    const CliRun r = run_ptrain(args);
    EXPECT_EQ(r.code, 0) << r.err;
    return nlohmann::json::parse(r.out);
  };
  const auto ok = plan({});
  EXPECT_TRUE(ok.at("fits").get<bool>());
  EXPECT_LE(ok.at("host_bytes").get<int64_t>(), 128LL << 30);
  const auto fp32 = plan({"optim.state=fp32"});
  EXPECT_FALSE(fp32.at("fits").get<bool>());
  EXPECT_TRUE(fp32.at("device_fits").get<bool>());
  EXPECT_FALSE(fp32.at("host_fits").get<bool>());
  EXPECT_NE(fp32.dump().find("optim.state=8bit"), std::string::npos) << "the advice names the compact state";
  const auto dev = plan({"train.offload.optimizer=false"});
  EXPECT_FALSE(dev.at("device_fits").get<bool>());
  EXPECT_NE(dev.dump().find("train.offload.optimizer=true"), std::string::npos) << "the advice names the offload";
  EXPECT_TRUE(plan({}, "7b.yaml", "2").at("fits").get<bool>());
}
