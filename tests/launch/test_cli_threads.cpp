// tests/launch/test_cli_threads.cpp — the `ptrain` executable's threads and BLAS, as a user
// with no threading variable in the environment gets them:
//  * `ptrain info` names the OpenBLAS build (the OpenMP one in the default tree) and the core;
//  * OpenBLAS's generic fallback core is replaced by the ISA's core (re-exec with
//    OPENBLAS_CORETYPE), and a core the user names is kept;
//  * the start banner says how many threads each rank uses and which BLAS build, and warns when
//    the threads exceed the usable cores;
//  * every step's loss and gradient norm are the same bits at 1, 2, 3 threads and the default.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/cpu/threading.h"
#include "tests/launch/trainer_test_util.h"

namespace fs = std::filesystem;
using namespace ptrain;

namespace {

struct Out {
  int code = -1;
  std::string text;  ///< stdout and stderr
};

/// Runs `ptrain ARGS` through the shell with no threading variable set (ctest sets some) but `env`.
Out run_ptrain(const std::string& args, const std::string& env = "") {
  const std::string cmd =
      fmt::format("env -u OMP_NUM_THREADS -u OPENBLAS_NUM_THREADS -u OPENBLAS_CORETYPE -u OMP_WAIT_POLICY "
                  "-u PTRAIN_BLAS_REEXEC -u PTRAIN_BLAS_CORE_DETECTED {} {} {} 2>&1",
                  env, PTRAIN_BINARY, args);
  Out o;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return o;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) o.text.append(buf, n);
  const int st = pclose(p);
  o.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return o;
}

nlohmann::json info(const std::string& env = "") {
  const Out o = run_ptrain("info", env);
  EXPECT_EQ(o.code, 0) << o.text;
  try {
    return nlohmann::json::parse(o.text);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "ptrain info did not print JSON: " << o.text;
    return {};
  }
}

std::string yaml(const std::string& data, const fs::path& run) {
  return fmt::format(R"(
model: {{arch: llama, vocab_size: 256, hidden: 64, layers: 2, heads: 4, kv_heads: 2, ffn_hidden: 160,
         max_seq_len: 64}}
train: {{seq_len: 64, micro_batch: 4, global_batch: 8, steps: 6, seed: 5, precision: fp32,
         eval_every: 0, log_every: 1}}
optim: {{lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 1}}
data: {{path: {}, shuffle: true}}
checkpoint: {{dir: {}, every: 0}}
device: cpu
)",
                     data, run.string());
}

}  // namespace

TEST(CliThreads, InfoNamesTheBlasBuildAndCore) {
  const auto j = info();
  ASSERT_TRUE(j.contains("blas")) << j.dump();
  const std::string expected = PTRAIN_OPENBLAS_EXPECTED_BUILD;
  if (!expected.empty()) {
    EXPECT_EQ(j["blas"]["build"], expected) << j.dump();
    EXPECT_NE(j["blas"]["library"].get<std::string>().find("openblas-openmp"), std::string::npos) << j.dump();
  }
  EXPECT_FALSE(j["blas"]["core"].get<std::string>().empty());
  EXPECT_GE(j["usable_cores"].get<int>(), 1);
  EXPECT_EQ(j["threads_auto"].get<int>(), j["usable_cores"].get<int>()) << "one rank gets every usable core";
  EXPECT_EQ(j["cpu_isa_level"].get<int>(), cpu::cpu_isa_level());
  // the core ptrain runs is never a fallback below what the CPU can do
  if (j["blas"]["core_source"] != "OPENBLAS_CORETYPE") {
    EXPECT_FALSE(cpu::better_blas_core(j["blas"]["core"].get<std::string>(), cpu::cpu_isa_level(), cpu::cpu_is_amd()))
        << j.dump();
  }
  const Out bad = run_ptrain("info --verbose");
  EXPECT_EQ(bad.code, 2) << bad.text;
  EXPECT_NE(bad.text.find("info takes no arguments"), std::string::npos) << bad.text;
}

TEST(CliThreads, GenericCoreIsReplacedAndTheUsersCoreKept) {
  const int level = cpu::cpu_isa_level();
  if (level < 2) GTEST_SKIP() << "this CPU has no AVX2: no better OpenBLAS core to choose";
  // As if OpenBLAS had not known this CPU (what 0.3.21 does on Emerald Rapids): ptrain re-executes
  // itself with OPENBLAS_CORETYPE set to the ISA's core and says so.
  const auto j = info("PTRAIN_TEST_BLAS_CORE_DETECTED=Prescott");
  EXPECT_EQ(j["blas"]["core_source"], "ptrain") << j.dump();
  EXPECT_EQ(j["blas"]["core_detected"], "Prescott") << j.dump();
  EXPECT_EQ(j["blas"]["core"], *cpu::better_blas_core("Prescott", level, cpu::cpu_is_amd())) << j.dump();
  // A core the user names is what runs, untouched.
  const auto u = info("OPENBLAS_CORETYPE=Sandybridge PTRAIN_TEST_BLAS_CORE_DETECTED=Prescott");
  EXPECT_EQ(u["blas"]["core"], "Sandybridge") << u.dump();
  EXPECT_EQ(u["blas"]["core_source"], "OPENBLAS_CORETYPE") << u.dump();
}

TEST(CliThreads, BannerAndBitIdenticalStepsAtEveryThreadCount) {
  const auto dir = test::fresh_dir("cli_threads_", "runs");
  const std::string data = test::make_data(dir, 6000);
  const fs::path cfg = dir / "cfg.yaml";
  const int cores = cpu::usable_cores();
  const std::string build = info()["blas"]["build"].get<std::string>();
  std::vector<nlohmann::json> want;
  for (int threads : {1, 2, 3, 0}) {  // 0: train.threads auto = every usable core
    const fs::path run = dir / fmt::format("t{}", threads);
    std::ofstream(cfg) << yaml(data, run);
    const Out o = run_ptrain(fmt::format("--cfg {} --set train.threads={}", cfg.string(), threads));
    ASSERT_EQ(o.code, 0) << o.text;
    const int used = threads > 0 ? threads : cores;
    EXPECT_NE(o.text.find(fmt::format("ptrain: {} thread{} per rank ({}", used, used == 1 ? "" : "s",
                                      threads > 0 ? "train.threads)" : "train.threads auto")),
              std::string::npos)
        << o.text;
    EXPECT_NE(o.text.find(fmt::format("({} build)", build)), std::string::npos) << o.text;
    EXPECT_EQ(o.text.find("exceed the") != std::string::npos, used > cores) << o.text;
    auto rows = test::metrics(run);
    ASSERT_EQ(rows.size(), 6u) << o.text;
    if (want.empty()) {
      want = rows;
      continue;
    }
    for (size_t k = 0; k < rows.size(); ++k) {
      EXPECT_EQ(rows[k].at("loss").get<double>(), want[k].at("loss").get<double>())
          << "step " << k + 1 << " at train.threads " << threads;
      EXPECT_EQ(rows[k].at("grad_norm").get<double>(), want[k].at("grad_norm").get<double>())
          << "step " << k + 1 << " at train.threads " << threads;
    }
  }
}
