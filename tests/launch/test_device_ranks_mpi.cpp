// tests/launch/test_device_ranks_mpi.cpp — multi-rank training with device tensors (label mpi,
// `mpirun -np 4`; fixture: parallel_mpi_fixture.h). Each rank trains on its own device (in CI
// the emulated device, one per process); activations, gradients and losses cross ranks through
// the MPI communicator, staged through host memory (parallel/mpi_comm.cpp), and the data-
// parallel reducer packs device gradients from host copies. Every layout below matches the
// single-rank CPU run within 1e-5 relative at every one of 20 fp32 steps (loss, pre-clip
// gradient norm, validation loss), as the single-rank device run does. Here the pipeline
// layouts; data parallelism: test_device_dp_mpi.cpp; checkpoints, the plan and the refusals:
// test_device_checkpoint_mpi.cpp.
#define PTRAIN_MPI_SUITE "device_ranks_mpi"
#include "tests/launch/parallel_mpi_fixture.h"

namespace {

TEST_F(ParallelEquivalence, DevicePipelineLayoutsMatchTheCpu) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  check_layouts("llama", 2,
                {{"device_pp2_1f1b", 2, {"device=cuda", "parallel.pp=2", "parallel.schedule=1f1b"}},
                 {"device_pp4_zb", 4, {"device=cuda", "parallel.pp=4", "parallel.schedule=zero-bubble"}},
                 {"device_pp2_interleaved", 2,
                  {"device=cuda", "parallel.pp=2", "parallel.schedule=interleaved", "parallel.virtual_stages=2"}},
                 {"device_dp2_pp2_recompute", 4, {"device=cuda", "parallel.dp=2", "parallel.pp=2", "train.recompute=full"}}},
                reference, run, expect_match);
  // gpt2 ties its embeddings: the first stage's table and the last stage's replica sum their
  // gradients over the embed group (a device all-reduce)
  check_layouts("gpt2", 4, {{"device_pp2_tied", 2, {"device=cuda", "parallel.pp=2"}}}, reference, run, expect_match);
}

// bf16 across ranks: the device pipeline rounds where the CPU pipeline rounds (activations and
// gradients cross ranks as bf16 values, reduced in fp32 and rounded once), so dp2 x pp2 in
// bf16 on the device equals dp2 x pp2 in bf16 on CPU ranks bit for bit at every step, as one
// device rank equals one CPU rank in bf16.
TEST_F(ParallelEquivalence, DeviceBf16PipelineMatchesTheCpuPipeline) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  const std::vector<std::string> bf16 = {"train.precision=bf16", "parallel.pp=2", "parallel.dp=2"};
  std::vector<std::string> dev = bf16;
  dev.push_back("device=cuda");
  const fs::path cpu = run("bf16_cpu_dp2_pp2", "llama", 2, 4, bf16);
  const fs::path gpu = run("bf16_device_dp2_pp2", "llama", 2, 4, dev);
  expect_match(cpu, gpu, "bf16 dp2 x pp2: device against CPU ranks", 1, 0.0);
}

}  // namespace
