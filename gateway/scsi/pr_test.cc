// Unit tests for persistent reservations (PERSISTENT RESERVE IN/OUT) and the conflicts they
// cause. Single-threaded.
#include <gtest/gtest.h>

#include "gateway/scsi/lu_test_util.h"

namespace ferry::scsi::testing {
namespace {

class PrTest : public LuTest {
 protected:
  void SetUp() override {
    LuTest::SetUp();
    login_both();
  }
  Reply prout(int who, uint8_t sa, uint8_t type, uint64_t key, uint64_t sa_key, uint8_t flags = 0,
              uint32_t len = 24) {
    std::vector<uint8_t> c(10, 0);
    c[0] = 0x5f;
    c[1] = sa;
    c[2] = type;
    store_be32(c.data() + 5, len);
    std::vector<uint8_t> p(24, 0);
    store_be64(p.data(), key);
    store_be64(p.data() + 8, sa_key);
    p[20] = flags;
    return run(c, p, len, &nexus_[who]);
  }
  Reply prin(int who, uint8_t sa) {
    std::vector<uint8_t> c(10, 0);
    c[0] = 0x5e;
    c[1] = sa;
    store_be16(c.data() + 7, 1024);
    return run(c, {}, 1024, &nexus_[who]);
  }
  std::vector<uint64_t> keys(int who) {
    Reply r = prin(who, 0);
    std::vector<uint64_t> k;
    const uint32_t n = load_be32(r.data.data() + 4);
    for (uint32_t i = 0; i < n; i += 8) k.push_back(load_be64(r.data.data() + 8 + i));
    return k;
  }
  bool conflict(const Reply& r) { return r.status == Status::reservation_conflict; }
};

TEST_F(PrTest, RegisterReadKeysAndUnregister) {
  EXPECT_TRUE(prout(0, 0, 0, 0, 0xa).good());
  EXPECT_TRUE(prout(1, 0, 0, 0, 0xb).good());
  EXPECT_EQ(keys(0), (std::vector<uint64_t>{0xa, 0xb}));
  EXPECT_TRUE(conflict(prout(0, 0, 0, 0x99, 0xc)));  // wrong key
  EXPECT_TRUE(prout(0, 6, 0, 0x99, 0xc).good());     // ignore existing key
  EXPECT_TRUE(prout(0, 0, 0, 0xc, 0).good());        // unregister
  EXPECT_EQ(keys(0), (std::vector<uint64_t>{0xb}));
  EXPECT_EQ(load_be32(prin(0, 0).data.data()), 4u);  // generation
}

TEST_F(PrTest, ReserveWriteExclusiveBlocksOtherWriters) {
  EXPECT_TRUE(prout(0, 0, 0, 0, 0xa).good());
  EXPECT_TRUE(prout(0, 1, 1, 0xa, 0).good());
  Reply r = prin(1, 1);
  ASSERT_TRUE(r.good());
  EXPECT_EQ(load_be32(r.data.data() + 4), 16u);
  EXPECT_EQ(load_be64(r.data.data() + 8), 0xau);
  EXPECT_EQ(r.data[8 + 13], 1);
  EXPECT_TRUE(read(0, 1, &nexus_[1]).good());
  EXPECT_TRUE(conflict(write(0, pattern(1, 1), &nexus_[1])));
  EXPECT_TRUE(write(0, pattern(1, 1), &nexus_[0]).good());
  EXPECT_TRUE(conflict(prout(1, 1, 1, 0, 0)));  // not registered
}

TEST_F(PrTest, ExclusiveAccessBlocksReads) {
  EXPECT_TRUE(prout(0, 0, 0, 0, 0xa).good());
  EXPECT_TRUE(prout(0, 1, 3, 0xa, 0).good());
  EXPECT_TRUE(conflict(read(0, 1, &nexus_[1])));
  EXPECT_TRUE(run(cdb({0x12, 0, 0, 0, 36, 0}), {}, 36, &nexus_[1]).good());
  EXPECT_TRUE(run(cdb({0, 0, 0, 0, 0, 0}), {}, 0, &nexus_[1]).good());
}

TEST_F(PrTest, RegistrantsOnlyGivesRegistrantsAccess) {
  EXPECT_TRUE(prout(0, 0, 0, 0, 0xa).good());
  EXPECT_TRUE(prout(0, 1, 6, 0xa, 0).good());
  EXPECT_TRUE(conflict(read(0, 1, &nexus_[1])));
  EXPECT_TRUE(prout(1, 0, 0, 0, 0xb).good());
  EXPECT_TRUE(write(0, pattern(1, 1), &nexus_[1]).good());
}

TEST_F(PrTest, ReleaseWithWrongTypeIsInvalidRelease) {
  EXPECT_TRUE(prout(0, 0, 0, 0, 0xa).good());
  EXPECT_TRUE(prout(0, 1, 1, 0xa, 0).good());
  EXPECT_TRUE(prout(0, 2, 3, 0xa, 0).check(5, 0x26, 0x04));
  EXPECT_TRUE(prout(0, 2, 1, 0xa, 0).good());
  EXPECT_EQ(load_be32(prin(0, 1).data.data() + 4), 0u);
}

TEST_F(PrTest, ReleaseOfRegistrantsOnlyNotifiesRegistrants) {
  EXPECT_TRUE(prout(0, 0, 0, 0, 0xa).good());
  EXPECT_TRUE(prout(1, 0, 0, 0, 0xb).good());
  EXPECT_TRUE(prout(0, 1, 5, 0xa, 0).good());
  EXPECT_TRUE(prout(0, 2, 5, 0xa, 0).good());
  EXPECT_TRUE(run(cdb({0, 0, 0, 0, 0, 0}), {}, 0, &nexus_[1]).check(6, 0x2a, 0x04));
}

TEST_F(PrTest, PreemptRemovesHolderAndTakesReservation) {
  EXPECT_TRUE(prout(0, 0, 0, 0, 0xa).good());
  EXPECT_TRUE(prout(1, 0, 0, 0, 0xb).good());
  EXPECT_TRUE(prout(0, 1, 1, 0xa, 0).good());
  EXPECT_TRUE(prout(1, 4, 3, 0xb, 0xa).good());
  EXPECT_EQ(keys(1), (std::vector<uint64_t>{0xb}));
  Reply r = prin(1, 1);
  EXPECT_EQ(load_be64(r.data.data() + 8), 0xbu);
  EXPECT_EQ(r.data[8 + 13], 3);
  EXPECT_TRUE(run(cdb({0, 0, 0, 0, 0, 0}), {}, 0, &nexus_[0]).check(6, 0x2a, 0x05));
  EXPECT_TRUE(conflict(read(0, 1, &nexus_[0])));
  EXPECT_TRUE(conflict(prout(1, 4, 3, 0xb, 0x77)));  // no such key
}

TEST_F(PrTest, PreemptAllRegistrantsWithZeroKey) {
  EXPECT_TRUE(prout(0, 0, 0, 0, 0xa).good());
  EXPECT_TRUE(prout(1, 0, 0, 0, 0xb).good());
  EXPECT_TRUE(prout(0, 1, 7, 0xa, 0).good());
  EXPECT_EQ(prin(0, 1).data[8 + 13], 7);
  EXPECT_TRUE(prout(1, 5, 1, 0xb, 0).good());  // PREEMPT AND ABORT
  EXPECT_EQ(keys(1), (std::vector<uint64_t>{0xb}));
  EXPECT_EQ(prin(1, 1).data[8 + 13], 1);
}

TEST_F(PrTest, ClearRemovesEverything) {
  EXPECT_TRUE(prout(0, 0, 0, 0, 0xa).good());
  EXPECT_TRUE(prout(1, 0, 0, 0, 0xb).good());
  EXPECT_TRUE(prout(0, 1, 3, 0xa, 0).good());
  EXPECT_TRUE(prout(0, 3, 0, 0xa, 0).good());
  EXPECT_TRUE(keys(0).empty());
  EXPECT_TRUE(run(cdb({0, 0, 0, 0, 0, 0}), {}, 0, &nexus_[1]).check(6, 0x2a, 0x03));
  EXPECT_TRUE(read(0, 1, &nexus_[1]).good());
}

TEST_F(PrTest, UnregisterHolderReleases) {
  EXPECT_TRUE(prout(0, 0, 0, 0, 0xa).good());
  EXPECT_TRUE(prout(0, 1, 3, 0xa, 0).good());
  EXPECT_TRUE(prout(0, 0, 0, 0xa, 0).good());
  EXPECT_TRUE(read(0, 1, &nexus_[1]).good());
}

TEST_F(PrTest, ParameterErrors) {
  EXPECT_TRUE(prout(0, 0, 0, 0, 0xa, 0x01).check(5, 0x26, 0));  // APTPL
  EXPECT_TRUE(prout(0, 0, 0, 0, 0xa, 0x08).check(5, 0x26, 0));  // SPEC_I_PT
  EXPECT_TRUE(prout(0, 0, 0, 0, 0xa, 0, 20).check(5, 0x1a, 0));
  EXPECT_TRUE(prout(0, 0, 0, 0, 0xa).good());
  EXPECT_TRUE(prout(0, 1, 2, 0xa, 0).check(5, 0x24, 0));     // type 2 is not a type
  EXPECT_TRUE(prout(0, 1, 0x11, 0xa, 0).check(5, 0x24, 0));  // scope
}

TEST_F(PrTest, ReportCapabilitiesAndFullStatus) {
  Reply r = prin(0, 2);
  ASSERT_TRUE(r.good());
  EXPECT_EQ(load_be16(r.data.data()), 8);
  EXPECT_EQ(r.data[3] & 0x80, 0x80);
  EXPECT_EQ(r.data[4], 0xea);
  EXPECT_EQ(r.data[5], 0x01);
  EXPECT_TRUE(prout(0, 0, 0, 0, 0xa).good());
  EXPECT_TRUE(prout(0, 1, 1, 0xa, 0).good());
  r = prin(0, 3);
  ASSERT_TRUE(r.good());
  EXPECT_EQ(load_be64(r.data.data() + 8), 0xau);
  EXPECT_EQ(r.data[8 + 12], 0x01);
  EXPECT_EQ(r.data[8 + 24], 0x45);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(r.data.data() + 8 + 28)), names_[0]);
}

TEST_F(PrTest, Reserve6ConflictsWithPersistentReservation) {
  EXPECT_TRUE(prout(0, 0, 0, 0, 0xa).good());
  EXPECT_TRUE(prout(0, 1, 1, 0xa, 0).good());
  EXPECT_TRUE(conflict(run(cdb({0x16, 0, 0, 0, 0, 0}), {}, 0, &nexus_[1])));
}

}  // namespace
}  // namespace ferry::scsi::testing
