// ArenaAllocator: a fixed-capacity node allocator for the journal's node-based containers (the
// index's std::map), so the hot path never calls the heap: every node slot is allocated up front
// (NodeArena::init) and recycled through a free list. Single thread (the owner's reactor). The
// owner sizes the arena so it cannot run dry (journal_device.cc: at most two nodes per live
// record); running dry is a bug and asserts.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "datapath/assert.h"

namespace ferry::journal {

struct NodeArena {
  static constexpr size_t kSlotBytes = 96;  // >= any node the journal's maps allocate
  std::unique_ptr<std::byte[]> mem;
  std::vector<void*> free;
  void init(size_t slots) {
    // Plain new[]: its alignment (__STDCPP_DEFAULT_NEW_ALIGNMENT__) already covers max_align_t,
    // and unique_ptr<byte[]> frees with plain delete[] (an aligned new[] would mismatch it).
    static_assert(__STDCPP_DEFAULT_NEW_ALIGNMENT__ >= alignof(std::max_align_t));
    mem.reset(new std::byte[slots * kSlotBytes]);
    free.reserve(slots);
    for (size_t i = slots; i-- > 0;) free.push_back(mem.get() + i * kSlotBytes);
  }
};

template <class T>
struct ArenaAllocator {
  using value_type = T;
  NodeArena* arena = nullptr;
  explicit ArenaAllocator(NodeArena* a) noexcept : arena(a) {}
  template <class U>
  ArenaAllocator(const ArenaAllocator<U>& o) noexcept : arena(o.arena) {}  // NOLINT: rebind
  T* allocate(size_t n) noexcept {
    static_assert(sizeof(T) <= NodeArena::kSlotBytes && alignof(T) <= alignof(std::max_align_t));
    FERRY_ASSERT(n == 1 && !arena->free.empty());
    void* p = arena->free.back();
    arena->free.pop_back();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) noexcept { arena->free.push_back(p); }
  template <class U>
  bool operator==(const ArenaAllocator<U>& o) const noexcept {
    return arena == o.arena;
  }
};

}  // namespace ferry::journal
