// DrainCount: a stopping thread waits for the count to reach zero, bounded by a timeout.
#include "datapath/drain_count.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

namespace ferry {
namespace {

TEST(DrainCount, WaiterWakesWhenTheLastOneGoes) {
  DrainCount c;
  c.add();
  c.add();
  std::thread other([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // test pacing only
    c.remove();
    c.remove();
  });
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(c.wait_zero_for(10'000), 0u);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));  // not the timeout
  other.join();
}

// A count that never drains must not hang the stopping thread: the wait ends at its bound and
// says what is left.
TEST(DrainCount, StuckCountEndsAtTheTimeoutWithWhatIsLeft) {
  DrainCount c;
  c.add();
  c.add();
  c.add();
  c.remove();
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(c.wait_zero_for(50), 2u);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(45));
}

}  // namespace
}  // namespace ferry
