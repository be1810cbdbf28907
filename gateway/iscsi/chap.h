// CHAP (RFC 1994, MD5) as used by iSCSI login (RFC 7143 §12.1.3): challenge generation,
// response computation and the hex/base64 value encodings of CHAP_C/CHAP_R. Pure functions
// except random_challenge (OpenSSL RAND_bytes).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::iscsi {

inline constexpr size_t kChapMd5Bytes = 16;
inline constexpr size_t kChapChallengeBytes = 16;
inline constexpr size_t kChapBinaryMax = 1024;  // largest challenge/response we accept

// MD5(identifier || secret || challenge).
std::array<uint8_t, kChapMd5Bytes> chap_md5_response(uint8_t identifier, std::string_view secret,
                                                     const std::vector<uint8_t>& challenge);

// Decodes an iSCSI binary value: "0x..."/"0X..." hex or "0b..."/"0B..." base64.
// nullopt on bad syntax, empty, or longer than kChapBinaryMax bytes.
std::optional<std::vector<uint8_t>> decode_binary_value(std::string_view text);
std::string encode_hex_value(const uint8_t* bytes, size_t n);  // "0x" + lowercase hex

// Fresh random challenge; false if the RNG failed.
bool random_challenge(std::vector<uint8_t>& out, uint8_t& identifier);

// Constant-time comparison.
bool bytes_equal(const uint8_t* a, const uint8_t* b, size_t n);

}  // namespace ferry::iscsi
