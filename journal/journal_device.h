// JournalDevice: a write-back journal, a BlockDevice over `next` (the WAN remote in production).
// A write is acknowledged once its record is durable in a local journal file (journal/FORMAT.md:
// CRC32C per record, O_DIRECT, group commit with one RWF_DSYNC write per group); a write-back
// engine then ships the journaled writes to `next` in epochs (runs of records closed at the
// initiator's FLUSH / FUA, or by size or age; coalesced within the epoch, never across; tagged
// epoch_write, IoPriority::write_back, bounded in flight), commits each epoch on `next` (a flush
// with epoch_id: EPOCH_COMMIT over the WAN, made atomic by the datacenter edge's redo log,
// redo_log.h), and then records a durable checkpoint ("every record up to sequence N is on
// next") in the journal's superblock, which frees the ring space. Reads see the latest write at
// once: an in-memory index (volume range -> journal location) of data not yet on `next` sends them
// to the journal file, the rest to `next`. open() on an existing journal replays it (records after
// the checkpoint up to the first one that is torn, corrupt or out of sequence) and write-back
// resumes. Why, invariants, recovery argument and limits: journal/DESIGN.md.
//
//   write ─▶ [wait queue] ─▶ filling batch ─▶ commit (1 write, FUA) ─▶ ack + index
//                ▲ space back                                           │
//                └── reclaim ◀─ checkpoint (FUA) ◀─ commit epoch on next ◀─ ship the epoch
//
// Threading: one reactor thread (a single-reactor layer): submit(), every completion and every
// timer run on it; open() runs before, on any thread, with synchronous I/O. start() must be called
// on the reactor thread once before (or when) I/O begins; it starts write-back of what was
// replayed. The device must not be destroyed while I/O is in flight: drain() first, or stop the
// reactor (write-back in flight is then abandoned; the journal still holds it).
// Memory: every buffer, op, queue and index node is allocated at open() and bounded by options.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "datapath/block_device.h"
#include "datapath/file_device.h"
#include "datapath/reactor.h"
#include "journal/arena_allocator.h"

