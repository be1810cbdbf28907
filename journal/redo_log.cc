// RedoLogDevice implementation (see redo_log.h, journal/DESIGN.md "Epochs", journal/FORMAT.md
// "Redo log"). Reactor thread only, except open() (start-up, synchronous pread/pwrite).
#include "journal/redo_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <random>

#include "datapath/assert.h"
#include "datapath/wan/frame.h"
#include "journal/log_file.h"

namespace ferry::journal {

static_assert(std::endian::native == std::endian::little, "FORMAT.md fields are little-endian");

namespace {

constexpr uint64_t kBlock = 4096;
constexpr uint64_t kSuperMagic = 0x4253525952524546ull;  // "FERRYRSB"
constexpr uint32_t kRecordMagic = 0x4f445246u;           // "FRDO"
constexpr uint32_t kVersion = 1;
constexpr size_t kSuperCrcOffset = 88;
constexpr size_t kRecordCrcOffset = 56;
constexpr uint64_t kRecordDataMax = 1u << 20;  // FORMAT.md bound on a write record's data

template <class T>
void put(std::byte* p, size_t off, T v) noexcept {
  std::memcpy(p + off, &v, sizeof v);
}
template <class T>
T get(const std::byte* p, size_t off) noexcept {
  T v;
  std::memcpy(&v, p + off, sizeof v);
  return v;
}
uint32_t crc(const std::byte* p, size_t n, uint32_t prev = 0) noexcept {
  return wan::crc32c({reinterpret_cast<const uint8_t*>(p), n}, prev);
}
uint64_t blocks_for(uint64_t bytes) noexcept { return (bytes + kBlock - 1) / kBlock; }

bool pread_all(int fd, std::byte* p, size_t n, uint64_t off) noexcept {
  while (n > 0) {
    ssize_t r = ::pread(fd, p, n, off_t(off));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= size_t(r);
    off += uint64_t(r);
  }
  return true;
}

bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) noexcept {
  return a < b + blen && b < a + alen;
}

}  // namespace

struct RedoLogDevice::LogOp {
  RedoLogDevice* dev = nullptr;
  IoRequest io;
  Buffer buf;
  IoRequest* user = nullptr;  // nullptr: a wrap marker
  uint64_t length = 0;        // user bytes counted into the open epoch
  uint32_t attempt = 0;
  Timer timer;
};

struct RedoLogDevice::ApplyOp {
  RedoLogDevice* dev = nullptr;
  IoRequest io;
  Buffer buf;
  uint64_t seq = 0;  // 0: free
  bool writing = false;
  uint32_t attempt = 0;
  Timer timer;
};

RedoLogDevice::RedoLogDevice(BlockDevice& next, const RedoLogOptions& o) noexcept
    : next_(next),
      opt_(o),
      pool_(uint64_t(o.log_ops_max) * std::bit_ceil(uint64_t(o.record_data_bytes_max) + kBlock) +
            uint64_t(o.apply_ops_max) * std::bit_ceil(uint64_t(o.record_data_bytes_max)) +
            std::bit_ceil(kRecordDataMax + kBlock) + 8 * kBlock) {}

RedoLogDevice::~RedoLogDevice() {
  Reactor* r = reactor_;
  if (!r) return;
  if (cycle_timer_.armed()) r->cancel(cycle_timer_);
  for (uint32_t i = 0; log_ops_ && i < opt_.log_ops_max; ++i)
    if (log_ops_[i].timer.armed()) r->cancel(log_ops_[i].timer);
  for (uint32_t i = 0; apply_ops_ && i < opt_.apply_ops_max; ++i)
    if (apply_ops_[i].timer.armed()) r->cancel(apply_ops_[i].timer);
}

Result<std::unique_ptr<RedoLogDevice>> RedoLogDevice::open(BlockDevice& next,
                                                           const RedoLogOptions& options) noexcept {
  const RedoLogOptions& o = options;
  if (o.path.empty() || o.log_ops_max == 0 || o.apply_ops_max == 0 || o.waiters_max == 0 ||
      o.held_max == 0 || o.record_data_bytes_max < kBlock ||
      o.record_data_bytes_max > kRecordDataMax || o.record_data_bytes_max % 512 != 0)
    return Errc::invalid_argument;
  std::unique_ptr<RedoLogDevice> d(new (std::nothrow) RedoLogDevice(next, o));
  if (!d) return Errc::no_memory;
  Result<void> r = d->format_or_scan();
  if (!r.ok()) return r.error();
  return d;
}

void RedoLogDevice::encode_superblock(std::byte* b, uint64_t tail_seq, uint64_t tail_pos) noexcept {
  // Encodes generation sb_gen_ + 1; the caller adopts it once the write is durable.
  std::memset(b, 0, kBlock);
  put<uint64_t>(b, 0, kSuperMagic);
  put<uint32_t>(b, 8, kVersion);
  put<uint32_t>(b, 12, uint32_t(kBlock));
  put<uint64_t>(b, 16, log_bytes_);
  put<uint64_t>(b, 24, geometry_.size_bytes());
  put<uint64_t>(b, 32, nonce_);
  put<uint64_t>(b, 40, sb_gen_ + 1);
  put<uint64_t>(b, 48, boot_gen_);
  put<uint64_t>(b, 56, tail_seq);
  put<uint64_t>(b, 64, tail_pos);
  put<uint64_t>(b, 72, last_stream_);
  put<uint64_t>(b, 80, last_epoch_);
  put<uint32_t>(b, kSuperCrcOffset, crc(b, kSuperCrcOffset));
}

