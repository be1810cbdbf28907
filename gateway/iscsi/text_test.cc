// Unit tests for the full-feature Text request responder (RFC 7143 §11.10-11): SendTargets in
// discovery and normal sessions, NotUnderstood for other keys, request text continued over
// PDUs, responses split into chunks, and the request size bound. Single-threaded, no I/O.
#include "gateway/iscsi/text.h"

#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

namespace ferry::iscsi {
namespace {

constexpr std::string_view kA = "iqn.2024-01.io.ferry:alpha";
constexpr std::string_view kB = "iqn.2024-01.io.ferry:beta";
constexpr std::string_view kC = "iqn.2024-01.io.ferry:gamma";
constexpr std::string_view kAddress = "192.0.2.1:3260,1";

PortalConfig test_portal() {
  PortalConfig p;
  p.portal_address = std::string(kAddress);
  for (auto iqn : {kA, kB, kC}) p.targets.push_back(TargetAuthConfig{std::string(iqn)});
  return p;
}

std::span<const uint8_t> bytes_of(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// Whole response in one chunk, split at NULs into "k=v" items (keys repeat, so no map).
std::vector<std::string> items_of(TextResponder& r) {
  TextChunk c = r.next_chunk(1u << 20);
  EXPECT_TRUE(c.final);
  std::vector<std::string> out;
  std::string cur;
  for (uint8_t b : c.bytes) {
    if (b == 0) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(char(b));
    }
  }
  EXPECT_TRUE(cur.empty()) << "response must end with NUL";
  return out;
}

std::vector<std::string> target_items(std::initializer_list<std::string_view> iqns) {
  std::vector<std::string> out;
  for (auto iqn : iqns) {
    out.push_back("TargetName=" + std::string(iqn));
    out.push_back("TargetAddress=" + std::string(kAddress));
  }
  return out;
}

const std::string kSendTargetsAll("SendTargets=All\0", 16);

TEST(TextResponder, SendTargetsAllInDiscoveryListsEveryTargetWithAddress) {
  const PortalConfig portal = test_portal();
  TextResponder r;
  ASSERT_EQ(r.feed(portal, "", bytes_of(kSendTargetsAll), false), Errc::ok);
  EXPECT_FALSE(r.collecting());
  EXPECT_EQ(items_of(r), target_items({kA, kB, kC}));
}

TEST(TextResponder, SendTargetsAllInNormalSessionListsOnlyItsOwnTarget) {
  const PortalConfig portal = test_portal();
  TextResponder r;
  ASSERT_EQ(r.feed(portal, kB, bytes_of(kSendTargetsAll), false), Errc::ok);
  EXPECT_EQ(items_of(r), target_items({kB}));
}

TEST(TextResponder, SendTargetsEmptyInNormalSessionListsItsOwnTarget) {
  const PortalConfig portal = test_portal();
  TextResponder r;
  ASSERT_EQ(r.feed(portal, kC, bytes_of(std::string("SendTargets=\0", 13)), false), Errc::ok);
  EXPECT_EQ(items_of(r), target_items({kC}));
}

TEST(TextResponder, SendTargetsNamedTargetListsOnlyThatTarget) {
  const PortalConfig portal = test_portal();
  TextResponder r;
  ASSERT_EQ(r.feed(portal, "", bytes_of("SendTargets=" + std::string(kB) + '\0'), false), Errc::ok);
  EXPECT_EQ(items_of(r), target_items({kB}));
}

TEST(TextResponder, SendTargetsNamingAnotherTargetFromNormalSessionListsNothing) {
  const PortalConfig portal = test_portal();
  TextResponder r;
  ASSERT_EQ(r.feed(portal, kA, bytes_of("SendTargets=" + std::string(kB) + '\0'), false), Errc::ok);
  EXPECT_TRUE(items_of(r).empty());
}

TEST(TextResponder, SendTargetsUnknownTargetListsNothing) {
  const PortalConfig portal = test_portal();
  TextResponder r;
  ASSERT_EQ(r.feed(portal, "", bytes_of(std::string("SendTargets=iqn.nope\0", 21)), false),
            Errc::ok);
  TextChunk c = r.next_chunk(8192);
  EXPECT_TRUE(c.final);
  EXPECT_TRUE(c.bytes.empty());
}

TEST(TextResponder, UnknownKeyAnsweredNotUnderstood) {
  const PortalConfig portal = test_portal();
  TextResponder r;
  ASSERT_EQ(r.feed(portal, "", bytes_of(std::string("X-com.example.Foo=1\0SendTargets=All\0", 36)),
                   false),
            Errc::ok);
  std::vector<std::string> want = {"X-com.example.Foo=NotUnderstood"};
  for (auto& s : target_items({kA, kB, kC})) want.push_back(s);
  EXPECT_EQ(items_of(r), want);
}

TEST(TextResponder, ContinuedRequestAnsweredEmptyUntilTheLastPdu) {
  const PortalConfig portal = test_portal();
  TextResponder r;
  EXPECT_TRUE(r.collecting());
  ASSERT_EQ(r.feed(portal, "", bytes_of("SendTar"), true), Errc::ok);
  EXPECT_TRUE(r.collecting());
  TextChunk empty = r.next_chunk(8192);
  EXPECT_TRUE(empty.bytes.empty());
  EXPECT_FALSE(empty.final) << "the initiator still has text to send";

  ASSERT_EQ(r.feed(portal, "", bytes_of(std::string("gets=All\0", 9)), false), Errc::ok);
  EXPECT_FALSE(r.collecting());
  EXPECT_EQ(items_of(r), target_items({kA, kB, kC}));
}

TEST(TextResponder, LongAnswerSplitIntoChunksFinalOnlyOnLast) {
  PortalConfig portal = test_portal();
  for (int i = 0; i < 100; ++i)
    portal.targets.push_back(TargetAuthConfig{"iqn.2024-01.io.ferry:volume-" + std::to_string(i)});

  TextResponder whole;
  ASSERT_EQ(whole.feed(portal, "", bytes_of(kSendTargetsAll), false), Errc::ok);
  const TextChunk all = whole.next_chunk(1u << 20);
  ASSERT_TRUE(all.final);
  const std::string expected(reinterpret_cast<const char*>(all.bytes.data()), all.bytes.size());

  constexpr uint32_t kMax = 512;
  ASSERT_GT(expected.size(), 4 * kMax);
  TextResponder r;
  ASSERT_EQ(r.feed(portal, "", bytes_of(kSendTargetsAll), false), Errc::ok);
  std::string got;
  size_t chunks = 0;
  for (;;) {
    TextChunk c = r.next_chunk(kMax);
    ++chunks;
    ASSERT_LE(chunks, expected.size() / kMax + 1);
    got.append(reinterpret_cast<const char*>(c.bytes.data()), c.bytes.size());
    if (c.final) {
      EXPECT_GT(c.bytes.size(), 0u);
      EXPECT_LE(c.bytes.size(), kMax);
      break;
    }
    EXPECT_EQ(c.bytes.size(), kMax) << "chunk " << chunks;
  }
  EXPECT_EQ(chunks, (expected.size() + kMax - 1) / kMax);
  EXPECT_EQ(got, expected);
}

TEST(TextResponder, AnswerOfExactlyMaxBytesIsOneFinalChunk) {
  const PortalConfig portal = test_portal();
  TextResponder probe;
  ASSERT_EQ(probe.feed(portal, kA, bytes_of(kSendTargetsAll), false), Errc::ok);
  const uint32_t size = uint32_t(probe.next_chunk(1u << 20).bytes.size());

  TextResponder r;
  ASSERT_EQ(r.feed(portal, kA, bytes_of(kSendTargetsAll), false), Errc::ok);
  TextChunk c = r.next_chunk(size);
  EXPECT_EQ(c.bytes.size(), size);
  EXPECT_TRUE(c.final);
}

TEST(TextResponder, OversizeRequestIsProtocolError) {
  const PortalConfig portal = test_portal();
  TextResponder r;
  const std::string big(kTextRequestMax + 1, '\0');
  EXPECT_EQ(r.feed(portal, "", bytes_of(big), false), Errc::protocol_error);
}

TEST(TextResponder, OversizeContinuedRequestIsProtocolError) {
  const PortalConfig portal = test_portal();
  TextResponder r;
  const std::string half(kTextRequestMax / 2, '\0');
  ASSERT_EQ(r.feed(portal, "", bytes_of(half), true), Errc::ok);
  ASSERT_EQ(r.feed(portal, "", bytes_of(half), true), Errc::ok);  // exactly the limit
  EXPECT_EQ(r.feed(portal, "", bytes_of(std::string(1, '\0')), false), Errc::protocol_error);
}

TEST(TextResponder, MalformedRequestIsProtocolError) {
  const PortalConfig portal = test_portal();
  TextResponder r;
  EXPECT_EQ(r.feed(portal, "", bytes_of(std::string("SendTargets\0", 12)), false),
            Errc::protocol_error);
}

TEST(TextResponder, DuplicateKeyIsProtocolError) {
  const PortalConfig portal = test_portal();
  TextResponder r;
  EXPECT_EQ(r.feed(portal, "", bytes_of(kSendTargetsAll + kSendTargetsAll), false),
            Errc::protocol_error);
}

TEST(TextResponder, FeedAfterFinalRequestIsProtocolError) {
  const PortalConfig portal = test_portal();
  TextResponder r;
  ASSERT_EQ(r.feed(portal, "", bytes_of(kSendTargetsAll), false), Errc::ok);
  EXPECT_EQ(r.feed(portal, "", bytes_of(kSendTargetsAll), false), Errc::protocol_error);
}

}  // namespace
}  // namespace ferry::iscsi
