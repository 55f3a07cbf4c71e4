// tests/parallel/test_grid_mpi.cpp — the DP x PP x TP grid on 4 ranks.
//
// For every shape whose product is 4: coordinates (TP innermost), group sizes, group ranks
// and memberships (an all_gather of world ranks inside each group), the embed group
// (first + last stage), and that each group's collectives stay inside it.
#include <gtest/gtest.h>

#include <numeric>
#include <ostream>

#include "parallel/grid.h"
#include "parallel/mpi_comm.h"
#include "tests/parallel/mpi_test_util.h"

using namespace ptrain;
using namespace ptrain::parallel;
using ptrain::parallel::testing::members_of;
using ptrain::parallel::testing::world_rank;

namespace ptrain::parallel {
void PrintTo(const GridShape& s, std::ostream* os) { *os << s.dp << "x" << s.pp << "x" << s.tp; }
}  // namespace ptrain::parallel

namespace {

std::unique_ptr<Communicator> world() { return make_mpi_communicator(MPI_COMM_WORLD, "world"); }

/// World rank of (dp, pp, tp), written out independently of Grid.
int rank_at(const GridShape& s, int dp, int pp, int tp) {
  int r = 0;
  for (int d = 0; d < s.dp; ++d)
    for (int p = 0; p < s.pp; ++p)
      for (int t = 0; t < s.tp; ++t, ++r)
        if (d == dp && p == pp && t == tp) return r;
  return -1;
}

class GridShapes : public ::testing::TestWithParam<GridShape> {};

}  // namespace

TEST_P(GridShapes, CoordinatesAndGroups) {
  const GridShape s = GetParam();
  Grid g(world(), s);
  const int me = world_rank();
  const GridCoord c = g.coord();
  SCOPED_TRACE(::testing::Message() << "dp " << s.dp << " pp " << s.pp << " tp " << s.tp << " rank " << me);

  EXPECT_EQ(rank_at(s, c.dp, c.pp, c.tp), me);
  EXPECT_EQ(g.world_rank_of(c), me);
  EXPECT_EQ(g.world().size(), 4);
  EXPECT_EQ(g.first_stage(), c.pp == 0);
  EXPECT_EQ(g.last_stage(), c.pp == s.pp - 1);

  std::vector<int> tp, pp, dp, embed;
  for (int t = 0; t < s.tp; ++t) tp.push_back(rank_at(s, c.dp, c.pp, t));
  for (int p = 0; p < s.pp; ++p) pp.push_back(rank_at(s, c.dp, p, c.tp));
  for (int d = 0; d < s.dp; ++d) dp.push_back(rank_at(s, d, c.pp, c.tp));
  if (s.pp > 1 && (c.pp == 0 || c.pp == s.pp - 1))
    embed = {rank_at(s, c.dp, 0, c.tp), rank_at(s, c.dp, s.pp - 1, c.tp)};
  else
    embed = {me};

  struct G {
    Communicator& c;
    const char* name;
    const std::vector<int>& want;
  };
  for (const G& x : {G{g.tp(), "tp", tp}, G{g.pp(), "pp", pp}, G{g.dp(), "dp", dp}, G{g.embed(), "embed", embed}}) {
    SCOPED_TRACE(x.name);
    EXPECT_EQ(x.c.name(), x.name);
    ASSERT_EQ(x.c.size(), int(x.want.size()));
    EXPECT_EQ(members_of(x.c), x.want);
    // a reduction stays inside the group
    std::vector<double> v{double(me)};
    x.c.all_reduce(std::span<double>(v));
    EXPECT_EQ(v[0], std::accumulate(x.want.begin(), x.want.end(), 0.0));
  }
  EXPECT_EQ(g.tp().rank(), c.tp);
  EXPECT_EQ(g.pp().rank(), c.pp);
  EXPECT_EQ(g.dp().rank(), c.dp);
  if (g.embed().size() == 2) {
    EXPECT_EQ(g.embed().rank(), g.first_stage() ? 0 : 1);
  }

  // Pipeline neighbours exchange over pp by stage number.
  if (s.pp > 1) {
    Tensor act = Tensor::full({2, 3}, double(me), DType::bf16), in = Tensor::zeros({2, 3}, DType::bf16);
    std::unique_ptr<Request> sent;
    if (!g.last_stage()) sent = g.pp().isend(act, c.pp + 1, 0);
    if (!g.first_stage()) {
      g.pp().recv(in, c.pp - 1, 0);
      EXPECT_EQ(in.to_double_vector(), std::vector<double>(6, double(rank_at(s, c.dp, c.pp - 1, c.tp))));
    }
    if (sent) sent->wait();
  }
  g.world().barrier();
}

