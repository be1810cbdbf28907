// S3Fifo: the S3-FIFO eviction policy (Yang et al., SOSP'23) over slot ids, keyed by chunk
// number: a small FIFO (10 % of the slots) for new entries, a main FIFO with reinsertion for
// entries read again, and a bounded ghost set of keys recently evicted from small (a key
// admitted while in the ghost goes straight to main). Policy only: it owns no data and knows
// nothing of I/O; the owner asks `victim()` for a slot and says which slots may not go now.
// Used by SsdCache (cache/DESIGN.md). Single-threaded (the owning cache's reactor thread).
// Memory: fixed per slot; queues and ghost are bounded by the slot count (ghost: an
// std::unordered_set, reserved at construction).
#pragma once

#include <cstdint>
#include <deque>
#include <unordered_set>
#include <vector>

namespace ferry::cache {

class S3Fifo {
 public:
  explicit S3Fifo(uint32_t slot_count) noexcept;

  // A new entry for `key` in `slot` (not resident). A key still in the ghost goes to main.
  void insert(uint32_t slot, uint64_t key) noexcept;
  // A resident entry restored from media: it earned its place before, so it starts in main.
  void insert_main(uint32_t slot, uint64_t key) noexcept;
  // The entry in `slot` was read: frequency + 1 (capped at 3).
  void touch(uint32_t slot) noexcept {
    if (freq_[slot] < 3) ++freq_[slot];
  }
  // Takes `slot` out of the policy without a ghost entry (dropped for another reason).
  void remove(uint32_t slot) noexcept;
  // Picks the next victim, removes it from the policy (ghosting it if it leaves small without a
  // second read) and returns it; -1 if every resident slot is pinned. pinned(ctx, slot) says a
  // slot cannot go now (I/O in flight); pinned slots are moved to the back of their queue.
  using PinnedFn = bool (*)(const void* ctx, uint32_t slot) noexcept;
  int64_t victim(PinnedFn pinned, const void* ctx) noexcept;
  bool resident(uint32_t slot) const noexcept { return where_[slot] != kNone; }
  uint32_t resident_count() const noexcept { return resident_; }
  uint32_t small_target() const noexcept { return small_target_; }

 private:
  enum : uint8_t { kNone = 0, kSmall = 1, kMain = 2 };
  struct Entry {
    uint32_t slot;
    uint32_t gen;  // stale queue entries (slot removed, maybe re-inserted) are skipped
  };
  void ghost_add(uint64_t key) noexcept;
  void compact(std::deque<Entry>& q, uint8_t where) noexcept;

  uint32_t slot_count_;
  uint32_t small_target_;
  uint32_t resident_ = 0;
  uint32_t small_live_ = 0;
  uint32_t main_live_ = 0;
  std::vector<uint8_t> where_, freq_;
  std::vector<uint32_t> gen_;
  std::vector<uint64_t> key_;
  std::deque<Entry> small_, main_;  // front = oldest; may hold stale entries
  std::deque<uint64_t> ghost_order_;
  std::unordered_set<uint64_t> ghost_;
};

}  // namespace ferry::cache
