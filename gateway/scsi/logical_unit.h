// LogicalUnit: one SCSI block device (SPC-4 / SBC-3 device server) over a BlockDevice; Target:
// the LUN table of one SCSI target device (REPORT LUNS, missing LUNs, resets, nexus events).
//
// Threading: one LogicalUnit / Target is shared by every reactor thread serving its sessions.
// execute() runs on the calling reactor thread; completion (task.on_complete) runs on that same
// thread, inside execute() or later from the device's completion. Reservation, unit attention
// and mode state sit behind mu_; READ/WRITE stay lock-free while no unit attention and no
// reservation is pending (two atomics). add_lun() is called before the target serves.
//
// Ownership: the transport owns tasks; the LU borrows task.data and uses task.io, task.lu,
// task.progress and lu_buffer (allocated from task.pool) until it completes the task.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "datapath/block_device.h"
#include "datapath/uuid.h"
#include "gateway/scsi/cdb.h"
#include "gateway/scsi/sense.h"
#include "gateway/scsi/task.h"

namespace ferry::scsi {

struct LuIdentity {
  std::string vendor = "FERRY";          // INQUIRY T10 vendor (8 chars, space padded)
  std::string product = "VIRTUAL DISK";  // 16 chars
  std::string revision = "0001";         // 4 chars
  std::string serial;                    // VPD 0x80 (serial_of(uuid) for a volume)
  Uuid uuid;            // the volume's identity: the NAA designator derives from it
  std::string lu_name;  // optional SCSI name string designator (VPD 0x83)
};

// The unit serial number of a volume: its UUID as 32 hex digits (stable wherever it is served).
std::string serial_of(const Uuid& uuid);
// The I_T nexus key persistent reservations and per-nexus state are kept under: the initiator
// port name and the relative target port id ("" without a nexus).
std::string it_key_of(const Nexus* n);

class LogicalUnit {
 public:
  // Limits advertised in the Block Limits VPD page and enforced.
  static constexpr uint32_t kMaxCawBlocks = 255;
  static constexpr uint32_t kMaxUnmapLbaCount = 1u << 20;
  static constexpr uint32_t kMaxUnmapDescriptors = 64;
  static constexpr uint64_t kMaxWriteSameBlocks = 1u << 22;
  static constexpr uint32_t kMaxLbaStatusDescriptors = 64;
  static constexpr size_t kScratchBytes = 1u << 20;  // chunk for VERIFY / WRITE SAME

  LogicalUnit(BlockDevice& device, LuIdentity identity);
  LogicalUnit(const LogicalUnit&) = delete;
  LogicalUnit& operator=(const LogicalUnit&) = delete;

  // Runs one command; always ends with task.on_complete(task).
  void execute(ScsiTask& task) noexcept;

  // Task management and nexus events (see Target).
  void reset(const Nexus* by) noexcept;
  void nexus_new(const Nexus& nexus) noexcept;
  void nexus_gone(const Nexus& nexus) noexcept;

  const LuIdentity& identity() const noexcept { return identity_; }
  BlockDevice& device() noexcept { return device_; }

  // REQUEST SENSE / INQUIRY answers for a LUN that does not exist (used by Target).
  static void execute_missing_lun(ScsiTask& task) noexcept;

 private:
  struct NexusState {
    uint64_t id = 0;
    std::string it_key;  // initiator port + target port: the I_T nexus identity for PR
    std::vector<Asc> ua;
  };
  struct Registration {
    std::string it_key;
    std::string initiator_port_name;
    uint16_t relative_target_port_id = 0;
    uint64_t key = 0;
  };
  struct CawRange {
    uint64_t lba = 0;
    uint64_t blocks = 0;
  };

  // dispatch helpers (logical_unit.cc: SPC)
  bool gate(ScsiTask& t, const CommandSpec& spec) noexcept;  // UA + reservation conflict
  bool conflicts_locked(const ScsiTask& t, const CommandSpec& spec) const noexcept;
  void inquiry(ScsiTask& t) noexcept;
  void request_sense(ScsiTask& t) noexcept;
  void mode_sense(ScsiTask& t) noexcept;
  void mode_select(ScsiTask& t) noexcept;
  void report_opcodes(ScsiTask& t) noexcept;
  void read_capacity10(ScsiTask& t) noexcept;
  void read_capacity16(ScsiTask& t) noexcept;
  void reserve(ScsiTask& t, bool reserve) noexcept;
  size_t mode_page(uint8_t page, uint8_t pc, uint8_t* out) const noexcept;

