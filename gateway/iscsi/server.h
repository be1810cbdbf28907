// iSCSI Server: the portal (one listening socket on the first reactor; accept, limits, hand-over
// to the reactor with the fewest live connections and the connection tables are the
// ConnectionHub's, datapath/connection_hub.h), the targets it serves, and
// the session registry used for TSIH allocation and session reinstatement, and the
// failed-authentication back-off of CHAP logins per source address. Shared by all reactor
// threads: the registry and the back-off table are guarded by mutexes (login-time only, never
// per I/O).
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "datapath/auth_backoff.h"
#include "datapath/connection_hub.h"
#include "datapath/reactor.h"
#include "gateway/iscsi/portal_config.h"
#include "gateway/scsi/logical_unit.h"

namespace ferry::iscsi {

struct ServerOptions {
  std::string listen_address = "127.0.0.1";
  uint16_t port = 3260;
  uint32_t queue_depth_max = 128;     // commands outstanding per session (CmdSN window)
  uint32_t login_timeout_ms = 15000;  // connect → full feature phase
  uint32_t nop_interval_ms = 5000;    // idle time before the target pings with NOP-In
  uint32_t nop_timeout_ms = 15000;    // no answer to a ping → drop the connection
  uint32_t connections_max = 4096;    // per server; beyond that accept closes at once
  PreAuthLimits pre_auth;             // connections still in login (see pre_auth_gate.h)
  AuthBackoffLimits auth_backoff;     // failed CHAP logins per source (see auth_backoff.h)
  uint32_t tx_batch_pdus_max = 256;   // PDUs per sendmsg (1 = no batching; for measuring)
  std::string tcp_congestion;         // TCP congestion control of the portal ("": system's)
};

class Server {
 public:
  Server(ServerOptions options, PortalConfig portal) noexcept;
  ~Server();

  // Target by IQN for a session that logged in to it (nullptr if unknown).
  void add_target(const std::string& iqn, scsi::Target* target);
  scsi::Target* find_target(std::string_view iqn) const noexcept;
  const PortalConfig& portal() const noexcept { return portal_; }
  const ServerOptions& options() const noexcept { return options_; }

  // The reactor takes connections; the first one to call also opens the portal's listening
  // socket and accepts (a port in use fails: Errc::exists). Call on the reactor thread.
  Result<void> start_listening(Reactor& reactor) noexcept;
  // Closes every connection of this reactor and the listener. Call on the reactor thread.
  void stop_listening(Reactor& reactor) noexcept;
  // Takes ownership of a connected stream socket: makes it a Connection on `reactor` and starts
  // it (login phase). Closes fd instead when connections_max is reached or memory runs out.
  // Used by the accept path and by tests/fuzzers that hand over one end of a socketpair.
  // Call on the reactor thread.
  void adopt_connection(Reactor& reactor, int fd) noexcept;
  // Installs the reactors so reinstatement can reach connections on other threads.
  void set_reactors(std::vector<Reactor*> reactors) { reactors_ = std::move(reactors); }

  // Session registry. register_session returns the TSIH to use; if a session with the same
  // initiator name and ISID exists it is reinstated: its connection is closed on its thread.
  uint16_t register_session(const std::string& initiator_name, const uint8_t isid[6],
                            const std::string& target_name, Reactor& reactor,
                            uint64_t connection_id) noexcept;
  void unregister_session(uint16_t tsih, uint64_t connection_id) noexcept;

  // Accept, limits and the per-thread connection table (opened / authenticated at the end of
  // login / closed, cross-thread closes by id).
  ConnectionHub& hub() noexcept { return hub_; }
  const PreAuthGate& pre_auth() const noexcept { return hub_.pre_auth(); }
  AuthBackoff& auth_backoff() noexcept { return auth_backoff_; }
  const DrainCount& connection_count() const noexcept { return hub_.count(); }
  // After stop_listening() on every reactor: waits until every connection is gone (each goes
  // once its tasks' device I/O has completed), at most timeout_ms; returns how many are left.
  uint64_t wait_connections_closed(uint32_t timeout_ms) noexcept {
    return hub_.wait_closed(timeout_ms);
  }
  // Logged-in sessions (any thread; takes the registry's mutex: for management, not per I/O).
  size_t session_count() noexcept {
    std::lock_guard<std::mutex> lock(sessions_mutex_);
    return sessions_.size();
  }

 private:
  static bool start_connection(void* self, Reactor& reactor, int fd, uint64_t id) noexcept;

  struct SessionEntry {
    std::string initiator_name;
    std::string target_name;
    uint8_t isid[6];
    uint16_t tsih;
    Reactor* reactor;
    uint64_t connection_id;
  };

  ServerOptions options_;
  PortalConfig portal_;
  std::vector<std::pair<std::string, scsi::Target*>> targets_;
  std::vector<Reactor*> reactors_;

  std::mutex sessions_mutex_;
  std::vector<SessionEntry> sessions_;
  uint16_t next_tsih_ = 1;

  std::mutex listeners_mutex_;  // the portal's listener is opened once
  bool listening_ = false;
  ConnectionHub hub_;
  AuthBackoff auth_backoff_;  // failed CHAP logins per source address
};

}  // namespace ferry::iscsi