void RedoLogDevice::encode_record(std::byte* h, Type type, uint64_t offset, uint64_t length,
                                  const std::byte* data) noexcept {
  std::memset(h, 0, kBlock);
  put<uint32_t>(h, 0, kRecordMagic);
  put<uint16_t>(h, 4, uint16_t(kVersion));
  put<uint16_t>(h, 6, uint16_t(type));
  put<uint64_t>(h, 8, nonce_);
  put<uint64_t>(h, 16, boot_gen_);
  put<uint64_t>(h, 24, next_seq_);
  put<uint64_t>(h, 32, open_serial_);
  put<uint64_t>(h, 40, offset);
  put<uint64_t>(h, 48, length);
  const uint64_t data_bytes = type == Type::write ? length : 0;
  if (data_bytes) {
    std::memcpy(h + kBlock, data, data_bytes);
    const uint64_t pad = blocks_for(data_bytes) * kBlock - data_bytes;
    if (pad) std::memset(h + kBlock + data_bytes, 0, pad);
  }
  put<uint32_t>(h, kRecordCrcOffset, crc(h + kBlock, data_bytes, crc(h, kRecordCrcOffset)));
}

Result<void> RedoLogDevice::format_or_scan() noexcept {
  geometry_ = next_.geometry();
  geometry_.max_transfer_bytes = std::min(geometry_.max_transfer_bytes, opt_.record_data_bytes_max);
  const uint64_t size = opt_.size_bytes - opt_.size_bytes % kBlock;
  auto created = create_or_open_log_file("redo log", opt_.path, size,
                                         2 * kBlock + 4 * (kBlock + opt_.record_data_bytes_max));
  if (!created.ok()) return created.error();
  const bool fresh = created.value();
  FileDeviceOptions fo;
  fo.block_size_bytes = 512;
  auto f = FileDevice::open(opt_.path, fo);
  if (!f.ok()) return f.error();
  file_ = std::move(f).value();
  const int fd = file_->fd();
  const uint64_t file_bytes =
      file_->geometry().size_bytes() - file_->geometry().size_bytes() % kBlock;

  sb_buf_ = pool_.allocate(kBlock);
  commit_buf_ = pool_.allocate(kBlock);
  Buffer scan = pool_.allocate(kRecordDataMax + kBlock);
  if (!sb_buf_ || !commit_buf_ || !scan) return Errc::no_memory;

  // Superblock: the valid slot with the higher generation.
  struct Super {
    bool valid = false, magic = false;
    uint64_t log_bytes, volume_bytes, nonce, sb_gen, boot_gen, tail_seq, tail_pos, last_stream,
        last_epoch;
  } s[2];
  for (int i = 0; i < 2; ++i) {
    std::byte* b = sb_buf_.data();
    if (!pread_all(fd, b, kBlock, uint64_t(i) * kBlock)) return Errc::io_error;
    s[i].magic = get<uint64_t>(b, 0) == kSuperMagic;
    s[i].valid = s[i].magic && get<uint32_t>(b, 8) == kVersion && get<uint32_t>(b, 12) == kBlock &&
                 crc(b, kSuperCrcOffset) == get<uint32_t>(b, kSuperCrcOffset);
    if (!s[i].valid) continue;
    s[i].log_bytes = get<uint64_t>(b, 16);
    s[i].volume_bytes = get<uint64_t>(b, 24);
    s[i].nonce = get<uint64_t>(b, 32);
    s[i].sb_gen = get<uint64_t>(b, 40);
    s[i].boot_gen = get<uint64_t>(b, 48);
    s[i].tail_seq = get<uint64_t>(b, 56);
    s[i].tail_pos = get<uint64_t>(b, 64);
    s[i].last_stream = get<uint64_t>(b, 72);
    s[i].last_epoch = get<uint64_t>(b, 80);
  }
  int pick = -1;
  if (s[0].valid && s[1].valid)
    pick = s[1].sb_gen > s[0].sb_gen ? 1 : 0;
  else if (s[0].valid)
    pick = 0;
  else if (s[1].valid)
    pick = 1;
  const bool formatting = pick < 0;
  ring_start_ = 2 * kBlock;
  if (formatting) {
    if (!fresh && (s[0].magic || s[1].magic)) {
      std::fprintf(stderr,
                   "ferry: redo log %s: both superblocks are corrupt; refusing to format over it\n",
                   opt_.path.c_str());
      return Errc::io_error;
    }
    log_bytes_ = file_bytes;
    std::random_device rd;
    nonce_ = (uint64_t(rd()) << 32) ^ rd() ^ uint64_t(Reactor::now_ns_fresh());
    tail_seq_ = next_seq_ = 1;
    tail_pos_ = head_pos_ = ring_start_;
  } else {
    const Super& sb = s[pick];
    if (sb.volume_bytes != geometry_.size_bytes()) {
      std::fprintf(stderr,
                   "ferry: redo log %s belongs to a volume of %" PRIu64
                   " bytes, this one has %" PRIu64 "\n",
                   opt_.path.c_str(), sb.volume_bytes, geometry_.size_bytes());
      return Errc::invalid_argument;
    }
    if (sb.log_bytes > file_bytes || sb.log_bytes < ring_start_ + 8 * kBlock) return Errc::io_error;
    log_bytes_ = sb.log_bytes;
    nonce_ = sb.nonce;
    sb_gen_ = sb.sb_gen;
    boot_gen_ = sb.boot_gen;
    last_stream_ = sb.last_stream;
    last_epoch_ = sb.last_epoch;
    tail_seq_ = next_seq_ = sb.tail_seq;
    tail_pos_ = head_pos_ = sb.tail_pos;
  }
  ring_end_ = log_bytes_;
  if (tail_pos_ < ring_start_ || tail_pos_ > ring_end_ || tail_pos_ % kBlock) return Errc::io_error;
  const uint64_t ring_blocks = (ring_end_ - ring_start_) / kBlock;
  if (uint64_t(opt_.record_data_bytes_max) + kBlock > (ring_blocks / 4) * kBlock)
    return Errc::invalid_argument;
  recs_.assign(ring_blocks + 2, Rec{});
  waiters_.assign(opt_.waiters_max, nullptr);
  held_.assign(opt_.held_max, nullptr);
  log_ops_.reset(new (std::nothrow) LogOp[opt_.log_ops_max]);
  apply_ops_.reset(new (std::nothrow) ApplyOp[opt_.apply_ops_max]);
  if (!log_ops_ || !apply_ops_) return Errc::no_memory;
  for (uint32_t i = 0; i < opt_.log_ops_max; ++i) {
    LogOp& op = log_ops_[i];
    op.dev = this;
    op.buf = pool_.allocate(opt_.record_data_bytes_max + kBlock);
    if (!op.buf) return Errc::no_memory;
    free_log_.push_back(&op);
  }
  for (uint32_t i = 0; i < opt_.apply_ops_max; ++i) {
    ApplyOp& op = apply_ops_[i];
    op.dev = this;
    op.buf = pool_.allocate(opt_.record_data_bytes_max);
    if (!op.buf) return Errc::no_memory;
    free_apply_.push_back(&op);
  }

  // Scan: records tail_seq_, +1, ... from tail_pos_ while each is whole, of this log (nonce), in
  // sequence, of a boot generation no older than its predecessor's. A commit record marks every
  // earlier record of its serial committed.
  uint64_t prev_gen = 0, committed_epochs = 0, discarded = 0;
  if (!formatting) {
    for (;;) {
      const uint64_t pos = head_pos_ == ring_end_ ? ring_start_ : head_pos_;
      std::byte* h = scan.data();
      if (!pread_all(fd, h, kBlock, pos)) break;
      if (get<uint32_t>(h, 0) != kRecordMagic || get<uint16_t>(h, 4) != kVersion) break;
      const uint16_t type = get<uint16_t>(h, 6);
      const uint64_t gen = get<uint64_t>(h, 16);
      if (get<uint64_t>(h, 8) != nonce_ || get<uint64_t>(h, 24) != next_seq_ || gen < prev_gen ||
          gen > boot_gen_)
        break;
      const uint64_t offset = get<uint64_t>(h, 40), length = get<uint64_t>(h, 48);
      uint64_t data_bytes = 0, blocks = 1;
      if (type == uint16_t(Type::write)) {
        if (length == 0 || length > kRecordDataMax || length % 512) break;
        data_bytes = length;
        blocks = 1 + blocks_for(length);
      } else if (type == uint16_t(Type::wrap)) {
        blocks = (ring_end_ - pos) / kBlock;
      } else if (type != uint16_t(Type::zero) && type != uint16_t(Type::commit)) {
        break;
      }
      if (pos + blocks * kBlock > ring_end_ || used_blocks_ + blocks > ring_blocks) break;
      if (data_bytes && !pread_all(fd, h + kBlock, data_bytes, pos + kBlock)) break;
      if (crc(h + kBlock, data_bytes, crc(h, kRecordCrcOffset)) !=
          get<uint32_t>(h, kRecordCrcOffset))
        break;
      if ((type == uint16_t(Type::write) || type == uint16_t(Type::zero)) &&
          check_range(geometry_, offset, length) != Errc::ok)
        break;
      Rec& r = recs_[next_seq_ % recs_.size()];
      r = Rec{};
      r.seq = next_seq_;
      r.pos = pos;
      r.blocks = blocks;
      r.serial = get<uint64_t>(h, 32);
      r.offset = offset;
      r.length = length;
      r.type = Type(type);
      if (r.type == Type::commit) {
        for (uint64_t q = tail_seq_; q < next_seq_; ++q)
          if (rec_of(q)->serial == r.serial) rec_of(q)->committed = true;
        r.committed = true;
        last_stream_ = offset;
        last_epoch_ = length;
        ++committed_epochs;
      }
      if (next_seq_ == tail_seq_) tail_pos_ = pos;
      used_blocks_ += blocks;
      prev_gen = gen;
      ++next_seq_;
      head_pos_ = r.type == Type::wrap ? ring_start_ : pos + blocks * kBlock;
    }
    for (uint64_t q = tail_seq_; q < next_seq_; ++q) {
      Rec* r = rec_of(q);
      if (!r->committed && (r->type == Type::write || r->type == Type::zero)) ++discarded;
    }
  }
  counters_.records_discarded_at_open = discarded;
  counters_.epochs_recovered = committed_epochs;
  if (committed_epochs || discarded)
    std::fprintf(stderr,
                 "ferry: redo log %s: %" PRIu64 " committed epoch(s) to apply again, %" PRIu64
                 " uncommitted record(s) discarded\n",
                 opt_.path.c_str(), committed_epochs, discarded);

  // A new boot generation, durable before any record of it is written.
  ++boot_gen_;
  open_serial_ = boot_gen_ << 32 | 1;
  open_first_seq_ = next_seq_;
  const int slots = formatting ? 2 : 1;  // formatting: both slots, so neither holds stale bytes
  for (int i = 0; i < slots; ++i) {
    encode_superblock(sb_buf_.data(), tail_seq_, tail_pos_);
    if (::pwrite(fd, sb_buf_.data(), kBlock, off_t(((sb_gen_ + 1) % 2) * kBlock)) !=
            ssize_t(kBlock) ||
        ::fdatasync(fd) != 0) {
      std::fprintf(stderr, "ferry: redo log %s: cannot write the superblock: %s\n",
                   opt_.path.c_str(), std::strerror(errno));
      return Errc::io_error;
    }
    ++sb_gen_;
  }
  char size_text[32];
  std::snprintf(size_text, sizeof size_text, "%" PRIu64 "MiB", log_bytes_ >> 20);
  description_ = "redo:" + opt_.path + ":" + size_text + ">" + std::string(next_.describe());
  return {};
}