namespace ferry::journal {

// What becomes of a volume's journaled writes (journal/DESIGN.md "Policies").
enum class Policy : uint8_t {
  write_back,     // shipped to next in epochs (the default)
  cloud_persist,  // never shipped: the journal is the authoritative copy; full journal = no_space
  test_clone,     // never shipped, discarded when the clone ends (next open, whatever the policy)
};
const char* to_string(Policy p) noexcept;
// "write-back", "cloud-persist", "test-clone"; false for anything else.
bool parse_policy(std::string_view text, Policy& out) noexcept;

struct JournalOptions {
  std::string path;                  // journal file (created when missing)
  uint64_t size_bytes = 1ull << 30;  // used when creating; an existing journal keeps its size
  uint32_t record_data_bytes_max = 1u
                                   << 20;  // largest write journaled as one record (max transfer)
  uint32_t batch_bytes_max = 4u << 20;     // one group commit's buffer (two of them)
  uint32_t batch_records_max = 512;        // records in one group commit
  uint32_t waiters_max = 4096;             // writes waiting for space; more answer busy
  uint32_t flush_waiters_max = 1024;       // FLUSHes waiting for earlier writes; more answer busy
  uint32_t reads_max = 256;                // reads touching the journal in flight; more wait
  uint32_t read_waiters_max = 4096;        // reads waiting for a read op; more answer busy
  uint32_t write_back_ops_max = 128;       // write-back writes to next in flight (a WAN RTT each)
  uint32_t write_back_piece_bytes_max = 64u << 10;  // one write-back write (and its buffer)
  uint32_t retry_ms_min = 50;  // back-off when next (or the journal file) fails
  uint32_t retry_ms_max = 5000;
  // Write-back epochs (journal/DESIGN.md "Epochs"): an epoch closes at the last initiator FLUSH /
  // FUA boundary, or when it would exceed epoch_bytes_max, or when its oldest write is
  // epoch_ms_max old with no boundary since. The datacenter edge's redo log must hold one epoch.
  uint64_t epoch_bytes_max = 32u << 20;
  uint32_t epoch_ms_max = 1000;
  bool write_back = true;  // false: records only pile up (replay tests)
  Policy policy = Policy::write_back;
  // RPO control (journal/DESIGN.md "Write-back rate and RPO"): write-back ships at most this many
  // bytes per second (0: no cap) while the write-back lag (age of the oldest write not yet on
  // next) is within rpo_target_ms; past it the cap is lifted until the lag is down to half. A
  // drain() is not capped.
  // rpo_target_ms 0: no target (the cap always holds).
  uint64_t write_back_rate_bytes_per_s = 0;
  uint32_t rpo_target_ms = 30000;
  bool direct_io = true;  // O_DIRECT (falls back, with a warning, where unsupported)
};

struct JournalCounters {
  uint64_t records = 0;                // write records committed (replayed ones included)
  uint64_t replayed_records = 0;       // found by open()
  uint64_t group_commits = 0;          // journal writes (one RWF_DSYNC each)
  uint64_t bytes_journaled = 0;        // write data committed
  uint64_t bytes_written_back = 0;     // data shipped to next
  uint64_t bytes_superseded = 0;       // journaled data never shipped: a later write replaced it
  uint64_t checkpoints = 0;            // superblock checkpoints written
  uint64_t waited_for_space = 0;       // writes that waited: journal (or its record table) full
  uint64_t busy = 0;                   // requests refused: a bounded wait queue was full
  uint64_t next_errors = 0;            // write-back writes / flushes that next failed (retried)
  uint64_t journal_errors = 0;         // journal file I/O errors (commits and reads retried)
  uint64_t reads_from_journal = 0;     // read pieces served from the journal file
  uint64_t barriers = 0;               // discard / write_zeroes: journal drained, then passed on
  uint64_t epochs = 0;                 // epochs committed on next (EPOCH_COMMIT answered)
  uint64_t epochs_at_boundary = 0;     // of which closed at an initiator FLUSH / FUA boundary
  uint64_t epoch_retries = 0;          // epochs shipped again after their commit failed
  uint64_t write_back_lag_ms_max = 0;  // largest age of a write when its epoch was committed
  uint64_t no_space = 0;  // writes refused (Errc::no_space): full under a policy that never ships
  uint64_t clone_discards = 0;  // a test clone's writes discarded by open()
  uint64_t rpo_misses = 0;      // times the write-back lag went past the RPO target
  uint64_t rate_waits = 0;      // write-back pieces held back by the rate cap
};

// Gauges, computed on request (reactor thread).
struct JournalState {
  uint64_t journal_bytes_used = 0;  // ring bytes holding records not yet reclaimed
  uint64_t journal_bytes_free = 0;
  uint64_t dirty_bytes = 0;        // volume bytes in the index (newer in the journal than on next)
  uint64_t write_back_lag_ms = 0;  // age of the oldest write not yet on next (0: none)
  uint64_t next_seq = 0;           // sequence number the next record gets
  uint64_t checkpoint_seq = 0;     // every record up to this one is on next (durable mark)
  uint64_t epoch_id = 0;           // epoch being shipped or committed (0: none)
  bool next_failing = false;       // the last write-back I/O to next failed
  bool rpo_missed = false;         // the lag is past the RPO target now
};

class JournalDevice final : public BlockDevice {
 public:
  // Opens (creating and formatting when missing or empty) the journal for `next` and replays it.
  // Synchronous; start-up only.
  static Result<std::unique_ptr<JournalDevice>> open(BlockDevice& next,
                                                     const JournalOptions& options) noexcept;
  ~JournalDevice() override;

  Geometry geometry() const noexcept override { return geometry_; }
  void submit(IoRequest& req) noexcept override;
  std::string_view describe() const noexcept override { return description_; }

  // Reactor thread. Starts write-back (of the replayed records first). Idempotent.
  void start() noexcept;
  // Reactor thread. Calls `done` once every record so far is on next and checkpointed (the
  // journal is empty) or at once if it is; one drain at a time (a second replaces the first).
  // Under a policy that does not ship, or while paused, it waits until write-back runs again.
  void drain(std::function<void()> done) noexcept;

  // Reactor thread. Stops write-back and checkpoints, cancels retries, answers requests still
  // waiting for journal space with Errc::cancelled, and calls `done` once no I/O of this device is
  // in flight; the device may then be destroyed. What is journaled stays in the journal (replayed
  // by the next open()). Front ends must have stopped submitting.
  void shutdown(std::function<void()> done) noexcept;

