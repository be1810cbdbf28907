// iSCSI PDU framing and digests. Pure code, any thread.
#include "gateway/iscsi/pdu.h"

#include <isa-l/crc.h>

namespace ferry::iscsi {

uint32_t crc32c(std::span<const uint8_t> data, uint32_t seed) noexcept {
  // ISA-L returns the running register; iSCSI's digest is its complement.
  return ~crc32_iscsi(const_cast<unsigned char*>(data.data()), static_cast<int>(data.size()), seed);
}

static uint32_t load_le32(const uint8_t* p) noexcept {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}

static bool known_initiator_opcode(Opcode op) noexcept {
  switch (op) {
    case Opcode::nop_out:
    case Opcode::scsi_command:
    case Opcode::task_mgmt_request:
    case Opcode::login_request:
    case Opcode::text_request:
    case Opcode::data_out:
    case Opcode::logout_request:
    case Opcode::snack_request:
      return true;
    default:
      return false;
  }
}

PduFrame frame_pdu(std::span<const uint8_t> in, const FramingLimits& limits) noexcept {
  PduFrame f;
  if (in.size() < kBhsBytes) return f;  // need_more
  const Bhs& h = *reinterpret_cast<const Bhs*>(in.data());
  f.ahs_bytes = size_t{h.total_ahs_words()} * 4;
  const size_t header_bytes = kBhsBytes + f.ahs_bytes + (limits.header_digest ? kDigestBytes : 0);
  f.data_offset = header_bytes;
  f.data_bytes = h.data_segment_length();
  if (f.data_bytes > limits.max_data_segment_bytes) {
    // We cannot trust the length: the stream cannot be resynchronised.
    f.status = ParseStatus::fatal;
    f.why = "data segment longer than MaxRecvDataSegmentLength";
    return f;
  }
  f.total_bytes = header_bytes;
  if (f.data_bytes > 0)
    f.total_bytes += pad4(f.data_bytes) + (limits.data_digest ? kDigestBytes : 0);
  if (in.size() < header_bytes) return f;  // need_more (total_bytes already known)
  if (limits.header_digest) {
    const uint32_t want = load_le32(in.data() + kBhsBytes + f.ahs_bytes);
    if (crc32c(in.first(kBhsBytes + f.ahs_bytes)) != want) {
      f.status = ParseStatus::fatal;  // RFC 7143 §7.8: header digest errors are not recoverable
      f.why = "header digest mismatch";
      return f;
    }
  }
  if (in.size() < f.total_bytes) {
    f.status = ParseStatus::need_more;
    return f;
  }
  f.status = ParseStatus::ok;
  if (!known_initiator_opcode(h.opcode())) {
    f.status = ParseStatus::reject;
    f.reject_reason = RejectReason::command_not_supported;
    f.why = "unknown opcode";
  }
  return f;
}

bool data_digest_ok(std::span<const uint8_t> pdu, const PduFrame& f) noexcept {
  if (f.data_bytes == 0) return true;
  const size_t padded = pad4(f.data_bytes);
  const uint32_t want = load_le32(pdu.data() + f.data_offset + padded);
  return crc32c(pdu.subspan(f.data_offset, padded)) == want;
}

}  // namespace ferry::iscsi
