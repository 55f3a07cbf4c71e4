// parallel/mpi_comm.h — the MPI implementation of Communicator (host buffers).
//
// MPI itself is started by launch/ (MpiSession); library code only wraps communicators
// it is given. Every MPI call goes through MPI_CHECK, which throws ptrain::Error with the
// MPI error string, the group name and the rank. Communicators are created with
// MPI_ERRORS_RETURN so a failure surfaces as an exception rather than an abort.
//
// Behaviour worth knowing (see mpi_comm.cpp):
//  * Host tensors only (a device tensor is an Error until the CUDA staging path exists).
//  * Point-to-point messages travel as raw bytes; recv probes first, so a size mismatch
//    throws an Error naming src, tag, expected and received bytes, and the message is
//    consumed (nothing is left unmatched). irecv reports a mismatch from wait()/test().
//  * A Request holds a handle to its tensor. Destroying an incomplete Request waits for
//    it, except during stack unwinding, where it is cancelled/freed without blocking.
//  * MPI_CHECK(group, call) lives in parallel/mpi_check.h (included here).
#pragma once
#include <mpi.h>

#include <memory>
#include <string>

#include "parallel/comm.h"
#include "parallel/mpi_check.h"

namespace ptrain::parallel {

/// Wraps `comm` (takes ownership: MPI_Comm_free on destruction unless it is MPI_COMM_WORLD
/// or MPI_COMM_SELF).
std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm comm, const std::string& name);
/// Splits an MPI communicator (a collective over it): ranks with the same color form a group,
/// ordered by key. Used by Grid; exposed for tests that carve sub-worlds out of one mpirun.
std::unique_ptr<Communicator> split_communicator(Communicator& parent, int color, int key, const std::string& name);
/// The MPI_Comm behind a communicator made here (MPI_COMM_NULL for others).
MPI_Comm mpi_handle(const Communicator& c);

}  // namespace ptrain::parallel
