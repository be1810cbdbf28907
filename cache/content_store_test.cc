// ContentStore unit tests: the eviction order and bound are the WAN link's contract (the
// datacenter edge models this store with the same FIFO and byte bound), so they are pinned here.
#include "cache/content_store.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

namespace ferry::cache {
namespace {

std::vector<uint8_t> chunk(uint8_t fill, size_t n = 4096) { return std::vector<uint8_t>(n, fill); }

std::span<const uint8_t> recall(const ContentStore& s, const std::vector<uint8_t>& data) {
  const wan::ContentHash h = wan::content_hash(data);
  return s.recall(h);
}

TEST(ContentStore, RecallsWhatItRememberedByHash) {
  BufferPool pool(1 << 20);
  ContentStore s(pool, 64 * 1024, 64 * 1024);
  const auto a = chunk(1), b = chunk(2);
  s.remember(a);
  ASSERT_EQ(recall(s, a).size(), a.size());
  EXPECT_EQ(std::memcmp(recall(s, a).data(), a.data(), a.size()), 0);
  EXPECT_TRUE(recall(s, b).empty());
  s.remember(a);  // already held: not stored twice
  EXPECT_EQ(s.entries(), 1u);
  EXPECT_EQ(s.bytes(), a.size());
}

TEST(ContentStore, EvictsOldestFirstToStayWithinItsBound) {
  BufferPool pool(1 << 20);
  ContentStore s(pool, 3 * 4096, 64 * 1024);
  const auto a = chunk(1), b = chunk(2), c = chunk(3), d = chunk(4);
  s.remember(a);
  s.remember(b);
  s.remember(c);
  (void)recall(s, a);  // a recall does not refresh (FIFO, like the server's model)
  s.remember(d);
  EXPECT_TRUE(recall(s, a).empty());
  EXPECT_FALSE(recall(s, b).empty());
  EXPECT_FALSE(recall(s, d).empty());
  EXPECT_LE(s.bytes(), 3u * 4096);
  EXPECT_EQ(s.evictions(), 1u);
}

TEST(ContentStore, OffOrOversizeOrPoolFullRemembersNothing) {
  BufferPool pool(1 << 20);
  ContentStore off(pool, 0, 64 * 1024);
  off.remember(chunk(1));
  EXPECT_EQ(off.entries(), 0u);
  ContentStore small(pool, 1 << 20, 4096);
  small.remember(chunk(1, 8192));
  EXPECT_EQ(small.entries(), 0u);
  BufferPool tiny(4096);
  ContentStore full(tiny, 1 << 20, 64 * 1024);
  full.remember(chunk(1));
  full.remember(chunk(2));  // the pool is at its bound: not remembered, no failure
  EXPECT_EQ(full.entries(), 1u);
}

TEST(ContentStore, ShortHashFromTheWireIsAMiss) {
  BufferPool pool(1 << 20);
  ContentStore s(pool, 64 * 1024, 64 * 1024);
  s.remember(chunk(1));
  const uint8_t shorter[4] = {1, 2, 3, 4};
  EXPECT_TRUE(s.recall(shorter).empty());
}

}  // namespace
}  // namespace ferry::cache