// ---------------------------------------------------------------- helpers

RedoLogDevice::Rec* RedoLogDevice::rec_of(uint64_t seq) noexcept {
  FERRY_ASSERT(seq >= tail_seq_ && seq < next_seq_);
  Rec& r = recs_[seq % recs_.size()];
  FERRY_ASSERT(r.seq == seq);
  return &r;
}

uint64_t RedoLogDevice::log_bytes_used() const noexcept { return used_blocks_ * kBlock; }

uint32_t RedoLogDevice::backoff_ms(uint32_t attempt) const noexcept {
  uint64_t ms = opt_.retry_ms_min;
  for (uint32_t i = 0; i < attempt && ms < opt_.retry_ms_max; ++i) ms *= 2;
  return uint32_t(std::min<uint64_t>(ms, opt_.retry_ms_max));
}

// Space for a record of `blocks` at the head, keeping one block for a commit record. A record
// that would cross the ring's end needs a wrap marker first: false then too, with the marker's
// reservation left to the caller (pos = the marker's position, blocks = UINT64_MAX is never used).
bool RedoLogDevice::reserve(uint64_t blocks, uint64_t& pos) noexcept {
  const uint64_t ring_blocks = (ring_end_ - ring_start_) / kBlock;
  if (head_pos_ == ring_end_) head_pos_ = ring_start_;
  if (next_seq_ - tail_seq_ + 2 > recs_.size()) return false;
  if (head_pos_ + blocks * kBlock > ring_end_) return false;
  if (used_blocks_ + blocks + 1 > ring_blocks) return false;
  pos = head_pos_;
  return true;
}

