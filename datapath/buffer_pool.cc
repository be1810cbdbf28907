// BufferPool implementation: per-class free lists over aligned allocations (jemalloc underneath).
#include "datapath/buffer_pool.h"

#include <cstdlib>

#include "datapath/assert.h"

namespace ferry {

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    release();
    pool_ = o.pool_;
    data_ = o.data_;
    capacity_ = o.capacity_;
    o.pool_ = nullptr;
    o.data_ = nullptr;
    o.capacity_ = 0;
  }
  return *this;
}

void Buffer::release() noexcept {
  if (data_ != nullptr) pool_->give_back(data_, capacity_);
  pool_ = nullptr;
  data_ = nullptr;
  capacity_ = 0;
}

BufferPool::~BufferPool() {
  FERRY_ASSERT(stats_.bytes_in_use == 0);
  for (auto& list : free_)
    for (std::byte* p : list) std::free(p);
}

int BufferPool::class_of(size_t size_bytes) noexcept {
  int c = 0;
  size_t cap = kMinBytes;
  while (cap < size_bytes) {
    cap <<= 1;
    ++c;
  }
  return c;
}

bool BufferPool::make_room(size_t bytes) noexcept {
  // Drop cached free buffers (largest first) until `bytes` more fit under bytes_max.
  for (int c = kClassCount - 1; c >= 0 && stats_.bytes_allocated + bytes > bytes_max_; --c) {
    auto& list = free_[static_cast<size_t>(c)];
    while (!list.empty() && stats_.bytes_allocated + bytes > bytes_max_) {
      std::free(list.back());
      list.pop_back();
      stats_.bytes_allocated -= kMinBytes << c;
    }
  }
  return stats_.bytes_allocated + bytes <= bytes_max_;
}

Buffer BufferPool::allocate(size_t size_bytes) noexcept {
  if (size_bytes == 0) size_bytes = 1;
  if (size_bytes > kMaxBytes) return {};
  const int c = class_of(size_bytes);
  const size_t cap = kMinBytes << c;
  auto& list = free_[static_cast<size_t>(c)];
  std::byte* p = nullptr;
  if (!list.empty()) {
    p = list.back();
    list.pop_back();
  } else {
    if (!make_room(cap)) {
      ++stats_.exhausted_count;
      return {};
    }
    p = static_cast<std::byte*>(std::aligned_alloc(kAlignment, cap));
    if (p == nullptr) {
      ++stats_.exhausted_count;
      return {};
    }
    stats_.bytes_allocated += cap;
  }
  stats_.bytes_in_use += cap;
  return Buffer(this, p, cap);
}

void BufferPool::give_back(std::byte* data, size_t capacity) noexcept {
  stats_.bytes_in_use -= capacity;
  free_[static_cast<size_t>(class_of(capacity))].push_back(data);
}

}  // namespace ferry
