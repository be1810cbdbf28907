// ConnectionHub: accept, limit, hand-over, pre-authentication gate and per-thread registry of
// every server's connections (see connection_hub.h).
#include "datapath/connection_hub.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <unordered_map>

#include "datapath/assert.h"

namespace ferry {

namespace {
// Every connection of every hub on this reactor thread, by id (ids are unique in the process).
// A hub is known by its instance number, not its address: an entry left behind by a server
// destroyed with live connections (tests) never matches a later hub at the same address.
struct Registered {
  uint64_t hub_instance;
  HubConnection* connection;
};
thread_local std::unordered_map<uint64_t, Registered> t_connections;
std::atomic<uint64_t> g_next_connection_id{1};
std::atomic<uint64_t> g_next_hub_instance{1};
}  // namespace

ConnectionHub::ConnectionHub(HubOptions options, StartFn start, void* context) noexcept
    : options_(options),
      start_(start),
      context_(context),
      instance_(g_next_hub_instance.fetch_add(1)),
      pre_auth_(options.pre_auth) {}

ConnectionHub::~ConnectionHub() {
  std::erase_if(t_connections,
                [this](const auto& e) { return e.second.hub_instance == instance_; });
}

void ConnectionHub::add_listener(Reactor& reactor, int listen_fd) noexcept {
  auto acceptor = std::make_unique<Acceptor>(
      reactor, listen_fd,
      [](void* ctx, int fd) noexcept {
        static_cast<ConnectionHub*>(ctx)->adopt(*Reactor::current(), fd);
      },
      this, options_.name);
  acceptor->start();
  std::lock_guard<std::mutex> lock(listeners_mutex_);
  listeners_.push_back(std::move(acceptor));
}

void ConnectionHub::join(Reactor& reactor) noexcept { balancer_.join(reactor); }

void ConnectionHub::stop(Reactor& reactor, const char* why) noexcept {
  balancer_.leave(reactor);
  {
    std::lock_guard<std::mutex> lock(listeners_mutex_);
    for (auto& l : listeners_)
      if (&l->reactor() == &reactor) l->stop();
  }
  std::vector<HubConnection*> mine;  // close() may unregister: collect first
  for (const auto& [id, r] : t_connections)
    if (r.hub_instance == instance_) mine.push_back(r.connection);
  for (HubConnection* c : mine) c->close(why);
}

void ConnectionHub::adopt(Reactor& reactor, int fd) noexcept {
  const uint64_t counted =
      options_.limit_authenticated ? authenticated_.load() : connections_.value();
  if (counted >= options_.connections_max) {
    std::fprintf(stderr, "ferry: %s: connection limit (%u) reached, refusing\n", options_.name,
                 options_.connections_max);
    ::close(fd);
    return;
  }
  balancer_.place(
      reactor, fd,
      [](void* self, Reactor& r, int conn_fd) noexcept {
        static_cast<ConnectionHub*>(self)->start_connection(r, conn_fd);
      },
      this);
}

void ConnectionHub::close_pending(void* context, uint64_t id) noexcept {
  auto found = t_connections.find(id);
  auto* self = static_cast<ConnectionHub*>(context);
  if (found == t_connections.end() || found->second.hub_instance != self->instance_) return;
  if (found->second.connection->authenticating())
    found->second.connection->close("evicted: too many connections not yet authenticated");
}

void ConnectionHub::start_connection(Reactor& reactor, int fd) noexcept {
  const uint64_t id = g_next_connection_id.fetch_add(1);
  if (!pre_auth_.admit_connection(id, fd, reactor, options_.name, &ConnectionHub::close_pending,
                                  this)) {
    ::close(fd);
    balancer_.release(reactor);
    return;
  }
  if (!start_(context_, reactor, fd, id)) {
    std::fprintf(stderr, "ferry: %s: out of memory for a connection, refusing\n", options_.name);
    pre_auth_.leave(id);
    ::close(fd);
    balancer_.release(reactor);
  }
}

void ConnectionHub::opened(HubConnection* c) noexcept {
  t_connections.emplace(c->id(), Registered{instance_, c});
  connections_.add();
}

void ConnectionHub::authenticated(HubConnection* c) noexcept {
  pre_auth_.leave(c->id());
  if (!c->counted_authenticated_) {
    c->counted_authenticated_ = true;
    authenticated_.fetch_add(1);
  }
}

void ConnectionHub::closing(HubConnection* c) noexcept {
  pre_auth_.leave(c->id());
  if (c->counted_authenticated_) {
    c->counted_authenticated_ = false;
    authenticated_.fetch_sub(1);
  }
}

void ConnectionHub::closed(HubConnection* c) noexcept {
  closing(c);
  unpublish(c);
  t_connections.erase(c->id());
  if (Reactor* r = Reactor::current()) balancer_.release(*r);
  connections_.remove();
}

void ConnectionHub::publish(HubConnection* c, SessionInfo info,
                            const SessionCounters* counters) noexcept {
  info.id = c->id();
  info.since_unix_ms = uint64_t(std::chrono::duration_cast<std::chrono::milliseconds>(
                                    std::chrono::system_clock::now().time_since_epoch())
                                    .count());
  Reactor* reactor = Reactor::current();
  FERRY_ASSERT(reactor != nullptr);
  std::lock_guard<std::mutex> lock(sessions_mutex_);
  for (Published& p : sessions_)
    if (p.info.id == info.id) {
      p = Published{std::move(info), counters, reactor};
      return;
    }
  sessions_.push_back(Published{std::move(info), counters, reactor});
}

void ConnectionHub::unpublish(HubConnection* c) noexcept {
  std::lock_guard<std::mutex> lock(sessions_mutex_);
  std::erase_if(sessions_, [id = c->id()](const Published& p) { return p.info.id == id; });
}

std::vector<SessionInfo> ConnectionHub::sessions() const {
  std::lock_guard<std::mutex> lock(sessions_mutex_);
  std::vector<SessionInfo> out;
  out.reserve(sessions_.size());
  for (const Published& p : sessions_) {
    SessionInfo i = p.info;
    if (p.counters != nullptr) {  // unpublished (under this mutex) before the connection goes
      i.commands = p.counters->commands.load(std::memory_order_relaxed);
      i.bytes_read = p.counters->bytes_read.load(std::memory_order_relaxed);
      i.bytes_written = p.counters->bytes_written.load(std::memory_order_relaxed);
    }
    out.push_back(std::move(i));
  }
  return out;
}

bool ConnectionHub::disconnect(uint64_t id, const char* why) noexcept {
  Reactor* reactor = nullptr;
  {
    std::lock_guard<std::mutex> lock(sessions_mutex_);
    for (const Published& p : sessions_)
      if (p.info.id == id) reactor = p.reactor;
  }
  if (reactor == nullptr) return false;
  // On the connection's thread: it may have closed meanwhile (then find_here finds nothing).
  auto close_it = [this, id, why] {
    if (HubConnection* c = find_here(id)) c->close(why);
  };
  if (Reactor::current() == reactor)
    reactor->defer(close_it);
  else
    reactor->post(close_it);
  return true;
}

HubConnection* ConnectionHub::find_here(uint64_t id) const noexcept {
  auto found = t_connections.find(id);
  return found == t_connections.end() || found->second.hub_instance != instance_
             ? nullptr
             : found->second.connection;
}

}  // namespace ferry
