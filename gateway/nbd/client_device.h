// NbdClientDevice: the datacenter edge's bottom BlockDevice — a volume on an NBD server (qemu-nbd,
// nbdkit, nbdkit-vddk) read and written with libnbd's asynchronous API, driven by the io_uring
// reactor: every command is an nbd_aio_* call with a completion callback, the socket's
// readiness comes from IORING_OP_POLL_ADD on nbd_aio_get_fd() (POLLIN / POLLOUT as
// nbd_aio_get_direction() asks), then nbd_aio_notify_read/write. No thread per request and no
// blocking call on a reactor thread once open() has returned: a lost handle is reopened with
// nbd_aio_connect_uri on the same polls, after a back-off Timer (DESIGN.md "Reconnecting");
// when the URI names a host (not a literal) that call runs on a helper thread, since libnbd
// resolves the name in it with a blocking getaddrinfo (again at each attempt).
//
//   open() (blocking, start-up or management thread): nbd_connect_uri × N, base:allocation
//      │
//      ▼ first submit() on reactor thread R: R becomes the home reactor, polls are armed on R
//   submit ─▶ [cache hit: zero fill / status answer] ─────────────────────────────▶ complete
//      │                                                                              ▲
//      ├─▶ slot on the least busy live handle ─▶ nbd_aio_* ─▶ poll CQE ─▶ notify ─▶ libnbd
//      │   (≤ requests_in_flight_max per handle;                  completion callback ─┘
//      │    a write is copied to the replay set first)                  │ handle lost
//      └─▶ FIFO wait queue (≤ requests_queued_max, then would_block) ◀──┘ (re-sent; replay
//          — no slot, no handle (source down), no replay space          first after a restart)
//
//   handle: up ─(lost)─▶ waiting ─(back-off 100 ms..5 s)─▶ connecting ─▶ up (same geometry)
//   device: up ─(all lost)─▶ down ─(source_give_up_ms)─▶ waiting requests fail with closed
//
// Threading: all libnbd calls and all device state live on the home reactor's thread. A
// submit() from another reactor thread is forwarded with Reactor::post() and its completion
// posted back (correct but slow: two cross-thread messages per I/O — give each reactor its own
// device when several reactors need one volume). submit() on a thread without a reactor
// completes with Errc::unsupported.
// Ownership: the submitter owns the IoRequest and its buffer until on_complete (block_device.h).
// Destroy the device on its home thread, or after the home reactor has stopped; armed polls are
// cancelled and freed by their final CQE, timers cancelled. Requests still in flight then are
// abandoned (logged, their on_complete never runs): do it only at shutdown, when no submitter
// waits for them — or call shutdown() first, which completes them with closed.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <memory_resource>
#include <optional>
#include <string>
#include <vector>

#include "cache/extent_cache.h"
#include "datapath/block_device.h"

struct nbd_handle;

namespace ferry {
class Reactor;
class Timer;
}  // namespace ferry

