// Unit tests for the login negotiator: login request PDUs built by hand (BHS + text), replies
// decoded and checked against RFC 7143 §6, §11.12-13 and §13 — stage transitions, operational
// negotiation results, login status codes, continued text, and CHAP (one-way and mutual) with
// the responses computed here with OpenSSL EVP, and the failed-authentication back-off (with a
// simulated clock). Single-threaded, no I/O.
#include "gateway/iscsi/login.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <cstring>
#include <initializer_list>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "datapath/endian.h"
#include "gateway/iscsi/text_kv.h"

namespace ferry::iscsi {
namespace {

constexpr uint8_t kT = 0x80;  // Transit
constexpr uint8_t kC = 0x40;  // Continue
constexpr uint8_t kSecurity = 0;
constexpr uint8_t kOperational = 1;
constexpr uint8_t kFullFeature = 3;

constexpr std::string_view kInitiator = "iqn.2024-01.io.ferry.test:initiator";
constexpr std::string_view kOpenIqn = "iqn.2024-01.io.ferry:open";
constexpr std::string_view kChapIqn = "iqn.2024-01.io.ferry:chap";
constexpr std::string_view kMutualIqn = "iqn.2024-01.io.ferry:mutual";
constexpr const char* kChapUser = "initiator-user";
constexpr const char* kChapSecret = "initiator-secret";
constexpr const char* kMutualUser = "target-user";
constexpr const char* kMutualSecret = "target-secret-16";

constexpr uint8_t kIsid[6] = {0x80, 0x12, 0x34, 0x56, 0x00, 0x01};

uint8_t stages(uint8_t csg, uint8_t nsg) { return uint8_t(csg << 2 | nsg); }

// A login request BHS: byte 1 = T|C|CSG<<2|NSG, version max/min 0, ISID 8..13, TSIH 14..15 = 0,
// ITT 16..19.
Bhs login_bhs(uint8_t flags, uint32_t itt) {
  Bhs h;
  h.clear();
  h.b[0] = 0x40 | uint8_t(Opcode::login_request);  // immediate
  h.b[1] = flags;
  std::memcpy(h.b + 8, kIsid, sizeof kIsid);
  h.set_itt(itt);
  return h;
}

// "k=v\0k=v\0..." from ready-made "k=v" items.
std::string text(std::initializer_list<std::string_view> items) {
  std::string out;
  for (auto item : items) {
    out.append(item);
    out.push_back('\0');
  }
  return out;
}

std::string pair(std::string_view k, std::string_view v) {
  return std::string(k) + "=" + std::string(v);
}

std::string hex(const uint8_t* b, size_t n) {
  static const char* kHex = "0123456789abcdef";
  std::string s = "0x";
  for (size_t i = 0; i < n; ++i) {
    s.push_back(kHex[b[i] >> 4]);
    s.push_back(kHex[b[i] & 15]);
  }
  return s;
}

std::vector<uint8_t> unhex(std::string_view s) {
  std::vector<uint8_t> out;
  EXPECT_TRUE(s.starts_with("0x") && s.size() % 2 == 0) << s;
  if (!s.starts_with("0x") || s.size() % 2 != 0) return out;
  for (size_t i = 2; i + 1 < s.size(); i += 2)
    out.push_back(uint8_t(std::stoi(std::string(s.substr(i, 2)), nullptr, 16)));
  return out;
}

// MD5(id || secret || challenge), independent of chap.cc.
std::string chap_response(uint8_t id, std::string_view secret, const std::vector<uint8_t>& c) {
  std::vector<uint8_t> msg{id};
  msg.insert(msg.end(), secret.begin(), secret.end());
  msg.insert(msg.end(), c.begin(), c.end());
  uint8_t md[16];
  unsigned len = 0;
  EXPECT_EQ(EVP_Digest(msg.data(), msg.size(), md, &len, EVP_md5(), nullptr), 1);
  return hex(md, sizeof md);
}

PortalConfig test_portal() {
  PortalConfig p;
  p.portal_address = "192.0.2.1:3260,7";
  p.target_portal_group_tag = 7;
  p.max_recv_data_segment_length = 65536;
  p.targets.push_back(TargetAuthConfig{std::string(kOpenIqn), "open", "", "", "", ""});
  p.targets.push_back(
      TargetAuthConfig{std::string(kChapIqn), "chap", kChapUser, kChapSecret, "", ""});
  p.targets.push_back(TargetAuthConfig{std::string(kMutualIqn), "mutual", kChapUser, kChapSecret,
                                       kMutualUser, kMutualSecret});
  return p;
}

class LoginTest : public ::testing::Test {
 protected:
  LoginStep send(const Bhs& h, const std::string& data) {
    reply_ = LoginReply{};
    return login_.on_request(h, {reinterpret_cast<const uint8_t*>(data.data()), data.size()},
                             reply_);
  }
  LoginStep send(uint8_t flags, const std::string& data) {
    return send(login_bhs(flags, ++itt_), data);
  }

  // The first request of a normal session to `iqn`, followed by `more`.
  std::string first_text(std::string_view iqn, std::initializer_list<std::string_view> more = {}) {
    std::string t =
        text({pair("InitiatorName", kInitiator), pair("TargetName", iqn), "SessionType=Normal"});
    return t + text(more);
  }

  std::map<std::string, std::string> reply_keys() const {
    std::vector<KeyValue> kv;
    EXPECT_EQ(parse_text_pairs({reply_.data.data(), reply_.data_length}, kv), TextParse::ok);
    std::map<std::string, std::string> m;
    for (auto& p : kv) m[p.key] = p.value;
    return m;
  }
  std::string reply_value(const std::string& key) const {
    auto m = reply_keys();
    auto it = m.find(key);
    return it == m.end() ? "<absent>" : it->second;
  }
  uint16_t status() const { return uint16_t(reply_.bhs.b[36] << 8 | reply_.bhs.b[37]); }

