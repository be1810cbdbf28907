// PreAuthGate (see pre_auth_gate.h).
#include "datapath/pre_auth_gate.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cinttypes>
#include <cstdio>

namespace ferry {

PreAuthGate::Admit PreAuthGate::admit(uint64_t id, const std::string& source, Reactor& reactor,
                                      std::optional<Eviction>& evict) noexcept {
  evict.reset();
  std::lock_guard<std::mutex> lock(mutex_);
  if (!source.empty()) {
    auto it = per_source_.find(source);
    if (it != per_source_.end() && it->second >= limits_.per_source_max) {
      ++refused_source_limit_;
      return Admit::source_limit;
    }
  }
  if (limits_.pending_max > 0 && pending_.size() >= limits_.pending_max) {
    auto oldest = pending_.begin();
    evict = Eviction{oldest->second.reactor, oldest->first};
    erase_locked(oldest);
    ++evicted_;
  }
  pending_.emplace(id, Entry{source, &reactor});
  if (!source.empty()) ++per_source_[source];
  return Admit::admitted;
}

bool PreAuthGate::admit_connection(uint64_t id, int fd, Reactor& reactor, const char* name,
                                   ClosePending close_pending, void* context) noexcept {
  const std::string source = peer_address(fd);
  std::optional<Eviction> evict;
  if (admit(id, source, reactor, evict) == Admit::source_limit) {
    const uint64_t n = refused_source_limit();
    if ((n & (n - 1)) == 0)  // a flood does not flood the log
      std::fprintf(stderr,
                   "ferry: %s %s: connection refused: %u connections from it not yet authenticated "
                   "(%" PRIu64 " refused so far)\n",
                   name, source.c_str(), limits_.per_source_max, n);
    return false;
  }
  if (evict) {
    const uint64_t old_id = evict->connection_id;
    auto close_old = [close_pending, context, old_id] { close_pending(context, old_id); };
    if (evict->reactor == &reactor)
      reactor.defer(close_old);
    else
      evict->reactor->post(close_old);
  }
  return true;
}

void PreAuthGate::erase_locked(std::map<uint64_t, Entry>::iterator it) noexcept {
  if (!it->second.source.empty()) {
    auto s = per_source_.find(it->second.source);
    if (s != per_source_.end() && --s->second == 0) per_source_.erase(s);
  }
  pending_.erase(it);
}

void PreAuthGate::leave(uint64_t id) noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = pending_.find(id);
  if (it != pending_.end()) erase_locked(it);
}

size_t PreAuthGate::pending() const noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  return pending_.size();
}

uint64_t PreAuthGate::refused_source_limit() const noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  return refused_source_limit_;
}

uint64_t PreAuthGate::evicted() const noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  return evicted_;
}

namespace {
// The peer's address, and its port when with_port (v4 "a.b.c.d:port", v6 "[addr]:port").
std::string peer_text(int fd, bool with_port) noexcept {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return {};
  char text[INET6_ADDRSTRLEN] = {};
  uint16_t port = 0;
  if (addr.ss_family == AF_INET) {
    const auto* a4 = reinterpret_cast<const sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &a4->sin_addr, text, sizeof text);
    port = ntohs(a4->sin_port);
    if (with_port) return std::string(text) + ":" + std::to_string(port);
  } else if (addr.ss_family == AF_INET6) {
    const auto* a6 = reinterpret_cast<const sockaddr_in6*>(&addr);
    inet_ntop(AF_INET6, &a6->sin6_addr, text, sizeof text);
    port = ntohs(a6->sin6_port);
    if (with_port) return "[" + std::string(text) + "]:" + std::to_string(port);
  } else {
    return {};
  }
  return text;
}
}  // namespace

std::string peer_address(int fd) noexcept { return peer_text(fd, false); }
std::string peer_endpoint(int fd) noexcept { return peer_text(fd, true); }

}  // namespace ferry
