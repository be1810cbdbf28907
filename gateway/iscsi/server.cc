// iSCSI Server: the portal's listener (through the ConnectionHub), targets, session registry.
#include "gateway/iscsi/server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "gateway/iscsi/connection.h"

namespace ferry::iscsi {

Server::Server(ServerOptions options, PortalConfig portal) noexcept
    : options_(std::move(options)),
      portal_(std::move(portal)),
      hub_(HubOptions{"iscsi", options_.connections_max, false, options_.pre_auth},
           &Server::start_connection, this),
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
  if (!listening_) {  // the portal's one listener, on the first reactor to get here
    std::string error;
    auto fd = listen_tcp(options_.listen_address, options_.port, error, options_.tcp_congestion);
    if (!fd.ok()) {
      std::fprintf(stderr, "ferry: iscsi: %s\n", error.c_str());
      return fd.error();
    }
    hub_.add_listener(reactor, fd.value());
    listening_ = true;
  }
  hub_.join(reactor);
  return {};
}

void Server::stop_listening(Reactor& reactor) noexcept {
  hub_.stop(reactor, "target shutting down");
}

void Server::adopt_connection(Reactor& reactor, int fd) noexcept { hub_.adopt(reactor, fd); }

bool Server::start_connection(void* self, Reactor& reactor, int fd, uint64_t id) noexcept {
  auto* c = new (std::nothrow) Connection(*static_cast<Server*>(self), reactor, fd, id);
  if (c == nullptr) return false;
  c->start();
  return true;
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
      auto close_old = [this, old_id] {
        if (HubConnection* old = hub_.find_here(old_id)) old->close("session reinstated");
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
