// tests/parallel/test_schedule.cpp — pipeline schedules as action lists (no MPI).
//
// For every schedule and (pp, M, v) in a grid: each list holds every F, B (and W when
// backward is split) exactly once, in the order F < B < W per (chunk, micro); all ranks'
// lists run to completion in a global simulation (in-order, blocking receives); the
// activation bound of 1F1B / zero-bubble holds; the simulated bubbles equal the textbook
// values where one exists and zero-bubble / interleaved beat 1F1B; illegal specs throw.
#include <gtest/gtest.h>

#include <map>
#include <tuple>

#include "parallel/schedule.h"
#include "parallel/timeline.h"
#include "tests/parallel/numeric_stage.h"

using namespace ptrain;
using namespace ptrain::parallel;

namespace {

const ScheduleKind kAll[] = {ScheduleKind::gpipe, ScheduleKind::one_f_one_b, ScheduleKind::interleaved,
                             ScheduleKind::zero_bubble};

bool legal(ScheduleKind k, int pp, int M, int v) {
  if (v > 1 && k != ScheduleKind::interleaved) return false;
  if (k == ScheduleKind::interleaved && M % pp != 0) return false;
  return true;
}

std::string spec_str(const ScheduleSpec& s) {
  return fmt::format("{} pp={} M={} v={}", schedule_name(s.kind), s.pp, s.micro_batches, s.virtual_stages);
}

// Largest number of micro-batches (per chunk) between their F and their B on one rank.
int peak_in_flight(const std::vector<Action>& list) {
  int cur = 0, peak = 0;
  for (const Action& a : list) {
    if (a.kind == Action::F) peak = std::max(peak, ++cur);
    if (a.kind == Action::B) --cur;
  }
  return peak;
}

int peak_pending_w(const std::vector<Action>& list) {
  int cur = 0, peak = 0;
  for (const Action& a : list) {
    if (a.kind == Action::B) peak = std::max(peak, ++cur);
    if (a.kind == Action::W) --cur;
  }
  return peak;
}

}  // namespace

TEST(Schedule, EveryActionOnceInOrderAndNoDeadlock) {
  int checked = 0;
  for (ScheduleKind k : kAll)
    for (int pp = 1; pp <= 4; ++pp)
      for (int M = 1; M <= 9; ++M)
        for (int v = 1; v <= 3; ++v) {
          if (!legal(k, pp, M, v)) continue;
          const ScheduleSpec s{k, pp, M, v};
          SCOPED_TRACE(spec_str(s));
          const bool split = splits_backward(k);
          std::vector<std::vector<Action>> lists;
          for (int r = 0; r < pp; ++r) {
            const std::vector<Action> list = make_schedule(s, r);
            // position of each (kind, chunk, micro)
            std::map<std::tuple<int, int, int>, int> pos;
            for (int i = 0; i < static_cast<int>(list.size()); ++i) {
              const Action& a = list[i];
              ASSERT_TRUE(a.micro >= 0 && a.micro < M && a.chunk >= 0 && a.chunk < v);
              ASSERT_TRUE(pos.emplace(std::make_tuple(int(a.kind), a.chunk, a.micro), i).second)
                  << "rank " << r << ": duplicate in " << to_string(list, v);
            }
            ASSERT_EQ(list.size(), static_cast<size_t>(M * v * (split ? 3 : 2))) << "rank " << r;
            for (int c = 0; c < v; ++c)
              for (int m = 0; m < M; ++m) {
                const int f = pos.at({Action::F, c, m}), b = pos.at({Action::B, c, m});
                EXPECT_LT(f, b) << "rank " << r << " chunk " << c << " micro " << m;
                if (split) {
                  EXPECT_LT(b, pos.at({Action::W, c, m})) << "rank " << r << " micro " << m;
                }
              }
            if (!split) {
              for (const Action& a : list) EXPECT_NE(a.kind, Action::W);
            }
            if (k == ScheduleKind::one_f_one_b || k == ScheduleKind::zero_bubble) {
              EXPECT_LE(peak_in_flight(list), pp - r) << "rank " << r << ": " << to_string(list);
            }
            if (k == ScheduleKind::zero_bubble) {
              EXPECT_LE(peak_pending_w(list), pp) << "rank " << r << ": " << to_string(list);
            }
            lists.push_back(list);
          }
          EXPECT_EQ(lists, make_all_schedules(s));
          // The global simulation throws on a deadlock.
          const PipelineSimulation sim = simulate_schedule(s, lists);
          EXPECT_GT(sim.makespan, 0);
          ++checked;
        }
  EXPECT_GT(checked, 150);
}

