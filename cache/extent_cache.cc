// ExtentCache implementation (see extent_cache.h).
#include "cache/extent_cache.h"

#include <algorithm>
#include <iterator>

namespace ferry::cache {

ExtentCache::ExtentCache(size_t entries_max) noexcept
    : entries_max_(std::max<size_t>(entries_max, 4)), map_(&pool_) {}

void ExtentCache::erase(uint64_t start, uint64_t end) noexcept {
  if (start >= end) return;
  auto it = map_.upper_bound(start);
  if (it != map_.begin()) {
    auto prev = std::prev(it);
    if (prev->second.end_bytes > start) {
      const Value old = prev->second;
      prev->second.end_bytes = start;
      if (prev->first == start) it = map_.erase(prev);  // emptied: drop it
      if (old.end_bytes > end) {
        map_.emplace_hint(it, end, Value{old.end_bytes, old.flags});
        return;
      }
    }
  }
  while (it != map_.end() && it->first < end) {
    if (it->second.end_bytes <= end) {
      it = map_.erase(it);
      continue;
    }
    const Value tail = it->second;  // keep [end, tail.end)
    it = map_.erase(it);
    map_.emplace_hint(it, end, tail);
    break;
  }
}

void ExtentCache::assign(uint64_t start, uint64_t end, uint32_t flags) noexcept {
  if (start >= end) return;
  erase(start, end);
  auto it = map_.emplace(start, Value{end, flags}).first;
  // Merge with the previous and next extents when they touch and agree.
  if (it != map_.begin()) {
    auto prev = std::prev(it);
    if (prev->second.end_bytes == start && prev->second.flags == flags) {
      prev->second.end_bytes = end;
      map_.erase(it);
      it = prev;
    }
  }
  auto next = std::next(it);
  if (next != map_.end() && next->first == it->second.end_bytes && next->second.flags == flags) {
    it->second.end_bytes = next->second.end_bytes;
    map_.erase(next);
  }
  if (map_.size() > entries_max_) evict(start);
}

void ExtentCache::evict(uint64_t near) noexcept {
  while (map_.size() > entries_max_) {
    auto first = map_.begin();
    auto last = std::prev(map_.end());
    const uint64_t d_first = near > first->first ? near - first->first : 0;
    const uint64_t d_last = last->first > near ? last->first - near : 0;
    map_.erase(d_first >= d_last ? first : last);
    ++evictions_;
  }
}

std::optional<ExtentCache::Extent> ExtentCache::find(uint64_t offset) const noexcept {
  auto it = map_.upper_bound(offset);
  if (it == map_.begin()) return std::nullopt;
  --it;
  if (it->second.end_bytes <= offset) return std::nullopt;
  return Extent{it->first, it->second.end_bytes, it->second.flags};
}

uint64_t ExtentCache::first_unknown(uint64_t start, uint64_t end) const noexcept {
  uint64_t pos = start;
  auto it = map_.upper_bound(pos);
  if (it != map_.begin()) {
    auto prev = std::prev(it);
    if (prev->second.end_bytes > pos) pos = prev->second.end_bytes;
  }
  while (pos < end && it != map_.end() && it->first == pos) {
    pos = it->second.end_bytes;
    ++it;
  }
  return std::min(pos, end);
}

uint64_t ExtentCache::first_with(uint64_t start, uint64_t end, uint32_t mask) const noexcept {
  auto it = map_.upper_bound(start);
  if (it != map_.begin()) {
    auto prev = std::prev(it);
    if (prev->second.end_bytes > start && (prev->second.flags & mask)) return start;
  }
  for (; it != map_.end() && it->first < end; ++it) {
    if (it->second.flags & mask) return it->first;
  }
  return end;
}

}  // namespace ferry::cache
