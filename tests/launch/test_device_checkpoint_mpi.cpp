// tests/launch/test_device_checkpoint_mpi.cpp — multi-rank device runs (label mpi, `mpirun -np
// 4`; fixture: parallel_mpi_fixture.h; the layouts themselves: test_device_ranks_mpi.cpp):
// checkpoints move between 4 device ranks and 1 CPU rank, the memory plan of a pipeline rank
// on the device is its measured peak, and tensor parallelism on the device is refused on every
// rank with one clear message.
#define PTRAIN_MPI_SUITE "device_checkpoint_mpi"
#include "tests/launch/parallel_mpi_fixture.h"

#include "launch/memory_plan.h"

namespace {

// Checkpoints are the CPU path's layout: a 4-rank device run's step-10 checkpoint (dp2 x pp2)
// resumes in a 1-rank CPU run, and a 1-rank CPU checkpoint resumes in a 4-rank device run;
// steps 11..20 match the uninterrupted CPU run.
TEST_F(ParallelEquivalence, DeviceCheckpointsMoveBetweenLayoutsAndDevices) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  const fs::path ref = reference("llama", 2);
  const std::vector<std::string> dev4 = {"device=cuda", "parallel.dp=2", "parallel.pp=2"};
  const fs::path saved = run("ck_device_dp2_pp2", "llama", 2, 4, dev4);
  if (world_rank() == 0) {  // resume from step 10 (both runs wrote steps 10 and 20)
    fs::remove_all(saved / "step_00000020");
    fs::remove_all(root_dir() / "ck_cpu_saved");
    fs::copy(ref, root_dir() / "ck_cpu_saved", fs::copy_options::recursive);
    fs::remove_all(root_dir() / "ck_cpu_saved" / "step_00000020");
  }
  world_->barrier();
  const fs::path on_cpu = run("ck_device_to_cpu", "llama", 2, 1, {}, true, "ck_device_dp2_pp2");
  expect_match(ref, on_cpu, "4-rank device checkpoint resumed on 1 CPU rank", 11);
  const fs::path on_dev = run("ck_cpu_to_device", "llama", 2, 4, dev4, true, "ck_cpu_saved");
  expect_match(ref, on_dev, "1-rank CPU checkpoint resumed on 4 device ranks", 11);
}

// The model of memory (launch/memory_plan.h) for pipeline ranks on the device: rank 0 of pp 2
// under 1f1b keeps two micro-batches in flight; `ptrain plan`'s device peak for it is the peak
// its caching allocator measured (metrics.jsonl is rank 0's), byte for byte.
TEST_F(ParallelEquivalence, DevicePipelinePeakIsThePlans) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  const std::vector<std::string> sets = {"device=cuda", "parallel.pp=2", "parallel.schedule=1f1b",
                                         "train.recompute=selective"};
  const fs::path dir = run("device_pp2_plan", "llama", 2, 2, sets);
  if (world_rank() != 0) return;
  std::vector<std::string> all = {"train.init_from=" + init_file_name("llama", 2), "checkpoint.dir=" + dir.string()};
  all.insert(all.end(), sets.begin(), sets.end());
  Config cfg = parse_config(base_yaml("llama", 2), all);
  ValidationContext vc;
  vc.world_size = 2;
  validate(cfg, vc);
  ASSERT_TRUE(memory_model_covers(cfg));
  const MemoryPlan plan = plan_memory(cfg, 2, *find_gpu("emulated"), int64_t{64} << 30);
  std::ifstream f(dir / "metrics.jsonl");
  std::string line, last;
  while (std::getline(f, line)) last = line;
  ASSERT_FALSE(last.empty());
  const int64_t measured = nlohmann::json::parse(last).at("mem_peak_bytes").get<int64_t>();
  EXPECT_EQ(plan.ranks.at(0).device_peak_bytes, measured) << "rank 0 of pp 2 (1f1b, selective recompute)";
}

// Tensor parallelism has no device path yet: every rank stops with the same clear message,
// before any collective of training.
TEST_F(ParallelEquivalence, DeviceTensorParallelIsRefusedOnEveryRank) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  const fs::path dir = root_dir() / "device_tp_refused";
  Config cfg = parse_config(base_yaml("llama", 2), {"checkpoint.dir=" + dir.string(), "device=cuda", "parallel.tp=2"});
  ValidationContext vc;
  vc.world_size = world_->size();
  validate(cfg, vc);
  RunOptions opt;
  opt.quiet = true;
  auto sub = parallel::split_communicator(*world_, 0, world_rank(), "device_refused");
  Trainer t(cfg, opt, std::move(sub));
  try {
    t.run();
    ADD_FAILURE() << "tp2 with device: cuda must stop";
  } catch (const UserError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("parallel.tp"), std::string::npos) << m;
    EXPECT_NE(m.find("HINT"), std::string::npos) << m;
    EXPECT_TRUE(t.inputs_failed_everywhere()) << "every rank refuses, so rank 0's message speaks for all";
  }
  world_->barrier();
}

}  // namespace
