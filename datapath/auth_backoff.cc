// AuthBackoff (see auth_backoff.h).
#include "datapath/auth_backoff.h"

#include <cinttypes>
#include <cstdio>
#include <iterator>

#include "datapath/reactor.h"

namespace ferry {

namespace {
constexpr uint64_t kMs = 1000000ull;
constexpr uint64_t kLogIntervalNs = 1000 * kMs;
}  // namespace

AuthBackoff::AuthBackoff(AuthBackoffLimits limits, const char* name, Clock clock) noexcept
    : limits_(limits), name_(name), clock_(clock != nullptr ? clock : &Reactor::now_ns_fresh) {}

uint64_t AuthBackoff::delay_ns(uint32_t failures) const noexcept {
  if (failures <= limits_.free_failures) return 0;
  const uint32_t doublings = failures - limits_.free_failures - 1;
  uint64_t ms = limits_.initial_ms;
  for (uint32_t i = 0; i < doublings && ms < limits_.max_ms; ++i) ms *= 2;
  if (ms > limits_.max_ms) ms = limits_.max_ms;
  return ms * kMs;
}

void AuthBackoff::erase_locked(std::unordered_map<std::string, Entry>::iterator it) noexcept {
  order_.erase(it->second.order);
  entries_.erase(it);
}

uint64_t AuthBackoff::remaining_ns(const std::string& source) noexcept {
  if (source.empty()) return 0;
  const uint64_t now = clock_();
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = entries_.find(source);
  if (it == entries_.end()) return 0;
  if (now - it->second.last_failure_ns >= uint64_t(limits_.forget_after_ms) * kMs) {
    erase_locked(it);
    return 0;
  }
  if (now >= it->second.until_ns) return 0;
  ++counters_.refused;
  return it->second.until_ns - now;
}

uint64_t AuthBackoff::record_failure(const std::string& source) noexcept {
  const uint64_t now = clock_();
  std::lock_guard<std::mutex> lock(mutex_);
  ++counters_.failures;
  if (source.empty()) return 0;
  auto it = entries_.find(source);
  if (it != entries_.end() &&
      now - it->second.last_failure_ns >= uint64_t(limits_.forget_after_ms) * kMs) {
    erase_locked(it);
    it = entries_.end();
  }
  if (it == entries_.end()) {
    if (limits_.sources_max == 0) return 0;
    if (entries_.size() >= limits_.sources_max) {
      erase_locked(entries_.find(order_.front()));
      ++counters_.evicted;
    }
    order_.push_back(source);
    it = entries_.emplace(source, Entry{}).first;
    it->second.order = std::prev(order_.end());
  } else {
    order_.splice(order_.end(), order_, it->second.order);  // now the most recent failure
  }
  Entry& e = it->second;
  if (e.failures < UINT32_MAX) ++e.failures;
  e.last_failure_ns = now;
  const uint64_t delay = delay_ns(e.failures);
  if (delay == 0) return 0;
  e.until_ns = now + delay;
  ++counters_.backoffs_started;
  if (!logged_ || now - last_log_ns_ >= kLogIntervalNs) {
    char unlogged[64] = "";
    if (unlogged_ > 0)
      std::snprintf(unlogged, sizeof unlogged, " (%" PRIu64 " more back-offs not logged)",
                    unlogged_);
    std::fprintf(stderr,
                 "ferry: %s %s: %u failed authentications: refusing it for %" PRIu64 " s%s\n",
                 name_, source.c_str(), e.failures, delay / (1000 * kMs), unlogged);
    logged_ = true;
    last_log_ns_ = now;
    unlogged_ = 0;
  } else {
    ++unlogged_;
  }
  return delay;
}

AuthBackoffCounters AuthBackoff::counters() const noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  return counters_;
}

size_t AuthBackoff::sources() const noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  return entries_.size();
}

}  // namespace ferry