  // Normal session to kOpenIqn, CSG 1 → NSG 3 with `keys`; expects completion.
  void negotiate(std::initializer_list<std::string_view> keys) {
    ASSERT_EQ(send(kT | stages(kOperational, kFullFeature), first_text(kOpenIqn, keys)),
              LoginStep::login_complete)
        << login_.failure_reason();
  }

  // Security stage up to the CHAP challenge on `iqn`; returns the target's CHAP_I and CHAP_C.
  void chap_until_challenge(std::string_view iqn, uint8_t& id, std::vector<uint8_t>& challenge) {
    ASSERT_EQ(send(kT | stages(kSecurity, kOperational), first_text(iqn, {"AuthMethod=CHAP,None"})),
              LoginStep::continue_login);
    EXPECT_EQ(reply_value("AuthMethod"), "CHAP");
    EXPECT_EQ(reply_.bhs.flags() & kT, 0) << "must not transit before authentication";
    ASSERT_EQ(send(kT | stages(kSecurity, kOperational), text({"CHAP_A=5"})),
              LoginStep::continue_login);
    auto m = reply_keys();
    EXPECT_EQ(m["CHAP_A"], "5");
    ASSERT_TRUE(m.count("CHAP_I") && m.count("CHAP_C"));
    const int i = std::stoi(m["CHAP_I"]);
    ASSERT_GE(i, 0);
    ASSERT_LE(i, 255);
    id = uint8_t(i);
    challenge = unhex(m["CHAP_C"]);
    ASSERT_EQ(challenge.size(), 16u);
  }

