// libFuzzer target: what a WAN peer controls before it is trusted with a volume. The first input
// byte picks a mode:
//   0 the peer's certificate (DER): the role check both edges run on it in the handshake
//     (tls::edge_identity_of / check_edge_role: SAN URIs urn:ferry:ROLE:NAME, extended key usage),
//     for both roles, with and without a pinned name;
//   1 the client's first frames after TLS, as the datacenter edge takes them: the first must be
//     a HELLO (parsed, negotiated against ours, the HELLO_ACK encoded and parsed back), then
//     OPEN_VOLUME names and CLOSE_VOLUME frames; magic and CRCs are fixed up first so the
//     fuzzer reaches the bodies;
//   2 the server's answer as the cloud edge takes it (HELLO_ACK or ERROR, then VOLUME_INFO).
// Invariants trapped on: a granted role has a non-empty name equal to the pinned one; a
// negotiated HELLO_ACK is one the client accepts (version inside both ranges, capabilities a
// subset of both, limits no larger than either). Single-threaded, no I/O.
#include <openssl/x509.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "datapath/endian.h"
#include "datapath/tls/tls_engine.h"
#include "datapath/wan/frame.h"

using namespace ferry;
using namespace ferry::wan;

namespace {

void check(bool ok) {
  if (!ok) __builtin_trap();
}

void certificate(std::span<const uint8_t> der) {
  const unsigned char* p = der.data();
  X509* cert = d2i_X509(nullptr, &p, long(der.size()));
  if (cert == nullptr) return;
  const tls::EdgeIdentity id = tls::edge_identity_of(cert);
  check(id.roles.size() == id.names.size());
  for (const char* role : {"cloud-edge", "dc-edge"}) {
    for (const char* pinned : {"", "dc-edge", "cloud-edge"}) {
      std::string name;
      const std::string why = tls::check_edge_role(id, role, pinned, name);
      if (why.empty()) {
        check(!name.empty());
        check(*pinned == '\0' || name == pinned);
      }
    }
  }
  X509_free(cert);
}

// Rewrites magic, header CRC and payload CRC of every frame in place (payload_bytes as given,
// clamped to what is left), so parse_frame looks past them.
void fix_up(std::vector<uint8_t>& b) {
  size_t at = 0;
  while (at + kFrameHeaderBytes <= b.size()) {
    uint8_t* h = b.data() + at;
    store_be16(h, kFrameMagic);
    uint32_t payload = load_be32(h + 28);
    const size_t left = b.size() - at - kFrameHeaderBytes;
    if (payload > left) payload = uint32_t(left);
    store_be32(h + 28, payload);
    store_be32(h + 32, payload ? crc32c({h + kFrameHeaderBytes, payload}) : 0);
    store_be32(h + 36, crc32c({h, 36}));
    at += kFrameHeaderBytes + payload;
  }
}

Hello our_server_hello() {
  Hello ours;
  ours.capabilities =
      kCapLz4 | kCapZstd | kCapIgzip | kCapDedupSha256 | kCapBlockStatus | kCapWrite;
  ours.requests_max = 4096;
  return ours;
}

void server_side(std::span<const uint8_t> in) {
  bool hello_done = false;
  for (int frames = 0; frames < 64 && !in.empty(); ++frames) {
    const FrameParse f = parse_frame(in, kFramePayloadBytesMax);
    if (f.status == ParseStatus::need_more || f.status == ParseStatus::fatal) return;
    in = in.subspan(f.frame_bytes);
    if (f.status == ParseStatus::reject) {
      uint8_t body[kErrorBytesMax];
      check(encode_error(body, WireError::protocol_error, f.why ? f.why : "") <= kErrorBytesMax);
      continue;
    }
    if (!hello_done) {
      if (f.header.type != FrameType::hello) return;  // the server closes
      auto client = parse_hello(f.payload);
      if (!client) return;
      const Hello ours = our_server_hello();
      auto ack = negotiate(client.value(), ours, 42);
      if (!ack) return;
      const Hello& a = ack.value();
      check(a.version_min == a.version_max);
      check(a.version_min >= client.value().version_min &&
            a.version_min <= client.value().version_max);
      check(a.version_min >= ours.version_min && a.version_min <= ours.version_max);
      check((a.capabilities & ~(client.value().capabilities & ours.capabilities)) == 0);
      check(a.frame_payload_bytes_max <= client.value().frame_payload_bytes_max);
      check(a.requests_max <= client.value().requests_max && a.requests_max <= ours.requests_max);
      uint8_t body[kHelloBytes];
      encode_hello(body, a);
      auto back = parse_hello({body, sizeof body});
      check(back.ok() && back.value().session_id == 42 &&
            back.value().capabilities == a.capabilities);
      hello_done = true;
      continue;
    }
    if (f.header.type == FrameType::open_volume) {
      auto name = parse_volume_name(f.payload);
      if (name) check(!name.value().empty() && name.value().size() <= kVolumeNameBytesMax);
    }
  }
}

void client_side(std::span<const uint8_t> in) {
  bool acked = false;
  for (int frames = 0; frames < 64 && !in.empty(); ++frames) {
    const FrameParse f = parse_frame(in, kFramePayloadBytesMax);
    if (f.status != ParseStatus::ok) return;
    in = in.subspan(f.frame_bytes);
    if (!acked) {
      if (f.header.type == FrameType::error) {
        (void)parse_error(f.payload);
        return;
      }
      if (f.header.type != FrameType::hello_ack || !parse_hello(f.payload)) return;
      acked = true;
      continue;
    }
    if (f.header.type == FrameType::volume_info) {
      auto v = parse_volume_info(f.payload);
      if (v)
        check(v.value().block_bytes >= 512 && v.value().size_bytes % v.value().block_bytes == 0);
    } else if (f.header.type == FrameType::error) {
      auto e = parse_error(f.payload);
      if (e) (void)from_wire_error(e.value().code);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t mode = data[0] % 3;
  std::vector<uint8_t> b(data + 1, data + size);
  if (mode == 0) {
    certificate(b);
  } else {
    fix_up(b);
    if (mode == 1)
      server_side(b);
    else
      client_side(b);
  }
  return 0;
}
