// RamCache: the RAM cache tier, a BlockDevice over a `next` device (cache/DESIGN.md).
// Chunked (64 KiB default) with a per-sector validity bitmap; write-through to `next`, so every
// valid cached sector equals what `next` holds once the writes that touched it have completed,
// and eviction is always safe. S3-FIFO eviction (small FIFO, main FIFO, ghost queue).
// Memory is bounded and allocated at create(): chunk slots, fetch buffers, write ops.
//
// Threading: one reactor thread per RamCache (as other devices: submit() and every completion
// from `next` run on that thread; no locks). Completions may run inside submit().
// Lending: the cache never lends (`lent` stays null; bytes are always copied into `data`),
// because it may evict and reuse a chunk slot as soon as the read completes.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "datapath/block_device.h"

namespace ferry::cache {

struct RamCacheOptions {
  uint64_t capacity_bytes = 64ull << 20;  // chunk memory; rounded down to whole chunks (>= 2)
  uint32_t chunk_bytes = 64 * 1024;       // multiple of the device's block size
  uint32_t fetches_max = 32;              // chunk fetches in flight; more misses bypass
  uint32_t writes_max = 256;              // writes/discards in flight; more answer busy
  uint32_t waiters_max = 16;              // reads waiting on one chunk fetch; more bypass
};

struct RamCacheCounters {
  uint64_t hits = 0;               // demand reads served from memory on arrival
  uint64_t misses = 0;             // demand reads that needed (or waited on) a fetch
  uint64_t prefetch_cached = 0;    // prefetch reads (IoPriority prefetch/background) already here
  uint64_t prefetch_misses = 0;    // prefetch reads that fetched
  uint64_t bypassed = 0;           // reads sent straight to next (fetch/waiter/slot limit)
  uint64_t fetches = 0;            // chunk fetches issued
  uint64_t bytes_fetched = 0;      // bytes read from next by fetches (demand and prefetch)
  uint64_t bytes_prefetched = 0;   // of bytes_fetched: by fetches for prefetch reads
  uint64_t prefetched_chunks = 0;  // chunks a prefetch read brought in
  uint64_t prefetched_chunks_used = 0;  // of those: read on demand before eviction (accuracy)
  uint64_t evictions = 0;
  uint64_t dropped = 0;  // chunks dropped by drop_clean() or a shrinking set_capacity()
  uint64_t busy = 0;     // writes refused: writes_max in flight
};

class RamCache final : public BlockDevice {
 public:
  static Result<std::unique_ptr<RamCache>> create(BlockDevice& next,
                                                  const RamCacheOptions& o) noexcept;
  ~RamCache() override;

  Geometry geometry() const noexcept override { return next_.geometry(); }
  void submit(IoRequest& req) noexcept override;
  std::string_view describe() const noexcept override { return description_; }
  const RamCacheCounters& counters() const noexcept { return counters_; }
  uint32_t slots() const noexcept { return slot_count_; }
  uint32_t resident_chunks() const noexcept { return uint32_t(index_.size()); }
  // The runtime budget (management: resize). The memory of create()'s capacity is the ceiling:
  // set_capacity() takes the budget down to 2 chunks or back up to that ceiling (rounded down to
  // whole chunks, clamped) and returns the budget in bytes. Shrinking drops the chunks of the
  // retired slots at once (write-through: nothing is lost) and returns their memory to the
  // kernel (madvise DONTNEED); a retired slot with a fetch in flight goes when it completes.
  uint64_t set_capacity(uint64_t bytes) noexcept;
  uint64_t capacity_bytes() const noexcept { return uint64_t(active_slots_) * opt_.chunk_bytes; }
  uint64_t max_capacity_bytes() const noexcept { return uint64_t(slot_count_) * opt_.chunk_bytes; }
  uint32_t chunk_bytes() const noexcept { return opt_.chunk_bytes; }
  // Drops every cached chunk that has no fetch in flight (all are clean: write-through) and
  // returns how many went; later reads miss and fetch again.
  uint32_t drop_clean() noexcept;

