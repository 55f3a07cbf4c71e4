// tests/parallel/test_partition.cpp — decoder blocks per pipeline stage (parallel/partition.h).
#include <gtest/gtest.h>

#include "core/error.h"
#include "parallel/partition.h"

namespace ptrain::parallel {
namespace {

TEST(Partition, EvenSplitIsContiguousAndComplete) {
  const auto p = partition_layers(8, 4);
  ASSERT_EQ(p.size(), 4u);
  EXPECT_EQ(p[0], (std::vector<int>{0, 1}));
  EXPECT_EQ(p[3], (std::vector<int>{6, 7}));
}

TEST(Partition, ExtraLayersGoToMiddleStagesFirst) {
  // 10 layers over 4 stages: 2 each, the 2 extra to stages 1 and 2 (0 has the embedding, 3 the head)
  EXPECT_EQ(stage_layer_counts(10, 4), (std::vector<int>{2, 3, 3, 2}));
  // 7 over 3: one extra, to the middle stage
  EXPECT_EQ(stage_layer_counts(7, 3), (std::vector<int>{2, 3, 2}));
  // 5 over 2: no middle stage, the extra goes to stage 0
  EXPECT_EQ(stage_layer_counts(5, 2), (std::vector<int>{3, 2}));
  // 11 over 4: 3 extra -> stages 1, 2, then 0
  EXPECT_EQ(stage_layer_counts(11, 4), (std::vector<int>{3, 3, 3, 2}));
  for (int L = 1; L <= 20; ++L)
    for (int S = 1; S <= L; ++S) {
      const auto p = partition_layers(L, S);
      int next = 0;
      for (const auto& st : p) {
        EXPECT_FALSE(st.empty()) << L << " over " << S;
        for (int b : st) EXPECT_EQ(b, next++) << L << " over " << S;
      }
      EXPECT_EQ(next, L);
    }
}

TEST(Partition, ExplicitStageLayersAreCheckedAndUsed) {
  EXPECT_EQ(partition_layers(6, 3, std::vector<int>{1, 3, 2})[1], (std::vector<int>{1, 2, 3}));
  EXPECT_THROW(stage_layer_counts(6, 3, std::vector<int>{1, 3}), Error);
  EXPECT_THROW(stage_layer_counts(6, 3, std::vector<int>{1, 3, 3}), Error);
  EXPECT_THROW(stage_layer_counts(6, 3, std::vector<int>{0, 3, 3}), Error);
  EXPECT_THROW(stage_layer_counts(2, 3), Error);
}

}  // namespace
}  // namespace ptrain::parallel
