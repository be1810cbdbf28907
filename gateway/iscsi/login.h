// iSCSI login negotiation (RFC 7143 §6, §11.12-13, §13): one LoginNegotiator per connection
// walks the security stage (AuthMethod None or CHAP, optionally mutual) and the operational
// stage (digests, burst lengths, R2T, ordering, timers, ERL 0, MaxConnections 1), then reports
// the negotiated SessionParams. Pure protocol logic: no I/O; the connection sends the replies.
// Bounded: at most kLoginPdusMax requests and kLoginTextMax bytes of accumulated text.
// Failed-authentication back-off: given the server's AuthBackoff and the peer's address, a wrong
// CHAP name or secret is recorded there, and while that address is backed off a login that needs
// CHAP is refused with 0x0301 (service unavailable) before any secret is checked.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "datapath/auth_backoff.h"
#include "gateway/iscsi/pdu.h"
#include "gateway/iscsi/portal_config.h"
#include "gateway/iscsi/text_kv.h"

namespace ferry::iscsi {

enum class SessionType : uint8_t { normal, discovery };

// Negotiated session parameters; defaults are RFC 7143's.
struct SessionParams {
  bool header_digest = false;
  bool data_digest = false;
  uint32_t target_max_recv_data_segment_length = 8192;     // what we declared we accept
  uint32_t initiator_max_recv_data_segment_length = 8192;  // what we may send per PDU
  uint32_t max_burst_length = 262144;
  uint32_t first_burst_length = 65536;
  bool initial_r2t = true;
  bool immediate_data = true;
  uint32_t max_outstanding_r2t = 1;
  bool data_pdu_in_order = true;
  bool data_sequence_in_order = true;
  uint32_t default_time2wait = 2;
  uint32_t default_time2retain = 20;
  uint32_t error_recovery_level = 0;
  uint32_t max_connections = 1;
  SessionType session_type = SessionType::normal;
  std::string initiator_name;
  std::string initiator_alias;
  std::string target_name;
};

enum class LoginStep : uint8_t { continue_login, login_complete, failed };

inline constexpr size_t kLoginReplyMax = 8192;
inline constexpr size_t kLoginTextMax = 64 * 1024;
inline constexpr unsigned kLoginPdusMax = 64;

// Login status (RFC 7143 §11.13.5): class << 8 | detail.
enum class LoginStatus : uint16_t {
  success = 0x0000,
  initiator_error = 0x0200,
  authentication_failure = 0x0201,
  authorization_failure = 0x0202,
  not_found = 0x0203,
  unsupported_version = 0x0205,
  missing_parameter = 0x0207,
  session_type_not_supported = 0x0209,
  session_does_not_exist = 0x020a,
  invalid_during_login = 0x020b,
  target_error = 0x0300,
  service_unavailable = 0x0301,  // also: CHAP refused while the source is backed off
  out_of_resources = 0x0302,
};

// The login response the connection should send: a BHS with flags, ISID, ITT and status filled
// (the connection fills TSIH, StatSN, ExpCmdSN, MaxCmdSN and the data segment length).
struct LoginReply {
  Bhs bhs{};
  std::array<uint8_t, kLoginReplyMax> data{};
  size_t data_length = 0;
};

class LoginNegotiator {
 public:
  // `backoff` (may be null: no back-off) outlives the negotiator; `source` is the peer's
  // address without the port ("" for none).
  explicit LoginNegotiator(const PortalConfig& portal, AuthBackoff* backoff = nullptr,
                           std::string source = {}) noexcept;

  LoginStep on_request(const Bhs& request, std::span<const uint8_t> data, LoginReply& reply);

  const SessionParams& params() const noexcept { return params_; }
  // Why the login failed (static text), for logs; nullptr while not failed.
  const char* failure_reason() const noexcept { return failure_reason_; }
  LoginStatus failure_status() const noexcept { return failure_status_; }

 private:
  enum class Auth : uint8_t {
    undecided,
    not_required,
    want_method,
    want_chap_a,
    want_response,
    done
  };

  LoginStep fail(LoginStatus status, const char* why, const Bhs& request, LoginReply& reply);
  LoginStatus first_request(const std::vector<KeyValue>& pairs, const char*& why);
  LoginStatus security_key(const KeyValue& kv, const std::vector<KeyValue>& pairs, std::string& out,
                           const char*& why);
  void operational_key(const KeyValue& kv, std::string& out);
  void declare_target_keys(std::string& out);
  bool backed_off() noexcept;

  const PortalConfig& portal_;
  AuthBackoff* backoff_;
  std::string source_;
  SessionParams params_;
  const TargetAuthConfig* target_ = nullptr;
  Auth auth_ = Auth::undecided;
  std::string chap_user_, chap_secret_, mutual_user_, mutual_secret_;
  std::vector<uint8_t> challenge_;
  uint8_t challenge_id_ = 0;

  bool first_ = true;
  uint8_t stage_ = 0;  // CSG we expect next
  uint8_t isid_[6] = {};
  std::vector<uint8_t> pending_text_;  // request text split over PDUs with C=1
  unsigned pdus_ = 0;
  bool declared_ = false;  // MaxRecvDataSegmentLength etc. sent
  bool tpgt_sent_ = false;
  const char* failure_reason_ = nullptr;
  LoginStatus failure_status_ = LoginStatus::success;
};

}  // namespace ferry::iscsi