std::string RedoLogDevice::stats_text(const std::string& volume) const {
  const RedoLogCounters& c = counters_;
  char line[640];
  std::snprintf(line, sizeof line,
                "redo log %s: %" PRIu64 " epochs committed, %" PRIu64 " applied (%" PRIu64
                " after a restart), %" PRIu64 " dropped as already applied, %" PRIu64
                " discarded incomplete; %" PRIu64 " B logged, %" PRIu64 " B applied; used %" PRIu64
                " B; waited for space %" PRIu64 ", held for apply %" PRIu64 ", busy %" PRIu64
                ", next errors %" PRIu64 ", log errors %" PRIu64 "\n",
                volume.c_str(), c.epochs_committed, c.epochs_applied, c.epochs_recovered,
                c.epochs_dropped, c.epochs_discarded, c.bytes_logged, c.bytes_applied,
                log_bytes_used(), c.waited_for_space, c.held_for_apply, c.busy, c.next_errors,
                c.log_errors);
  return line;
}

// ---------------------------------------------------------------- submit

void RedoLogDevice::start(std::function<void()> recovered) noexcept {
  FERRY_ASSERT(Reactor::current() != nullptr);
  if (started_) {
    if (recovered) recovered();
    return;
  }
  started_ = true;
  reactor_ = Reactor::current();
  recovered_ = std::move(recovered);
  if (tail_seq_ < next_seq_) {
    apply_recovering_ = true;
    start_apply(next_seq_);  // committed records go to next; the rest is reclaimed
    return;
  }
  if (recovered_) std::exchange(recovered_, nullptr)();
}

void RedoLogDevice::submit(IoRequest& req) noexcept {
  if (!started_) start(nullptr);
  if (shutting_down_) return req.complete(Errc::cancelled);
  if (req.op == IoOp::flush && req.epoch_id != 0) return handle_commit(req);
  if (req.epoch_write && (req.op == IoOp::write || req.op == IoOp::write_zeroes)) {
    const Errc e = check_range(geometry_, req.offset_bytes, req.length_bytes);
    if (e != Errc::ok) return req.complete(e);
    if (req.length_bytes == 0) return req.complete(Errc::ok);
    if (req.op == IoOp::write && req.length_bytes > opt_.record_data_bytes_max)
      return req.complete(Errc::invalid_argument);  // geometry().max_transfer_bytes says so
    return handle_epoch_write(req);
  }
  if (must_wait(req)) return hold(req);
  next_.submit(req);
}

// ---------------------------------------------------------------- epoch writes

void RedoLogDevice::handle_epoch_write(IoRequest& req) noexcept {
  if (waiters_count_ == waiters_.size()) {
    ++counters_.busy;
    return req.complete(Errc::busy);
  }
  waiters_[(waiters_head_ + waiters_count_++) % waiters_.size()] = &req;
  admit_writes();
}

