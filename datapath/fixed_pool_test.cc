// FixedPool and FixedMap against their bounds and a std::map model.
#include "datapath/fixed_pool.h"

#include <gtest/gtest.h>

#include <map>
#include <random>

namespace ferry {
namespace {

struct Item {
  int value = 0;
};

TEST(FixedPool, EmptyPoolAnswersNullNotACrash) {
  FixedPool<Item> pool;
  ASSERT_TRUE(pool.init(3));
  Item* a = pool.take();
  Item* b = pool.take();
  Item* c = pool.take();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(pool.take(), nullptr);  // exhausted: the caller answers busy
  EXPECT_EQ(pool.in_use(), 3u);
  b->value = 7;
  pool.put(b);
  Item* again = pool.take();
  EXPECT_EQ(again, b);
  EXPECT_EQ(again->value, 0);  // handed out value-initialised, not with the last user's state
}

TEST(FixedPool, UninitialisedPoolHasNothingToGive) {
  FixedPool<Item> pool;
  EXPECT_EQ(pool.take(), nullptr);
}

TEST(FixedMap, FullMapRefusesNewKeysButFindsOldOnes) {
  FixedMap<int> m;
  ASSERT_TRUE(m.init(4));
  for (uint64_t k = 0; k < 4; ++k) *m.insert(k * 1000) = int(k);
  EXPECT_EQ(m.insert(99), nullptr);
  ASSERT_NE(m.insert(2000), nullptr);  // an existing key is found, not refused
  EXPECT_EQ(*m.find(2000), 2);
  m.erase(2000);
  EXPECT_EQ(m.find(2000), nullptr);
  EXPECT_NE(m.insert(99), nullptr);
}

// Backward-shift deletion must keep every remaining key reachable (a wrong shift loses keys
// whose probe run crossed the deleted slot, or wraps round the end of the table).
TEST(FixedMap, RandomInsertEraseMatchesStdMap) {
  FixedMap<uint64_t> m;
  ASSERT_TRUE(m.init(64));
  std::map<uint64_t, uint64_t> model;
  std::mt19937_64 rng(14);
  for (int step = 0; step < 200000; ++step) {
    const uint64_t key = rng() % 200;  // few keys: long probe runs and many collisions
    if (rng() % 2 == 0) {
      uint64_t* v = m.insert(key);
      if (model.count(key) == 0 && model.size() >= 64) {
        EXPECT_EQ(v, nullptr);
        continue;
      }
      ASSERT_NE(v, nullptr);
      *v = key * 3 + uint64_t(step);
      model[key] = *v;
    } else {
      m.erase(key);
      model.erase(key);
    }
    ASSERT_EQ(m.size(), model.size());
  }
  for (uint64_t key = 0; key < 200; ++key) {
    uint64_t* v = m.find(key);
    auto it = model.find(key);
    ASSERT_EQ(v != nullptr, it != model.end()) << key;
    if (v != nullptr) {
      EXPECT_EQ(*v, it->second);
    }
  }
}

}  // namespace
}  // namespace ferry
