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
#include <unordered_map>

#include "datapath/acceptor.h"
#include "gateway/nbd/connection.h"

namespace ferry::nbd {

namespace {
thread_local std::unordered_map<uint64_t, Connection*> t_connections;
}  // namespace

NbdServer::NbdServer(NbdOptions options, std::vector<NbdExport> exports) noexcept
    : options_(std::move(options)),
      exports_(std::move(exports)),
      pre_auth_(options_.pre_auth),
      auth_backoff_(options_.auth_backoff, "nbd") {}

NbdServer::~NbdServer() {
  listeners_.clear();  // closes the listening sockets
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

void NbdServer::accepted(Reactor& reactor, int fd) noexcept {
  if (connection_count() >= options_.connections_max) {
    std::fprintf(stderr, "ferry: nbd: connection limit reached, refusing\n");
    ::close(fd);
    return;
  }
  balancer_.place(
      reactor, fd,
      [](void* self, Reactor& r, int conn_fd) noexcept {
        static_cast<NbdServer*>(self)->start_connection(r, conn_fd);
      },
      this);
}

void NbdServer::start_connection(Reactor& reactor, int fd) noexcept {
  const uint64_t id = next_connection_id_.fetch_add(1);
  auto close_pending = [](void*, uint64_t old_id) noexcept {
    auto found = t_connections.find(old_id);
    if (found != t_connections.end() && found->second->in_handshake())
      found->second->close("evicted: too many connections still in the handshake");
  };
  if (!pre_auth_.admit_connection(id, fd, reactor, "nbd", close_pending, nullptr)) {
    ::close(fd);
    balancer_.release(reactor);
    return;
  }
  auto* c = new (std::nothrow) Connection(*this, reactor, fd, id);
  if (c == nullptr) {
    pre_auth_.leave(id);
    ::close(fd);
    balancer_.release(reactor);
    return;
  }
  c->start();
}

void NbdServer::add_listener(Reactor& reactor, int fd) noexcept {
  auto l = std::make_unique<Acceptor>(
      reactor, fd,
      [](void* ctx, int conn) noexcept {
        static_cast<NbdServer*>(ctx)->accepted(*Reactor::current(), conn);
      },
      this, "nbd");
  l->start();
  listeners_.push_back(std::move(l));
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
  add_listener(reactor, fd.value());
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
  add_listener(reactor, fd);
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
  balancer_.join(reactor);
  return {};
}

void NbdServer::stop_listening(Reactor& reactor) noexcept {
  balancer_.leave(reactor);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& l : listeners_)
      if (&l->reactor() == &reactor) l->stop();
  }
  std::vector<Connection*> all;
  for (auto& [id, c] : t_connections) all.push_back(c);
  for (Connection* c : all) c->close("server shutting down");
}

void NbdServer::connection_opened(Connection* c) noexcept {
  t_connections.emplace(c->id(), c);
  connections_.add();
}

void NbdServer::connection_authenticated(Connection* c) noexcept { pre_auth_.leave(c->id()); }

void NbdServer::connection_closed(Connection* c) noexcept {
  pre_auth_.leave(c->id());
  t_connections.erase(c->id());
  if (Reactor* r = Reactor::current()) balancer_.release(*r);
  connections_.remove();  // last: the stopping thread may go on once it reaches zero
}

}  // namespace ferry::nbd