INSTANTIATE_TEST_SUITE_P(Shapes, GridShapes,
                         ::testing::Values(GridShape{4, 1, 1}, GridShape{1, 4, 1}, GridShape{1, 1, 4},
                                           GridShape{2, 2, 1}, GridShape{1, 2, 2}, GridShape{2, 1, 2}),
                         [](const ::testing::TestParamInfo<GridShape>& i) {
                           return "dp" + std::to_string(i.param.dp) + "pp" + std::to_string(i.param.pp) + "tp" +
                                  std::to_string(i.param.tp);
                         });

TEST(Grid, ExplicitCoordinatesFor1x2x2) {
  // rank: (dp, pp, tp) = 0: (0,0,0) 1: (0,0,1) 2: (0,1,0) 3: (0,1,1)
  Grid g(world(), {1, 2, 2});
  const int want_pp[] = {0, 0, 1, 1}, want_tp[] = {0, 1, 0, 1};
  EXPECT_EQ(g.coord().dp, 0);
  EXPECT_EQ(g.coord().pp, want_pp[world_rank()]);
  EXPECT_EQ(g.coord().tp, want_tp[world_rank()]);
  const std::vector<int> embed_want[] = {{0, 2}, {1, 3}, {0, 2}, {1, 3}};
  EXPECT_EQ(members_of(g.embed()), embed_want[world_rank()]);
}

TEST(Grid, ShapeMustMatchWorldSize) {
  for (GridShape s : {GridShape{3, 1, 1}, GridShape{2, 2, 2}, GridShape{1, 1, 1}}) {
    try {
      Grid g(world(), s);
      ADD_FAILURE() << "no error for " << s.dp << "x" << s.pp << "x" << s.tp;
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("world size 4"), std::string::npos) << m;
      EXPECT_NE(m.find(fmt::format("{} * {} * {} = {}", s.dp, s.pp, s.tp, s.world())), std::string::npos) << m;
    }
  }
  EXPECT_THROW(Grid(world(), GridShape{0, 4, 1}), Error);
  // Nothing collective happened: the world is still usable.
  auto w = world();
  w->barrier();
}

TEST(Grid, Single) {
  auto g = Grid::single();
  EXPECT_EQ(g->world().size(), 1);
  for (Communicator* c : {&g->world(), &g->tp(), &g->pp(), &g->dp(), &g->embed()}) {
    EXPECT_EQ(c->size(), 1);
    EXPECT_EQ(c->rank(), 0);
    EXPECT_EQ(mpi_handle(*c), MPI_COMM_NULL);
  }
  EXPECT_EQ(g->tp().name(), "tp");
  EXPECT_EQ(g->embed().name(), "embed");
  EXPECT_TRUE(g->first_stage());
  EXPECT_TRUE(g->last_stage());
  EXPECT_EQ(g->world_rank_of(g->coord()), 0);
}

TEST(Grid, FromSelfWorld) {
  // A grid over a self communicator (one process without mpirun) builds self subgroups.
  Grid g(make_self_communicator("world"), GridShape{});
  EXPECT_EQ(g.tp().size(), 1);
  EXPECT_EQ(g.embed().size(), 1);
  EXPECT_EQ(mpi_handle(g.pp()), MPI_COMM_NULL);
}
