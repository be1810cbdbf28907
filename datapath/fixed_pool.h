// FixedPool and FixedMap: bounded object storage allocated once, when its owner starts, so the
// hot path never allocates. FixedPool<T> hands out up to `capacity` objects through a free
// list; take() answers nullptr when all are in use and the caller answers busy (back-pressure),
// never a crash. FixedMap<V> maps a 64-bit key (e.g. a peer's request id) to a V in a fixed
// open-addressing table (linear probing, backward-shift deletion: no tombstones); insert()
// answers nullptr when `entries_max` keys are in. One owner thread; neither is thread safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <utility>
#include <vector>

namespace ferry {

template <class T>
class FixedPool {
 public:
  FixedPool() noexcept = default;
  // Allocates `capacity` objects (start-up; false when out of memory). Call once, before take().
  bool init(size_t capacity) noexcept {
    objects_.reset(new (std::nothrow) T[capacity]);
    if (capacity != 0 && !objects_) return false;
    try {
      free_.reserve(capacity);
    } catch (...) {
      objects_.reset();
      return false;
    }
    capacity_ = capacity;
    for (size_t i = capacity; i > 0; --i) free_.push_back(&objects_[i - 1]);
    return true;
  }
  // A value-initialised object, or nullptr when all are in use.
  T* take() noexcept {
    if (free_.empty()) return nullptr;
    T* p = free_.back();
    free_.pop_back();
    *p = T{};
    return p;
  }
  // Gives back an object from take() (its resources, e.g. a Buffer, are released now).
  void put(T* p) noexcept {
    *p = T{};
    free_.push_back(p);  // within the capacity reserved by init()
  }
  size_t capacity() const noexcept { return capacity_; }
  size_t in_use() const noexcept { return capacity_ - free_.size(); }

 private:
  std::unique_ptr<T[]> objects_;
  std::vector<T*> free_;
  size_t capacity_ = 0;
};

template <class V>
class FixedMap {
 public:
  FixedMap() noexcept = default;
  // Room for `entries_max` keys (the table has a power of two ≥ 2 × entries_max slots).
  bool init(size_t entries_max) noexcept {
    size_t slots = 2;
    while (slots < 2 * entries_max) slots *= 2;
    slots_.reset(new (std::nothrow) Slot[slots]);
    if (!slots_) return false;
    mask_ = slots - 1;
    entries_max_ = entries_max;
    size_ = 0;
    return true;
  }
  V* find(uint64_t key) noexcept {
    if (!slots_) return nullptr;
    for (size_t i = home(key);; i = (i + 1) & mask_) {
      if (!slots_[i].used) return nullptr;
      if (slots_[i].key == key) return &slots_[i].value;
    }
  }
  // The value under `key`, value-initialised when new; nullptr when the map is full.
  V* insert(uint64_t key) noexcept {
    if (!slots_) return nullptr;
    size_t i = home(key);
    for (; slots_[i].used; i = (i + 1) & mask_)
      if (slots_[i].key == key) return &slots_[i].value;
    if (size_ >= entries_max_) return nullptr;
    slots_[i].used = true;
    slots_[i].key = key;
    slots_[i].value = V{};
    ++size_;
    return &slots_[i].value;
  }
  void erase(uint64_t key) noexcept {
    if (!slots_) return;
    size_t i = home(key);
    for (;; i = (i + 1) & mask_) {
      if (!slots_[i].used) return;
      if (slots_[i].key == key) break;
    }
    // Backward shift: pull later entries of the run into the hole unless their home slot lies
    // cyclically in (hole, entry], so every key stays reachable from its home without gaps.
    for (size_t j = (i + 1) & mask_; slots_[j].used; j = (j + 1) & mask_) {
      const size_t k = home(slots_[j].key);
      const bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
      if (stays) continue;
      slots_[i].key = slots_[j].key;
      slots_[i].value = std::move(slots_[j].value);
      i = j;
    }
    slots_[i].used = false;
    slots_[i].value = V{};
    --size_;
  }
  size_t size() const noexcept { return size_; }
  size_t entries_max() const noexcept { return entries_max_; }

 private:
  struct Slot {
    uint64_t key = 0;
    bool used = false;
    V value{};
  };
  size_t home(uint64_t key) const noexcept {
    key ^= key >> 33;  // murmur3 finaliser: sequential request ids spread over the table
    key *= 0xff51afd7ed558ccdull;
    key ^= key >> 33;
    return size_t(key) & mask_;
  }
  std::unique_ptr<Slot[]> slots_;
  size_t mask_ = 0;
  size_t entries_max_ = 0;
  size_t size_ = 0;
};

}  // namespace ferry
