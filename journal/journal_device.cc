// JournalDevice implementation (see journal_device.h, journal/DESIGN.md, journal/FORMAT.md).
// Reactor thread only, except open() (start-up, synchronous pread/pwrite on the journal file).
#include "journal/journal_device.h"

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

#include "datapath/wan/frame.h"
#include "journal/log_file.h"

namespace ferry::journal {

static_assert(std::endian::native == std::endian::little, "FORMAT.md fields are little-endian");

namespace {

constexpr uint64_t kBlock = 4096;
constexpr uint64_t kSuperMagic = 0x42534a5952524546ull;  // "FERRYJSB"
constexpr uint32_t kRecordMagic = 0x43524a46u;           // "FJRC"
constexpr uint32_t kVersion = 1;
constexpr uint16_t kTypeWrite = 1;
constexpr uint16_t kTypeWrap = 2;
constexpr size_t kSuperCrcOffset = 72;
constexpr size_t kRecordCrcOffset = 44;
constexpr uint32_t kReadPieces = 8;
constexpr uint64_t kRecordDataMax =
    1u << 20;  // FORMAT.md: a record's data is at most 1 MiB  // sub-requests in flight per read

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

struct Super {
  uint64_t journal_bytes, volume_bytes, nonce, sb_gen, boot_gen, checkpoint_seq, checkpoint_pos;
};

// Decodes one superblock slot; false if it is not a valid version-1 superblock.
bool decode_super(const std::byte* b, Super& s, bool& has_magic) noexcept {
  has_magic = get<uint64_t>(b, 0) == kSuperMagic;
  if (!has_magic) return false;
  if (get<uint32_t>(b, 8) != kVersion || get<uint32_t>(b, 12) != kBlock) return false;
  if (crc(b, kSuperCrcOffset) != get<uint32_t>(b, kSuperCrcOffset)) return false;
  s.journal_bytes = get<uint64_t>(b, 16);
  s.volume_bytes = get<uint64_t>(b, 24);
  s.nonce = get<uint64_t>(b, 32);
  s.sb_gen = get<uint64_t>(b, 40);
  s.boot_gen = get<uint64_t>(b, 48);
  s.checkpoint_seq = get<uint64_t>(b, 56);
  s.checkpoint_pos = get<uint64_t>(b, 64);
  return true;
}

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

}  // namespace

const char* to_string(Policy p) noexcept {
  switch (p) {
    case Policy::write_back:
      return "write-back";
    case Policy::cloud_persist:
      return "cloud-persist";
    case Policy::test_clone:
      return "test-clone";
  }
  return "?";
}

bool parse_policy(std::string_view text, Policy& out) noexcept {
  for (Policy p : {Policy::write_back, Policy::cloud_persist, Policy::test_clone})
    if (text == to_string(p)) {
      out = p;
      return true;
    }
  return false;
}

struct JournalDevice::ReadOp {
  JournalDevice* dev = nullptr;
  IoRequest* user = nullptr;
  uint64_t cursor = 0;  // next volume byte to request
  uint64_t end = 0;
  uint32_t in_flight = 0;
  bool stepping = false;
  Errc error = Errc::ok;
  struct Piece {
    IoRequest io;
    ReadOp* op = nullptr;
    uint64_t seq = 0;  // journal piece: the pinned record; 0: from next
    bool busy = false;
  } pieces[kReadPieces];
};

struct JournalDevice::WbOp {
  JournalDevice* dev = nullptr;
  IoRequest io;
  Buffer buf;
  uint64_t seq = 0;
  uint64_t volume_offset = 0;
  uint64_t length = 0;
  uint64_t journal_pos = 0;
  bool writing = false;  // stage: false = reading the journal, true = writing next
  uint32_t attempt = 0;
  Timer timer;
};

JournalDevice::JournalDevice(BlockDevice& next, const JournalOptions& o) noexcept
    : next_(next),
      opt_(o),
      pool_(2 * std::bit_ceil(uint64_t(o.batch_bytes_max)) +
            2 * std::bit_ceil(kRecordDataMax + kBlock) +
            uint64_t(o.write_back_ops_max) * std::bit_ceil(uint64_t(o.write_back_piece_bytes_max)) +
            16 * kBlock) {}

JournalDevice::~JournalDevice() {
  Reactor* r = reactor_;
  for (WbOp& op : wb_ops())
    if (op.timer.armed() && r) r->cancel(op.timer);
  for (Batch& b : batches_)
    if (b.timer.armed() && r) r->cancel(b.timer);
  if (cp_timer_.armed() && r) r->cancel(cp_timer_);
  if (epoch_timer_.armed() && r) r->cancel(epoch_timer_);
  if (rate_timer_.armed() && r) r->cancel(rate_timer_);
}

Result<std::unique_ptr<JournalDevice>> JournalDevice::open(BlockDevice& next,
                                                           const JournalOptions& options) noexcept {
  JournalOptions o = options;
  if (o.path.empty() || o.batch_records_max == 0 || o.write_back_ops_max == 0 || o.reads_max == 0 ||
      o.record_data_bytes_max < kBlock || o.record_data_bytes_max % kBlock != 0 ||
      o.record_data_bytes_max > kRecordDataMax ||
      o.batch_bytes_max < o.record_data_bytes_max + kBlock ||
      o.write_back_piece_bytes_max < kBlock || o.write_back_piece_bytes_max % kBlock != 0 ||
      o.waiters_max == 0 || o.flush_waiters_max == 0)
    return Errc::invalid_argument;
  std::unique_ptr<JournalDevice> d(new (std::nothrow) JournalDevice(next, o));
  if (!d) return Errc::no_memory;
  Result<void> r = d->format_or_replay();
  if (!r.ok()) return r.error();
  return d;
}

void JournalDevice::encode_superblock(std::byte* b) noexcept {
  // Encodes sb_gen_ + 1 with the checkpoint in cp_target_*; the caller adopts sb_gen_ + 1 once
  // the write is durable.
  std::memset(b, 0, kBlock);
  put<uint64_t>(b, 0, kSuperMagic);
  put<uint32_t>(b, 8, kVersion);
  put<uint32_t>(b, 12, uint32_t(kBlock));
  put<uint64_t>(b, 16, journal_bytes_);
  put<uint64_t>(b, 24, geometry_.size_bytes());
  put<uint64_t>(b, 32, nonce_);
  put<uint64_t>(b, 40, sb_gen_ + 1);
  put<uint64_t>(b, 48, boot_gen_);
  put<uint64_t>(b, 56, cp_target_seq_);
  put<uint64_t>(b, 64, cp_target_pos_);
  put<uint32_t>(b, kSuperCrcOffset, crc(b, kSuperCrcOffset));
}

Result<void> JournalDevice::write_superblock_sync() noexcept {
  std::byte* b = cp_buf_.data();
  encode_superblock(b);
  const uint64_t slot = (sb_gen_ + 1) % 2;
  const int fd = jfile_->fd();
  if (::pwrite(fd, b, kBlock, off_t(slot * kBlock)) != ssize_t(kBlock) || ::fdatasync(fd) != 0) {
    std::fprintf(stderr, "ferry: journal %s: cannot write the superblock: %s\n", opt_.path.c_str(),
                 std::strerror(errno));
    return Errc::io_error;
  }
  ++sb_gen_;
  return {};
}

Result<void> JournalDevice::format_or_replay() noexcept {
  geometry_ = next_.geometry();
  geometry_.volatile_cache = false;  // an acknowledged write is durable (in the journal)
  if (geometry_.read_only) return Errc::write_protected;

  // The file: created (and its space reserved) when missing or empty.
  const uint64_t size = opt_.size_bytes - opt_.size_bytes % kBlock;
  auto created = create_or_open_log_file("journal", opt_.path, size, 64 * kBlock);
  if (!created.ok()) return created.error();
  const bool fresh = created.value();
  FileDeviceOptions fo;
  fo.direct_io = opt_.direct_io;
  fo.block_size_bytes = 512;
  auto jf = FileDevice::open(opt_.path, fo);
  if (!jf.ok() && opt_.direct_io && jf.error() == Errc::invalid_argument) {
    std::fprintf(stderr,
                 "ferry: journal %s: O_DIRECT not supported here, using buffered I/O "
                 "(durability still by RWF_DSYNC / fdatasync)\n",
                 opt_.path.c_str());
    fo.direct_io = false;
    jf = FileDevice::open(opt_.path, fo);
  }
  if (!jf.ok()) return jf.error();
  jfile_ = std::move(jf).value();
  fo.direct_io = false;
  auto jr = FileDevice::open(opt_.path, fo);
  if (!jr.ok()) return jr.error();
  jread_ = std::move(jr).value();
  const uint64_t file_bytes =
      jfile_->geometry().size_bytes() - jfile_->geometry().size_bytes() % kBlock;
  uint64_t file_bytes_for_format = file_bytes;

  cp_buf_ = pool_.allocate(kBlock);
  if (!cp_buf_) return Errc::no_memory;
  Super s[2];
  bool valid[2], magic[2];
  for (int i = 0; i < 2; ++i) {
    if (!pread_all(jread_->fd(), cp_buf_.data(), kBlock, uint64_t(i) * kBlock))
      return Errc::io_error;
    valid[i] = decode_super(cp_buf_.data(), s[i], magic[i]);
  }
  int pick = -1;
  if (valid[0] && valid[1])
    pick = s[1].sb_gen > s[0].sb_gen ? 1 : 0;
  else if (valid[0])
    pick = 0;
  else if (valid[1])
    pick = 1;
  // A clone marker: the journal holds only a test clone's writes (journal/DESIGN.md "Policies"),
  // and that clone has ended. Its writes are discarded: the journal is formatted again.
  const bool clone_ended = ::access(clone_marker_path().c_str(), F_OK) == 0;
  if (clone_ended && pick >= 0) {
    std::fprintf(stderr, "ferry: journal %s: discarding the writes of the test clone that ended\n",
                 opt_.path.c_str());
    ++counters_.clone_discards;
    file_bytes_for_format = s[pick].journal_bytes;
  }
  const bool formatting = pick < 0 || clone_ended;
  if (formatting) {
    if (pick < 0 && !fresh && (magic[0] || magic[1])) {
      std::fprintf(stderr,
                   "ferry: journal %s: both superblocks are corrupt; refusing to format over it\n",
                   opt_.path.c_str());
      return Errc::io_error;
    }
    journal_bytes_ = file_bytes_for_format;
    std::random_device rd;
    nonce_ = (uint64_t(rd()) << 32) ^ rd() ^ uint64_t(Reactor::now_ns_fresh());
    sb_gen_ = 0;
    boot_gen_ = 0;
    checkpoint_seq_ = 0;
    checkpoint_pos_ = 2 * kBlock;
  } else {
    const Super& sb = s[pick];
    if (sb.volume_bytes != geometry_.size_bytes()) {
      std::fprintf(stderr,
                   "ferry: journal %s belongs to a volume of %" PRIu64
                   " bytes, this one has %" PRIu64 "\n",
                   opt_.path.c_str(), sb.volume_bytes, geometry_.size_bytes());
      return Errc::invalid_argument;
    }
    if (sb.journal_bytes > file_bytes || sb.journal_bytes < 64 * kBlock) return Errc::io_error;
    journal_bytes_ = sb.journal_bytes;
    nonce_ = sb.nonce;
    sb_gen_ = sb.sb_gen;
    boot_gen_ = sb.boot_gen;
    checkpoint_seq_ = sb.checkpoint_seq;
    checkpoint_pos_ = sb.checkpoint_pos;
  }
  ring_start_ = 2 * kBlock;
  ring_end_ = journal_bytes_;
  if (checkpoint_pos_ < ring_start_ || checkpoint_pos_ > ring_end_ || checkpoint_pos_ % kBlock)
    return Errc::io_error;
  const uint64_t ring_blocks = (ring_end_ - ring_start_) / kBlock;
  // A record must always fit, whatever the wrap wastes: at most a quarter of the ring.
  const uint64_t quarter = (ring_blocks / 4) * kBlock;
  if (opt_.record_data_bytes_max + kBlock > quarter)
    opt_.record_data_bytes_max = uint32_t(std::max<uint64_t>(kBlock, quarter - kBlock));

  // Bounded tables, sized from the ring: every record takes at least two blocks (a wrap marker one,
  // at most one per lap).
  const uint64_t capacity = ring_blocks / 2 + 2;
  records_.assign(capacity, Record{});
  arena_.init(2 * capacity + 2 * opt_.write_back_ops_max + 16);
  epoch_arena_.init(2 * capacity + 16);
  for (Batch& b : batches_) {
    b.buf = pool_.allocate(opt_.batch_bytes_max);
    if (!b.buf) return Errc::no_memory;
    b.acks.reserve(opt_.batch_records_max);
    b.dev = this;
  }
  waiters_.assign(opt_.waiters_max, nullptr);
  flush_waiters_.assign(opt_.flush_waiters_max, FlushWaiter{nullptr, 0});
  acking_.reserve(opt_.batch_records_max);
  read_ops_.resize(opt_.reads_max);
  for (ReadOp& r : read_ops_) {
    r.dev = this;
    free_reads_.push_back(&r);
  }
  read_waiters_.assign(opt_.read_waiters_max, nullptr);
  wb_ops_.reset(new (std::nothrow) WbOp[opt_.write_back_ops_max]);
  if (!wb_ops_) return Errc::no_memory;
  for (WbOp& w : wb_ops()) {
    w.dev = this;
    w.buf = pool_.allocate(opt_.write_back_piece_bytes_max);
    if (!w.buf) return Errc::no_memory;
    free_wb_.push_back(&w);
  }

  // Replay: records checkpoint_seq_ + 1, + 2, ... from checkpoint_pos_ while each is whole,
  // of this journal (nonce), in sequence, of a boot generation no older than its predecessor's.
  tail_seq_ = next_seq_ = checkpoint_seq_ + 1;
  head_pos_ = tail_pos_ = checkpoint_pos_;
  uint64_t used_blocks = 0;
  uint64_t prev_gen = 0;
  const uint64_t now = Reactor::now_ns_fresh();
  Buffer data = pool_.allocate(kRecordDataMax + kBlock);
  if (!data) return Errc::no_memory;
  if (!formatting) {
    for (;;) {
      uint64_t pos = head_pos_ == ring_end_ ? ring_start_ : head_pos_;
      std::byte* h = data.data();
      if (!pread_all(jread_->fd(), h, kBlock, pos)) break;
      if (get<uint32_t>(h, 0) != kRecordMagic || get<uint16_t>(h, 4) != kVersion) break;
      const uint16_t type = get<uint16_t>(h, 6);
      const uint64_t gen = get<uint64_t>(h, 16);
      const uint64_t length = get<uint32_t>(h, 40);
      if (get<uint64_t>(h, 8) != nonce_ || get<uint64_t>(h, 24) != next_seq_ || gen < prev_gen ||
          gen > boot_gen_)
        break;
      uint64_t blocks;
      if (type == kTypeWrap) {
        if (length != 0) break;
        blocks = (ring_end_ - pos) / kBlock;
      } else if (type == kTypeWrite) {
        if (length == 0 || length > kRecordDataMax || length % 512 != 0) break;
        blocks = 1 + blocks_for(length);
        if (pos + blocks * kBlock > ring_end_) break;
      } else {
        break;
      }
      if (used_blocks + blocks > ring_blocks - 1 || next_seq_ - tail_seq_ >= records_.size()) break;
      if (length && !pread_all(jread_->fd(), h + kBlock, length, pos + kBlock)) break;
      const uint32_t want = get<uint32_t>(h, kRecordCrcOffset);
      if (crc(h + kBlock, length, crc(h, kRecordCrcOffset)) != want) break;
      const uint64_t voff = get<uint64_t>(h, 32);
      if (type == kTypeWrite && check_range(geometry_, voff, length) != Errc::ok) break;
      Record& rec = records_[next_seq_ % records_.size()];
      rec = Record{};
      rec.seq = next_seq_;
      rec.pos = pos;
      rec.blocks = blocks;
      rec.volume_offset = voff;
      rec.length = uint32_t(length);
      rec.committed_ns = now;
      if (type == kTypeWrite) {
        index_insert(voff, voff + length, next_seq_, pos + kBlock);
        ++counters_.records;
        ++counters_.replayed_records;
        counters_.bytes_journaled += length;
      }
      if (next_seq_ == tail_seq_) tail_pos_ = pos;
      used_blocks += blocks;
      prev_gen = gen;
      ++next_seq_;
      head_pos_ = pos + blocks * kBlock;
      if (type == kTypeWrap) head_pos_ = ring_start_;
    }
  }
  if (opt_.policy == Policy::test_clone && next_seq_ > checkpoint_seq_ + 1) {
    std::fprintf(stderr,
                 "ferry: journal %s holds %" PRIu64
                 " records not yet written back; a test clone "
                 "would hide them from on-prem: start it as write-back and drain it first\n",
                 opt_.path.c_str(), next_seq_ - checkpoint_seq_ - 1);
    return Errc::busy;
  }
  used_blocks_ = used_blocks;
  committed_seq_ = next_seq_ - 1;
  shipped_seq_ = checkpoint_seq_;
  wb_seq_ = checkpoint_seq_ + 1;
  if (counters_.replayed_records)
    std::fprintf(stderr,
                 "ferry: journal %s: replayed %" PRIu64 " records (%" PRIu64
                 " bytes) after checkpoint %" PRIu64 "%s\n",
                 opt_.path.c_str(), counters_.replayed_records, counters_.bytes_journaled,
                 checkpoint_seq_, ships() ? "; write-back resumes" : " (cloud-persist: kept)");
  // A new boot generation, durable before any record of it is written (FORMAT.md: replay never
  // accepts an older generation after a newer one, so stale records past a torn one stay dead).
  ++boot_gen_;
  cp_target_seq_ = checkpoint_seq_;
  cp_target_pos_ = checkpoint_pos_;
  if (formatting) {
    // Both slots, so neither holds stale bytes that could look valid.
    Result<void> r = write_superblock_sync();
    if (!r.ok()) return r;
  }
  Result<void> r = write_superblock_sync();
  if (!r.ok()) return r;
  // The marker is durable before the clone's first record, and goes only once the discard is.
  const std::string marker = clone_marker_path();
  if (opt_.policy == Policy::test_clone && !clone_ended) {
    const int fd = ::open(marker.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    const bool made = fd >= 0 && ::fsync(fd) == 0;
    if (fd >= 0) ::close(fd);
    const std::string dir = opt_.path.find('/') == std::string::npos
                                ? std::string(".")
                                : opt_.path.substr(0, opt_.path.rfind('/') + 1);
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    const bool synced = dfd >= 0 && ::fsync(dfd) == 0;
    if (dfd >= 0) ::close(dfd);
    if (!made || !synced) {
      std::fprintf(stderr, "ferry: journal %s: cannot make the clone marker %s: %s\n",
                   opt_.path.c_str(), marker.c_str(), std::strerror(errno));
      return Errc::io_error;
    }
  } else if (opt_.policy != Policy::test_clone && clone_ended) {
    if (::unlink(marker.c_str()) != 0 && errno != ENOENT) {
      std::fprintf(stderr, "ferry: journal %s: cannot remove %s: %s\n", opt_.path.c_str(),
                   marker.c_str(), std::strerror(errno));
      return Errc::io_error;
    }
  }

  char size_text[32];
  std::snprintf(size_text, sizeof size_text, "%" PRIu64 "MiB", journal_bytes_ >> 20);
  description_ = "journal:" + opt_.path + ":" + size_text + ">" + std::string(next_.describe());
  return {};
}

// ---------------------------------------------------------------- helpers

std::span<JournalDevice::WbOp> JournalDevice::wb_ops() noexcept {
  return {wb_ops_.get(), wb_ops_ ? opt_.write_back_ops_max : 0};
}

JournalDevice::Record* JournalDevice::record_of(uint64_t seq) noexcept {
  FERRY_ASSERT(seq >= tail_seq_ && seq < next_seq_);
  Record& r = records_[seq % records_.size()];
  FERRY_ASSERT(r.seq == seq);
  return &r;
}

uint64_t JournalDevice::ring_used_bytes() const noexcept { return used_blocks_ * kBlock; }

uint32_t JournalDevice::backoff_ms(uint32_t attempt) const noexcept {
  uint64_t ms = opt_.retry_ms_min;
  for (uint32_t i = 0; i < attempt && ms < opt_.retry_ms_max; ++i) ms *= 2;
  return uint32_t(std::min<uint64_t>(ms, opt_.retry_ms_max));
}

// Makes [start, end) of `map` point at the journal (seq, journal_pos), trimming or splitting
// what it overlaps. At most two nodes more than before. Returns the change in covered bytes.
template <class Map>
int64_t JournalDevice::map_insert(Map& map, uint64_t start, uint64_t end, uint64_t seq,
                                  uint64_t journal_pos) noexcept {
  int64_t delta = 0;
  auto it = map.lower_bound(start);
  if (it != map.begin()) {
    auto prev = std::prev(it);
    if (prev->second.end > start) {
      const Extent old = prev->second;
      prev->second.end = start;
      delta -= int64_t(old.end - start);
      if (old.end > end) {
        // Split: the tail of the old extent survives past the new one.
        map.emplace(end, Extent{old.end, old.seq, old.journal_pos + (end - prev->first)});
        delta += int64_t(old.end - end);
      }
    }
  }
  it = map.lower_bound(start);
  while (it != map.end() && it->first < end) {
    if (it->second.end <= end) {
      delta -= int64_t(it->second.end - it->first);
      it = map.erase(it);
    } else {
      const Extent old = it->second;
      const uint64_t old_start = it->first;
      map.erase(it);
      delta -= int64_t(old.end - old_start);
      map.emplace(end, Extent{old.end, old.seq, old.journal_pos + (end - old_start)});
      delta += int64_t(old.end - end);
      break;
    }
  }
  map.emplace(start, Extent{end, seq, journal_pos});
  return delta + int64_t(end - start);
}

void JournalDevice::index_insert(uint64_t start, uint64_t end, uint64_t seq,
                                 uint64_t journal_pos) noexcept {
  dirty_bytes_ = uint64_t(int64_t(dirty_bytes_) + map_insert(index_, start, end, seq, journal_pos));
}

// Drops the extents inside [start, end) that still belong to record seq (they are on next).
void JournalDevice::index_erase_seq(uint64_t start, uint64_t end, uint64_t seq) noexcept {
  auto it = index_.lower_bound(start);
  if (it != index_.begin() && std::prev(it)->second.end > start) --it;
  while (it != index_.end() && it->first < end) {
    if (it->second.seq == seq) {
      // Pieces are cut at extent boundaries: an extent of seq lies wholly inside the piece.
      FERRY_ASSERT(it->first >= start && it->second.end <= end);
      dirty_bytes_ -= it->second.end - it->first;
      it = index_.erase(it);
    } else {
      ++it;
    }
  }
}

JournalState JournalDevice::state() const noexcept {
  JournalState s;
  const uint64_t ring = ring_end_ - ring_start_;
  s.journal_bytes_used = ring_used_bytes();
  s.journal_bytes_free = ring - s.journal_bytes_used;
  s.dirty_bytes = dirty_bytes_;
  s.next_seq = next_seq_;
  s.checkpoint_seq = checkpoint_seq_;
  s.epoch_id = epoch_open_ ? epoch_end_seq_ : 0;
  s.next_failing = next_failing_;
  if (const uint64_t born = oldest_unshipped_ns(); born != 0) {
    const uint64_t now = Reactor::now_ns_fresh();
    s.write_back_lag_ms = now > born ? (now - born) / 1'000'000 : 0;
    s.rpo_missed = rpo_over(now);
  }
  return s;
}

uint64_t JournalDevice::oldest_unshipped_ns() const noexcept {
  if (shipped_seq_ >= committed_seq_) return 0;
  return std::max<uint64_t>(records_[(shipped_seq_ + 1) % records_.size()].committed_ns, 1);
}

bool JournalDevice::rpo_over(uint64_t now_ns) const noexcept {
  const uint64_t born = oldest_unshipped_ns();
  return opt_.rpo_target_ms != 0 && born != 0 && now_ns > born &&
         now_ns - born > uint64_t(opt_.rpo_target_ms) * 1'000'000;
}

void JournalDevice::note_rpo(uint64_t now_ns) noexcept {
  // Past the target the cap stays lifted until the lag is down to half of it (hysteresis: each
  // epoch commit makes the oldest write younger, which would otherwise flip the state per epoch).
  const uint64_t born = oldest_unshipped_ns();
  const uint64_t lag_ns = born != 0 && now_ns > born ? now_ns - born : 0;
  const uint64_t target_ns = uint64_t(opt_.rpo_target_ms) * 1'000'000;
  const bool over = opt_.rpo_target_ms != 0 && lag_ns > (rpo_missed_ ? target_ns / 2 : target_ns);
  if (over == rpo_missed_) return;
  rpo_missed_ = over;
  if (over) ++counters_.rpo_misses;
  const bool capped = opt_.write_back_rate_bytes_per_s != 0;
  std::fprintf(stderr, "ferry: journal %s: write-back lag %s the RPO target (%u ms)%s\n",
               description_.c_str(), over ? "past" : "down to half of", opt_.rpo_target_ms,
               !capped ? ""
               : over  ? ": the write-back rate cap is lifted until it is met"
                       : ": the write-back rate cap holds again");
}

bool JournalDevice::rate_allows(uint64_t bytes, uint64_t now_ns) noexcept {
  const uint64_t rate = opt_.write_back_rate_bytes_per_s;
  // A drain (the clean stop's, bounded by --journal-drain-s) ships at full speed too.
  if (rate == 0 || rpo_missed_ || drain_done_) return true;
  const double burst = std::max(double(opt_.write_back_piece_bytes_max), double(rate) / 10.0);
  wb_tokens_ = std::min(
      burst, wb_tokens_ + double(now_ns - std::min(now_ns, wb_tokens_ns_)) * double(rate) / 1e9);
  wb_tokens_ns_ = now_ns;
  if (wb_tokens_ >= double(bytes)) {
    wb_tokens_ -= double(bytes);
    return true;
  }
  ++counters_.rate_waits;
  if (!rate_timer_.armed()) {
    uint64_t wait_ns = uint64_t((double(bytes) - wb_tokens_) * 1e9 / double(rate)) + 1;
    // Wake no later than the RPO target would be missed: the cap is lifted then.
    if (const uint64_t born = oldest_unshipped_ns(); opt_.rpo_target_ms != 0 && born != 0) {
      const uint64_t miss_ns = born + uint64_t(opt_.rpo_target_ms) * 1'000'000 + 1;
      if (miss_ns > now_ns) wait_ns = std::min(wait_ns, miss_ns - now_ns);
    }
    reactor_->arm(rate_timer_, wait_ns, &on_epoch_timer, this);
  }
  return false;
}

void JournalDevice::set_write_back_limits(uint64_t rate_bytes_per_s,
                                          uint32_t rpo_target_ms) noexcept {
  opt_.write_back_rate_bytes_per_s = rate_bytes_per_s;
  opt_.rpo_target_ms = rpo_target_ms;
  // A wait armed under the old cap may be far longer than the new one needs: re-decide now.
  if (rate_timer_.armed() && reactor_ != nullptr) reactor_->cancel(rate_timer_);
  if (started_) pump_write_back();  // a held piece may go now
}

std::string JournalDevice::stats_text(const std::string& volume) const {
  const JournalState s = state();
  const JournalCounters& c = counters_;
  char line[1024];
  std::snprintf(line, sizeof line,
                "journal %s: %" PRIu64 " records (%" PRIu64 " replayed) in %" PRIu64
                " group commits, %" PRIu64 " B journaled, %" PRIu64 " B written back, %" PRIu64
                " B superseded, %" PRIu64 " checkpoints, %" PRIu64 " epochs (%" PRIu64
                " at a FLUSH/FUA boundary, %" PRIu64 " shipped again); used %" PRIu64
                " B, free %" PRIu64 " B, dirty %" PRIu64 " B, write-back lag %" PRIu64
                " ms (max %" PRIu64 " ms); waited for space %" PRIu64 ", busy %" PRIu64
                ", next errors %" PRIu64 ", journal errors %" PRIu64 ", reads from journal %" PRIu64
                ", barriers %" PRIu64 "\n",
                volume.c_str(), c.records, c.replayed_records, c.group_commits, c.bytes_journaled,
                c.bytes_written_back, c.bytes_superseded, c.checkpoints, c.epochs,
                c.epochs_at_boundary, c.epoch_retries, s.journal_bytes_used, s.journal_bytes_free,
                s.dirty_bytes, s.write_back_lag_ms, c.write_back_lag_ms_max, c.waited_for_space,
                c.busy, c.next_errors, c.journal_errors, c.reads_from_journal, c.barriers);
  return line;
}

// ---------------------------------------------------------------- submit

void JournalDevice::start() noexcept {
  FERRY_ASSERT(Reactor::current() != nullptr);
  if (started_) return;
  started_ = true;
  reactor_ = Reactor::current();
  pump_write_back();
}

void JournalDevice::submit(IoRequest& req) noexcept {
  FERRY_ASSERT(Reactor::current() != nullptr);
  if (!started_) start();
  if (req.op == IoOp::access_map) return next_.submit(req);  // not ours: pass it down
  if (req.op != IoOp::flush) {
    Errc e = check_range(geometry_, req.offset_bytes, req.length_bytes);
    if (e != Errc::ok) return req.complete(e);
  }
  switch (req.op) {
    case IoOp::read:
      if (req.length_bytes == 0) return req.complete(Errc::ok);
      return handle_read(req);
    case IoOp::write:
      if (req.length_bytes == 0) return req.complete(Errc::ok);
      return handle_write(req);
    case IoOp::flush: {
      // Every acknowledged write is durable already; wait for the ones submitted before.
      if (writes_done_ == writes_submitted_) {
        boundary_seq_ = committed_seq_;
        req.complete(Errc::ok);
        return pump_write_back();  // the open epoch may close now
      }
      if (flush_count_ == flush_waiters_.size()) {
        ++counters_.busy;
        return req.complete(Errc::busy);
      }
      flush_waiters_[(flush_head_ + flush_count_++) % flush_waiters_.size()] = {&req,
                                                                                writes_submitted_};
      return;
    }
    case IoOp::discard:
    case IoOp::write_zeroes:
      if (req.length_bytes == 0) return req.complete(Errc::ok);
      return handle_barrier(req);
    case IoOp::block_status:
      return handle_block_status(req);
    case IoOp::access_map:
      return next_.submit(req);
  }
}

void JournalDevice::complete_flushes() noexcept {
  while (flush_count_ > 0 && flush_waiters_[flush_head_].ticket <= writes_done_) {
    IoRequest* r = flush_waiters_[flush_head_].req;
    flush_head_ = (flush_head_ + 1) % flush_waiters_.size();
    --flush_count_;
    boundary_seq_ = committed_seq_;  // an epoch may close here (journal/DESIGN.md "Epochs")
    r->complete(Errc::ok);
  }
}

// ---------------------------------------------------------------- writes, group commit

void JournalDevice::handle_write(IoRequest& req) noexcept {
  if (waiters_count_ == waiters_.size()) {
    ++counters_.busy;
    return req.complete(Errc::busy);
  }
  ++writes_submitted_;
  waiters_[(waiters_head_ + waiters_count_) % waiters_.size()] = &req;
  ++waiters_count_;
  admit_waiters();
}

void JournalDevice::handle_barrier(IoRequest& req) noexcept {
  // Discard and write_zeroes go to next once everything journaled before them is there (so no
  // older write lands on top of them); writes behind them wait. Rare, so simple.
  handle_write(req);
}

bool JournalDevice::try_append(IoRequest& req) noexcept {
  const uint64_t ring_blocks = (ring_end_ - ring_start_) / kBlock;
  // A record header at the batch's end (FORMAT.md "Record"), the CRC left to the caller.
  const auto start_record = [this](Batch& b, uint16_t type) noexcept {
    if (b.records == 0) {
      b.pos = head_pos_;
      b.first_seq = next_seq_;
    }
    std::byte* h = b.buf.data() + b.bytes;
    std::memset(h, 0, kBlock);
    put<uint32_t>(h, 0, kRecordMagic);
    put<uint16_t>(h, 4, uint16_t(kVersion));
    put<uint16_t>(h, 6, type);
    put<uint64_t>(h, 8, nonce_);
    put<uint64_t>(h, 16, boot_gen_);
    put<uint64_t>(h, 24, next_seq_);
    return h;
  };
  // The in-memory record of the one just written at head_pos_, `blocks` long.
  const auto add_record = [this](uint64_t blocks) noexcept -> Record& {
    Record& rec = records_[next_seq_ % records_.size()];
    rec = Record{};
    rec.seq = next_seq_;
    rec.pos = head_pos_;
    rec.blocks = blocks;
    if (next_seq_ == tail_seq_) tail_pos_ = head_pos_;
    ++next_seq_;
    used_blocks_ += blocks;
    return rec;
  };
  while (head_partial_bytes_ < req.length_bytes) {
    Batch& b = batches_[filling_];
    if (b.closed) return false;
    const uint64_t chunk =
        std::min<uint64_t>(opt_.record_data_bytes_max, req.length_bytes - head_partial_bytes_);
    const uint64_t blocks = 1 + blocks_for(chunk);
    if (head_pos_ == ring_end_) {
      head_pos_ = ring_start_;
      if (b.records > 0) {
        b.closed = true;
        return false;
      }
    }
    if (head_pos_ + blocks * kBlock > ring_end_) {
      // Wrap: a marker over the rest of the ring, which closes this batch (batches are contiguous).
      const uint64_t w = (ring_end_ - head_pos_) / kBlock;
      if (used_blocks_ + w + blocks > ring_blocks - 1 ||
          next_seq_ - tail_seq_ + 2 > records_.size()) {
        if (!head_counted_) {
          head_counted_ = true;
          ++counters_.waited_for_space;
        }
        return false;
      }
      if (b.bytes + kBlock > opt_.batch_bytes_max || b.records + 1 > opt_.batch_records_max) {
        b.closed = true;
        return false;
      }
      std::byte* h = start_record(b, kTypeWrap);
      put<uint32_t>(h, kRecordCrcOffset, crc(h, kRecordCrcOffset));
      add_record(w);
      b.bytes += kBlock;
      ++b.records;
      b.closed = true;
      head_pos_ = ring_start_;
      return false;
    }
    if (used_blocks_ + blocks > ring_blocks - 1 || next_seq_ - tail_seq_ + 1 > records_.size()) {
      if (!head_counted_) {
        head_counted_ = true;
        ++counters_.waited_for_space;
      }
      return false;
    }
    if (b.bytes + blocks * kBlock > opt_.batch_bytes_max ||
        b.records + 1 > opt_.batch_records_max) {
      b.closed = true;
      return false;
    }
    std::byte* h = start_record(b, kTypeWrite);
    put<uint64_t>(h, 32, req.offset_bytes + head_partial_bytes_);
    put<uint32_t>(h, 40, uint32_t(chunk));
    std::memcpy(h + kBlock, req.data + head_partial_bytes_, chunk);
    const uint64_t pad = (blocks - 1) * kBlock - chunk;
    if (pad) std::memset(h + kBlock + chunk, 0, pad);
    put<uint32_t>(h, kRecordCrcOffset, crc(h + kBlock, chunk, crc(h, kRecordCrcOffset)));
    Record& rec = add_record(blocks);
    rec.volume_offset = req.offset_bytes + head_partial_bytes_;
    rec.length = uint32_t(chunk);
    head_pos_ += blocks * kBlock;
    b.bytes += blocks * kBlock;
    ++b.records;
    head_partial_bytes_ += chunk;
  }
  batches_[filling_].acks.push_back(&req);
  head_partial_bytes_ = 0;
  head_counted_ = false;
  return true;
}

bool JournalDevice::journal_clean() const noexcept {
  return committed_seq_ + 1 == next_seq_ && !commit_in_flight_ && batches_[filling_].records == 0 &&
         shipped_seq_ == committed_seq_;
}

void JournalDevice::admit_waiters() noexcept {
  if (admitting_ || shutting_down_) return;
  admitting_ = true;
  while (waiters_count_ > 0 && barrier_ == nullptr) {
    IoRequest& head = *waiters_[waiters_head_];
    if (head.op == IoOp::write) {
      if (!try_append(head)) {
        maybe_commit();
        if (commit_in_flight_) break;
        if (!try_append(head)) {
          // Acknowledgements still being delivered go first (writes complete in order), and so
          // does a record just appended (a wrap marker): space may follow it.
          if (!space_is_gone() || !acking_.empty() || batches_[filling_].records > 0) break;
          refuse_head(Errc::no_space);
          ++counters_.no_space;
          continue;
        }
      }
    } else if (!ships()) {
      // Nothing goes to next: a discard is dropped (advisory; the journal keeps the data), a
      // write zeroes is refused (journal/DESIGN.md "Policies").
      maybe_commit();
      if (commit_in_flight_ || !acking_.empty()) break;
      refuse_head(head.op == IoOp::discard ? Errc::ok : Errc::unsupported);
      continue;
    } else {
      // A barrier: everything before it must be on next first.
      maybe_commit();
      if (!journal_clean()) {
        pump_write_back();  // closes the open epoch now rather than at its time bound
        break;
      }
      barrier_ = &head;
    }
    waiters_head_ = (waiters_head_ + 1) % waiters_.size();
    --waiters_count_;
    if (barrier_) run_barrier();  // may complete inline: the loop then goes on
  }
  admitting_ = false;
  maybe_commit();
}

void JournalDevice::refuse_head(Errc e) noexcept {
  IoRequest& head = *waiters_[waiters_head_];
  waiters_head_ = (waiters_head_ + 1) % waiters_.size();
  --waiters_count_;
  head_partial_bytes_ = 0;  // a split write's first records stay (a failed write is undefined)
  head_counted_ = false;
  ++writes_done_;
  head.complete(e);
  complete_flushes();
}

bool JournalDevice::space_is_gone() const noexcept {
  return !ships() && !epoch_open_ && !cp_in_flight_ && tail_seq_ > checkpoint_seq_;
}

Errc JournalDevice::set_policy(Policy p, std::string& why) noexcept {
  if (p == opt_.policy) return Errc::ok;
  if (p == Policy::test_clone || opt_.policy == Policy::test_clone) {
    why = opt_.policy == Policy::test_clone
              ? "a test clone ends only at stop or detach (its writes are then discarded); "
                "shipping them or keeping them as the volume's data would make a clone a fork"
              : "a test clone is chosen when the volume is attached, on an empty journal";
    return Errc::busy;
  }
  opt_.policy = p;
  if (started_) {
    pump_write_back();  // to write-back: the backlog ships now
    admit_waiters();    // to cloud-persist: writes waiting for space that will not come are refused
    check_drained();
  }
  return Errc::ok;
}

void JournalDevice::pause_write_back(bool paused) noexcept {
  paused_ = paused;
  if (!paused && started_) pump_write_back();
}

Errc JournalDevice::flush_write_back(std::string& why) noexcept {
  if (!ships()) {
    why = std::string("the policy is ") + to_string(opt_.policy) + ": nothing is written back";
    return Errc::busy;
  }
  if (paused_) {
    why = "write-back is paused (resume it first)";
    return Errc::busy;
  }
  flush_until_seq_ = committed_seq_;
  if (started_) pump_write_back();
  return Errc::ok;
}

void JournalDevice::maybe_commit() noexcept {
  if (commit_in_flight_) return;
  Batch& b = batches_[filling_];
  if (b.records == 0) return;
  commit_in_flight_ = true;
  filling_ ^= 1;
  b.io = IoRequest{};
  b.io.op = IoOp::write;
  b.io.fua = true;  // RWF_DSYNC: the group's one sync
  b.io.offset_bytes = b.pos;
  b.io.length_bytes = b.bytes;
  b.io.data = b.buf.data();
  b.io.owner = &b;
  b.io.on_complete = &JournalDevice::on_committed;
  jfile_->submit(b.io);
}

void JournalDevice::on_commit_retry(void* batch) noexcept {
  Batch& b = *static_cast<Batch*>(batch);
  b.io.result = Errc::ok;
  b.dev->jfile_->submit(b.io);
}

void JournalDevice::on_committed(IoRequest& io) noexcept {
  Batch& b = *static_cast<Batch*>(io.owner);
  JournalDevice& d = *b.dev;
  if (io.result != Errc::ok && d.shutting_down_) {
    d.commit_in_flight_ = false;  // never acknowledged: those writes are answered cancelled
    for (IoRequest* r : b.acks) r->complete(Errc::cancelled);
    b.acks.clear();
    return d.check_quiesced();
  }
  if (io.result != Errc::ok) {
    // The records keep their places (later ones follow them in the ring): retry, never skip.
    ++d.counters_.journal_errors;
    std::fprintf(stderr, "ferry: journal %s: commit failed (%s); retrying\n", d.opt_.path.c_str(),
                 to_string(io.result));
    d.reactor_->arm(b.timer, uint64_t(d.backoff_ms(b.attempt++)) * 1'000'000, &on_commit_retry, &b);
    return;
  }
  b.attempt = 0;
  const uint64_t now = d.reactor_->now_ns();
  for (uint64_t s = b.first_seq; s < b.first_seq + b.records; ++s) {
    Record* r = d.record_of(s);
    r->committed_ns = now;
    if (r->length) {
      d.index_insert(r->volume_offset, r->volume_offset + r->length, s, r->pos + kBlock);
      ++d.counters_.records;
      d.counters_.bytes_journaled += r->length;
    }
  }
  d.committed_seq_ = b.first_seq + b.records - 1;
  ++d.counters_.group_commits;
  std::swap(d.acking_, b.acks);
  b.acks.clear();
  b.records = 0;
  b.bytes = 0;
  b.closed = false;
  d.commit_in_flight_ = false;
  // The next group (whatever arrived meanwhile) goes at once; then the acknowledgements.
  d.admit_waiters();
  for (IoRequest* r : d.acking_) {
    ++d.writes_done_;
    if (r->fua) d.boundary_seq_ = d.committed_seq_;  // a FUA write is a boundary too
    r->complete(Errc::ok);
  }
  d.acking_.clear();
  d.complete_flushes();
  d.admit_waiters();
  d.pump_write_back();
  d.check_quiesced();
}

// ---------------------------------------------------------------- barriers

void JournalDevice::run_barrier() noexcept {
  IoRequest& u = *barrier_;
  ++counters_.barriers;
  barrier_io_ = IoRequest{};
  barrier_io_.op = u.op;
  barrier_io_.fua = u.fua;
  barrier_io_.may_deallocate = u.may_deallocate;
  barrier_io_.priority = u.priority;
  barrier_io_.offset_bytes = u.offset_bytes;
  barrier_io_.length_bytes = u.length_bytes;
  barrier_io_.owner = this;
  barrier_io_.on_complete = &JournalDevice::on_barrier_done;
  next_.submit(barrier_io_);
}

void JournalDevice::on_barrier_done(IoRequest& io) noexcept {
  JournalDevice& d = *static_cast<JournalDevice*>(io.owner);
  IoRequest* u = d.barrier_;
  d.barrier_ = nullptr;
  ++d.writes_done_;
  u->complete(io.result);
  d.complete_flushes();
  d.admit_waiters();
  d.check_quiesced();
}

// ---------------------------------------------------------------- block status

void JournalDevice::handle_block_status(IoRequest& req) noexcept {
  const uint64_t start = req.offset_bytes, end = start + req.length_bytes;
  auto it = index_.upper_bound(start);
  if (it != index_.begin() && std::prev(it)->second.end > start) {
    req.status_flags = 0;  // journaled: data
    req.status_length_bytes = std::min(end, std::prev(it)->second.end) - start;
    return req.complete(Errc::ok);
  }
  if (it != index_.end() && it->first < end)
    req.length_bytes = it->first - start;  // next answers up to it
  next_.submit(req);
}

// ---------------------------------------------------------------- reads

void JournalDevice::handle_read(IoRequest& req) noexcept {
  const uint64_t start = req.offset_bytes, end = start + req.length_bytes;
  auto it = index_.upper_bound(start);
  const bool covered = (it != index_.begin() && std::prev(it)->second.end > start) ||
                       (it != index_.end() && it->first < end);
  if (!covered && read_waiters_count_ == 0) return next_.submit(req);  // nothing newer here
  if (free_reads_.empty() || read_waiters_count_ > 0) {
    if (read_waiters_count_ == read_waiters_.size()) {
      ++counters_.busy;
      return req.complete(Errc::busy);
    }
    read_waiters_[(read_waiters_head_ + read_waiters_count_) % read_waiters_.size()] = &req;
    ++read_waiters_count_;
    return;
  }
  ReadOp& op = *free_reads_.back();
  free_reads_.pop_back();
  op.user = &req;
  req.lent = nullptr;
  op.cursor = start;
  op.end = end;
  op.in_flight = 0;
  op.error = Errc::ok;
  read_step(op);
}

void JournalDevice::read_step(ReadOp& op) noexcept {
  if (op.stepping) return;
  op.stepping = true;
  while (op.cursor < op.end && op.in_flight < kReadPieces) {
    ReadOp::Piece* p = nullptr;
    for (auto& q : op.pieces)
      if (!q.busy) {
        p = &q;
        break;
      }
    FERRY_ASSERT(p != nullptr);
    const uint64_t at = op.cursor;
    uint64_t piece_end = op.end;
    p->seq = 0;
    uint64_t journal_pos = 0;
    auto it = index_.upper_bound(at);
    if (it != index_.begin() && std::prev(it)->second.end > at) {
      const auto& [s, e] = *std::prev(it);
      piece_end = std::min(piece_end, e.end);
      p->seq = e.seq;
      journal_pos = e.journal_pos + (at - s);
    } else if (it != index_.end() && it->first < piece_end) {
      piece_end = it->first;
    }
    IoRequest& io = p->io;
    io = IoRequest{};
    io.op = IoOp::read;
    io.priority = op.user->priority;
    io.length_bytes = piece_end - at;
    io.data = op.user->data + (at - op.user->offset_bytes);
    io.owner = p;
    p->op = &op;
    io.on_complete = &JournalDevice::on_read_piece;
    p->busy = true;
    ++op.in_flight;
    op.cursor = piece_end;
    if (p->seq) {
      ++record_of(p->seq)->readers;  // its ring space stays until this read is done
      ++counters_.reads_from_journal;
      io.offset_bytes = journal_pos;
      jread_->submit(io);
    } else {
      io.offset_bytes = at;
      next_.submit(io);
    }
  }
  op.stepping = false;
  if (op.in_flight == 0 && op.cursor >= op.end) finish_read(op);
}

void JournalDevice::on_read_piece(IoRequest& io) noexcept {
  ReadOp::Piece* p = static_cast<ReadOp::Piece*>(io.owner);
  ReadOp& op = *p->op;
  JournalDevice& d = *op.dev;
  if (io.result != Errc::ok && op.error == Errc::ok) op.error = io.result;
  if (p->seq) {
    Record* r = d.record_of(p->seq);
    --r->readers;
    if (r->readers == 0 && r->seq == d.tail_seq_) d.reclaim();
  }
  p->busy = false;
  --op.in_flight;
  if (op.stepping) return;                       // completed inside submit: read_step goes on
  if (op.error != Errc::ok) op.cursor = op.end;  // issue no more
  d.read_step(op);
}

void JournalDevice::finish_read(ReadOp& op) noexcept {
  IoRequest* u = op.user;
  op.user = nullptr;
  free_reads_.push_back(&op);
  const Errc e = op.error;
  u->complete(e);
  while (read_waiters_count_ > 0 && !free_reads_.empty()) {
    IoRequest* r = read_waiters_[read_waiters_head_];
    read_waiters_head_ = (read_waiters_head_ + 1) % read_waiters_.size();
    --read_waiters_count_;
    ReadOp& o = *free_reads_.back();
    free_reads_.pop_back();
    o.user = r;
    r->lent = nullptr;
    o.cursor = r->offset_bytes;
    o.end = r->offset_bytes + r->length_bytes;
    o.in_flight = 0;
    o.error = Errc::ok;
    read_step(o);
  }
  check_quiesced();
}

// ---------------------------------------------------------------- write-back

// Epoch cycle: cut (records [wb_seq_, end] coalesced into epoch_map_) → ship every extent
// (write_back_ops_max in flight; disjoint, so their order does not matter) → commit (a flush
// with epoch_id; the datacenter edge's redo log makes the epoch atomic) → index entries of the
// epoch dropped → checkpoint (superblock) → reclaim → next cut. A failed commit ships the whole
// epoch again.
void JournalDevice::pump_write_back() noexcept {
  if (pumping_ || !started_ || !opt_.write_back || shutting_down_) return;
  pumping_ = true;
  note_rpo(reactor_->now_ns());
  if (!epoch_open_ && !cp_in_flight_ && ships() && !paused_) cut_epoch();
  if (epoch_open_ && !cp_in_flight_) {
    while (!free_wb_.empty()) {
      auto it = epoch_map_.upper_bound(epoch_cursor_);
      if (it != epoch_map_.begin() && std::prev(it)->second.end > epoch_cursor_) --it;
      if (it == epoch_map_.end()) break;
      const uint64_t piece_start = std::max(it->first, epoch_cursor_);
      const uint64_t piece_end =
          std::min<uint64_t>(it->second.end, piece_start + opt_.write_back_piece_bytes_max);
      if (!rate_allows(piece_end - piece_start, reactor_->now_ns())) break;  // rate_timer_ wakes
      WbOp& op = *free_wb_.back();
      free_wb_.pop_back();
      op.seq = it->second.seq;
      op.volume_offset = piece_start;
      op.length = piece_end - piece_start;
      op.journal_pos = it->second.journal_pos + (piece_start - it->first);
      op.attempt = 0;
      ++record_of(op.seq)->pieces_in_flight;
      ++epoch_pieces_;
      epoch_cursor_ = piece_end;
      start_piece(op);  // may complete inline (piece_done does not pump while we do)
    }
    const bool all_sent =
        epoch_map_.upper_bound(epoch_cursor_) == epoch_map_.end() &&
        (epoch_map_.empty() || std::prev(epoch_map_.end())->second.end <= epoch_cursor_);
    if (all_sent && epoch_pieces_ == 0) start_commit();
  }
  pumping_ = false;
  if (waiters_count_ > 0 && barrier_ == nullptr) admit_waiters();  // a barrier may be clear now
}

void JournalDevice::on_epoch_timer(void* p) noexcept {
  static_cast<JournalDevice*>(p)->pump_write_back();
}

bool JournalDevice::cut_epoch() noexcept {
  if (wb_seq_ > committed_seq_) return false;
  // The longest run of records from wb_seq_ within the size bound (at least one record),
  // scanned incrementally: each record is looked at once per epoch, not at every group commit.
  if (scan_from_ != wb_seq_) {
    scan_from_ = scan_seq_ = scan_limit_ = wb_seq_;
    scan_bytes_ = 0;
    scan_size_hit_ = false;
  }
  for (; !scan_size_hit_ && scan_seq_ <= committed_seq_; ++scan_seq_) {
    const uint64_t len = record_of(scan_seq_)->length;
    if (scan_seq_ > wb_seq_ && scan_bytes_ + len > opt_.epoch_bytes_max) {
      scan_size_hit_ = true;
      break;
    }
    scan_bytes_ += len;
    scan_limit_ = scan_seq_;
  }
  const uint64_t limit = scan_limit_;
  const bool size_hit = scan_size_hit_;
  uint64_t end;
  bool at_boundary = false;
  if (boundary_seq_ >= wb_seq_) {
    end = std::min(boundary_seq_, limit);
    at_boundary = end == boundary_seq_;
  } else {
    const uint64_t age_ns = reactor_->now_ns() - record_of(wb_seq_)->committed_ns;
    const uint64_t max_ns = uint64_t(opt_.epoch_ms_max) * 1'000'000;
    // A drain, or a discard / write zeroes waiting for the journal to empty, closes it at once.
    const bool barrier_waiting = waiters_count_ > 0 && waiters_[waiters_head_]->op != IoOp::write;
    if (!size_hit && !drain_done_ && !barrier_waiting && flush_until_seq_ < wb_seq_ &&
        age_ns < max_ns) {
      // No boundary yet: wait for one, at most until the oldest write is epoch_ms_max old.
      if (!epoch_timer_.armed())
        reactor_->arm(epoch_timer_, max_ns - age_ns, &on_epoch_timer, this);
      return false;
    }
    end = limit;
  }
  if (epoch_timer_.armed()) reactor_->cancel(epoch_timer_);
  epoch_map_.clear();
  epoch_bytes_ = 0;
  epoch_record_bytes_ = 0;
  for (uint64_t s = wb_seq_; s <= end; ++s) {
    const Record* r = record_of(s);
    if (r->length == 0) continue;  // wrap marker
    epoch_record_bytes_ += r->length;
    epoch_bytes_ = uint64_t(int64_t(epoch_bytes_) + map_insert(epoch_map_, r->volume_offset,
                                                               r->volume_offset + r->length, s,
                                                               r->pos + kBlock));
  }
  epoch_end_seq_ = end;
  epoch_at_boundary_ = at_boundary;
  epoch_cursor_ = 0;
  epoch_pieces_ = 0;
  epoch_open_ = true;
  return true;
}

void JournalDevice::start_commit() noexcept {
  cp_in_flight_ = true;
  cp_target_seq_ = epoch_end_seq_;
  cp_target_pos_ = cp_target_seq_ + 1 < next_seq_ ? record_of(cp_target_seq_ + 1)->pos : head_pos_;
  cp_io_ = IoRequest{};
  cp_io_.op = IoOp::flush;
  cp_io_.priority = IoPriority::write_back;
  cp_io_.epoch_id = epoch_end_seq_;
  cp_io_.epoch_stream = nonce_;
  cp_io_.length_bytes = epoch_bytes_;
  cp_io_.owner = this;
  cp_io_.on_complete = &JournalDevice::on_next_flushed;
  next_.submit(cp_io_);
}

void JournalDevice::start_piece(WbOp& op) noexcept {
  op.io = IoRequest{};
  op.io.priority = IoPriority::write_back;
  op.io.length_bytes = op.length;
  op.io.data = op.buf.data();
  op.io.owner = &op;
  op.io.on_complete = &JournalDevice::on_wb_io;
  if (!op.writing) {
    op.io.op = IoOp::read;
    op.io.offset_bytes = op.journal_pos;
    jread_->submit(op.io);
  } else {
    op.io.op = IoOp::write;
    op.io.offset_bytes = op.volume_offset;
    op.io.epoch_write = true;  // held aside by a redo log below until the epoch commits
    next_.submit(op.io);
  }
}

void JournalDevice::on_wb_retry(void* p) noexcept {
  WbOp& op = *static_cast<WbOp*>(p);
  op.dev->start_piece(op);
}

void JournalDevice::on_wb_io(IoRequest& io) noexcept {
  WbOp& op = *static_cast<WbOp*>(io.owner);
  JournalDevice& d = *op.dev;
  if (d.shutting_down_ && (io.result != Errc::ok || !op.writing)) {
    // Abandon the piece: the record stays in the journal.
    --d.record_of(op.seq)->pieces_in_flight;
    op.seq = 0;
    op.writing = false;
    d.free_wb_.push_back(&op);
    return d.check_quiesced();
  }
  if (io.result != Errc::ok) {
    // The write stays in the journal: retry with back-off, for as long as it takes.
    if (op.writing) {
      ++d.counters_.next_errors;
      if (!d.next_failing_)
        std::fprintf(stderr,
                     "ferry: journal %s: write-back to %.*s failed (%s); retrying with back-off\n",
                     d.opt_.path.c_str(), int(d.next_.describe().size()), d.next_.describe().data(),
                     to_string(io.result));
      d.next_failing_ = true;
    } else {
      ++d.counters_.journal_errors;
    }
    d.reactor_->arm(op.timer, uint64_t(d.backoff_ms(op.attempt++)) * 1'000'000, &on_wb_retry, &op);
    return;
  }
  if (!op.writing) {
    op.writing = true;
    op.attempt = 0;
    d.start_piece(op);
    return;
  }
  if (d.next_failing_) {
    std::fprintf(stderr, "ferry: journal %s: write-back to next works again\n",
                 d.opt_.path.c_str());
    d.next_failing_ = false;
  }
  d.piece_done(op);
}

void JournalDevice::piece_done(WbOp& op) noexcept {
  --record_of(op.seq)->pieces_in_flight;
  --epoch_pieces_;
  op.seq = 0;
  op.writing = false;
  free_wb_.push_back(&op);
  pump_write_back();
  check_quiesced();
}

// ---------------------------------------------------------------- commit, checkpoint, reclaim

// The commit failed (next refused the epoch or went away): ship the whole epoch again, then
// commit again (the datacenter edge discarded what it had of it).
void JournalDevice::on_cp_retry(void* p) noexcept {
  JournalDevice& d = *static_cast<JournalDevice*>(p);
  d.cp_in_flight_ = false;
  d.epoch_cursor_ = 0;
  ++d.counters_.epoch_retries;
  d.pump_write_back();
}

void JournalDevice::on_next_flushed(IoRequest& io) noexcept {
  JournalDevice& d = *static_cast<JournalDevice*>(io.owner);
  if (d.shutting_down_) {
    d.cp_in_flight_ = false;
    return d.check_quiesced();
  }
  if (io.result != Errc::ok) {
    ++d.counters_.next_errors;
    if (!d.next_failing_)
      std::fprintf(stderr,
                   "ferry: journal %s: commit of epoch %" PRIu64
                   " on %.*s failed (%s); shipping it again\n",
                   d.opt_.path.c_str(), d.epoch_end_seq_, int(d.next_.describe().size()),
                   d.next_.describe().data(), to_string(io.result));
    d.next_failing_ = true;
    d.reactor_->arm(d.cp_timer_, uint64_t(d.backoff_ms(d.cp_attempt_++)) * 1'000'000, &on_cp_retry,
                    &d);
    return;
  }
  // The epoch is committed on next: reads of its extents go there from now on (unless a later
  // write is journaled over them), and the journal says so in its superblock.
  for (const auto& [start, e] : d.epoch_map_) d.index_erase_seq(start, e.end, e.seq);
  d.counters_.bytes_written_back += d.epoch_bytes_;
  d.counters_.bytes_superseded += d.epoch_record_bytes_ - d.epoch_bytes_;
  ++d.counters_.epochs;
  if (d.epoch_at_boundary_) ++d.counters_.epochs_at_boundary;
  {  // the epoch's oldest write was on the cloud side only until now: the measured lag
    const uint64_t now = d.reactor_->now_ns(), born = d.record_of(d.wb_seq_)->committed_ns;
    d.counters_.write_back_lag_ms_max =
        std::max(d.counters_.write_back_lag_ms_max, now > born ? (now - born) / 1'000'000 : 0);
  }
  if (d.next_failing_) {
    std::fprintf(stderr, "ferry: journal %s: write-back to next works again\n",
                 d.opt_.path.c_str());
    d.next_failing_ = false;
  }
  // Everything up to cp_target_seq_ is durable on next: say so in the journal.
  d.write_checkpoint();
}

void JournalDevice::write_checkpoint() noexcept {
  encode_superblock(cp_buf_.data());
  cp_io_ = IoRequest{};
  cp_io_.op = IoOp::write;
  cp_io_.fua = true;
  cp_io_.offset_bytes = ((sb_gen_ + 1) % 2) * kBlock;
  cp_io_.length_bytes = kBlock;
  cp_io_.data = cp_buf_.data();
  cp_io_.owner = this;
  cp_io_.on_complete = &JournalDevice::on_checkpoint_written;
  jfile_->submit(cp_io_);
}

void JournalDevice::on_sb_retry(void* p) noexcept {
  static_cast<JournalDevice*>(p)->write_checkpoint();
}

void JournalDevice::on_checkpoint_written(IoRequest& io) noexcept {
  JournalDevice& d = *static_cast<JournalDevice*>(io.owner);
  if (io.result != Errc::ok && d.shutting_down_) {
    d.cp_in_flight_ = false;
    return d.check_quiesced();
  }
  if (io.result != Errc::ok) {
    ++d.counters_.journal_errors;
    d.reactor_->arm(d.cp_timer_, uint64_t(d.backoff_ms(d.cp_attempt_++)) * 1'000'000, &on_sb_retry,
                    &d);
    return;
  }
  d.cp_attempt_ = 0;
  ++d.sb_gen_;
  d.checkpoint_seq_ = d.cp_target_seq_;
  d.checkpoint_pos_ = d.cp_target_pos_;
  ++d.counters_.checkpoints;
  d.cp_in_flight_ = false;
  d.shipped_seq_ = d.epoch_end_seq_;
  d.wb_seq_ = d.epoch_end_seq_ + 1;
  d.epoch_open_ = false;
  d.epoch_map_.clear();
  d.reclaim();
  d.pump_write_back();
  d.check_drained();
  d.check_quiesced();
}

void JournalDevice::reclaim() noexcept {
  bool freed = false;
  while (tail_seq_ <= checkpoint_seq_) {
    Record& r = records_[tail_seq_ % records_.size()];
    if (r.readers) break;  // a read of its data is in flight
    used_blocks_ -= r.blocks;
    ++tail_seq_;
    freed = true;
  }
  tail_pos_ = tail_seq_ < next_seq_ ? records_[tail_seq_ % records_.size()].pos : head_pos_;
  if (freed) admit_waiters();
}

void JournalDevice::drain(std::function<void()> done) noexcept {
  drain_done_ = std::move(done);
  if (!started_) start();
  pump_write_back();  // a drain closes the open epoch at once
  check_drained();
}

void JournalDevice::shutdown(std::function<void()> done) noexcept {
  shutdown_done_ = std::move(done);
  shutting_down_ = true;
  Reactor* r = reactor_ ? reactor_ : Reactor::current();
  for (WbOp& op : wb_ops()) {
    if (op.timer.armed()) {
      r->cancel(op.timer);
      --record_of(op.seq)->pieces_in_flight;
      op.seq = 0;
      op.writing = false;
      free_wb_.push_back(&op);
    }
  }
  if (cp_timer_.armed()) {
    r->cancel(cp_timer_);
    cp_in_flight_ = false;
  }
  if (epoch_timer_.armed()) r->cancel(epoch_timer_);
  if (rate_timer_.armed()) r->cancel(rate_timer_);
  for (Batch& b : batches_) {
    if (b.timer.armed()) {
      r->cancel(b.timer);
      commit_in_flight_ = false;
      for (IoRequest* q : b.acks) q->complete(Errc::cancelled);
      b.acks.clear();
    }
  }
  while (waiters_count_ > 0) {
    IoRequest* q = waiters_[waiters_head_];
    waiters_head_ = (waiters_head_ + 1) % waiters_.size();
    --waiters_count_;
    q->complete(Errc::cancelled);
  }
  while (flush_count_ > 0) {
    IoRequest* q = flush_waiters_[flush_head_].req;
    flush_head_ = (flush_head_ + 1) % flush_waiters_.size();
    --flush_count_;
    q->complete(Errc::cancelled);
  }
  check_quiesced();
}

void JournalDevice::check_quiesced() noexcept {
  if (!shutting_down_ || !shutdown_done_) return;
  if (free_wb_.size() != opt_.write_back_ops_max || cp_in_flight_ || commit_in_flight_ ||
      barrier_ != nullptr || free_reads_.size() != opt_.reads_max)
    return;
  auto fn = std::move(shutdown_done_);
  shutdown_done_ = nullptr;
  fn();
}

void JournalDevice::check_drained() noexcept {
  if (!drain_done_) return;
  if (waiters_count_ == 0 && barrier_ == nullptr && journal_clean() &&
      checkpoint_seq_ == committed_seq_) {
    auto fn = std::move(drain_done_);
    drain_done_ = nullptr;
    fn();
  }
}

}  // namespace ferry::journal