  const JournalCounters& counters() const noexcept { return counters_; }
  JournalState state() const noexcept;

  Policy policy() const noexcept { return opt_.policy; }
  // Reactor thread. Changes the policy at runtime: write-back <-> cloud-persist only (to
  // cloud-persist: no new epoch is cut, the one in flight completes; to write-back: the backlog
  // ships). Into or out of test-clone: Errc::busy with `why` set (a clone is chosen at open).
  Errc set_policy(Policy p, std::string& why) noexcept;
  // Reactor thread. Pause: no new epoch is cut (the one in flight completes); writes go on into
  // the journal and, when it is full, wait (as with the WAN down), never fail. Resume undoes it.
  void pause_write_back(bool paused) noexcept;
  bool write_back_paused() const noexcept { return paused_; }
  // Reactor thread. Ships what is journaled now without waiting for an initiator FLUSH or the
  // epoch time bound. Errc::busy with `why` when paused or when the policy does not ship.
  Errc flush_write_back(std::string& why) noexcept;
  // Reactor thread (or before start). The write-back rate cap (bytes/s, 0: none) and the RPO
  // target (ms, 0: none) of JournalOptions, changed at runtime; not kept across a restart.
  void set_write_back_limits(uint64_t rate_bytes_per_s, uint32_t rpo_target_ms) noexcept;
  uint64_t write_back_rate_bytes_per_s() const noexcept { return opt_.write_back_rate_bytes_per_s; }
  uint32_t rpo_target_ms() const noexcept { return opt_.rpo_target_ms; }
  std::string stats_text(const std::string& volume) const;

  // Implementation types (public for the pool allocator in the .cc; not an interface).
  struct Extent {
    uint64_t end = 0;          // volume byte offset just past the extent (key = start)
    uint64_t seq = 0;          // record that holds the bytes
    uint64_t journal_pos = 0;  // journal file offset of the extent's first byte
  };

 private:
  struct Record {  // one ring entry, in sequence order
    uint64_t seq = 0;
    uint64_t pos = 0;     // journal file offset of the header block
    uint64_t blocks = 0;  // ring blocks it occupies (a wrap marker: up to the ring end)
    uint64_t volume_offset = 0;
    uint32_t length = 0;   // 0: wrap marker
    uint32_t readers = 0;  // reads of its data in flight (pins its space)
    uint32_t pieces_in_flight = 0;
    uint64_t committed_ns = 0;
  };
  struct Batch {
    Buffer buf;
    uint64_t pos = 0;  // journal file offset of the first block
    uint64_t bytes = 0;
    uint64_t first_seq = 0;
    uint32_t records = 0;
    bool closed = false;           // takes no more records (full, or ends at the ring's end)
    std::vector<IoRequest*> acks;  // capacity batch_records_max
    IoRequest io;
    JournalDevice* dev = nullptr;
    uint32_t attempt = 0;
    Timer timer;  // commit retry back-off
  };
  struct ReadOp;
  struct WbOp;

  JournalDevice(BlockDevice& next, const JournalOptions& o) noexcept;
  Result<void> format_or_replay() noexcept;
  std::string clone_marker_path() const { return opt_.path + ".clone"; }
  bool ships() const noexcept { return opt_.policy == Policy::write_back; }
  bool paused_ = false;
  uint64_t flush_until_seq_ = 0;  // records up to this one ship without waiting (flush_write_back)
  // No space will come back by itself: a policy that never ships and nothing shipped unreclaimed.
  bool space_is_gone() const noexcept;
  void refuse_head(Errc e) noexcept;  // completes the head waiter with `e`, in order
  Result<void> write_superblock_sync() noexcept;
  void encode_superblock(std::byte* block) noexcept;

