// BufferPool: bounded pool of aligned data buffers in power-of-two size classes (4 KiB .. 64 MiB),
// one pool per reactor thread (not thread safe). Buffers are move-only and go back to their pool
// when destroyed; they must be destroyed on the pool's thread. Memory is never returned to the
// system while the pool lives; the pool never holds more than bytes_max in total.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace ferry {

class BufferPool;

class Buffer {
 public:
  Buffer() noexcept = default;
  Buffer(Buffer&& o) noexcept : pool_(o.pool_), data_(o.data_), capacity_(o.capacity_) {
    o.pool_ = nullptr;
    o.data_ = nullptr;
    o.capacity_ = 0;
  }
  Buffer& operator=(Buffer&& o) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { release(); }

  std::byte* data() const noexcept { return data_; }
  size_t capacity() const noexcept { return capacity_; }
  explicit operator bool() const noexcept { return data_ != nullptr; }
  void release() noexcept;

 private:
  friend class BufferPool;
  Buffer(BufferPool* pool, std::byte* data, size_t capacity) noexcept
      : pool_(pool), data_(data), capacity_(capacity) {}
  BufferPool* pool_ = nullptr;
  std::byte* data_ = nullptr;
  size_t capacity_ = 0;
};

struct BufferPoolStats {
  uint64_t bytes_in_use = 0;
  uint64_t bytes_allocated = 0;  // in use + cached free
  uint64_t exhausted_count = 0;  // allocate() calls refused because of bytes_max
};

class BufferPool {
 public:
  static constexpr size_t kMinBytes = 4096;
  static constexpr size_t kMaxBytes = 64u << 20;
  static constexpr size_t kAlignment = 4096;

  explicit BufferPool(uint64_t bytes_max) noexcept : bytes_max_(bytes_max) {}
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // Returns a buffer of at least size_bytes (<= kMaxBytes), or an empty Buffer when the pool is
  // at bytes_max: the caller waits or refuses the work (back-pressure, never an unbounded queue).
  Buffer allocate(size_t size_bytes) noexcept;
  const BufferPoolStats& stats() const noexcept { return stats_; }

 private:
  friend class Buffer;
  static constexpr int kClassCount = 15;  // 4 KiB << 0 .. 4 KiB << 14 = 64 MiB
  static int class_of(size_t size_bytes) noexcept;
  void give_back(std::byte* data, size_t capacity) noexcept;
  bool make_room(size_t bytes) noexcept;

  uint64_t bytes_max_;
  BufferPoolStats stats_;
  std::array<std::vector<std::byte*>, kClassCount> free_;
};

}  // namespace ferry
