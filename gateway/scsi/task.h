// ScsiTask: one SCSI command travelling from a transport (iSCSI today) to a logical unit and
// back. The transport fills the inputs, calls scsi::Target::execute(), and gets the task back
// through on_complete on the same reactor thread (possibly inside execute()).
//
// Ownership: the transport owns the task and its data buffer until on_complete runs.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <type_traits>
#include <variant>

#include "datapath/block_device.h"
#include "datapath/buffer_pool.h"

namespace ferry::scsi {

// SAM status codes.
enum class Status : uint8_t {
  good = 0x00,
  check_condition = 0x02,
  condition_met = 0x04,
  busy = 0x08,
  reservation_conflict = 0x18,
  task_set_full = 0x28,
  aca_active = 0x30,
  task_aborted = 0x40,
};

// The I_T nexus a command arrives on (one per iSCSI session). Strings live as long as the
// session; `id` is unique for the life of the process.
struct Nexus {
  uint64_t id = 0;
  std::string_view initiator_port_name;  // e.g. "iqn.x,i,0x23d000000001"
  std::string_view initiator_name;       // e.g. "iqn.x"
  std::string_view target_name;          // e.g. "iqn.2026-11.io.ferry:demo"
  std::string_view target_port_name;     // e.g. "iqn.2026-11.io.ferry:demo,t,0x0001"
  uint16_t relative_target_port_id = 1;
  uint16_t target_portal_group_tag = 1;
};

inline constexpr size_t kSenseBytesMax = 32;

class LogicalUnit;

// Progress of the multi-step block commands (sbc.cc), one alternative per command, kept inside
// the task (no allocation). The command's first step sets its alternative; its completions
// read it back through LogicalUnit's typed accessor (which asserts the alternative).
struct VerifyProgress {
  uint8_t bytchk = 0;  // 1: compare each block with its own data-out block; 3: with one block
  uint64_t done_blocks = 0;
  uint64_t total_blocks = 0;
};
struct WriteSameProgress {
  uint64_t chunk_blocks = 0;  // blocks of the pattern in task.lu_buffer (one WRITE each)
  uint64_t done_blocks = 0;
  uint64_t total_blocks = 0;
};
struct UnmapProgress {
  size_t next_descriptor = 0;
  size_t descriptor_count = 0;
};
struct LbaStatusProgress {
  uint64_t next_lba = 0;
  uint64_t descriptor_count = 0;  // descriptors in task.lu_buffer so far
};
struct CompareAndWriteProgress {
  enum class Phase : uint8_t { read, write } phase = Phase::read;
};
using BlockCommandProgress =
    std::variant<std::monostate, VerifyProgress, WriteSameProgress, UnmapProgress,
                 LbaStatusProgress, CompareAndWriteProgress>;

struct ScsiTask {
  // ---- inputs (transport) ----
  uint8_t cdb[16] = {};
  uint64_t lun_raw = 0;                  // 8-byte SAM LUN as on the wire
  uint32_t expected_transfer_bytes = 0;  // EDTL: data the initiator expects to move
  bool transport_read = false;           // initiator set the R bit (data-in expected)
  bool transport_write = false;          // initiator set the W bit (data-out expected)
  const Nexus* nexus = nullptr;
  // Pool of the reactor thread running the task, for the LU's scratch buffers (WRITE SAME
  // pattern, COMPARE AND WRITE / VERIFY reads). Set by the transport; may be null, in which
  // case those commands answer BUSY.
  BufferPool* pool = nullptr;
  // Data buffer, capacity >= expected_transfer_bytes. For data-out commands it holds the
  // expected_transfer_bytes received from the initiator; for data-in the LU writes into it.
  Buffer data;

  // ---- outputs (logical unit) ----
  Status status = Status::good;
  uint8_t sense[kSenseBytesMax] = {};
  uint8_t sense_bytes = 0;  // 0 when there is no sense data
  // The command's own transfer length: for data-in, the bytes the command produced (only
  // min(command_transfer_bytes, expected_transfer_bytes) are in `data`); for data-out, the
  // bytes the CDB describes. The transport derives residual over/underflow from it.
  uint32_t command_transfer_bytes = 0;
  bool data_in = false;  // the command returns data (as opposed to consuming data-out)

  // ---- completion ----
  void (*on_complete)(ScsiTask&) noexcept = nullptr;
  void* owner = nullptr;

  // ---- scratch owned by the logical unit while the task runs ----
  IoRequest io;
  LogicalUnit* lu = nullptr;  // the unit executing it (its completions find it here)
  BlockCommandProgress progress;
  Buffer lu_buffer;  // extra buffer for multi-step commands (COMPARE AND WRITE, VERIFY)
};

// Starts (or resets) the task's command progress: the old alternative is destroyed and the new
// one constructed in place (every alternative is trivially copyable, so nothing can throw).
template <class Progress>
void set_progress(ScsiTask& t, const Progress& p) noexcept {
  static_assert(std::is_trivially_copyable_v<Progress>);
  static_assert(std::is_trivially_destructible_v<BlockCommandProgress>);
  std::destroy_at(&t.progress);
  std::construct_at(&t.progress, std::in_place_type<Progress>, p);
}

}  // namespace ferry::scsi
