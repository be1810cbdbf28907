// MapPrefetch (see map_prefetch.h). Runs on its volume's one reactor thread.
#include "cache/map_prefetch.h"

#include <algorithm>
#include <cstdio>
#include <new>

namespace ferry::cache {

Result<std::unique_ptr<MapPrefetch>> MapPrefetch::create(BlockDevice& next, std::string name,
                                                         const MapPrefetchOptions& o) noexcept {
  if (o.chunk_bytes == 0 || o.chunk_bytes % next.geometry().block_size_bytes != 0 ||
      o.reads_max == 0 || o.entries_max == 0)
    return Errc::invalid_argument;
  std::unique_ptr<MapPrefetch> m(new (std::nothrow) MapPrefetch(next, o));
  if (!m) return Errc::no_memory;
  m->name_ = std::move(name);
  m->map_.reset(new (std::nothrow) std::byte[size_t(o.entries_max) * 8]);
  m->mem_.reset(new (std::nothrow) std::byte[size_t(o.reads_max) * o.chunk_bytes]);
  if (!m->map_ || !m->mem_) return Errc::no_memory;
  m->ops_.resize(o.reads_max);
  for (uint32_t i = 0; i < o.reads_max; ++i) {
    Op& op = m->ops_[i];
    op.owner = m.get();
    op.buf = m->mem_.get() + size_t(i) * o.chunk_bytes;
    op.io.owner = &op;
    op.io.on_complete = &MapPrefetch::on_read;
    m->free_ops_.push_back(&op);
  }
  m->description_ =
      "prefetch-map:" + std::to_string(o.bytes_max >> 20) + "MiB>" + std::string(next.describe());
  return m;
}

MapPrefetch::MapPrefetch(BlockDevice& next, const MapPrefetchOptions& o) noexcept
    : next_(next), opt_(o) {}

// Destroy only when idle or when `next` will never complete again (after the reactor stopped).
MapPrefetch::~MapPrefetch() = default;

void MapPrefetch::start() noexcept {
  if (started_) return;
  started_ = true;
  map_io_ = IoRequest{};
  map_io_.op = IoOp::access_map;
  map_io_.priority = IoPriority::prefetch;
  map_io_.length_bytes = uint64_t(opt_.entries_max) * 8;
  map_io_.data = map_.get();
  map_io_.owner = this;
  map_io_.on_complete = &MapPrefetch::on_map;
  next_.submit(map_io_);
}

uint64_t MapPrefetch::entry(size_t i) const noexcept {
  const auto* p = reinterpret_cast<const uint8_t*>(map_.get()) + i * 8;
  uint64_t x = 0;
  for (int b = 0; b < 8; ++b) x = (x << 8) | p[b];
  return x;
}

void MapPrefetch::on_map(IoRequest& io) noexcept {
  auto& m = *static_cast<MapPrefetch*>(io.owner);
  if (io.result != Errc::ok) {
    m.counters_.map_unsupported = io.result == Errc::unsupported;
    if (!m.counters_.map_unsupported) ++m.counters_.errors;
    m.counters_.done = true;
    return;
  }
  m.map_entries_ = size_t(std::min<uint64_t>(io.status_length_bytes / 8, m.opt_.entries_max));
  m.counters_.entries = m.map_entries_;
  std::fprintf(stderr, "ferry: prefetch-map %s: replaying %zu chunks of the learned access map\n",
               m.name_.c_str(), m.map_entries_);
  m.pump();
}

void MapPrefetch::pump() noexcept {
  if (pumping_) return;
  pumping_ = true;
  const uint64_t size = next_.geometry().size_bytes();
  while (!stopping_ && next_entry_ < map_entries_ && !free_ops_.empty() &&
         counters_.bytes < opt_.bytes_max) {
    const uint64_t off = entry(next_entry_++);
    if (off >= size) continue;  // a map from a larger volume: ignored entries
    Op* op = free_ops_.back();
    free_ops_.pop_back();
    op->io.op = IoOp::read;
    op->io.priority = IoPriority::prefetch;
    op->io.offset_bytes = off / opt_.chunk_bytes * opt_.chunk_bytes;
    op->io.length_bytes = std::min<uint64_t>(opt_.chunk_bytes, size - op->io.offset_bytes);
    op->io.data = op->buf;
    op->io.may_lend = false;
    op->io.lent = nullptr;
    ++counters_.reads;
    counters_.bytes += op->io.length_bytes;
    next_.submit(op->io);
  }
  if (!counters_.done && free_ops_.size() == ops_.size() &&
      (stopping_ || next_entry_ >= map_entries_ || counters_.bytes >= opt_.bytes_max)) {
    counters_.done = true;
    std::fprintf(stderr,
                 "ferry: prefetch-map %s: %llu chunks (%llu bytes) prefetched, %llu errors\n",
                 name_.c_str(), static_cast<unsigned long long>(counters_.reads),
                 static_cast<unsigned long long>(counters_.bytes),
                 static_cast<unsigned long long>(counters_.errors));
  }
  pumping_ = false;
}

void MapPrefetch::on_read(IoRequest& io) noexcept {
  auto* op = static_cast<Op*>(io.owner);
  MapPrefetch& m = *op->owner;
  if (io.result != Errc::ok) ++m.counters_.errors;
  m.free_ops_.push_back(op);
  m.pump();
}

}  // namespace ferry::cache
