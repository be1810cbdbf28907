// ConnectionHub: the one accept / limit / hand-over / registry path of every server (iSCSI
// portal, NBD export, WAN link). A server owns one hub; the hub owns the server's listeners and
// takes every accepted socket through the same steps:
//
//   listener ──accept──▶ limit (connections_max) ──▶ balancer (fewest live, hand-over by post)
//            ──▶ pre-authentication gate (per source, oldest evicted) ──▶ start(id, fd)
//   connection ──opened()──▶ table of its reactor thread ──authenticated()──▶ leaves the gate
//              ──closed()──▶ out of the table and the counts (after its last I/O completed)
//
// and a server's stop is the same everywhere: stop() on each reactor (no more accepts there;
// every connection of that reactor is closed), then wait_closed() counts the connections to zero
// within a bound instead of sleeping. Connections derive from HubConnection: the hub closes them
// (shutdown, eviction of a connection still authenticating, cross-thread close by id) only
// through its two virtual functions, never per I/O.
//
// Threading: accept, start, opened, closed and stop of a connection run on its reactor thread;
// the per-thread table is only touched there. Limits and counts are atomics, the gate has its own
// mutex (set-up and tear-down only), the listener list a mutex (start/stop only).
//
// Sessions: once a connection has proven who it is it may publish() what an operator sees of it
// (a SessionInfo copied once, and SessionCounters it bumps on its own thread); the management API
// lists them from any thread (sessions()) and closes one by id (disconnect(): posted to the
// connection's reactor, which closes it there). The published table has its own mutex, taken at
// publish / unpublish (login and close) and by management, never per I/O.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "datapath/acceptor.h"
#include "datapath/connection_balancer.h"
#include "datapath/drain_count.h"
#include "datapath/pre_auth_gate.h"
#include "datapath/reactor.h"
#include "datapath/result.h"

namespace ferry {

class ConnectionHub;

// What a hub needs of a connection. Ids are unique in the process (one counter for every hub).
class HubConnection {
 public:
  HubConnection(const HubConnection&) = delete;
  HubConnection& operator=(const HubConnection&) = delete;
  uint64_t id() const noexcept { return id_; }
  // Closes the connection (idempotent); `why` is logged by the connection.
  virtual void close(const char* why) noexcept = 0;
  // True until the peer has proven who it is (iSCSI login, NBD handshake, WAN HELLO).
  virtual bool authenticating() const noexcept = 0;

 protected:
  explicit HubConnection(uint64_t id) noexcept : id_(id) {}
  ~HubConnection() = default;

 private:
  friend class ConnectionHub;
  const uint64_t id_;
  bool counted_authenticated_ = false;
};

// What the management API shows of a published connection: copied once at publish(), plus the
// counters read at the time of the listing.
struct SessionInfo {
  uint64_t id = 0;
  std::string protocol;        // "iscsi", "nbd"
  std::string client;          // iSCSI initiator name; NBD: "" (the protocol names no client)
  std::string peer;            // address:port of the client
  std::string target;          // iSCSI target IQN; NBD export name
  std::string detail;          // iSCSI "isid=..., tsih=N"; NBD "tls" or "plain"
  uint64_t since_unix_ms = 0;  // when it was published (login complete)
  uint64_t commands = 0, bytes_read = 0, bytes_written = 0;
};

// Counters a connection bumps on its own reactor thread (the only writer) and management reads
// from any thread: relaxed loads and stores, no read-modify-write on the hot path.
struct SessionCounters {
  std::atomic<uint64_t> commands{0}, bytes_read{0}, bytes_written{0};
  static void add(std::atomic<uint64_t>& counter, uint64_t n) noexcept {
    counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
};

struct HubOptions {
  const char* name = "server";       // prefixes log lines: "iscsi", "nbd", "wan"
  uint32_t connections_max = 4096;   // beyond that an accepted socket is closed at once
  bool limit_authenticated = false;  // count only authenticated connections against the limit
                                     // (the gate bounds the others)
  PreAuthLimits pre_auth;
};

class ConnectionHub {
 public:
  // Makes connection `id` of socket fd on `reactor`'s thread and starts it (it calls opened()).
  // Returns false when it could not be made (out of memory): the hub then closes fd.
  using StartFn = bool (*)(void* context, Reactor& reactor, int fd, uint64_t id) noexcept;

