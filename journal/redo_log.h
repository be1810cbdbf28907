// RedoLogDevice: the datacenter edge's redo log, a BlockDevice over `next` (the NBD source of
// the on-prem image) that makes each write-back epoch atomic on it (journal/DESIGN.md "Epochs",
// format: journal/FORMAT.md "Redo log"). Writes tagged `epoch_write` (block_device.h) are not
// applied as they arrive: they are appended to a local log file (CRC32C per record). A flush
// with `epoch_id` (EPOCH_COMMIT) waits for them, checks that the epoch is whole (its byte count),
// appends a commit record, makes the log durable (fdatasync) and completes: the epoch is
// committed. Then it is applied to `next` in log order, `next` is FLUSHed, and the superblock
// records it as applied, which recycles its log space. Reads (and block status) of a range the
// committed-but-not-applied epoch touches wait until it is applied; every other request passes
// straight through. open() replays the log after a crash: a committed epoch is applied again
// by start() (idempotent: same bytes, same order), an uncommitted one is discarded, so `next`
// always holds the state at an epoch boundary once start() has finished.
//
//   epoch write ─▶ log (append) ─▶ ack          EPOCH_COMMIT ─▶ commit record ─▶ fdatasync ─▶ ack
//                    ▲ space                                                          │
//                    └── superblock (applied) ◀─ FLUSH next ◀─ apply to next ◀───────┘
//
// Threading: one reactor thread: submit(), start() and every completion run on it; open() runs
// before, on any thread, with synchronous I/O. Memory: tables, buffers and queues are allocated
// at open() and bounded by the options; a full log back-pressures writers (a bounded FIFO), a
// full FIFO answers busy.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "datapath/block_device.h"
#include "datapath/buffer_pool.h"
#include "datapath/file_device.h"
#include "datapath/reactor.h"

namespace ferry::journal {

struct RedoLogOptions {
  std::string path;                    // log file (created when missing or empty)
  uint64_t size_bytes = 256ull << 20;  // used when creating; must exceed one epoch (the
                                       // cloud edge's epoch_bytes_max, 32 MiB, plus headers)
  uint32_t record_data_bytes_max = 256u << 10;  // largest write (a WAN data frame)
  uint32_t log_ops_max = 32;                    // log appends in flight
  uint32_t apply_ops_max = 8;                   // writes to next in flight while applying
  uint32_t waiters_max = 4096;                  // writes waiting for log space; more answer busy
  uint32_t held_max = 4096;                     // reads / other requests waiting for an apply
  uint32_t retry_ms_min = 50;                   // back-off when next or the log file fails
  uint32_t retry_ms_max = 5000;
};

struct RedoLogCounters {
  uint64_t epochs_committed = 0;
  uint64_t epochs_applied = 0;    // applied and marked so (recovered ones included)
  uint64_t epochs_recovered = 0;  // committed before a crash, applied by start()
  uint64_t epochs_dropped = 0;    // commit of an epoch the image already contains (re-shipped)
  uint64_t epochs_discarded = 0;  // incomplete at commit (byte count differs): writer re-ships
  uint64_t records_discarded_at_open = 0;  // uncommitted records found by open()
  uint64_t bytes_logged = 0;
  uint64_t bytes_applied = 0;
  uint64_t waited_for_space = 0;  // writes that waited: log full
  uint64_t held_for_apply = 0;    // reads / requests that waited for an apply
  uint64_t busy = 0;
  uint64_t next_errors = 0;  // apply writes / flushes next failed (retried)
  uint64_t log_errors = 0;   // log file I/O errors (retried)
};

class RedoLogDevice final : public BlockDevice {
 public:
  // Opens (creating and formatting when missing or empty) the redo log for `next` and scans it.
  // Synchronous; start-up only.
  static Result<std::unique_ptr<RedoLogDevice>> open(BlockDevice& next,
                                                     const RedoLogOptions& o) noexcept;
  ~RedoLogDevice() override;

  Geometry geometry() const noexcept override { return geometry_; }
  void submit(IoRequest& req) noexcept override;
  std::string_view describe() const noexcept override { return description_; }

  // Reactor thread, once, before I/O: applies what open() found committed; `recovered` runs
  // when that is on next and marked applied (at once when there was nothing).
  void start(std::function<void()> recovered) noexcept;
  // Reactor thread: calls `done` once every committed epoch is applied and marked so (at once if
  // none is waiting); a clean stop does this first, so the image is current when it exits.
  void drain(std::function<void()> done) noexcept;
  // Reactor thread: cancels retries and calls `done` once no I/O of this device is in flight.
  void shutdown(std::function<void()> done) noexcept;

  const RedoLogCounters& counters() const noexcept { return counters_; }
  uint64_t log_bytes_used() const noexcept;
  std::string stats_text(const std::string& volume) const;

