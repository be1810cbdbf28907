// ExtentCache: what the NBD client device has learned of its source's base:allocation extents
// (gateway/nbd/client_device.h uses it to answer BLOCK_STATUS and to skip reading holes and zero
// runs). Pure data structure, no I/O: a bounded interval map [start, end) -> status flags.
// Moved here from gateway/nbd (issue 10: cache logic lives in cache/, transports use it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory_resource>
#include <optional>

namespace ferry::cache {

// Learned NBD base:allocation extents: a bounded interval map [start, end) → status flags
// (kStatusHole | kStatusZero, or 0 for data). Adjacent extents with equal flags are merged.
// When an insertion takes it above entries_max it evicts whole entries from the end (lowest or
// highest offsets) farther from the insertion, so the neighbourhood being read stays cached.
// Map nodes come from a pool resource: after warm-up no heap allocation per update.
// Not thread safe (owned by one device, used on its home thread).
class ExtentCache {
 public:
  struct Extent {
    uint64_t start_bytes;
    uint64_t end_bytes;
    uint32_t flags;
  };

  explicit ExtentCache(size_t entries_max) noexcept;
  // Records that [start, end) has `flags`, replacing what was known there.
  void assign(uint64_t start_bytes, uint64_t end_bytes, uint32_t flags) noexcept;
  // Forgets [start, end).
  void erase(uint64_t start_bytes, uint64_t end_bytes) noexcept;
  void clear() noexcept { map_.clear(); }
  // The known extent containing offset_bytes, if any.
  std::optional<Extent> find(uint64_t offset_bytes) const noexcept;
  // First offset in [start, end) that no extent covers, or end if all of it is known.
  uint64_t first_unknown(uint64_t start_bytes, uint64_t end_bytes) const noexcept;
  // First offset in [start, end) covered by an extent whose flags intersect mask, or end.
  uint64_t first_with(uint64_t start_bytes, uint64_t end_bytes, uint32_t mask) const noexcept;
  size_t size() const noexcept { return map_.size(); }
  size_t entries_max() const noexcept { return entries_max_; }
  uint64_t evictions() const noexcept { return evictions_; }

 private:
  struct Value {
    uint64_t end_bytes;
    uint32_t flags;
  };
  using Map = std::pmr::map<uint64_t, Value>;
  void evict(uint64_t near_bytes) noexcept;

  size_t entries_max_;
  uint64_t evictions_ = 0;
  std::pmr::unsynchronized_pool_resource pool_;
  Map map_;
};

}  // namespace ferry::cache
