// Uuid: a 128-bit volume identity (RFC 4122 text form), the root of a volume's stable SCSI
// identity (NAA ID, unit serial) and of its identity across the WAN link. Value type, any thread.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ferry {

struct Uuid {
  std::array<uint8_t, 16> bytes{};

  // A random (version 4) UUID from OpenSSL's RAND_bytes.
  static Uuid random() noexcept;
  // Parses "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (hex digits, either case); nullopt otherwise.
  static std::optional<Uuid> parse(std::string_view text) noexcept;
  // Lower-case RFC 4122 text form.
  std::string to_string() const;
  bool is_nil() const noexcept;
  friend bool operator==(const Uuid&, const Uuid&) = default;
};

}  // namespace ferry
