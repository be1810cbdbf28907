// ContentStore: the cloud edge's dedup store — chunk contents it received over the WAN link, by
// SHA-256 (datapath/wan/codec.h content_hash), so the datacenter edge can send a DEDUP_REF
// instead of bytes it already sent. Bounded by bytes; first in, first out: the datacenter edge
// models what this store holds with the same bound and order (gateway/wan/wan_server.h), so the
// eviction rule is part of the link's contract and must not change on one side only.
// Data buffers come from the owner's BufferPool; a full pool means "not remembered" (a later
// reference then misses and the client asks again without dedup).
// Used by WanClient (gateway/wan/wan_client.h). Moved there from the WAN client (issue 10).
// Threading: the owner's reactor thread only; not thread safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>

#include "datapath/buffer_pool.h"
#include "datapath/wan/codec.h"

namespace ferry::cache {

class ContentStore {
 public:
  // bytes_max 0: remembers nothing. Chunks larger than chunk_bytes_max are not remembered.
  ContentStore(BufferPool& pool, size_t bytes_max, size_t chunk_bytes_max) noexcept
      : pool_(pool), bytes_max_(bytes_max), chunk_bytes_max_(chunk_bytes_max) {}
  // Keeps a copy of `data` under its content hash (nothing if already held), evicting the oldest
  // entries to stay within bytes_max.
  void remember(std::span<const uint8_t> data) noexcept;
  // The content whose hash is `hash` (kContentHashBytes), or an empty span. Valid until the next
  // remember().
  std::span<const uint8_t> recall(std::span<const uint8_t> hash) const noexcept;
  size_t bytes() const noexcept { return bytes_; }
  size_t entries() const noexcept { return map_.size(); }
  uint64_t evictions() const noexcept { return evictions_; }

 private:
  struct Stored {
    Buffer data;
    uint32_t length = 0;
  };
  BufferPool& pool_;
  size_t bytes_max_;
  size_t chunk_bytes_max_;
  std::unordered_map<wan::ContentHash, Stored, wan::ContentHashHasher> map_;
  std::list<wan::ContentHash> order_;  // front = oldest
  size_t bytes_ = 0;
  uint64_t evictions_ = 0;
};

}  // namespace ferry::cache
