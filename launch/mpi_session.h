// launch/mpi_session.h — MPI's lifetime for the `ptrain` program (only launch/ starts MPI).
//
// A process started by mpirun (Open MPI sets OMPI_COMM_WORLD_SIZE; PMIx/PMI launchers
// PMIX_RANK/PMI_RANK) initialises MPI; a plain `ptrain` run does not, and trains as one rank
// without touching MPI at all. Errors: MPI_COMM_WORLD returns errors (MPI_CHECK throws);
// abort() ends every rank of the job at once, so no peer waits forever in a collective.
#pragma once
#include <memory>

#include "parallel/comm.h"

namespace ptrain::launch {

class MpiSession {
 public:
  /// Initialises MPI when this process was started by an MPI launcher.
  MpiSession();
  /// MPI_Finalize (when initialised and not aborted).
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  bool active() const { return active_; }
  int rank() const { return rank_; }
  int size() const { return size_; }
  /// A communicator over every rank of the job (a duplicate of MPI_COMM_WORLD); nullptr when
  /// not under MPI. The caller owns it.
  std::unique_ptr<parallel::Communicator> world() const;
  /// Ends the whole job with `code` (MPI_Abort on MPI_COMM_WORLD).
  [[noreturn]] void abort(int code) const;

 private:
  bool active_ = false;
  int rank_ = 0, size_ = 1;
};

}  // namespace ptrain::launch