void RedoLogDevice::admit_writes() noexcept {
  while (waiters_count_ > 0 && !free_log_.empty() && !commit_writing_) {
    IoRequest& u = *waiters_[waiters_head_];
    const uint64_t data_bytes = u.op == IoOp::write ? u.length_bytes : 0;
    const uint64_t blocks = 1 + blocks_for(data_bytes);
    uint64_t pos = 0;
    if (!reserve(blocks, pos)) {
      if (head_pos_ + blocks * kBlock > ring_end_ && head_pos_ != ring_end_) {
        // A wrap marker over the rest of the ring first (if the space is free).
        const uint64_t w = (ring_end_ - head_pos_) / kBlock;
        const uint64_t ring_blocks = (ring_end_ - ring_start_) / kBlock;
        if (used_blocks_ + w + 1 <= ring_blocks && next_seq_ - tail_seq_ + 2 <= recs_.size()) {
          LogOp& op = *free_log_.back();
          free_log_.pop_back();
          encode_record(op.buf.data(), Type::wrap, 0, 0, nullptr);
          Rec& r = recs_[next_seq_ % recs_.size()];
          r = Rec{next_seq_, head_pos_, w, open_serial_, 0, 0, Type::wrap, false};
          if (next_seq_ == tail_seq_) tail_pos_ = head_pos_;
          ++next_seq_;
          used_blocks_ += w;
          op.user = nullptr;
          op.length = 0;
          op.io = IoRequest{};
          op.io.op = IoOp::write;
          op.io.offset_bytes = head_pos_;
          op.io.length_bytes = kBlock;
          op.io.data = op.buf.data();
          op.io.owner = &op;
          op.io.on_complete = &RedoLogDevice::on_logged;
          head_pos_ = ring_start_;
          ++log_in_flight_;
          file_->submit(op.io);
          continue;
        }
      }
      ++counters_.waited_for_space;
      // Nothing will free space if no apply cycle runs: reclaim discarded records, or say that
      // one epoch does not fit into this log.
      if (!applying_ && commit_req_ == nullptr) {
        if (tail_seq_ < open_first_seq_) {
          start_apply(open_first_seq_);
        } else if (log_in_flight_ == 0) {
          std::fprintf(stderr,
                       "ferry: redo log %s: one epoch does not fit into the log (%" PRIu64
                       " MiB): make it larger than the cloud edge's epoch bound; write refused\n",
                       opt_.path.c_str(), log_bytes_ >> 20);
          waiters_head_ = (waiters_head_ + 1) % waiters_.size();
          --waiters_count_;
          u.complete(Errc::no_space);
          continue;
        }
      }
      return;
    }
    waiters_head_ = (waiters_head_ + 1) % waiters_.size();
    --waiters_count_;
    LogOp& op = *free_log_.back();
    free_log_.pop_back();
    encode_record(op.buf.data(), u.op == IoOp::write ? Type::write : Type::zero, u.offset_bytes,
                  u.length_bytes, u.data);
    Rec& r = recs_[next_seq_ % recs_.size()];
    r = Rec{next_seq_,
            pos,
            blocks,
            open_serial_,
            u.offset_bytes,
            u.length_bytes,
            u.op == IoOp::write ? Type::write : Type::zero,
            false};
    if (next_seq_ == tail_seq_) tail_pos_ = pos;
    ++next_seq_;
    used_blocks_ += blocks;
    head_pos_ = pos + blocks * kBlock;
    op.user = &u;
    op.length = u.length_bytes;
    op.attempt = 0;
    op.io = IoRequest{};
    op.io.op = IoOp::write;
    op.io.offset_bytes = pos;
    op.io.length_bytes = blocks * kBlock;
    op.io.data = op.buf.data();
    op.io.owner = &op;
    op.io.on_complete = &RedoLogDevice::on_logged;
    ++log_in_flight_;
    file_->submit(op.io);
  }
}

void RedoLogDevice::on_logged(IoRequest& io) noexcept {
  LogOp& op = *static_cast<LogOp*>(io.owner);
  RedoLogDevice& d = *op.dev;
  if (io.result != Errc::ok && !d.shutting_down_) {
    // The record keeps its place (later ones follow it): retry, never skip.
    ++d.counters_.log_errors;
    d.reactor_->arm(
        op.timer, uint64_t(d.backoff_ms(op.attempt++)) * 1'000'000,
        [](void* p) noexcept {
          LogOp& o = *static_cast<LogOp*>(p);
          o.dev->file_->submit(o.io);
        },
        &op);
    return;
  }
  --d.log_in_flight_;
  IoRequest* u = op.user;
  op.user = nullptr;
  d.free_log_.push_back(&op);
  if (u) {
    if (io.result == Errc::ok) {
      d.open_bytes_ += op.length;
      d.counters_.bytes_logged += op.length;
    }
    u->complete(io.result == Errc::ok ? Errc::ok : Errc::cancelled);
  }
  if (d.shutting_down_) return d.check_quiesced();
  d.try_commit();
  d.admit_writes();
}

// ---------------------------------------------------------------- commit

void RedoLogDevice::handle_commit(IoRequest& req) noexcept {
  if (commit_req_ != nullptr) {
    ++counters_.busy;
    return req.complete(Errc::busy);
  }
  commit_req_ = &req;
  try_commit();
}

void RedoLogDevice::discard_open_epoch() noexcept {
  ++open_serial_;
  open_first_seq_ = next_seq_;
  open_bytes_ = 0;
}

