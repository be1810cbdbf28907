// iSCSI text key=value lists (RFC 7143 §6.1): NUL-terminated "key=value" pairs used by login
// and text PDUs. Parsing validates syntax only; meaning is the caller's. Pure code.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::iscsi {

inline constexpr size_t kKeyNameMax = 63;
inline constexpr size_t kTextValueMax = 8192;  // large enough for CHAP values and lists

struct KeyValue {
  std::string key;
  std::string value;
};

enum class TextParse : uint8_t { ok, bad_syntax, too_long, duplicate_key };

// Parses a complete text segment into pairs. A trailing segment without NUL is accepted (some
// initiators omit the last NUL); padding NULs are skipped.
TextParse parse_text_pairs(std::span<const uint8_t> data, std::vector<KeyValue>& out);

// Appends "key=value\0".
void append_pair(std::string& out, std::string_view key, std::string_view value);

}  // namespace ferry::iscsi
