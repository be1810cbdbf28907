// Text request handling (see text.h).
#include "gateway/iscsi/text.h"

#include <algorithm>
#include <vector>

#include "gateway/iscsi/text_kv.h"

namespace ferry::iscsi {

namespace {
void append_target(std::string& out, const PortalConfig& portal, const TargetAuthConfig& t) {
  append_pair(out, "TargetName", t.iqn);
  append_pair(out, "TargetAddress", portal.portal_address);
}
}  // namespace

Errc TextResponder::feed(const PortalConfig& portal, std::string_view own_target,
                         std::span<const uint8_t> data, bool continued) {
  if (!collecting_) return Errc::protocol_error;
  if (request_.size() + data.size() > kTextRequestMax) return Errc::protocol_error;
  request_.append(reinterpret_cast<const char*>(data.data()), data.size());
  if (continued) return Errc::ok;
  collecting_ = false;

  std::vector<KeyValue> pairs;
  if (parse_text_pairs({reinterpret_cast<const uint8_t*>(request_.data()), request_.size()},
                       pairs) != TextParse::ok)
    return Errc::protocol_error;
  for (const auto& kv : pairs) {
    if (kv.key == "SendTargets") {
      if (kv.value == "All") {
        if (own_target.empty()) {
          for (const auto& t : portal.targets) append_target(response_, portal, t);
        } else if (const auto* t = portal.find_target(own_target)) {
          append_target(response_, portal, *t);
        }
      } else if (kv.value.empty()) {
        if (const auto* t = portal.find_target(own_target)) append_target(response_, portal, *t);
      } else if (const auto* t = portal.find_target(kv.value)) {
        if (own_target.empty() || own_target == t->iqn) append_target(response_, portal, *t);
      }
    } else {
      append_pair(response_, kv.key, "NotUnderstood");
    }
  }
  request_.clear();
  request_.shrink_to_fit();
  return Errc::ok;
}

TextChunk TextResponder::next_chunk(uint32_t max_bytes) noexcept {
  if (collecting_) return TextChunk{{}, false};
  const size_t n = std::min<size_t>(max_bytes, response_.size() - sent_);
  TextChunk c{{reinterpret_cast<const uint8_t*>(response_.data()) + sent_, n}, false};
  sent_ += n;
  c.final = sent_ == response_.size();
  return c;
}

}  // namespace ferry::iscsi
