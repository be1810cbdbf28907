// AuthBackoff: the back-off schedule (first failure free, then 1 s doubling to the cap), refusal
// while backed off, forgetting after a quiet period, the table bound (the failure it guards
// against: CHAP allowed unlimited fast guesses, issue 15). Simulated clock, single thread.
#include "datapath/auth_backoff.h"

#include <gtest/gtest.h>

#include <string>

namespace ferry {
namespace {

constexpr uint64_t kS = 1000000000ull;
uint64_t g_now = 1000 * kS;
uint64_t fake_clock() noexcept { return g_now; }

class AuthBackoffTest : public ::testing::Test {
 protected:
  void SetUp() override { g_now = 1000 * kS; }
};

TEST_F(AuthBackoffTest, FirstFailureIsFreeThenOneSecondDoublingToTheCap) {
  AuthBackoff b({}, "test", &fake_clock);
  EXPECT_EQ(b.record_failure("192.0.2.1"), 0u);
  EXPECT_EQ(b.remaining_ns("192.0.2.1"), 0u);
  const uint64_t expected_s[] = {1, 2, 4, 8, 16, 32, 60, 60, 60};
  for (uint64_t s : expected_s) {
    EXPECT_EQ(b.record_failure("192.0.2.1"), s * kS);
    EXPECT_EQ(b.remaining_ns("192.0.2.1"), s * kS);
  }
  EXPECT_EQ(b.counters().failures, 10u);
  EXPECT_EQ(b.counters().backoffs_started, 9u);
}

TEST_F(AuthBackoffTest, BackedOffSourceIsRefusedUntilTheBackOffEndsOthersAreNot) {
  AuthBackoff b({}, "test", &fake_clock);
  b.record_failure("192.0.2.1");
  b.record_failure("192.0.2.1");  // 1 s
  EXPECT_GT(b.remaining_ns("192.0.2.1"), 0u);
  EXPECT_EQ(b.remaining_ns("192.0.2.2"), 0u) << "another source is not held back";
  EXPECT_EQ(b.remaining_ns(""), 0u) << "no source (Unix socket): never backed off";
  g_now += kS / 2;
  EXPECT_EQ(b.remaining_ns("192.0.2.1"), kS / 2);
  g_now += kS / 2;
  EXPECT_EQ(b.remaining_ns("192.0.2.1"), 0u);
  EXPECT_EQ(b.counters().refused, 2u);
}

TEST_F(AuthBackoffTest, QuietSourceIsForgotten) {
  AuthBackoff b({}, "test", &fake_clock);
  for (int i = 0; i < 5; ++i) b.record_failure("192.0.2.1");
  g_now += 300 * kS;  // forget_after_ms
  EXPECT_EQ(b.remaining_ns("192.0.2.1"), 0u);
  EXPECT_EQ(b.sources(), 0u);
  EXPECT_EQ(b.record_failure("192.0.2.1"), 0u) << "counting starts again: first failure is free";
}

TEST_F(AuthBackoffTest, TableIsBoundedAndEvictsTheOldestFailure) {
  AuthBackoffLimits limits;
  limits.sources_max = 3;
  AuthBackoff b(limits, "test", &fake_clock);
  b.record_failure("a");
  b.record_failure("a");
  g_now += 1;
  b.record_failure("b");
  g_now += 1;
  b.record_failure("c");
  g_now += 1;
  b.record_failure("a");  // a is now the most recent
  g_now += 1;
  b.record_failure("d");  // evicts b (oldest failure)
  EXPECT_EQ(b.sources(), 3u);
  EXPECT_EQ(b.counters().evicted, 1u);
  EXPECT_GT(b.remaining_ns("a"), 0u) << "a kept its back-off";
  EXPECT_EQ(b.record_failure("b"), 0u) << "b was forgotten: its failure is free again";
}

TEST_F(AuthBackoffTest, RefusalsDoNotExtendTheBackOff) {
  AuthBackoff b({}, "test", &fake_clock);
  b.record_failure("x");
  b.record_failure("x");
  for (int i = 0; i < 100; ++i) EXPECT_GT(b.remaining_ns("x"), 0u);
  g_now += kS;
  EXPECT_EQ(b.remaining_ns("x"), 0u);
}

}  // namespace
}  // namespace ferry
