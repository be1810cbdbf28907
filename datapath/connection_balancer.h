// ConnectionBalancer: places each accepted connection on the reactor thread with the fewest
// live connections. A server listens on one reactor and hands connections over; before this,
// every reactor had its own SO_REUSEPORT listener and the kernel picked the listener by a hash
// of the 4-tuple: two busy connections landed on the same thread half the time while the other
// thread idled (measured: two fio jobs reading 1 MiB blocks over NBD ran at
// 3.5 K or 5.7 K IOPS depending on that coin toss). Servers call place() on the accepting thread:
// it picks and hands the socket over with Reactor::post when the answer is another thread. Thread
// safety: join/leave/pick/release/place may run on any thread (atomics; join/leave under a mutex).
// At most kReactorsMax reactors.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>

#include "datapath/reactor.h"

namespace ferry {

class ConnectionBalancer {
 public:
  static constexpr unsigned kReactorsMax = 64;

  // The reactor starts (join) or stops (leave) taking connections. Idempotent.
  void join(Reactor& reactor) noexcept;
  void leave(Reactor& reactor) noexcept;
  // True while the reactor takes connections (a connection posted to a reactor that has left
  // since must be closed by the receiver, then release()d).
  bool accepting(const Reactor& reactor) const noexcept;

  // The reactor for a connection accepted on `accepting_reactor`: the joined one with the fewest
  // live connections, preferring the accepting one on ties (no hand-over). Counts it as live.
  Reactor& pick(Reactor& accepting_reactor) noexcept;
  // A connection counted by pick() on this reactor has ended (or was never started).
  void release(const Reactor& reactor) noexcept;

  // pick() and hand over: calls start(context, reactor, fd) on the picked reactor's thread, at
  // once when that is `accepting_reactor`, else through Reactor::post. If the picked reactor has
  // left by the time the post runs, closes fd and releases the count instead.
  using StartFn = void (*)(void* context, Reactor& reactor, int fd) noexcept;
  void place(Reactor& accepting_reactor, int fd, StartFn start, void* context) noexcept;

  // Live connections counted on a reactor (0 for one that never joined). For tests and stats.
  uint32_t live(const Reactor& reactor) const noexcept;

 private:
  struct Slot {
    std::atomic<Reactor*> reactor{nullptr};
    std::atomic<bool> accepting{false};
    std::atomic<uint32_t> live{0};
  };
  Slot* find(const Reactor& reactor) const noexcept;

  std::mutex mutex_;  // join/leave: slot assignment
  std::atomic<unsigned> slot_count_{0};
  mutable std::array<Slot, kReactorsMax> slots_;
};

}  // namespace ferry
