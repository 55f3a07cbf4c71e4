// tests/launch/test_device_ranks_mpi.cpp — multi-rank training with device tensors (label mpi,
// `mpirun -np 4`; fixture: parallel_mpi_fixture.h). Each rank trains on its own device (in CI
// the emulated device, one per process); activations, gradients and losses cross ranks through
// the MPI communicator, staged through host memory (parallel/mpi_comm.cpp), and the data-
// parallel reducer packs device gradients from host copies. Every layout below matches the
// single-rank CPU run within 1e-5 relative at every one of 20 fp32 steps (loss, pre-clip
// gradient norm, validation loss), as the single-rank device run does. What has no device path
// yet (tensor parallelism) is refused on every rank with one clear message.
#define PTRAIN_MPI_SUITE "device_ranks_mpi"
#include "tests/launch/parallel_mpi_fixture.h"

#include "core/cuda/device.h"

namespace {

bool have_device() { return cuda::device_count() > 0; }

TEST_F(ParallelEquivalence, DeviceLayoutsMatchTheCpu) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  check_layouts("llama", 2,
                {{"device_pp2_1f1b", 2, {"device=cuda", "parallel.pp=2", "parallel.schedule=1f1b"}},
                 {"device_pp4_zb", 4, {"device=cuda", "parallel.pp=4", "parallel.schedule=zero-bubble"}},
                 {"device_pp2_interleaved", 2,
                  {"device=cuda", "parallel.pp=2", "parallel.schedule=interleaved", "parallel.virtual_stages=2"}},
                 {"device_dp2", 2, {"device=cuda", "parallel.dp=2"}},
                 {"device_dp2_pp2_recompute", 4, {"device=cuda", "parallel.dp=2", "parallel.pp=2", "train.recompute=full"}},
                 {"device_dp2_offload", 2,
                  {"device=cuda", "parallel.dp=2", "train.offload.optimizer=true", "train.offload.activations=true"}}},
                reference, run, expect_match);
  // gpt2 ties its embeddings: the first stage's table and the last stage's replica sum their
  // gradients over the embed group (a device all-reduce)
  check_layouts("gpt2", 4, {{"device_pp2_tied", 2, {"device=cuda", "parallel.pp=2"}}}, reference, run, expect_match);
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
