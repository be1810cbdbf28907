// Unit tests for the CHAP helpers: the RFC 1994 MD5 response checked against an independent
// OpenSSL EVP digest and a fixed vector, and the iSCSI binary value encodings (hex, base64) that
// carry CHAP_C/CHAP_R. Single-threaded, no I/O.
#include "gateway/iscsi/chap.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <cstdint>
#include <string>
#include <vector>

namespace ferry::iscsi {
namespace {

// MD5(id || secret || challenge) computed directly with EVP, independent of chap.cc.
std::array<uint8_t, 16> evp_md5(uint8_t id, const std::string& secret,
                                const std::vector<uint8_t>& challenge) {
  std::vector<uint8_t> msg;
  msg.push_back(id);
  msg.insert(msg.end(), secret.begin(), secret.end());
  msg.insert(msg.end(), challenge.begin(), challenge.end());
  std::array<uint8_t, 16> out{};
  unsigned len = 0;
  EXPECT_EQ(EVP_Digest(msg.data(), msg.size(), out.data(), &len, EVP_md5(), nullptr), 1);
  EXPECT_EQ(len, 16u);
  return out;
}

std::vector<uint8_t> bytes(std::initializer_list<int> v) {
  std::vector<uint8_t> out;
  for (int b : v) out.push_back(uint8_t(b));
  return out;
}

std::vector<uint8_t> iota_bytes(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = uint8_t(i);
  return v;
}

// ---- MD5 response ----

TEST(ChapMd5, ResponseIsMd5OfIdSecretChallenge) {
  const std::vector<uint8_t> challenge = bytes({0xde, 0xad, 0xbe, 0xef, 0x00, 0x01, 0x02, 0xff});
  for (int id : {0, 1, 0x7f, 0xff}) {
    const auto got = chap_md5_response(uint8_t(id), "target-secret-12", challenge);
    EXPECT_EQ(got, evp_md5(uint8_t(id), "target-secret-12", challenge)) << "id " << id;
  }
}

TEST(ChapMd5, MatchesFixedVector) {
  // python3: hashlib.md5(bytes([0x2a]) + b'sixteen-byte-sec' + bytes(range(16))).hexdigest()
  const auto got = chap_md5_response(0x2a, "sixteen-byte-sec", iota_bytes(16));
  EXPECT_EQ(encode_hex_value(got.data(), got.size()), "0x7b20996f32d3fef2afbe21bfce6d172f");
}

TEST(ChapMd5, EmptySecretAndChallengeStillHashTheIdentifier) {
  // python3: hashlib.md5(bytes([0])).hexdigest()
  const auto got = chap_md5_response(0, "", {});
  EXPECT_EQ(encode_hex_value(got.data(), got.size()), "0x93b885adfe0da089cdf634904fd59f71");
}

TEST(ChapMd5, IdentifierSecretAndChallengeEachChangeTheResponse) {
  const auto base = chap_md5_response(1, "secret", iota_bytes(16));
  EXPECT_NE(base, chap_md5_response(2, "secret", iota_bytes(16)));
  EXPECT_NE(base, chap_md5_response(1, "secreT", iota_bytes(16)));
  EXPECT_NE(base, chap_md5_response(1, "secret", iota_bytes(15)));
}

// ---- hex ----

TEST(ChapDecode, HexLowerAndUpperCase) {
  EXPECT_EQ(decode_binary_value("0x00ff7a"), bytes({0x00, 0xff, 0x7a}));
  EXPECT_EQ(decode_binary_value("0XABcdEf"), bytes({0xab, 0xcd, 0xef}));
}

TEST(ChapDecode, HexOddLengthTakesLeadingNibble) {
  // A hex-constant is a base-16 number: 0xabc == 0x0abc.
  EXPECT_EQ(decode_binary_value("0xabc"), bytes({0x0a, 0xbc}));
  EXPECT_EQ(decode_binary_value("0x7"), bytes({0x07}));
}

TEST(ChapDecode, HexBadCharacterRejected) {
  EXPECT_FALSE(decode_binary_value("0x0g"));
  EXPECT_FALSE(decode_binary_value("0xg"));    // odd length, bad leading nibble
  EXPECT_FALSE(decode_binary_value("0xa g"));  // odd length, bad pair
  EXPECT_FALSE(decode_binary_value("0x12 4"));
  EXPECT_FALSE(decode_binary_value("0x-1"));
}

TEST(ChapDecode, HexUpToLimitAcceptedOneByteMoreRejected) {
  const std::string max = "0x" + std::string(2 * kChapBinaryMax, 'a');
  auto v = decode_binary_value(max);
  ASSERT_TRUE(v);
  EXPECT_EQ(v->size(), kChapBinaryMax);
  EXPECT_FALSE(decode_binary_value(max + "aa"));
  EXPECT_FALSE(decode_binary_value(max + "a"));  // odd: one nibble over
}

// ---- base64 ----

TEST(ChapDecode, Base64WithoutPadding) {
  EXPECT_EQ(decode_binary_value("0bAAEC"), bytes({0x00, 0x01, 0x02}));
  EXPECT_EQ(decode_binary_value("0B+/+/"), bytes({0xfb, 0xff, 0xbf}));
}

TEST(ChapDecode, Base64PaddingDropsBytes) {
  EXPECT_EQ(decode_binary_value("0bAQ=="), bytes({0x01}));
  EXPECT_EQ(decode_binary_value("0bAQI="), bytes({0x01, 0x02}));
  EXPECT_EQ(decode_binary_value("0bAAECAw=="), bytes({0x00, 0x01, 0x02, 0x03}));
}

TEST(ChapDecode, Base64BadPaddingRejected) {
  EXPECT_FALSE(decode_binary_value("0bA==="));      // pad in the second position
  EXPECT_FALSE(decode_binary_value("0bAQ=A"));      // data after pad
  EXPECT_FALSE(decode_binary_value("0bAQ==AAEC"));  // pad before the last quantum
  EXPECT_FALSE(decode_binary_value("0bAQ="));       // not a multiple of 4
  EXPECT_FALSE(decode_binary_value("0bAQ"));
  EXPECT_FALSE(decode_binary_value("0b===="));
}

TEST(ChapDecode, Base64BadCharacterRejected) {
  EXPECT_FALSE(decode_binary_value("0bAA-C"));
  EXPECT_FALSE(decode_binary_value("0bAA C"));
  EXPECT_FALSE(decode_binary_value("0bAA_C"));
}

TEST(ChapDecode, Base64UpToLimitAcceptedOneByteMoreRejected) {
  // 1024 bytes = 341 full quanta + one quantum with "==".
  const std::string max = "0b" + std::string(341 * 4, 'A') + "AA==";
  auto v = decode_binary_value(max);
  ASSERT_TRUE(v);
  EXPECT_EQ(v->size(), kChapBinaryMax);
  EXPECT_FALSE(decode_binary_value("0b" + std::string(341 * 4, 'A') + "AAA="));  // 1025
  EXPECT_FALSE(decode_binary_value("0b" + std::string(342 * 4, 'A')));           // 1026
  EXPECT_FALSE(decode_binary_value("0b" + std::string(400 * 4, 'A')));
}

// ---- shape ----

TEST(ChapDecode, EmptyOrPrefixOnlyRejected) {
  EXPECT_FALSE(decode_binary_value(""));
  EXPECT_FALSE(decode_binary_value("0"));
  EXPECT_FALSE(decode_binary_value("0x"));
  EXPECT_FALSE(decode_binary_value("0b"));
}

TEST(ChapDecode, MissingOrUnknownPrefixRejected) {
  EXPECT_FALSE(decode_binary_value("abcd"));
  EXPECT_FALSE(decode_binary_value("1x12"));
  EXPECT_FALSE(decode_binary_value("0z12"));
  EXPECT_FALSE(decode_binary_value("0o12"));
}

// ---- encode ----

TEST(ChapEncode, HexIsLowercaseWithPrefix) {
  const auto b = bytes({0x00, 0x0f, 0xa0, 0xff, 0x5c});
  EXPECT_EQ(encode_hex_value(b.data(), b.size()), "0x000fa0ff5c");
  EXPECT_EQ(encode_hex_value(nullptr, 0), "0x");
}

TEST(ChapEncode, HexRoundTripsThroughDecode) {
  std::vector<uint8_t> all(256);
  for (size_t i = 0; i < all.size(); ++i) all[i] = uint8_t(255 - i);
  EXPECT_EQ(decode_binary_value(encode_hex_value(all.data(), all.size())), all);
}

// ---- helpers ----

TEST(ChapRandom, ChallengeHasFixedSizeAndVaries) {
  std::vector<uint8_t> a, b;
  uint8_t ida = 0, idb = 0;
  ASSERT_TRUE(random_challenge(a, ida));
  ASSERT_TRUE(random_challenge(b, idb));
  EXPECT_EQ(a.size(), kChapChallengeBytes);
  EXPECT_EQ(b.size(), kChapChallengeBytes);
  EXPECT_NE(a, b);  // 2^-128 chance of a false failure
}

TEST(ChapBytesEqual, ComparesContent) {
  const auto a = bytes({1, 2, 3});
  const auto b = bytes({1, 2, 4});
  EXPECT_TRUE(bytes_equal(a.data(), a.data(), 3));
  EXPECT_FALSE(bytes_equal(a.data(), b.data(), 3));
  EXPECT_TRUE(bytes_equal(a.data(), b.data(), 2));
}

}  // namespace
}  // namespace ferry::iscsi
