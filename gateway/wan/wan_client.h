// WanClient: the cloud edge's end of the WAN link — one TLS 1.3 connection to the datacenter
// edge carrying every volume's requests, completed out of order — and RemoteDevice, the
// BlockDevice each remote volume is served through. Reads arrive as chunk frames (zero runs,
// compressed or raw data, or DEDUP_REF to content this edge already holds in its content store);
// writes go out as chunk frames (zero runs and compression applied). Keepalive PINGs detect a
// dead link; on loss the client reconnects with back-off, reopens its volumes and resends every
// request in flight, so an initiator sees a slow I/O, not an error, unless the link stays down
// longer than give_up_ms (then requests fail with timed_out and are logged).
// Threading: one reactor; RemoteDevice::submit must be called on it.
#pragma once

#include <netinet/in.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "cache/content_store.h"
#include "datapath/block_device.h"
#include "datapath/net_address.h"
#include "datapath/reactor.h"
#include "datapath/tls/tls_engine.h"
#include "datapath/wan/codec.h"
#include "datapath/wan/frame.h"
#include "gateway/wan/stream.h"

namespace ferry::wan {

struct WanClientOptions {
  // A host name, or an IPv4 or IPv6 literal (no brackets). A name is resolved off the reactor
  // (AsyncResolver) before every connection attempt, so a reconnect follows a DNS change; its
  // addresses are tried in getaddrinfo order.
  std::string server_address = "127.0.0.1";
  uint16_t server_port = 9111;
  uint32_t give_up_ms = 60000;    // requests fail after the link is down this long
  uint32_t keepalive_ms = 1000;   // PING interval when idle
  uint32_t dead_after_ms = 5000;  // nothing heard for this long: reconnect
  uint32_t connect_timeout_ms = 5000;
  uint32_t chunk_bytes = 64 * 1024;                // write frames
  Compression compression{CompressAlgo::zstd, 3};  // measured choice: datapath/wan/DESIGN.md
  size_t content_store_bytes_max = 256u << 20;     // dedup: content received, by SHA-256
  uint32_t requests_max = 1024;                    // in flight; beyond: BUSY
  // Handshakes in a row that end in a certificate refusal (by either side) before the link is
  // first up: then the client reports auth_failed to on_ready with the reason and stops trying.
  uint32_t auth_failures_max = 5;
};

struct WanClientVolumeCounters {
  uint64_t bytes_read = 0;        // data delivered to readers
  uint64_t bytes_zero = 0;        // of which arrived as zero runs
  uint64_t bytes_dedup = 0;       // of which came from the content store (DEDUP_REF)
  uint64_t bytes_compressed = 0;  // of which arrived compressed
  uint64_t payload_bytes_in = 0;  // data frame payload received
  uint64_t bytes_written = 0;
  uint64_t payload_bytes_out = 0;
  uint64_t retries = 0;  // requests resent after a reconnect or a dedup miss
};

class RemoteDevice;

class WanClient final : public WanStreamHandler {
 public:
  WanClient(Reactor& reactor, WanClientOptions options, const tls::TlsContext& tls,
            std::vector<std::string> volume_names);
  ~WanClient();
  WanClient(const WanClient&) = delete;
  WanClient& operator=(const WanClient&) = delete;

  // On the reactor thread: connect, HELLO, open every volume. `on_ready` runs once, on the
  // reactor thread, when all volumes are open (ok) or the first attempt failed (error + text).
  void start(std::function<void(Errc, const std::string&)> on_ready);
  // On the reactor thread: once nothing is in flight, CLOSE_VOLUME every volume so the
  // datacenter edge releases their leases at once (else they are kept for its lease time);
  // `done` runs when all are released, or at once when the link is down. Before stop().
  void release(std::function<void()> done);
  // On the reactor thread: fail everything in flight, close the link.
  void stop();
  // After on_ready(ok): the device serving volume i (same order as the names).
  RemoteDevice& device(size_t i) { return *devices_[i]; }
  size_t volume_count() const noexcept { return devices_.size(); }
  const WanClientVolumeCounters& counters(size_t i) const noexcept { return counters_[i]; }
  // Every connection's counters so far, the current one's included.
  WanStreamCounters link_counters() const noexcept;
  bool connected() const noexcept { return ready_; }
  // The capabilities negotiated with the datacenter edge (frame.h kCap*), after on_ready(ok).
  uint32_t capabilities() const noexcept { return caps_; }
  uint64_t reconnects() const noexcept { return reconnects_; }
  // How long the link has been down (0 while it is up), and the current connection's TCP RTT
  // (WanStream::tcp_rtt; false while down). Reactor thread.
  uint64_t down_for_ms() const noexcept;
  bool tcp_rtt(uint32_t& rtt_us, uint32_t& rtt_var_us) const noexcept {
    return ready_ && stream_ != nullptr && stream_->tcp_rtt(rtt_us, rtt_var_us);
  }
  // The link's round trip as frames see it: keepalive PING to PONG, smoothed (1/8 per sample
  // as TCP's SRTT); it includes what TCP_INFO does not see (proxies, the datacenter edge's
  // queue ahead of the PONG). 0 until the first PONG of the current connection.
  uint64_t ping_rtt_us() const noexcept { return ready_ ? ping_srtt_us_ : 0; }
  const std::string& server_address() const noexcept { return options_.server_address; }
  uint16_t server_port() const noexcept { return options_.server_port; }
  // Name lookups started for the server address (0 for a literal; one per connection round).
  uint64_t name_lookups() const noexcept { return name_lookups_; }
  std::string stats_text() const;

