// The supported-command table and CDB decoding. Pure, any thread.
#include "gateway/scsi/cdb.h"

#include <algorithm>

#include "datapath/endian.h"

namespace ferry::scsi {
namespace {

constexpr Access A = Access::always;
constexpr Access R = Access::read;
constexpr Access W = Access::write;

// READ/WRITE byte 1: DPO 0x10, FUA 0x08, FUA_NV 0x02 (accepted and ignored: no NV cache).
// Usage masks: byte 0 is the opcode (0xff), the control byte (last) is 0x00: NACA and LINK
// are not supported and are rejected like any other unused bit.
#define U6(b1, b2, b3, b4) \
  { 0xff, b1, b2, b3, b4, 0x00 }
#define U10(b1, b2, b3, b4, b5, b6, b7, b8) \
  { 0xff, b1, b2, b3, b4, b5, b6, b7, b8, 0x00 }
#define U12(b1, b2, b3, b4, b5, b6, b7, b8, b9, b10) \
  { 0xff, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, 0x00 }
#define U16(b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14) \
  { 0xff, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, 0x00 }

// Read/write 10/12/16 shapes.
#define RW10(b1) U10(b1, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff)
#define RW12(b1) U12(b1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f)
#define RW16(b1) \
  U16(b1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f)

constexpr CommandSpec kCommands[] = {
    {0x00, 0, false, 6, Cmd::test_unit_ready, A, false, false, U6(0, 0, 0, 0)},
    {0x03, 0, false, 6, Cmd::request_sense, A, true, true, U6(0x01, 0, 0, 0xff)},
    {0x08, 0, false, 6, Cmd::read6, R, false, false, U6(0x1f, 0xff, 0xff, 0xff)},
    {0x0a, 0, false, 6, Cmd::write6, W, false, false, U6(0x1f, 0xff, 0xff, 0xff)},
    {0x12, 0, false, 6, Cmd::inquiry, A, true, true, U6(0x01, 0xff, 0xff, 0xff)},
    {0x15, 0, false, 6, Cmd::mode_select6, W, false, false, U6(0x11, 0, 0, 0xff)},
    {0x16, 0, false, 6, Cmd::reserve6, W, false, false, U6(0, 0, 0, 0)},
    {0x17, 0, false, 6, Cmd::release6, W, false, true, U6(0, 0, 0, 0)},
    {0x1a, 0, false, 6, Cmd::mode_sense6, R, false, false, U6(0x08, 0xff, 0xff, 0xff)},
    {0x1b, 0, false, 6, Cmd::start_stop_unit, W, false, false, U6(0x01, 0, 0x0f, 0xf7)},
    {0x1e, 0, false, 6, Cmd::prevent_allow, R, false, false, U6(0, 0, 0, 0x03)},
    {0x25, 0, false, 10, Cmd::read_capacity10, A, false, false,
     U10(0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01)},
    {0x28, 0, false, 10, Cmd::read10, R, false, false, RW10(0x1a)},
    {0x2a, 0, false, 10, Cmd::write10, W, false, false, RW10(0x1a)},
    {0x2e, 0, false, 10, Cmd::write_verify10, W, false, false, RW10(0x12)},
    {0x2f, 0, false, 10, Cmd::verify10, R, false, false, RW10(0x16)},
    {0x34, 0, false, 10, Cmd::prefetch10, R, false, false, RW10(0x02)},
    {0x35, 0, false, 10, Cmd::sync_cache10, W, false, false, RW10(0x02)},
    {0x41, 0, false, 10, Cmd::write_same10, W, false, false, RW10(0x08)},
    {0x42, 0, false, 10, Cmd::unmap, W, false, false, U10(0, 0, 0, 0, 0, 0x1f, 0xff, 0xff)},
    {0x55, 0, false, 10, Cmd::mode_select10, W, false, false, U10(0x11, 0, 0, 0, 0, 0, 0xff, 0xff)},
    {0x56, 0, false, 10, Cmd::reserve10, W, false, false, U10(0, 0, 0, 0, 0, 0, 0, 0)},
    {0x57, 0, false, 10, Cmd::release10, W, false, true, U10(0, 0, 0, 0, 0, 0, 0, 0)},
    {0x5a, 0, false, 10, Cmd::mode_sense10, R, false, false,
     U10(0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff)},
    {0x5e, 0x00, true, 10, Cmd::pr_in, A, false, false, U10(0x1f, 0, 0, 0, 0, 0, 0xff, 0xff)},
    {0x5e, 0x01, true, 10, Cmd::pr_in, A, false, false, U10(0x1f, 0, 0, 0, 0, 0, 0xff, 0xff)},
    {0x5e, 0x02, true, 10, Cmd::pr_in, A, false, false, U10(0x1f, 0, 0, 0, 0, 0, 0xff, 0xff)},
    {0x5e, 0x03, true, 10, Cmd::pr_in, A, false, false, U10(0x1f, 0, 0, 0, 0, 0, 0xff, 0xff)},
    {0x5f, 0x00, true, 10, Cmd::pr_out, A, false, false,
     U10(0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff)},
    {0x5f, 0x01, true, 10, Cmd::pr_out, A, false, false,
     U10(0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff)},
    {0x5f, 0x02, true, 10, Cmd::pr_out, A, false, false,
     U10(0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff)},
    {0x5f, 0x03, true, 10, Cmd::pr_out, A, false, false,
     U10(0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff)},
    {0x5f, 0x04, true, 10, Cmd::pr_out, A, false, false,
     U10(0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff)},
    {0x5f, 0x05, true, 10, Cmd::pr_out, A, false, false,
     U10(0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff)},
    {0x5f, 0x06, true, 10, Cmd::pr_out, A, false, false,
     U10(0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff)},
    {0x88, 0, false, 16, Cmd::read16, R, false, false, RW16(0x1a)},
    {0x89, 0, false, 16, Cmd::compare_and_write, W, false, false,
     U16(0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0x1f)},
    {0x8a, 0, false, 16, Cmd::write16, W, false, false, RW16(0x1a)},
    {0x8e, 0, false, 16, Cmd::write_verify16, W, false, false, RW16(0x12)},
    {0x8f, 0, false, 16, Cmd::verify16, R, false, false, RW16(0x16)},
    {0x90, 0, false, 16, Cmd::prefetch16, R, false, false, RW16(0x02)},
    {0x91, 0, false, 16, Cmd::sync_cache16, W, false, false, RW16(0x02)},
    {0x93, 0, false, 16, Cmd::write_same16, W, false, false, RW16(0x09)},
    {0x9e, 0x10, true, 16, Cmd::read_capacity16, A, false, false,
     U16(0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01)},
    {0x9e, 0x12, true, 16, Cmd::get_lba_status, R, false, false,
     U16(0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0)},
    {0xa0, 0, false, 12, Cmd::report_luns, A, true, true,
     U12(0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0)},
    {0xa3, 0x0c, true, 12, Cmd::report_opcodes, A, false, true,
     U12(0x1f, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0)},
    {0xa8, 0, false, 12, Cmd::read12, R, false, false, RW12(0x1a)},
    {0xaa, 0, false, 12, Cmd::write12, W, false, false, RW12(0x1a)},
    {0xae, 0, false, 12, Cmd::write_verify12, W, false, false, RW12(0x12)},
    {0xaf, 0, false, 12, Cmd::verify12, R, false, false, RW12(0x16)},
};

}  // namespace

std::span<const CommandSpec> supported_commands() noexcept { return kCommands; }

size_t cdb_length(uint8_t opcode) noexcept {
  switch (opcode >> 5) {
    case 0:
      return 6;
    case 1:
    case 2:
      return 10;
    case 4:
      return 16;
    case 5:
      return 12;
    default:
      return 0;
  }
}

bool opcode_has_service_action(uint8_t opcode) noexcept {
  return opcode == 0x5e || opcode == 0x5f || opcode == 0x9e || opcode == 0x9f || opcode == 0xa3 ||
         opcode == 0xa4 || opcode == 0x7f;
}

CdbCheck check_cdb(const uint8_t* cdb) noexcept {
  CdbCheck r;
  const uint8_t op = cdb[0];
  const uint8_t sa = cdb[1] & 0x1f;
  bool opcode_known = false;
  for (const CommandSpec& c : kCommands) {
    if (c.opcode != op) continue;
    opcode_known = true;
    if (c.has_service_action && c.service_action != sa) continue;
    for (uint8_t i = 1; i < c.cdb_bytes; ++i) {
      const uint8_t bad = static_cast<uint8_t>(cdb[i] & ~c.usage[i]);
      if (bad != 0) {
        int8_t bit = 7;
        while (bit > 0 && !(bad & (1u << bit))) --bit;
        r.sense = invalid_field_in_cdb(i, bit);
        return r;
      }
    }
    r.spec = &c;
    return r;
  }
  if (opcode_known) {
    r.sense = invalid_field_in_cdb(1, 4);  // unknown service action
  } else {
    r.sense = illegal_request(kInvalidOpcode);
    r.sense.sksv = true;
    r.sense.field_pointer = 0;
  }
  return r;
}

BlockCdb decode_block_cdb(const uint8_t* cdb) noexcept {
  BlockCdb b;
  const uint8_t op = cdb[0];
  const uint8_t f = cdb[1];
  switch (cdb_length(op)) {
    case 6:
      b.lba = load_be24(cdb + 1) & 0x1fffff;
      b.transfer_length = cdb[4] == 0 ? 256 : cdb[4];
      return b;
    case 10:
      b.lba = load_be32(cdb + 2);
      b.transfer_length = load_be16(cdb + 7);
      b.group = cdb[6] & 0x1f;
      break;
    case 12:
      b.lba = load_be32(cdb + 2);
      b.transfer_length = load_be32(cdb + 6);
      b.group = cdb[10] & 0x1f;
      break;
    case 16:
      b.lba = load_be64(cdb + 2);
      b.transfer_length = load_be32(cdb + 10);
      b.group = cdb[14] & 0x1f;
      break;
    default:
      return b;
  }
  b.protect = f >> 5;
  b.dpo = f & 0x10;
  switch (op) {
    case 0x89:  // COMPARE AND WRITE
      b.transfer_length = cdb[13];
      b.fua = f & 0x08;
      break;
    case 0x2e:
    case 0xae:
    case 0x8e:  // WRITE AND VERIFY
      b.bytchk = (f >> 1) & 0x01;
      break;
    case 0x2f:
    case 0xaf:
    case 0x8f:  // VERIFY
      b.bytchk = (f >> 1) & 0x03;
      break;
    case 0x34:
    case 0x90:
    case 0x35:
    case 0x91:  // PRE-FETCH, SYNCHRONIZE CACHE
      b.immed = f & 0x02;
      b.dpo = false;
      break;
    case 0x41:
    case 0x93:  // WRITE SAME
      b.anchor = f & 0x10;
      b.unmap = f & 0x08;
      b.ndob = op == 0x93 && (f & 0x01);
      b.dpo = false;
      break;
    default:
      b.fua = f & 0x08;
      break;
  }
  return b;
}

uint32_t cdb_allocation_length(const uint8_t* cdb) noexcept {
  switch (cdb[0]) {
    case 0x03:
    case 0x12:
    case 0x1a:  // REQUEST SENSE, INQUIRY, MODE SENSE(6)
      return cdb[0] == 0x12 ? load_be16(cdb + 3) : cdb[4];
    case 0x15:  // MODE SELECT(6)
      return cdb[4];
    case 0x55:
    case 0x5a:
    case 0x5e:
    case 0x42:  // MODE SELECT/SENSE(10), PR IN, UNMAP
      return load_be16(cdb + 7);
    case 0x5f:  // PR OUT
      return load_be32(cdb + 5);
    case 0x9e:  // READ CAPACITY(16), GET LBA STATUS
      return load_be32(cdb + 10);
    case 0xa0:
    case 0xa3:  // REPORT LUNS, MAINTENANCE IN
      return load_be32(cdb + 6);
    default:
      return 0;
  }
}

}  // namespace ferry::scsi
