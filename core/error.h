// core/error.h — errors and check macros.
//
// Library code never exits: it throws ptrain::Error (with file, line and, once
// MPI is up, the rank). Only launch/ turns errors into exit codes. A message
// may end with a "HINT: ..." line telling the user what to do (as llm.c does).
// ptrain::UserError marks bad input (config, data, checkpoint, command line):
// launch/ prints it as one line and exits with status 2.
#pragma once
#include <fmt/format.h>
#include <stdexcept>
#include <string>

namespace ptrain {

/// Rank shown in error messages (set once by launch/ after MPI_Init; -1 = single process).
int& error_rank();

/// An internal or runtime failure: a bug, an I/O error, an MPI/CUDA failure.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

/// Bad input from the user: the message names what is wrong and what to do.
class UserError : public Error {
 public:
  explicit UserError(const std::string& what) : Error(what) {}
};

namespace detail {
[[noreturn]] void throw_check(const char* file, int line, const char* cond, const std::string& msg);
}  // namespace detail

}  // namespace ptrain

/// PT_CHECK(cond, fmt, args...): throws ptrain::Error "file:line [rank r]: message (cond)".
#define PT_CHECK(cond, ...)                                                              \
  do {                                                                                    \
    if (!(cond)) [[unlikely]]                                                             \
      ::ptrain::detail::throw_check(__FILE__, __LINE__, #cond, ::fmt::format(__VA_ARGS__)); \
  } while (0)

/// PT_USER_CHECK(cond, fmt, args...): throws ptrain::UserError with just the message.
#define PT_USER_CHECK(cond, ...)                                        \
  do {                                                                  \
    if (!(cond)) [[unlikely]]                                           \
      throw ::ptrain::UserError(::fmt::format(__VA_ARGS__));            \
  } while (0)

/// H5_CHECK(expr): an HDF5 call returning a negative value/hid is an error.
#define H5_CHECK(expr)                                                         \
  ([&]() {                                                                     \
    auto h5_check_result__ = (expr);                                           \
    if (h5_check_result__ < 0) [[unlikely]]                                    \
      ::ptrain::detail::throw_check(__FILE__, __LINE__, #expr, "HDF5 call failed"); \
    return h5_check_result__;                                                  \
  }())
