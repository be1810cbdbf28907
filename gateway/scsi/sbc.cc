// SBC-3 block commands of LogicalUnit: READ/WRITE (6/10/12/16), WRITE AND VERIFY, VERIFY,
// WRITE SAME, UNMAP, GET LBA STATUS, COMPARE AND WRITE, SYNCHRONIZE CACHE, PRE-FETCH.
// Threading: see logical_unit.h. Multi-step commands chain task.io completions; the completion
// finds its unit in task.lu, its progress in task.progress (one typed alternative per command,
// task.h) and its scratch memory in task.lu_buffer (from task.pool). READ/WRITE take no lock and
// allocate nothing.
#include <algorithm>
#include <cstring>

#include "datapath/endian.h"
#include "gateway/scsi/logical_unit.h"

namespace ferry::scsi {
namespace {

ScsiTask& task_of(IoRequest& io) noexcept { return *static_cast<ScsiTask*>(io.owner); }

// A step of a multi-step command failed: its scratch buffer goes back, the error is answered.
void fail_io(ScsiTask& t, Errc e) noexcept {
  t.lu_buffer.release();
  set_error(t, e);
  t.on_complete(t);
}

// The progress of the command the task runs; that it is this command's is an invariant.
template <class Progress>
Progress& progress_of(ScsiTask& t) noexcept {
  Progress* p = std::get_if<Progress>(&t.progress);
  FERRY_ASSERT(p != nullptr);
  return *p;
}

uint16_t tl_field(uint8_t opcode) noexcept {
  switch (cdb_length(opcode)) {
    case 6:
      return 4;
    case 10:
      return 7;
    case 12:
      return 6;
    default:
      return 10;
  }
}

Sense lba_out_of_range() noexcept { return illegal_request(kLbaOutOfRange); }

Sense write_protected() noexcept {
  Sense s;
  s.key = SenseKey::data_protect;
  s.asc = kWriteProtected;
  return s;
}

Sense miscompare_at(uint64_t offset) noexcept {
  Sense s;
  s.key = SenseKey::miscompare;
  s.asc = kMiscompareDuringVerify;
  s.info_valid = true;
  s.information = static_cast<uint32_t>(offset);
  return s;
}

void set_busy(ScsiTask& t) noexcept {
  t.status = Status::busy;
  t.sense_bytes = 0;
}

// Offset of the first differing byte, or -1.
int64_t first_difference(const std::byte* a, const std::byte* b, size_t n) noexcept {
  if (std::memcmp(a, b, n) == 0) return -1;
  for (size_t i = 0; i < n; ++i) {
    if (a[i] != b[i]) return static_cast<int64_t>(i);
  }
  return -1;
}

void start_io(ScsiTask& t, IoOp op, uint64_t offset, uint64_t length, std::byte* data,
              IoCallback cb) noexcept {
  IoRequest& io = t.io;
  io.op = op;
  io.fua = false;
  io.may_deallocate = false;
  io.offset_bytes = offset;
  io.length_bytes = length;
  io.data = data;
  io.status_length_bytes = 0;
  io.status_flags = 0;
  io.result = Errc::ok;
  io.on_complete = cb;
  io.owner = &t;
}

}  // namespace

bool LogicalUnit::range_ok(uint64_t lba, uint64_t blocks) const noexcept {
  return lba <= geometry_.block_count && blocks <= geometry_.block_count - lba;
}

void LogicalUnit::on_simple_io(IoRequest& io) noexcept {
  ScsiTask& t = task_of(io);
  if (io.result != Errc::ok) set_error(t, io.result);
  complete(t);
}

// ---- READ / WRITE / WRITE AND VERIFY ----

void LogicalUnit::read_write(ScsiTask& t, const CommandSpec& spec) noexcept {
  const BlockCdb b = decode_block_cdb(t.cdb);
  const bool is_write = spec.access == Access::write;
  const uint32_t bs = geometry_.block_size_bytes;
  if (is_write && geometry_.read_only) return fail(t, write_protected());
  if (!range_ok(b.lba, b.transfer_length)) return fail(t, lba_out_of_range());
  if (b.transfer_length > max_transfer_blocks_) {
    return fail(t, invalid_field_in_cdb(tl_field(t.cdb[0])));
  }
  const uint64_t bytes = uint64_t{b.transfer_length} * bs;
  t.command_transfer_bytes = static_cast<uint32_t>(std::min<uint64_t>(bytes, UINT32_MAX));
  t.data_in = !is_write;
  if (b.transfer_length == 0) return complete(t);
  // Move only what the transport carries (residual over/underflow is the transport's).
  uint64_t blocks;
  if (is_write) {
    blocks = std::min<uint64_t>(b.transfer_length, t.expected_transfer_bytes / bs);
  } else {
    blocks =
        std::min<uint64_t>(b.transfer_length, (uint64_t{t.expected_transfer_bytes} + bs - 1) / bs);
    if (blocks * bs > t.data.capacity()) blocks = t.data.capacity() / bs;
  }
  if (blocks == 0) return complete(t);
  if (is_write && caw_in_flight_.load(std::memory_order_acquire) != 0 &&
      caw_overlaps(b.lba, blocks)) {
    set_busy(t);
    return complete(t);
  }
  start_io(t, is_write ? IoOp::write : IoOp::read, b.lba * bs, blocks * bs, t.data.data(),
           &LogicalUnit::on_simple_io);
  if (is_write) {
    const bool write_verify = spec.cmd == Cmd::write_verify10 || spec.cmd == Cmd::write_verify12 ||
                              spec.cmd == Cmd::write_verify16;
    t.io.fua = b.fua || write_verify ||
               (geometry_.volatile_cache && !wce_.load(std::memory_order_relaxed));
  }
  device_.submit(t.io);
}

// ---- VERIFY ----

void LogicalUnit::verify(ScsiTask& t, const CommandSpec&) noexcept {
  const BlockCdb b = decode_block_cdb(t.cdb);
  const uint32_t bs = geometry_.block_size_bytes;
  if (b.bytchk == 2) return fail(t, invalid_field_in_cdb(1, 2));
  if (!range_ok(b.lba, b.transfer_length)) return fail(t, lba_out_of_range());
  if (b.transfer_length > max_transfer_blocks_) {
    return fail(t, invalid_field_in_cdb(tl_field(t.cdb[0])));
  }
  if (b.bytchk == 0 || b.transfer_length == 0) return complete(t);  // medium check: nothing to do
  uint64_t compare_blocks = b.transfer_length;
  if (b.bytchk == 1) {
    t.command_transfer_bytes = b.transfer_length * bs;
    compare_blocks = std::min<uint64_t>(compare_blocks, t.expected_transfer_bytes / bs);
  } else {
    t.command_transfer_bytes = bs;
    if (t.expected_transfer_bytes < bs) compare_blocks = 0;
  }
  if (compare_blocks == 0) return complete(t);
  if (t.pool == nullptr) return set_busy(t), complete(t);
  const size_t chunk = std::min<uint64_t>(compare_blocks * bs, std::max<size_t>(kScratchBytes, bs));
  t.lu_buffer = t.pool->allocate(chunk);
  if (!t.lu_buffer) return set_busy(t), complete(t);
  set_progress(t, VerifyProgress{b.bytchk, 0, compare_blocks});
  verify_next(t);
}

void LogicalUnit::verify_next(ScsiTask& t) noexcept {
  const uint32_t bs = geometry_.block_size_bytes;
  const VerifyProgress& v = progress_of<VerifyProgress>(t);
  const uint64_t done = v.done_blocks;
  const uint64_t left = v.total_blocks - done;
  if (left == 0) {
    t.lu_buffer.release();
    return complete(t);
  }
  const uint64_t n = std::min<uint64_t>(left, t.lu_buffer.capacity() / bs);
  const uint64_t lba = decode_block_cdb(t.cdb).lba + done;
  start_io(t, IoOp::read, lba * bs, n * bs, t.lu_buffer.data(), &LogicalUnit::on_verify_io);
  device_.submit(t.io);
}

void LogicalUnit::on_verify_io(IoRequest& io) noexcept {
  ScsiTask& t = task_of(io);
  LogicalUnit* lu = t.lu;
  VerifyProgress& v = progress_of<VerifyProgress>(t);
  const uint32_t bs = lu->geometry_.block_size_bytes;
  if (io.result != Errc::ok) return fail_io(t, io.result);
  const uint64_t done = v.done_blocks;
  const uint64_t n = io.length_bytes / bs;
  for (uint64_t i = 0; i < n; ++i) {
    const std::byte* expect = v.bytchk == 3 ? t.data.data() : t.data.data() + (done + i) * bs;
    const int64_t d = first_difference(t.lu_buffer.data() + i * bs, expect, bs);
    if (d >= 0) {
      t.lu_buffer.release();
      return fail(t, miscompare_at((done + i) * bs + static_cast<uint64_t>(d)));
    }
  }
  v.done_blocks = done + n;
  lu->verify_next(t);
}

// ---- WRITE SAME ----

void LogicalUnit::write_same(ScsiTask& t, const CommandSpec&) noexcept {
  const BlockCdb b = decode_block_cdb(t.cdb);
  const uint32_t bs = geometry_.block_size_bytes;
  if (geometry_.read_only) return fail(t, write_protected());
  if (!range_ok(b.lba, b.transfer_length) || b.lba >= geometry_.block_count) {
    return fail(t, lba_out_of_range());
  }
  if (b.transfer_length == 0) return fail(t, invalid_field_in_cdb(tl_field(t.cdb[0])));  // WSNZ
  if (b.transfer_length > kMaxWriteSameBlocks) {
    return fail(t, invalid_field_in_cdb(tl_field(t.cdb[0])));
  }
  t.command_transfer_bytes = b.ndob ? 0 : bs;
  if (!b.ndob && t.expected_transfer_bytes < bs) return complete(t);  // nothing received
  bool zero = b.ndob;
  if (!zero) {
    const auto* p = reinterpret_cast<const uint8_t*>(t.data.data());
    zero = p[0] == 0 && std::memcmp(p, p + 1, bs - 1) == 0;
  }
  if (caw_in_flight_.load(std::memory_order_acquire) != 0 &&
      caw_overlaps(b.lba, b.transfer_length)) {
    set_busy(t);
    return complete(t);
  }
  const bool fua = geometry_.volatile_cache && !wce_.load(std::memory_order_relaxed);
  if (zero) {
    start_io(t, IoOp::write_zeroes, b.lba * bs, uint64_t{b.transfer_length} * bs, nullptr,
             &LogicalUnit::on_simple_io);
    t.io.may_deallocate = b.unmap && geometry_.can_discard;
    t.io.fua = fua;
    return device_.submit(t.io);
  }
  if (t.pool == nullptr) return set_busy(t), complete(t);
  const uint64_t total = uint64_t{b.transfer_length} * bs;
  const size_t chunk = std::max<size_t>(bs, std::min<uint64_t>(total, kScratchBytes) / bs * bs);
  t.lu_buffer = t.pool->allocate(chunk);
  if (!t.lu_buffer) return set_busy(t), complete(t);
  for (size_t off = 0; off < chunk; off += bs) {
    std::memcpy(t.lu_buffer.data() + off, t.data.data(), bs);
  }
  set_progress(t, WriteSameProgress{chunk / bs, 0, b.transfer_length});
  write_same_next(t);
}

void LogicalUnit::write_same_next(ScsiTask& t) noexcept {
  const uint32_t bs = geometry_.block_size_bytes;
  const WriteSameProgress& w = progress_of<WriteSameProgress>(t);
  const uint64_t done = w.done_blocks;
  const uint64_t left = w.total_blocks - done;
  if (left == 0) {
    t.lu_buffer.release();
    return complete(t);
  }
  const uint64_t n = std::min<uint64_t>(left, w.chunk_blocks);
  const uint64_t lba = decode_block_cdb(t.cdb).lba + done;
  start_io(t, IoOp::write, lba * bs, n * bs, t.lu_buffer.data(), &LogicalUnit::on_write_same_io);
  t.io.fua = geometry_.volatile_cache && !wce_.load(std::memory_order_relaxed);
  device_.submit(t.io);
}

void LogicalUnit::on_write_same_io(IoRequest& io) noexcept {
  ScsiTask& t = task_of(io);
  LogicalUnit* lu = t.lu;
  if (io.result != Errc::ok) return fail_io(t, io.result);
  progress_of<WriteSameProgress>(t).done_blocks += io.length_bytes / lu->geometry_.block_size_bytes;
  lu->write_same_next(t);
}

// ---- UNMAP ----

void LogicalUnit::unmap(ScsiTask& t) noexcept {
  if (!geometry_.can_discard) return fail(t, illegal_request(kInvalidOpcode));
  if (geometry_.read_only) return fail(t, write_protected());
  const uint32_t len = load_be16(t.cdb + 7);
  t.command_transfer_bytes = len;
  if (len == 0) return complete(t);
  const size_t avail = std::min<size_t>({len, t.expected_transfer_bytes, t.data.capacity()});
  if (len < 8 || avail < 8) return fail(t, illegal_request(kParameterListLengthError));
  const auto* p = reinterpret_cast<const uint8_t*>(t.data.data());
  const uint16_t data_len = load_be16(p);
  const uint16_t desc_len = load_be16(p + 2);
  if (data_len != 0 && data_len + 2u > avail) {
    return fail(t, illegal_request(kParameterListLengthError));
  }
  const size_t count = std::min<size_t>(desc_len, avail - 8) / 16;
  if (count > kMaxUnmapDescriptors) return fail(t, invalid_field_in_parameters(2));
  for (size_t i = 0; i < count; ++i) {
    const uint8_t* d = p + 8 + 16 * i;
    const uint64_t lba = load_be64(d);
    const uint32_t blocks = load_be32(d + 8);
    if (!range_ok(lba, blocks)) return fail(t, lba_out_of_range());
    if (blocks > kMaxUnmapLbaCount) {
      return fail(t, invalid_field_in_parameters(static_cast<uint16_t>(8 + 16 * i + 8)));
    }
  }
  set_progress(t, UnmapProgress{0, count});
  unmap_next(t);
}

void LogicalUnit::unmap_next(ScsiTask& t) noexcept {
  const uint32_t bs = geometry_.block_size_bytes;
  const auto* p = reinterpret_cast<const uint8_t*>(t.data.data());
  UnmapProgress& u = progress_of<UnmapProgress>(t);
  while (u.next_descriptor < u.descriptor_count) {
    const uint8_t* d = p + 8 + 16 * u.next_descriptor;
    const uint64_t lba = load_be64(d);
    const uint32_t blocks = load_be32(d + 8);
    if (blocks == 0) {
      ++u.next_descriptor;
      continue;
    }
    if (caw_in_flight_.load(std::memory_order_acquire) != 0 && caw_overlaps(lba, blocks)) {
      set_busy(t);
      return complete(t);
    }
    start_io(t, IoOp::discard, lba * bs, uint64_t{blocks} * bs, nullptr, &LogicalUnit::on_unmap_io);
    return device_.submit(t.io);
  }
  complete(t);
}

void LogicalUnit::on_unmap_io(IoRequest& io) noexcept {
  ScsiTask& t = task_of(io);
  if (io.result != Errc::ok) {
    set_error(t, io.result);
    return complete(t);
  }
  ++progress_of<UnmapProgress>(t).next_descriptor;
  t.lu->unmap_next(t);
}

// ---- GET LBA STATUS ----

void LogicalUnit::get_lba_status(ScsiTask& t) noexcept {
  const uint64_t lba = load_be64(t.cdb + 2);
  if (lba >= geometry_.block_count) return fail(t, lba_out_of_range());
  if (t.pool == nullptr) return set_busy(t), complete(t);
  t.lu_buffer = t.pool->allocate(8 + 16 * kMaxLbaStatusDescriptors);
  if (!t.lu_buffer) return set_busy(t), complete(t);
  std::memset(t.lu_buffer.data(), 0, 8);
  set_progress(t, LbaStatusProgress{lba, 0});
  lba_status_next(t);
}

void LogicalUnit::lba_status_next(ScsiTask& t) noexcept {
  const uint32_t bs = geometry_.block_size_bytes;
  const LbaStatusProgress& st = progress_of<LbaStatusProgress>(t);
  const uint64_t next = st.next_lba;
  const uint64_t ndesc = st.descriptor_count;
  const uint32_t alloc = load_be32(t.cdb + 10);
  const uint64_t want =
      std::clamp<uint64_t>(alloc > 8 ? (alloc - 8) / 16 : 1, 1, kMaxLbaStatusDescriptors);
  if (next >= geometry_.block_count || ndesc >= want) {
    auto* out = reinterpret_cast<uint8_t*>(t.lu_buffer.data());
    store_be32(out, static_cast<uint32_t>(4 + 16 * ndesc));
    const size_t n = 8 + 16 * ndesc;
    const size_t copy = std::min<size_t>({n, alloc, t.expected_transfer_bytes, t.data.capacity()});
    if (copy > 0) std::memcpy(t.data.data(), out, copy);
    t.lu_buffer.release();
    t.data_in = true;
    t.command_transfer_bytes = static_cast<uint32_t>(std::min<size_t>(n, alloc));
    return complete(t);
  }
  const uint64_t blocks = std::min<uint64_t>(geometry_.block_count - next, 0xffffffffull);
  start_io(t, IoOp::block_status, next * bs, blocks * bs, nullptr, &LogicalUnit::on_lba_status_io);
  device_.submit(t.io);
}

void LogicalUnit::on_lba_status_io(IoRequest& io) noexcept {
  ScsiTask& t = task_of(io);
  LogicalUnit* lu = t.lu;
  LbaStatusProgress& st = progress_of<LbaStatusProgress>(t);
  const uint32_t bs = lu->geometry_.block_size_bytes;
  if (io.result != Errc::ok) return fail_io(t, io.result);
  uint64_t blocks = std::max<uint64_t>(1, io.status_length_bytes / bs);
  blocks = std::min<uint64_t>(blocks, lu->geometry_.block_count - st.next_lba);
  const uint8_t status = (io.status_flags & kStatusHole) ? 1 : 0;  // deallocated : mapped
  auto* out = reinterpret_cast<uint8_t*>(t.lu_buffer.data());
  uint64_t& ndesc = st.descriptor_count;
  uint8_t* prev = ndesc > 0 ? out + 8 + 16 * (ndesc - 1) : nullptr;
  if (prev != nullptr && prev[12] == status &&
      load_be64(prev) + load_be32(prev + 8) == st.next_lba &&
      uint64_t{load_be32(prev + 8)} + blocks <= 0xffffffffull) {
    store_be32(prev + 8, static_cast<uint32_t>(load_be32(prev + 8) + blocks));
  } else {
    uint8_t* d = out + 8 + 16 * ndesc;
    std::memset(d, 0, 16);
    store_be64(d, st.next_lba);
    store_be32(d + 8, static_cast<uint32_t>(blocks));
    d[12] = status;
    ++ndesc;
  }
  st.next_lba += blocks;
  lu->lba_status_next(t);
}

// ---- COMPARE AND WRITE ----

bool LogicalUnit::caw_overlaps(uint64_t lba, uint64_t blocks) noexcept {
  std::lock_guard lock(mu_);
  for (const CawRange& r : caw_ranges_) {
    if (lba < r.lba + r.blocks && r.lba < lba + blocks) return true;
  }
  return false;
}

bool LogicalUnit::caw_lock(uint64_t lba, uint64_t blocks) noexcept {
  std::lock_guard lock(mu_);
  for (const CawRange& r : caw_ranges_) {
    if (lba < r.lba + r.blocks && r.lba < lba + blocks) return false;
  }
  caw_ranges_.push_back(CawRange{lba, blocks});
  caw_in_flight_.fetch_add(1, std::memory_order_acq_rel);
  return true;
}

void LogicalUnit::caw_unlock(uint64_t lba, uint64_t blocks) noexcept {
  std::lock_guard lock(mu_);
  for (auto it = caw_ranges_.begin(); it != caw_ranges_.end(); ++it) {
    if (it->lba == lba && it->blocks == blocks) {
      caw_ranges_.erase(it);
      caw_in_flight_.fetch_sub(1, std::memory_order_acq_rel);
      return;
    }
  }
  FERRY_ASSERT(false);
}

void LogicalUnit::compare_and_write(ScsiTask& t) noexcept {
  const BlockCdb b = decode_block_cdb(t.cdb);
  const uint32_t bs = geometry_.block_size_bytes;
  if (geometry_.read_only) return fail(t, write_protected());
  if (b.transfer_length == 0) {
    // NUMBER OF LOGICAL BLOCKS is one byte: an initiator asking for 256 blocks sends 0 with a
    // 2*256-block data-out; refuse the mismatch rather than silently doing nothing.
    if (t.expected_transfer_bytes != 0) return fail(t, invalid_field_in_cdb(13));
    return complete(t);
  }
  if (b.transfer_length > std::min<uint32_t>(kMaxCawBlocks, max_transfer_blocks_)) {
    return fail(t, invalid_field_in_cdb(13));
  }
  if (!range_ok(b.lba, b.transfer_length)) return fail(t, lba_out_of_range());
  const uint64_t half = uint64_t{b.transfer_length} * bs;
  t.command_transfer_bytes = static_cast<uint32_t>(2 * half);
  if (t.expected_transfer_bytes != 2 * half) return fail(t, invalid_field_in_cdb(13));
  if (t.pool == nullptr) return set_busy(t), complete(t);
  t.lu_buffer = t.pool->allocate(half);
  if (!t.lu_buffer) return set_busy(t), complete(t);
  if (!caw_lock(b.lba, b.transfer_length)) {
    t.lu_buffer.release();
    return set_busy(t), complete(t);
  }
  set_progress(t, CompareAndWriteProgress{CompareAndWriteProgress::Phase::read});
  start_io(t, IoOp::read, b.lba * bs, half, t.lu_buffer.data(), &LogicalUnit::on_caw_io);
  device_.submit(t.io);
}

void LogicalUnit::on_caw_io(IoRequest& io) noexcept {
  ScsiTask& t = task_of(io);
  LogicalUnit* lu = t.lu;
  CompareAndWriteProgress& caw = progress_of<CompareAndWriteProgress>(t);
  const BlockCdb b = decode_block_cdb(t.cdb);
  const uint64_t half = uint64_t{b.transfer_length} * lu->geometry_.block_size_bytes;
  auto finish = [&](const Sense* s) {
    t.lu_buffer.release();
    lu->caw_unlock(b.lba, b.transfer_length);
    if (s != nullptr) set_check_condition(t, *s);
    complete(t);
  };
  if (io.result != Errc::ok) {
    const ErrorReply r = to_sense(io.result);
    if (r.status != Status::check_condition) {
      t.lu_buffer.release();
      lu->caw_unlock(b.lba, b.transfer_length);
      t.status = r.status;
      return complete(t);
    }
    return finish(&r.sense);
  }
  if (caw.phase == CompareAndWriteProgress::Phase::read) {
    const int64_t d = first_difference(t.lu_buffer.data(), t.data.data(), half);
    if (d >= 0) {
      const Sense s = miscompare_at(static_cast<uint64_t>(d));
      return finish(&s);
    }
    caw.phase = CompareAndWriteProgress::Phase::write;
    start_io(t, IoOp::write, b.lba * lu->geometry_.block_size_bytes, half, t.data.data() + half,
             &LogicalUnit::on_caw_io);
    t.io.fua = b.fua || (lu->geometry_.volatile_cache && !lu->wce_.load(std::memory_order_relaxed));
    return lu->device_.submit(t.io);
  }
  finish(nullptr);
}

// ---- SYNCHRONIZE CACHE / PRE-FETCH ----

void LogicalUnit::sync_cache(ScsiTask& t, const CommandSpec&) noexcept {
  const BlockCdb b = decode_block_cdb(t.cdb);
  if (!range_ok(b.lba, b.transfer_length)) return fail(t, lba_out_of_range());
  start_io(t, IoOp::flush, 0, 0, nullptr, &LogicalUnit::on_simple_io);
  device_.submit(t.io);
}

void LogicalUnit::prefetch(ScsiTask& t, const CommandSpec&) noexcept {
  const BlockCdb b = decode_block_cdb(t.cdb);
  if (!range_ok(b.lba, b.transfer_length)) return fail(t, lba_out_of_range());
  complete(t);  // the cache tiers prefetch on their own; nothing to promise
}

}  // namespace ferry::scsi
