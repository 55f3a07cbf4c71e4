// tests/launch/parallel_mpi_fixture.h — the fixture of the multi-rank trainer tests (one
// `mpirun -np 4` runs every case of a binary): shared inputs, a runner of w-rank jobs on
// sub-worlds, and the step-by-step comparison of metrics.jsonl rows. Included once by each
// test_*_mpi.cpp, which first defines PTRAIN_MPI_SUITE (its folder under $PTRAIN_TEST_TMP).
//
// One mpirun runs every case: for a layout of w ranks, world ranks 0..w-1 form a sub-world
// (split_communicator) and run a Trainer on it; the other ranks wait. Rank 0 also runs the
// single-rank reference (no communicator at all) and compares metrics.jsonl rows step by
// step: loss and pre-clip gradient norm within 1e-5 relative at every one of 20 fp32 steps,
// all runs starting from one `train.init_from` file.
//
// Invariants: every rank makes the same collective calls in the same order whatever a case's
// outcome (failures are EXPECTs, never early returns), so a failing case cannot hang the rest.
#pragma once
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "core/h5io.h"
#if PTRAIN_HAVE_CUDA
#include "core/cuda/device.h"
#endif
#include "data/prepare.h"
#include "launch/config.h"
#include "launch/trainer.h"
#include "launch/weights_io.h"
#include "layers/registry.h"
#include "parallel/mpi_comm.h"

#ifndef PTRAIN_MPI_SUITE
#error "define PTRAIN_MPI_SUITE (the suite's folder name) before including parallel_mpi_fixture.h"
#endif

namespace fs = std::filesystem;
using namespace ptrain;
using namespace ptrain::launch;

namespace {

/// A CUDA device this process can train on (the emulated one in CI); false in a CUDA-less build.
[[maybe_unused]] bool have_device() {
#if PTRAIN_HAVE_CUDA
  return cuda::device_count() > 0;
#else
  return false;
#endif
}

int world_rank() {
  int r;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

fs::path root_dir() {
  const char* env = std::getenv("PTRAIN_TEST_TMP");
  return fs::path(env && *env ? env : "/tmp") / PTRAIN_MPI_SUITE;
}

struct Row {
  double loss, grad_norm, val_loss;  ///< val_loss NaN on steps without evaluation
};

std::vector<Row> read_metrics(const fs::path& run) {
  std::vector<Row> r;
  std::ifstream f(run / "metrics.jsonl");
  std::string line;
  while (std::getline(f, line)) {
    auto j = nlohmann::json::parse(line);
    r.push_back({j.at("loss").get<double>(), j.at("grad_norm").get<double>(),
                 j.contains("val_loss") ? j.at("val_loss").get<double>() : std::nan("")});
  }
  return r;
}

/// Shared inputs: token file and init_from weights per model variant (written by rank 0).
class ParallelEquivalence : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    world_ = parallel::make_mpi_communicator(MPI_COMM_WORLD, "world");
    if (world_rank() == 0) {
      fs::remove_all(root_dir());
      fs::create_directories(root_dir());
      const char* words[] = {"the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "see", "big"};
      std::mt19937 rng(11);
      std::string s;
      for (int i = 0; i < 4000; ++i) s += std::string(words[rng() % 12]) + ((i % 7 == 6) ? ".\n" : " ");
      std::ofstream(root_dir() / "c.txt") << s;
      data::PrepareOptions o;
      o.inputs = {(root_dir() / "c.txt").string()};
      o.out = (root_dir() / "tokens.h5").string();
      data::prepare(o);
    }
    world_->barrier();
  }
  static void TearDownTestSuite() { world_.reset(); }

  static std::string base_yaml(const std::string& arch, int kv_heads) {
    return fmt::format(R"(
model: {{arch: {}, vocab_size: 256, hidden: 32, layers: 4, heads: 4, kv_heads: {}, ffn_hidden: 64,
         max_seq_len: 32, pad_vocab_to: 64}}
train: {{seq_len: 16, micro_batch: 1, global_batch: 8, steps: 20, seed: 5, precision: fp32, threads: 1,
         log_every: 1, eval_every: 10, val_fraction: 0.05, eval_batches: 2}}
optim: {{lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 2, grad_clip: 0.5}}
data: {{path: {}, shuffle: true}}
device: cpu
)",
                       arch, kv_heads, (root_dir() / "tokens.h5").string());
  }