// A wider grid, simulation only: no deadlock, activation bounds hold.
TEST(Schedule, WideGridRunsToCompletion) {
  for (ScheduleKind k : kAll)
    for (int pp = 1; pp <= 8; ++pp)
      for (int M = 1; M <= 32; ++M)
        for (int v = 1; v <= 4; ++v) {
          if (!legal(k, pp, M, v)) continue;
          const ScheduleSpec s{k, pp, M, v};
          const auto lists = make_all_schedules(s);
          ASSERT_NO_THROW(simulate_schedule(s, lists, 1.0, 1.3, 0.6)) << spec_str(s);
          for (int r = 0; r < pp; ++r) {
            if (k == ScheduleKind::one_f_one_b || k == ScheduleKind::zero_bubble) {
              ASSERT_LE(peak_in_flight(lists[r]), pp - r) << spec_str(s);
            }
            if (k == ScheduleKind::zero_bubble) {
              ASSERT_LE(peak_pending_w(lists[r]), pp) << spec_str(s);
            }
          }
        }
}

TEST(Schedule, OneFOneBAndGpipeBubbleIsTextbook) {
  for (ScheduleKind k : {ScheduleKind::gpipe, ScheduleKind::one_f_one_b})
    for (int pp = 1; pp <= 6; ++pp)
      for (int M = 1; M <= 12; ++M) {
        const ScheduleSpec s{k, pp, M, 1};
        const double want = double(pp - 1) / (M + pp - 1);
        EXPECT_NEAR(simulated_bubble(s), want, 1e-12) << spec_str(s);
        EXPECT_NEAR(simulated_bubble(s, 1.0, 2.0, 0.0), want, 1e-12) << spec_str(s);  // any f, b, w
        EXPECT_NEAR(simulated_bubble(s, 0.7, 1.1, 0.3), want, 1e-12) << spec_str(s);
        EXPECT_NEAR(theoretical_bubble(s), want, 1e-12) << spec_str(s);
      }
}

TEST(Schedule, ZeroBubbleIsAThirdOfOneFOneB) {
  for (int pp = 2; pp <= 8; ++pp)
    for (int M = pp; M <= 24; ++M) {
      const ScheduleSpec zb{ScheduleKind::zero_bubble, pp, M, 1};
      // Step time M(f+b+w) + (pp-1)(f+b-w) with f = b = w = 1.
      const PipelineSimulation sim = simulate_schedule(zb, make_all_schedules(zb));
      EXPECT_DOUBLE_EQ(sim.makespan, 3.0 * M + (pp - 1)) << spec_str(zb);
      const double one_f_one_b = simulated_bubble({ScheduleKind::one_f_one_b, pp, M, 1});
      EXPECT_LT(simulated_bubble(zb), 0.5 * one_f_one_b) << spec_str(zb);
    }
  const ScheduleSpec zb{ScheduleKind::zero_bubble, 4, 8, 1};
  EXPECT_NEAR(simulated_bubble(zb), 3.0 / 27.0, 1e-12);
  EXPECT_NEAR(theoretical_bubble(zb), 3.0 / 27.0, 1e-12);
  EXPECT_LE(simulated_bubble(zb), 0.5 * simulated_bubble({ScheduleKind::one_f_one_b, 4, 8, 1}));
  // Still clearly below 1F1B when W is cheaper than B.
  EXPECT_LT(simulated_bubble(zb, 1.0, 1.0, 0.5), simulated_bubble({ScheduleKind::one_f_one_b, 4, 8, 1}, 1.0, 1.0, 0.5));
}

TEST(Schedule, InterleavedBeatsOneFOneB) {
  for (int pp = 2; pp <= 4; ++pp)
    for (int v = 2; v <= 3; ++v)
      for (int M = pp; M <= 16; M += pp) {
        const ScheduleSpec il{ScheduleKind::interleaved, pp, M, v};
        const double b_il = simulated_bubble(il), b_1f1b = simulated_bubble({ScheduleKind::one_f_one_b, pp, M, 1});
        EXPECT_LT(b_il, b_1f1b) << spec_str(il);
        // Megatron's analysis: (pp-1)/(v*M+pp-1) (the simulation of the real lists may differ
        // slightly in the warm-up, never by much).
        EXPECT_NEAR(b_il, theoretical_bubble(il), 0.05) << spec_str(il);
      }
}

TEST(Schedule, KnownOrders) {
  const ScheduleSpec s{ScheduleKind::one_f_one_b, 4, 8, 1};
  EXPECT_EQ(to_string(make_schedule(s, 0)), "F0 F1 F2 F3 B0 F4 B1 F5 B2 F6 B3 F7 B4 B5 B6 B7");
  EXPECT_EQ(to_string(make_schedule(s, 3)), "F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5 F6 B6 F7 B7");
  const ScheduleSpec g{ScheduleKind::gpipe, 2, 3, 1};
  EXPECT_EQ(to_string(make_schedule(g, 1)), "F0 F1 F2 B0 B1 B2");
  // Megatron's table for pp = 2, v = 2, M = 4: forwards (m, c) = 0.0 1.0 0.1 1.1 2.0 3.0 2.1 3.1.
  const ScheduleSpec il{ScheduleKind::interleaved, 2, 4, 2};
  EXPECT_EQ(to_string(make_schedule(il, 1), 2), "F0.0 F1.0 F0.1 B0.1 F1.1 B1.1 F2.0 B0.0 F3.0 B1.0 F2.1 B2.1 F3.1 B3.1 B2.0 B3.0");
  EXPECT_EQ(to_string(make_schedule({ScheduleKind::zero_bubble, 1, 3, 1}, 0)), "F0 B0 W0 F1 B1 W1 F2 B2 W2");
}

