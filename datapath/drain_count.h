// DrainCount: how many of something are still alive (connections, sessions), for a counted,
// bounded shutdown: the owner's threads add() and remove() (reactor threads; rare events, not per
// I/O), and the thread sequencing the stop waits until the count is zero or a timeout passes
// (wait_zero_for), then logs what is left instead of sleeping a guessed time. Thread safe.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace ferry {

class DrainCount {
 public:
  void add() noexcept { count_.fetch_add(1, std::memory_order_relaxed); }
  void remove() noexcept {
    if (count_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard lock(mutex_);  // pairs with the waiter's predicate check
      zero_.notify_all();
    }
  }
  uint64_t value() const noexcept { return count_.load(std::memory_order_acquire); }
  // As std::atomic's, for callers that held the count as one.
  uint64_t load(std::memory_order order = std::memory_order_seq_cst) const noexcept {
    return count_.load(order);
  }
  // Waits until the count is zero, at most timeout_ms; returns what is left (0: drained).
  uint64_t wait_zero_for(uint32_t timeout_ms) noexcept {
    std::unique_lock lock(mutex_);
    zero_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [this] { return value() == 0; });
    return value();
  }

 private:
  std::atomic<uint64_t> count_{0};
  std::mutex mutex_;
  std::condition_variable zero_;
};

}  // namespace ferry