namespace ferry::nbd {

struct NbdClientOptions {
  // Handles to open when the server advertises multi-conn (NBD_FLAG_CAN_MULTI_CONN); one
  // otherwise. Requests go to the live handle with the fewest in flight.
  unsigned connections = 4;
  // Requests (not NBD commands: a request may be cut into several) per handle.
  unsigned requests_in_flight_max = 64;
  // Requests waiting for a free slot on any handle; beyond it submit() answers would_block.
  unsigned requests_queued_max = 1024;
  // Never read ranges known to be zero: they are zero-filled locally. Unknown ranges are looked
  // up with one NBD_CMD_BLOCK_STATUS (status_lookahead_bytes ahead) before the read.
  bool skip_unallocated_reads = false;
  // Block status queries ask for at least this much (clipped to the device and to 4 GiB), so
  // that one round trip teaches the cache about the neighbourhood too.
  uint64_t status_lookahead_bytes = 64ull << 20;
  size_t extent_cache_entries_max = 65536;
  // Serve the volume read-only even if the server allows writes.
  bool read_only = false;
  // Reconnecting (DESIGN.md "Reconnecting"): a lost handle is reopened with back-off
  // (reconnect_delay_ms_min doubling to reconnect_delay_ms_max); requests wait for it in the
  // wait queue. Once no handle has been up for source_give_up_ms, waiting and new requests fail
  // with closed (reconnecting goes on). The WAN link's give-up rule (dc-edge --source-give-up-s).
  uint32_t source_give_up_ms = 60000;
  uint32_t reconnect_delay_ms_min = 100;
  uint32_t reconnect_delay_ms_max = 5000;
  // Copies of writes acknowledged but not yet covered by a completed FLUSH, replayed to a
  // restarted server before anything else (servers with can_flush only). Bounded: at half full
  // an internal FLUSH is sent; when full, new writes wait for it. A write larger than half of
  // it is sent with FUA instead of being copied. 0: replay off (nothing copied; after a restart
  // that may have lost acknowledged writes the next FLUSH fails with io_error).
  size_t replay_bytes_max = 32u << 20;
  size_t replay_entries_max = 4096;
};

// Counters, updated on the home thread (read them there, or after synchronising with it).
struct NbdClientStats {
  uint64_t requests = 0;
  uint64_t nbd_reads = 0;  // NBD_CMD_READ sent
  uint64_t nbd_read_bytes = 0;
  uint64_t nbd_writes = 0;  // NBD_CMD_WRITE sent (including zero-writes emulating WRITE_ZEROES)
  uint64_t nbd_write_bytes = 0;
  uint64_t nbd_flushes = 0;
  uint64_t nbd_trims = 0;
  uint64_t nbd_zeroes = 0;
  uint64_t nbd_status_queries = 0;      // NBD_CMD_BLOCK_STATUS sent
  uint64_t status_cache_hits = 0;       // IoOp::block_status answered from the cache
  uint64_t zero_filled_bytes = 0;       // read bytes served locally (skip_unallocated_reads)
  uint64_t status_replies_dropped = 0;  // claims not cached: raced with too many mutations
  uint64_t queued = 0;                  // requests that waited for a slot
  uint64_t would_block = 0;             // requests refused: wait queue full
  uint64_t forwarded = 0;               // submitted from another reactor thread
  uint64_t connections_lost = 0;
  uint64_t reconnects = 0;            // handles reopened after a loss
  uint64_t connects_off_reactor = 0;  // attempts run on a helper thread (the URI names a host)
  uint64_t requests_reissued = 0;     // requests re-sent after their handle was lost
  uint64_t writes_replayed = 0;   // acknowledged, unflushed writes re-sent after a source restart
  uint64_t internal_flushes = 0;  // FLUSHes sent to free the replay copies
  uint64_t replay_waits = 0;      // writes that waited for replay space
};

// errno from a libnbd callback (or nbd_get_errno()) to Errc. One table, used everywhere.
Errc nbd_errno_to_errc(int err) noexcept;

class NbdClientDevice final : public BlockDevice {
 public:
  // Connects synchronously (nbd_connect_uri: nbd://, nbds://, nbd+unix://, nbds+unix://),
  // requesting structured replies and the base:allocation meta context. Blocking: call it from
  // a start-up or management thread, never from a reactor thread. Fails with not_found (no such
  // export), closed (cannot connect), unsupported (geometry we cannot serve) or io_error.
  static Result<std::unique_ptr<NbdClientDevice>> open(const std::string& uri,
                                                       const NbdClientOptions& options) noexcept;
  ~NbdClientDevice() override;
  NbdClientDevice(const NbdClientDevice&) = delete;
  NbdClientDevice& operator=(const NbdClientDevice&) = delete;

  Geometry geometry() const noexcept override { return geometry_; }
  void submit(IoRequest& req) noexcept override;
  std::string_view describe() const noexcept override { return description_; }

  // A read that never asks the server for ranges known (or, after one block status query,
  // found) to be zero, whatever skip_unallocated_reads says. req.op must be IoOp::read.
  void read_allocated(IoRequest& req) noexcept;
  // Home thread only (or before the first submit).
  void set_skip_unallocated_reads(bool on) noexcept { options_.skip_unallocated_reads = on; }

  // Shutdown (home thread): stops reconnecting, drops the connections (nbd_close) and
  // completes every request in flight or waiting with closed; later submits answer closed.
  // For a server that has stopped answering, so that submitters release what those requests
  // hold before they go away (the destructor instead abandons such requests).
  void shutdown() noexcept;

