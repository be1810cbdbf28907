// iSCSI PDU codec (RFC 7143 §11): the 48-byte Basic Header Segment, opcodes, and the framing
// parser that finds where one PDU ends. Pure code: no I/O, no allocation, any thread.
//
// Wire layout of a PDU:  BHS(48) | AHS(TotalAHSLength*4) | HeaderDigest(4)? |
//                        DataSegment(DataSegmentLength, padded to 4) | DataDigest(4)?
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "datapath/endian.h"

namespace ferry::iscsi {

inline constexpr size_t kBhsBytes = 48;
inline constexpr size_t kDigestBytes = 4;

enum class Opcode : uint8_t {
  // initiator → target
  nop_out = 0x00,
  scsi_command = 0x01,
  task_mgmt_request = 0x02,
  login_request = 0x03,
  text_request = 0x04,
  data_out = 0x05,
  logout_request = 0x06,
  snack_request = 0x10,
  // target → initiator
  nop_in = 0x20,
  scsi_response = 0x21,
  task_mgmt_response = 0x22,
  login_response = 0x23,
  text_response = 0x24,
  data_in = 0x25,
  logout_response = 0x26,
  r2t = 0x31,
  async_message = 0x32,
  reject = 0x3f,
};

// Reject reasons (RFC 7143 §11.17.1).
enum class RejectReason : uint8_t {
  data_digest_error = 0x02,
  snack_reject = 0x03,
  protocol_error = 0x04,
  command_not_supported = 0x05,
  immediate_command_reject = 0x06,
  task_in_progress = 0x07,
  invalid_data_ack = 0x08,
  invalid_pdu_field = 0x09,
  long_operation_reject = 0x0a,
  negotiation_reset = 0x0b,
  waiting_for_logout = 0x0c,
};

// A BHS as raw bytes with typed accessors. Field names follow RFC 7143.
struct Bhs {
  uint8_t b[kBhsBytes];

  void clear() noexcept { std::memset(b, 0, sizeof b); }
  Opcode opcode() const noexcept { return static_cast<Opcode>(b[0] & 0x3f); }
  bool immediate() const noexcept { return (b[0] & 0x40) != 0; }
  void set_opcode(Opcode op) noexcept { b[0] = static_cast<uint8_t>(op); }
  bool final_bit() const noexcept { return (b[1] & 0x80) != 0; }
  uint8_t flags() const noexcept { return b[1]; }
  uint8_t total_ahs_words() const noexcept { return b[4]; }
  uint32_t data_segment_length() const noexcept { return load_be24(b + 5); }
  void set_data_segment_length(uint32_t v) noexcept { store_be24(b + 5, v); }
  uint64_t lun() const noexcept { return load_be64(b + 8); }
  void set_lun(uint64_t v) noexcept { store_be64(b + 8, v); }
  uint32_t itt() const noexcept { return load_be32(b + 16); }
  void set_itt(uint32_t v) noexcept { store_be32(b + 16, v); }
  uint32_t ttt() const noexcept { return load_be32(b + 20); }
  void set_ttt(uint32_t v) noexcept { store_be32(b + 20, v); }
  // Bytes 24..47 differ per opcode; named accessors:
  uint32_t u32(size_t off) const noexcept { return load_be32(b + off); }
  void set_u32(size_t off, uint32_t v) noexcept { store_be32(b + off, v); }
  // Initiator PDUs: CmdSN @24, ExpStatSN @28. Target PDUs: StatSN @24, ExpCmdSN @28, MaxCmdSN @32.
  uint32_t cmd_sn() const noexcept { return u32(24); }
  uint32_t exp_stat_sn() const noexcept { return u32(28); }
  void set_stat_sn(uint32_t v) noexcept { set_u32(24, v); }
  void set_exp_cmd_sn(uint32_t v) noexcept { set_u32(28, v); }
  void set_max_cmd_sn(uint32_t v) noexcept { set_u32(32, v); }
};
static_assert(sizeof(Bhs) == kBhsBytes);

// SCSI Command PDU fields (§11.3).
struct ScsiCommandView {
  const Bhs& h;
  bool read() const noexcept { return (h.b[1] & 0x40) != 0; }
  bool write() const noexcept { return (h.b[1] & 0x20) != 0; }
  uint8_t task_attr() const noexcept { return h.b[1] & 0x07; }
  uint32_t expected_data_transfer_length() const noexcept { return h.u32(20); }
  const uint8_t* cdb() const noexcept { return h.b + 32; }  // 16 bytes
};

// Data-Out fields (§11.7): TTT @20, ExpStatSN @28, DataSN @36, BufferOffset @40.
struct DataOutView {
  const Bhs& h;
  uint32_t data_sn() const noexcept { return h.u32(36); }
  uint32_t buffer_offset() const noexcept { return h.u32(40); }
};

// Serial number arithmetic (RFC 1982, 32 bits) used by CmdSN/StatSN.
inline bool sn_lt(uint32_t a, uint32_t b) noexcept {
  return a != b && static_cast<int32_t>(a - b) < 0;
}
inline bool sn_le(uint32_t a, uint32_t b) noexcept { return a == b || sn_lt(a, b); }

// Outcome of looking at the front of a receive buffer.
enum class ParseStatus : uint8_t { ok, need_more, reject, fatal };

struct PduFrame {
  ParseStatus status = ParseStatus::need_more;
  size_t total_bytes = 0;  // whole PDU incl. digests and padding (when ok)
  size_t ahs_bytes = 0;
  size_t data_offset = 0;        // offset of the data segment in the PDU
  uint32_t data_bytes = 0;       // DataSegmentLength (unpadded)
  RejectReason reject_reason{};  // when status == reject
  const char* why = nullptr;     // short static text for logs when not ok
};

struct FramingLimits {
  bool header_digest = false;
  bool data_digest = false;
  uint32_t max_data_segment_bytes = 8192;  // our MaxRecvDataSegmentLength (or login limit)
};

// Determines the extent of the PDU at the front of `in`. Checks header digest when enabled.
// `reject` means the PDU can be skipped (total_bytes valid) and answered with a Reject; `fatal`
// means the stream cannot be resynchronised: drop the connection.
PduFrame frame_pdu(std::span<const uint8_t> in, const FramingLimits& limits) noexcept;

// CRC32C as used by iSCSI digests (ISA-L crc32_iscsi), over `data` (little-endian on the wire).
uint32_t crc32c(std::span<const uint8_t> data, uint32_t seed = 0xffffffffu) noexcept;
// Verifies the data digest of a framed PDU (data_digest enabled). Padding is covered.
bool data_digest_ok(std::span<const uint8_t> pdu, const PduFrame& f) noexcept;

inline size_t pad4(size_t n) noexcept { return (n + 3) & ~size_t{3}; }

}  // namespace ferry::iscsi
