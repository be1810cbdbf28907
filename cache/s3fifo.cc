// S3Fifo (see s3fifo.h). Runs on the owning cache's thread.
#include "cache/s3fifo.h"

#include <algorithm>

namespace ferry::cache {

S3Fifo::S3Fifo(uint32_t slot_count) noexcept
    : slot_count_(slot_count),
      small_target_(std::max<uint32_t>(1, slot_count / 10)),
      where_(slot_count, kNone),
      freq_(slot_count, 0),
      gen_(slot_count, 0),
      key_(slot_count, 0) {
  ghost_.reserve(slot_count);
}

void S3Fifo::insert(uint32_t slot, uint64_t key) noexcept {
  if (where_[slot] != kNone) remove(slot);
  key_[slot] = key;
  freq_[slot] = 0;
  ++resident_;
  if (ghost_.erase(key) != 0) {
    where_[slot] = kMain;
    ++main_live_;
    main_.push_back({slot, gen_[slot]});
  } else {
    where_[slot] = kSmall;
    ++small_live_;
    small_.push_back({slot, gen_[slot]});
  }
  compact(small_, kSmall);
  compact(main_, kMain);
}

void S3Fifo::insert_main(uint32_t slot, uint64_t key) noexcept {
  if (where_[slot] != kNone) remove(slot);
  key_[slot] = key;
  freq_[slot] = 0;
  ++resident_;
  where_[slot] = kMain;
  ++main_live_;
  main_.push_back({slot, gen_[slot]});
  compact(main_, kMain);
}

void S3Fifo::remove(uint32_t slot) noexcept {
  if (where_[slot] == kNone) return;
  (where_[slot] == kSmall ? small_live_ : main_live_)--;
  where_[slot] = kNone;
  ++gen_[slot];  // its queue entry is now stale
  --resident_;
}

// Stale entries (removed slots) are skipped by victim(); compact a queue that has collected more
// than one per slot, so the queues stay bounded by 2 x slot_count.
void S3Fifo::compact(std::deque<Entry>& q, uint8_t where) noexcept {
  if (q.size() <= 2 * size_t(slot_count_)) return;
  std::erase_if(q,
                [&](const Entry& e) { return where_[e.slot] != where || gen_[e.slot] != e.gen; });
}

void S3Fifo::ghost_add(uint64_t key) noexcept {
  ghost_.insert(key);
  ghost_order_.push_back(key);
  while (ghost_.size() > slot_count_ || ghost_order_.size() > 2 * size_t(slot_count_)) {
    ghost_.erase(ghost_order_.front());
    ghost_order_.pop_front();
  }
}

// Evict from small unless it is under its target; a small entry read again since it came in
// moves to main instead, a main entry read again gets another round (freq - 1).
int64_t S3Fifo::victim(PinnedFn pinned, const void* ctx) noexcept {
  for (size_t tries = 4 * (small_.size() + main_.size()) + 4; tries > 0; --tries) {
    if (small_live_ > 0 && (small_live_ >= small_target_ || main_live_ == 0)) {
      const Entry e = small_.front();
      small_.pop_front();
      if (where_[e.slot] != kSmall || gen_[e.slot] != e.gen) continue;  // stale
      if (pinned(ctx, e.slot)) {
        small_.push_back(e);
      } else if (freq_[e.slot] >= 1) {
        where_[e.slot] = kMain;
        --small_live_;
        ++main_live_;
        freq_[e.slot] = 0;
        main_.push_back(e);
      } else {
        ghost_add(key_[e.slot]);
        remove(e.slot);
        return e.slot;
      }
    } else if (main_live_ > 0) {
      const Entry e = main_.front();
      main_.pop_front();
      if (where_[e.slot] != kMain || gen_[e.slot] != e.gen) continue;
      if (pinned(ctx, e.slot) || freq_[e.slot] > 0) {
        if (freq_[e.slot] > 0) --freq_[e.slot];
        main_.push_back(e);
      } else {
        remove(e.slot);
        return e.slot;
      }
    } else {
      return -1;
    }
  }
  return -1;
}

}  // namespace ferry::cache
