// Unit tests for the iSCSI key=value text codec (RFC 7143 §6.1): NUL framing, padding, syntax
// and length limits, duplicate keys. Single-threaded, no I/O.
#include "gateway/iscsi/text_kv.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace ferry::iscsi {
namespace {

TextParse parse(const std::string& text, std::vector<KeyValue>& out) {
  return parse_text_pairs({reinterpret_cast<const uint8_t*>(text.data()), text.size()}, out);
}

TEST(TextKv, PairsWithTrailingNul) {
  std::vector<KeyValue> kv;
  ASSERT_EQ(parse(std::string("HeaderDigest=None\0MaxBurstLength=262144\0", 40), kv),
            TextParse::ok);
  ASSERT_EQ(kv.size(), 2u);
  EXPECT_EQ(kv[0].key, "HeaderDigest");
  EXPECT_EQ(kv[0].value, "None");
  EXPECT_EQ(kv[1].key, "MaxBurstLength");
  EXPECT_EQ(kv[1].value, "262144");
}

TEST(TextKv, LastPairWithoutTrailingNulAccepted) {
  std::vector<KeyValue> kv;
  ASSERT_EQ(parse(std::string("a=1\0b=2", 7), kv), TextParse::ok);
  ASSERT_EQ(kv.size(), 2u);
  EXPECT_EQ(kv[1].key, "b");
  EXPECT_EQ(kv[1].value, "2");
}

TEST(TextKv, PaddingNulsSkipped) {
  std::vector<KeyValue> kv;
  ASSERT_EQ(parse(std::string("a=1\0\0\0\0", 7), kv), TextParse::ok);
  ASSERT_EQ(kv.size(), 1u);
  kv.clear();
  ASSERT_EQ(parse(std::string("\0\0a=1\0\0b=2\0\0", 12), kv), TextParse::ok);
  EXPECT_EQ(kv.size(), 2u);
}

TEST(TextKv, EmptyAndAllNulSegmentsYieldNoPairs) {
  std::vector<KeyValue> kv;
  EXPECT_EQ(parse("", kv), TextParse::ok);
  EXPECT_EQ(parse(std::string(4, '\0'), kv), TextParse::ok);
  EXPECT_TRUE(kv.empty());
}

TEST(TextKv, EmptyValueAndValueWithEqualsSignAccepted) {
  std::vector<KeyValue> kv;
  ASSERT_EQ(parse(std::string("SendTargets=\0X-a=b=c\0", 21), kv), TextParse::ok);
  ASSERT_EQ(kv.size(), 2u);
  EXPECT_EQ(kv[0].value, "");
  EXPECT_EQ(kv[1].key, "X-a");
  EXPECT_EQ(kv[1].value, "b=c");
}

TEST(TextKv, MissingEqualsSignIsBadSyntax) {
  std::vector<KeyValue> kv;
  EXPECT_EQ(parse(std::string("HeaderDigest\0", 13), kv), TextParse::bad_syntax);
  kv.clear();
  EXPECT_EQ(parse(std::string("a=1\0junk", 8), kv), TextParse::bad_syntax);
}

TEST(TextKv, EmptyKeyIsBadSyntax) {
  std::vector<KeyValue> kv;
  EXPECT_EQ(parse(std::string("=value\0", 7), kv), TextParse::bad_syntax);
}

TEST(TextKv, BadKeyCharacterIsBadSyntax) {
  // "a\377b=1": byte 0xff in the key (an octal escape ends after three digits).
  for (const char* bad : {"a b=1", "a/b=1", "a:b=1", "a\377b=1", "a\tb=1", "a*=1"}) {
    std::vector<KeyValue> kv;
    EXPECT_EQ(parse(bad, kv), TextParse::bad_syntax) << bad;
  }
}

TEST(TextKv, AllowedKeyCharactersAccepted) {
  std::vector<KeyValue> kv;
  ASSERT_EQ(parse("X-com.example_Key+v1@host=1", kv), TextParse::ok);
  EXPECT_EQ(kv[0].key, "X-com.example_Key+v1@host");
}

TEST(TextKv, KeyLongerThan63IsTooLong) {
  std::vector<KeyValue> kv;
  EXPECT_EQ(parse(std::string(kKeyNameMax, 'k') + "=v", kv), TextParse::ok);
  kv.clear();
  EXPECT_EQ(parse(std::string(kKeyNameMax + 1, 'k') + "=v", kv), TextParse::too_long);
}

TEST(TextKv, ValueLongerThanLimitIsTooLong) {
  std::vector<KeyValue> kv;
  EXPECT_EQ(parse("k=" + std::string(kTextValueMax, 'v'), kv), TextParse::ok);
  EXPECT_EQ(kv[0].value.size(), kTextValueMax);
  kv.clear();
  EXPECT_EQ(parse("k=" + std::string(kTextValueMax + 1, 'v'), kv), TextParse::too_long);
}

TEST(TextKv, DuplicateKeyReported) {
  std::vector<KeyValue> kv;
  EXPECT_EQ(parse(std::string("a=1\0b=2\0a=3\0", 12), kv), TextParse::duplicate_key);
}

TEST(TextKv, KeysAreCaseSensitiveSoDifferentCaseIsNoDuplicate) {
  std::vector<KeyValue> kv;
  EXPECT_EQ(parse(std::string("a=1\0A=1\0", 8), kv), TextParse::ok);
  EXPECT_EQ(kv.size(), 2u);
}

TEST(TextKv, AppendPairWritesNulTerminatedPairThatParsesBack) {
  std::string out;
  append_pair(out, "TargetName", "iqn.2024-01.io.ferry:t");
  append_pair(out, "Empty", "");
  EXPECT_EQ(out, std::string("TargetName=iqn.2024-01.io.ferry:t\0Empty=\0", 41));
  std::vector<KeyValue> kv;
  ASSERT_EQ(parse(out, kv), TextParse::ok);
  ASSERT_EQ(kv.size(), 2u);
  EXPECT_EQ(kv[0].value, "iqn.2024-01.io.ferry:t");
  EXPECT_EQ(kv[1].key, "Empty");
}

}  // namespace
}  // namespace ferry::iscsi