 private:
  struct Slot {
    uint64_t chunk = 0;
    uint64_t epoch = 0;          // bumped when a discard/write_zeroes drops sectors
    uint64_t last_read_end = 0;  // byte offset where the chunk's last demand read ended
    uint8_t freq = 0;
    bool referenced = false;  // a demand read used the chunk since it was admitted
    bool prefetched = false;  // admitted by a prefetch read, not used on demand yet
    bool used = false;
    bool in_main = false;
    bool fetching = false;
    std::vector<IoRequest*> waiters;  // capacity waiters_max, reserved at create()
  };
  struct Fetch {
    IoRequest io;
    RamCache* cache = nullptr;
    uint32_t slot = 0;
    uint64_t epoch = 0;
    uint32_t first_sector = 0;
    std::byte* buf = nullptr;
    std::vector<IoRequest*> woken;  // the slot's waiters, swapped out at completion
  };
  struct WriteOp {
    IoRequest io;
    IoRequest* user = nullptr;
    RamCache* cache = nullptr;
  };

  RamCache(BlockDevice& next, const RamCacheOptions& o) noexcept;
  void read(IoRequest& io, bool first) noexcept;
  void write_through(IoRequest& io) noexcept;
  static void on_fetched(IoRequest& io) noexcept;
  static void on_written(IoRequest& io) noexcept;
  void apply_write(const IoRequest& io) noexcept;
  int64_t find(uint64_t chunk) const noexcept;
  int64_t admit(uint64_t chunk) noexcept;  // a slot for chunk, evicting if needed; -1 if none
  int64_t evict() noexcept;                // frees one slot; -1 if every slot is busy
  void drop(uint32_t s, bool evicted = true) noexcept;
  bool retired(uint32_t s) const noexcept { return s >= active_slots_; }
  void note_use(uint32_t s, const IoRequest& io) noexcept;
  bool start_fetch(uint32_t s, uint32_t first, uint32_t last, IoPriority priority) noexcept;
  uint64_t chunk_length(uint64_t chunk) const noexcept;
  bool valid(uint32_t s, uint32_t sector) const noexcept {
    return (bits_[size_t(s) * words_ + sector / 64] >> (sector % 64)) & 1;
  }
  void set_valid(uint32_t s, uint32_t sector, bool v) noexcept {
    uint64_t& w = bits_[size_t(s) * words_ + sector / 64];
    w = v ? (w | (1ull << (sector % 64))) : (w & ~(1ull << (sector % 64)));
  }
  std::byte* slot_data(uint32_t s) noexcept { return data_.get() + size_t(s) * opt_.chunk_bytes; }

  BlockDevice& next_;
  RamCacheOptions opt_;
  std::string description_;
  uint32_t sector_bytes_ = 512;
  uint32_t sectors_per_chunk_ = 0;
  uint32_t words_ = 0;
  uint32_t slot_count_ = 0;    // slots allocated at create(): the ceiling
  uint32_t active_slots_ = 0;  // the budget: slots [0, active_slots_) are in use
  uint32_t small_target_ = 1;
  std::unique_ptr<std::byte[]> data_;
  std::vector<uint64_t> bits_;
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_slots_;
  std::unordered_map<uint64_t, uint32_t> index_;  // chunk -> slot
  std::deque<uint32_t> small_, main_;             // front = oldest
  std::deque<uint64_t> ghost_order_;
  std::unordered_set<uint64_t> ghost_;
  std::unique_ptr<std::byte[]> fetch_mem_;
  std::vector<Fetch> fetches_;
  std::vector<Fetch*> free_fetches_;
  std::vector<WriteOp> writes_;
  std::vector<WriteOp*> free_writes_;
  RamCacheCounters counters_;
};

}  // namespace ferry::cache
