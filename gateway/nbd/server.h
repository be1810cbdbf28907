// NbdServer: the NBD export server (fixed newstyle, structured replies, base:allocation,
// STARTTLS). Owns the export table, the optional TLS context, the failed-authentication back-off
// (TLS client certificates refused, per source address) and the listeners: one TCP
// listener and one Unix-socket listener, both on the first reactor that starts (a port in use
// fails the start). Accept, limits, hand-over to the reactor with the fewest live connections and
// the connection tables are the ConnectionHub's (datapath/connection_hub.h); a connection lives
// on its reactor (see connection.h).
//
// Threading: construct on any thread before the reactors run; start_listening/stop_listening
// run on each reactor thread. Shared state after start (exports, TLS context, counters) is
// read-only or atomic (the back-off table has its own mutex, handshake time only); the listener
// table is guarded by a mutex (start/stop only).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "datapath/auth_backoff.h"
#include "datapath/block_device.h"
#include "datapath/connection_hub.h"
#include "datapath/reactor.h"
#include "datapath/tls/tls_engine.h"

namespace ferry::nbd {

struct NbdOptions {
  std::string listen_address = "127.0.0.1";  // IPv4 literal
  uint16_t port = 10809;                     // 0: an ephemeral port (see bound_port())
  bool listen_tcp = true;                    // false: Unix socket only
  std::string tcp_congestion;                // TCP congestion control ("": the system's)
  std::string unix_path;                     // empty: no Unix socket
  std::string tls_cert_path;                 // PEM; empty: STARTTLS refused (NBD_REP_ERR_POLICY)
  std::string tls_key_path;
  std::string tls_ca_path;                // non-empty: client certificates required, from it
  bool tls_required = false;              // every export requires TLS
  uint32_t requests_in_flight_max = 128;  // per connection; reading pauses at the limit
  uint32_t handshake_timeout_ms = 10000;  // connect → transmission phase
  uint32_t connections_max = 4096;
  PreAuthLimits pre_auth;          // connections still in the handshake
  AuthBackoffLimits auth_backoff;  // refused TLS client certificates per source
};

struct NbdExport {
  std::string name;               // "lun0", "lun1", ...; "" from the client means the first export
  BlockDevice* device = nullptr;  // not owned; outlives the server
  std::string description;
  bool tls_required = false;
};

class NbdServer {
 public:
  NbdServer(NbdOptions options, std::vector<NbdExport> exports) noexcept;
  ~NbdServer();
  NbdServer(const NbdServer&) = delete;
  NbdServer& operator=(const NbdServer&) = delete;

  // Opens this reactor's listener(s) and starts accepting. Call on each reactor thread.
  // The first call also loads the TLS certificates (invalid_argument / io_error on failure).
  Result<void> start_listening(Reactor& reactor) noexcept;
  // Closes this reactor's listeners and connections. Call on the reactor thread.
  void stop_listening(Reactor& reactor) noexcept;

  // The TCP port actually bound (useful with options.port == 0), 0 before start_listening.
  uint16_t bound_port() const noexcept { return bound_port_.load(); }

  const NbdOptions& options() const noexcept { return options_; }
  const std::vector<NbdExport>& exports() const noexcept { return exports_; }
  // Export by name; "" is the default export (the first one). nullptr if unknown.
  const NbdExport* find_export(std::string_view name) const noexcept;
  bool export_requires_tls(const NbdExport& e) const noexcept {
    return options_.tls_required || e.tls_required;
  }
  // The context of every connection's TLS engine; nullptr when STARTTLS is refused.
  const tls::TlsContext* tls_context() const noexcept { return tls_ctx_.get(); }

  // Accept, limits and the per-thread connection table (opened / authenticated at the
  // transmission phase / closed).
  ConnectionHub& hub() noexcept { return hub_; }
  const PreAuthGate& pre_auth() const noexcept { return hub_.pre_auth(); }
  AuthBackoff& auth_backoff() noexcept { return auth_backoff_; }
  uint64_t connection_count() const noexcept { return hub_.count().value(); }
  // After stop_listening() on every reactor: waits until every connection is gone (each goes
  // once its requests' device I/O has completed), at most timeout_ms; returns how many are left.
  uint64_t wait_connections_closed(uint32_t timeout_ms) noexcept {
    return hub_.wait_closed(timeout_ms);
  }
  // Connections placed on a reactor (by the balancer) and not yet closed.
  uint32_t connections_on(const Reactor& reactor) const noexcept { return hub_.live_on(reactor); }

 private:
  Result<void> init_tls() noexcept;
  Result<void> listen_tcp(Reactor& reactor) noexcept;
  Result<void> listen_unix(Reactor& reactor) noexcept;
  static bool start_connection(void* self, Reactor& reactor, int fd, uint64_t id) noexcept;

  NbdOptions options_;
  std::vector<NbdExport> exports_;
  std::unique_ptr<tls::TlsContext> tls_ctx_;

  std::mutex mutex_;  // tls init, listener creation, unix socket ownership
  bool tls_initialised_ = false;
  bool unix_bound_ = false;
  std::atomic<uint16_t> bound_port_{0};
  ConnectionHub hub_;         // owns the listeners
  AuthBackoff auth_backoff_;  // refused client certificates per source address
};

}  // namespace ferry::nbd
