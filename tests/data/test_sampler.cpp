// tests/data/test_sampler.cpp — the DESIGN "Data" contract: windows, step/DP layout,
// shuffled epochs, window ranges (validation split), positions for resume.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "core/rng.h"
#include "data/sampler.h"
#include "data_test_util.h"

using namespace ptrain;
using namespace ptrain::data;
using namespace ptrain::data::testing;

namespace {

/// A token file of n tokens with token[i] = 100 + i (so a window is recognisable).
std::shared_ptr<const TokenDataset> dataset(const std::string& name, int64_t n) {
  const auto d = fresh_dir("data_sampler_" + name);
  const std::string p = (d / "tokens.h5").string();
  make_token_file(p, iota_tokens(n, 100), h5::IntStore::i32, "test", 100 + n);
  return std::make_shared<const TokenDataset>(p);
}

SamplerOptions opts(int64_t T, int64_t G, int64_t dp = 1, int64_t rank = 0, bool shuffle = false, uint64_t seed = 7) {
  SamplerOptions o;
  o.seq_len = T;
  o.global_batch = G;
  o.dp_size = dp;
  o.dp_rank = rank;
  o.shuffle = shuffle;
  o.seed = seed;
  return o;
}

struct Batch {
  std::vector<int32_t> in, tg;
};
Batch get(const Sampler& s, int64_t step, int64_t vocab = 100000) {
  const int64_t n = s.local_batch() * s.options().seq_len;
  Batch b{std::vector<int32_t>(static_cast<size_t>(n)), std::vector<int32_t>(static_cast<size_t>(n))};
  s.batch(step, b.in.data(), b.tg.data(), vocab);
  return b;
}

}  // namespace

TEST(Sampler, WindowsCount) {
  EXPECT_EQ(windows_in(11, 3), 3);  // floor(10/3)
  EXPECT_EQ(windows_in(10, 3), 3);  // floor(9/3): the last window's target is token 9
  EXPECT_EQ(windows_in(9, 3), 2);
  EXPECT_EQ(windows_in(4, 3), 1);
  EXPECT_EQ(windows_in(3, 3), 0);
}

