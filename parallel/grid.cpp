// parallel/grid.cpp — builds the DP x PP x TP process grid from a world communicator.
//
// Every subgroup is one split of the world (a collective): all ranks make the same splits
// in the same order (tp, pp, dp, embed). Colors and keys:
//   tp:    color (dp, pp),  key tp
//   pp:    color (dp, tp),  key pp
//   dp:    color (pp, tp),  key dp
//   embed: color (dp, tp) for the first and last stage (key pp: first stage is rank 0);
//          middle stages each get a group of their own (size 1).
#include "parallel/grid.h"

#include "parallel/mpi_comm.h"

namespace ptrain::parallel {

Grid::Grid(std::unique_ptr<Communicator> world, GridShape shape) : shape_(shape), world_(std::move(world)) {
  PT_CHECK(world_, "Grid: no world communicator");
  PT_CHECK(shape.dp >= 1 && shape.pp >= 1 && shape.tp >= 1, "Grid: dp = {}, pp = {}, tp = {} must all be >= 1",
           shape.dp, shape.pp, shape.tp);
  PT_CHECK(world_->size() == shape.world(),
           "Grid: world size {} != dp * pp * tp = {} * {} * {} = {}\n"
           "HINT: launch dp * pp * tp ranks (mpirun -np {}) or change parallel.dp/pp/tp",
           world_->size(), shape.dp, shape.pp, shape.tp, shape.world(), shape.world());
  const int r = world_->rank();
  coord_.tp = r % shape.tp;
  coord_.pp = (r / shape.tp) % shape.pp;
  coord_.dp = r / (shape.tp * shape.pp);
  const GridCoord c = coord_;
  tp_ = split_communicator(*world_, c.dp * shape.pp + c.pp, c.tp, "tp");
  pp_ = split_communicator(*world_, c.dp * shape.tp + c.tp, c.pp, "pp");
  dp_ = split_communicator(*world_, c.pp * shape.tp + c.tp, c.dp, "dp");
  const bool ends = c.pp == 0 || c.pp == shape.pp - 1;
  const int pairs = shape.dp * shape.tp;
  const int embed_color = ends ? c.dp * shape.tp + c.tp : pairs + r;  // middle stages: alone
  embed_ = split_communicator(*world_, embed_color, c.pp, "embed");
}

Grid::~Grid() = default;

std::unique_ptr<Grid> Grid::single() {
  std::unique_ptr<Grid> g(new Grid());
  g->world_ = make_self_communicator("world");
  g->tp_ = make_self_communicator("tp");
  g->pp_ = make_self_communicator("pp");
  g->dp_ = make_self_communicator("dp");
  g->embed_ = make_self_communicator("embed");
  return g;
}

}  // namespace ptrain::parallel
