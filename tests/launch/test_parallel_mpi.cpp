// tests/launch/test_parallel_mpi.cpp — every parallel layout trains the model a single rank
// trains (run under `mpirun -np 4`, label mpi; fixture: parallel_mpi_fixture.h): loss and
// pre-clip gradient norm within 1e-5 relative of one rank at every one of 20 fp32 steps. The
// checkpoint case saves under tp2 x pp2 and resumes under pp4 and under one rank.
#define PTRAIN_MPI_SUITE "parallel_mpi"
#include "tests/launch/parallel_mpi_fixture.h"

namespace {

TEST_F(ParallelEquivalence, LlamaLayoutsMatchOneRank) {
  check_layouts("llama", 2,
                {{"tp2", 2, {"parallel.tp=2"}},
                 {"tp2_sp", 2, {"parallel.tp=2", "parallel.sequence_parallel=true"}},
                 {"pp2", 2, {"parallel.pp=2"}},
                 {"pp4_gpipe", 4, {"parallel.pp=4", "parallel.schedule=gpipe"}},
                 {"pp4_1f1b", 4, {"parallel.pp=4", "parallel.schedule=1f1b"}},
                 {"pp4_zb", 4, {"parallel.pp=4", "parallel.schedule=zero-bubble"}},
                 {"pp2_interleaved", 2, {"parallel.pp=2", "parallel.schedule=interleaved", "parallel.virtual_stages=2"}},
                 {"dp2", 2, {"parallel.dp=2"}},
                 {"dp2_zero1", 2, {"parallel.dp=2", "optim.zero=1"}},
                 {"tp2_pp2", 4, {"parallel.tp=2", "parallel.pp=2"}},
                 {"dp2_tp2", 4, {"parallel.tp=2", "parallel.dp=2"}},
                 {"dp2_pp2_zero1", 4, {"parallel.pp=2", "parallel.dp=2", "optim.zero=1"}}},
                &reference, &run, &expect_match);
}

TEST_F(ParallelEquivalence, LlamaTp4MatchesOneRank) {
  check_layouts("llama", 4, {{"tp4", 4, {"parallel.tp=4"}}}, &reference, &run, &expect_match);
}

TEST_F(ParallelEquivalence, Gpt2LayoutsMatchOneRank) {
  // gpt2 ties the LM head to the embedding: under pp the two live on different stages
  check_layouts("gpt2", 4,
                {{"tp2", 2, {"parallel.tp=2"}},
                 {"pp2", 2, {"parallel.pp=2"}},
                 {"tp2_pp2", 4, {"parallel.tp=2", "parallel.pp=2"}},
                 {"dp2_zero1", 2, {"parallel.dp=2", "optim.zero=1"}}},
                &reference, &run, &expect_match);
}

// train.recompute under TP (with sequence parallelism: the rerun repeats the all-gathers) and
// PP (1f1b; zero-bubble splits weight gradients after the rerun): the same bits as the same
// layout without recompute.
TEST_F(ParallelEquivalence, RecomputeModesBitIdenticalUnderTpPp) {
  const std::vector<std::string> llama = {"parallel.tp=2", "parallel.pp=2", "parallel.sequence_parallel=true",
                                          "parallel.schedule=1f1b"};
  auto with = [](std::vector<std::string> sets, const std::string& mode) {
    sets.push_back("train.recompute=" + mode);
    return sets;
  };
  const fs::path none = run("llama_tp2_pp2_sp_rc_none", "llama", 2, 4, with(llama, "none"));
  for (const std::string mode : {"selective", "full"})
    expect_match(none, run("llama_tp2_pp2_sp_rc_" + mode, "llama", 2, 4, with(llama, mode)),
                 "llama tp2 pp2 sp recompute " + mode, 1, 0.0);
  const std::vector<std::string> gpt2 = {"parallel.tp=2", "parallel.pp=2", "parallel.schedule=zero-bubble"};
  expect_match(run("gpt2_tp2_pp2_zb_rc_none", "gpt2", 4, 4, with(gpt2, "none")),
               run("gpt2_tp2_pp2_zb_rc_full", "gpt2", 4, 4, with(gpt2, "full")), "gpt2 tp2 pp2 zero-bubble full", 1,
               0.0);
}

TEST_F(ParallelEquivalence, CheckpointReshardsAcrossLayouts) {
  const fs::path ref = reference("llama", 2);
  // save under tp2 x pp2 (steps 10 and 20), then resume step 10 under pp4 and under one rank
  const fs::path saved = run("ck_tp2_pp2", "llama", 2, 4, {"parallel.tp=2", "parallel.pp=2"});
  if (world_rank() == 0) fs::remove_all(saved / "step_00000020");
  world_->barrier();
  const fs::path pp4 = run("ck_resume_pp4", "llama", 2, 4, {"parallel.pp=4"}, true, "ck_tp2_pp2");
  const fs::path one = run("ck_resume_1", "llama", 2, 1, {}, true, "ck_tp2_pp2");
  const fs::path z = run("ck_resume_dp2_zero1", "llama", 2, 2, {"parallel.dp=2", "optim.zero=1"}, true, "ck_tp2_pp2");
  expect_match(ref, pp4, "resumed under pp4", 11);
  expect_match(ref, one, "resumed under one rank", 11);
  expect_match(ref, z, "resumed under dp2 ZeRO-1", 11);
}

// ZeRO-1 checkpoints: every DP rank writes its own range of the moments (flat_offset datasets,
// nothing gathered to one rank); a resume in the same layout continues bit for bit, and the
// shards load into other layouts (one rank, tp2 x pp2).
TEST_F(ParallelEquivalence, ZeroCheckpointsWriteEachRanksShard) {
  const fs::path ref = reference("llama", 2);
  const std::vector<std::string> zero = {"parallel.pp=2", "parallel.dp=2", "optim.zero=1"};
  const fs::path saved = run("ck_dp2_pp2_zero1", "llama", 2, 4, zero);
  expect_match(ref, saved, "dp2 pp2 ZeRO-1", 1, 1e-5);
  if (world_rank() == 0) {
    int files_with_moments = 0;
    for (int r = 0; r < 4; ++r) {
      h5::File f = h5::File::open((saved / "step_00000010" / fmt::format("rank_{:05d}.h5", r)).string());
      int moments = 0;
      for (const std::string group : {"exp_avg", "exp_avg_sq"}) {
        if (!h5::has(f, group)) continue;
        for (const auto& name : h5::list_datasets(f, group)) {
          ++moments;
          EXPECT_TRUE(h5::has_attr(f, name, "flat_offset")) << "rank " << r << " " << name;
        }
      }
      files_with_moments += moments > 0;
    }
    EXPECT_EQ(files_with_moments, 4) << "every DP rank of every stage writes its own shard of the moments";
    fs::remove_all(saved / "step_00000020");
  }
  world_->barrier();
  const fs::path again = run("ck_dp2_pp2_zero1_resumed", "llama", 2, 4, zero, true, "ck_dp2_pp2_zero1");
  expect_match(saved, again, "resumed under the same ZeRO-1 layout", 11, 0.0);
  const fs::path one = run("ck_zero_resume_1", "llama", 2, 1, {}, true, "ck_dp2_pp2_zero1");
  expect_match(ref, one, "ZeRO-1 shards resumed under one rank", 11);
  const fs::path tp = run("ck_zero_resume_tp2_pp2", "llama", 2, 4, {"parallel.tp=2", "parallel.pp=2"}, true,
                          "ck_dp2_pp2_zero1");
  expect_match(ref, tp, "ZeRO-1 shards resumed under tp2 x pp2", 11);
}

}  // namespace
