// tests/parallel/mpi_test_main.cpp — GoogleTest main for tests run under mpirun.
//
// Every rank runs every test; only world rank 0 prints gtest's usual report (the others
// print only their failures, prefixed with the rank). After the tests
// the per-rank results are combined (MPI_Allreduce), so every rank exits non-zero when any
// rank failed and rank 0 names the failing ranks. MPI errors return (MPI_ERRORS_RETURN)
// instead of aborting, so MPI_CHECK turns them into ptrain::Error inside a test.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>
#include <string>
#include <vector>

#include "core/error.h"

namespace {
// Replaces gtest's printer on ranks other than 0: prints only failures, prefixed with the rank.
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (r.failed())
      std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?",
                   r.line_number(), r.message());
  }
  void OnTestEnd(const ::testing::TestInfo& t) override {
    if (t.result()->Failed())
      std::fprintf(stderr, "[rank %d] [  FAILED  ] %s.%s\n", rank_, t.test_suite_name(), t.name());
  }

 private:
  int rank_;
};
}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  if (MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
    std::fprintf(stderr, "mpi_test_main: MPI_Init_thread failed\n");
    return 1;
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  ptrain::error_rank() = rank;

  ::testing::InitGoogleTest(&argc, argv);
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailurePrinter(rank));
  }
  int rc = RUN_ALL_TESTS();

  // Which ranks failed: a flag per rank, summed over ranks.
  std::vector<int> failed(static_cast<size_t>(size), 0), all(static_cast<size_t>(size), 0);
  failed[static_cast<size_t>(rank)] = rc != 0 ? 1 : 0;
  int any = 0;
  if (MPI_Allreduce(failed.data(), all.data(), size, MPI_INT, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS) {
    std::fprintf(stderr, "mpi_test_main [rank %d]: MPI_Allreduce of results failed\n", rank);
    any = 1;
  }
  std::string names;
  for (int r = 0; r < size; ++r)
    if (all[static_cast<size_t>(r)]) {
      any = 1;
      if (!names.empty()) names.push_back(' ');
      names.append(std::to_string(r));
    }
  if (rank == 0) {
    if (any)
      std::printf("[  MPI     ] FAILED on %s: %s of %d ranks\n", names.size() > 1 ? "ranks" : "rank",
                  names.c_str(), size);
    else
      std::printf("[  MPI     ] PASSED on all %d ranks\n", size);
    std::fflush(stdout);
  }
  MPI_Finalize();
  return any ? 1 : 0;
}
