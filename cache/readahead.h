// ReadAhead: adaptive sequential read-ahead, a BlockDevice layer that sits above a cache tier
// (`readahead > ram-cache > remote`, as nbdkit's readahead filter sits over its cache filter).
// It watches demand reads; once a stream of them is sequential (each starting where the previous
// one ended), it reads ahead of it, chunk by chunk, at IoPriority::prefetch, through `next` — the
// cache below keeps the bytes, ReadAhead throws its own copy away. The window starts at
// window_min_bytes and doubles each time the demand stream catches up with the second half of
// what was read ahead, up to window_max_bytes; a random read starts no prefetch. A boot loader
// reads one small block at a time, 98 % sequentially: without this each 64 KiB chunk costs a
// WAN round trip.
//
// Demand reads are passed to `next` first and unchanged (ReadAhead never delays or copies them);
// writes, flushes, discards and block status pass through. Bounded: reads_max prefetch reads in
// flight into buffers allocated at create(), streams_max streams tracked (least recently used
// replaced). Nothing here is state the volume needs: dropping ReadAhead loses no data.
// Threading: one reactor thread, like the cache below it (submit and completions on it).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "datapath/block_device.h"

namespace ferry::cache {

struct ReadAheadOptions {
  uint32_t chunk_bytes = 64 * 1024;        // size of one prefetch read (the cache's chunk)
  uint64_t window_min_bytes = 256 * 1024;  // ahead of a stream once it is sequential
  uint64_t window_max_bytes = 512 * 1024;  // the window's cap
  uint32_t reads_max = 16;     // prefetch reads in flight (keep under the cache's fetches_max)
  uint32_t streams_max = 8;    // sequential streams tracked at once
  uint32_t trigger_reads = 3;  // reads of one stream in a row before prefetching
};

struct ReadAheadCounters {
  uint64_t demand_reads = 0;
  uint64_t sequential_reads = 0;     // demand reads that continued a stream
  uint64_t prefetch_reads = 0;       // prefetch reads issued
  uint64_t prefetch_bytes = 0;       // bytes read ahead
  uint64_t prefetch_used_bytes = 0;  // demand bytes that fell inside what was read ahead
  uint64_t prefetch_errors = 0;
  uint64_t window_grows = 0;
  uint64_t throttled = 0;  // prefetches not issued: reads_max in flight
};

class ReadAhead final : public BlockDevice {
 public:
  static Result<std::unique_ptr<ReadAhead>> create(BlockDevice& next,
                                                   const ReadAheadOptions& o) noexcept;
  ~ReadAhead() override;

  Geometry geometry() const noexcept override { return next_.geometry(); }
  void submit(IoRequest& req) noexcept override;
  std::string_view describe() const noexcept override { return description_; }
  const ReadAheadCounters& counters() const noexcept { return counters_; }
  uint32_t in_flight() const noexcept { return in_flight_; }

 private:
  struct Stream {
    uint64_t next_offset = 0;  // where the next sequential read starts
    uint64_t ahead_from = 0;   // [ahead_from, ahead_until): read ahead for this stream
    uint64_t ahead_until = 0;
    uint64_t window_bytes = 0;
    uint64_t consumed_bytes = 0;  // sequential demand since the window last grew
    uint32_t run = 0;             // sequential reads in a row
    uint64_t last_used = 0;       // LRU tick
    bool live = false;
  };
  struct Op {
    IoRequest io;
    ReadAhead* owner = nullptr;
    std::byte* buf = nullptr;
  };
  ReadAhead(BlockDevice& next, const ReadAheadOptions& o) noexcept;
  void observe(uint64_t offset, uint64_t length) noexcept;
  void pump() noexcept;
  static void on_prefetched(IoRequest& io) noexcept;

  BlockDevice& next_;
  ReadAheadOptions opt_;
  std::string description_;
  std::unique_ptr<std::byte[]> mem_;
  std::vector<Op> ops_;
  std::vector<Op*> free_ops_;
  std::vector<Stream> streams_;
  uint64_t tick_ = 0;
  uint32_t in_flight_ = 0;
  bool pumping_ = false;  // completions may run inside next_.submit(): no recursion
  ReadAheadCounters counters_;
};

}  // namespace ferry::cache
