// parallel/mpi_check.h — MPI_CHECK: every MPI call in ptrain goes through it.
//
// Needs MPI_ERRORS_RETURN on the communicator (make_mpi_communicator sets it; the MPI test
// main and launch/ set it on MPI_COMM_WORLD), otherwise MPI aborts before we can throw.
#pragma once
#include <mpi.h>

#include <string_view>

namespace ptrain::parallel::detail {
/// Throws ptrain::Error "file:line [rank r]: MPI error on group '<group>': <MPI_Error_string> (<call>)".
[[noreturn]] void throw_mpi_error(const char* file, int line, const char* call, int rc, std::string_view group);
}  // namespace ptrain::parallel::detail

/// MPI_CHECK(group, call): `group` names the communicator (its name(), e.g. "tp") for the message.
#define MPI_CHECK(group, call)                                                            \
  do {                                                                                    \
    const int mpi_check_rc__ = (call);                                                    \
    if (mpi_check_rc__ != MPI_SUCCESS) [[unlikely]]                                       \
      ::ptrain::parallel::detail::throw_mpi_error(__FILE__, __LINE__, #call, mpi_check_rc__, (group)); \
  } while (0)