TEST(Sampler, SequentialWindowsHandComputed) {
  // N = 11, T = 3: W = 3; w0 = tokens[0:4], w1 = tokens[3:7], w2 = tokens[6:10] (token 10 unused).
  auto data = dataset("seq", 11);
  Sampler s(data, opts(3, 2));
  EXPECT_EQ(s.num_windows(), 3);
  // Order 0,1,2,0,1,2,...: step 0 -> (w0, w1), step 1 -> (w2, w0), step 2 -> (w1, w2).
  Batch b0 = get(s, 0);
  EXPECT_EQ(b0.in, (std::vector<int32_t>{100, 101, 102, 103, 104, 105}));
  EXPECT_EQ(b0.tg, (std::vector<int32_t>{101, 102, 103, 104, 105, 106}));
  Batch b1 = get(s, 1);
  EXPECT_EQ(b1.in, (std::vector<int32_t>{106, 107, 108, 100, 101, 102}));
  EXPECT_EQ(b1.tg, (std::vector<int32_t>{107, 108, 109, 101, 102, 103}));
  EXPECT_EQ(s.windows(2), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(s.windows(3), (std::vector<int64_t>{0, 1}));
}

TEST(Sampler, DataParallelRanksTakeContiguousSlices) {
  // N = 11, T = 3, W = 3, G = 4, dp = 2: rank r takes j in [2r, 2r+2) of positions 4s + j.
  auto data = dataset("dp", 11);
  Sampler r0(data, opts(3, 4, 2, 0)), r1(data, opts(3, 4, 2, 1));
  EXPECT_EQ(r0.local_batch(), 2);
  // step 0: positions 0..3 -> windows 0,1,2,0; step 1: positions 4..7 -> 1,2,0,1.
  EXPECT_EQ(r0.windows(0), (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(r1.windows(0), (std::vector<int64_t>{2, 0}));
  EXPECT_EQ(r0.windows(1), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(r1.windows(1), (std::vector<int64_t>{0, 1}));
  Batch b = get(r1, 0);
  EXPECT_EQ(b.in, (std::vector<int32_t>{106, 107, 108, 100, 101, 102}));
  EXPECT_EQ(b.tg, (std::vector<int32_t>{107, 108, 109, 101, 102, 103}));
}

TEST(Sampler, ShuffledEpochsArePhiloxFisherYatesPermutations) {
  auto data = dataset("shuffle", 1001);  // T = 10: W = 100
  Sampler s(data, opts(10, 8, 1, 0, true, 1234));
  const int64_t W = s.num_windows();
  ASSERT_EQ(W, 100);
  std::vector<std::vector<int64_t>> epochs;
  for (int64_t e = 0; e < 3; ++e) {
    std::vector<int64_t> order;
    for (int64_t i = 0; i < W; ++i) order.push_back(s.window_at(e * W + i));
    // Exactly the contract's permutation.
    EXPECT_EQ(order, random_permutation(make_key(1234, "data.epoch", static_cast<uint64_t>(e)), W));
    std::vector<int64_t> sorted = order;
    std::sort(sorted.begin(), sorted.end());
    for (int64_t i = 0; i < W; ++i) ASSERT_EQ(sorted[static_cast<size_t>(i)], i);  // a permutation
    epochs.push_back(order);
  }
  EXPECT_NE(epochs[0], epochs[1]);
  EXPECT_NE(epochs[1], epochs[2]);
  std::vector<int64_t> identity(static_cast<size_t>(W));
  for (int64_t i = 0; i < W; ++i) identity[static_cast<size_t>(i)] = i;
  EXPECT_NE(epochs[0], identity);
  // Same seed: same order (a fresh sampler, queried out of order across epochs: the cache
  // must not leak between epochs). Another seed: another order.
  Sampler again(data, opts(10, 8, 1, 0, true, 1234)), other(data, opts(10, 8, 1, 0, true, 1235));
  for (int64_t e : {2, 0, 1})
    for (int64_t i = W - 1; i >= 0; i -= 7) EXPECT_EQ(again.window_at(e * W + i), epochs[static_cast<size_t>(e)][static_cast<size_t>(i)]);
  std::vector<int64_t> o0;
  for (int64_t i = 0; i < W; ++i) o0.push_back(other.window_at(i));
  EXPECT_NE(o0, epochs[0]);
  // A step that straddles an epoch boundary: G = 8, W = 100, step 12 covers positions 96..103.
  auto w = s.windows(12);
  EXPECT_EQ(std::vector<int64_t>(w.begin(), w.begin() + 4), std::vector<int64_t>(epochs[0].begin() + 96, epochs[0].end()));
  EXPECT_EQ(std::vector<int64_t>(w.begin() + 4, w.end()), std::vector<int64_t>(epochs[1].begin(), epochs[1].begin() + 4));
}

TEST(Sampler, OrderIsIndependentOfTheDataParallelSplit) {
  auto data = dataset("dpsplit", 517);  // T = 8: W = 64
  for (bool shuffle : {false, true}) {
    Sampler one(data, opts(8, 8, 1, 0, shuffle));
    for (int64_t dp : {2, 4, 8}) {
      for (int64_t step : {0, 3, 7, 8, 21}) {
        Batch whole = get(one, step);
        std::vector<int32_t> in, tg;
        for (int64_t r = 0; r < dp; ++r) {
          Sampler part(data, opts(8, 8, dp, r, shuffle));
          Batch b = get(part, step);
          in.insert(in.end(), b.in.begin(), b.in.end());
          tg.insert(tg.end(), b.tg.begin(), b.tg.end());
        }
        EXPECT_EQ(in, whole.in) << "dp " << dp << " step " << step << " shuffle " << shuffle;
        EXPECT_EQ(tg, whole.tg) << "dp " << dp << " step " << step << " shuffle " << shuffle;
      }
    }
  }
}

TEST(Sampler, WindowRangeForAValidationSplit) {
  auto data = dataset("range", 101);  // T = 10: W = 10
  SamplerOptions train = opts(10, 2), val = opts(10, 2);
  train.num_windows = 7;
  val.first_window = 7;
  Sampler t(data, train), v(data, val);
  EXPECT_EQ(t.num_windows(), 7);
  EXPECT_EQ(v.num_windows(), 3);
  EXPECT_EQ(t.windows(3), (std::vector<int64_t>{6, 0}));
  EXPECT_EQ(v.windows(0), (std::vector<int64_t>{7, 8}));
  EXPECT_EQ(v.windows(1), (std::vector<int64_t>{9, 7}));
  Batch b = get(v, 0);
  EXPECT_EQ(b.in[0], 170);  // window 7 starts at token 70
  train.shuffle = true;
  Sampler ts(data, train);
  std::set<int64_t> seen;
  for (int64_t p = 0; p < 7; ++p) seen.insert(ts.window_at(p));
  EXPECT_EQ(seen, (std::set<int64_t>{0, 1, 2, 3, 4, 5, 6}));  // never a validation window
  SamplerOptions bad = opts(10, 2);
  bad.first_window = 8;
  bad.num_windows = 3;
  EXPECT_THROW(Sampler(data, bad), UserError);
  bad.first_window = 10;
  bad.num_windows = -1;
  EXPECT_THROW(Sampler(data, bad), UserError);
}

TEST(Sampler, OptionErrors) {
  auto data = dataset("errors", 11);
  try {
    Sampler(data, opts(3, 3, 2, 0));
    FAIL();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("global_batch = 3 is not divisible by the data-parallel size dp = 2"),
              std::string::npos)
        << e.what();
  }
  try {
    Sampler(data, opts(11, 2));  // T = 10 would still fit one window: floor(10/10) = 1
    FAIL();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("has 11 tokens: not enough for one window of seq_len+1 = 12 tokens"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(Sampler(data, opts(0, 2)), UserError);
  EXPECT_THROW(Sampler(data, opts(3, 0)), UserError);
  EXPECT_THROW(Sampler(data, opts(3, 2, 2, 2)), UserError);
}

TEST(Sampler, OutOfVocabularyIdInABatch) {
  auto data = dataset("vocab", 11);  // tokens 100..110
  Sampler s(data, opts(3, 2));
  std::vector<int32_t> in(6), tg(6);
  EXPECT_NO_THROW(s.batch(0, in.data(), tg.data(), 111));
  try {
    s.batch(0, in.data(), tg.data(), 105);
    FAIL();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("token id 105 at position 5 in "), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("is >= model.vocab_size = 105"), std::string::npos) << e.what();
  }
}

TEST(Sampler, PositionForResume) {
  auto data = dataset("position", 11);  // W = 3
  Sampler s(data, opts(3, 2, 1, 0, true, 99));
  auto p = s.position(5);
  EXPECT_EQ(p["step"], 5);
  EXPECT_EQ(p["position"], 10);
  EXPECT_EQ(p["epoch"], 3);
  EXPECT_EQ(p["window_in_epoch"], 1);
  EXPECT_EQ(p["num_windows"], 3);
  EXPECT_EQ(p["seed"], 99);
  // Through a JSON text round trip (as meta.json), the same run accepts it.
  auto saved = nlohmann::json::parse(p.dump());
  EXPECT_NO_THROW(s.check_position(saved, 5));
  EXPECT_THROW(s.check_position(saved, 6), UserError);  // another step
  Sampler other_seq(data, opts(2, 2, 1, 0, true, 99));
  try {
    other_seq.check_position(saved, 5);
    FAIL();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("seq_len was 3, now 2"), std::string::npos) << e.what();
  }
  Sampler other_seed(data, opts(3, 2, 1, 0, true, 100));
  EXPECT_THROW(other_seed.check_position(saved, 5), UserError);
  // A different DP split of the same run is fine (the order does not depend on it).
  Sampler dp2(data, opts(3, 2, 2, 1, true, 99));
  EXPECT_NO_THROW(dp2.check_position(saved, 5));
  saved.erase("num_tokens");
  EXPECT_THROW(s.check_position(saved, 5), UserError);
  EXPECT_THROW(s.check_position(nlohmann::json::array(), 5), UserError);
  // A resumed sampler gives the batches the uninterrupted one gives.
  Sampler resumed(data, opts(3, 2, 1, 0, true, 99));
  for (int64_t step = 5; step < 9; ++step) EXPECT_EQ(get(resumed, step).in, get(s, step).in);
}