  void handle_write(IoRequest& req) noexcept;
  bool try_append(IoRequest& req) noexcept;  // false: no space now (caller queues)
  void admit_waiters() noexcept;
  void maybe_commit() noexcept;
  static void on_committed(IoRequest& io) noexcept;
  static void on_commit_retry(void* batch) noexcept;
  bool journal_clean() const noexcept;
  void complete_flushes() noexcept;
  void index_insert(uint64_t start, uint64_t end, uint64_t seq, uint64_t journal_pos) noexcept;
  // Makes [start, end) of `map` point at (seq, journal_pos); returns the change in covered bytes.
  template <class Map>
  static int64_t map_insert(Map& map, uint64_t start, uint64_t end, uint64_t seq,
                            uint64_t journal_pos) noexcept;
  void index_erase_seq(uint64_t start, uint64_t end, uint64_t seq) noexcept;
  Record* record_of(uint64_t seq) noexcept;

  void handle_read(IoRequest& req) noexcept;
  void read_step(ReadOp& op) noexcept;
  static void on_read_piece(IoRequest& io) noexcept;
  void finish_read(ReadOp& op) noexcept;

  void handle_block_status(IoRequest& req) noexcept;
  void handle_barrier(IoRequest& req) noexcept;
  void run_barrier() noexcept;
  static void on_barrier_done(IoRequest& io) noexcept;

  void pump_write_back() noexcept;
  bool cut_epoch() noexcept;  // true: an epoch is open now
  static void on_epoch_timer(void* dev) noexcept;
  void start_commit() noexcept;
  void start_piece(WbOp& op) noexcept;
  static void on_wb_io(IoRequest& io) noexcept;
  static void on_wb_retry(void* op) noexcept;
  void piece_done(WbOp& op) noexcept;
  static void on_next_flushed(IoRequest& io) noexcept;
  static void on_checkpoint_written(IoRequest& io) noexcept;
  static void on_cp_retry(void* dev) noexcept;
  static void on_sb_retry(void* dev) noexcept;
  void write_checkpoint() noexcept;
  void reclaim() noexcept;
  void check_drained() noexcept;
  uint32_t backoff_ms(uint32_t attempt) const noexcept;

  uint64_t ring_used_bytes() const noexcept;

  BlockDevice& next_;
  JournalOptions opt_;
  Geometry geometry_;
  std::string description_;
  std::unique_ptr<FileDevice> jfile_;  // O_DIRECT: commits, superblocks
  std::unique_ptr<FileDevice> jread_;  // buffered: reads of record data at any alignment
  BufferPool pool_;                    // batch, superblock and write-back buffers

  // Superblock state.
  uint64_t nonce_ = 0;
  uint64_t boot_gen_ = 0;
  uint64_t sb_gen_ = 0;
  uint64_t journal_bytes_ = 0;
  uint64_t ring_start_ = 0;
  uint64_t ring_end_ = 0;

  // Ring: records [tail_seq_, next_seq_) live in records_[seq % capacity].
  std::vector<Record> records_;
  uint64_t tail_seq_ = 1;  // oldest record not reclaimed
  uint64_t next_seq_ = 1;
  uint64_t committed_seq_ = 0;  // every record <= this is durable (acknowledged)
  uint64_t head_pos_ = 0;       // where the next record goes
  uint64_t tail_pos_ = 0;       // first byte not free (record tail_seq_), == head when empty
  uint64_t checkpoint_seq_ = 0;
  uint64_t checkpoint_pos_ = 0;
  uint64_t used_blocks_ = 0;  // ring blocks of records [tail_seq_, next_seq_)

  // Group commit: batches_[filling_] collects while batches_[1 - filling_] may be in flight.
  Batch batches_[2];
  int filling_ = 0;
  bool commit_in_flight_ = false;
  bool admitting_ = false;
  uint64_t head_partial_bytes_ = 0;  // of the head waiter: already in records (a split write)
  bool head_counted_ = false;        // the head waiter was counted in waited_for_space
  std::vector<IoRequest*> acking_;   // acknowledgements being delivered (swapped with a batch's)
  bool started_ = false;
  Reactor* reactor_ = nullptr;  // the one this device runs on (set by start())

  std::vector<IoRequest*> waiters_;  // ring buffer, writes (and barriers) waiting, FIFO
  size_t waiters_head_ = 0, waiters_count_ = 0;
  struct FlushWaiter {
    IoRequest* req;
    uint64_t ticket;
  };
  std::vector<FlushWaiter> flush_waiters_;  // ring buffer, FIFO by ticket
  size_t flush_head_ = 0, flush_count_ = 0;
  uint64_t writes_submitted_ = 0;  // write requests accepted (tickets)
  uint64_t writes_done_ = 0;       // ... completed (in submission order)