  // Server facts learned at open time.
  uint32_t preferred_block_size_bytes() const noexcept { return preferred_block_bytes_; }
  bool multi_conn() const noexcept { return multi_conn_; }
  bool has_base_allocation() const noexcept { return base_allocation_; }
  size_t connection_count() const noexcept { return conns_.size(); }
  // Home thread (or after synchronising with it).
  size_t live_connection_count() const noexcept;
  uint64_t requests_sent_on(size_t connection) const noexcept;
  const NbdClientStats& stats() const noexcept { return stats_; }
  const cache::ExtentCache& extent_cache() const noexcept { return cache_; }
  Reactor* home() const noexcept;

 private:
  struct Conn;        // one libnbd handle and its two poll operations
  struct ConnectJob;  // a connection attempt on a helper thread (the URI names a host)
  struct Op;          // one request in flight (pooled)
  class PollOp;       // IORING_OP_POLL_ADD on a handle's socket
  enum class Phase : uint8_t { status, main, fua_flush };

  NbdClientDevice(const std::string& uri, const NbdClientOptions& options) noexcept;
  void submit_from(IoRequest& req, bool skip_zero, Reactor* origin) noexcept;
  void submit_home(IoRequest& req, bool skip_zero, Reactor* origin) noexcept;
  void bind_home(Reactor& r) noexcept;

  // Request life cycle (home thread).
  Op* take_op() noexcept;
  void dispatch_queued() noexcept;
  Conn* pick_conn() noexcept;
  void issue_more(Op& op) noexcept;
  bool issue_piece(Op& op) noexcept;
  void advance(Op& op) noexcept;
  void finish(Op& op, Errc e) noexcept;
  void complete_request(IoRequest& req, Errc e, Reactor* origin) noexcept;
  void run_work() noexcept;
  void push_work(Op& op) noexcept;
  int64_t issue_status_query(Op& op, uint64_t from_bytes, uint64_t min_end_bytes) noexcept;

  // libnbd callbacks (run inside libnbd with the handle lock held: no nbd_* calls there).
  static int on_command_done(void* user_data, int* error);
  static int on_extents(void* user_data, const char* context, uint64_t offset, uint32_t* entries,
                        size_t nr_entries, int* error);

  // Socket readiness (home thread).
  friend class PollOp;
  void on_poll(Conn& c, bool read, int32_t res) noexcept;
  void after_nbd_call(Conn& c, const char* why = nullptr) noexcept;
  void rearm(Conn& c) noexcept;
  void arm_poll(Conn& c, PollOp& p, bool read) noexcept;
  void connection_lost(Conn& c, const char* why) noexcept;

  // Reconnecting (home thread; DESIGN.md "Reconnecting").
  struct Facts;  // what open() learned from the server; a reconnect must find the same
  void release_handle(Conn& c) noexcept;
  void schedule_reconnect(Conn& c) noexcept;
  static void on_reconnect_timer(void* conn) noexcept;
  static void on_give_up_timer(void* dev) noexcept;
  void start_connect(Conn& c) noexcept;
  void start_connect_off_reactor(Conn& c, nbd_handle* h) noexcept;
  void connect_looked_up(Conn& c, const std::shared_ptr<ConnectJob>& job) noexcept;
  void cancel_connect_job(Conn& c) noexcept;
  void connect_done(Conn& c) noexcept;
  void device_down(const char* why) noexcept;
  void device_up(Conn& c) noexcept;
  size_t fail_waiting(int err) noexcept;
  void requeue_lost(Op& op) noexcept;
  Op* pop_waiting() noexcept;

  // Replay copies of acknowledged, unflushed writes (home thread).
  struct ReplayEntry;
  std::optional<size_t> alloc_replay_bytes(size_t length_bytes) noexcept;
  size_t replay_used_bytes() const noexcept;
  bool reserve_replay(Op& op) noexcept;
  void replay_settle(Op& op, Errc e) noexcept;
  void free_covered() noexcept;
  void request_internal_flush() noexcept;
  static void on_internal_flush_done(IoRequest& req) noexcept;
  void start_replay() noexcept;
  void continue_replay() noexcept;
  static int on_replay_done(void* dev, int* error);

  // Cache coherence: claims learned at `epoch` are applied, then every mutation submitted
  // since is re-applied over them (see DESIGN.md "Client device").
  uint64_t note_mutation(uint64_t offset_bytes, uint64_t length_bytes) noexcept;
  uint64_t claim_floor() const noexcept;
  bool learn(uint64_t floor, uint64_t start_bytes, uint64_t end_bytes, uint32_t flags) noexcept;
  void reapply_mutations_since(uint64_t floor) noexcept;

