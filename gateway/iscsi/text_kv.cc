// iSCSI text key=value lists (see text_kv.h).
#include "gateway/iscsi/text_kv.h"

namespace ferry::iscsi {

namespace {
bool valid_key_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '-' || c == '+' || c == '@' || c == '_';
}
}  // namespace

TextParse parse_text_pairs(std::span<const uint8_t> data, std::vector<KeyValue>& out) {
  size_t pos = 0;
  while (pos < data.size()) {
    if (data[pos] == 0) {  // empty string / padding
      ++pos;
      continue;
    }
    size_t end = pos;
    while (end < data.size() && data[end] != 0) ++end;
    std::string_view item(reinterpret_cast<const char*>(data.data() + pos), end - pos);
    pos = end + 1;
    const size_t eq = item.find('=');
    if (eq == std::string_view::npos || eq == 0) return TextParse::bad_syntax;
    std::string_view key = item.substr(0, eq);
    std::string_view value = item.substr(eq + 1);
    if (key.size() > kKeyNameMax || value.size() > kTextValueMax) return TextParse::too_long;
    for (char c : key)
      if (!valid_key_char(c)) return TextParse::bad_syntax;
    for (const auto& kv : out)
      if (kv.key == key) return TextParse::duplicate_key;
    out.push_back(KeyValue{std::string(key), std::string(value)});
  }
  return TextParse::ok;
}

void append_pair(std::string& out, std::string_view key, std::string_view value) {
  out.append(key);
  out.push_back('=');
  out.append(value);
  out.push_back('\0');
}

}  // namespace ferry::iscsi
