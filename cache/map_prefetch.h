// MapPrefetch: replays a volume's learned access map at attach. On start() it asks the stack
// below for the map (IoOp::access_map: the WAN remote fetches it from the datacenter edge, which
// learned it from earlier attaches — so a fresh cloud edge gets it too) and then reads those
// chunks in the recorded order at IoPriority::prefetch, reads_max at a time, up to bytes_max, so
// the cache below is filled in the order the VM will ask. Demand reads pass through unchanged
// and overtake the replay on the WAN link (priorities). Nothing here is volume state.
// Threading: one reactor thread (start() and every completion on it). Memory: the map buffer and
// reads_max chunk buffers, allocated at create().
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "datapath/block_device.h"

namespace ferry::cache {

struct MapPrefetchOptions {
  uint32_t chunk_bytes = 64 * 1024;   // the datacenter edge's map granularity
  uint32_t reads_max = 8;             // replay reads in flight
  uint64_t bytes_max = 256ull << 20;  // replay at most this much (keep it within the cache)
  uint32_t entries_max = 32768;       // map entries asked for (one WAN frame)
};

struct MapPrefetchCounters {
  uint64_t entries = 0;  // chunks in the map received
  uint64_t reads = 0;    // replay reads issued
  uint64_t bytes = 0;
  uint64_t errors = 0;
  bool map_unsupported = false;  // the stack below has no map
  bool done = false;
};

class MapPrefetch final : public BlockDevice {
 public:
  static Result<std::unique_ptr<MapPrefetch>> create(BlockDevice& next, std::string name,
                                                     const MapPrefetchOptions& o) noexcept;
  ~MapPrefetch() override;
  Geometry geometry() const noexcept override { return next_.geometry(); }
  void submit(IoRequest& req) noexcept override { next_.submit(req); }
  std::string_view describe() const noexcept override { return description_; }
  void start() noexcept;  // reactor thread, once
  void stop() noexcept { stopping_ = true; }
  const MapPrefetchCounters& counters() const noexcept { return counters_; }

 private:
  struct Op {
    IoRequest io;
    MapPrefetch* owner = nullptr;
    std::byte* buf = nullptr;
  };
  MapPrefetch(BlockDevice& next, const MapPrefetchOptions& o) noexcept;
  static void on_map(IoRequest& io) noexcept;
  static void on_read(IoRequest& io) noexcept;
  void pump() noexcept;
  uint64_t entry(size_t i) const noexcept;

  BlockDevice& next_;
  MapPrefetchOptions opt_;
  std::string name_, description_;
  std::unique_ptr<std::byte[]> map_;
  IoRequest map_io_;
  size_t map_entries_ = 0, next_entry_ = 0;
  std::unique_ptr<std::byte[]> mem_;
  std::vector<Op> ops_;
  std::vector<Op*> free_ops_;
  bool started_ = false, stopping_ = false, pumping_ = false;
  MapPrefetchCounters counters_;
};

}  // namespace ferry::cache
