// Text request handling in the full-feature phase (RFC 7143 §11.10-11): SendTargets discovery
// and NotUnderstood for anything else, with request text continued over several PDUs (C bit)
// and long responses split into chunks of the initiator's MaxRecvDataSegmentLength.
// Pure protocol logic; bounded by kTextRequestMax.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "datapath/result.h"
#include "gateway/iscsi/portal_config.h"

namespace ferry::iscsi {

inline constexpr size_t kTextRequestMax = 64 * 1024;

struct TextChunk {
  std::span<const uint8_t> bytes;
  bool final = true;
};

class TextResponder {
 public:
  // Feeds one text request PDU. `own_target` is the session's target (empty for discovery).
  // protocol_error on malformed or oversized text.
  Errc feed(const PortalConfig& portal, std::string_view own_target, std::span<const uint8_t> data,
            bool continued);
  // True while the initiator still has request text to send (answered with empty chunks).
  bool collecting() const noexcept { return collecting_; }
  // Next part of the response, at most max_bytes.
  TextChunk next_chunk(uint32_t max_bytes) noexcept;

 private:
  std::string request_;
  std::string response_;
  size_t sent_ = 0;
  bool collecting_ = true;
};

}  // namespace ferry::iscsi
