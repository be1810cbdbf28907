// WanServer: the datacenter edge's end of the WAN link. Accepts TLS 1.3 connections (mutual
// certificates) from cloud edges and serves their volume requests from local block devices
// (in production NbdClientDevice over the VMDK's NBD server): READ as chunked READ_DATA frames —
// zero runs as ZERO, content the client already holds as DEDUP_REF (SHA-256, remembered per
// client identity across volumes and reconnects), the rest compressed when that pays — then
// WRITE, FLUSH, BLOCK_STATUS, PING. Sends in priority order (demand read > write-back >
// prefetch > background), one chunk frame at a time, under an optional bandwidth cap, so an
// urgent read waits behind at most the stream's small backlog.
// Threading: one reactor (the one passed to start); everything runs on it.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "datapath/block_device.h"
#include "datapath/connection_hub.h"
#include "datapath/reactor.h"
#include "datapath/tls/tls_engine.h"
#include "datapath/wan/codec.h"
#include "datapath/wan/frame.h"

namespace ferry::wan {

struct WanVolume {
  std::string name;
  BlockDevice* device = nullptr;  // not owned
};

struct WanServerOptions {
  std::string listen_address = "127.0.0.1";
  uint16_t port = 9111;  // 0: ephemeral (bound_port())
  uint32_t chunk_bytes = 64 * 1024;
  Compression compression{CompressAlgo::zstd, 3};  // measured choice: datapath/wan/DESIGN.md
  uint64_t rate_limit_bytes_per_s = 0;             // 0: unlimited; change with set_rate_limit
  bool rate_limit_all = false;                     // the cap also holds demand reads and write-back
  uint32_t chunk_reads_max = 32;                   // device reads in flight per connection
  size_t dedup_entries_max = 1u << 20;             // content hashes remembered per client
  uint32_t connections_max = 64;                   // authenticated connections (past HELLO)
  // Connections not past HELLO yet: at most 32 (8 per source address); the oldest is dropped
  // for a newcomer when full, and each must finish TLS + HELLO within handshake_timeout_ms.
  PreAuthLimits pre_auth{32, 8};
  uint32_t handshake_timeout_ms = 10000;
  uint32_t socket_send_bytes = 0;  // SO_SNDBUF of WAN sockets (0: kernel autotuning)
  // A volume is owned by one cloud edge at a time (see "Leases" in gateway/wan/DESIGN.md): its
  // lease outlives the holder's connection by lease_ms, so the same edge can reconnect and
  // resume while no other edge can attach.
  uint32_t lease_ms = 30000;
  // An authenticated connection that sends nothing (cloud edges ping every second) for this
  // long is dead: it is closed, which starts its leases' lease_ms.
  uint32_t idle_timeout_ms = 15000;
  // Learned access maps (see "Access maps" in gateway/wan/DESIGN.md): kept in DIR/<volume>.map
  // across restarts when set ("" = in memory only).
  std::string access_map_dir;
  // Offer write-back epochs (kCapEpochs): the volumes' devices keep them (gateway/redo: a redo
  // log per volume, `ferry dc-edge --redo-dir`), so epoch writes and EPOCH_COMMIT go to them.
  bool epochs = false;
};

// Per-volume counters (what crossed the WAN for it, from this server's side).
struct WanVolumeCounters {
  uint64_t bytes_requested = 0;  // READ lengths asked for
  uint64_t bytes_zero = 0;       // sent as ZERO runs (no payload)
  uint64_t bytes_dedup = 0;      // sent as DEDUP_REF (32-byte payload)
  uint64_t bytes_raw = 0;        // sent as they are
  uint64_t bytes_compressed_in = 0, bytes_compressed_out = 0;
  uint64_t payload_bytes_sent = 0;  // data frame payloads on the wire (before TLS)
  uint64_t frames_sent = 0;
  uint64_t bytes_written = 0;
};

class WanServer {
 public:
  WanServer(WanServerOptions options, const tls::TlsContext& tls, std::vector<WanVolume> volumes);
  ~WanServer();
  WanServer(const WanServer&) = delete;
  WanServer& operator=(const WanServer&) = delete;

