// core/error.cpp — the check-macro failure path.
#include "core/error.h"

namespace ptrain {

int& error_rank() {
  static int rank = -1;
  return rank;
}

namespace detail {
void throw_check(const char* file, int line, const char* cond, const std::string& msg) {
  std::string where = error_rank() >= 0 ? fmt::format("{}:{} [rank {}]", file, line, error_rank())
                                        : fmt::format("{}:{}", file, line);
  throw Error(fmt::format("{}: {} (check failed: {})", where, msg, cond));
}
}  // namespace detail

}  // namespace ptrain