  /// Where init_file() writes a model variant's weights.
  static std::string init_file_name(const std::string& arch, int kv_heads) {
    return (root_dir() / fmt::format("init_{}_{}.h5", arch, kv_heads)).string();
  }
  /// The init_from file of a model variant (rank 0 writes it once; collective).
  static std::string init_file(const std::string& arch, int kv_heads) {
    const fs::path p = init_file_name(arch, kv_heads);
    if (world_rank() == 0 && !fs::exists(p)) {
      try {
        Config cfg = parse_config(base_yaml(arch, kv_heads));
        auto spec = model_spec(cfg);
        auto model = layers::make_model(spec);
        model->init_parameters(77);  // not the training seed: init_from must be what is used
        auto ws = model->external_weights();
        std::vector<Tensor> src;
        for (auto& w : ws) src.push_back(w.param->value);
        write_external_weights(p.string(), ws, src, DType::f32);
      } catch (const std::exception& e) {
        ADD_FAILURE() << "init file: " << e.what();
        MPI_Abort(MPI_COMM_WORLD, 3);
      }
    }
    world_->barrier();
    return p.string();
  }

  /// Runs `world_size` ranks (world ranks 0..w-1) on the layout `sets`; collective over world.
  static fs::path run(const std::string& name, const std::string& arch, int kv_heads, int world_size,
                      const std::vector<std::string>& sets, bool resume = false, const std::string& from = "") {
    const std::string init = init_file(arch, kv_heads);
    const fs::path dir = root_dir() / name;
    if (world_rank() == 0) {
      fs::remove_all(dir);
      if (!from.empty()) fs::copy(root_dir() / from, dir, fs::copy_options::recursive);
    }
    world_->barrier();
    std::vector<std::string> all = {"train.init_from=" + init, "checkpoint.dir=" + dir.string(),
                                    "checkpoint.every=10", "checkpoint.keep=0"};
    all.insert(all.end(), sets.begin(), sets.end());
    const int me = world_rank();
    auto sub = parallel::split_communicator(*world_, me < world_size ? 0 : 1, me, "job");
    if (me < world_size) {
      try {
        Config cfg = parse_config(base_yaml(arch, kv_heads), all);
        ValidationContext vc;
        vc.world_size = world_size;
        validate(cfg, vc);
        RunOptions opt;
        opt.quiet = true;
        opt.resume = resume;
        Trainer t(cfg, opt, world_size > 1 ? std::move(sub) : nullptr);
        EXPECT_EQ(t.run(), 0) << name;
      } catch (const std::exception& e) {
        ADD_FAILURE() << name << ": " << e.what();
        MPI_Abort(MPI_COMM_WORLD, 3);  // peers of a failed job would wait forever
      }
    }
    world_->barrier();
    return dir;
  }

  /// Rank 0: rows of `got` match `want` from step `first` (1-based) on, within rel.
  static void expect_match(const fs::path& want_dir, const fs::path& got_dir, const std::string& what,
                           size_t first = 1, double rel = 1e-5) {
    if (world_rank() != 0) return;
    auto want = read_metrics(want_dir), got = read_metrics(got_dir);
    ASSERT_EQ(want.size(), 20u) << what;
    ASSERT_EQ(got.size(), 20u) << what;
    for (size_t s = first - 1; s < want.size(); ++s) {
      EXPECT_NEAR(got[s].loss, want[s].loss, rel * std::fabs(want[s].loss)) << what << " loss at step " << s + 1;
      EXPECT_NEAR(got[s].grad_norm, want[s].grad_norm, rel * std::fabs(want[s].grad_norm))
          << what << " grad norm at step " << s + 1;
      // evaluation (steps 10 and 20) runs forward-only through the same pipeline and TP groups
      EXPECT_EQ(std::isnan(got[s].val_loss), std::isnan(want[s].val_loss)) << what << " val_loss at step " << s + 1;
      if (!std::isnan(want[s].val_loss)) {
        EXPECT_NEAR(got[s].val_loss, want[s].val_loss, rel * std::fabs(want[s].val_loss))
            << what << " val_loss at step " << s + 1;
      }
    }
  }

  /// The single-rank reference of a model variant (run once).
  static fs::path reference(const std::string& arch, int kv_heads) {
    const std::string name = fmt::format("ref_{}_{}", arch, kv_heads);
    if (!fs::exists(root_dir() / name / "metrics.jsonl")) run(name, arch, kv_heads, 1, {});
    return root_dir() / name;
  }

  static std::unique_ptr<parallel::Communicator> world_;
};
std::unique_ptr<parallel::Communicator> ParallelEquivalence::world_;

struct Layout {
  std::string name;
  int ranks;
  std::vector<std::string> sets;
};

[[maybe_unused]] void check_layouts(const std::string& arch, int kv, const std::vector<Layout>& layouts,
                   fs::path (*reference)(const std::string&, int),
                   fs::path (*runner)(const std::string&, const std::string&, int, int, const std::vector<std::string>&,
                                      bool, const std::string&),
                   void (*match)(const fs::path&, const fs::path&, const std::string&, size_t, double)) {
  const fs::path ref = reference(arch, kv);
  for (const auto& l : layouts) {
    const fs::path got = runner(arch + "_" + l.name, arch, kv, l.ranks, l.sets, false, "");
    match(ref, got, arch + " " + l.name, 1, 1e-5);
  }
}

}  // namespace
