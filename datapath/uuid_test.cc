// Uuid: text round trip, rejection of malformed text, random version-4 values.
#include "datapath/uuid.h"

#include <gtest/gtest.h>

namespace ferry {
namespace {

TEST(Uuid, TextRoundTripsInLowerCase) {
  auto u = Uuid::parse("0A1B2C3D-4E5F-4071-8293-A4B5C6D7E8F9");
  ASSERT_TRUE(u.has_value());
  EXPECT_EQ(u->bytes[0], 0x0a);
  EXPECT_EQ(u->bytes[15], 0xf9);
  EXPECT_EQ(u->to_string(), "0a1b2c3d-4e5f-4071-8293-a4b5c6d7e8f9");
  EXPECT_EQ(Uuid::parse(u->to_string()), u);
}

TEST(Uuid, MalformedTextIsRefused) {
  for (const char* bad :
       {"", "0a1b2c3d4e5f40718293a4b5c6d7e8f9", "0a1b2c3d-4e5f-4071-8293-a4b5c6d7e8f",
        "0a1b2c3d-4e5f-4071-8293-a4b5c6d7e8fg", "0a1b2c3d_4e5f-4071-8293-a4b5c6d7e8f9",
        "0a1b2c3d-4e5f-4071-8293-a4b5c6d7e8f9a"})
    EXPECT_FALSE(Uuid::parse(bad).has_value()) << bad;
}

TEST(Uuid, RandomIsVersion4AndDistinct) {
  const Uuid a = Uuid::random(), b = Uuid::random();
  EXPECT_NE(a, b);
  EXPECT_FALSE(a.is_nil());
  EXPECT_TRUE(Uuid{}.is_nil());
  EXPECT_EQ(a.bytes[6] >> 4, 4);
  EXPECT_EQ(a.bytes[8] & 0xc0, 0x80);
}

}  // namespace
}  // namespace ferry