 private:
  enum class Type : uint16_t { write = 1, zero = 2, commit = 3, wrap = 4 };
  struct Rec {
    uint64_t seq = 0;
    uint64_t pos = 0;
    uint64_t blocks = 0;
    uint64_t serial = 0;  // the open epoch it belongs to
    uint64_t offset = 0;
    uint64_t length = 0;
    Type type = Type::write;
    bool committed = false;
  };
  struct LogOp;
  struct ApplyOp;

  RedoLogDevice(BlockDevice& next, const RedoLogOptions& o) noexcept;
  Result<void> format_or_scan() noexcept;
  void encode_superblock(std::byte* b, uint64_t tail_seq, uint64_t tail_pos) noexcept;
  void encode_record(std::byte* h, Type type, uint64_t offset, uint64_t length,
                     const std::byte* data) noexcept;
  Rec* rec_of(uint64_t seq) noexcept;
  bool reserve(uint64_t blocks, uint64_t& pos) noexcept;  // false: no space now

  void handle_epoch_write(IoRequest& req) noexcept;
  void admit_writes() noexcept;
  static void on_logged(IoRequest& io) noexcept;
  void handle_commit(IoRequest& req) noexcept;
  void try_commit() noexcept;
  void discard_open_epoch() noexcept;
  static void on_commit_written(IoRequest& io) noexcept;
  static void on_log_synced(IoRequest& io) noexcept;

  bool must_wait(const IoRequest& req) const noexcept;
  void hold(IoRequest& req) noexcept;
  void release_held() noexcept;

  void start_apply(uint64_t end_seq) noexcept;
  void pump_apply() noexcept;
  static void on_apply_io(IoRequest& io) noexcept;
  static void on_apply_retry(void* op) noexcept;
  void flush_next() noexcept;
  static void on_next_flushed(IoRequest& io) noexcept;
  static void on_superblock_written(IoRequest& io) noexcept;
  static void on_cycle_retry(void* dev) noexcept;
  void applied() noexcept;
  uint32_t backoff_ms(uint32_t attempt) const noexcept;
  void check_quiesced() noexcept;

  BlockDevice& next_;
  RedoLogOptions opt_;
  Geometry geometry_;
  std::string description_;
  std::unique_ptr<FileDevice> file_;
  BufferPool pool_;
  Reactor* reactor_ = nullptr;
  bool started_ = false;
  bool shutting_down_ = false;
  std::function<void()> recovered_;
  std::function<void()> shutdown_done_;
  std::function<void()> drain_done_;
  void check_drained() noexcept;

  // Superblock state.
  uint64_t nonce_ = 0, sb_gen_ = 0, boot_gen_ = 0, log_bytes_ = 0;
  uint64_t ring_start_ = 0, ring_end_ = 0;
  uint64_t last_stream_ = 0, last_epoch_ = 0;  // last committed epoch (durable)

  // Ring: records [tail_seq_, next_seq_) in recs_[seq % size].
  std::vector<Rec> recs_;
  uint64_t tail_seq_ = 1, next_seq_ = 1;
  uint64_t tail_pos_ = 0, head_pos_ = 0;
  uint64_t used_blocks_ = 0;

  // The open epoch.
  uint64_t open_serial_ = 0;
  uint64_t open_first_seq_ = 0;  // its first record (next_seq_ when it has none)
  uint64_t open_bytes_ = 0;      // logged write lengths
  uint32_t log_in_flight_ = 0;

  std::unique_ptr<LogOp[]> log_ops_;
  std::vector<LogOp*> free_log_;
  std::vector<IoRequest*> waiters_;  // ring buffer, epoch writes waiting for log space / an op
  size_t waiters_head_ = 0, waiters_count_ = 0;

  // Commit in progress: one at a time.
  IoRequest* commit_req_ = nullptr;
  bool commit_writing_ = false;
  uint64_t commit_seq_ = 0;
  IoRequest commit_io_;
  Buffer commit_buf_;

  // Apply cycle: committed records in [tail_seq_, apply_end_seq_) go to next, then FLUSH next,
  // then the superblock moves the tail to apply_end_seq_.
  bool applying_ = false;
  uint64_t apply_end_seq_ = 0;
  uint64_t apply_seq_ = 0;                // next record to look at
  uint64_t apply_lo_ = 0, apply_hi_ = 0;  // volume range the cycle's records touch
  uint32_t apply_in_flight_ = 0;
  uint64_t apply_epochs_ = 0;  // epochs in the cycle (0: only reclaiming discarded records)
  bool apply_recovering_ = false;
  std::unique_ptr<ApplyOp[]> apply_ops_;
  std::vector<ApplyOp*> free_apply_;
  IoRequest cycle_io_;
  Buffer sb_buf_;
  uint32_t cycle_attempt_ = 0;
  bool cycle_flushing_ = false;  // stage: FLUSH next (else: superblock)
  Timer cycle_timer_;

  std::vector<IoRequest*> held_;  // ring buffer: requests waiting for the apply
  size_t held_head_ = 0, held_count_ = 0;

  RedoLogCounters counters_;
};

}  // namespace ferry::journal