  // On the reactor thread: listen and accept.
  Result<void> start(Reactor& reactor, std::string& error) noexcept;
  // On the reactor thread: stop accepting, close every connection.
  void stop() noexcept;
  // After stop() (any thread): waits until every session is gone — closed and with no device
  // I/O left in flight — at most timeout_ms; returns how many are left.
  uint64_t wait_sessions_closed(uint32_t timeout_ms) noexcept {
    return hub_.wait_closed(timeout_ms);
  }
  uint16_t bound_port() const noexcept { return bound_port_; }
  // Thread safe: takes effect on the next frame.
  void set_rate_limit(uint64_t bytes_per_s) noexcept { rate_limit_.store(bytes_per_s); }
  uint64_t rate_limit() const noexcept { return rate_limit_.load(); }
  size_t connection_count() const noexcept { return sessions_.size(); }
  const PreAuthGate& pre_auth() const noexcept { return hub_.pre_auth(); }
  // Counters by volume index (reactor thread, or after stop).
  const WanVolumeCounters& counters(size_t volume_index) const noexcept {
    return counters_[volume_index];
  }
  const std::vector<WanVolume>& volumes() const noexcept { return volumes_; }
  std::string stats_text() const;
  // The edge holding volume i's lease ("" when free or expired), for tests and stats.
  std::string lease_holder(size_t volume_index) const;
  // Chunks in volume i's access map.
  size_t access_map_entries(size_t volume_index) const noexcept {
    return maps_[volume_index].offsets.size();
  }
  // Writes the maps to access_map_dir (after stop; main thread). Errors are logged.
  void save_access_maps() const;

 private:
  friend class ServerSession;
  // Content this client session has received in full (it may have evicted some: it then
  // repeats the read with NO_DEDUP).
  struct DedupSet {
    std::unordered_set<ContentHash, ContentHashHasher> hashes;
    std::vector<ContentHash> order;  // ring in insertion order, for the bound
    size_t next_evict = 0;
  };
  static bool start_session(void* self, Reactor& reactor, int fd, uint64_t id) noexcept;
  void session_closed(class ServerSession* s) noexcept;
  static void on_sweep(void* ctx) noexcept;
  // The dedup set of a client session: what this cloud edge process has received. A client
  // that resumes (HELLO with its previous session id, same certificate name) keeps its set; a
  // new session starts empty. At most kDedupSessionsMax sets are kept (oldest dropped).
  static constexpr size_t kDedupSessionsMax = 64;
  uint64_t resume_or_new_session(const std::string& client, uint64_t wanted) noexcept;
  DedupSet* dedup_for(const std::string& client, uint64_t session) noexcept;

  // Volume leases, one per volume, held by an edge name (its certificate's) and the session id
  // of the holding process. `generation` is the fencing token: bumped at every grant, so a
  // connection whose lease was taken over can no longer touch the volume.
  struct VolumeLease {
    std::string holder;  // "" = free
    uint64_t holder_session = 0;
    uint64_t generation = 0;
    class ServerSession* owner = nullptr;  // the connection that opened it; nullptr: gone
    uint64_t expires_ns = 0;               // when owner == nullptr
    uint64_t since_ns = 0;
  };
  // Grants volume i's lease to the session (or refuses: returns why, for the ERROR and the log).
  std::string acquire_lease(class ServerSession& s, size_t volume_index,
                            uint64_t& generation) noexcept;
  bool lease_valid(const class ServerSession& s, size_t volume_index,
                   uint64_t generation) const noexcept;
  // The session let go (CLOSE_VOLUME: free now) or disconnected (kept for lease_ms).
  void release_lease(class ServerSession& s, size_t volume_index, bool closed_cleanly) noexcept;
  void connection_lost(class ServerSession& s) noexcept;

  WanServerOptions options_;
  const tls::TlsContext& tls_;
  std::vector<WanVolume> volumes_;
  std::vector<WanVolumeCounters> counters_;
  std::vector<VolumeLease> leases_;
  // A volume's access map: the chunk offsets demand and prefetch reads first touched, in that
  // order, at most kAccessMapEntriesMax; `seen` has one bit per chunk of the volume.
  struct AccessMap {
    std::vector<uint64_t> offsets;
    std::vector<uint64_t> seen;
    bool dirty = false;
  };
  std::vector<AccessMap> maps_;
  void record_access(size_t volume_index, uint64_t offset_bytes, uint64_t length_bytes) noexcept;
  void load_access_maps();
  std::atomic<uint64_t> rate_limit_;
  Reactor* reactor_ = nullptr;
  uint16_t bound_port_ = 0;
  std::vector<std::unique_ptr<ServerSession>> sessions_;
  std::vector<std::unique_ptr<ServerSession>> closing_;
  std::unordered_map<std::string, DedupSet> dedup_;  // key: client name + "/" + session id
  std::vector<std::string> dedup_order_;
  // Accept, limits (authenticated sessions only), pre-authentication gate, and the count of
  // sessions_ + closing_ for a counted shutdown.
  ConnectionHub hub_;
  Timer sweep_timer_;
  bool stopping_ = false;

 public:
  // Rate limiter shared by all connections (token bucket, bytes).
  struct Bucket {
    double tokens = 0;
    uint64_t last_ns = 0;
  } bucket_;
};

}  // namespace ferry::wan
