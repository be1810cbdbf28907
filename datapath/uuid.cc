// Uuid (see uuid.h).
#include "datapath/uuid.h"

#include <openssl/rand.h>

#include "datapath/assert.h"

namespace ferry {

Uuid Uuid::random() noexcept {
  Uuid u;
  const int ok = RAND_bytes(u.bytes.data(), int(u.bytes.size()));
  FERRY_ASSERT(ok == 1);  // the process cannot go on without a working RNG
  u.bytes[6] = uint8_t((u.bytes[6] & 0x0f) | 0x40);  // version 4
  u.bytes[8] = uint8_t((u.bytes[8] & 0x3f) | 0x80);  // RFC 4122 variant
  return u;
}

std::optional<Uuid> Uuid::parse(std::string_view text) noexcept {
  if (text.size() != 36) return std::nullopt;
  Uuid u;
  size_t byte = 0;
  for (size_t i = 0; i < text.size();) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (text[i] != '-') return std::nullopt;
      ++i;
      continue;
    }
    auto nibble = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    const int hi = nibble(text[i]), lo = nibble(text[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    u.bytes[byte++] = uint8_t(hi << 4 | lo);
    i += 2;
  }
  return u;
}

std::string Uuid::to_string() const {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s;
  s.reserve(36);
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s.push_back('-');
    s.push_back(kHex[bytes[i] >> 4]);
    s.push_back(kHex[bytes[i] & 0xf]);
  }
  return s;
}

bool Uuid::is_nil() const noexcept {
  for (uint8_t b : bytes)
    if (b != 0) return false;
  return true;
}

}  // namespace ferry
