// WAN emulator: a userspace TCP proxy that puts one emulated WAN link (delay, jitter, rate,
// bounded bottleneck queue, scheduled cuts) between its clients and one target address. Used
// where the kernel has no netem: by tests, benchmarks and the demo (see README.md here).
//
// Threads and ownership: everything runs on the thread that calls WanEmulator::run(): one
// ppoll() loop owns the listening socket, every connection and both link directions. The pure
// model pieces (CutSchedule, Jitter, LinkDirection) do no I/O and are unit tested alone.
//
// Model. Each direction (up = client→target, down = target→client) is one link shared by all
// connections, a FIFO serialiser followed by a propagation delay:
//
//   source ─read─▶ [ bottleneck queue ≤ queue_bytes_max ] ─rate─▶ [ rtt/2 ± jitter ] ─▶ destination
//                  (not read while full: back-pressure)    FIFO      order kept
//
// All link arithmetic runs in *link time*: wall time since start with the cuts taken out. A
// cut freezes the link (nothing serialises, nothing arrives) and everything in flight arrives
// that much later; in reset mode connections are also closed with RST when the cut begins.
#pragma once

#include <signal.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "datapath/result.h"

namespace ferry::wan {

struct CutWindow {
  uint64_t start_ns = 0;  // since the emulator started listening
  uint64_t length_ns = 0;
};

enum class CutMode : uint8_t { hold, reset };

struct WanConfig {
  std::string listen_host = "127.0.0.1";
  uint16_t listen_port = 0;  // 0: any free port (printed)
  std::string connect_host = "127.0.0.1";
  uint16_t connect_port = 0;
  uint64_t rtt_ns = 0;
  uint64_t jitter_ns = 0;        // one-way delay varies within ± this
  uint64_t rate_bits_per_s = 0;  // per direction; 0: unlimited
  std::vector<CutWindow> cuts;
  CutMode cut_mode = CutMode::hold;
  uint64_t queue_bytes_max = 0;    // bottleneck queue per direction; 0: derived from the rate
  uint64_t conn_buffer_bytes = 0;  // per connection and direction; 0: derived (see README)
  uint32_t connections_max = 64;   // more wait in the listen backlog
  uint64_t seed = 1;               // jitter process
  std::string stats_file;          // JSON written at exit, if set
  bool verbose = false;            // log every connection
};

// Cut windows, sorted and merged, and the wall ⇄ link time mapping they define. Times are ns
// since the emulator's origin.
class CutSchedule {
 public:
  explicit CutSchedule(std::vector<CutWindow> windows) noexcept;
  const std::vector<CutWindow>& windows() const noexcept { return windows_; }
  // Wall time minus the cut time before it (constant during a cut).
  uint64_t link_time(uint64_t wall_ns) const noexcept;
  // Earliest wall time, outside any cut, whose link time reaches link_ns.
  uint64_t wall_time(uint64_t link_ns) const noexcept;
  // Index of the window containing wall_ns ([start, end)), or -1.
  int cut_at(uint64_t wall_ns) const noexcept;

 private:
  std::vector<CutWindow> windows_;
};

// Jitter as a smooth random process J(t) in [-jitter, +jitter]: uniform random values at knots
// every period, linear in between, with period ≥ 4 × jitter so |dJ/dt| ≤ 1/2. Then t + J(t)
// is increasing: delay varies but byte order is kept without piling up delay (a per-packet
// random delay clamped to keep order would drift towards +jitter under load).
class Jitter {
 public:
  Jitter(uint64_t jitter_ns, uint64_t seed) noexcept;
  int64_t at(uint64_t t_ns) const noexcept;
  uint64_t period_ns() const noexcept { return period_ns_; }

 private:
  int64_t knot(uint64_t k) const noexcept;
  uint64_t jitter_ns_;
  uint64_t seed_;
  uint64_t period_ns_;
};

// One direction of the link, in link time: FIFO serialiser at the rate, then the propagation
// delay. admit() gives the link time at which the last admitted byte arrives; arrival times are
// non-decreasing across everything admitted (all connections), so order is kept.
class LinkDirection {
 public:
  LinkDirection(uint64_t rate_bits_per_s, uint64_t one_way_ns, uint64_t jitter_ns, uint64_t seed,
                uint64_t queue_bytes_max) noexcept;
  // ready_link_ns: when the bytes were ready to enter the link (now, or earlier when they are
  // known to have waited in the source's socket for queue room: see WanEmulator).
  uint64_t admit(uint64_t ready_link_ns, uint64_t bytes) noexcept;
  // A FIN: takes no serialisation time, arrives after the bytes admitted before it.
  uint64_t admit_fin(uint64_t now_link_ns) noexcept;
  // The queue (bytes admitted, not yet serialised) is below queue_bytes_max.
  bool has_room(uint64_t now_link_ns) const noexcept;
  // Link time at which has_room() becomes true.
  uint64_t room_at(uint64_t now_link_ns) const noexcept;
  uint64_t queued_bytes(uint64_t now_link_ns) const noexcept;
  uint64_t serialisation_ns(uint64_t bytes) const noexcept;
  // Forgets everything admitted (reset-mode cut: the connections carrying it are gone).
  void drop_all(uint64_t now_link_ns) noexcept;

