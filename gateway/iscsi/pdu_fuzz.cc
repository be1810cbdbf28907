// libFuzzer target: iSCSI PDU framing (frame_pdu) and data digest checking over arbitrary bytes,
// walked PDU by PDU exactly as Connection::process_rx does. Single-threaded, no I/O.
//
// Input: byte 0   flags: bit0 HeaderDigest, bit1 DataDigest, bit2 harness writes a correct
//                 header digest, bit3 harness writes a correct data digest (so the fuzzer gets
//                 past the CRC checks it cannot compute);
//        1..3     MaxRecvDataSegmentLength, 24-bit big-endian;
//        4..      the receive stream.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "gateway/iscsi/pdu.h"

using namespace ferry::iscsi;

namespace {

void store_le32(uint8_t* p, uint32_t v) {
  p[0] = uint8_t(v);
  p[1] = uint8_t(v >> 8);
  p[2] = uint8_t(v >> 16);
  p[3] = uint8_t(v >> 24);
}

// Writes correct digests into the PDU at the front of `in` where the stream holds them.
void fix_digests(std::span<uint8_t> in, const FramingLimits& limits, bool header, bool data) {
  if (in.size() < kBhsBytes) return;
  const size_t ahs = size_t{in[4]} * 4;
  size_t pos = kBhsBytes + ahs;
  if (limits.header_digest) {
    if (header && pos + kDigestBytes <= in.size())
      store_le32(in.data() + pos, crc32c(in.first(pos)));
    pos += kDigestBytes;
  }
  const uint32_t dsl = ferry::load_be24(in.data() + 5);
  if (!limits.data_digest || !data || dsl == 0) return;
  const size_t padded = pad4(dsl);
  if (pos + padded + kDigestBytes > in.size()) return;
  store_le32(in.data() + pos + padded, crc32c(in.subspan(pos, padded)));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  FramingLimits limits;
  limits.header_digest = (data[0] & 1) != 0;
  limits.data_digest = (data[0] & 2) != 0;
  const bool fix_header = (data[0] & 4) != 0;
  const bool fix_data = (data[0] & 8) != 0;
  limits.max_data_segment_bytes = ferry::load_be24(data + 1);
  std::vector<uint8_t> stream(data + 4, data + size);

  size_t pos = 0;
  for (int guard = 0; guard < 4096 && pos < stream.size(); ++guard) {
    std::span<uint8_t> rest(stream.data() + pos, stream.size() - pos);
    if (fix_header || fix_data) fix_digests(rest, limits, fix_header, fix_data);
    const PduFrame f = frame_pdu(rest, limits);
    switch (f.status) {
      case ParseStatus::need_more:
        // Either the BHS is incomplete, or the PDU's full size is known and larger than we hold.
        if (rest.size() >= kBhsBytes && f.total_bytes <= rest.size()) __builtin_trap();
        return 0;
      case ParseStatus::fatal:
        if (f.why == nullptr) __builtin_trap();
        return 0;
      case ParseStatus::reject:
        if (f.why == nullptr) __builtin_trap();
        break;
      case ParseStatus::ok:
        break;
    }
    // ok or reject: the PDU is complete and can be skipped.
    if (f.total_bytes > rest.size() || f.total_bytes < kBhsBytes) __builtin_trap();
    if (f.data_offset + f.data_bytes > f.total_bytes) __builtin_trap();
    if (f.data_offset < kBhsBytes + f.ahs_bytes) __builtin_trap();
    if (f.data_bytes > limits.max_data_segment_bytes) __builtin_trap();
    if (f.total_bytes % 4 != 0) __builtin_trap();
    if (f.status == ParseStatus::ok && limits.data_digest) {
      // Exact-size copy: ASan catches any read past the PDU.
      std::vector<uint8_t> pdu(rest.begin(), rest.begin() + ptrdiff_t(f.total_bytes));
      const bool ok = data_digest_ok(pdu, f);
      if (fix_data && f.data_bytes > 0 && !ok) __builtin_trap();
    }
    pos += f.total_bytes;
  }
  return 0;
}
