// iSCSI login negotiation (see login.h).
#include "gateway/iscsi/login.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <optional>
#include <utility>

#include "gateway/iscsi/chap.h"

namespace ferry::iscsi {

namespace {

constexpr uint8_t kTransit = 0x80;
constexpr uint8_t kContinue = 0x40;
constexpr uint8_t kStageSecurity = 0;
constexpr uint8_t kStageOperational = 1;
constexpr uint8_t kStageFullFeature = 3;

std::optional<uint64_t> parse_number(std::string_view v) {
  uint64_t n = 0;
  int base = 10;
  if (v.size() > 2 && v[0] == '0' && (v[1] == 'x' || v[1] == 'X')) {
    v.remove_prefix(2);
    base = 16;
  }
  if (v.empty() || v.size() > 16) return std::nullopt;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n, base);
  if (ec != std::errc{} || p != v.data() + v.size()) return std::nullopt;
  return n;
}

std::optional<bool> parse_bool(std::string_view v) {
  if (v == "Yes") return true;
  if (v == "No") return false;
  return std::nullopt;
}

bool list_contains(std::string_view list, std::string_view item) {
  while (!list.empty()) {
    size_t comma = list.find(',');
    std::string_view head = list.substr(0, comma);
    if (head == item) return true;
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  return false;
}

// First item of an initiator's digest list we support, or empty.
std::string_view pick_digest(std::string_view list) {
  while (!list.empty()) {
    size_t comma = list.find(',');
    std::string_view head = list.substr(0, comma);
    if (head == "CRC32C" || head == "None") return head;
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  return {};
}

const KeyValue* find_key(const std::vector<KeyValue>& pairs, std::string_view key) {
  for (const auto& kv : pairs)
    if (kv.key == key) return &kv;
  return nullptr;
}

bool is_security_key(std::string_view k) { return k == "AuthMethod" || k.starts_with("CHAP_"); }

// Keys irrelevant to a discovery session (RFC 7143 §13: "Irrelevant when SessionType=Discovery").
bool irrelevant_for_discovery(std::string_view k) {
  return k == "MaxBurstLength" || k == "FirstBurstLength" || k == "InitialR2T" ||
         k == "ImmediateData" || k == "MaxOutstandingR2T" || k == "DataPDUInOrder" ||
         k == "DataSequenceInOrder" || k == "MaxConnections";
}

}  // namespace

LoginNegotiator::LoginNegotiator(const PortalConfig& portal, AuthBackoff* backoff,
                                 std::string source) noexcept
    : portal_(portal), backoff_(backoff), source_(std::move(source)) {}

bool LoginNegotiator::backed_off() noexcept {
  return backoff_ != nullptr && backoff_->remaining_ns(source_) > 0;
}

LoginStep LoginNegotiator::fail(LoginStatus status, const char* why, const Bhs& request,
                                LoginReply& reply) {
  failure_reason_ = why;
  failure_status_ = status;
  reply.bhs.clear();
  reply.bhs.set_opcode(Opcode::login_response);
  std::memcpy(reply.bhs.b + 8, request.b + 8, 6);  // ISID
  reply.bhs.set_itt(request.itt());
  reply.bhs.b[36] = uint8_t(uint16_t(status) >> 8);
  reply.bhs.b[37] = uint8_t(uint16_t(status) & 0xff);
  reply.data_length = 0;
  return LoginStep::failed;
}

LoginStatus LoginNegotiator::first_request(const std::vector<KeyValue>& pairs, const char*& why) {
  const KeyValue* initiator = find_key(pairs, "InitiatorName");
  if (initiator == nullptr || initiator->value.empty()) {
    why = "InitiatorName missing from the first login request";
    return LoginStatus::missing_parameter;
  }
  params_.initiator_name = initiator->value;
  if (const KeyValue* alias = find_key(pairs, "InitiatorAlias"))
    params_.initiator_alias = alias->value;
  const KeyValue* type = find_key(pairs, "SessionType");
  if (type == nullptr || type->value == "Normal") {
    params_.session_type = SessionType::normal;
  } else if (type->value == "Discovery") {
    params_.session_type = SessionType::discovery;
  } else {
    why = "unsupported SessionType";
    return LoginStatus::session_type_not_supported;
  }
  if (params_.session_type == SessionType::normal) {
    const KeyValue* target = find_key(pairs, "TargetName");
    if (target == nullptr || target->value.empty()) {
      why = "TargetName missing from a normal session login";
      return LoginStatus::missing_parameter;
    }
    target_ = portal_.find_target(target->value);
    if (target_ == nullptr) {
      why = "login to an unknown target";
      return LoginStatus::not_found;
    }
    if (!target_->initiator_allowed(params_.initiator_name)) {
      why = "initiator not in the target's --allow-initiator list";
      return LoginStatus::authorization_failure;
    }
    params_.target_name = target_->iqn;
    chap_user_ = target_->chap_user;
    chap_secret_ = target_->chap_secret;
    mutual_user_ = target_->mutual_chap_user;
    mutual_secret_ = target_->mutual_chap_secret;
  } else {
    chap_user_ = portal_.discovery_chap_user;
    chap_secret_ = portal_.discovery_chap_secret;
    mutual_user_ = portal_.discovery_mutual_chap_user;
    mutual_secret_ = portal_.discovery_mutual_chap_secret;
  }
  auth_ = chap_user_.empty() ? Auth::not_required : Auth::want_method;
  if (auth_ == Auth::want_method && backed_off()) {
    why = "CHAP refused: failed-authentication back-off for this address";
    return LoginStatus::service_unavailable;
  }
  return LoginStatus::success;
}

LoginStatus LoginNegotiator::security_key(const KeyValue& kv, const std::vector<KeyValue>& pairs,
                                          std::string& out, const char*& why) {
  const std::string_view k = kv.key;
  if (k == "AuthMethod") {
    if (auth_ == Auth::not_required) {
      if (list_contains(kv.value, "None")) {
        append_pair(out, k, "None");
        auth_ = Auth::done;
        return LoginStatus::success;
      }
      // The initiator insists on authentication we have no secret for.
      why = "initiator requires an AuthMethod but the target has no CHAP secret";
      return LoginStatus::authentication_failure;
    }
    if (auth_ != Auth::want_method) {
      why = "AuthMethod sent twice";
      return LoginStatus::initiator_error;
    }
    if (!list_contains(kv.value, "CHAP")) {
      why = "target requires CHAP; initiator did not offer it";
      return LoginStatus::authentication_failure;
    }
    append_pair(out, k, "CHAP");
    auth_ = Auth::want_chap_a;
    return LoginStatus::success;
  }
  if (k == "CHAP_A") {
    if (auth_ != Auth::want_chap_a) {
      why = "CHAP_A out of sequence";
      return LoginStatus::initiator_error;
    }
    if (!list_contains(kv.value, "5")) {
      why = "initiator offers no CHAP algorithm we support (MD5 = 5)";
      return LoginStatus::authentication_failure;
    }
    if (!random_challenge(challenge_, challenge_id_)) {
      why = "random number generator failed";
      return LoginStatus::target_error;
    }
    append_pair(out, "CHAP_A", "5");
    append_pair(out, "CHAP_I", std::to_string(challenge_id_));
    append_pair(out, "CHAP_C", encode_hex_value(challenge_.data(), challenge_.size()));
    auth_ = Auth::want_response;
    return LoginStatus::success;
  }
  // CHAP_R, CHAP_I and CHAP_C travel with CHAP_N and are handled with it.
  if ((k == "CHAP_R" || k == "CHAP_I" || k == "CHAP_C") && find_key(pairs, "CHAP_N") != nullptr)
    return LoginStatus::success;
  if (k == "CHAP_N" || k == "CHAP_R") {
    if (auth_ != Auth::want_response) {
      why = "CHAP response out of sequence";
      return LoginStatus::initiator_error;
    }
    if (k == "CHAP_R") {
      why = "CHAP_R without CHAP_N";
      return LoginStatus::authentication_failure;
    }
    const KeyValue* r = find_key(pairs, "CHAP_R");
    if (r == nullptr) {
      why = "CHAP_N without CHAP_R";
      return LoginStatus::authentication_failure;
    }
    // Checked again here: a guesser's parallel connections all got their challenge before the
    // first of them failed.
    if (backed_off()) {
      why = "CHAP refused: failed-authentication back-off for this address";
      return LoginStatus::service_unavailable;
    }
    auto response = decode_binary_value(r->value);
    const auto expected = chap_md5_response(challenge_id_, chap_secret_, challenge_);
    const bool user_ok =
        kv.value.size() == chap_user_.size() &&
        bytes_equal(reinterpret_cast<const uint8_t*>(kv.value.data()),
                    reinterpret_cast<const uint8_t*>(chap_user_.data()), chap_user_.size());
    if (!response || response->size() != expected.size() || !user_ok ||
        !bytes_equal(response->data(), expected.data(), expected.size())) {
      if (backoff_ != nullptr) backoff_->record_failure(source_);
      why = "CHAP authentication failed (wrong name or secret)";
      return LoginStatus::authentication_failure;
    }
    // Mutual CHAP: the initiator challenges us.
    const KeyValue* ci = find_key(pairs, "CHAP_I");
    const KeyValue* cc = find_key(pairs, "CHAP_C");
    if (ci != nullptr || cc != nullptr) {
      if (ci == nullptr || cc == nullptr) {
        why = "mutual CHAP needs both CHAP_I and CHAP_C";
        return LoginStatus::authentication_failure;
      }
      if (mutual_user_.empty()) {
        why = "initiator asks for mutual CHAP but the target has no mutual secret";
        return LoginStatus::authentication_failure;
      }
      auto id = parse_number(ci->value);
      auto challenge = decode_binary_value(cc->value);
      if (!id || *id > 255 || !challenge) {
        why = "malformed mutual CHAP challenge";
        return LoginStatus::authentication_failure;
      }
      if (*challenge == challenge_) {
        why = "mutual CHAP challenge reflects ours";
        return LoginStatus::authentication_failure;
      }
      const auto answer = chap_md5_response(uint8_t(*id), mutual_secret_, *challenge);
      append_pair(out, "CHAP_N", mutual_user_);
      append_pair(out, "CHAP_R", encode_hex_value(answer.data(), answer.size()));
    }
    auth_ = Auth::done;
    return LoginStatus::success;
  }
  if (k == "CHAP_I" || k == "CHAP_C") {
    why = "CHAP_I/CHAP_C without CHAP_N";
    return LoginStatus::initiator_error;
  }
  append_pair(out, k, "NotUnderstood");
  return LoginStatus::success;
}

void LoginNegotiator::operational_key(const KeyValue& kv, std::string& out) {
  const std::string_view k = kv.key;
  const std::string_view v = kv.value;
  SessionParams& p = params_;
  const bool discovery = p.session_type == SessionType::discovery;

  // Declarative keys (no answer).
  if (k == "InitiatorName" || k == "InitiatorAlias" || k == "TargetName" || k == "SessionType")
    return;
  if (discovery && irrelevant_for_discovery(k)) {
    append_pair(out, k, "Irrelevant");
    return;
  }
  auto number_in = [&](uint64_t lo, uint64_t hi) -> std::optional<uint32_t> {
    auto n = parse_number(v);
    if (!n || *n < lo || *n > hi) return std::nullopt;
    return uint32_t(*n);
  };
  if (k == "HeaderDigest" || k == "DataDigest") {
    std::string_view pick = pick_digest(v);
    if (pick.empty()) {
      append_pair(out, k, "Reject");
      return;
    }
    (k == "HeaderDigest" ? p.header_digest : p.data_digest) = pick == "CRC32C";
    append_pair(out, k, pick);
  } else if (k == "MaxRecvDataSegmentLength") {
    // Declarative: the most the initiator accepts per PDU from us.
    if (auto n = number_in(512, (1u << 24) - 1))
      p.initiator_max_recv_data_segment_length = *n;
    else
      append_pair(out, k, "Reject");
  } else if (k == "MaxBurstLength") {
    if (auto n = number_in(512, (1u << 24) - 1)) {
      p.max_burst_length = std::min(*n, portal_.max_burst_length_max);
      append_pair(out, k, std::to_string(p.max_burst_length));
    } else {
      append_pair(out, k, "Reject");
    }
  } else if (k == "FirstBurstLength") {
    if (auto n = number_in(512, (1u << 24) - 1)) {
      // Also capped by our MaxBurstLength limit, so the value we answer never exceeds the
      // MaxBurstLength we answer (in either key order) and is the value we then enforce.
      p.first_burst_length =
          std::min({*n, portal_.first_burst_length_max, portal_.max_burst_length_max});
      append_pair(out, k, std::to_string(p.first_burst_length));
    } else {
      append_pair(out, k, "Reject");
    }
  } else if (k == "InitialR2T") {
    // Result is OR: we would take No, so the initiator's choice stands.
    if (auto b = parse_bool(v)) {
      p.initial_r2t = *b;
      append_pair(out, k, *b ? "Yes" : "No");
    } else {
      append_pair(out, k, "Reject");
    }
  } else if (k == "ImmediateData") {
    // Result is AND: we would take Yes, so the initiator's choice stands.
    if (auto b = parse_bool(v)) {
      p.immediate_data = *b;
      append_pair(out, k, *b ? "Yes" : "No");
    } else {
      append_pair(out, k, "Reject");
    }
  } else if (k == "MaxOutstandingR2T") {
    if (auto n = number_in(1, 65535)) {
      p.max_outstanding_r2t = std::min(*n, portal_.max_outstanding_r2t_max);
      append_pair(out, k, std::to_string(p.max_outstanding_r2t));
    } else {
      append_pair(out, k, "Reject");
    }
  } else if (k == "DataPDUInOrder" || k == "DataSequenceInOrder") {
    // Result is OR and we answer Yes: data arrives in order.
    if (parse_bool(v))
      append_pair(out, k, "Yes");
    else
      append_pair(out, k, "Reject");
  } else if (k == "DefaultTime2Wait") {
    if (auto n = number_in(0, 3600)) {
      p.default_time2wait = std::max<uint32_t>(*n, 2);
      append_pair(out, k, std::to_string(p.default_time2wait));
    } else {
      append_pair(out, k, "Reject");
    }
  } else if (k == "DefaultTime2Retain") {
    if (auto n = number_in(0, 3600)) {
      p.default_time2retain = std::min<uint32_t>(*n, 20);
      append_pair(out, k, std::to_string(p.default_time2retain));
    } else {
      append_pair(out, k, "Reject");
    }
  } else if (k == "ErrorRecoveryLevel") {
    if (number_in(0, 2))
      append_pair(out, k, "0");
    else
      append_pair(out, k, "Reject");
  } else if (k == "MaxConnections") {
    if (number_in(1, 65535))
      append_pair(out, k, "1");
    else
      append_pair(out, k, "Reject");
  } else if (k == "IFMarker" || k == "OFMarker") {
    if (parse_bool(v))
      append_pair(out, k, "No");
    else
      append_pair(out, k, "Reject");
  } else if (k == "IFMarkInt" || k == "OFMarkInt") {
    append_pair(out, k, "Irrelevant");
  } else if (k == "iSCSIProtocolLevel") {
    if (auto n = number_in(0, 31))
      append_pair(out, k, *n >= 1 ? "1" : "0");
    else
      append_pair(out, k, "Reject");
  } else if (k == "TaskReporting") {
    append_pair(out, k, "RFC3720");
  } else {
    append_pair(out, k, "NotUnderstood");
  }
  if (p.first_burst_length > p.max_burst_length) p.first_burst_length = p.max_burst_length;
}

void LoginNegotiator::declare_target_keys(std::string& out) {
  if (declared_) return;
  declared_ = true;
  params_.target_max_recv_data_segment_length = portal_.max_recv_data_segment_length;
  append_pair(out, "MaxRecvDataSegmentLength",
              std::to_string(portal_.max_recv_data_segment_length));
}

LoginStep LoginNegotiator::on_request(const Bhs& h, std::span<const uint8_t> data,
                                      LoginReply& reply) {
  if (failure_reason_ != nullptr) return fail(failure_status_, failure_reason_, h, reply);
  if (++pdus_ > kLoginPdusMax)
    return fail(LoginStatus::initiator_error, "too many login PDUs", h, reply);

  const uint8_t flags = h.flags();
  const bool transit = (flags & kTransit) != 0;
  const bool cont = (flags & kContinue) != 0;
  const uint8_t csg = (flags >> 2) & 3;
  const uint8_t nsg = flags & 3;

  if (first_) {
    if (h.b[3] > 0)
      return fail(LoginStatus::unsupported_version, "unsupported iSCSI version", h, reply);
    if (load_be16(h.b + 14) != 0)
      return fail(LoginStatus::session_does_not_exist,
                  "TSIH set: adding connections to a session is not supported (MaxConnections=1)",
                  h, reply);
    std::memcpy(isid_, h.b + 8, 6);
    stage_ = csg;
  } else if (std::memcmp(isid_, h.b + 8, 6) != 0) {
    return fail(LoginStatus::initiator_error, "ISID changed during login", h, reply);
  }
  if (csg != stage_ || csg == 2 || csg == kStageFullFeature)
    return fail(LoginStatus::initiator_error, "login request in the wrong stage", h, reply);
  if (transit && cont)
    return fail(LoginStatus::initiator_error, "login request with both T and C", h, reply);
  if (transit && (nsg <= csg || nsg == 2))
    return fail(LoginStatus::initiator_error, "invalid next stage", h, reply);

  // Request text continued over several PDUs: acknowledge with an empty response.
  if (pending_text_.size() + data.size() > kLoginTextMax)
    return fail(LoginStatus::initiator_error, "login text too long", h, reply);
  pending_text_.insert(pending_text_.end(), data.begin(), data.end());

  reply.bhs.clear();
  reply.bhs.set_opcode(Opcode::login_response);
  std::memcpy(reply.bhs.b + 8, isid_, 6);
  reply.bhs.set_itt(h.itt());
  reply.data_length = 0;
  if (cont) {
    reply.bhs.b[1] = uint8_t(csg << 2);
    return LoginStep::continue_login;
  }

  std::vector<KeyValue> pairs;
  const TextParse parsed = parse_text_pairs(pending_text_, pairs);
  pending_text_.clear();
  if (parsed != TextParse::ok)
    return fail(
        LoginStatus::initiator_error,
        parsed == TextParse::duplicate_key ? "duplicate key in login text" : "malformed login text",
        h, reply);

  const char* why = nullptr;
  if (first_) {
    first_ = false;
    const LoginStatus st = first_request(pairs, why);
    if (st != LoginStatus::success) return fail(st, why, h, reply);
  }

  std::string out;
  if (params_.session_type == SessionType::normal && !tpgt_sent_) {
    tpgt_sent_ = true;
    append_pair(out, "TargetPortalGroupTag", std::to_string(portal_.target_portal_group_tag));
  }
  if (csg == kStageSecurity) {
    for (const auto& kv : pairs) {
      if (is_security_key(kv.key)) {
        const LoginStatus st = security_key(kv, pairs, out, why);
        if (st != LoginStatus::success) return fail(st, why, h, reply);
      } else {
        operational_key(kv, out);
      }
    }
  } else {
    if (auth_ == Auth::want_method || auth_ == Auth::want_chap_a || auth_ == Auth::want_response)
      return fail(LoginStatus::authentication_failure,
                  "operational stage before authentication completed", h, reply);
    for (const auto& kv : pairs) {
      if (is_security_key(kv.key))
        return fail(LoginStatus::invalid_during_login, "security key in the operational stage", h,
                    reply);
      operational_key(kv, out);
    }
  }

  // Decide whether to follow the initiator to the next stage.
  bool go = transit;
  if (csg == kStageSecurity && transit) {
    if (auth_ == Auth::not_required) auth_ = Auth::done;  // no AuthMethod offered: None
    go = auth_ == Auth::done;
    // An initiator that skips CHAP we require: refuse rather than loop.
    if (!go && auth_ == Auth::want_method)
      return fail(LoginStatus::authentication_failure, "target requires CHAP", h, reply);
  }
  if (go && (nsg == kStageOperational || nsg == kStageFullFeature)) declare_target_keys(out);
  if (csg == kStageOperational) declare_target_keys(out);

  if (out.size() > kLoginReplyMax)
    return fail(LoginStatus::out_of_resources, "login response too long", h, reply);
  std::memcpy(reply.data.data(), out.data(), out.size());
  reply.data_length = out.size();
  if (go) {
    reply.bhs.b[1] = uint8_t(kTransit | csg << 2 | nsg);
    stage_ = nsg;
    if (nsg == kStageFullFeature) return LoginStep::login_complete;
  } else {
    reply.bhs.b[1] = uint8_t(csg << 2);
  }
  return LoginStep::continue_login;
}

}  // namespace ferry::iscsi
