// libFuzzer target: the full-feature Text responder (SendTargets, NotUnderstood), request text
// continued over several PDUs and the response drained in small chunks, as Connection does.
// Single-threaded, no I/O.
//
// Input: byte 0  session: 0 discovery, 1 normal on the open target, 2 normal on the secure
//                target, 3 normal on an unknown target name;
//        then request PDUs, each  flags(1: bit0 C=continued) | length(2, big-endian) | data,
//        fed until one without C (or an error); then the remaining bytes are the
//        MaxRecvDataSegmentLength of each next_chunk call (1..256, 1 byte each; 64 when none).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/iscsi/text.h"
#include "gateway/iscsi/text_kv.h"

using namespace ferry::iscsi;
using ferry::Errc;

namespace {

constexpr std::string_view kOpenIqn = "iqn.2024-01.io.ferry:open";
constexpr std::string_view kSecureIqn = "iqn.2024-01.io.ferry:secure";

const PortalConfig& portal() {
  static const PortalConfig p = [] {
    PortalConfig c;
    c.portal_address = "192.0.2.1:3260,1";
    TargetAuthConfig open;
    open.iqn = std::string(kOpenIqn);
    TargetAuthConfig secure;
    secure.iqn = std::string(kSecureIqn);
    secure.chap_user = "alice";
    secure.chap_secret = "alice-secret-12";
    c.targets = {open, secure};
    return c;
  }();
  return p;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  std::string_view own;
  switch (data[0] & 3) {
    case 0:
      own = {};
      break;
    case 1:
      own = kOpenIqn;
      break;
    case 2:
      own = kSecureIqn;
      break;
    case 3:
      own = "iqn.2024-01.io.ferry:nonexistent";
      break;
  }
  std::span<const uint8_t> in(data + 1, size - 1);

  TextResponder text;
  size_t fed = 0;
  for (;;) {
    if (!text.collecting()) __builtin_trap();
    bool continued = false;
    size_t len = 0;
    if (in.size() >= 3) {
      continued = (in[0] & 1) != 0;
      len = size_t{in[1]} << 8 | in[2];
      in = in.subspan(3);
    } else {
      in = {};
    }
    len = std::min(len, in.size());
    const Errc e = text.feed(portal(), own, in.first(len), continued);
    in = in.subspan(len);
    fed += len;
    if (e != Errc::ok) {
      // Only malformed or oversized text is refused.
      if (e != Errc::protocol_error) __builtin_trap();
      return 0;
    }
    if (fed > kTextRequestMax) __builtin_trap();
    if (!continued) break;
    // While collecting, the answer is an empty, non-final chunk.
    const TextChunk c = text.next_chunk(64);
    if (!c.bytes.empty() || c.final) __builtin_trap();
  }
  if (text.collecting()) __builtin_trap();
  // A second request on the same exchange is refused.
  static const uint8_t kAgain[] = "SendTargets=All";
  if (text.feed(portal(), own, kAgain, false) != Errc::protocol_error) __builtin_trap();

  std::string response;
  for (size_t calls = 0;; ++calls) {
    const uint32_t max_bytes = in.empty() ? 64 : uint32_t(in[0]) + 1;
    if (!in.empty()) in = in.subspan(1);
    const TextChunk c = text.next_chunk(max_bytes);
    if (c.bytes.size() > max_bytes) __builtin_trap();
    if (!c.final && c.bytes.empty()) __builtin_trap();  // no progress
    response.append(reinterpret_cast<const char*>(c.bytes.data()), c.bytes.size());
    if (c.final) break;
    if (calls > (1u << 20)) __builtin_trap();
  }
  // Draining past the end keeps answering an empty final chunk.
  const TextChunk after = text.next_chunk(64);
  if (!after.bytes.empty() || !after.final) __builtin_trap();

  // The reassembled response is well-formed text.
  std::vector<KeyValue> pairs;
  const TextParse parsed =
      parse_text_pairs({reinterpret_cast<const uint8_t*>(response.data()), response.size()}, pairs);
  if (parsed == TextParse::bad_syntax || parsed == TextParse::too_long) __builtin_trap();
  if (!response.empty() && response.back() != '\0') __builtin_trap();
  // A normal session only ever learns about its own target.
  if (!own.empty()) {
    for (const auto& t : portal().targets)
      if (t.iqn != own && response.find(t.iqn) != std::string::npos) __builtin_trap();
  }
  return 0;
}