  // Index of data newer in the journal than on next: start -> Extent, non-overlapping, nodes
  // from arena_ (declared first: destroyed after the map).
  NodeArena arena_;
  NodeArena epoch_arena_;  // epoch_map_'s nodes (below)
  using ExtentMap = std::map<uint64_t, Extent, std::less<uint64_t>,
                             ArenaAllocator<std::pair<const uint64_t, Extent>>>;
  ExtentMap index_{ArenaAllocator<std::pair<const uint64_t, Extent>>(&arena_)};
  ExtentMap epoch_map_{ArenaAllocator<std::pair<const uint64_t, Extent>>(&epoch_arena_)};
  uint64_t dirty_bytes_ = 0;

  std::vector<ReadOp> read_ops_;
  std::vector<ReadOp*> free_reads_;
  std::vector<IoRequest*> read_waiters_;  // ring buffer
  size_t read_waiters_head_ = 0, read_waiters_count_ = 0;

  // Write-back.
  std::unique_ptr<WbOp[]> wb_ops_;  // write_back_ops_max of them
  std::span<WbOp> wb_ops() noexcept;
  std::vector<WbOp*> free_wb_;
  uint64_t wb_seq_ = 1;       // first record of the epoch being (or to be) shipped
  uint64_t shipped_seq_ = 0;  // every record <= this is committed on next
  bool pumping_ = false;
  // The epoch being shipped: records [wb_seq_, epoch_end_seq_], coalesced (later records of the
  // epoch win) into disjoint extents in epoch_map_ (nodes from epoch_arena_), shipped in volume
  // order from epoch_cursor_, then committed (EPOCH_COMMIT: a flush with epoch_id).
  bool epoch_open_ = false;
  uint64_t epoch_end_seq_ = 0;
  uint64_t epoch_bytes_ = 0;  // sum of its extents (what next receives)
  uint64_t epoch_record_bytes_ = 0;
  bool epoch_at_boundary_ = false;
  uint64_t epoch_cursor_ = 0;
  uint32_t epoch_pieces_ = 0;  // in flight
  uint64_t boundary_seq_ = 0;  // last record before an initiator FLUSH / FUA completed
  // cut_epoch's size scan, resumed where it stopped (not redone at every group commit):
  // records [wb_seq_, scan_seq_) hold scan_bytes_; scan_limit_ is the last within the bound.
  uint64_t scan_from_ = 0, scan_seq_ = 0, scan_bytes_ = 0, scan_limit_ = 0;
  bool scan_size_hit_ = false;
  Timer epoch_timer_;
  // Write-back rate cap: a token bucket (bytes), refilled at the cap, at most max(one piece,
  // 100 ms of the cap); rate_timer_ wakes the pump when a held piece may go.
  bool rate_allows(uint64_t bytes, uint64_t now_ns) noexcept;
  void note_rpo(uint64_t now_ns) noexcept;  // updates rpo_missed_ (counted and logged)
  bool rpo_over(uint64_t now_ns) const noexcept;
  uint64_t oldest_unshipped_ns() const noexcept;  // committed_ns of it (0: none)
  double wb_tokens_ = 0;
  uint64_t wb_tokens_ns_ = 0;
  Timer rate_timer_;
  bool rpo_missed_ = false;  // the cap is lifted: past the target, not yet down to half of it
  bool next_failing_ = false;

  // Checkpoint cycle: FLUSH next, then the superblock (FUA).
  bool cp_in_flight_ = false;
  uint64_t cp_target_seq_ = 0;
  uint64_t cp_target_pos_ = 0;
  uint32_t cp_attempt_ = 0;
  IoRequest cp_io_;
  Buffer cp_buf_;
  Timer cp_timer_;

  // Barrier (discard / write_zeroes): waits for an empty journal, then goes to next.
  IoRequest* barrier_ = nullptr;
  IoRequest barrier_io_;

  std::function<void()> drain_done_;
  std::function<void()> shutdown_done_;
  bool shutting_down_ = false;
  void check_quiesced() noexcept;
  JournalCounters counters_;
};

}  // namespace ferry::journal
