// ContentStore implementation (see content_store.h).
#include "cache/content_store.h"

#include <cstring>

namespace ferry::cache {

void ContentStore::remember(std::span<const uint8_t> data) noexcept {
  if (bytes_max_ == 0 || data.size() > chunk_bytes_max_) return;
  const wan::ContentHash h = wan::content_hash(data);
  if (map_.count(h) != 0) return;
  while (bytes_ + data.size() > bytes_max_ && !order_.empty()) {
    auto it = map_.find(order_.front());
    if (it != map_.end()) {
      bytes_ -= it->second.length;
      map_.erase(it);
      ++evictions_;
    }
    order_.pop_front();
  }
  Stored s;
  s.data = pool_.allocate(data.size());
  if (!s.data) return;  // pool full: simply not remembered (a later ref then misses)
  std::memcpy(s.data.data(), data.data(), data.size());
  s.length = uint32_t(data.size());
  bytes_ += data.size();
  order_.push_back(h);
  map_.emplace(h, std::move(s));
}

std::span<const uint8_t> ContentStore::recall(std::span<const uint8_t> hash) const noexcept {
  if (hash.size() != wan::kContentHashBytes) return {};
  wan::ContentHash h;
  std::memcpy(h.data(), hash.data(), h.size());
  auto it = map_.find(h);
  if (it == map_.end()) return {};
  return {reinterpret_cast<const uint8_t*>(it->second.data.data()), it->second.length};
}

}  // namespace ferry::cache
