// NbdServer: listeners (one TCP and one Unix socket, on the first reactor), export table, TLS
// context of datapath/tls (see server.h).
#include "gateway/nbd/server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "gateway/nbd/connection.h"

namespace ferry::nbd {

NbdServer::NbdServer(NbdOptions options, std::vector<NbdExport> exports) noexcept
    : options_(std::move(options)),
      exports_(std::move(exports)),
      hub_(HubOptions{"nbd", options_.connections_max, false, options_.pre_auth},
           &NbdServer::start_connection, this),
      auth_backoff_(options_.auth_backoff, "nbd") {}

NbdServer::~NbdServer() {
  if (unix_bound_ && !options_.unix_path.empty()) ::unlink(options_.unix_path.c_str());
}

const NbdExport* NbdServer::find_export(std::string_view name) const noexcept {
  if (exports_.empty()) return nullptr;
  if (name.empty()) return &exports_.front();
  for (const NbdExport& e : exports_)
    if (e.name == name) return &e;
  return nullptr;
}

Result<void> NbdServer::init_tls() noexcept {
  if (options_.tls_cert_path.empty()) {
    if (options_.tls_required) {
      std::fprintf(stderr, "ferry: nbd: TLS required but no certificate given\n");
      return Errc::invalid_argument;
    }
    return {};
  }
  tls::TlsConfig config;
  config.cert_path = options_.tls_cert_path;
  config.key_path = options_.tls_key_path;
  config.ca_path = options_.tls_ca_path;
  config.server = true;
  config.verify_peer = !options_.tls_ca_path.empty();  // client certificates only with a CA
  config.allow_tls12 = true;
  config.session_tickets = false;
  std::string error;
  tls_ctx_ = tls::TlsContext::create(config, error);
  if (tls_ctx_ == nullptr) {
    std::fprintf(stderr, "ferry: nbd: cannot load TLS %s\n", error.c_str());
    return Errc::invalid_argument;
  }
  return {};
}

bool NbdServer::start_connection(void* self, Reactor& reactor, int fd, uint64_t id) noexcept {
  auto* c = new (std::nothrow) Connection(*static_cast<NbdServer*>(self), reactor, fd, id);
  if (c == nullptr) return false;
  c->start();
  return true;
}

Result<void> NbdServer::listen_tcp(Reactor& reactor) noexcept {
  std::string error;
  auto fd =
      ferry::listen_tcp(options_.listen_address, options_.port, error, options_.tcp_congestion);
  if (!fd.ok()) {
    std::fprintf(stderr, "ferry: nbd: %s\n", error.c_str());
    return fd.error();
  }
  bound_port_.store(local_port(fd.value()));
  hub_.add_listener(reactor, fd.value());
  return {};
}

Result<void> NbdServer::listen_unix(Reactor& reactor) noexcept {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (options_.unix_path.size() >= sizeof addr.sun_path) return Errc::invalid_argument;
  std::memcpy(addr.sun_path, options_.unix_path.data(), options_.unix_path.size());
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errc::io_error;
  ::unlink(options_.unix_path.c_str());  // a stale socket from an earlier run
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, 1024) != 0) {
    std::fprintf(stderr, "ferry: nbd: cannot listen on %s: %s\n", options_.unix_path.c_str(),
                 std::strerror(errno));
    ::close(fd);
    return Errc::io_error;
  }
  unix_bound_ = true;
  hub_.add_listener(reactor, fd);
  return {};
}

Result<void> NbdServer::start_listening(Reactor& reactor) noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!tls_initialised_) {
    Result<void> r = init_tls();
    if (!r) return r;
    tls_initialised_ = true;
  }
  if (options_.listen_tcp && bound_port_.load() == 0) {  // one listener, on the first reactor
    Result<void> r = listen_tcp(reactor);
    if (!r) return r;
  }
  if (!options_.unix_path.empty() && !unix_bound_) {
    Result<void> r = listen_unix(reactor);
    if (!r) return r;
  }
  hub_.join(reactor);
  return {};
}

void NbdServer::stop_listening(Reactor& reactor) noexcept {
  hub_.stop(reactor, "server shutting down");
}

}  // namespace ferry::nbd
