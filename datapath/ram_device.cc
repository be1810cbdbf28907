// RamDevice implementation (see ram_device.h). Synchronous; any reactor thread.
#include "datapath/ram_device.h"

#include <sys/mman.h>

#include <charconv>
#include <cstring>

namespace ferry {

Result<std::unique_ptr<RamDevice>> RamDevice::create(uint64_t size_bytes,
                                                     uint32_t block_size_bytes) noexcept {
  if (block_size_bytes != 512 && block_size_bytes != 4096) return Errc::invalid_argument;
  size_bytes -= size_bytes % block_size_bytes;
  if (size_bytes == 0) return Errc::invalid_argument;
  std::unique_ptr<RamDevice> dev(new (std::nothrow) RamDevice());
  if (!dev) return Errc::no_memory;
  void* p = mmap(nullptr, size_bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return Errc::no_memory;
  dev->base_ = static_cast<std::byte*>(p);
  dev->mapped_bytes_ = size_bytes;
  const uint64_t chunks = (size_bytes + kChunkBytes - 1) / kChunkBytes;
  dev->bitmap_.reset(new (std::nothrow) std::atomic<uint64_t>[(chunks + 63) / 64]());
  if (!dev->bitmap_) return Errc::no_memory;
  dev->geometry_.block_count = size_bytes / block_size_bytes;
  dev->geometry_.block_size_bytes = block_size_bytes;
  dev->geometry_.can_discard = true;
  dev->geometry_.discard_zeroes = true;
  dev->geometry_.volatile_cache = false;
  dev->description_ = "ram:" + format_size(size_bytes);
  if (block_size_bytes != 512) {
    // Two appends, not `+= ":" + to_string(...)`: g++ 12 at -O3 (a plain Release build) warns
    // -Wrestrict on that, a false positive inside libstdc++'s operator+.
    dev->description_ += ':';
    dev->description_ += std::to_string(block_size_bytes);
  }
  return dev;
}

RamDevice::~RamDevice() {
  if (base_ != nullptr) munmap(base_, mapped_bytes_);
}

void RamDevice::mark_allocated(uint64_t offset_bytes, uint64_t length_bytes) noexcept {
  if (length_bytes == 0) return;
  const uint64_t first = offset_bytes / kChunkBytes;
  const uint64_t last = (offset_bytes + length_bytes - 1) / kChunkBytes;
  for (uint64_t c = first; c <= last; ++c) {
    if (!chunk_allocated(c))
      bitmap_[c / 64].fetch_or(uint64_t{1} << (c % 64), std::memory_order_relaxed);
  }
}

void RamDevice::deallocate(uint64_t offset_bytes, uint64_t length_bytes) noexcept {
  // Whole chunks are released to the system and marked free; partial chunks are zeroed.
  uint64_t pos = offset_bytes;
  const uint64_t end = offset_bytes + length_bytes;
  while (pos < end) {
    const uint64_t chunk = pos / kChunkBytes;
    const uint64_t chunk_start = chunk * kChunkBytes;
    const uint64_t chunk_end = std::min(chunk_start + kChunkBytes, mapped_bytes_);
    const uint64_t piece_end = std::min(end, chunk_end);
    if (pos == chunk_start && piece_end == chunk_end) {
      if (chunk_allocated(chunk)) {
        madvise(base_ + chunk_start, chunk_end - chunk_start, MADV_DONTNEED);
        bitmap_[chunk / 64].fetch_and(~(uint64_t{1} << (chunk % 64)), std::memory_order_relaxed);
      }
    } else if (chunk_allocated(chunk)) {
      std::memset(base_ + pos, 0, piece_end - pos);
    }
    pos = piece_end;
  }
}

void RamDevice::block_status(IoRequest& req) noexcept {
  const uint64_t end = req.offset_bytes + req.length_bytes;
  const uint64_t first = req.offset_bytes / kChunkBytes;
  const bool allocated = chunk_allocated(first);
  uint64_t c = first + 1;
  while (c * kChunkBytes < end && chunk_allocated(c) == allocated) ++c;
  req.status_length_bytes = std::min(end, c * kChunkBytes) - req.offset_bytes;
  req.status_flags = allocated ? 0 : (kStatusHole | kStatusZero);
}

void RamDevice::submit(IoRequest& req) noexcept {
  if (req.op == IoOp::access_map) return req.complete(Errc::unsupported);  // learns nothing
  if (req.op != IoOp::flush) {
    Errc e = check_range(geometry_, req.offset_bytes, req.length_bytes);
    if (e != Errc::ok) return req.complete(e);
  }
  switch (req.op) {
    case IoOp::access_map:  // answered in submit()
      break;
    case IoOp::read:
      if (req.may_lend)
        req.lent = base_ + req.offset_bytes;  // no copy: the caller reads ours
      else
        std::memcpy(req.data, base_ + req.offset_bytes, req.length_bytes);
      break;
    case IoOp::write:
      std::memcpy(base_ + req.offset_bytes, req.data, req.length_bytes);
      mark_allocated(req.offset_bytes, req.length_bytes);
      break;
    case IoOp::flush:
      break;
    case IoOp::discard:
      deallocate(req.offset_bytes, req.length_bytes);
      break;
    case IoOp::write_zeroes:
      if (req.may_deallocate) {
        deallocate(req.offset_bytes, req.length_bytes);
      } else {
        std::memset(base_ + req.offset_bytes, 0, req.length_bytes);
        mark_allocated(req.offset_bytes, req.length_bytes);
      }
      break;
    case IoOp::block_status:
      if (req.length_bytes == 0) return req.complete(Errc::invalid_argument);
      block_status(req);
      break;
  }
  req.complete(Errc::ok);
}

Result<uint64_t> parse_size_bytes(std::string_view text) noexcept {
  uint64_t value = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || ptr == text.data()) return Errc::invalid_argument;
  std::string_view unit(ptr, size_t(text.data() + text.size() - ptr));
  uint64_t mult = 1;
  if (unit.empty() || unit == "B")
    mult = 1;
  else if (unit == "K" || unit == "KiB" || unit == "k")
    mult = 1ull << 10;
  else if (unit == "M" || unit == "MiB")
    mult = 1ull << 20;
  else if (unit == "G" || unit == "GiB")
    mult = 1ull << 30;
  else if (unit == "T" || unit == "TiB")
    mult = 1ull << 40;
  else
    return Errc::invalid_argument;
  if (value > UINT64_MAX / mult) return Errc::out_of_range;
  return value * mult;
}

std::string format_size(uint64_t bytes) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (u < 4 && bytes >= 1024 && bytes % 1024 == 0) {
    bytes /= 1024;
    ++u;
  }
  return std::to_string(bytes) + units[u];
}

}  // namespace ferry
