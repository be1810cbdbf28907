// ReadAhead (see readahead.h and cache/DESIGN.md). Runs on its device's one reactor thread.
#include "cache/readahead.h"

#include <algorithm>
#include <new>

#include "datapath/assert.h"

namespace ferry::cache {

Result<std::unique_ptr<ReadAhead>> ReadAhead::create(BlockDevice& next,
                                                     const ReadAheadOptions& o) noexcept {
  const Geometry g = next.geometry();
  if (o.chunk_bytes == 0 || o.chunk_bytes % g.block_size_bytes != 0 || o.reads_max == 0 ||
      o.streams_max == 0 || o.window_min_bytes == 0 || o.window_max_bytes < o.window_min_bytes ||
      o.trigger_reads == 0)
    return Errc::invalid_argument;
  std::unique_ptr<ReadAhead> r(new (std::nothrow) ReadAhead(next, o));
  if (!r) return Errc::no_memory;
  r->mem_.reset(new (std::nothrow) std::byte[size_t(o.reads_max) * o.chunk_bytes]);
  if (!r->mem_) return Errc::no_memory;
  r->ops_.resize(o.reads_max);
  for (uint32_t i = 0; i < o.reads_max; ++i) {
    Op& op = r->ops_[i];
    op.owner = r.get();
    op.buf = r->mem_.get() + size_t(i) * o.chunk_bytes;
    op.io.owner = &op;
    op.io.on_complete = &ReadAhead::on_prefetched;
    r->free_ops_.push_back(&op);
  }
  r->streams_.resize(o.streams_max);
  r->description_ = "readahead:" + std::to_string(o.window_max_bytes >> 10) + "KiB>" +
                    std::string(next.describe());
  return r;
}

ReadAhead::ReadAhead(BlockDevice& next, const ReadAheadOptions& o) noexcept
    : next_(next), opt_(o) {}

// Destroy only when idle or when `next` will never complete again (the daemons destroy their
// stacks after the reactor has stopped): a prefetch in flight points into this object.
ReadAhead::~ReadAhead() = default;

void ReadAhead::submit(IoRequest& io) noexcept {
  if (io.op != IoOp::read || io.priority != IoPriority::demand || io.length_bytes == 0)
    return next_.submit(io);
  // The request may complete (and be reused by its owner) inside next_.submit(): keep what we
  // need to watch the stream before handing it down. Demand goes first, prefetch after it.
  const uint64_t offset = io.offset_bytes, length = io.length_bytes;
  next_.submit(io);
  observe(offset, length);
  pump();
}

void ReadAhead::observe(uint64_t offset, uint64_t length) noexcept {
  ++counters_.demand_reads;
  ++tick_;
  const uint64_t end = offset + length;
  Stream* s = nullptr;
  for (Stream& c : streams_) {
    // Sequential: starts exactly where the stream ended (a tolerance for gaps made random reads
    // look sequential by chance and start prefetches).
    if (c.live && offset == c.next_offset) {
      s = &c;
      break;
    }
  }
  if (s == nullptr) {  // a new stream replaces the least recently used one
    s = &*std::min_element(streams_.begin(), streams_.end(), [](const Stream& a, const Stream& b) {
      return !a.live ? b.live : (b.live && a.last_used < b.last_used);
    });
    *s = Stream{};
    s->live = true;
    s->next_offset = end;
    s->run = 1;
    s->last_used = tick_;
    return;
  }
  ++counters_.sequential_reads;
  ++s->run;
  s->last_used = tick_;
  if (offset < s->ahead_until && end > s->ahead_from)
    counters_.prefetch_used_bytes +=
        std::min(end, s->ahead_until) - std::max(offset, s->ahead_from);
  s->next_offset = end;
  if (s->run < opt_.trigger_reads) return;
  const uint64_t cb = opt_.chunk_bytes;
  if (s->window_bytes == 0) {
    s->window_bytes = opt_.window_min_bytes;
    s->ahead_from = s->ahead_until =
        (end + cb - 1) / cb * cb;  // the chunk holding `end` is being fetched
    s->consumed_bytes = 0;
    return;
  }
  // Slow start: every window's worth of sequential demand doubles the window.
  s->consumed_bytes += length;
  if (s->consumed_bytes >= s->window_bytes && s->window_bytes < opt_.window_max_bytes) {
    s->window_bytes = std::min(s->window_bytes * 2, opt_.window_max_bytes);
    s->consumed_bytes = 0;
    ++counters_.window_grows;
  }
  if (s->ahead_until < end) {  // demand overtook the read-ahead (throttled): restart ahead of it
    s->ahead_from = s->ahead_until = (end + cb - 1) / cb * cb;
  }
}

// Issues prefetch reads, one chunk per stream per round, until every stream's window is covered
// or reads_max are in flight.
void ReadAhead::pump() noexcept {
  if (pumping_) return;
  pumping_ = true;
  const uint64_t size = next_.geometry().size_bytes();
  bool progress = true;
  while (progress) {
    progress = false;
    for (Stream& s : streams_) {
      if (!s.live || s.window_bytes == 0) continue;
      const uint64_t target = std::min(size, s.next_offset + s.window_bytes);
      if (s.ahead_until >= target) continue;
      if (free_ops_.empty()) {
        ++counters_.throttled;
        pumping_ = false;
        return;
      }
      Op* op = free_ops_.back();
      free_ops_.pop_back();
      const uint64_t len = std::min<uint64_t>(opt_.chunk_bytes, size - s.ahead_until);
      op->io.op = IoOp::read;
      op->io.priority = IoPriority::prefetch;
      op->io.offset_bytes = s.ahead_until;
      op->io.length_bytes = len;
      op->io.data = op->buf;
      op->io.may_lend = false;
      op->io.lent = nullptr;
      s.ahead_until += len;
      ++in_flight_;
      ++counters_.prefetch_reads;
      counters_.prefetch_bytes += len;
      next_.submit(op->io);  // may complete inline: on_prefetched does not pump while we do
      progress = true;
    }
  }
  pumping_ = false;
}

void ReadAhead::on_prefetched(IoRequest& io) noexcept {
  auto* op = static_cast<Op*>(io.owner);
  ReadAhead& r = *op->owner;
  FERRY_ASSERT(r.in_flight_ > 0);
  --r.in_flight_;
  if (io.result != Errc::ok) ++r.counters_.prefetch_errors;
  r.free_ops_.push_back(op);
  r.pump();
}

}  // namespace ferry::cache