  NbdClientOptions options_;
  std::string uri_;
  bool uri_names_host_ =
      false;  // reconnects resolve on a helper thread (start_connect_off_reactor)
  std::string description_;
  Geometry geometry_;
  uint32_t preferred_block_bytes_ = 4096;
  uint64_t piece_bytes_max_ = 32u << 20;  // one NBD READ/WRITE
  bool multi_conn_ = false;
  bool base_allocation_ = false;
  bool can_flush_ = false;
  bool can_fua_ = false;
  bool can_zero_ = false;
  bool can_trim_ = false;

  std::vector<std::unique_ptr<Conn>> conns_;
  size_t next_conn_ = 0;
  std::atomic<Reactor*> home_{nullptr};
  size_t ops_in_flight_ = 0;

  // Intrusive lists of Op (one `next` link: an Op is on at most one list).
  Op* free_ops_ = nullptr;
  Op* queue_head_ = nullptr;
  Op* queue_tail_ = nullptr;
  size_t queued_ = 0;
  Op* work_head_ = nullptr;
  Op* work_tail_ = nullptr;
  bool in_work_ = false;
  std::vector<std::unique_ptr<Op>> all_ops_;
  // Requests whose handle was lost, re-sent before the wait queue (≤ handles × in-flight max).
  Op* retry_head_ = nullptr;
  Op* retry_tail_ = nullptr;

  // Device state: up (some handle up) / down (none; requests wait) / gave_up (down longer than
  // source_give_up_ms: requests fail with closed) / geometry_changed (final: io_error).
  std::unique_ptr<Facts> facts_;
  bool down_ = false;
  bool reconnecting_logged_ = false;
  bool gave_up_ = false;
  bool geometry_changed_ = false;
  bool shut_down_ = false;
  uint64_t down_since_ns_ = 0;
  size_t resumed_ = 0;  // requests that waited through the current outage
  std::unique_ptr<Timer> give_up_timer_;

  // Replay set: a ring of entries in submission order over a ring of bytes, both allocated once
  // (at the first write). ack stamps order acknowledgements against FLUSH submissions.
  std::unique_ptr<ReplayEntry[]> replay_entries_;
  std::unique_ptr<std::byte[]> replay_bytes_;
  uint64_t replay_first_ = 1;  // sequence number of the oldest entry
  uint64_t replay_end_ = 1;    // next sequence number
  size_t bytes_head_ = 0, bytes_tail_ = 0;
  bool bytes_wrapped_ = false;
  uint64_t ack_clock_ = 0;        // acknowledged writes so far
  uint64_t covered_ = 0;          // ack stamps ≤ this are covered by a completed FLUSH
  uint64_t unprotected_ack_ = 0;  // last ack stamp of a write not copied (replay off)
  bool replay_space_wanted_ = false;
  bool unflushed_lost_ = false;  // the next FLUSH fails with io_error
  IoRequest internal_flush_;
  bool internal_flush_busy_ = false;
  // Replay in progress (after a source restart): nothing else is sent until it is done.
  bool replaying_ = false;
  bool replay_wakeup_ = false;
  Conn* replay_conn_ = nullptr;
  uint64_t replay_next_ = 0;
  uint64_t replay_cursor_bytes_ = 0;
  unsigned replay_pieces_ = 0;
  int replay_err_ = 0;
  // Entries being replayed now: an entry overlapping one of them waits for the batch to finish
  // (the server may run concurrent commands in any order).
  static constexpr size_t kReplayBatchMax = 16;
  struct Range {
    uint64_t start_bytes, end_bytes;
  };
  Range replay_batch_[kReplayBatchMax] = {};
  size_t replay_batch_n_ = 0;
  uint64_t replayed_now_ = 0;

  cache::ExtentCache cache_;
  static constexpr size_t kMutationRing = 64;
  struct Mutation {
    uint64_t epoch;
    uint64_t offset_bytes;
    uint64_t length_bytes;
    bool done;
  };
  Mutation mutations_[kMutationRing] = {};
  uint64_t mutation_epoch_ = 0;  // write / discard / write_zeroes submitted so far
  size_t mutations_in_flight_ = 0;

  NbdClientStats stats_;
};

}  // namespace ferry::nbd