  // block commands (sbc.cc)
  void read_write(ScsiTask& t, const CommandSpec& spec) noexcept;
  void verify(ScsiTask& t, const CommandSpec& spec) noexcept;
  void write_same(ScsiTask& t, const CommandSpec& spec) noexcept;
  void unmap(ScsiTask& t) noexcept;
  void get_lba_status(ScsiTask& t) noexcept;
  void compare_and_write(ScsiTask& t) noexcept;
  void sync_cache(ScsiTask& t, const CommandSpec& spec) noexcept;
  void prefetch(ScsiTask& t, const CommandSpec& spec) noexcept;
  static void on_simple_io(IoRequest& io) noexcept;
  static void on_verify_io(IoRequest& io) noexcept;
  static void on_write_same_io(IoRequest& io) noexcept;
  static void on_unmap_io(IoRequest& io) noexcept;
  static void on_lba_status_io(IoRequest& io) noexcept;
  static void on_caw_io(IoRequest& io) noexcept;
  void verify_next(ScsiTask& t) noexcept;
  void write_same_next(ScsiTask& t) noexcept;
  void unmap_next(ScsiTask& t) noexcept;
  void lba_status_next(ScsiTask& t) noexcept;
  bool caw_lock(uint64_t lba, uint64_t blocks) noexcept;
  void caw_unlock(uint64_t lba, uint64_t blocks) noexcept;
  bool caw_overlaps(uint64_t lba, uint64_t blocks) noexcept;
  bool range_ok(uint64_t lba, uint64_t blocks) const noexcept;

  // persistent reservations (pr.cc)
  void pr_in(ScsiTask& t) noexcept;
  void pr_out(ScsiTask& t) noexcept;
  Registration* find_registration_locked(std::string_view it_key) noexcept;
  void ua_for_it_locked(std::string_view it_key, Asc asc) noexcept;
  bool pr_holder_locked(std::string_view it_key) const noexcept;

  // unit attention (mu_ held)
  NexusState* nexus_locked(uint64_t id) noexcept;
  void push_ua_locked(NexusState& n, Asc asc) noexcept;
  void ua_all_but_locked(uint64_t except_id, Asc asc) noexcept;
  void update_flags_locked() noexcept;

  // completion
  static void complete(ScsiTask& t) noexcept { t.on_complete(t); }
  static void fail(ScsiTask& t, const Sense& s) noexcept {
    set_check_condition(t, s);
    complete(t);
  }
  // Copies a data-in reply (already built in `src`), truncated to the allocation length and
  // to what the transport buffer holds, and completes GOOD.
  static void reply(ScsiTask& t, const uint8_t* src, size_t bytes, uint32_t alloc_len) noexcept;

  BlockDevice& device_;
  const LuIdentity identity_;
  const Geometry geometry_;  // captured at creation: the LU does not follow resizes yet
  const uint32_t max_transfer_blocks_;

  // Fast-path flags: true while some nexus has a unit attention queued / a reservation exists.
  std::atomic<bool> ua_pending_{false};
  std::atomic<bool> reserved_{false};
  std::atomic<bool> wce_{true};
  std::atomic<uint32_t> caw_in_flight_{0};

  mutable std::mutex mu_;
  std::vector<NexusState> nexuses_;
  // SPC-2 RESERVE(6/10)
  bool spc2_reserved_ = false;
  uint64_t spc2_holder_ = 0;
  // SPC-4 persistent reservations (APTPL=0: state lives as long as the process)
  uint32_t pr_generation_ = 0;
  std::vector<Registration> registrations_;
  bool pr_reserved_ = false;
  uint8_t pr_type_ = 0;
  std::string pr_holder_;  // it_key of the holder (unused for all-registrants types)
  std::vector<CawRange> caw_ranges_;
};

class Target {
 public:
  Target() = default;
  Target(const Target&) = delete;
  Target& operator=(const Target&) = delete;

  // Before serving. lun < 16384 (flat addressing).
  void add_lun(uint16_t lun, LogicalUnit* lu);

  void execute(ScsiTask& task) noexcept;
  // LOGICAL UNIT RESET: lun_raw is the 8-byte SAM LUN of the TMF.
  void reset_lun(uint64_t lun_raw, const Nexus* by) noexcept;
  // TARGET WARM/COLD RESET.
  void reset_target(const Nexus* by) noexcept;
  void nexus_new(const Nexus& nexus) noexcept;
  void nexus_gone(const Nexus& nexus) noexcept;

  LogicalUnit* find(uint64_t lun_raw) const noexcept;
  size_t lun_count() const noexcept { return luns_.size(); }

  // SAM LUN encoding: peripheral (lun < 256) or flat addressing; decode returns -1 when the
  // LUN is malformed.
  static uint64_t encode_lun(uint16_t lun) noexcept;
  static int32_t decode_lun(uint64_t lun_raw) noexcept;

 private:
  void report_luns(ScsiTask& t) noexcept;
  std::vector<std::pair<uint16_t, LogicalUnit*>> luns_;  // sorted by LUN
};

}  // namespace ferry::scsi
