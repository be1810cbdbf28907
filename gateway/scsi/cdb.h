// Pure CDB decoding (SPC-4 / SBC-3): the table of supported commands (opcode, service action,
// CDB length, CDB usage mask, reservation class), validation of reserved bits against that
// mask, and extraction of LBA / transfer length / flags for the 6/10/12/16-byte variants.
// The same table answers REPORT SUPPORTED OPERATION CODES. No I/O, any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "gateway/scsi/sense.h"

namespace ferry::scsi {

enum class Cmd : uint8_t {
  test_unit_ready,
  request_sense,
  read6,
  write6,
  inquiry,
  mode_select6,
  reserve6,
  release6,
  mode_sense6,
  start_stop_unit,
  prevent_allow,
  read_capacity10,
  read10,
  write10,
  write_verify10,
  verify10,
  prefetch10,
  sync_cache10,
  write_same10,
  unmap,
  mode_select10,
  reserve10,
  release10,
  mode_sense10,
  pr_in,
  pr_out,
  read16,
  compare_and_write,
  write16,
  write_verify16,
  verify16,
  prefetch16,
  sync_cache16,
  write_same16,
  read_capacity16,
  get_lba_status,
  report_luns,
  report_opcodes,
  read12,
  write12,
  write_verify12,
  verify12,
};

// How a command fares under a reservation held by another I_T nexus (SPC-4 table 45).
enum class Access : uint8_t {
  always,  // never conflicts (INQUIRY, REPORT LUNS, PR IN/OUT, ...)
  read,    // allowed under Write Exclusive, conflicts under Exclusive Access
  write,   // conflicts under both
};

struct CommandSpec {
  uint8_t opcode;
  uint8_t service_action;
  bool has_service_action;
  uint8_t cdb_bytes;
  Cmd cmd;
  Access access;
  bool ua_exempt;     // INQUIRY, REPORT LUNS, REQUEST SENSE: never report unit attention
  bool spc2_allowed;  // allowed while another nexus holds a RESERVE(6/10)
  uint8_t usage[16];  // CDB usage data: bits the device server looks at
};

// Every supported command, in opcode order.
std::span<const CommandSpec> supported_commands() noexcept;

// CDB length from the group code: 6, 10, 12, 16, or 0 for reserved/vendor groups.
size_t cdb_length(uint8_t opcode) noexcept;

// True when the opcode carries a service action in byte 1 (bits 4-0).
bool opcode_has_service_action(uint8_t opcode) noexcept;

struct CdbCheck {
  const CommandSpec* spec = nullptr;  // non-null when ok
  Sense sense;                        // the reject answer otherwise
  bool ok() const noexcept { return spec != nullptr; }
};

// Looks the command up and checks every bit against its usage mask. Reject answers are
// INVALID COMMAND OPERATION CODE (20/00) or INVALID FIELD IN CDB (24/00) with a field pointer.
CdbCheck check_cdb(const uint8_t* cdb) noexcept;

// Fields of block commands. transfer_length is in logical blocks (for COMPARE AND WRITE the
// NUMBER OF LOGICAL BLOCKS); READ(6)/WRITE(6) length 0 already means 256.
struct BlockCdb {
  uint64_t lba = 0;
  uint32_t transfer_length = 0;
  bool fua = false;
  bool dpo = false;
  uint8_t bytchk = 0;
  bool unmap = false;
  bool anchor = false;
  bool ndob = false;
  bool immed = false;
  uint8_t group = 0;
  uint8_t protect = 0;  // RDPROTECT / WRPROTECT / VRPROTECT
};
BlockCdb decode_block_cdb(const uint8_t* cdb) noexcept;

// Allocation / parameter list length of non-block commands (0 when the command has none).
uint32_t cdb_allocation_length(const uint8_t* cdb) noexcept;

}  // namespace ferry::scsi
