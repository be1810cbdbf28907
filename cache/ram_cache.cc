// RamCache (see ram_cache.h and cache/DESIGN.md). Runs on its device's one reactor thread.
#include "cache/ram_cache.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <new>

#include "datapath/assert.h"

namespace ferry::cache {

namespace {
bool prefetching(const IoRequest& io) {
  return io.priority == IoPriority::prefetch || io.priority == IoPriority::background;
}
}  // namespace

Result<std::unique_ptr<RamCache>> RamCache::create(BlockDevice& next,
                                                   const RamCacheOptions& o) noexcept {
  const Geometry g = next.geometry();
  if (o.chunk_bytes == 0 || o.chunk_bytes % g.block_size_bytes != 0 || o.fetches_max == 0 ||
      o.writes_max == 0 || o.waiters_max == 0 || o.capacity_bytes / o.chunk_bytes < 2)
    return Errc::invalid_argument;
  std::unique_ptr<RamCache> c(new (std::nothrow) RamCache(next, o));
  if (!c) return Errc::no_memory;
  c->sector_bytes_ = g.block_size_bytes;
  c->sectors_per_chunk_ = o.chunk_bytes / g.block_size_bytes;
  c->words_ = (c->sectors_per_chunk_ + 63) / 64;
  c->slot_count_ = uint32_t(std::min<uint64_t>(o.capacity_bytes / o.chunk_bytes, UINT32_MAX / 2));
  c->active_slots_ = c->slot_count_;
  c->small_target_ = std::max<uint32_t>(1, c->slot_count_ / 10);  // S3-FIFO: small = 10%
  c->data_.reset(new (std::nothrow) std::byte[size_t(c->slot_count_) * o.chunk_bytes]);
  c->fetch_mem_.reset(new (std::nothrow) std::byte[size_t(o.fetches_max) * o.chunk_bytes]);
  if (!c->data_ || !c->fetch_mem_) return Errc::no_memory;
  c->bits_.assign(size_t(c->slot_count_) * c->words_, 0);
  c->slots_.resize(c->slot_count_);
  for (uint32_t s = 0; s < c->slot_count_; ++s) {
    c->slots_[s].waiters.reserve(o.waiters_max);
    c->free_slots_.push_back(c->slot_count_ - 1 - s);
  }
  c->index_.reserve(c->slot_count_);
  c->ghost_.reserve(c->slot_count_);
  c->fetches_.resize(o.fetches_max);
  for (uint32_t i = 0; i < o.fetches_max; ++i) {
    Fetch& f = c->fetches_[i];
    f.cache = c.get();
    f.buf = c->fetch_mem_.get() + size_t(i) * o.chunk_bytes;
    f.woken.reserve(o.waiters_max);
    f.io.owner = &f;
    f.io.on_complete = &RamCache::on_fetched;
    c->free_fetches_.push_back(&f);
  }
  c->writes_.resize(o.writes_max);
  for (auto& w : c->writes_) {
    w.cache = c.get();
    c->free_writes_.push_back(&w);
  }
  c->description_ = "ram-cache:" + std::to_string(o.capacity_bytes >> 20) + "MiB/" +
                    std::to_string(o.chunk_bytes >> 10) + "KiB>" + std::string(next.describe());
  return c;
}

RamCache::RamCache(BlockDevice& next, const RamCacheOptions& o) noexcept : next_(next), opt_(o) {}

// Destroy only when idle or when `next` will never complete again (the daemons destroy their
// caches after the reactor has stopped): an op in flight points into this object.
RamCache::~RamCache() = default;

void RamCache::submit(IoRequest& io) noexcept {
  io.lent = nullptr;
  switch (io.op) {
    case IoOp::read: {
      const Errc e = check_range(next_.geometry(), io.offset_bytes, io.length_bytes);
      if (e != Errc::ok) return io.complete(e);
      if (io.length_bytes == 0) return io.complete(Errc::ok);
      return read(io, true);
    }
    case IoOp::write:
    case IoOp::write_zeroes:
    case IoOp::discard:
      return write_through(io);
    case IoOp::flush:
    case IoOp::block_status:
    case IoOp::access_map:
      return next_.submit(io);  // nothing cached is dirty: flush is next's business alone
  }
}

uint64_t RamCache::chunk_length(uint64_t chunk) const noexcept {
  const uint64_t size = next_.geometry().size_bytes();
  return std::min<uint64_t>(opt_.chunk_bytes, size - chunk * opt_.chunk_bytes);
}

int64_t RamCache::find(uint64_t chunk) const noexcept {
  auto it = index_.find(chunk);
  return it == index_.end() ? -1 : int64_t(it->second);
}

// Serves the read from memory if every sector is valid; else starts fetches for the missing
// chunks and waits on one of them (once: a read that still misses after its wait goes to next).
void RamCache::read(IoRequest& io, bool first) noexcept {
  const uint64_t cb = opt_.chunk_bytes;
  const uint64_t end = io.offset_bytes + io.length_bytes;
  bool all_valid = true;
  const uint64_t head_chunk = io.offset_bytes / cb;
  int64_t head_slot = -1;  // looked up once: most reads lie in one chunk
  for (uint64_t off = io.offset_bytes; off < end;) {
    const uint64_t chunk = off / cb;
    const uint64_t piece_end = std::min(end, (chunk + 1) * cb);
    const int64_t s = find(chunk);
    if (chunk == head_chunk) head_slot = s;
    if (s < 0) {
      all_valid = false;
    } else {
      if (first) note_use(uint32_t(s), io);
      for (uint64_t b = off; b < piece_end && all_valid; b += sector_bytes_)
        all_valid = valid(uint32_t(s), uint32_t((b - chunk * cb) / sector_bytes_));
    }
    off = piece_end;
  }
  if (all_valid) {
    for (uint64_t off = io.offset_bytes; off < end;) {
      const uint64_t chunk = off / cb;
      const uint64_t piece_end = std::min(end, (chunk + 1) * cb);
      const int64_t s = chunk == head_chunk ? head_slot : find(chunk);
      std::memcpy(io.data + (off - io.offset_bytes), slot_data(uint32_t(s)) + (off - chunk * cb),
                  piece_end - off);
      off = piece_end;
    }
    if (first) ++(prefetching(io) ? counters_.prefetch_cached : counters_.hits);
    return io.complete(Errc::ok);
  }
  if (!first) {
    ++counters_.bypassed;  // lost its chunk again while waiting (eviction, discard): go below
    return next_.submit(io);
  }
  ++(prefetching(io) ? counters_.prefetch_misses : counters_.misses);
  // Fetch every missing chunk of the request; wait on the last one that needs fetching.
  int64_t wait_slot = -1;
  const uint64_t first_chunk = io.offset_bytes / cb, last_chunk = (end - 1) / cb;
  if (last_chunk - first_chunk + 1 > slot_count_ / 2) {
    ++counters_.bypassed;  // larger than the cache can hold at once
    return next_.submit(io);
  }
  for (uint64_t chunk = first_chunk; chunk <= last_chunk; ++chunk) {
    int64_t s = find(chunk);
    if (s < 0 && (s = admit(chunk)) >= 0) {
      note_use(uint32_t(s), io);  // the miss is its first use
      if (prefetching(io)) {
        slots_[s].prefetched = true;
        ++counters_.prefetched_chunks;
      }
    }
    if (s < 0) continue;
    Slot& sl = slots_[s];
    if (sl.fetching) {
      wait_slot = s;
      continue;
    }
    const uint32_t n = uint32_t(chunk_length(chunk) / sector_bytes_);
    uint32_t lo = n, hi = 0;
    for (uint32_t i = 0; i < n; ++i)
      if (!valid(uint32_t(s), i)) {
        lo = std::min(lo, i);
        hi = i;
      }
    if (lo == n) continue;
    if (chunk == last_chunk) {
      // Register before submitting: the fetch may complete inside next_.submit().
      sl.waiters.push_back(&io);
      if (start_fetch(uint32_t(s), lo, hi, io.priority)) return;
      sl.waiters.pop_back();
    } else if (start_fetch(uint32_t(s), lo, hi, io.priority)) {
      wait_slot = s;
    }
  }
  if (wait_slot >= 0 && slots_[wait_slot].fetching &&
      slots_[wait_slot].waiters.size() < opt_.waiters_max) {
    slots_[wait_slot].waiters.push_back(&io);
    return;
  }
  // Everything it needed completed inline, or no slot/fetch/waiter room: try once more.
  return read(io, false);
}

// Frequency counts reuse, for S3-FIFO's promotion (cache/DESIGN.md, "Scan resistance"): a
// prefetch is no use; a chunk's first demand read after admission is its first use (also when a
// prefetch brought it in); a read starting where the chunk's previous demand read ended is the
// same sequential pass (a correlated reference), not reuse.
void RamCache::note_use(uint32_t s, const IoRequest& io) noexcept {
  if (prefetching(io)) return;
  Slot& sl = slots_[s];
  if (sl.prefetched) {
    sl.prefetched = false;
    ++counters_.prefetched_chunks_used;
  }
  if (sl.referenced && io.offset_bytes != sl.last_read_end)
    sl.freq = uint8_t(std::min(sl.freq + 1, 3));
  sl.referenced = true;
  sl.last_read_end = io.offset_bytes + io.length_bytes;
}

bool RamCache::start_fetch(uint32_t s, uint32_t lo, uint32_t hi, IoPriority priority) noexcept {
  if (free_fetches_.empty()) return false;
  Fetch* f = free_fetches_.back();
  free_fetches_.pop_back();
  Slot& sl = slots_[s];
  f->slot = s;
  f->epoch = sl.epoch;
  f->first_sector = lo;
  f->io.op = IoOp::read;
  f->io.priority = priority;
  f->io.may_lend = false;
  f->io.lent = nullptr;
  f->io.offset_bytes = sl.chunk * opt_.chunk_bytes + uint64_t(lo) * sector_bytes_;
  f->io.length_bytes = uint64_t(hi - lo + 1) * sector_bytes_;
  f->io.data = f->buf;
  sl.fetching = true;
  ++counters_.fetches;
  counters_.bytes_fetched += f->io.length_bytes;
  if (prefetching(f->io)) counters_.bytes_prefetched += f->io.length_bytes;
  next_.submit(f->io);
  return true;
}

void RamCache::on_fetched(IoRequest& io) noexcept {
  auto* f = static_cast<Fetch*>(io.owner);
  RamCache& c = *f->cache;
  Slot& sl = c.slots_[f->slot];
  FERRY_ASSERT(sl.used && sl.fetching);
  sl.fetching = false;
  // Only sectors still invalid are filled: a write that completed meanwhile is newer. A
  // discard meanwhile (epoch moved) may have dropped sectors this fetch read before it.
  if (io.result == Errc::ok && sl.epoch == f->epoch) {
    const uint32_t n = uint32_t(io.length_bytes / c.sector_bytes_);
    for (uint32_t i = 0; i < n; ++i) {
      const uint32_t sector = f->first_sector + i;
      if (c.valid(f->slot, sector)) continue;
      std::memcpy(c.slot_data(f->slot) + size_t(sector) * c.sector_bytes_,
                  f->buf + size_t(i) * c.sector_bytes_, c.sector_bytes_);
      c.set_valid(f->slot, sector, true);
    }
  }
  f->woken.swap(sl.waiters);  // both keep capacity waiters_max
  const Errc result = io.result;
  for (IoRequest* w : f->woken) {
    if (result != Errc::ok)
      w->complete(result);
    else
      c.read(*w, false);
  }
  f->woken.clear();
  c.free_fetches_.push_back(f);
}

void RamCache::write_through(IoRequest& io) noexcept {
  if (free_writes_.empty()) {
    ++counters_.busy;
    return io.complete(Errc::busy);
  }
  WriteOp* w = free_writes_.back();
  free_writes_.pop_back();
  w->user = &io;
  w->io = IoRequest{};
  w->io.op = io.op;
  w->io.fua = io.fua;
  w->io.epoch_write = io.epoch_write;  // write-back epochs pass through (block_device.h)
  w->io.may_deallocate = io.may_deallocate;
  w->io.priority = io.priority;
  w->io.offset_bytes = io.offset_bytes;
  w->io.length_bytes = io.length_bytes;
  w->io.data = io.data;
  w->io.owner = w;
  w->io.on_complete = &RamCache::on_written;
  next_.submit(w->io);
}

void RamCache::on_written(IoRequest& io) noexcept {
  auto* w = static_cast<WriteOp*>(io.owner);
  RamCache& c = *w->cache;
  IoRequest* user = w->user;
  c.apply_write(io);
  c.free_writes_.push_back(w);
  user->complete(io.result);
}

// After next completed a write: cache its bytes (write-allocate); after a discard, a zeroing
// or a failed write: drop the sectors it covered (their content below is not what we hold).
void RamCache::apply_write(const IoRequest& io) noexcept {
  const Geometry g = next_.geometry();
  if (check_range(g, io.offset_bytes, io.length_bytes) != Errc::ok) return;  // next refused it
  const uint64_t cb = opt_.chunk_bytes;
  const uint64_t end = io.offset_bytes + io.length_bytes;
  const bool keep = io.op == IoOp::write && io.result == Errc::ok;
  for (uint64_t off = io.offset_bytes; off < end;) {
    const uint64_t chunk = off / cb;
    const uint64_t piece_end = std::min(end, (chunk + 1) * cb);
    int64_t s = find(chunk);
    if (s < 0 && keep) s = admit(chunk);
    if (s >= 0) {
      if (!keep) ++slots_[s].epoch;
      for (uint64_t b = off; b < piece_end; b += sector_bytes_) {
        const uint32_t sector = uint32_t((b - chunk * cb) / sector_bytes_);
        if (keep)
          std::memcpy(slot_data(uint32_t(s)) + (b - chunk * cb), io.data + (b - io.offset_bytes),
                      sector_bytes_);
        set_valid(uint32_t(s), sector, keep);
      }
    }
    off = piece_end;
  }
}

int64_t RamCache::admit(uint64_t chunk) noexcept {
  int64_t s;
  if (!free_slots_.empty()) {
    s = free_slots_.back();
    free_slots_.pop_back();
  } else {
    s = evict();
    if (s < 0) return -1;
  }
  Slot& sl = slots_[s];
  sl.chunk = chunk;
  sl.freq = 0;
  sl.referenced = false;
  sl.prefetched = false;
  sl.used = true;
  sl.fetching = false;
  std::fill_n(bits_.begin() + ptrdiff_t(size_t(s) * words_), words_, 0);
  if (ghost_.erase(chunk) != 0) {  // seen recently and evicted from small: straight to main
    sl.in_main = true;
    main_.push_back(uint32_t(s));
  } else {
    sl.in_main = false;
    small_.push_back(uint32_t(s));
  }
  index_.emplace(chunk, uint32_t(s));
  return s;
}

// S3-FIFO: evict from small unless it is under its target; a small chunk read again since it
// came in moves to main instead, a main chunk read again gets another round (freq - 1).
// Chunks with a fetch in flight are skipped (moved to the back).
// A retired slot (above the budget) met here is dropped and not handed out.
int64_t RamCache::evict() noexcept {
  for (size_t tries = 4 * (small_.size() + main_.size()) + 4; tries > 0; --tries) {
    if (!small_.empty() && (small_.size() >= small_target_ || main_.empty())) {
      const uint32_t s = small_.front();
      small_.pop_front();
      Slot& sl = slots_[s];
      if (retired(s) && !sl.fetching) {
        drop(s, false);
      } else if (sl.fetching) {
        small_.push_back(s);
      } else if (sl.freq >= 1) {
        sl.in_main = true;
        sl.freq = 0;
        main_.push_back(s);
      } else {
        ghost_.insert(sl.chunk);
        ghost_order_.push_back(sl.chunk);
        while (ghost_.size() > active_slots_ || ghost_order_.size() > 2 * size_t(active_slots_)) {
          ghost_.erase(ghost_order_.front());
          ghost_order_.pop_front();
        }
        drop(s);
        return s;
      }
    } else if (!main_.empty()) {
      const uint32_t s = main_.front();
      main_.pop_front();
      Slot& sl = slots_[s];
      if (retired(s) && !sl.fetching) {
        drop(s, false);
      } else if (sl.fetching || sl.freq > 0) {
        if (sl.freq > 0) --sl.freq;
        main_.push_back(s);
      } else {
        drop(s);
        return s;
      }
    } else {
      return -1;
    }
  }
  return -1;
}

// Invariant (write-through): no cached sector is dirty; everything valid here is also in next,
// so dropping a chunk loses nothing. Only a chunk with no fetch (and so no waiter) is dropped.
void RamCache::drop(uint32_t s, bool evicted) noexcept {
  Slot& sl = slots_[s];
  FERRY_ASSERT(sl.used && !sl.fetching && sl.waiters.empty());
  index_.erase(sl.chunk);
  sl.used = false;
  ++sl.epoch;
  ++(evicted ? counters_.evictions : counters_.dropped);
}

uint64_t RamCache::set_capacity(uint64_t bytes) noexcept {
  const auto want = uint32_t(std::clamp<uint64_t>(bytes / opt_.chunk_bytes, 2, slot_count_));
  const uint32_t was = active_slots_;
  active_slots_ = want;
  small_target_ = std::max<uint32_t>(1, want / 10);
  if (want < was) {
    // Retire [want, was): idle chunks there go now, fetching ones when evict() meets them.
    const auto leave = [this](uint32_t s) {
      if (!retired(s) || slots_[s].fetching) return false;
      drop(s, false);
      return true;
    };
    small_.erase(std::remove_if(small_.begin(), small_.end(), leave), small_.end());
    main_.erase(std::remove_if(main_.begin(), main_.end(), leave), main_.end());
    free_slots_.erase(std::remove_if(free_slots_.begin(), free_slots_.end(),
                                     [this](uint32_t s) { return retired(s); }),
                      free_slots_.end());
    // Give back the memory of the retired slots that are empty now, run by run (whole pages
    // inside a run only). A slot still fetching keeps its memory: its valid sectors are read
    // when the fetch completes.
    const auto page = uintptr_t(::sysconf(_SC_PAGESIZE));
    for (uint32_t s = want; s < was;) {
      if (slots_[s].used) {
        ++s;
        continue;
      }
      uint32_t e = s;
      while (e < was && !slots_[e].used) ++e;
      const auto first = (uintptr_t(slot_data(s)) + page - 1) & ~(page - 1);
      const auto last = uintptr_t(slot_data(e - 1) + opt_.chunk_bytes) & ~(page - 1);
      if (last > first)
        (void)::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
      s = e;
    }
  } else {
    for (uint32_t s = was; s < want; ++s)
      if (!slots_[s].used) free_slots_.push_back(s);
  }
  while (ghost_.size() > active_slots_ && !ghost_order_.empty()) {
    ghost_.erase(ghost_order_.front());
    ghost_order_.pop_front();
  }
  return capacity_bytes();
}

uint32_t RamCache::drop_clean() noexcept {
  uint32_t n = 0;
  const auto leave = [this, &n](uint32_t s) {
    if (slots_[s].fetching) return false;
    drop(s, false);
    ++n;
    if (!retired(s)) free_slots_.push_back(s);
    return true;
  };
  small_.erase(std::remove_if(small_.begin(), small_.end(), leave), small_.end());
  main_.erase(std::remove_if(main_.begin(), main_.end(), leave), main_.end());
  return n;
}

}  // namespace ferry::cache
