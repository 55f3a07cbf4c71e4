// parallel/selftest.h — the communicator self-test (parallel.selftest, on by default) and the
// measurements of `ptrain commcheck`: every collective ptrain uses, and a ring of sends, on a
// group, with a known pattern, checked bit for bit on every rank.
//
// Why: GeForce cards on PCIe can advertise peer access that hangs a collective or returns
// wrong data (nccl-tests issue 117: all-reduce hangs on RTX 4090s, a device-to-device copy
// returned zeros); a run must find that out in its first seconds, not as a loss curve that
// drifts a day later.
//
// The pattern: element k of rank r is ((r + 1) * 131 + 7 k) mod 251 - 125, an integer, so every
// sum over ranks is exact in f32 and the expected result of each collective is known exactly.
// Checked, in this order: all_reduce (sum, max), all_reduce_async (sum), all_gather,
// reduce_scatter, broadcast (from rank 0 and from the last rank), and a ring of isend / irecv
// (rank r sends to r + 1) with a deadline.
//
// Invariants:
//  * Collective over the group: every rank calls it, and every rank learns the same verdict
//    (an all-reduce of the failing ranks after each check); the failing ranks' reports are
//    gathered to group rank 0, whose message names them.
//  * A message that does not arrive within timeout_s is a failure naming the sender and the
//    receiver (the pending request is abandoned, never waited for).
//  * The tensors live on `dev`: a device run tests the path its tensors take.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "parallel/comm.h"

namespace ptrain::parallel {

struct CollectiveCheck {
  std::string collective;  ///< "all_reduce(sum)", "all_gather", "ring isend/irecv", ...
  int64_t bytes = 0;       ///< bytes of one rank's buffer (the nccl-tests "size")
  double seconds = 0;      ///< mean time of one call (over `iters`), slowest rank
  bool ok = true;          ///< identical on every rank
  std::string detail;      ///< on group rank 0: what went wrong, naming the ranks ("" when ok)
  /// Bus bandwidth in GB/s (nccl-tests' definitions: all-reduce 2(P-1)/P of the size per call,
  /// all-gather and reduce-scatter (P-1)/P of the gathered size, broadcast and a ring send 1x).
  double bus_gbps(int group_size) const;
  double alg_gbps() const { return seconds > 0 ? static_cast<double>(bytes) / seconds / 1e9 : 0; }
};

/// Runs every check on `c` with `elements` f32 elements per rank on `dev`, each `iters` times
/// (timed after one untimed call). Collective over c; results identical on every rank except
/// `detail`, which group rank 0 holds for all ranks.
std::vector<CollectiveCheck> check_collectives(Communicator& c, Device dev, int64_t elements, int iters,
                                               double timeout_s);

/// The start-up self-test: check_collectives with a small buffer; on any failure throws
/// UserError on every rank (group rank 0's message names the collective, the ranks and what to
/// change). A group of size 1 passes at once.
void self_test(Communicator& c, Device dev, double timeout_s = 30.0);

}  // namespace ptrain::parallel