TEST(Schedule, PipelineTags) {
  const ScheduleSpec s{ScheduleKind::interleaved, 4, 8, 2};
  EXPECT_EQ(pipeline_tag(s, false, 0, 1), 2);
  EXPECT_EQ(pipeline_tag(s, true, 0, 1), 3);
  EXPECT_EQ(pipeline_tag(s, true, 7, 7), 2 * (7 * 8 + 7) + 1);
}

TEST(Schedule, IllegalSpecsThrow) {
  EXPECT_THROW(make_schedule({ScheduleKind::interleaved, 4, 6, 2}, 0), UserError);  // M % pp
  EXPECT_THROW(make_schedule({ScheduleKind::one_f_one_b, 4, 8, 2}, 0), UserError);  // v without interleaved
  EXPECT_THROW(make_schedule({ScheduleKind::zero_bubble, 4, 8, 2}, 0), UserError);
  EXPECT_THROW(make_schedule({ScheduleKind::one_f_one_b, 0, 8, 1}, 0), UserError);
  EXPECT_THROW(make_schedule({ScheduleKind::one_f_one_b, 2, 0, 1}, 0), UserError);
  EXPECT_THROW(make_schedule({ScheduleKind::one_f_one_b, 2, 4, 0}, 0), UserError);
  EXPECT_THROW(make_schedule({ScheduleKind::one_f_one_b, 2, 4, 1}, 2), Error);      // rank out of range
  EXPECT_THROW(make_schedule({ScheduleKind::one_f_one_b, 8, 4096, 1}, 0), UserError);  // too many tags
  EXPECT_THROW(parse_schedule_kind("2f2b"), UserError);
  for (ScheduleKind k : kAll) EXPECT_EQ(parse_schedule_kind(schedule_name(k)), k);
}

TEST(Schedule, SimulationRejectsBadLists) {
  const ScheduleSpec s{ScheduleKind::one_f_one_b, 2, 2, 1};
  auto lists = make_all_schedules(s);
  // Rank 0 waits for B0 from rank 1 before it sends F1; rank 1 needs F1 before B0 here.
  std::vector<std::vector<Action>> dead = lists;
  dead[0] = {{Action::F, 0, 0}, {Action::B, 0, 0}, {Action::F, 1, 0}, {Action::B, 1, 0}};
  dead[1] = {{Action::F, 0, 0}, {Action::F, 1, 0}, {Action::B, 0, 0}, {Action::B, 1, 0}};
  EXPECT_THROW(simulate_schedule(s, dead), Error);
  std::vector<std::vector<Action>> dup = lists;
  dup[1][1] = dup[1][0];
  EXPECT_THROW(simulate_schedule(s, dup), Error);
  std::vector<std::vector<Action>> missing = lists;
  missing[0].pop_back();
  EXPECT_THROW(simulate_schedule(s, missing), Error);
}

// pp = 1 runs without messages; with v > 1 the chunks hand tensors over locally.
TEST(Schedule, RunsOnOneRank) {
  auto self = make_self_communicator("pp");
  for (ScheduleKind k : kAll)
    for (int v = 1; v <= 3; ++v)
      for (int M = 1; M <= 5; ++M) {
        if (!legal(k, 1, M, v)) continue;
        const ScheduleSpec s{k, 1, M, v};
        SCOPED_TRACE(spec_str(s));
        ptrain::parallel::testing::NumericStage stage(s, 0);
        Timeline tl;
        tl.start();
        const ScheduleStats st = run_schedule(s, stage, *self, &tl);
        for (const std::string& e : stage.verify()) ADD_FAILURE() << e;
        EXPECT_GE(st.wall_s, st.compute_s);
        EXPECT_EQ(tl.spans().size(), static_cast<size_t>(M * v * (splits_backward(k) ? 3 : 2)));
        for (const Span& sp : tl.spans()) EXPECT_EQ(sp.category, "compute");
      }
}

TEST(Schedule, RejectsAWrongCommunicator) {
  auto self = make_self_communicator("pp");
  const ScheduleSpec s{ScheduleKind::one_f_one_b, 2, 2, 1};
  ptrain::parallel::testing::NumericStage stage(s, 0);
  EXPECT_THROW(run_schedule(s, stage, *self), Error);
}