void RedoLogDevice::try_commit() noexcept {
  IoRequest* req = commit_req_;
  // Wait for the epoch's appends, and for the previous epoch to be applied (one at a time).
  if (req == nullptr || commit_writing_ || log_in_flight_ > 0 || applying_) return;
  if (req->epoch_stream == last_stream_ && req->epoch_id <= last_epoch_) {
    // Re-shipped after the writer lost our answer (or restarted): the image has it already.
    ++counters_.epochs_dropped;
    discard_open_epoch();
    commit_req_ = nullptr;
    req->complete(Errc::ok);
    return admit_writes();
  }
  if (open_bytes_ != req->length_bytes) {
    std::fprintf(stderr,
                 "ferry: redo log %s: epoch %" PRIu64 " incomplete (%" PRIu64 " of %" PRIu64
                 " bytes logged): discarded, the cloud edge ships it again\n",
                 opt_.path.c_str(), req->epoch_id, open_bytes_, uint64_t(req->length_bytes));
    ++counters_.epochs_discarded;
    discard_open_epoch();
    commit_req_ = nullptr;
    req->complete(Errc::io_error);
    return admit_writes();
  }
  // Appends keep one block free for this record, and the record table has a slot per block
  // plus two: a commit record always fits (a commit needs the previous epoch applied first, so
  // two commits never share that one block).
  uint64_t pos = 0;
  const uint64_t ring_blocks = (ring_end_ - ring_start_) / kBlock;
  if (head_pos_ == ring_end_) head_pos_ = ring_start_;
  FERRY_ASSERT(used_blocks_ + 1 <= ring_blocks && next_seq_ - tail_seq_ + 1 < recs_.size());
  pos = head_pos_;
  commit_writing_ = true;
  encode_record(commit_buf_.data(), Type::commit, req->epoch_stream, req->epoch_id, nullptr);
  Rec& r = recs_[next_seq_ % recs_.size()];
  r = Rec{next_seq_, pos, 1, open_serial_, req->epoch_stream, req->epoch_id, Type::commit, false};
  if (next_seq_ == tail_seq_) tail_pos_ = pos;
  commit_seq_ = next_seq_++;
  used_blocks_ += 1;
  head_pos_ = pos + kBlock;
  commit_io_ = IoRequest{};
  commit_io_.op = IoOp::write;
  commit_io_.offset_bytes = pos;
  commit_io_.length_bytes = kBlock;
  commit_io_.data = commit_buf_.data();
  commit_io_.owner = this;
  commit_io_.on_complete = &RedoLogDevice::on_commit_written;
  file_->submit(commit_io_);
}

void RedoLogDevice::on_commit_written(IoRequest& io) noexcept {
  RedoLogDevice& d = *static_cast<RedoLogDevice*>(io.owner);
  if (io.result != Errc::ok) {
    ++d.counters_.log_errors;
    if (d.shutting_down_) {
      d.commit_writing_ = false;
      return d.check_quiesced();
    }
    d.file_->submit(d.commit_io_);  // same place, same bytes
    return;
  }
  // The whole log (the epoch's records and this one) durable: then the epoch is committed.
  d.commit_io_ = IoRequest{};
  d.commit_io_.op = IoOp::flush;
  d.commit_io_.owner = &d;
  d.commit_io_.on_complete = &RedoLogDevice::on_log_synced;
  d.file_->submit(d.commit_io_);
}

void RedoLogDevice::on_log_synced(IoRequest& io) noexcept {
  RedoLogDevice& d = *static_cast<RedoLogDevice*>(io.owner);
  if (io.result != Errc::ok) {
    ++d.counters_.log_errors;
    if (d.shutting_down_) {
      d.commit_writing_ = false;
      return d.check_quiesced();
    }
    d.file_->submit(d.commit_io_);
    return;
  }
  d.commit_writing_ = false;
  IoRequest* req = d.commit_req_;
  d.commit_req_ = nullptr;
  for (uint64_t q = d.open_first_seq_; q <= d.commit_seq_; ++q) {
    Rec* r = d.rec_of(q);
    if (r->serial == d.open_serial_) r->committed = true;
  }
  d.last_stream_ = req->epoch_stream;
  d.last_epoch_ = req->epoch_id;
  ++d.counters_.epochs_committed;
  d.discard_open_epoch();  // a new serial for the next epoch (this one is committed, not lost)
  const uint64_t end = d.commit_seq_ + 1;
  if (d.shutting_down_) {
    req->complete(Errc::ok);
    return d.check_quiesced();
  }
  d.start_apply(end);
  req->complete(Errc::ok);  // the writer may checkpoint: the epoch survives any crash from here
  d.admit_writes();
}

// ---------------------------------------------------------------- reads and other requests

bool RedoLogDevice::must_wait(const IoRequest& req) const noexcept {
  if (!applying_) return false;  // (held requests are all released when an apply ends)
  switch (req.op) {
    case IoOp::read:
    case IoOp::block_status:
      return overlaps(req.offset_bytes, std::max<uint64_t>(req.length_bytes, 1), apply_lo_,
                      apply_hi_ - apply_lo_);
    case IoOp::access_map:
      return false;
    default:
      return true;  // writes outside epochs, discards, flushes: after the epoch is on next
  }
}

void RedoLogDevice::hold(IoRequest& req) noexcept {
  if (held_count_ == held_.size()) {
    ++counters_.busy;
    return req.complete(Errc::busy);
  }
  ++counters_.held_for_apply;
  held_[(held_head_ + held_count_++) % held_.size()] = &req;
}

void RedoLogDevice::release_held() noexcept {
  while (held_count_ > 0) {
    IoRequest* r = held_[held_head_];
    held_head_ = (held_head_ + 1) % held_.size();
    --held_count_;
    next_.submit(*r);
    if (applying_) break;  // (a submit cannot start a cycle; defensive)
  }
}

