// launch/mpi_session.cpp — see mpi_session.h.
#include "launch/mpi_session.h"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>

#include "core/error.h"
#include "parallel/mpi_comm.h"

namespace ptrain::launch {

namespace {
bool launched_by_mpi() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMIX_RANK") || std::getenv("PMI_RANK");
}
}  // namespace

MpiSession::MpiSession() {
  if (!launched_by_mpi()) return;
  int provided = 0;
  if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
    throw Error("MPI_Init_thread failed. HINT: check the Open MPI installation (mpirun --version)");
  active_ = true;
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  error_rank() = size_ > 1 ? rank_ : -1;
}

MpiSession::~MpiSession() {
  if (active_) MPI_Finalize();
}

std::unique_ptr<parallel::Communicator> MpiSession::world() const {
  if (!active_) return nullptr;
  MPI_Comm dup;
  if (MPI_Comm_dup(MPI_COMM_WORLD, &dup) != MPI_SUCCESS) throw Error("MPI_Comm_dup(MPI_COMM_WORLD) failed");
  return parallel::make_mpi_communicator(dup, "world");
}

void MpiSession::abort(int code) const {
  std::fflush(stdout);
  std::fflush(stderr);
  if (active_) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

}  // namespace ptrain::launch
