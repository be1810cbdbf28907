// CHAP helpers (see chap.h).
#include "gateway/iscsi/chap.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

namespace ferry::iscsi {

std::array<uint8_t, kChapMd5Bytes> chap_md5_response(uint8_t identifier, std::string_view secret,
                                                     const std::vector<uint8_t>& challenge) {
  std::array<uint8_t, kChapMd5Bytes> out{};
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  unsigned len = 0;
  if (ctx != nullptr && EVP_DigestInit_ex(ctx, EVP_md5(), nullptr) == 1 &&
      EVP_DigestUpdate(ctx, &identifier, 1) == 1 &&
      EVP_DigestUpdate(ctx, secret.data(), secret.size()) == 1 &&
      EVP_DigestUpdate(ctx, challenge.data(), challenge.size()) == 1) {
    EVP_DigestFinal_ex(ctx, out.data(), &len);
  }
  EVP_MD_CTX_free(ctx);
  return out;
}

namespace {
int hex_nibble(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
int b64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}
}  // namespace

std::optional<std::vector<uint8_t>> decode_binary_value(std::string_view text) {
  if (text.size() < 3 || text[0] != '0') return std::nullopt;
  const char kind = text[1];
  std::string_view body = text.substr(2);
  std::vector<uint8_t> out;
  if (kind == 'x' || kind == 'X') {
    if (body.size() > 2 * kChapBinaryMax) return std::nullopt;
    size_t i = 0;
    if (body.size() % 2 == 1) {  // odd digit count: leading nibble
      int v = hex_nibble(body[0]);
      if (v < 0) return std::nullopt;
      out.push_back(uint8_t(v));
      i = 1;
    }
    for (; i < body.size(); i += 2) {
      int hi = hex_nibble(body[i]), lo = hex_nibble(body[i + 1]);
      if (hi < 0 || lo < 0) return std::nullopt;
      out.push_back(uint8_t(hi << 4 | lo));
    }
  } else if (kind == 'b' || kind == 'B') {
    if (body.size() % 4 != 0 || body.size() > (kChapBinaryMax + 2) / 3 * 4) return std::nullopt;
    for (size_t i = 0; i < body.size(); i += 4) {
      int v[4];
      int pads = 0;
      for (int k = 0; k < 4; ++k) {
        char c = body[i + k];
        if (c == '=' && i + 4 == body.size() && k >= 2) {
          v[k] = 0;
          ++pads;
        } else {
          if (pads > 0) return std::nullopt;
          v[k] = b64_value(c);
          if (v[k] < 0) return std::nullopt;
        }
      }
      uint32_t w =
          uint32_t(v[0]) << 18 | uint32_t(v[1]) << 12 | uint32_t(v[2]) << 6 | uint32_t(v[3]);
      out.push_back(uint8_t(w >> 16));
      if (pads < 2) out.push_back(uint8_t(w >> 8));
      if (pads < 1) out.push_back(uint8_t(w));
    }
  } else {
    return std::nullopt;
  }
  if (out.empty() || out.size() > kChapBinaryMax) return std::nullopt;
  return out;
}

std::string encode_hex_value(const uint8_t* bytes, size_t n) {
  static const char* kHex = "0123456789abcdef";
  std::string s = "0x";
  s.reserve(2 + 2 * n);
  for (size_t i = 0; i < n; ++i) {
    s.push_back(kHex[bytes[i] >> 4]);
    s.push_back(kHex[bytes[i] & 15]);
  }
  return s;
}

bool random_challenge(std::vector<uint8_t>& out, uint8_t& identifier) {
  out.resize(kChapChallengeBytes);
  return RAND_bytes(out.data(), int(out.size())) == 1 && RAND_bytes(&identifier, 1) == 1;
}

bool bytes_equal(const uint8_t* a, const uint8_t* b, size_t n) {
  return CRYPTO_memcmp(a, b, n) == 0;
}

}  // namespace ferry::iscsi
