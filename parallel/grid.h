// parallel/grid.h — the process grid: world = DP x PP x TP, TP innermost.
//
// World rank r has coordinates tp = r % TP, pp = (r / TP) % PP, dp = r / (TP * PP): the
// ranks of one tensor-parallel group are adjacent (on one PCIe switch when it matters),
// then pipeline, then data parallel (Megatron's order). The grid is built once, from the
// communicator it is given (never an implicit MPI_COMM_WORLD), and passed by reference to
// layers, optimizer and schedules; no globals.
//
// Groups:
//   tp()    ranks with the same (dp, pp)            — tensor-parallel collectives
//   pp()    ranks with the same (dp, tp)            — pipeline send/recv (rank = stage)
//   dp()    ranks with the same (pp, tp)            — gradient all-reduce, ZeRO-1 shards
//   embed() the first and last stage of one (dp, tp) — tied embedding gradients
//           (size 1 when pp = 1: both are the same rank)
//   world() everyone
#pragma once
#include <memory>

#include "parallel/comm.h"

namespace ptrain::parallel {

struct GridShape {
  int dp = 1, pp = 1, tp = 1;
  int world() const { return dp * pp * tp; }
};

struct GridCoord {
  int dp = 0, pp = 0, tp = 0;
};

class Grid {
 public:
  /// Takes the world group and builds every subgroup from it (a collective over `world`).
  Grid(std::unique_ptr<Communicator> world, GridShape shape);
  /// A grid of one rank (every group has size 1).
  static std::unique_ptr<Grid> single();
  ~Grid();

  const GridShape& shape() const { return shape_; }
  const GridCoord& coord() const { return coord_; }
  Communicator& world() { return *world_; }
  Communicator& tp() { return *tp_; }
  Communicator& pp() { return *pp_; }
  Communicator& dp() { return *dp_; }
  Communicator& embed() { return *embed_; }
  bool first_stage() const { return coord_.pp == 0; }
  bool last_stage() const { return coord_.pp == shape_.pp - 1; }
  /// Wraps every group with `wrap` (the watchdog of parallel/watchdog.h). No group can be split
  /// afterwards (splits need the MPI communicator itself).
  template <class Wrap>
  void wrap_groups(Wrap&& wrap) {
    for (auto* g : {&world_, &tp_, &pp_, &dp_, &embed_}) *g = wrap(std::move(*g));
  }
  /// World rank of the rank at `c`.
  int world_rank_of(const GridCoord& c) const { return (c.dp * shape_.pp + c.pp) * shape_.tp + c.tp; }

 private:
  Grid() = default;
  GridShape shape_;
  GridCoord coord_;
  std::unique_ptr<Communicator> world_, tp_, pp_, dp_, embed_;
};

}  // namespace ptrain::parallel
