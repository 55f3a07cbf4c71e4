// tests/launch/test_device_dp_mpi.cpp — data parallelism with device tensors (label mpi,
// `mpirun -np 4`; fixture: parallel_mpi_fixture.h; pipelines: test_device_ranks_mpi.cpp): the
// bucketed reducer over device gradients (packed from host copies), ZeRO-1 (each rank updates
// its range of the masters, gathered through the host), with both offloads (dp x pp with
// recompute: test_device_ranks_mpi.cpp);
// each matches the single-rank CPU run within 1e-5 relative at every one of 20 fp32 steps.
#define PTRAIN_MPI_SUITE "device_dp_mpi"
#include "tests/launch/parallel_mpi_fixture.h"

namespace {

TEST_F(ParallelEquivalence, DeviceDataParallelLayoutsMatchTheCpu) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  check_layouts("llama", 2,
                {{"device_dp2", 2, {"device=cuda", "parallel.dp=2"}},
                 {"device_dp2_zero1", 2, {"device=cuda", "parallel.dp=2", "optim.zero=1"}},
                 {"device_dp2_zero1_offload", 2,
                  {"device=cuda", "parallel.dp=2", "optim.zero=1", "train.offload.optimizer=true"}},
                 {"device_dp2_offload", 2,
                  {"device=cuda", "parallel.dp=2", "train.offload.optimizer=true", "train.offload.activations=true"}}},
                reference, run, expect_match);
}

}  // namespace
