// tests/optim/test_loss_scaler.cpp — dynamic loss scaling: backoff and skip on overflow,
// growth after the interval, the minimum scale, JSON round trip for meta.json.
#include <gtest/gtest.h>

#include "core/error.h"
#include "optim/loss_scaler.h"

using ptrain::optim::LossScaler;
using ptrain::optim::LossScalerOptions;

TEST(LossScaler, OverflowBacksOffAndSkips) {
  LossScaler s;
  EXPECT_EQ(s.scale(), 65536.0);
  EXPECT_TRUE(s.update(false));
  EXPECT_EQ(s.good_steps(), 1);
  EXPECT_FALSE(s.update(true));
  EXPECT_EQ(s.scale(), 32768.0);
  EXPECT_EQ(s.skipped_steps(), 1);
  EXPECT_EQ(s.good_steps(), 0);  // the clean run restarts
  EXPECT_FALSE(s.update(true));
  EXPECT_EQ(s.scale(), 16384.0);
  EXPECT_EQ(s.skipped_steps(), 2);
}

TEST(LossScaler, GrowsAfterDefaultInterval) {
  LossScaler s;
  for (int i = 0; i < 1999; ++i) ASSERT_TRUE(s.update(false));
  EXPECT_EQ(s.scale(), 65536.0);
  EXPECT_TRUE(s.update(false));  // the 2000th clean step
  EXPECT_EQ(s.scale(), 131072.0);
  EXPECT_EQ(s.good_steps(), 0);
  EXPECT_EQ(s.skipped_steps(), 0);
}

TEST(LossScaler, OverflowResetsTheGrowthCount) {
  LossScaler s(LossScalerOptions{8.0, 2.0, 0.5, 3, 1.0});
  s.update(false);
  s.update(false);
  s.update(true);  // 4
  s.update(false);
  s.update(false);
  EXPECT_EQ(s.scale(), 4.0);  // only 2 clean steps since the overflow
  s.update(false);
  EXPECT_EQ(s.scale(), 8.0);
}

TEST(LossScaler, NeverBelowMinScale) {
  LossScaler s(LossScalerOptions{4.0, 2.0, 0.5, 2000, 1.0});
  for (int i = 0; i < 10; ++i) EXPECT_FALSE(s.update(true));
  EXPECT_EQ(s.scale(), 1.0);
  EXPECT_EQ(s.skipped_steps(), 10);
}

TEST(LossScaler, JsonRoundTrip) {
  LossScaler a;
  for (int i = 0; i < 7; ++i) a.update(i % 3 == 0);
  const nlohmann::json j = a.to_json();
  LossScaler b;
  b.from_json(nlohmann::json::parse(j.dump()));
  EXPECT_EQ(b.scale(), a.scale());
  EXPECT_EQ(b.good_steps(), a.good_steps());
  EXPECT_EQ(b.skipped_steps(), a.skipped_steps());
  EXPECT_EQ(b.skipped_steps(), 3);
  // both continue identically
  for (int i = 0; i < 5000; ++i) ASSERT_EQ(a.update(i % 1700 == 5), b.update(i % 1700 == 5));
  EXPECT_EQ(b.scale(), a.scale());
  EXPECT_EQ(b.to_json(), a.to_json());
}

TEST(LossScaler, FromJsonRefusesDamage) {
  LossScaler s;
  EXPECT_THROW(s.from_json(nlohmann::json::parse(R"({"scale": 2.0, "good_steps": 1})")), ptrain::UserError);
  EXPECT_THROW(s.from_json(nlohmann::json::parse(R"({"scale": "x", "good_steps": 1, "skipped_steps": 0})")),
               ptrain::UserError);
  EXPECT_THROW(s.from_json(nlohmann::json::parse(R"({"scale": 0.25, "good_steps": 1, "skipped_steps": 0})")),
               ptrain::UserError);
  EXPECT_THROW(s.from_json(nlohmann::json::parse(R"({"scale": 2.0, "good_steps": -1, "skipped_steps": 0})")),
               ptrain::UserError);
  EXPECT_THROW(s.from_json(nlohmann::json::parse("[1, 2]")), ptrain::UserError);
  EXPECT_EQ(s.scale(), 65536.0);  // unchanged by refused input
}