// ---------------------------------------------------------------- apply cycle

void RedoLogDevice::start_apply(uint64_t end_seq) noexcept {
  FERRY_ASSERT(!applying_);
  applying_ = true;
  apply_end_seq_ = end_seq;
  apply_seq_ = tail_seq_;
  apply_in_flight_ = 0;
  apply_epochs_ = 0;
  cycle_attempt_ = 0;
  apply_lo_ = UINT64_MAX;
  apply_hi_ = 0;
  for (uint64_t q = tail_seq_; q < end_seq; ++q) {
    const Rec* r = rec_of(q);
    if (!r->committed) continue;
    if (r->type == Type::commit) {
      ++apply_epochs_;
    } else if (r->type != Type::wrap) {
      apply_lo_ = std::min(apply_lo_, r->offset);
      apply_hi_ = std::max(apply_hi_, r->offset + r->length);
    }
  }
  if (apply_lo_ > apply_hi_) apply_lo_ = apply_hi_ = 0;
  pump_apply();
}

void RedoLogDevice::pump_apply() noexcept {
  while (apply_seq_ < apply_end_seq_ && !free_apply_.empty() && !shutting_down_) {
    const Rec* r = rec_of(apply_seq_);
    if (!r->committed || r->type == Type::commit || r->type == Type::wrap) {
      ++apply_seq_;
      continue;
    }
    // In log order; never two overlapping writes in flight (they could land in either order).
    bool overlap = false;
    for (uint32_t i = 0; i < opt_.apply_ops_max; ++i) {
      const ApplyOp& o = apply_ops_[i];
      if (o.seq && overlaps(rec_of(o.seq)->offset, rec_of(o.seq)->length, r->offset, r->length))
        overlap = true;
    }
    if (overlap) break;
    ApplyOp& op = *free_apply_.back();
    free_apply_.pop_back();
    op.seq = apply_seq_++;
    op.attempt = 0;
    op.io = IoRequest{};
    op.io.owner = &op;
    op.io.on_complete = &RedoLogDevice::on_apply_io;
    op.io.priority = IoPriority::write_back;
    ++apply_in_flight_;
    if (r->type == Type::write) {
      op.writing = false;  // read the data back from the log first
      op.io.op = IoOp::read;
      op.io.offset_bytes = r->pos + kBlock;
      op.io.length_bytes = r->length;
      op.io.data = op.buf.data();
      file_->submit(op.io);
    } else {
      op.writing = true;
      op.io.op = IoOp::write_zeroes;
      op.io.offset_bytes = r->offset;
      op.io.length_bytes = r->length;
      next_.submit(op.io);
    }
  }
  if (apply_seq_ >= apply_end_seq_ && apply_in_flight_ == 0 && !shutting_down_ &&
      !cycle_timer_.armed() && !cycle_flushing_ && cycle_io_.owner == nullptr)
    flush_next();
}

void RedoLogDevice::on_apply_retry(void* p) noexcept {
  ApplyOp& op = *static_cast<ApplyOp*>(p);
  op.io.result = Errc::ok;
  (op.writing ? op.dev->next_ : static_cast<BlockDevice&>(*op.dev->file_)).submit(op.io);
}

void RedoLogDevice::on_apply_io(IoRequest& io) noexcept {
  ApplyOp& op = *static_cast<ApplyOp*>(io.owner);
  RedoLogDevice& d = *op.dev;
  if (d.shutting_down_ || io.result != Errc::ok) {
    if (d.shutting_down_) {
      op.seq = 0;
      --d.apply_in_flight_;
      d.free_apply_.push_back(&op);
      return d.check_quiesced();
    }
    // The epoch is committed: it must reach next, however long that takes.
    if (op.writing)
      ++d.counters_.next_errors;
    else
      ++d.counters_.log_errors;
    if (d.counters_.next_errors == 1 && op.writing)
      std::fprintf(stderr,
                   "ferry: redo log %s: applying to %.*s failed (%s); retrying with back-off\n",
                   d.opt_.path.c_str(), int(d.next_.describe().size()), d.next_.describe().data(),
                   to_string(io.result));
    d.reactor_->arm(op.timer, uint64_t(d.backoff_ms(op.attempt++)) * 1'000'000, &on_apply_retry,
                    &op);
    return;
  }
  if (!op.writing) {
    const Rec* r = d.rec_of(op.seq);
    op.writing = true;
    op.attempt = 0;
    op.io = IoRequest{};
    op.io.op = IoOp::write;
    op.io.priority = IoPriority::write_back;
    op.io.offset_bytes = r->offset;
    op.io.length_bytes = r->length;
    op.io.data = op.buf.data();
    op.io.owner = &op;
    op.io.on_complete = &RedoLogDevice::on_apply_io;
    d.next_.submit(op.io);
    return;
  }
  d.counters_.bytes_applied += io.length_bytes;
  op.seq = 0;
  --d.apply_in_flight_;
  d.free_apply_.push_back(&op);
  d.pump_apply();
}

void RedoLogDevice::flush_next() noexcept {
  cycle_flushing_ = true;
  cycle_io_ = IoRequest{};
  cycle_io_.op = IoOp::flush;
  cycle_io_.priority = IoPriority::write_back;
  cycle_io_.owner = this;
  cycle_io_.on_complete = &RedoLogDevice::on_next_flushed;
  next_.submit(cycle_io_);
}

void RedoLogDevice::on_cycle_retry(void* p) noexcept {
  RedoLogDevice& d = *static_cast<RedoLogDevice*>(p);
  if (d.cycle_flushing_) return d.flush_next();
  d.file_->submit(d.cycle_io_);
}

