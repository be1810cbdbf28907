// iSCSI Server: listeners (multishot accept per reactor), session registry, connection tables.
#include "gateway/iscsi/server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <unordered_map>

#include "datapath/acceptor.h"
#include "gateway/iscsi/connection.h"

namespace ferry::iscsi {

namespace {
// Connections of the reactor running on this thread, by id.
thread_local std::unordered_map<uint64_t, Connection*> t_connections;
}  // namespace

Server::Server(ServerOptions options, PortalConfig portal) noexcept
    : options_(std::move(options)),
      portal_(std::move(portal)),
      pre_auth_(options_.pre_auth),
      auth_backoff_(options_.auth_backoff, "iscsi") {}

Server::~Server() = default;

void Server::add_target(const std::string& iqn, scsi::Target* target) {
  targets_.emplace_back(iqn, target);
}

scsi::Target* Server::find_target(std::string_view iqn) const noexcept {
  for (const auto& [name, t] : targets_) {
    if (name.size() != iqn.size()) continue;
    bool same = true;  // IQNs compare case-insensitively (RFC 3722 normalises to lower case)
    for (size_t i = 0; i < name.size() && same; ++i)
      same = std::tolower(static_cast<unsigned char>(name[i])) ==
             std::tolower(static_cast<unsigned char>(iqn[i]));
    if (same) return t;
  }
  return nullptr;
}

Result<void> Server::start_listening(Reactor& reactor) noexcept {
  std::lock_guard<std::mutex> lock(listeners_mutex_);
  if (listeners_.empty()) {  // the portal's one listener, on the first reactor to get here
    std::string error;
    auto fd = listen_tcp(options_.listen_address, options_.port, error, options_.tcp_congestion);
    if (!fd.ok()) {
      std::fprintf(stderr, "ferry: iscsi: %s\n", error.c_str());
      return fd.error();
    }
    auto acceptor = std::make_unique<Acceptor>(
        reactor, fd.value(),
        [](void* ctx, int conn_fd) noexcept {
          auto* self = static_cast<Server*>(ctx);
          self->adopt_connection(*Reactor::current(), conn_fd);
        },
        this, "iscsi");
    acceptor->start();
    listeners_.push_back(std::move(acceptor));
  }
  balancer_.join(reactor);
  return {};
}

void Server::stop_listening(Reactor& reactor) noexcept {
  balancer_.leave(reactor);
  {
    std::lock_guard<std::mutex> lock(listeners_mutex_);
    for (auto& l : listeners_)
      if (&l->reactor() == &reactor) l->stop();
  }
  std::vector<Connection*> all;
  for (auto& [id, c] : t_connections) all.push_back(c);
  for (Connection* c : all) c->close("target shutting down");
}

void Server::adopt_connection(Reactor& reactor, int fd) noexcept {
  if (connections_.value() >= options_.connections_max) {
    std::fprintf(stderr, "ferry: iscsi: connection limit reached, refusing\n");
    ::close(fd);
    return;
  }
  balancer_.place(
      reactor, fd,
      [](void* self, Reactor& r, int conn_fd) noexcept {
        static_cast<Server*>(self)->start_connection(r, conn_fd);
      },
      this);
}

void Server::start_connection(Reactor& reactor, int fd) noexcept {
  const uint64_t id = next_connection_id_.fetch_add(1);
  auto close_pending = [](void*, uint64_t old_id) noexcept {
    auto found = t_connections.find(old_id);
    if (found != t_connections.end() && found->second->logging_in())
      found->second->close("evicted: too many connections still in login");
  };
  if (!pre_auth_.admit_connection(id, fd, reactor, "iscsi", close_pending, nullptr)) {
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

void Server::connection_authenticated(Connection* c) noexcept { pre_auth_.leave(c->id()); }

void Server::connection_opened(Connection* c) noexcept {
  t_connections.emplace(c->id(), c);
  connections_.add();
}

void Server::connection_closed(Connection* c) noexcept {
  pre_auth_.leave(c->id());
  t_connections.erase(c->id());
  if (Reactor* r = Reactor::current()) balancer_.release(*r);
  connections_.remove();  // last: the stopping thread may go on once it reaches zero
}

uint16_t Server::register_session(const std::string& initiator_name, const uint8_t isid[6],
                                  const std::string& target_name, Reactor& reactor,
                                  uint64_t connection_id) noexcept {
  std::lock_guard<std::mutex> lock(sessions_mutex_);
  // Session reinstatement (RFC 7143 §6.3.5): same initiator name and ISID → close the old one.
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    if (it->initiator_name == initiator_name && it->target_name == target_name &&
        std::memcmp(it->isid, isid, 6) == 0) {
      const uint64_t old_id = it->connection_id;
      Reactor* old_reactor = it->reactor;
      auto close_old = [old_id] {
        auto found = t_connections.find(old_id);
        if (found != t_connections.end()) found->second->close("session reinstated");
      };
      if (old_reactor == &reactor)
        reactor.defer(close_old);
      else
        old_reactor->post(close_old);
      it = sessions_.erase(it);
    } else {
      ++it;
    }
  }
  uint16_t tsih;
  for (;;) {
    tsih = next_tsih_++;
    if (tsih == 0) continue;
    bool used = false;
    for (const auto& s : sessions_) used |= s.tsih == tsih;
    if (!used) break;
  }
  SessionEntry e;
  e.initiator_name = initiator_name;
  e.target_name = target_name;
  std::memcpy(e.isid, isid, 6);
  e.tsih = tsih;
  e.reactor = &reactor;
  e.connection_id = connection_id;
  sessions_.push_back(std::move(e));
  return tsih;
}

void Server::unregister_session(uint16_t tsih, uint64_t connection_id) noexcept {
  std::lock_guard<std::mutex> lock(sessions_mutex_);
  for (auto it = sessions_.begin(); it != sessions_.end(); ++it) {
    if (it->tsih == tsih && it->connection_id == connection_id) {
      sessions_.erase(it);
      return;
    }
  }
}

}  // namespace ferry::iscsi