  PortalConfig portal_ = test_portal();
  LoginNegotiator login_{portal_};
  LoginReply reply_;
  uint32_t itt_ = 0x100;
};

// ---- normal login ----

TEST_F(LoginTest, NormalSessionStraightToFullFeatureCompletes) {
  ASSERT_EQ(
      send(login_bhs(kT | stages(kOperational, kFullFeature), 0xabcd1234), first_text(kOpenIqn)),
      LoginStep::login_complete);
  EXPECT_EQ(reply_.bhs.opcode(), Opcode::login_response);
  EXPECT_EQ(reply_.bhs.flags(), kT | stages(kOperational, kFullFeature));
  EXPECT_EQ(std::memcmp(reply_.bhs.b + 8, kIsid, 6), 0);
  EXPECT_EQ(reply_.bhs.itt(), 0xabcd1234u);
  EXPECT_EQ(status(), 0x0000);
  EXPECT_EQ(reply_value("TargetPortalGroupTag"), "7");
  EXPECT_EQ(reply_value("MaxRecvDataSegmentLength"), "65536");
  EXPECT_EQ(login_.failure_reason(), nullptr);
  const SessionParams& p = login_.params();
  EXPECT_EQ(p.session_type, SessionType::normal);
  EXPECT_EQ(p.initiator_name, kInitiator);
  EXPECT_EQ(p.target_name, kOpenIqn);
  EXPECT_EQ(p.target_max_recv_data_segment_length, 65536u);
}

TEST_F(LoginTest, SecurityThenOperationalWithoutChapCompletes) {
  ASSERT_EQ(send(kT | stages(kSecurity, kOperational), first_text(kOpenIqn, {"AuthMethod=None"})),
            LoginStep::continue_login);
  EXPECT_EQ(reply_value("AuthMethod"), "None");
  EXPECT_EQ(reply_.bhs.flags(), kT | stages(kSecurity, kOperational));
  ASSERT_EQ(send(kT | stages(kOperational, kFullFeature), text({"HeaderDigest=None"})),
            LoginStep::login_complete);
  EXPECT_EQ(reply_value("TargetPortalGroupTag"), "<absent>") << "sent once, in the first reply";
}

TEST_F(LoginTest, StayingInOperationalStageContinuesWithoutTransit) {
  ASSERT_EQ(send(stages(kOperational, 0), first_text(kOpenIqn, {"MaxBurstLength=65536"})),
            LoginStep::continue_login);
  EXPECT_EQ(reply_.bhs.flags(), stages(kOperational, 0));
  EXPECT_EQ(reply_value("MaxBurstLength"), "65536");
  ASSERT_EQ(send(kT | stages(kOperational, kFullFeature), ""), LoginStep::login_complete);
}

TEST_F(LoginTest, InitiatorMaxRecvDataSegmentLengthIsDeclarative) {
  negotiate({"MaxRecvDataSegmentLength=4096"});
  EXPECT_EQ(login_.params().initiator_max_recv_data_segment_length, 4096u);
  EXPECT_EQ(reply_value("MaxRecvDataSegmentLength"), "65536") << "ours, not an echo";
}

// ---- operational negotiation ----

TEST_F(LoginTest, HeaderDigestPicksFirstSupportedOfInitiatorList) {
  negotiate({"HeaderDigest=CRC32C,None", "DataDigest=None,CRC32C"});
  EXPECT_EQ(reply_value("HeaderDigest"), "CRC32C");
  EXPECT_EQ(reply_value("DataDigest"), "None");
  EXPECT_TRUE(login_.params().header_digest);
  EXPECT_FALSE(login_.params().data_digest);
}

TEST_F(LoginTest, UnsupportedDigestRejected) {
  negotiate({"HeaderDigest=MD5", "DataDigest=X-foo,CRC32C"});
  EXPECT_EQ(reply_value("HeaderDigest"), "Reject");
  EXPECT_EQ(reply_value("DataDigest"), "CRC32C");
  EXPECT_FALSE(login_.params().header_digest);
  EXPECT_TRUE(login_.params().data_digest);
}

TEST_F(LoginTest, MaxBurstLengthIsMinimumOfOfferAndTargetLimit) {
  portal_.max_burst_length_max = 1 << 20;
  negotiate({"MaxBurstLength=4194304"});
  EXPECT_EQ(reply_value("MaxBurstLength"), "1048576");
  EXPECT_EQ(login_.params().max_burst_length, 1u << 20);
}

TEST_F(LoginTest, MaxBurstLengthBelowTargetLimitKeptAsOffered) {
  negotiate({"MaxBurstLength=131072"});
  EXPECT_EQ(reply_value("MaxBurstLength"), "131072");
  EXPECT_EQ(login_.params().max_burst_length, 131072u);
}

TEST_F(LoginTest, FirstBurstLengthClampedToTargetLimit) {
  negotiate({"MaxBurstLength=4194304", "FirstBurstLength=1048576"});
  EXPECT_EQ(reply_value("FirstBurstLength"), "262144");
  EXPECT_EQ(login_.params().first_burst_length, 262144u);
}

// Regression: with a MaxBurstLength cap below FirstBurstLength's, the target answered
// FirstBurstLength above the MaxBurstLength it answered, then silently used a smaller value, so
// the initiator would send more unsolicited data than the target accepts.
TEST_F(LoginTest, FirstBurstLengthAnswerNeverExceedsMaxBurstLengthAnswer) {
  portal_.max_burst_length_max = 65536;
  negotiate({"MaxBurstLength=262144", "FirstBurstLength=131072"});
  EXPECT_EQ(reply_value("MaxBurstLength"), "65536");
  EXPECT_EQ(reply_value("FirstBurstLength"), "65536");
  EXPECT_EQ(login_.params().first_burst_length, 65536u);
}

TEST_F(LoginTest, FirstBurstLengthBeforeMaxBurstLengthStillConsistent) {
  portal_.max_burst_length_max = 65536;
  negotiate({"FirstBurstLength=131072", "MaxBurstLength=262144"});
  EXPECT_EQ(reply_value("FirstBurstLength"), std::to_string(login_.params().first_burst_length));
  EXPECT_EQ(reply_value("MaxBurstLength"), std::to_string(login_.params().max_burst_length));
  EXPECT_LE(login_.params().first_burst_length, login_.params().max_burst_length);
}

TEST_F(LoginTest, InitialR2TIsOrSoInitiatorChoiceStands) {
  negotiate({"InitialR2T=No"});
  EXPECT_EQ(reply_value("InitialR2T"), "No");
  EXPECT_FALSE(login_.params().initial_r2t);
}

TEST_F(LoginTest, InitialR2TYesStaysYes) {
  negotiate({"InitialR2T=Yes"});
  EXPECT_EQ(reply_value("InitialR2T"), "Yes");
  EXPECT_TRUE(login_.params().initial_r2t);
}

TEST_F(LoginTest, ImmediateDataIsAndSoInitiatorNoStands) {
  negotiate({"ImmediateData=No"});
  EXPECT_EQ(reply_value("ImmediateData"), "No");
  EXPECT_FALSE(login_.params().immediate_data);
}

TEST_F(LoginTest, ImmediateDataYesStaysYes) {
  negotiate({"ImmediateData=Yes"});
  EXPECT_EQ(reply_value("ImmediateData"), "Yes");
  EXPECT_TRUE(login_.params().immediate_data);
}

TEST_F(LoginTest, DefaultsHoldWhenKeysAreNotNegotiated) {
  negotiate({});
  const SessionParams& p = login_.params();
  EXPECT_TRUE(p.initial_r2t);
  EXPECT_TRUE(p.immediate_data);
  EXPECT_FALSE(p.header_digest);
  EXPECT_FALSE(p.data_digest);
  EXPECT_EQ(p.max_burst_length, 262144u);
  EXPECT_EQ(p.first_burst_length, 65536u);
  EXPECT_EQ(p.max_outstanding_r2t, 1u);
}

TEST_F(LoginTest, MaxOutstandingR2TIsMinimumOfOfferAndTargetLimit) {
  negotiate({"MaxOutstandingR2T=64"});
  EXPECT_EQ(reply_value("MaxOutstandingR2T"), "16");
  EXPECT_EQ(login_.params().max_outstanding_r2t, 16u);
}

TEST_F(LoginTest, MaxOutstandingR2TBelowLimitKept) {
  negotiate({"MaxOutstandingR2T=4"});
  EXPECT_EQ(reply_value("MaxOutstandingR2T"), "4");
  EXPECT_EQ(login_.params().max_outstanding_r2t, 4u);
}

TEST_F(LoginTest, ErrorRecoveryLevelAnsweredZero) {
  negotiate({"ErrorRecoveryLevel=2"});
  EXPECT_EQ(reply_value("ErrorRecoveryLevel"), "0");
  EXPECT_EQ(login_.params().error_recovery_level, 0u);
}

TEST_F(LoginTest, MaxConnectionsAnsweredOne) {
  negotiate({"MaxConnections=8"});
  EXPECT_EQ(reply_value("MaxConnections"), "1");
  EXPECT_EQ(login_.params().max_connections, 1u);
}

TEST_F(LoginTest, TimersFollowMaximumAndMinimum) {
  negotiate({"DefaultTime2Wait=0", "DefaultTime2Retain=3600"});
  EXPECT_EQ(reply_value("DefaultTime2Wait"), "2");
  EXPECT_EQ(reply_value("DefaultTime2Retain"), "20");
}

TEST_F(LoginTest, UnknownKeyAnsweredNotUnderstood) {
  negotiate({"X-com.example.Frobnicate=Yes", "NoSuchKey=1"});
  EXPECT_EQ(reply_value("X-com.example.Frobnicate"), "NotUnderstood");
  EXPECT_EQ(reply_value("NoSuchKey"), "NotUnderstood");
}

TEST_F(LoginTest, OutOfRangeOrMalformedNumberRejected) {
  negotiate({"MaxBurstLength=100", "FirstBurstLength=16777216", "MaxOutstandingR2T=0",
             "ErrorRecoveryLevel=3", "MaxConnections=abc", "DefaultTime2Wait=-1",
             "InitialR2T=maybe"});
  for (const char* k : {"MaxBurstLength", "FirstBurstLength", "MaxOutstandingR2T",
                        "ErrorRecoveryLevel", "MaxConnections", "DefaultTime2Wait", "InitialR2T"})
    EXPECT_EQ(reply_value(k), "Reject") << k;
  EXPECT_EQ(login_.params().max_burst_length, 262144u) << "rejected value must not stick";
}

TEST_F(LoginTest, HexNumberAccepted) {
  negotiate({"MaxBurstLength=0x10000"});
  EXPECT_EQ(reply_value("MaxBurstLength"), "65536");
}

TEST_F(LoginTest, DiscoverySessionAnswersIrrelevantForSessionOnlyKeys) {
  ASSERT_EQ(send(kT | stages(kOperational, kFullFeature),
                 text({pair("InitiatorName", kInitiator), "SessionType=Discovery",
                       "MaxBurstLength=65536", "FirstBurstLength=4096", "InitialR2T=No",
                       "ImmediateData=No", "MaxOutstandingR2T=2", "DataPDUInOrder=Yes",
                       "DataSequenceInOrder=Yes", "MaxConnections=1", "HeaderDigest=CRC32C"})),
            LoginStep::login_complete)
      << login_.failure_reason();
  for (const char* k :
       {"MaxBurstLength", "FirstBurstLength", "InitialR2T", "ImmediateData", "MaxOutstandingR2T",
        "DataPDUInOrder", "DataSequenceInOrder", "MaxConnections"})
    EXPECT_EQ(reply_value(k), "Irrelevant") << k;
  EXPECT_EQ(reply_value("HeaderDigest"), "CRC32C");
  EXPECT_EQ(reply_value("TargetPortalGroupTag"), "<absent>");
  EXPECT_EQ(reply_value("MaxRecvDataSegmentLength"), "65536");
  EXPECT_EQ(login_.params().session_type, SessionType::discovery);
  EXPECT_TRUE(login_.params().initial_r2t);
}

// ---- login failures ----

TEST_F(LoginTest, MissingInitiatorNameFailsWithMissingParameter) {
  EXPECT_EQ(send(kT | stages(kOperational, kFullFeature),
                 text({pair("TargetName", kOpenIqn), "SessionType=Normal"})),
            LoginStep::failed);
  EXPECT_EQ(status(), 0x0207);
  EXPECT_EQ(login_.failure_status(), LoginStatus::missing_parameter);
  EXPECT_NE(login_.failure_reason(), nullptr);
  EXPECT_EQ(reply_.bhs.opcode(), Opcode::login_response);
  EXPECT_EQ(std::memcmp(reply_.bhs.b + 8, kIsid, 6), 0);
  EXPECT_EQ(reply_.data_length, 0u);
}

TEST_F(LoginTest, MissingTargetNameInNormalSessionFailsWithMissingParameter) {
  EXPECT_EQ(
      send(kT | stages(kOperational, kFullFeature), text({pair("InitiatorName", kInitiator)})),
      LoginStep::failed);
  EXPECT_EQ(status(), 0x0207);
}

TEST_F(LoginTest, UnknownTargetFailsWithNotFound) {
  EXPECT_EQ(send(kT | stages(kOperational, kFullFeature), first_text("iqn.2024-01.io.ferry:nope")),
            LoginStep::failed);
  EXPECT_EQ(status(), 0x0203);
}

// Any IQN could log in to a cloud edge: the initiator ACL refuses names not listed (0x0202).
TEST_F(LoginTest, InitiatorOutsideTheAclFailsWithAuthorizationFailure) {
  // The negotiator reads the portal (by reference) at the first request.
  for (auto& t : portal_.targets)
    if (t.iqn == kOpenIqn) t.allowed_initiators = {"iqn.2026-12.io.ferry.test:someone-else"};
  EXPECT_EQ(send(kT | stages(kOperational, kFullFeature), first_text(kOpenIqn)), LoginStep::failed);
  EXPECT_EQ(status(), 0x0202);
}

TEST_F(LoginTest, InitiatorInTheAclLogsIn) {
  for (auto& t : portal_.targets)
    if (t.iqn == kOpenIqn)
      t.allowed_initiators = {"iqn.2026-12.io.ferry.test:someone-else", std::string(kInitiator)};
  EXPECT_EQ(send(kT | stages(kOperational, kFullFeature), first_text(kOpenIqn)),
            LoginStep::login_complete);
}

TEST_F(LoginTest, UnknownSessionTypeFails) {
  EXPECT_EQ(send(kT | stages(kOperational, kFullFeature),
                 text({pair("InitiatorName", kInitiator), "SessionType=Bogus"})),
            LoginStep::failed);
  EXPECT_EQ(status(), 0x0209);
}

TEST_F(LoginTest, VersionMinAboveZeroFailsWithUnsupportedVersion) {
  Bhs h = login_bhs(kT | stages(kOperational, kFullFeature), 1);
  h.b[2] = 1;  // Version-max
  h.b[3] = 1;  // Version-min
  EXPECT_EQ(send(h, first_text(kOpenIqn)), LoginStep::failed);
  EXPECT_EQ(status(), 0x0205);
}

TEST_F(LoginTest, NonzeroTsihFailsWithSessionDoesNotExist) {
  Bhs h = login_bhs(kT | stages(kOperational, kFullFeature), 1);
  store_be16(h.b + 14, 0x0042);
  EXPECT_EQ(send(h, first_text(kOpenIqn)), LoginStep::failed);
  EXPECT_EQ(status(), 0x020a);
}

TEST_F(LoginTest, DuplicateKeyFailsWithInitiatorError) {
  EXPECT_EQ(send(kT | stages(kOperational, kFullFeature),
                 first_text(kOpenIqn, {"HeaderDigest=None", "HeaderDigest=CRC32C"})),
            LoginStep::failed);
  EXPECT_EQ(status(), 0x0200);
}

TEST_F(LoginTest, MalformedTextFailsWithInitiatorError) {
  EXPECT_EQ(send(kT | stages(kOperational, kFullFeature), first_text(kOpenIqn, {"NoEqualsSign"})),
            LoginStep::failed);
  EXPECT_EQ(status(), 0x0200);
}

TEST_F(LoginTest, TransitAndContinueBothSetFails) {
  EXPECT_EQ(send(kT | kC | stages(kOperational, kFullFeature), first_text(kOpenIqn)),
            LoginStep::failed);
  EXPECT_EQ(status(), 0x0200);
}

TEST_F(LoginTest, RequestInStageOtherThanExpectedFails) {
  ASSERT_EQ(send(kT | stages(kSecurity, kOperational), first_text(kOpenIqn)),
            LoginStep::continue_login);
  // The target moved to the operational stage; a request still claiming security is wrong.
  EXPECT_EQ(send(kT | stages(kSecurity, kOperational), ""), LoginStep::failed);
  EXPECT_EQ(status(), 0x0200);
}

TEST_F(LoginTest, FirstRequestInFullFeatureStageFails) {
  EXPECT_EQ(send(stages(kFullFeature, 0), first_text(kOpenIqn)), LoginStep::failed);
  EXPECT_EQ(status(), 0x0200);
}

TEST_F(LoginTest, ReservedStageFails) {
  EXPECT_EQ(send(stages(2, 0), first_text(kOpenIqn)), LoginStep::failed);
  EXPECT_EQ(status(), 0x0200);
}

TEST_F(LoginTest, TransitToSameOrEarlierStageFails) {
  EXPECT_EQ(send(kT | stages(kOperational, kOperational), first_text(kOpenIqn)), LoginStep::failed);
  EXPECT_EQ(status(), 0x0200);
}

TEST_F(LoginTest, TransitToReservedStageFails) {
  EXPECT_EQ(send(kT | stages(kSecurity, 2), first_text(kOpenIqn)), LoginStep::failed);
  EXPECT_EQ(status(), 0x0200);
}

TEST_F(LoginTest, IsidChangedDuringLoginFails) {
  ASSERT_EQ(send(stages(kOperational, 0), first_text(kOpenIqn)), LoginStep::continue_login);
  Bhs h = login_bhs(kT | stages(kOperational, kFullFeature), 9);
  h.b[13] ^= 1;
  EXPECT_EQ(send(h, ""), LoginStep::failed);
  EXPECT_EQ(status(), 0x0200);
}

TEST_F(LoginTest, FailureIsStickyForLaterRequests) {
  ASSERT_EQ(send(kT | stages(kOperational, kFullFeature), first_text("iqn.nope")),
            LoginStep::failed);
  EXPECT_EQ(send(kT | stages(kOperational, kFullFeature), first_text(kOpenIqn)), LoginStep::failed);
  EXPECT_EQ(status(), 0x0203);
}

TEST_F(LoginTest, SecurityKeyInOperationalStageFails) {
  EXPECT_EQ(
      send(kT | stages(kOperational, kFullFeature), first_text(kOpenIqn, {"AuthMethod=None"})),
      LoginStep::failed);
  EXPECT_EQ(status(), 0x020b);
}

TEST_F(LoginTest, MoreThanMaxLoginPdusFails) {
  ASSERT_EQ(send(stages(kSecurity, 0), first_text(kOpenIqn)), LoginStep::continue_login);
  for (unsigned i = 2; i <= kLoginPdusMax; ++i)
    ASSERT_EQ(send(stages(kSecurity, 0), ""), LoginStep::continue_login) << "request " << i;
  EXPECT_EQ(send(stages(kSecurity, 0), ""), LoginStep::failed);
  EXPECT_EQ(status(), 0x0200);
}

TEST_F(LoginTest, LoginTextOverLimitFails) {
  const std::string chunk(16 * 1024, '\0');  // padding NULs: valid, and continued
  ASSERT_EQ(send(kC | stages(kOperational, 0), first_text(kOpenIqn)), LoginStep::continue_login);
  for (int i = 0; i < 3; ++i)
    ASSERT_EQ(send(kC | stages(kOperational, 0), chunk), LoginStep::continue_login);
  EXPECT_EQ(send(kC | stages(kOperational, 0), chunk), LoginStep::failed);
  EXPECT_EQ(status(), 0x0200);
}

// ---- continued text ----

TEST_F(LoginTest, ContinuedTextOverTwoPdusAnsweredAfterTheLast) {
  const std::string all =
      first_text(kOpenIqn, {"HeaderDigest=CRC32C,None", "MaxBurstLength=65536"});
  const size_t split = all.find("TargetName") + 4;  // split inside a key
  ASSERT_EQ(send(kC | stages(kOperational, 0), all.substr(0, split)), LoginStep::continue_login);
  EXPECT_EQ(reply_.data_length, 0u);
  EXPECT_EQ(reply_.bhs.flags(), stages(kOperational, 0)) << "neither T nor C in the empty reply";
  EXPECT_EQ(status(), 0x0000);

  ASSERT_EQ(send(kT | stages(kOperational, kFullFeature), all.substr(split)),
            LoginStep::login_complete)
      << login_.failure_reason();
  EXPECT_EQ(reply_value("HeaderDigest"), "CRC32C");
  EXPECT_EQ(reply_value("MaxBurstLength"), "65536");
  EXPECT_EQ(reply_value("TargetPortalGroupTag"), "7");
  EXPECT_EQ(login_.params().target_name, kOpenIqn);
}

// ---- CHAP ----

TEST_F(LoginTest, ChapExchangeSucceeds) {
  uint8_t id = 0;
  std::vector<uint8_t> c;
  ASSERT_NO_FATAL_FAILURE(chap_until_challenge(kChapIqn, id, c));
  ASSERT_EQ(
      send(kT | stages(kSecurity, kOperational),
           text({pair("CHAP_N", kChapUser), pair("CHAP_R", chap_response(id, kChapSecret, c))})),
      LoginStep::continue_login)
      << login_.failure_reason();
  EXPECT_EQ(reply_.bhs.flags(), kT | stages(kSecurity, kOperational));
  EXPECT_EQ(reply_value("MaxRecvDataSegmentLength"), "65536");
  EXPECT_EQ(reply_value("CHAP_N"), "<absent>") << "no mutual CHAP asked";
  ASSERT_EQ(send(kT | stages(kOperational, kFullFeature), text({"HeaderDigest=None"})),
            LoginStep::login_complete);
}

TEST_F(LoginTest, ChapResponseInBase64Accepted) {
  uint8_t id = 0;
  std::vector<uint8_t> c;
  ASSERT_NO_FATAL_FAILURE(chap_until_challenge(kChapIqn, id, c));
  const std::vector<uint8_t> md = unhex(chap_response(id, kChapSecret, c));
  // Base64 via EVP.
  unsigned char b64[32] = {};
  const int n = EVP_EncodeBlock(b64, md.data(), int(md.size()));
  const std::string r = "0b" + std::string(reinterpret_cast<char*>(b64), size_t(n));
  EXPECT_EQ(send(kT | stages(kSecurity, kOperational),
                 text({pair("CHAP_N", kChapUser), pair("CHAP_R", r)})),
            LoginStep::continue_login)
      << login_.failure_reason();
  EXPECT_EQ(reply_.bhs.flags() & kT, kT);
}

TEST_F(LoginTest, ChapWrongSecretFailsWithAuthenticationFailure) {
  uint8_t id = 0;
  std::vector<uint8_t> c;
  ASSERT_NO_FATAL_FAILURE(chap_until_challenge(kChapIqn, id, c));
  EXPECT_EQ(
      send(kT | stages(kSecurity, kOperational),
           text({pair("CHAP_N", kChapUser), pair("CHAP_R", chap_response(id, "wrong-secret", c))})),
      LoginStep::failed);
  EXPECT_EQ(status(), 0x0201);
}

TEST_F(LoginTest, ChapWrongNameFailsWithAuthenticationFailure) {
  uint8_t id = 0;
  std::vector<uint8_t> c;
  ASSERT_NO_FATAL_FAILURE(chap_until_challenge(kChapIqn, id, c));
  EXPECT_EQ(send(kT | stages(kSecurity, kOperational),
                 text({"CHAP_N=someone-else", pair("CHAP_R", chap_response(id, kChapSecret, c))})),
            LoginStep::failed);
  EXPECT_EQ(status(), 0x0201);
}

TEST_F(LoginTest, ChapResponseToWrongIdentifierFails) {
  uint8_t id = 0;
  std::vector<uint8_t> c;
  ASSERT_NO_FATAL_FAILURE(chap_until_challenge(kChapIqn, id, c));
  EXPECT_EQ(send(kT | stages(kSecurity, kOperational),
                 text({pair("CHAP_N", kChapUser),
                       pair("CHAP_R", chap_response(uint8_t(id + 1), kChapSecret, c))})),
            LoginStep::failed);
  EXPECT_EQ(status(), 0x0201);
}

TEST_F(LoginTest, ChapNameWithoutResponseFails) {
  uint8_t id = 0;
  std::vector<uint8_t> c;
  ASSERT_NO_FATAL_FAILURE(chap_until_challenge(kChapIqn, id, c));
  EXPECT_EQ(send(kT | stages(kSecurity, kOperational), text({pair("CHAP_N", kChapUser)})),
            LoginStep::failed);
  EXPECT_EQ(status(), 0x0201);
}

TEST_F(LoginTest, ChapResponseBeforeChallengeFails) {
  ASSERT_EQ(send(stages(kSecurity, 0), first_text(kChapIqn, {"AuthMethod=CHAP"})),
            LoginStep::continue_login);
  EXPECT_EQ(send(kT | stages(kSecurity, kOperational),
                 text({pair("CHAP_N", kChapUser), "CHAP_R=0x00112233445566778899aabbccddeeff"})),
            LoginStep::failed);
  EXPECT_EQ(status(), 0x0200);
}

TEST_F(LoginTest, ChapWithoutMd5AlgorithmFails) {
  ASSERT_EQ(send(stages(kSecurity, 0), first_text(kChapIqn, {"AuthMethod=CHAP"})),
            LoginStep::continue_login);
  EXPECT_EQ(send(stages(kSecurity, 0), text({"CHAP_A=6,7"})), LoginStep::failed);
  EXPECT_EQ(status(), 0x0201);
}

TEST_F(LoginTest, SkippingSecurityWhenChapRequiredFails) {
  EXPECT_EQ(send(kT | stages(kOperational, kFullFeature), first_text(kChapIqn)), LoginStep::failed);
  EXPECT_EQ(status(), 0x0201);
}

TEST_F(LoginTest, TransitOutOfSecurityWithoutAuthMethodWhenChapRequiredFails) {
  EXPECT_EQ(send(kT | stages(kSecurity, kFullFeature), first_text(kChapIqn)), LoginStep::failed);
  EXPECT_EQ(status(), 0x0201);
}

TEST_F(LoginTest, OperationalStageBeforeChapCompletesFails) {
  ASSERT_EQ(send(stages(kSecurity, 0), first_text(kChapIqn, {"AuthMethod=CHAP"})),
            LoginStep::continue_login);
  ASSERT_EQ(send(stages(kSecurity, 0), text({"CHAP_A=5"})), LoginStep::continue_login);
  // Still in the security stage as far as the target is concerned.
  EXPECT_EQ(send(kT | stages(kOperational, kFullFeature), ""), LoginStep::failed);
  EXPECT_EQ(status(), 0x0200);
}

TEST_F(LoginTest, AuthMethodNoneOnlyWhenChapRequiredFails) {
  EXPECT_EQ(send(kT | stages(kSecurity, kOperational), first_text(kChapIqn, {"AuthMethod=None"})),
            LoginStep::failed);
  EXPECT_EQ(status(), 0x0201);
}

TEST_F(LoginTest, AuthMethodChapOnlyWhenTargetHasNoSecretFails) {
  EXPECT_EQ(send(kT | stages(kSecurity, kOperational), first_text(kOpenIqn, {"AuthMethod=CHAP"})),
            LoginStep::failed);
  EXPECT_EQ(status(), 0x0201);
}

TEST_F(LoginTest, MutualChapAnswersWithMutualSecret) {
  uint8_t id = 0;
  std::vector<uint8_t> c;
  ASSERT_NO_FATAL_FAILURE(chap_until_challenge(kMutualIqn, id, c));
  const std::vector<uint8_t> ours = {0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xfe,
                                     0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef};
  const uint8_t our_id = 0x5a;
  ASSERT_EQ(send(kT | stages(kSecurity, kOperational),
                 text({pair("CHAP_N", kChapUser), pair("CHAP_R", chap_response(id, kChapSecret, c)),
                       pair("CHAP_I", std::to_string(our_id)),
                       pair("CHAP_C", hex(ours.data(), ours.size()))})),
            LoginStep::continue_login)
      << login_.failure_reason();
  EXPECT_EQ(reply_.bhs.flags(), kT | stages(kSecurity, kOperational));
  EXPECT_EQ(reply_value("CHAP_N"), kMutualUser);
  EXPECT_EQ(reply_value("CHAP_R"), chap_response(our_id, kMutualSecret, ours));
  ASSERT_EQ(send(kT | stages(kOperational, kFullFeature), ""), LoginStep::login_complete);
}

TEST_F(LoginTest, MutualChapReflectedChallengeRefused) {
  uint8_t id = 0;
  std::vector<uint8_t> c;
  ASSERT_NO_FATAL_FAILURE(chap_until_challenge(kMutualIqn, id, c));
  EXPECT_EQ(
      send(kT | stages(kSecurity, kOperational),
           text({pair("CHAP_N", kChapUser), pair("CHAP_R", chap_response(id, kChapSecret, c)),
                 pair("CHAP_I", std::to_string(id)), pair("CHAP_C", hex(c.data(), c.size()))})),
      LoginStep::failed);
  EXPECT_EQ(status(), 0x0201);
  EXPECT_EQ(reply_.data_length, 0u) << "no CHAP_R may leak for a reflected challenge";
}

TEST_F(LoginTest, MutualChapWithoutTargetSecretFails) {
  uint8_t id = 0;
  std::vector<uint8_t> c;
  ASSERT_NO_FATAL_FAILURE(chap_until_challenge(kChapIqn, id, c));
  EXPECT_EQ(send(kT | stages(kSecurity, kOperational),
                 text({pair("CHAP_N", kChapUser), pair("CHAP_R", chap_response(id, kChapSecret, c)),
                       "CHAP_I=1", "CHAP_C=0x0123456789abcdef"})),
            LoginStep::failed);
  EXPECT_EQ(status(), 0x0201);
}

TEST_F(LoginTest, MutualChapWithChallengeButNoIdentifierFails) {
  uint8_t id = 0;
  std::vector<uint8_t> c;
  ASSERT_NO_FATAL_FAILURE(chap_until_challenge(kMutualIqn, id, c));
  EXPECT_EQ(send(kT | stages(kSecurity, kOperational),
                 text({pair("CHAP_N", kChapUser), pair("CHAP_R", chap_response(id, kChapSecret, c)),
                       "CHAP_C=0x0123456789abcdef"})),
            LoginStep::failed);
  EXPECT_EQ(status(), 0x0201);
}

TEST_F(LoginTest, DiscoveryChapRequiredWhenConfigured) {
  portal_.discovery_chap_user = kChapUser;
  portal_.discovery_chap_secret = kChapSecret;
  EXPECT_EQ(send(kT | stages(kOperational, kFullFeature),
                 text({pair("InitiatorName", kInitiator), "SessionType=Discovery"})),
            LoginStep::failed);
  EXPECT_EQ(status(), 0x0201);
}

// ---- failed-authentication back-off (CHAP allowed unlimited fast guesses, issue 15) ----

uint64_t g_clock_ns = 1000000000000ull;
uint64_t test_clock() noexcept { return g_clock_ns; }

// One whole CHAP login to `iqn` through a fresh negotiator for `source`, answering the challenge
// with `secret`: 0 when it got past the security stage, else the refusal's status. `why` gets
// the failure reason.
uint16_t chap_login(const PortalConfig& portal, AuthBackoff& backoff, const std::string& source,
                    const char* secret, std::string_view iqn = kChapIqn,
                    std::string* why = nullptr) {
  LoginNegotiator n(portal, &backoff, source);
  LoginReply r;
  uint32_t itt = 1;
  auto send = [&](const std::string& d) {
    r = LoginReply{};
    return n.on_request(login_bhs(kT | stages(kSecurity, kOperational), itt++),
                        {reinterpret_cast<const uint8_t*>(d.data()), d.size()}, r);
  };
  auto refused = [&] {
    if (why != nullptr) *why = n.failure_reason();
    return uint16_t(r.bhs.b[36] << 8 | r.bhs.b[37]);
  };
  if (send(text({pair("InitiatorName", kInitiator), pair("TargetName", iqn), "SessionType=Normal",
                 "AuthMethod=CHAP,None"})) == LoginStep::failed)
    return refused();
  if (r.bhs.flags() & kT) return 0;  // no CHAP on this target
  if (send(text({"CHAP_A=5"})) == LoginStep::failed) return refused();
  std::vector<KeyValue> kv;
  EXPECT_EQ(parse_text_pairs({r.data.data(), r.data_length}, kv), TextParse::ok);
  std::map<std::string, std::string> m;
  for (auto& p : kv) m[p.key] = p.value;
  const uint8_t id = uint8_t(std::stoi(m["CHAP_I"]));
  if (send(text({pair("CHAP_N", kChapUser),
                 pair("CHAP_R", chap_response(id, secret, unhex(m["CHAP_C"])))})) ==
      LoginStep::failed)
    return refused();
  return 0;
}

TEST(LoginBackoff, RepeatedWrongSecretsBackTheSourceOffWithServiceUnavailable) {
  const PortalConfig portal = test_portal();
  AuthBackoff backoff({}, "iscsi", &test_clock);
  EXPECT_EQ(chap_login(portal, backoff, "192.0.2.9", kChapSecret), 0);
  EXPECT_EQ(chap_login(portal, backoff, "192.0.2.9", "guess-1"), 0x0201);
  EXPECT_EQ(chap_login(portal, backoff, "192.0.2.9", kChapSecret), 0) << "first failure is free";
  EXPECT_EQ(chap_login(portal, backoff, "192.0.2.9", "guess-2"), 0x0201);  // 1 s back-off
  std::string why;
  EXPECT_EQ(chap_login(portal, backoff, "192.0.2.9", kChapSecret, kChapIqn, &why), 0x0301)
      << "while backed off even the right secret is refused (and not checked)";
  EXPECT_NE(why.find("back-off"), std::string::npos) << why;
  EXPECT_EQ(chap_login(portal, backoff, "192.0.2.10", kChapSecret), 0) << "another source logs in";
  EXPECT_EQ(chap_login(portal, backoff, "192.0.2.9", "no-secret-needed", kOpenIqn), 0)
      << "a target without CHAP is not held back";
  g_clock_ns += 1000000000ull;
  EXPECT_EQ(chap_login(portal, backoff, "192.0.2.9", kChapSecret), 0) << "back-off over";
  EXPECT_EQ(chap_login(portal, backoff, "192.0.2.9", "guess-3"), 0x0201);  // 2 s now
  EXPECT_EQ(chap_login(portal, backoff, "192.0.2.9", "guess-4"), 0x0301);
  g_clock_ns += 1000000000ull;
  EXPECT_EQ(chap_login(portal, backoff, "192.0.2.9", "guess-4"), 0x0301) << "2 s, not 1 s";
  g_clock_ns += 1000000000ull;
  EXPECT_EQ(chap_login(portal, backoff, "192.0.2.9", kChapSecret), 0);
  EXPECT_EQ(backoff.counters().failures, 3u) << "refusals are not counted as guesses";
  EXPECT_EQ(backoff.counters().refused, 3u);
}

TEST(LoginBackoff, ParallelLoginChallengedBeforeTheBackOffIsRefusedAtItsResponse) {
  const PortalConfig portal = test_portal();
  AuthBackoff backoff({}, "iscsi", &test_clock);
  // A guesser opens a connection and gets its challenge first...
  LoginNegotiator early(portal, &backoff, "192.0.2.20");
  LoginReply r;
  const std::string first = text({pair("InitiatorName", kInitiator), pair("TargetName", kChapIqn),
                                  "SessionType=Normal", "AuthMethod=CHAP"});
  const std::string chap_a = text({"CHAP_A=5"});
  auto bytes = [](const std::string& s) {
    return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  };
  const uint8_t flags = kT | stages(kSecurity, kOperational);
  ASSERT_EQ(early.on_request(login_bhs(flags, 1), bytes(first), r), LoginStep::continue_login);
  ASSERT_EQ(early.on_request(login_bhs(flags, 2), bytes(chap_a), r), LoginStep::continue_login);
  std::vector<KeyValue> kv;
  ASSERT_EQ(parse_text_pairs({r.data.data(), r.data_length}, kv), TextParse::ok);
  std::map<std::string, std::string> m;
  for (auto& p : kv) m[p.key] = p.value;
  // ... then fails twice on other connections ...
  EXPECT_EQ(chap_login(portal, backoff, "192.0.2.20", "guess-1"), 0x0201);
  EXPECT_EQ(chap_login(portal, backoff, "192.0.2.20", "guess-2"), 0x0201);
  // ... and the early connection's answer is not checked while the back-off lasts.
  const std::string answer = text(
      {pair("CHAP_N", kChapUser), pair("CHAP_R", chap_response(uint8_t(std::stoi(m["CHAP_I"])),
                                                               kChapSecret, unhex(m["CHAP_C"])))});
  EXPECT_EQ(early.on_request(login_bhs(flags, 3), bytes(answer), r), LoginStep::failed);
  EXPECT_EQ(early.failure_status(), LoginStatus::service_unavailable);
}

TEST(LoginBackoff, DiscoveryChapFailuresCountToo) {
  PortalConfig portal = test_portal();
  portal.discovery_chap_user = kChapUser;
  portal.discovery_chap_secret = kChapSecret;
  AuthBackoff backoff({}, "iscsi", &test_clock);
  auto discovery = [&](const char* secret) {
    LoginNegotiator n(portal, &backoff, "192.0.2.30");
    LoginReply r;
    auto send = [&](uint32_t itt, const std::string& d) {
      return n.on_request(login_bhs(kT | stages(kSecurity, kOperational), itt),
                          {reinterpret_cast<const uint8_t*>(d.data()), d.size()}, r);
    };
    if (send(1, text({pair("InitiatorName", kInitiator), "SessionType=Discovery",
                      "AuthMethod=CHAP"})) == LoginStep::failed ||
        send(2, text({"CHAP_A=5"})) == LoginStep::failed)
      return uint16_t(n.failure_status());
    std::vector<KeyValue> kv;
    EXPECT_EQ(parse_text_pairs({r.data.data(), r.data_length}, kv), TextParse::ok);
    std::map<std::string, std::string> m;
    for (auto& p : kv) m[p.key] = p.value;
    const std::string answer = text(
        {pair("CHAP_N", kChapUser), pair("CHAP_R", chap_response(uint8_t(std::stoi(m["CHAP_I"])),
                                                                 secret, unhex(m["CHAP_C"])))});
    return send(3, answer) == LoginStep::failed ? uint16_t(n.failure_status()) : uint16_t(0);
  };
  EXPECT_EQ(discovery("guess-1"), 0x0201);
  EXPECT_EQ(discovery("guess-2"), 0x0201);
  EXPECT_EQ(discovery(kChapSecret), 0x0301);
}

}  // namespace
}  // namespace ferry::iscsi
