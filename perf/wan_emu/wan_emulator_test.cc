// Unit tests of the WAN emulator's pure model: cut schedule (wall ⇄ link time), jitter process,
// link direction (rate, delay, order, queue bound). The proxy itself is exercised end to end by
// tests/integration/wan_emu_test.sh.
#include "perf/wan_emu/wan_emulator.h"

#include <gtest/gtest.h>

namespace ferry::wan {
namespace {

constexpr uint64_t kMs = 1000000;
constexpr uint64_t kS = 1000000000;

TEST(CutSchedule, NoCutsIsIdentity) {
  CutSchedule s({});
  EXPECT_EQ(s.link_time(123), 123u);
  EXPECT_EQ(s.wall_time(123), 123u);
  EXPECT_EQ(s.cut_at(5), -1);
}

TEST(CutSchedule, LinkTimeFreezesDuringCut) {
  CutSchedule s({{10 * kS, 5 * kS}});
  EXPECT_EQ(s.link_time(9 * kS), 9 * kS);
  EXPECT_EQ(s.link_time(10 * kS), 10 * kS);
  EXPECT_EQ(s.link_time(12 * kS), 10 * kS);
  EXPECT_EQ(s.link_time(15 * kS), 10 * kS);
  EXPECT_EQ(s.link_time(17 * kS), 12 * kS);
  EXPECT_EQ(s.cut_at(10 * kS), 0);
  EXPECT_EQ(s.cut_at(15 * kS - 1), 0);
  EXPECT_EQ(s.cut_at(15 * kS), -1);
}

TEST(CutSchedule, WallTimeSkipsCutsAndInvertsLinkTime) {
  CutSchedule s({{20 * kS, 2 * kS}, {10 * kS, 5 * kS}});  // unsorted on purpose
  EXPECT_EQ(s.wall_time(9 * kS), 9 * kS);
  EXPECT_EQ(s.wall_time(10 * kS), 15 * kS);  // an arrival at the cut start waits for its end
  EXPECT_EQ(s.wall_time(12 * kS), 17 * kS);
  EXPECT_EQ(s.wall_time(16 * kS), 23 * kS);
  for (uint64_t x = 0; x < 30 * kS; x += 250 * kMs) {
    uint64_t w = s.wall_time(x);
    EXPECT_EQ(s.link_time(w), x);
    EXPECT_EQ(s.cut_at(w), -1);
  }
}

TEST(CutSchedule, OverlappingCutsMerge) {
  CutSchedule s({{10 * kS, 5 * kS}, {12 * kS, 5 * kS}, {17 * kS, 1 * kS}, {30 * kS, 0}});
  ASSERT_EQ(s.windows().size(), 1u);
  EXPECT_EQ(s.windows()[0].start_ns, 10 * kS);
  EXPECT_EQ(s.windows()[0].length_ns, 8 * kS);
}

TEST(Jitter, StaysInBoundsAndKeepsOrder) {
  const uint64_t j = 3 * kMs;
  Jitter jit(j, 42);
  EXPECT_GE(jit.period_ns(), 4 * j);
  int64_t prev_sum = INT64_MIN;
  int64_t lo = 0, hi = 0;
  for (uint64_t t = 0; t < 2 * kS; t += 37000) {
    int64_t v = jit.at(t);
    EXPECT_LE(v, int64_t(j));
    EXPECT_GE(v, -int64_t(j));
    lo = std::min(lo, v);
    hi = std::max(hi, v);
    int64_t sum = int64_t(t) + v;
    EXPECT_GT(sum, prev_sum);  // t + J(t) strictly increasing: no reordering
    prev_sum = sum;
  }
  EXPECT_LT(lo, -int64_t(j) / 2);  // it does vary over the whole range
  EXPECT_GT(hi, int64_t(j) / 2);
}

TEST(Jitter, ZeroIsZero) {
  Jitter jit(0, 1);
  EXPECT_EQ(jit.at(12345), 0);
}

TEST(LinkDirection, IdleLinkAddsOneWayDelayAndSerialisation) {
  LinkDirection l(100000000, 20 * kMs, 0, 1, 64 * 1024);  // 100 Mbit/s
  EXPECT_EQ(l.serialisation_ns(12500), 1 * kMs);
  EXPECT_EQ(l.admit(5 * kS, 12500), 5 * kS + 1 * kMs + 20 * kMs);
}

TEST(LinkDirection, BackToBackChunksArriveAtTheRate) {
  LinkDirection l(100000000, 20 * kMs, 0, 1, 1 << 30);
  uint64_t last = 0;
  for (int i = 0; i < 1000; ++i) last = l.admit(0, 12500);  // all offered at once
  EXPECT_EQ(last, 1000 * kMs + 20 * kMs);                   // 12.5 MB at 12.5 MB/s, then the delay
}

TEST(LinkDirection, QueueBoundGivesBackPressure) {
  LinkDirection l(8000000, 0, 0, 1, 10000);  // 1 MB/s: 10 KB = 10 ms of queue
  EXPECT_TRUE(l.has_room(0));
  (void)l.admit(0, 5000);
  EXPECT_TRUE(l.has_room(0));
  (void)l.admit(0, 6000);
  EXPECT_FALSE(l.has_room(0));
  EXPECT_EQ(l.queued_bytes(0), 11000u);
  EXPECT_EQ(l.room_at(0), 1 * kMs);  // 11 ms of work, room when 10 ms remain
  EXPECT_TRUE(l.has_room(1 * kMs));
  l.drop_all(2 * kMs);
  EXPECT_EQ(l.queued_bytes(2 * kMs), 0u);
}

TEST(LinkDirection, FinArrivesAfterItsBytes) {
  LinkDirection l(8000000, 10 * kMs, 0, 1, 1 << 20);
  uint64_t data = l.admit(0, 100000);  // 100 ms of serialisation
  uint64_t fin = l.admit_fin(1 * kMs);
  EXPECT_GE(fin, data);
}

TEST(LinkDirection, JitterKeepsArrivalsOrderedAndCentred) {
  LinkDirection l(0, 20 * kMs, 5 * kMs, 7, 0);  // unlimited rate: delay only
  uint64_t prev = 0;
  double sum = 0;
  int n = 0;
  for (uint64_t t = 0; t < 10 * kS; t += 100000) {
    uint64_t a = l.admit(t, 100);
    EXPECT_GE(a, prev);
    prev = a;
    int64_t d = int64_t(a - t);
    EXPECT_GE(d, int64_t(15 * kMs));
    EXPECT_LE(d, int64_t(25 * kMs));
    sum += double(d);
    ++n;
  }
  EXPECT_NEAR(sum / n, double(20 * kMs), double(1 * kMs));  // no drift towards +jitter
}

}  // namespace
}  // namespace ferry::wan
