// Reactor: one io_uring event loop per thread (run-to-completion). Every socket, file and
// eventfd operation goes through the ring; timers are a userspace heap whose earliest deadline
// bounds the ring wait. Work crosses threads only through post(). Optionally (set_spin_ns; off
// by default), while completions keep coming within the spin budget, the wait busy-polls the CQ
// ring for that long before it sleeps (a sleeping thread costs every peer message a wake-up; see
// spin_for_completions()).
//
//   thread ──run()──▶ [ submit SQEs + wait (≤ next timer) ] ─▶ dispatch CQEs ─▶ fire timers
//                      ▲                                                        │
//                      └──────── run deferred + posted functions ◀──────────────┘
//
// Ownership: an Operation passed to prepare() must outlive its final CQE (flags without
// IORING_CQE_F_MORE). Timers are owned by their users and must be cancelled before destruction.
#pragma once

#include <liburing.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

#include "datapath/buffer_pool.h"
#include "datapath/result.h"

namespace ferry {

class Reactor;

// Base of everything that waits for a CQE. user_data of the SQE points at it.
class Operation {
 public:
  virtual void on_cqe(int32_t res, uint32_t cqe_flags) noexcept = 0;

 protected:
  ~Operation() = default;
};

// Operation that calls a plain function: handy for one-off submissions.
class CallbackOperation final : public Operation {
 public:
  using Fn = void (*)(void* context, int32_t res, uint32_t cqe_flags) noexcept;
  CallbackOperation() noexcept = default;
  CallbackOperation(Fn fn, void* context) noexcept : fn_(fn), context_(context) {}
  void set(Fn fn, void* context) noexcept {
    fn_ = fn;
    context_ = context;
  }
  void on_cqe(int32_t res, uint32_t cqe_flags) noexcept override { fn_(context_, res, cqe_flags); }

 private:
  Fn fn_ = nullptr;
  void* context_ = nullptr;
};

// A deadline in the reactor's timer heap. Not copyable; cancel() before destroying if armed.
class Timer {
 public:
  using Fn = void (*)(void* context) noexcept;
  Timer() noexcept = default;
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;
  ~Timer();
  bool armed() const noexcept { return heap_index_ >= 0; }

 private:
  friend class Reactor;
  uint64_t deadline_ns_ = 0;
  Fn fn_ = nullptr;
  void* context_ = nullptr;
  int heap_index_ = -1;
  Reactor* reactor_ = nullptr;
};

struct ReactorStats {
  uint64_t loops = 0;
  uint64_t cqes = 0;
  uint64_t submits = 0;
  uint64_t sq_full_flushes = 0;
  uint64_t spins = 0;      // busy-polls before a wait (see Reactor::run)
  uint64_t spin_hits = 0;  // ... that found a completion (the thread did not sleep)
};

class Reactor {
 public:
  explicit Reactor(unsigned index, uint64_t pool_bytes_max = 1ull << 30) noexcept;
  ~Reactor();
  Reactor(const Reactor&) = delete;
  Reactor& operator=(const Reactor&) = delete;

  // Sets up the ring. Call on the thread that will call run(): the ring is single-issuer.
  Result<void> init(unsigned sq_entries = 1024) noexcept;
  // Loops until stop(); binds this reactor to the calling thread (current()) while it runs.
  // May be called again after it returns.
  void run() noexcept;
  // Thread safe; run() returns after finishing the current iteration.
  void stop() noexcept;

  // The reactor running on this thread, or nullptr.
  static Reactor* current() noexcept;
  unsigned index() const noexcept { return index_; }
  io_uring* ring() noexcept { return &ring_; }
  BufferPool& pool() noexcept { return pool_; }
  const ReactorStats& stats() const noexcept { return stats_; }

  // Next free SQE; never null (submits pending SQEs when the SQ ring is full).
  io_uring_sqe* get_sqe() noexcept;
  // Attach op to the SQE: its on_cqe runs for every CQE of this SQE.
  static void prepare(io_uring_sqe* sqe, Operation* op) noexcept { io_uring_sqe_set_data(sqe, op); }
  // SQE whose CQE is ignored (e.g. cancel requests).
  static void prepare_ignored(io_uring_sqe* sqe) noexcept { io_uring_sqe_set_data(sqe, nullptr); }

  // Busy-poll budget before sleeping, used only while completions keep arriving within it
  // (0: never spin). Off by default: on the 2-vCPU test machine, client and server sharing it,
  // spinning cost 17-72 % more CPU per IO for equal or lower IOPS (perf/README.md, "Reactor
  // spin"); kSpinNsSuggested is the budget that did best when it helped (a loaded machine).
  static constexpr uint64_t kSpinNsDefault = 0;
  static constexpr uint64_t kSpinNsSuggested = 20'000;
  void set_spin_ns(uint64_t spin_ns) noexcept { spin_ns_max_ = spin_ns; }

  // Monotonic clock in nanoseconds (cached per loop iteration; now_ns_fresh() reads the clock).
  uint64_t now_ns() const noexcept { return now_ns_; }
  static uint64_t now_ns_fresh() noexcept;

  // Arms (or re-arms) a timer to fire after delay_ns on this reactor's thread.
  void arm(Timer& t, uint64_t delay_ns, Timer::Fn fn, void* context) noexcept;
  void cancel(Timer& t) noexcept;

  // Runs fn on this reactor's thread after the current dispatch (no reentrancy). Same thread only.
  void defer(std::function<void()> fn) noexcept;
  // Runs fn on this reactor's thread. Thread safe. For rare control messages (not per I/O).
  void post(std::function<void()> fn) noexcept;

 private:
  void arm_eventfd_read() noexcept;
  void fire_timers() noexcept;
  void heap_up(int i) noexcept;
  void heap_down(int i) noexcept;
  void heap_remove(int i) noexcept;
  void drain_posted() noexcept;
  void run_deferred() noexcept;
  bool spin_for_completions(uint64_t deadline_ns) noexcept;

  unsigned index_;
  io_uring ring_{};
  bool ring_ready_ = false;
  std::atomic<bool> stop_{false};
  uint64_t now_ns_ = 0;
  uint64_t spin_ns_max_ = kSpinNsDefault;
  uint64_t idle_ns_last_ = UINT64_MAX;  // how long the last wait for a completion took
  uint32_t spin_backoff_ = 0;           // chances skipped after the last fruitless spin
  uint32_t spin_skip_ = 0;              // chances still to skip
  BufferPool pool_;
  ReactorStats stats_;

  std::vector<Timer*> timers_;  // binary min-heap on deadline_ns_

  std::vector<std::function<void()>> deferred_;
  std::vector<std::function<void()>> deferred_running_;

  int event_fd_ = -1;
  uint64_t event_value_ = 0;
  bool event_armed_ = false;  // an eventfd read is in flight
  CallbackOperation event_op_;
  std::mutex posted_mutex_;
  std::vector<std::function<void()>> posted_;
  std::vector<std::function<void()>> posted_running_;
};

}  // namespace ferry
