// ConnectionBalancer (see connection_balancer.h).
#include "datapath/connection_balancer.h"

#include <unistd.h>

namespace ferry {

ConnectionBalancer::Slot* ConnectionBalancer::find(const Reactor& reactor) const noexcept {
  const unsigned n = slot_count_.load(std::memory_order_acquire);
  for (unsigned i = 0; i < n; ++i)
    if (slots_[i].reactor.load(std::memory_order_relaxed) == &reactor) return &slots_[i];
  return nullptr;
}

void ConnectionBalancer::join(Reactor& reactor) noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  Slot* s = find(reactor);
  if (s == nullptr) {
    const unsigned n = slot_count_.load(std::memory_order_relaxed);
    if (n == kReactorsMax) return;  // beyond the limit a reactor keeps what it accepts
    s = &slots_[n];
    s->reactor.store(&reactor, std::memory_order_relaxed);
    slot_count_.store(n + 1, std::memory_order_release);
  }
  s->accepting.store(true, std::memory_order_release);
}

void ConnectionBalancer::leave(Reactor& reactor) noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  if (Slot* s = find(reactor)) s->accepting.store(false, std::memory_order_release);
}

bool ConnectionBalancer::accepting(const Reactor& reactor) const noexcept {
  const Slot* s = find(reactor);
  return s != nullptr && s->accepting.load(std::memory_order_acquire);
}

Reactor& ConnectionBalancer::pick(Reactor& accepting_reactor) noexcept {
  Slot* best = find(accepting_reactor);
  if (best != nullptr && !best->accepting.load(std::memory_order_acquire)) best = nullptr;
  const unsigned n = slot_count_.load(std::memory_order_acquire);
  for (unsigned i = 0; i < n; ++i) {
    Slot& s = slots_[i];
    if (!s.accepting.load(std::memory_order_acquire)) continue;
    if (best == nullptr ||
        s.live.load(std::memory_order_relaxed) < best->live.load(std::memory_order_relaxed))
      best = &s;
  }
  if (best == nullptr) return accepting_reactor;  // nobody joined: keep it here, uncounted
  best->live.fetch_add(1, std::memory_order_relaxed);
  return *best->reactor.load(std::memory_order_relaxed);
}

void ConnectionBalancer::release(const Reactor& reactor) noexcept {
  if (Slot* s = find(reactor)) {
    uint32_t v = s->live.load(std::memory_order_relaxed);
    while (v > 0 && !s->live.compare_exchange_weak(v, v - 1, std::memory_order_relaxed)) {
    }
  }
}

void ConnectionBalancer::place(Reactor& accepting_reactor, int fd, StartFn start,
                               void* context) noexcept {
  Reactor& target = pick(accepting_reactor);
  if (&target == &accepting_reactor) return start(context, target, fd);
  target.post([this, &target, fd, start, context] {
    if (!accepting(target)) {  // that reactor is shutting down
      ::close(fd);
      release(target);
      return;
    }
    start(context, target, fd);
  });
}

uint32_t ConnectionBalancer::live(const Reactor& reactor) const noexcept {
  const Slot* s = find(reactor);
  return s == nullptr ? 0 : s->live.load(std::memory_order_relaxed);
}

}  // namespace ferry
