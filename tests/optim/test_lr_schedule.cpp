// tests/optim/test_lr_schedule.cpp — LrSchedule values at hand-computed points, edge cases,
// parsing and validation.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "optim/lr_schedule.h"

using ptrain::optim::LrSchedule;

namespace {
LrSchedule cosine() { return LrSchedule{1e-3, 1e-4, 10, 110, LrSchedule::cosine}; }
}  // namespace

TEST(LrSchedule, LinearWarmup) {
  const LrSchedule s = cosine();
  EXPECT_DOUBLE_EQ(s.at(0), 1e-4);  // lr * 1/10
  EXPECT_DOUBLE_EQ(s.at(4), 5e-4);  // lr * 5/10
  EXPECT_DOUBLE_EQ(s.at(9), 1e-3);  // end of warmup reaches lr
}

TEST(LrSchedule, CosineValues) {
  const LrSchedule s = cosine();
  EXPECT_EQ(s.at(10), 1e-3);  // first decay update: cos(0) = 1, exactly lr
  // progress 25/100: (1 + cos(pi/4))/2 = 0.8535533905932737
  EXPECT_NEAR(s.at(35), 1e-4 + 9e-4 * 0.8535533905932737, 1e-15);
  EXPECT_NEAR(s.at(60), 5.5e-4, 1e-15);  // midpoint: halfway between lr and min_lr
  // last update s = 109, progress 99/100: (1 + cos(0.99 pi))/2 = 2.4671981713419e-4
  EXPECT_NEAR(s.at(109), 1e-4 + 9e-4 * 2.4671981713419e-4, 1e-15);
  EXPECT_GT(s.at(109), 1e-4);
  // monotone non-increasing after warmup
  for (int64_t k = 10; k < 110; ++k) EXPECT_LE(s.at(k + 1), s.at(k)) << k;
}

TEST(LrSchedule, ClampsPastTheEnd) {
  const LrSchedule s = cosine();
  EXPECT_EQ(s.at(110), 1e-4);
  EXPECT_EQ(s.at(1000000), 1e-4);
}

TEST(LrSchedule, Constant) {
  const LrSchedule s{2e-3, 1e-4, 4, 50, LrSchedule::constant};
  EXPECT_DOUBLE_EQ(s.at(0), 5e-4);
  EXPECT_DOUBLE_EQ(s.at(3), 2e-3);
  EXPECT_EQ(s.at(4), 2e-3);
  EXPECT_EQ(s.at(49), 2e-3);
  EXPECT_EQ(s.at(500), 2e-3);
}

TEST(LrSchedule, NoWarmup) {
  const LrSchedule s{1e-3, 0.0, 0, 100, LrSchedule::cosine};
  EXPECT_EQ(s.at(0), 1e-3);
  EXPECT_NEAR(s.at(50), 5e-4, 1e-15);
}

TEST(LrSchedule, WarmupEqualsStepsNeverDividesByZero) {
  const LrSchedule s{1e-3, 1e-4, 20, 20, LrSchedule::cosine};
  EXPECT_DOUBLE_EQ(s.at(0), 5e-5);
  EXPECT_DOUBLE_EQ(s.at(19), 1e-3);  // the last real update ends the warmup at lr
  EXPECT_EQ(s.at(20), 1e-4);         // past the end: the cosine's end value
  EXPECT_TRUE(std::isfinite(s.at(25)));
  // warmup longer than the run: the run ends inside the warmup
  const LrSchedule w{1e-3, 1e-4, 100, 10, LrSchedule::cosine};
  EXPECT_DOUBLE_EQ(w.at(9), 1e-4);
  EXPECT_EQ(w.at(10), 1e-4);
}

TEST(LrSchedule, Parse) {
  EXPECT_EQ(LrSchedule::parse("cosine"), LrSchedule::cosine);
  EXPECT_EQ(LrSchedule::parse("constant"), LrSchedule::constant);
  EXPECT_STREQ(LrSchedule::name(LrSchedule::constant), "constant");
  try {
    LrSchedule::parse("linear");
    FAIL() << "no throw";
  } catch (const ptrain::UserError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("'linear'"), std::string::npos) << m;
    EXPECT_NE(m.find("cosine, constant"), std::string::npos) << m;
  }
}

TEST(LrSchedule, Validate) {
  EXPECT_NO_THROW(cosine().validate());
  EXPECT_THROW((LrSchedule{1e-3, 1e-2, 0, 10, LrSchedule::cosine}.validate()), ptrain::UserError);
  EXPECT_NO_THROW((LrSchedule{1e-3, 1e-2, 0, 10, LrSchedule::constant}.validate()));
  EXPECT_THROW((LrSchedule{-1.0, 0.0, 0, 10, LrSchedule::constant}.validate()), ptrain::UserError);
  EXPECT_THROW((LrSchedule{1e-3, 0.0, -1, 10, LrSchedule::cosine}.validate()), ptrain::UserError);
  EXPECT_THROW((LrSchedule{1e-3, 0.0, 0, 0, LrSchedule::cosine}.validate()), ptrain::UserError);
  EXPECT_THROW((LrSchedule{NAN, 0.0, 0, 10, LrSchedule::cosine}.validate()), ptrain::UserError);
}
