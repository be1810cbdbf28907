// Network addresses for every flag and config value that names a peer or a listener:
// "HOST:PORT" parsing (host a name, an IPv4 literal, or an IPv6 literal in brackets) and
// getaddrinfo resolution. parse_host_port is pure; resolve_tcp blocks (DNS) and must run at
// start-up or on a helper thread (AsyncResolver), never on a reactor thread, except with
// numeric_only (literals: no lookup, no blocking).
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "datapath/result.h"

namespace ferry {

class Reactor;

struct HostPort {
  std::string host;  // a name or a literal, without the brackets of an IPv6 literal
  uint16_t port = 0;
};

// "name:9111", "192.0.2.1:9111", "[::1]:9111". Rejects a missing or empty port, a port that
// is not a number in 1..65535 (0 too when allow_zero_port), an empty host, an IPv6 literal
// without brackets, a bracketed host that is not an IPv6 literal, and characters no host name
// has. Errc::invalid_argument with the reason in `error`.
Result<HostPort> parse_host_port(std::string_view text, std::string& error,
                                 bool allow_zero_port = false) noexcept;
// The inverse: brackets around an IPv6 literal.
std::string format_host_port(const std::string& host, uint16_t port);

struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
  int family() const noexcept { return storage.ss_family; }
  const sockaddr* get() const noexcept { return reinterpret_cast<const sockaddr*>(&storage); }
  std::string text() const;  // "192.0.2.1:9111" or "[::1]:9111"
};

// The TCP addresses of host:port, in getaddrinfo's order (the order to try them in).
// passive: for bind (AI_PASSIVE). numeric_only: literals only (AI_NUMERICHOST), never blocks.
// Errc::not_found (unknown name, or not a literal when numeric_only) with the reason in `error`.
Result<std::vector<SocketAddress>> resolve_tcp(const HostPort& where, bool passive,
                                               bool numeric_only, std::string& error) noexcept;

// Resolves on a helper thread (one short-lived thread per lookup) and delivers the answer on a
// reactor's thread through Reactor::post. For reconnects: a name is looked up again on every
// call, so a changed DNS record is seen. One lookup at a time per resolver; destroy or cancel()
// on the reactor thread: after that, no `done` runs (the thread may still finish its lookup).
class AsyncResolver {
 public:
  using Done = std::function<void(Result<std::vector<SocketAddress>>, const std::string& error)>;
  explicit AsyncResolver(Reactor& reactor) noexcept : reactor_(reactor) {}
  ~AsyncResolver() { cancel(); }
  AsyncResolver(const AsyncResolver&) = delete;
  AsyncResolver& operator=(const AsyncResolver&) = delete;

  // false when a lookup is already running or no thread could be started (done not called).
  bool resolve(const HostPort& where, Done done) noexcept;
  void cancel() noexcept;
  bool busy() const noexcept { return pending_ != nullptr; }

 private:
  struct Pending;
  Reactor& reactor_;
  std::shared_ptr<Pending> pending_;
};

}  // namespace ferry
