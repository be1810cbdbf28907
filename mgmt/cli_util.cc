// Command-line parsing helpers (see cli_util.h).
#include "mgmt/cli_util.h"

#include <charconv>

namespace ferry::mgmt {

bool split_host_port(const std::string& text, std::string& host, uint16_t& port, bool allow_zero) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  unsigned value = 0;
  const char* first = text.data() + colon + 1;
  const char* last = text.data() + text.size();
  auto [p, ec] = std::from_chars(first, last, value);
  if (ec != std::errc{} || p != last || first == last || value > 65535 || (value == 0 && !allow_zero))
    return false;
  host = text.substr(0, colon);
  port = uint16_t(value);
  return true;
}

bool split_user_secret(const std::string& text, std::string& user, std::string& secret) {
  const auto colon = text.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size()) return false;
  user = text.substr(0, colon);
  secret = text.substr(colon + 1);
  return true;
}

}  // namespace ferry::mgmt
