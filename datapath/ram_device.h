// RamDevice: a volume held in anonymous memory (sparse: untouched pages cost nothing).
// Completes every request synchronously inside submit(). Safe to share between reactor threads:
// data races between overlapping concurrent writes are the initiator's business, as on a disk;
// the allocation map uses atomics. Tracks allocation per 64 KiB chunk for block status.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "datapath/block_device.h"

namespace ferry {

class RamDevice final : public BlockDevice {
 public:
  static constexpr uint64_t kChunkBytes = 64 * 1024;

  // size_bytes is rounded down to a multiple of block_size_bytes.
  static Result<std::unique_ptr<RamDevice>> create(uint64_t size_bytes,
                                                   uint32_t block_size_bytes = 512) noexcept;
  ~RamDevice() override;

  Geometry geometry() const noexcept override { return geometry_; }
  void submit(IoRequest& req) noexcept override;
  std::string_view describe() const noexcept override { return description_; }

 private:
  RamDevice() noexcept = default;
  void mark_allocated(uint64_t offset_bytes, uint64_t length_bytes) noexcept;
  void deallocate(uint64_t offset_bytes, uint64_t length_bytes) noexcept;
  void block_status(IoRequest& req) noexcept;
  bool chunk_allocated(uint64_t chunk) const noexcept {
    return (bitmap_[chunk / 64].load(std::memory_order_relaxed) >> (chunk % 64)) & 1;
  }

  Geometry geometry_;
  std::byte* base_ = nullptr;
  uint64_t mapped_bytes_ = 0;
  std::unique_ptr<std::atomic<uint64_t>[]> bitmap_;
  std::string description_;
};

// Parses sizes such as "1GiB", "64MiB", "512KiB", "4096", "1G", "10M".
Result<uint64_t> parse_size_bytes(std::string_view text) noexcept;
std::string format_size(uint64_t bytes);

}  // namespace ferry