 private:
  uint64_t arrival(uint64_t done_link_ns) noexcept;
  uint64_t rate_bits_per_s_;
  uint64_t one_way_ns_;
  Jitter jitter_;
  uint64_t queue_ns_;        // queue_bytes_max expressed as serialisation time
  uint64_t free_at_ns_ = 0;  // link time when the serialiser finishes what it holds
  uint64_t last_arrival_ns_ = 0;
};

struct DirectionStats {
  uint64_t bytes_read = 0;         // entered the link
  uint64_t bytes_delivered = 0;    // written to the destination
  uint64_t queue_full_waits = 0;   // a source was not read because the shared queue was full
  uint64_t buffer_full_waits = 0;  // ... because its connection buffer was full (slow receiver)
};

struct WanStats {
  DirectionStats up;    // client → target
  DirectionStats down;  // target → client
  uint64_t connections_accepted = 0;
  uint64_t connections_closed = 0;
  uint64_t connections_aborted = 0;       // an error on one side: the other side got RST
  uint64_t connections_reset_by_cut = 0;  // --cut-mode reset
  uint64_t connect_failures = 0;
  uint64_t cuts_started = 0;
  uint64_t wakeups_late = 0;  // woke > 2 ms after a deadline (CPU starved: timing suffers)
  uint64_t wakeup_late_ns_max = 0;
};

struct Connection;
struct Pipe;

class WanEmulator {
 public:
  // A late wake-up must not cost link time: bytes seen waiting in a source socket (FIONREAD)
  // while the queue was full enter the link as of when they were seen, up to this far back.
  static constexpr uint64_t kCatchUpNsMax = 100000000;  // 100 ms

  explicit WanEmulator(WanConfig config) noexcept;
  ~WanEmulator();
  WanEmulator(const WanEmulator&) = delete;
  WanEmulator& operator=(const WanEmulator&) = delete;

  // Resolves, binds and listens; prints "wan-emu: listening on HOST:PORT". Cut times count
  // from here.
  Result<void> start() noexcept;
  // Runs until *stop becomes non-zero. ppoll() waits with wait_mask (the signals that set
  // *stop must be blocked outside ppoll and unblocked in wait_mask).
  Result<void> run(const volatile sig_atomic_t* stop, const sigset_t* wait_mask) noexcept;
  const WanStats& stats() const noexcept { return stats_; }
  uint64_t queue_bytes_max() const noexcept { return queue_bytes_max_; }
  uint64_t conn_buffer_bytes() const noexcept { return conn_buffer_bytes_; }
  uint64_t chunk_bytes_max() const noexcept { return chunk_bytes_max_; }
  // Writes stats as JSON to config.stats_file (if set), atomically (tmp + rename).
  void write_stats_file() const noexcept;
  std::string stats_line() const;

 private:
  uint64_t wall_now() const noexcept;  // ns since origin
  void update_cuts(uint64_t now) noexcept;
  void accept_connections() noexcept;
  void reset_all() noexcept;
  bool read_into(Connection& c, Pipe& p, int dir, uint64_t now_link) noexcept;
  void deliver(Connection& c, Pipe& p, int dir, uint64_t now_link) noexcept;
  bool write_out(Connection& c, Pipe& p, int dir) noexcept;
  void abort_connection(Connection& c, const char* why) noexcept;
  void close_connection(Connection& c) noexcept;
  bool can_read(const Connection& c, Pipe& p, int dir, uint64_t now_link) noexcept;

  WanConfig config_;
  CutSchedule cuts_;
  LinkDirection links_[2];
  uint64_t queue_bytes_max_;
  uint64_t conn_buffer_bytes_;
  uint64_t chunk_bytes_max_;
  uint64_t origin_ns_ = 0;
  int listen_fd_ = -1;
  std::vector<uint8_t> target_addr_;  // sockaddr storage
  uint32_t target_addr_len_ = 0;
  int target_family_ = 0;
  std::vector<std::unique_ptr<Connection>> connections_;
  uint64_t next_id_ = 1;
  size_t rotate_ = 0;    // fairness: where the read pass starts
  size_t next_cut_ = 0;  // first cut not yet started
  int active_cut_ = -1;
  WanStats stats_;
};

}  // namespace ferry::wan
