// PreAuthGate: bounds the connections of a server that have not authenticated yet (iSCSI before
// the full-feature phase, NBD before the transmission phase): at most `pending_max` in all and
// `per_source_max` from one source address, so silent or slow peers cannot fill the server
// before anyone has proven who they are, and authenticated connections never count against it.
//   accept ──admit()──▶ pending ──leave() (authenticated / closed)──▶ gone
//               │ source over per_source_max: refused (the caller closes it)
//               └ pool full: the oldest pending connection is evicted (the caller closes it on
//                 its reactor) and the newcomer admitted, so a real client that authenticates
//                 in milliseconds gets in even while the pool is full of silent ones.
// A connection without a source key (Unix socket) counts only against pending_max.
// Thread safety: every call may come from any reactor thread (one mutex; connection set-up and
// tear-down only, never per I/O). Counts why connections were refused or evicted.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "datapath/reactor.h"

namespace ferry {

struct PreAuthLimits {
  uint32_t pending_max = 256;    // unauthenticated connections in all
  uint32_t per_source_max = 32;  // unauthenticated connections from one source address
};

class PreAuthGate {
 public:
  explicit PreAuthGate(PreAuthLimits limits) noexcept : limits_(limits) {}

  struct Eviction {
    Reactor* reactor;
    uint64_t connection_id;
  };
  enum class Admit : uint8_t { admitted, source_limit };

  // Registers connection `id` (from `source`, "" for none) as pending on `reactor`. On
  // source_limit the caller refuses it; when admitting into a full pool `evict` names the
  // oldest pending connection, which the caller must close on its reactor.
  Admit admit(uint64_t id, const std::string& source, Reactor& reactor,
              std::optional<Eviction>& evict) noexcept;
  // admit() as a server uses it for a new connection on `reactor`: false when refused (logged
  // as "ferry: NAME ADDRESS: connection refused ...", 1st, 2nd, 4th, ... time only; the caller
  // closes fd); an evicted connection is closed by calling close_pending(its id) on its
  // reactor's thread (the callee closes it only if it has still not authenticated).
  using ClosePending = void (*)(void* context, uint64_t connection_id) noexcept;
  bool admit_connection(uint64_t id, int fd, Reactor& reactor, const char* name,
                        ClosePending close_pending, void* context) noexcept;
  // The connection authenticated or closed: it no longer counts. Idempotent.
  void leave(uint64_t id) noexcept;

  size_t pending() const noexcept;
  uint64_t refused_source_limit() const noexcept;
  uint64_t evicted() const noexcept;
  const PreAuthLimits& limits() const noexcept { return limits_; }

 private:
  struct Entry {
    std::string source;
    Reactor* reactor;
  };
  void erase_locked(std::map<uint64_t, Entry>::iterator it) noexcept;

  const PreAuthLimits limits_;
  mutable std::mutex mutex_;
  std::map<uint64_t, Entry> pending_;  // by connection id: ids grow, so the first is the oldest
  std::unordered_map<std::string, uint32_t> per_source_;
  uint64_t refused_source_limit_ = 0;
  uint64_t evicted_ = 0;
};

// The peer's address of a connected socket as text without the port ("127.0.0.2", "::1"), or
// "" for a Unix socket or on error.
std::string peer_address(int fd) noexcept;
// The same with the port ("127.0.0.2:51234", "[::1]:51234"), "" for a Unix socket or on error.
std::string peer_endpoint(int fd) noexcept;

}  // namespace ferry
