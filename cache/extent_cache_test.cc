// ExtentCache unit tests (moved with the class from gateway/nbd/client_device_test.cc).
#include "cache/extent_cache.h"

#include <gtest/gtest.h>

#include "datapath/block_device.h"

namespace ferry::cache {
namespace {

TEST(ExtentCache, AssignMergesSplitsAndErases) {
  ExtentCache c(100);
  c.assign(0, 100, kStatusHole | kStatusZero);
  c.assign(100, 200, kStatusHole | kStatusZero);
  EXPECT_EQ(c.size(), 1u);  // merged
  c.assign(50, 60, 0);      // split into three
  EXPECT_EQ(c.size(), 3u);
  EXPECT_EQ(c.find(55)->flags, 0u);
  EXPECT_EQ(c.find(10)->end_bytes, 50u);
  EXPECT_EQ(c.find(60)->start_bytes, 60u);
  EXPECT_EQ(c.find(199)->end_bytes, 200u);
  EXPECT_FALSE(c.find(200).has_value());
  EXPECT_EQ(c.first_unknown(0, 300), 200u);
  EXPECT_EQ(c.first_with(0, 200, kStatusZero), 0u);
  EXPECT_EQ(c.first_with(50, 200, kStatusZero), 60u);
  c.erase(40, 70);
  EXPECT_EQ(c.first_unknown(0, 300), 40u);
  EXPECT_EQ(c.first_unknown(70, 300), 200u);
  EXPECT_FALSE(c.find(45).has_value());
  c.assign(40, 70, kStatusHole | kStatusZero);  // re-merges the whole range
  EXPECT_EQ(c.size(), 1u);
  EXPECT_EQ(c.find(0)->end_bytes, 200u);
  c.erase(0, 1000);
  EXPECT_EQ(c.size(), 0u);
}

TEST(ExtentCache, BoundedEvictsFarthestFromInsertion) {
  ExtentCache c(8);
  for (uint64_t i = 0; i < 100; ++i) c.assign(i * 10, i * 10 + 5, uint32_t(i % 2));
  EXPECT_LE(c.size(), 8u);
  EXPECT_GT(c.evictions(), 0u);
  // Streaming upwards keeps the recent neighbourhood.
  EXPECT_TRUE(c.find(992).has_value());
  EXPECT_FALSE(c.find(2).has_value());
}

}  // namespace
}  // namespace ferry::cache
