// tests/parallel/mpi_test_util.h — helpers shared by the multi-rank tests.
#pragma once
#include <gtest/gtest.h>
#include <mpi.h>

#include <vector>

#include "parallel/comm.h"

namespace ptrain::parallel::testing {

inline int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
inline int world_size() {
  int s = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

/// World ranks of the members of `c`, in group-rank order (an all_gather over `c`).
inline std::vector<int> members_of(Communicator& c) {
  Tensor mine = Tensor::from_vector_i32({world_rank()}, {1});
  Tensor all = Tensor::zeros({c.size()}, DType::i32);
  c.all_gather(mine, all);
  return {all.data<int32_t>(), all.data<int32_t>() + c.size()};
}

}  // namespace ptrain::parallel::testing
