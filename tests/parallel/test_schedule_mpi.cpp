// tests/parallel/test_schedule_mpi.cpp — run_schedule over MPI with 4 ranks, and the trace.
//
// A NumericStage (exact integer arithmetic, see numeric_stage.h) runs every schedule with
// pp = 4 over the world and with pp = 2 in two sub-worlds of 2 ranks at once (tags of the
// two pipelines must not interfere), for M = 1..8: losses, every input and gradient that
// crossed a rank, the input gradient of stage 0 and every weight gradient are exact, and
// every F / B / W ran exactly once. Steps follow each other without barriers, as in
// training. Finally the Chrome trace of a step is valid JSON with spans of all 4 ranks.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "parallel/mpi_comm.h"
#include "parallel/schedule.h"
#include "parallel/timeline.h"
#include "tests/parallel/mpi_test_util.h"
#include "tests/parallel/numeric_stage.h"

using namespace ptrain;
using namespace ptrain::parallel;
using ptrain::parallel::testing::NumericStage;
using ptrain::parallel::testing::world_rank;

namespace {

std::unique_ptr<Communicator> world() { return make_mpi_communicator(MPI_COMM_WORLD, "world"); }

const ScheduleKind kAll[] = {ScheduleKind::gpipe, ScheduleKind::one_f_one_b, ScheduleKind::interleaved,
                             ScheduleKind::zero_bubble};

// Runs every legal (schedule, M, v) with pp = comm.size() over `comm`.
void run_all(Communicator& comm) {
  const int pp = comm.size();
  int runs = 0;
  for (ScheduleKind k : kAll)
    for (int v = 1; v <= 3; ++v)
      for (int M = 1; M <= 8; ++M) {
        if (v > 1 && k != ScheduleKind::interleaved) continue;
        if (k == ScheduleKind::interleaved && M % pp != 0) continue;
        const ScheduleSpec s{k, pp, M, v};
        SCOPED_TRACE(fmt::format("{} pp={} M={} v={} (pipeline rank {})", schedule_name(k), pp, M, v, comm.rank()));
        NumericStage stage(s, comm.rank());
        ScheduleStats st;
        ASSERT_NO_THROW(st = run_schedule(s, stage, comm));
        for (const std::string& e : stage.verify()) ADD_FAILURE() << e;
        EXPECT_GE(st.wall_s, st.compute_s);
        EXPECT_GE(st.compute_s, 0.0);
        ++runs;
      }
  EXPECT_GE(runs, 30);
}

std::string tmp_dir() {
  const char* d = std::getenv("PTRAIN_TEST_TMP");
  return d ? d : "/tmp";
}

}  // namespace

TEST(ScheduleMpi, EverySchedulePp4Exact) {
  auto w = world();
  ASSERT_EQ(w->size(), 4);
  run_all(*w);
}

TEST(ScheduleMpi, TwoPipelinesOfTwoAtOnce) {
  auto w = world();
  const int r = world_rank();
  auto pp = split_communicator(*w, r / 2, r, "pp");
  ASSERT_EQ(pp->size(), 2);
  ASSERT_EQ(pp->rank(), r % 2);
  run_all(*pp);
}

TEST(ScheduleMpi, ChromeTraceHasAllRanks) {
  auto w = world();
  const std::string path = fmt::format("{}/schedule_mpi_trace.json", tmp_dir());
  for (ScheduleKind k : {ScheduleKind::one_f_one_b, ScheduleKind::zero_bubble}) {
    const ScheduleSpec s{k, 4, 4, 1};
    NumericStage stage(s, w->rank());
    Timeline tl;
    w->barrier();
    tl.start();
    run_schedule(s, stage, *w, &tl);
    tl.stop();
    for (const std::string& e : stage.verify()) ADD_FAILURE() << e;
    // Spans: every compute action, plus the receives and sends of a middle rank.
    const size_t actions = s.micro_batches * (splits_backward(k) ? 3u : 2u);
    size_t compute = 0;
    for (const Span& sp : tl.spans()) {
      compute += sp.category == "compute";
      EXPECT_LE(sp.start_us, sp.end_us);
    }
    EXPECT_EQ(compute, actions);
    write_chrome_trace(tl, *w, fmt::format("(dp 0, pp {}, tp 0)", w->rank()), path);
    w->barrier();
    if (w->rank() != 0) continue;
    std::ifstream in(path);
    ASSERT_TRUE(in) << path;
    nlohmann::json doc;
    ASSERT_NO_THROW(doc = nlohmann::json::parse(in));
    ASSERT_TRUE(doc.contains("traceEvents"));
    std::set<int> pids, names;
    std::set<std::string> cats;
    int f0 = 0;
    for (const auto& e : doc["traceEvents"]) {
      if (e["ph"] == "M" && e["name"] == "process_name") {
        const std::string n = e["args"]["name"];
        EXPECT_EQ(n.rfind(fmt::format("rank {} (dp 0, pp {}, tp 0)", int(e["pid"]), int(e["pid"])), 0), 0u) << n;
        names.insert(int(e["pid"]));
      }
      if (e["ph"] != "X") continue;
      pids.insert(int(e["pid"]));
      cats.insert(std::string(e["cat"]));
      EXPECT_GE(double(e["dur"]), 0.0);
      EXPECT_TRUE(e.contains("ts") && e.contains("tid"));
      f0 += e["name"] == "F m0 c0";
    }
    EXPECT_EQ(pids, (std::set<int>{0, 1, 2, 3}));
    EXPECT_EQ(names, (std::set<int>{0, 1, 2, 3}));
    EXPECT_TRUE(cats.count("compute") && cats.count("comm"));
    EXPECT_EQ(f0, 4);  // F of micro 0 on each of the 4 ranks
  }
}