void RedoLogDevice::on_next_flushed(IoRequest& io) noexcept {
  RedoLogDevice& d = *static_cast<RedoLogDevice*>(io.owner);
  if (d.shutting_down_) {
    d.cycle_io_.owner = nullptr;
    return d.check_quiesced();
  }
  if (io.result != Errc::ok) {
    ++d.counters_.next_errors;
    d.reactor_->arm(d.cycle_timer_, uint64_t(d.backoff_ms(d.cycle_attempt_++)) * 1'000'000,
                    &on_cycle_retry, &d);
    return;
  }
  // The cycle's epochs are durable on next: the superblock says so (tail past them).
  d.cycle_flushing_ = false;
  const uint64_t tail_seq = d.apply_end_seq_;
  const uint64_t tail_pos = tail_seq < d.next_seq_ ? d.rec_of(tail_seq)->pos : d.head_pos_;
  d.encode_superblock(d.sb_buf_.data(), tail_seq, tail_pos);
  d.cycle_io_ = IoRequest{};
  d.cycle_io_.op = IoOp::write;
  d.cycle_io_.fua = true;
  d.cycle_io_.offset_bytes = ((d.sb_gen_ + 1) % 2) * kBlock;
  d.cycle_io_.length_bytes = kBlock;
  d.cycle_io_.data = d.sb_buf_.data();
  d.cycle_io_.owner = &d;
  d.cycle_io_.on_complete = &RedoLogDevice::on_superblock_written;
  d.file_->submit(d.cycle_io_);
}

void RedoLogDevice::on_superblock_written(IoRequest& io) noexcept {
  RedoLogDevice& d = *static_cast<RedoLogDevice*>(io.owner);
  if (d.shutting_down_) {
    d.cycle_io_.owner = nullptr;
    return d.check_quiesced();
  }
  if (io.result != Errc::ok) {
    ++d.counters_.log_errors;
    d.reactor_->arm(d.cycle_timer_, uint64_t(d.backoff_ms(d.cycle_attempt_++)) * 1'000'000,
                    &on_cycle_retry, &d);
    return;
  }
  ++d.sb_gen_;
  d.applied();
}

void RedoLogDevice::applied() noexcept {
  cycle_io_.owner = nullptr;
  while (tail_seq_ < apply_end_seq_) {
    used_blocks_ -= recs_[tail_seq_ % recs_.size()].blocks;
    ++tail_seq_;
  }
  tail_pos_ = tail_seq_ < next_seq_ ? rec_of(tail_seq_)->pos : head_pos_;
  if (open_first_seq_ < tail_seq_) open_first_seq_ = tail_seq_;
  counters_.epochs_applied += apply_epochs_;
  applying_ = false;
  if (apply_recovering_) {
    apply_recovering_ = false;
    if (apply_epochs_)
      std::fprintf(stderr,
                   "ferry: redo log %s: %" PRIu64 " committed epoch(s) applied after the restart\n",
                   opt_.path.c_str(), apply_epochs_);
    if (recovered_) std::exchange(recovered_, nullptr)();
  }
  release_held();
  try_commit();
  admit_writes();
  check_drained();
}

void RedoLogDevice::drain(std::function<void()> done) noexcept {
  drain_done_ = std::move(done);
  check_drained();
}

void RedoLogDevice::check_drained() noexcept {
  if (!drain_done_ || applying_ || commit_req_ != nullptr) return;
  std::exchange(drain_done_, nullptr)();
}

// ---------------------------------------------------------------- shutdown

void RedoLogDevice::shutdown(std::function<void()> done) noexcept {
  shutdown_done_ = std::move(done);
  shutting_down_ = true;
  Reactor* r = reactor_ ? reactor_ : Reactor::current();
  if (cycle_timer_.armed()) {
    r->cancel(cycle_timer_);
    cycle_io_.owner = nullptr;
  }
  for (uint32_t i = 0; i < opt_.apply_ops_max; ++i) {
    ApplyOp& op = apply_ops_[i];
    if (op.timer.armed()) {
      r->cancel(op.timer);
      op.seq = 0;
      --apply_in_flight_;
      free_apply_.push_back(&op);
    }
  }
  for (uint32_t i = 0; i < opt_.log_ops_max; ++i) {
    LogOp& op = log_ops_[i];
    if (op.timer.armed()) {
      r->cancel(op.timer);
      --log_in_flight_;
      if (op.user) std::exchange(op.user, nullptr)->complete(Errc::cancelled);
      free_log_.push_back(&op);
    }
  }
  while (waiters_count_ > 0) {
    IoRequest* q = waiters_[waiters_head_];
    waiters_head_ = (waiters_head_ + 1) % waiters_.size();
    --waiters_count_;
    q->complete(Errc::cancelled);
  }
  while (held_count_ > 0) {
    IoRequest* q = held_[held_head_];
    held_head_ = (held_head_ + 1) % held_.size();
    --held_count_;
    q->complete(Errc::cancelled);
  }
  if (commit_req_ && !commit_writing_)
    std::exchange(commit_req_, nullptr)->complete(Errc::cancelled);
  check_quiesced();
}

void RedoLogDevice::check_quiesced() noexcept {
  if (!shutting_down_ || !shutdown_done_) return;
  if (log_in_flight_ || apply_in_flight_ || commit_writing_ || cycle_io_.owner != nullptr) return;
  std::exchange(shutdown_done_, nullptr)();
}

}  // namespace ferry::journal