  void submit(size_t volume, IoRequest& io) noexcept;
  // (Background streaming is the `stream` layer of the volume stack: cache/background_stream.h.)

  // WanStreamHandler
  void on_established() noexcept override;
  bool on_frame(const FrameHeader& h, std::span<const uint8_t> payload) noexcept override;
  void on_writable() noexcept override { pump(); }
  void on_closed(const char* why) noexcept override;

 private:
  struct Pending {
    uint64_t id = 0;
    size_t volume = 0;
    IoRequest* io = nullptr;
    Priority priority = Priority::demand_read;
    bool no_dedup = false;
    bool dedup_miss = false;
    bool sent = false;        // fully sent on the current connection
    uint64_t sent_bytes = 0;  // write: bytes framed so far
    uint64_t received_bytes = 0;
  };
  void enqueue(size_t volume, IoRequest& io, Priority priority) noexcept;

  void connect() noexcept;
  void on_resolved(Result<std::vector<SocketAddress>> addresses, const std::string& error) noexcept;
  void connect_to(size_t index) noexcept;
  void connect_failed(const std::string& why) noexcept;
  void on_connected(int32_t res) noexcept;
  void schedule_reconnect() noexcept;
  void pump() noexcept;
  bool send_request(Pending& p) noexcept;
  void complete(Pending* p, Errc e) noexcept;
  void fail_all(Errc e, const char* why) noexcept;
  static void on_tick(void* ctx) noexcept;
  static void on_reconnect_timer(void* ctx) noexcept;

  Reactor& reactor_;
  WanClientOptions options_;
  const tls::TlsContext& tls_;
  std::vector<std::string> names_;
  std::vector<std::unique_ptr<RemoteDevice>> devices_;
  std::vector<WanClientVolumeCounters> counters_;
  std::vector<uint16_t> volume_ids_;  // on the current connection (0: not open yet)
  std::function<void(Errc, const std::string&)> on_ready_;
  bool ready_reported_ = false;

  bool server_is_literal_ = false;        // an address literal: resolved once, no lookups
  std::vector<SocketAddress> addresses_;  // of the server, from the last resolution
  size_t address_index_ = 0;              // the one being tried
  AsyncResolver resolver_;
  int connecting_fd_ = -1;
  CallbackOperation connect_op_;
  std::unique_ptr<WanStream> stream_;
  std::vector<std::unique_ptr<WanStream>> old_streams_;
  WanStreamCounters link_totals_;
  bool hello_acked_ = false;
  bool ready_ = false;  // HELLO acked and every volume open
  uint32_t caps_ = 0;
  uint64_t session_id_ = 0;  // from HELLO_ACK; offered again on reconnect (the server then
                             // still knows what our content store holds)
  size_t volumes_opened_ = 0;
  bool stopping_ = false;
  std::function<void()> release_done_;  // set while release() waits
  bool closes_sent_ = false;
  size_t closes_pending_ = 0;
  void send_closes_when_idle() noexcept;
  uint64_t down_since_ns_ = 0;  // 0 while connected
  uint64_t last_rx_ns_ = 0;
  uint64_t last_ping_ns_ = 0;
  uint64_t ping_sent_ns_ = 0;  // the PING awaiting its PONG (0: none)
  uint64_t ping_srtt_us_ = 0;
  uint64_t reconnects_ = 0;
  uint64_t name_lookups_ = 0;
  uint32_t backoff_ms_ = 100;
  uint32_t auth_failures_ = 0;  // certificate refusals in a row
  Timer tick_timer_;
  Timer reconnect_timer_;
  Timer connect_deadline_;

  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, Pending*> pending_;
  std::list<Pending*> unsent_;  // in arrival order; sent by priority
  std::vector<Pending*> free_pending_;

  ChunkEncoder encoder_;
  ChunkDecoder decoder_;
  Buffer scratch_;  // compression output for writes

  cache::ContentStore store_;  // dedup: content received, by hash (cache/content_store.h)
};

class RemoteDevice final : public BlockDevice {
 public:
  RemoteDevice(WanClient& client, size_t volume, const std::string& name) noexcept
      : client_(client), volume_(volume), description_("wan:" + name) {}
  Geometry geometry() const noexcept override { return geometry_; }
  void submit(IoRequest& req) noexcept override { client_.submit(volume_, req); }
  std::string_view describe() const noexcept override { return description_; }
  void set_geometry(const Geometry& g) noexcept { geometry_ = g; }

 private:
  WanClient& client_;
  size_t volume_;
  std::string description_;
  Geometry geometry_;
};

}  // namespace ferry::wan
