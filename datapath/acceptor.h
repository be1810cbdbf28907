// Acceptor: a TCP listening socket accepting with one multishot accept on a reactor. A server
// has one listener per address, on one reactor, and hands accepted connections to the others
// (ConnectionBalancer). No SO_REUSEPORT: a second process asking for a port in use must fail,
// not share the port (connections would alternate between the two processes). Accept errors
// are logged and back off 100 ms instead of spinning (EMFILE); after stop() accepted sockets are
// closed. Used by every server (iSCSI portal, NBD export, WAN link). Reactor thread only, except
// listen_tcp which may run anywhere.
#pragma once

#include <cstdint>
#include <string>

#include "datapath/reactor.h"
#include "datapath/result.h"

namespace ferry {

// Binds and listens on ADDRESS:PORT (port 0: ephemeral); ADDRESS is a host name, an IPv4 or an
// IPv6 literal (no brackets), resolved with getaddrinfo (blocks: start-up only), and the first of
// its addresses that binds is used. Returns the fd or an error,
// with a message naming the address in `error`; a port already in use (by this or another
// process) is an error (Errc::exists, "address already in use"). A non-empty `congestion` names the
// TCP congestion control for the listener, which accepted sockets inherit (TCP_CONGESTION; e.g.
// "cubic" where the system default is "bbr" without an fq qdisc: BBR then paces every segment
// with a timer, which costs a loopback or LAN front end a third of its 1 MiB read throughput,
// perf/README.md). An unknown or not-permitted name fails with the available ones in `error`.
Result<int> listen_tcp(const std::string& address, uint16_t port, std::string& error,
                       const std::string& congestion = {}) noexcept;
// The local port of a bound socket (0 on error).
uint16_t local_port(int fd) noexcept;

class Acceptor final : public Operation {
 public:
  using OnAccept = void (*)(void* context, int fd) noexcept;
  // Takes ownership of listen_fd. `name` prefixes log lines ("iscsi", "nbd", ...).
  Acceptor(Reactor& reactor, int listen_fd, OnAccept on_accept, void* context,
           const char* name) noexcept;
  ~Acceptor();
  Acceptor(const Acceptor&) = delete;
  Acceptor& operator=(const Acceptor&) = delete;

  void start() noexcept;
  // Stops accepting (shuts the socket down; the fd is closed by the destructor).
  void stop() noexcept;
  Reactor& reactor() const noexcept { return reactor_; }
  int fd() const noexcept { return fd_; }

  void on_cqe(int32_t res, uint32_t flags) noexcept override;

 private:
  void arm() noexcept;
  static void on_backoff(void* context) noexcept;

  Reactor& reactor_;
  int fd_;
  OnAccept on_accept_;
  void* context_;
  const char* name_;
  bool accepting_ = false;
  bool stopping_ = false;
  Timer backoff_;
};

}  // namespace ferry
