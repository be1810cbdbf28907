// AuthBackoff: failed-authentication back-off per source address, shared by a server's reactor
// threads (iSCSI CHAP logins, NBD TLS client certificates). Each failed authentication from a
// source is counted; from the (free_failures + 1)-th failure on, further attempts from that
// source are refused for initial_ms, doubling per failure up to max_ms. A source with no failure
// for forget_after_ms is forgotten. Refusing (not delaying) keeps the reactor free and leaves a
// guesser nothing to wait for in parallel:
//
//   failures:   1      2      3      4      ...   8+
//   back-off:   0      1 s    2 s    4 s    ...   60 s (cap)      quiet 5 min ─▶ forgotten
//
// Bounded: at most sources_max sources; a newcomer to a full table evicts the source whose last
// failure is the oldest (counted). Successful logins do not reset a source (an attacker with one
// valid account must not be able to launder its guesses at another).
// Thread safety: one mutex; called at login/handshake time only, never per I/O. The clock is
// injectable for tests (monotonic nanoseconds).
#pragma once

#include <cstdint>
#include <list>
#include <mutex>
#include <string>
#include <unordered_map>

namespace ferry {

struct AuthBackoffLimits {
  uint32_t free_failures = 1;         // failures before the back-off starts
  uint32_t initial_ms = 1000;         // first back-off
  uint32_t max_ms = 60000;            // cap (doubling stops here)
  uint32_t forget_after_ms = 300000;  // quiet period after which a source is forgotten
  uint32_t sources_max = 4096;        // table bound
};

struct AuthBackoffCounters {
  uint64_t failures = 0;          // failed authentications recorded
  uint64_t backoffs_started = 0;  // failures that started (or extended) a back-off
  uint64_t refused = 0;           // attempts refused while backed off
  uint64_t evicted = 0;           // sources dropped from a full table
};

class AuthBackoff {
 public:
  using Clock = uint64_t (*)() noexcept;
  // `name` prefixes the log lines ("iscsi", "nbd").
  AuthBackoff(AuthBackoffLimits limits, const char* name, Clock clock = nullptr) noexcept;

  // Nanoseconds `source` must still wait (0: it may authenticate now). A non-zero answer counts
  // as one refused attempt. An empty source (Unix socket) is never backed off.
  uint64_t remaining_ns(const std::string& source) noexcept;
  // Records a failed authentication from `source`; returns the back-off it starts (0: none).
  // Logs "ferry: NAME SOURCE: N failed authentications: refusing it for S s" when a back-off
  // starts, at most once a second in all (the next line says how many were not logged). Only
  // genuine failures (a wrong secret, a refused certificate) belong here, not policy refusals.
  uint64_t record_failure(const std::string& source) noexcept;

  AuthBackoffCounters counters() const noexcept;
  size_t sources() const noexcept;
  const AuthBackoffLimits& limits() const noexcept { return limits_; }

 private:
  struct Entry {
    uint32_t failures = 0;
    uint64_t last_failure_ns = 0;
    uint64_t until_ns = 0;
    std::list<std::string>::iterator order;  // position in order_ (front: oldest failure)
  };
  uint64_t delay_ns(uint32_t failures) const noexcept;
  void erase_locked(std::unordered_map<std::string, Entry>::iterator it) noexcept;

  const AuthBackoffLimits limits_;
  const char* name_;
  Clock clock_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, Entry> entries_;
  std::list<std::string> order_;  // sources by last failure, oldest first
  AuthBackoffCounters counters_;
  uint64_t last_log_ns_ = 0;
  uint64_t unlogged_ = 0;  // back-off starts not logged since the last line
  bool logged_ = false;
};

}  // namespace ferry