  ConnectionHub(HubOptions options, StartFn start, void* context) noexcept;
  ~ConnectionHub();
  ConnectionHub(const ConnectionHub&) = delete;
  ConnectionHub& operator=(const ConnectionHub&) = delete;

  // Accepts on listen_fd (taken over) on `reactor`. Reactor thread; start-up.
  void add_listener(Reactor& reactor, int listen_fd) noexcept;
  // The reactor takes connections (handed over by the balancer). Idempotent.
  void join(Reactor& reactor) noexcept;
  // On `reactor`'s thread: it takes no more connections, its listeners stop, and every
  // connection of this hub on it is closed with `why`.
  void stop(Reactor& reactor, const char* why) noexcept;

  // The accept path, also used by tests and fuzzers that hand over one end of a socketpair:
  // takes ownership of a connected socket accepted on `reactor` (its thread).
  void adopt(Reactor& reactor, int fd) noexcept;

  // Called by connections on their reactor thread.
  void opened(HubConnection* c) noexcept;
  void authenticated(HubConnection* c) noexcept;
  // Closing but still holding I/O: it leaves the gate and the authenticated count now (a
  // closing connection never keeps a newcomer out); closed() does this too. Idempotent.
  void closing(HubConnection* c) noexcept;
  void closed(HubConnection* c) noexcept;  // last: the stopping thread may go on at zero

  // This thread's connection with that id, or nullptr (closed or on another reactor).
  HubConnection* find_here(uint64_t id) const noexcept;

  // Sessions. publish / unpublish on the connection's reactor thread (unpublish is idempotent and
  // also done by closed(); `counters` must live until then). sessions() and disconnect() from any
  // thread; disconnect is false when no published session has that id.
  void publish(HubConnection* c, SessionInfo info, const SessionCounters* counters) noexcept;
  void unpublish(HubConnection* c) noexcept;
  std::vector<SessionInfo> sessions() const;
  bool disconnect(uint64_t id, const char* why) noexcept;

  const PreAuthGate& pre_auth() const noexcept { return pre_auth_; }
  const DrainCount& count() const noexcept { return connections_; }
  uint64_t authenticated_count() const noexcept { return authenticated_.load(); }
  uint32_t live_on(const Reactor& reactor) const noexcept { return balancer_.live(reactor); }
  // After stop() on every reactor: waits until every connection has closed() (each goes once its
  // I/O has completed), at most timeout_ms; returns how many are left.
  uint64_t wait_closed(uint32_t timeout_ms) noexcept {
    return connections_.wait_zero_for(timeout_ms);
  }

 private:
  void start_connection(Reactor& reactor, int fd) noexcept;
  static void close_pending(void* context, uint64_t id) noexcept;

  const HubOptions options_;
  const StartFn start_;
  void* const context_;
  const uint64_t instance_;  // names this hub in the per-thread tables
  std::mutex listeners_mutex_;
  std::vector<std::unique_ptr<Acceptor>> listeners_;
  DrainCount connections_;  // opened and not yet closed
  std::atomic<uint64_t> authenticated_{0};
  ConnectionBalancer balancer_;
  PreAuthGate pre_auth_;
  struct Published {
    SessionInfo info;
    const SessionCounters* counters;
    Reactor* reactor;
  };
  mutable std::mutex sessions_mutex_;
  std::vector<Published> sessions_;  // at most one per open connection (connections_max)
};

}  // namespace ferry
