// libFuzzer target: the login negotiator (security and operational stages, CHAP and mutual CHAP,
// discovery CHAP) driven by a sequence of login requests. Single-threaded, no I/O.
//
// Input: a sequence of chunks, each  BHS(48) | length(2, big-endian) | data(length, truncated to
// what is left). The run stops at the first failed or completed login.
//
// CHAP help: the fuzzer cannot compute MD5 over the target's random challenge, so a request
// whose text holds the exact item "CHAP_R=auto" has it replaced by the correct response to the
// last challenge, computed with the secret of the CHAP_N in the same text. Without that help a
// login to a CHAP-protected target or discovery must never complete (authentication bypass).
// FERRY_FUZZ_VERBOSE=1 prints each step (handy with a single input).
#include <algorithm>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/iscsi/chap.h"
#include "gateway/iscsi/login.h"
#include "gateway/iscsi/text_kv.h"

using namespace ferry::iscsi;

namespace {

constexpr std::string_view kOpenIqn = "iqn.2024-01.io.ferry:open";
constexpr std::string_view kSecureIqn = "iqn.2024-01.io.ferry:secure";

const PortalConfig& portal() {
  static const PortalConfig p = [] {
    PortalConfig c;
    TargetAuthConfig open;
    open.iqn = std::string(kOpenIqn);
    TargetAuthConfig secure;
    secure.iqn = std::string(kSecureIqn);
    secure.chap_user = "alice";
    secure.chap_secret = "alice-secret-12";
    secure.mutual_chap_user = "ferry";
    secure.mutual_chap_secret = "ferry-secret-34";
    c.targets = {open, secure};
    c.discovery_chap_user = "disco";
    c.discovery_chap_secret = "disco-secret-56";
    c.discovery_mutual_chap_user = "ferry-disco";
    c.discovery_mutual_chap_secret = "ferry-disco-secret";
    return c;
  }();
  return p;
}

std::string_view secret_for(std::string_view user) {
  const PortalConfig& p = portal();
  if (user == p.targets[1].chap_user) return p.targets[1].chap_secret;
  if (user == p.discovery_chap_user) return p.discovery_chap_secret;
  return {};
}

// The last CHAP challenge the target sent (CHAP_I / CHAP_C of a reply).
struct Challenge {
  uint8_t id = 0;
  std::vector<uint8_t> bytes;
};

void remember_challenge(const LoginReply& reply, std::optional<Challenge>& out) {
  std::vector<KeyValue> pairs;
  if (parse_text_pairs({reply.data.data(), reply.data_length}, pairs) != TextParse::ok) return;
  const KeyValue* i = nullptr;
  const KeyValue* c = nullptr;
  for (const auto& kv : pairs) {
    if (kv.key == "CHAP_I") i = &kv;
    if (kv.key == "CHAP_C") c = &kv;
  }
  if (i == nullptr || c == nullptr) return;
  auto bytes = decode_binary_value(c->value);
  if (!bytes) return;
  unsigned id = 0;
  auto [end, ec] = std::from_chars(i->value.data(), i->value.data() + i->value.size(), id);
  if (ec != std::errc{} || end != i->value.data() + i->value.size() || id > 255) __builtin_trap();
  Challenge ch;
  ch.id = uint8_t(id);
  ch.bytes = std::move(*bytes);
  out = std::move(ch);
}

// Replaces the item "CHAP_R=auto" by the right answer; true if it did.
bool answer_challenge(std::vector<uint8_t>& text, const std::optional<Challenge>& ch) {
  static constexpr std::string_view kAuto = "CHAP_R=auto";
  std::string_view all(reinterpret_cast<const char*>(text.data()), text.size());
  size_t at = std::string_view::npos;
  std::string_view user;
  for (size_t pos = 0; pos < all.size();) {
    size_t end = all.find('\0', pos);
    if (end == std::string_view::npos) end = all.size();
    std::string_view item = all.substr(pos, end - pos);
    if (item == kAuto) at = pos;
    if (item.starts_with("CHAP_N=")) user = item.substr(7);
    pos = end + 1;
  }
  if (at == std::string_view::npos || !ch) return false;
  const auto r = chap_md5_response(ch->id, secret_for(user), ch->bytes);
  const std::string value = "CHAP_R=" + encode_hex_value(r.data(), r.size());
  std::vector<uint8_t> out(text.begin(), text.begin() + ptrdiff_t(at));
  out.insert(out.end(), value.begin(), value.end());
  out.insert(out.end(), text.begin() + ptrdiff_t(at + kAuto.size()), text.end());
  text = std::move(out);
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> in(data, size);
  LoginNegotiator negotiator(portal());
  auto reply = std::make_unique<LoginReply>();  // 8 KiB: keep it off the stack
  std::optional<Challenge> challenge;
  bool answered = false;  // the harness supplied a correct CHAP response at least once
  static const bool verbose = std::getenv("FERRY_FUZZ_VERBOSE") != nullptr;

  while (in.size() >= kBhsBytes) {
    Bhs h;
    std::memcpy(h.b, in.data(), kBhsBytes);
    in = in.subspan(kBhsBytes);
    size_t len = 0;
    if (in.size() >= 2) {
      len = size_t{in[0]} << 8 | in[1];
      in = in.subspan(2);
    } else {
      in = {};
    }
    len = std::min(len, in.size());
    std::vector<uint8_t> text(in.begin(), in.begin() + ptrdiff_t(len));
    in = in.subspan(len);
    answered |= answer_challenge(text, challenge);

    *reply = LoginReply{};
    const LoginStep step = negotiator.on_request(h, text, *reply);
    if (verbose) {
      std::fprintf(stderr, "login_fuzz: request flags %02x, %zu bytes text -> %s%s%s\n", h.b[1],
                   text.size(),
                   step == LoginStep::failed           ? "failed"
                   : step == LoginStep::login_complete ? "complete"
                                                       : "continue",
                   negotiator.failure_reason() ? ": " : "",
                   negotiator.failure_reason() ? negotiator.failure_reason() : "");
    }

    if (reply->data_length > kLoginReplyMax) __builtin_trap();
    if (reply->bhs.opcode() != Opcode::login_response) __builtin_trap();
    if (reply->bhs.itt() != h.itt()) __builtin_trap();
    if (std::memcmp(reply->bhs.b + 8, h.b + 8, 6) != 0) __builtin_trap();  // ISID echoed
    // What we send must itself be well-formed key=value text.
    std::vector<KeyValue> pairs;
    const TextParse parsed = parse_text_pairs({reply->data.data(), reply->data_length}, pairs);
    if (parsed == TextParse::bad_syntax || parsed == TextParse::too_long) __builtin_trap();

    if (step == LoginStep::failed) {
      if (negotiator.failure_reason() == nullptr) __builtin_trap();
      if (reply->data_length != 0) __builtin_trap();
      const uint16_t status = uint16_t(reply->bhs.b[36] << 8 | reply->bhs.b[37]);
      if (status == 0) __builtin_trap();
      break;
    }
    if (negotiator.failure_reason() != nullptr) __builtin_trap();
    if (step == LoginStep::login_complete) {
      const SessionParams& p = negotiator.params();
      if ((reply->bhs.b[1] & 0x83) != 0x83) __builtin_trap();  // T=1, NSG=full feature
      if (p.initiator_name.empty()) __builtin_trap();
      if (p.first_burst_length > p.max_burst_length) __builtin_trap();
      if (p.max_burst_length > portal().max_burst_length_max) __builtin_trap();
      if (p.max_outstanding_r2t == 0 || p.max_outstanding_r2t > portal().max_outstanding_r2t_max)
        __builtin_trap();
      if (p.initiator_max_recv_data_segment_length < 512) __builtin_trap();
      if (p.target_max_recv_data_segment_length != portal().max_recv_data_segment_length)
        __builtin_trap();
      const bool protected_login =
          p.session_type == SessionType::discovery || p.target_name == kSecureIqn;
      if (p.session_type == SessionType::normal && p.target_name != kOpenIqn &&
          p.target_name != kSecureIqn)
        __builtin_trap();
      if (protected_login && !answered) __builtin_trap();  // CHAP bypassed
      break;
    }
    remember_challenge(*reply, challenge);
  }
  return 0;
}
