// SsdCache (see ssd_cache.h, cache/DESIGN.md "SsdCache", cache/FORMAT.md). Runs on its
// device's one reactor thread; create() does synchronous file I/O on the calling thread.
#include "cache/ssd_cache.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>

#include "datapath/assert.h"
#include "datapath/file_device.h"
#include "datapath/wan/frame.h"

namespace ferry::cache {

namespace {

constexpr char kMagic[8] = {'F', 'E', 'R', 'R', 'Y', 'S', 'S', 'D'};
constexpr uint32_t kRecordMagic = 0x31525346;  // "FSR1" little endian
constexpr uint32_t kFlagEncrypted = 1;
constexpr uint32_t kNameBytesMax = 255;

void put32(std::byte* p, uint32_t v) noexcept { std::memcpy(p, &v, 4); }  // little endian hosts
void put64(std::byte* p, uint64_t v) noexcept { std::memcpy(p, &v, 8); }
uint32_t get32(const std::byte* p) noexcept {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
uint64_t get64(const std::byte* p) noexcept {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
uint32_t crc(const std::byte* p, size_t n, uint32_t prev = 0) noexcept {
  return wan::crc32c({reinterpret_cast<const uint8_t*>(p), n}, prev);
}
uint32_t pow2_at_least(uint32_t n) noexcept {
  uint32_t p = 64;
  while (p < n) p <<= 1;
  return p;
}
bool full_pread(int fd, std::byte* p, size_t n, uint64_t off) noexcept {
  while (n > 0) {
    ssize_t r = pread(fd, p, n, off_t(off));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r, n -= size_t(r), off += uint64_t(r);
  }
  return true;
}
bool full_pwrite(int fd, const std::byte* p, size_t n, uint64_t off) noexcept {
  while (n > 0) {
    ssize_t r = pwrite(fd, p, n, off_t(off));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r, n -= size_t(r), off += uint64_t(r);
  }
  return true;
}
struct AlignedFree {
  void operator()(std::byte* p) const noexcept { std::free(p); }
};
using AlignedBuf = std::unique_ptr<std::byte, AlignedFree>;
AlignedBuf aligned(size_t n) noexcept {
  void* p = nullptr;
  if (posix_memalign(&p, 4096, std::max<size_t>(n, 4096)) != 0) return nullptr;
  std::memset(p, 0, std::max<size_t>(n, 4096));
  return AlignedBuf(static_cast<std::byte*>(p));
}
void set_why(std::string* why, std::string text) {
  if (why) *why = std::move(text);
}

// Reads the AES-256-XTS key: 64 raw bytes or 128 hex digits (+ optional newline). Refuses a file
// that group or others may read.
Result<void> load_key(const std::string& path, uint8_t key[64], std::string* why) noexcept {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    set_why(why, "cannot open key file " + path + ": " + std::strerror(errno));
    return Errc::not_found;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || (st.st_mode & 077) != 0) {
    ::close(fd);
    set_why(why, "key file " + path + " is readable by group or others (chmod 600 it)");
    return Errc::auth_failed;
  }
  char text[256];
  ssize_t n = read(fd, text, sizeof text);
  ::close(fd);
  if (n == 64) {
    std::memcpy(key, text, 64);
  } else {
    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r' || text[n - 1] == ' ')) --n;
    if (n != 128) {
      set_why(why, "key file " + path + " must hold 64 bytes (or 128 hex digits)");
      return Errc::invalid_argument;
    }
    for (int i = 0; i < 64; ++i) {
      unsigned v = 0;
      if (std::sscanf(text + 2 * i, "%2x", &v) != 1) {
        set_why(why, "key file " + path + ": not hex");
        return Errc::invalid_argument;
      }
      key[i] = uint8_t(v);
    }
  }
  if (std::memcmp(key, key + 32, 32) == 0) {
    set_why(why, "key file " + path + ": the two XTS key halves must differ");
    return Errc::invalid_argument;
  }
  return {};
}

}  // namespace

SsdCache::SsdCache(BlockDevice& next, const SsdCacheOptions& o) noexcept
    : next_(next), opt_(o), policy_(0) {}

SsdCache::~SsdCache() {
  if (enc_) EVP_CIPHER_CTX_free(enc_);
  if (dec_) EVP_CIPHER_CTX_free(dec_);
  std::free(mem_);
}

Result<std::unique_ptr<SsdCache>> SsdCache::create(BlockDevice& next, const SsdCacheOptions& o,
                                                   std::string* why) noexcept {
  const Geometry g = next.geometry();
  if (o.path.empty() || o.chunk_bytes == 0 || o.chunk_bytes % kUnitBytes != 0 ||
      o.chunk_bytes > (1u << 20) || o.fetches_max == 0 || o.reads_max == 0 || o.writes_max == 0 ||
      o.meta_writes_max == 0 || o.volume_name.size() > kNameBytesMax || g.size_bytes() == 0) {
    set_why(why, "invalid SSD cache options");
    return Errc::invalid_argument;
  }
  std::unique_ptr<SsdCache> c(new (std::nothrow) SsdCache(next, o));
  if (!c) return Errc::no_memory;
  c->volume_bytes_ = g.size_bytes();
  c->sector_bytes_ = g.block_size_bytes;
  c->units_per_chunk_ = o.chunk_bytes / kUnitBytes;
  c->words_ = (c->units_per_chunk_ + 63) / 64;
  c->record_bytes_ = pow2_at_least(32 + 8 * c->words_ + 4 * c->units_per_chunk_);
  c->records_per_block_ = kMetaBlockBytes / c->record_bytes_;
  if (!o.key_file.empty()) {
    uint8_t key[64];
    if (auto r = load_key(o.key_file, key, why); !r) return r.error();
    c->enc_ = EVP_CIPHER_CTX_new();
    c->dec_ = EVP_CIPHER_CTX_new();
    if (!c->enc_ || !c->dec_ ||
        EVP_EncryptInit_ex(c->enc_, EVP_aes_256_xts(), nullptr, key, nullptr) != 1 ||
        EVP_DecryptInit_ex(c->dec_, EVP_aes_256_xts(), nullptr, key, nullptr) != 1) {
      set_why(why, "AES-256-XTS setup failed (OpenSSL)");
      return Errc::unsupported;
    }
    uint8_t in[28 + 64], digest[EVP_MAX_MD_SIZE];
    unsigned digest_bytes = 0;
    // NOLINTNEXTLINE(bugprone-not-null-terminated-result): 28 bytes of a label, not a string
    std::memcpy(in, "ferry ssd-cache key check v1", 28);
    std::memcpy(in + 28, key, 64);
    if (EVP_Digest(in, sizeof in, digest, &digest_bytes, EVP_sha256(), nullptr) != 1) {
      set_why(why, "SHA-256 failed (OpenSSL)");
      return Errc::unsupported;
    }
    OPENSSL_cleanse(in, sizeof in);
    std::memcpy(c->key_check_, digest, 16);
    OPENSSL_cleanse(key, sizeof key);
  }
  if (auto r = c->open_file(why); !r) return r.error();
  // Geometry of the file: superblock, metadata blocks, data slots.
  const uint64_t per_slot = uint64_t(o.chunk_bytes) + c->record_bytes_;
  if (c->file_bytes_ < kSuperblockBytes + 2 * (kMetaBlockBytes + per_slot)) {
    set_why(why, "SSD cache file " + o.path + " is too small (give a size)");
    return Errc::invalid_argument;
  }
  uint64_t n = (c->file_bytes_ - kSuperblockBytes - kMetaBlockBytes) / per_slot;
  auto meta_bytes = [&](uint64_t slots) {
    return (slots + c->records_per_block_ - 1) / c->records_per_block_ * kMetaBlockBytes;
  };
  while (n > 2 && kSuperblockBytes + meta_bytes(n) + n * o.chunk_bytes > c->file_bytes_) --n;
  n = std::min<uint64_t>(n, UINT32_MAX / 2);
  c->slot_count_ = uint32_t(n);
  c->block_count_ = uint32_t(meta_bytes(n) / kMetaBlockBytes);
  c->meta_offset_ = kSuperblockBytes;
  c->data_offset_ = kSuperblockBytes + meta_bytes(n);
  c->low_water_ = std::clamp<uint32_t>(c->slot_count_ / 32, 1, 64);

  // Fixed memory: per-slot state, metadata versions, ops and their aligned buffers.
  c->slots_.resize(n);
  c->bits_.assign(size_t(n) * c->words_, 0);
  c->crcs_.assign(size_t(n) * c->units_per_chunk_, 0);
  c->policy_ = S3Fifo(uint32_t(n));
  c->index_.reserve(n);
  c->mutated_.assign(c->block_count_, 0);
  c->durable_.assign(c->block_count_, 0);
  c->meta_inflight_.assign(c->block_count_, 0);
  c->meta_queued_.assign(c->block_count_, 0);
  c->meta_queue_.reserve(c->block_count_);
  const size_t buf_bytes = (size_t(o.reads_max) + o.fetches_max) * o.chunk_bytes +
                           size_t(o.meta_writes_max) * kMetaBlockBytes + kSuperblockBytes;
  void* mem = nullptr;
  if (posix_memalign(&mem, 4096, buf_bytes) != 0) return Errc::no_memory;
  c->mem_ = static_cast<std::byte*>(mem);
  std::byte* p = c->mem_;
  c->ctxs_.resize(o.reads_max);
  for (auto& x : c->ctxs_) c->free_ctxs_.push_back(&x);
  c->reads_.resize(o.reads_max);
  for (auto& r : c->reads_) {
    r.cache = c.get();
    r.buf = p;
    p += o.chunk_bytes;
    r.io.owner = &r;
    c->free_reads_.push_back(&r);
  }
  c->fetches_.resize(o.fetches_max);
  for (auto& f : c->fetches_) {
    f.cache = c.get();
    f.buf = p;
    p += o.chunk_bytes;
    f.crcs.resize(c->units_per_chunk_);
    f.io.owner = &f;
    c->free_fetches_.push_back(&f);
  }
  c->metas_.resize(o.meta_writes_max);
  for (auto& m : c->metas_) {
    m.cache = c.get();
    m.buf = p;
    p += kMetaBlockBytes;
    m.io.owner = &m;
    c->free_metas_.push_back(&m);
  }
  c->sb_buf_ = p;
  c->writes_.resize(o.writes_max);
  for (auto& w : c->writes_) {
    w.cache = c.get();
    w.io.owner = &w;
    c->free_writes_.push_back(&w);
  }
  c->waiting_.reserve(o.writes_max);
  c->ready_scratch_.reserve(o.writes_max);
  for (uint32_t s = 0; s < n; ++s) c->free_slots_.push_back(uint32_t(n) - 1 - s);
  if (auto r = c->load_or_format(why); !r) return r.error();
  c->io_ = c->file_.get();
  if (o.wrap_file) c->io_ = o.wrap_file(*c->file_);
  c->description_ = "ssd-cache:" + o.path + ":" + std::to_string(c->file_bytes_ >> 20) + "MiB/" +
                    std::to_string(o.chunk_bytes >> 10) + "KiB," +
                    (c->enc_ ? "aes-xts" : "plaintext (no --ssd-cache-key)") +
                    (c->direct_ ? "" : ",buffered") + ",restored " +
                    std::to_string(c->counters_.restored_chunks) + " chunks" +
                    (c->open_note_.empty() ? "" : " (started empty: " + c->open_note_ + ")") + ">" +
                    std::string(next.describe());
  return c;
}

Result<void> SsdCache::open_file(std::string* why) noexcept {
  int fd = ::open(opt_.path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    set_why(why, "cannot open SSD cache " + opt_.path + ": " + std::strerror(errno));
    return Errc::io_error;
  }
  struct stat st;
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && opt_.size_bytes != 0) {
    const uint64_t want = opt_.size_bytes & ~uint64_t(kUnitBytes - 1);
    if (uint64_t(st.st_size) != want && ftruncate(fd, off_t(want)) != 0) {
      set_why(why, "cannot size SSD cache " + opt_.path + ": " + std::strerror(errno));
      ::close(fd);
      return Errc::io_error;
    }
    (void)posix_fallocate(fd, 0, off_t(want));  // best effort: writes then allocate nothing
  }
  ::close(fd);
  FileDeviceOptions fo;
  fo.direct_io = opt_.direct_io;
  fo.block_size_bytes = 4096;
  auto f = FileDevice::open(opt_.path, fo);
  if (!f && opt_.direct_io) {  // e.g. a file system without O_DIRECT
    fo.direct_io = false;
    f = FileDevice::open(opt_.path, fo);
  }
  if (!f) {
    set_why(why, "cannot open SSD cache " + opt_.path);
    return f.error();
  }
  direct_ = fo.direct_io;
  file_ = std::move(f.value());
  file_bytes_ = file_->geometry().size_bytes();
  return {};
}

void SsdCache::encode_superblock(std::byte* b) const noexcept {
  std::memset(b, 0, kSuperblockBytes);
  std::memcpy(b, kMagic, 8);
  put32(b + 8, kFormatVersion);
  put32(b + 16, opt_.chunk_bytes);
  put32(b + 20, kUnitBytes);
  put32(b + 24, sector_bytes_);
  put32(b + 28, record_bytes_);
  put64(b + 32, slot_count_);
  put64(b + 40, meta_offset_);
  put64(b + 48, data_offset_);
  put64(b + 56, volume_bytes_);
  std::memcpy(b + 64, opt_.volume_uuid.bytes.data(), 16);
  put32(b + 80, enc_ ? kFlagEncrypted : 0);
  std::memcpy(b + 88, key_check_, 16);
  b[104] = std::byte(opt_.volume_name.size());
  std::memcpy(b + 105, opt_.volume_name.data(), opt_.volume_name.size());
  put32(b + 12, crc(b, kSuperblockBytes));
}

// Record of a slot: magic, record CRC, chunk, seq, slot, unit count, validity bits, unit CRCs.
// An unused or evicting slot encodes as zeroes (no claim).
void SsdCache::encode_record(uint32_t s, std::byte* r) const noexcept {
  std::memset(r, 0, record_bytes_);
  const Slot& sl = slots_[s];
  bool any = false;
  for (uint32_t w = 0; w < words_; ++w) any |= bits_[size_t(s) * words_ + w] != 0;
  if (!sl.used || sl.evicting || !any) return;
  put32(r, kRecordMagic);
  put64(r + 8, sl.chunk);
  put64(r + 16, sl.seq);
  put32(r + 24, s);
  put32(r + 28, units_per_chunk_);
  std::memcpy(r + 32, &bits_[size_t(s) * words_], 8 * words_);
  std::memcpy(r + 32 + 8 * words_, &crcs_[size_t(s) * units_per_chunk_], 4 * units_per_chunk_);
  put32(r + 4, crc(r + 8, record_bytes_ - 8));
}

bool SsdCache::decode_record(uint32_t s, const std::byte* r) noexcept {
  if (get32(r) != kRecordMagic || get32(r + 4) != crc(r + 8, record_bytes_ - 8)) return false;
  const uint64_t chunk = get64(r + 8);
  if (get32(r + 24) != s || get32(r + 28) != units_per_chunk_) return false;
  if (chunk >= (volume_bytes_ + opt_.chunk_bytes - 1) / opt_.chunk_bytes) return false;
  auto it = index_.find(chunk);
  if (it != index_.end()) {  // two claims (never written so): keep the newer, drop the other
    if (slots_[it->second].seq >= get64(r + 16)) return false;
    const uint32_t old = it->second;
    slots_[old].used = false;
    std::fill_n(bits_.begin() + ptrdiff_t(size_t(old) * words_), words_, 0);
    index_.erase(it);
    --counters_.restored_chunks;
  }
  Slot& sl = slots_[s];
  sl.chunk = chunk;
  sl.seq = get64(r + 16);
  sl.used = true;
  std::memcpy(&bits_[size_t(s) * words_], r + 32, 8 * words_);
  std::memcpy(&crcs_[size_t(s) * units_per_chunk_], r + 32 + 8 * words_, 4 * units_per_chunk_);
  // Units past the end of the volume are never cached.
  const uint64_t chunk_end = std::min<uint64_t>(volume_bytes_, (chunk + 1) * opt_.chunk_bytes);
  for (uint32_t u = 0; u < units_per_chunk_; ++u)
    if (chunk * opt_.chunk_bytes + uint64_t(u + 1) * kUnitBytes > chunk_end) set_valid(s, u, false);
  index_.emplace(chunk, s);
  seq_ = std::max(seq_, sl.seq);
  ++counters_.restored_chunks;
  return true;
}

// Loads a matching cache file, or formats it (metadata zeroed first, then the superblock: a
// crash while formatting leaves a file that fails the superblock check and is formatted again).
// Records that do not load (torn, duplicate) are zeroed on the medium before the cache runs.
Result<void> SsdCache::load_or_format(std::string* why) noexcept {
  const int fd = file_->fd();
  AlignedBuf sb = aligned(kSuperblockBytes);
  AlignedBuf want = aligned(kSuperblockBytes);
  if (!sb || !want) return Errc::no_memory;
  encode_superblock(want.get());
  std::string note;
  if (!full_pread(fd, sb.get(), kSuperblockBytes, 0)) {
    note = "new cache file";
  } else if (std::memcmp(sb.get(), kMagic, 8) != 0) {
    note = "no superblock (new cache file)";
  } else {
    const uint32_t stored = get32(sb.get() + 12);
    put32(sb.get() + 12, 0);
    if (crc(sb.get(), kSuperblockBytes) != stored)
      note = "superblock checksum mismatch";
    else if (get32(sb.get() + 8) != kFormatVersion)
      note = "format version " + std::to_string(get32(sb.get() + 8));
    else if (std::memcmp(sb.get() + 64, want.get() + 64, 16) != 0 ||
             sb.get()[104] != want.get()[104] ||
             std::memcmp(sb.get() + 105, want.get() + 105, size_t(want.get()[104])) != 0)
      note = "cache file was written for another volume";
    else if (get64(sb.get() + 56) != volume_bytes_)
      note = "the volume's size changed";
    else if (get32(sb.get() + 80) != get32(want.get() + 80))
      note = enc_ ? "cache file is not encrypted" : "cache file is encrypted";
    else if (std::memcmp(sb.get() + 88, key_check_, 16) != 0)
      note = "cache file was encrypted with another key";
    else {
      put32(sb.get() + 12, stored);
      if (std::memcmp(sb.get(), want.get(), kSuperblockBytes) != 0)
        note = "layout changed (chunk size, sector size or cache size)";
    }
  }
  const size_t meta_bytes = size_t(block_count_) * kMetaBlockBytes;
  AlignedBuf meta = aligned(meta_bytes);
  if (!meta) return Errc::no_memory;
  if (note.empty()) {
    if (!full_pread(fd, meta.get(), meta_bytes, meta_offset_)) {
      set_why(why, "cannot read the SSD cache metadata");
      return Errc::io_error;
    }
    std::vector<uint32_t> dropped;
    for (uint32_t s = 0; s < slot_count_; ++s) {
      const std::byte* r = meta.get() + size_t(s) * record_bytes_;
      const bool nonzero =
          std::any_of(r, r + record_bytes_, [](std::byte b) { return b != std::byte{0}; });
      if (nonzero && !decode_record(s, r)) dropped.push_back(s);
    }
    // Slots that lost a duplicate claim after loading also go.
    for (uint32_t s = 0; s < slot_count_; ++s) {
      const std::byte* r = meta.get() + size_t(s) * record_bytes_;
      if (!slots_[s].used && get32(r) != 0) dropped.push_back(s);
    }
    if (!dropped.empty()) {
      for (uint32_t s : dropped)
        std::memset(meta.get() + size_t(s) * record_bytes_, 0, record_bytes_);
      if (!full_pwrite(fd, meta.get(), meta_bytes, meta_offset_) || fdatasync(fd) != 0) {
        set_why(why, "cannot write the SSD cache metadata");
        return Errc::io_error;
      }
    }
    free_slots_.clear();
    for (uint32_t s = slot_count_; s-- > 0;) {
      if (slots_[s].used) {
        slots_[s].referenced = true;  // it earned its place before the restart
        policy_.insert_main(s, slots_[s].chunk);
      } else {
        free_slots_.push_back(s);
      }
    }
  } else {
    std::memset(meta.get(), 0, meta_bytes);
    if (!full_pwrite(fd, meta.get(), meta_bytes, meta_offset_) || fdatasync(fd) != 0 ||
        !full_pwrite(fd, want.get(), kSuperblockBytes, 0) || fdatasync(fd) != 0) {
      set_why(why, "cannot format the SSD cache " + opt_.path + ": " + std::strerror(errno));
      return Errc::io_error;
    }
    if (note.find("new cache file") == std::string::npos) open_note_ = note;
  }
  return {};
}

void SsdCache::crypt(bool encrypt, uint64_t unit_number, std::byte* unit) noexcept {
  EVP_CIPHER_CTX* ctx = encrypt ? enc_ : dec_;
  if (!ctx) return;
  uint8_t iv[16] = {};
  std::memcpy(iv, &unit_number, 8);  // XTS tweak: the unit's number in the file (little endian)
  int out = 0;
  auto* u = reinterpret_cast<unsigned char*>(unit);
  const bool ok = EVP_CipherInit_ex(ctx, nullptr, nullptr, nullptr, iv, encrypt ? 1 : 0) == 1 &&
                  EVP_CipherUpdate(ctx, u, &out, u, int(kUnitBytes)) == 1;
  FERRY_ASSERT(ok && out == int(kUnitBytes));
}

// ---------------------------------------------------------------------------------- dispatch

void SsdCache::submit(IoRequest& io) noexcept {
  io.lent = nullptr;
  switch (io.op) {
    case IoOp::read: {
      const Errc e = check_range(next_.geometry(), io.offset_bytes, io.length_bytes);
      if (e != Errc::ok) return io.complete(e);
      if (io.length_bytes == 0) return io.complete(Errc::ok);
      return read(io);
    }
    case IoOp::write:
    case IoOp::write_zeroes:
    case IoOp::discard:
      return write(io);
    case IoOp::flush:
    case IoOp::block_status:
    case IoOp::access_map:
      return next_.submit(io);  // nothing cached is dirty: flush is next's business alone
  }
}

int64_t SsdCache::find_any(uint64_t chunk) const noexcept {
  auto it = index_.find(chunk);
  return it == index_.end() ? -1 : int64_t(it->second);
}

int64_t SsdCache::find(uint64_t chunk) const noexcept {
  const int64_t s = find_any(chunk);
  return s >= 0 && !slots_[s].evicting ? s : -1;
}

// ------------------------------------------------------------------------------------ reads

// Splits the read into chunk pieces: a piece whose units are all valid is read from the SSD,
// a missing piece is fetched (its chunk's invalid span, then written to the SSD), and a piece
// that cannot be fetched (limits) goes to next as it is. Needs one ReadOp per piece free, else
// the whole read bypasses.
void SsdCache::read(IoRequest& io) noexcept {
  const uint64_t cb = opt_.chunk_bytes;
  const uint64_t end = io.offset_bytes + io.length_bytes;
  const uint64_t first = io.offset_bytes / cb, last = (end - 1) / cb;
  if (failed_ || free_ctxs_.empty() || last - first + 1 > free_reads_.size()) {
    ++counters_.bypassed;
    return next_.submit(io);
  }
  bool all_valid = true;
  for (uint64_t off = io.offset_bytes; off < end && all_valid;) {
    const uint64_t chunk = off / cb, piece_end = std::min(end, (chunk + 1) * cb);
    const int64_t s = find(chunk);
    if (s < 0) all_valid = false;
    for (uint64_t b = off; b < piece_end && all_valid; b += kUnitBytes - (b % kUnitBytes))
      all_valid = valid(uint32_t(s), uint32_t((b - chunk * cb) / kUnitBytes));
    off = piece_end;
  }
  ++(all_valid ? counters_.hits : counters_.misses);
  ReadCtx& ctx = *free_ctxs_.back();
  free_ctxs_.pop_back();
  ctx.user = &io;
  ctx.remaining = 1;  // guard: pieces completing inline cannot finish the read early
  ctx.result = Errc::ok;
  for (uint64_t off = io.offset_bytes; off < end;) {
    const uint64_t chunk = off / cb, piece_end = std::min(end, (chunk + 1) * cb);
    int64_t s = find(chunk);
    bool piece_valid = s >= 0;
    for (uint64_t b = off; b < piece_end && piece_valid; b += kUnitBytes - (b % kUnitBytes))
      piece_valid = valid(uint32_t(s), uint32_t((b - chunk * cb) / kUnitBytes));
    ++ctx.remaining;
    if (piece_valid) {
      note_use(uint32_t(s), io);
      start_piece_from_ssd(ctx, uint32_t(s), off, piece_end - off);
    } else {
      if (s >= 0)
        note_use(uint32_t(s), io);  // read again (a new chunk starts at 0)
      else if (find_any(chunk) < 0 && (s = admit(chunk)) >= 0) {
        note_use(uint32_t(s), io);  // first use
        if (io.priority == IoPriority::prefetch || io.priority == IoPriority::background) {
          slots_[s].prefetched = true;
          ++counters_.prefetched_chunks;
        }
      }
      if (s < 0 || !start_fetch(ctx, uint32_t(s), off, piece_end - off)) {
        ReadOp& op = *free_reads_.back();
        free_reads_.pop_back();
        start_piece_to_next(ctx, op, off, piece_end - off);
      }
    }
    off = piece_end;
  }
  piece_done(ctx, Errc::ok);
}

void SsdCache::piece_done(ReadCtx& ctx, Errc e) noexcept {
  if (e != Errc::ok) ctx.result = e;
  if (--ctx.remaining != 0) return;
  IoRequest* user = ctx.user;
  const Errc result = ctx.result;
  free_ctxs_.push_back(&ctx);
  user->complete(result);
}

void SsdCache::start_piece_from_ssd(ReadCtx& ctx, uint32_t s, uint64_t off, uint64_t len) noexcept {
  ReadOp& op = *free_reads_.back();
  free_reads_.pop_back();
  const uint64_t chunk_start = slots_[s].chunk * opt_.chunk_bytes;
  op.ctx = &ctx;
  op.slot = s;
  op.epoch = slots_[s].epoch;
  op.piece_offset = off;
  op.piece_length = len;
  op.first_unit = uint32_t((off - chunk_start) / kUnitBytes);
  op.unit_count = uint32_t((off + len - chunk_start + kUnitBytes - 1) / kUnitBytes) - op.first_unit;
  ++slots_[s].readers;
  op.io = IoRequest{};
  op.io.op = IoOp::read;
  op.io.offset_bytes = unit_offset(s, op.first_unit);
  op.io.length_bytes = uint64_t(op.unit_count) * kUnitBytes;
  op.io.data = op.buf;
  op.io.owner = &op;
  op.io.on_complete = &SsdCache::on_ssd_read;
  io_->submit(op.io);
}

void SsdCache::start_piece_to_next(ReadCtx& ctx, ReadOp& op, uint64_t off, uint64_t len) noexcept {
  op.ctx = &ctx;
  op.io = IoRequest{};
  op.io.op = IoOp::read;
  op.io.priority = ctx.user->priority;
  op.io.offset_bytes = off;
  op.io.length_bytes = len;
  op.io.data = ctx.user->data + (off - ctx.user->offset_bytes);
  op.io.owner = &op;
  op.io.on_complete = &SsdCache::on_piece_from_next;
  next_.submit(op.io);
}

void SsdCache::on_piece_from_next(IoRequest& io) noexcept {
  auto* op = static_cast<ReadOp*>(io.owner);
  SsdCache& c = *op->cache;
  ReadCtx& ctx = *op->ctx;
  const Errc e = io.result;
  c.free_reads_.push_back(op);
  c.piece_done(ctx, e);
}

// Every unit read from the SSD is decrypted and checked against its CRC before a byte of it is
// served. A mismatch on a slot no write touched meanwhile is corruption: the slot is dropped
// (durably) and the piece is read from next instead.
void SsdCache::on_ssd_read(IoRequest& io) noexcept {
  auto* op = static_cast<ReadOp*>(io.owner);
  SsdCache& c = *op->cache;
  Slot& sl = c.slots_[op->slot];
  FERRY_ASSERT(sl.readers > 0);
  --sl.readers;
  bool good = io.result == Errc::ok && sl.epoch == op->epoch && !sl.evicting;
  bool corrupt = false;
  if (io.result != Errc::ok) ++c.counters_.ssd_errors;
  for (uint32_t i = 0; i < op->unit_count && good; ++i) {
    const uint32_t u = op->first_unit + i;
    std::byte* p = op->buf + size_t(i) * kUnitBytes;
    c.crypt(false, uint64_t(op->slot) * c.units_per_chunk_ + u, p);
    if (!c.valid(op->slot, u) || crc(p, kUnitBytes) != c.crc_of(op->slot, u)) {
      good = false;
      corrupt = c.valid(op->slot, u);
    }
  }
  if (good) {
    const uint64_t chunk_start = sl.chunk * c.opt_.chunk_bytes;
    const uint64_t from = op->piece_offset - (chunk_start + uint64_t(op->first_unit) * kUnitBytes);
    std::memcpy(op->ctx->user->data + (op->piece_offset - op->ctx->user->offset_bytes),
                op->buf + from, op->piece_length);
    ReadCtx& ctx = *op->ctx;
    c.free_reads_.push_back(op);
    c.try_free(op->slot);
    return c.piece_done(ctx, Errc::ok);
  }
  if (corrupt) {
    ++c.counters_.corrupt_dropped;
    if (!sl.evicting) {
      c.policy_.remove(op->slot);
      c.start_evict(op->slot);
    }
  }
  c.try_free(op->slot);
  c.start_piece_to_next(*op->ctx, *op, op->piece_offset, op->piece_length);
}

// Fetches the span of chunk units from the first to the last one that is invalid or read by
// this piece (coalesced, like RamCache), serves the piece from it, then writes the span to the
// SSD. False when no fetch op is free or the slot is busy (fill or write in flight).
bool SsdCache::start_fetch(ReadCtx& ctx, uint32_t s, uint64_t off, uint64_t len) noexcept {
  Slot& sl = slots_[s];
  if (free_fetches_.empty() || sl.filling || sl.writers > 0 || sl.evicting) return false;
  const uint64_t chunk_start = sl.chunk * opt_.chunk_bytes;
  const uint64_t chunk_end = std::min<uint64_t>(volume_bytes_, chunk_start + opt_.chunk_bytes);
  const uint32_t n = uint32_t((chunk_end - chunk_start + kUnitBytes - 1) / kUnitBytes);
  uint32_t lo = uint32_t((off - chunk_start) / kUnitBytes);
  uint32_t hi = uint32_t((off + len - 1 - chunk_start) / kUnitBytes);
  for (uint32_t u = 0; u < n; ++u)
    if (!valid(s, u)) lo = std::min(lo, u), hi = std::max(hi, u);
  FetchOp& f = *free_fetches_.back();
  free_fetches_.pop_back();
  f.ctx = &ctx;
  f.slot = s;
  f.epoch = sl.epoch;
  f.piece_offset = off;
  f.piece_length = len;
  f.first_unit = lo;
  f.unit_count = hi - lo + 1;
  sl.filling = true;
  f.io = IoRequest{};
  f.io.op = IoOp::read;
  f.io.priority = ctx.user->priority;  // a prefetch through this tier stays a prefetch below
  f.io.offset_bytes = chunk_start + uint64_t(lo) * kUnitBytes;
  f.io.length_bytes = std::min<uint64_t>(chunk_end, chunk_start + uint64_t(hi + 1) * kUnitBytes) -
                      f.io.offset_bytes;
  f.io.data = f.buf;
  f.io.owner = &f;
  f.io.on_complete = &SsdCache::on_fetched;
  ++counters_.fetches;
  const bool prefetch =
      f.io.priority == IoPriority::prefetch || f.io.priority == IoPriority::background;
  (prefetch ? counters_.bytes_prefetched : counters_.bytes_fetched) += f.io.length_bytes;
  next_.submit(f.io);
  return true;
}

void SsdCache::on_fetched(IoRequest& io) noexcept {
  auto* f = static_cast<FetchOp*>(io.owner);
  SsdCache& c = *f->cache;
  Slot& sl = c.slots_[f->slot];
  ReadCtx& ctx = *f->ctx;
  f->ctx = nullptr;
  const Errc e = io.result;
  if (e == Errc::ok)
    std::memcpy(ctx.user->data + (f->piece_offset - ctx.user->offset_bytes),
                f->buf + (f->piece_offset - io.offset_bytes), f->piece_length);
  // Fill only whole units, only if no write touched the chunk since the fetch started (its
  // bytes may predate that write) and none is in flight (next may not have applied it yet).
  f->full_units = uint32_t(io.length_bytes / kUnitBytes);
  const bool fill = e == Errc::ok && !c.failed_ && sl.epoch == f->epoch && sl.writers == 0 &&
                    !sl.evicting && f->full_units > 0;
  if (!fill) {
    sl.filling = false;
    c.free_fetches_.push_back(f);
    c.try_free(f->slot);
    return c.piece_done(ctx, e);
  }
  for (uint32_t i = 0; i < f->full_units; ++i) {
    std::byte* p = f->buf + size_t(i) * kUnitBytes;
    f->crcs[i] = crc(p, kUnitBytes);
    c.crypt(true, uint64_t(f->slot) * c.units_per_chunk_ + f->first_unit + i, p);
  }
  const uint64_t ssd_offset = c.unit_offset(f->slot, f->first_unit);
  f->io = IoRequest{};
  f->io.op = IoOp::write;
  f->io.offset_bytes = ssd_offset;
  f->io.length_bytes = uint64_t(f->full_units) * kUnitBytes;
  f->io.data = f->buf;
  f->io.owner = f;
  f->io.on_complete = &SsdCache::on_filled;
  c.io_->submit(f->io);
  c.piece_done(ctx, Errc::ok);  // the reader does not wait for the SSD write
}

// The span's data is on the SSD: its units become valid (in memory now; on the medium with the
// metadata block write that follows, which carries their CRCs).
void SsdCache::on_filled(IoRequest& io) noexcept {
  auto* f = static_cast<FetchOp*>(io.owner);
  SsdCache& c = *f->cache;
  Slot& sl = c.slots_[f->slot];
  sl.filling = false;
  if (io.result != Errc::ok) {
    ++c.counters_.ssd_errors;
    c.fail("fill write");
  } else if (!c.failed_ && sl.epoch == f->epoch && sl.writers == 0 && !sl.evicting) {
    for (uint32_t i = 0; i < f->full_units; ++i) {
      c.set_valid(f->slot, f->first_unit + i, true);
      c.crc_of(f->slot, f->first_unit + i) = f->crcs[i];
    }
    sl.seq = ++c.seq_;
    ++c.counters_.fills;
    c.mark_dirty(f->slot);
  }
  c.free_fetches_.push_back(f);
  c.try_free(f->slot);
}

// ----------------------------------------------------------------------------------- writes

template <class Fn>
void SsdCache::for_each_slot_in(uint64_t offset_bytes, uint64_t length_bytes,
                                Fn fn) const noexcept {
  if (length_bytes == 0) return;
  const uint64_t first = offset_bytes / opt_.chunk_bytes;
  const uint64_t last = (offset_bytes + length_bytes - 1) / opt_.chunk_bytes;
  if (last - first + 1 <= index_.size()) {
    for (uint64_t chunk = first; chunk <= last; ++chunk)
      if (int64_t s = find_any(chunk); s >= 0) fn(uint32_t(s));
  } else {
    for (const auto& [chunk, s] : index_)
      if (chunk >= first && chunk <= last) fn(s);
  }
}

// Write-through, no write-allocate: the units the write touches (partly or wholly) are
// invalidated in memory at once, and the write goes to next only when the metadata blocks
// holding those slots are durable with the invalidation. Until then a crash could leave a
// record claiming the old bytes valid while next already holds the new ones.
void SsdCache::write(IoRequest& io) noexcept {
  if (check_range(next_.geometry(), io.offset_bytes, io.length_bytes) != Errc::ok)
    return next_.submit(io);  // next refuses it with the right error
  if (free_writes_.empty()) {
    ++counters_.busy;
    return io.complete(Errc::busy);
  }
  WriteOp& w = *free_writes_.back();
  free_writes_.pop_back();
  w.user = &io;
  w.io = IoRequest{};
  w.io.op = io.op;
  w.io.fua = io.fua;
  w.io.epoch_write = io.epoch_write;  // write-back epochs pass through (block_device.h)
  w.io.may_deallocate = io.may_deallocate;
  w.io.offset_bytes = io.offset_bytes;
  w.io.length_bytes = io.length_bytes;
  w.io.data = io.data;
  w.io.owner = &w;
  w.io.on_complete = &SsdCache::on_written;
  const uint64_t end = io.offset_bytes + io.length_bytes;
  for_each_slot_in(io.offset_bytes, io.length_bytes, [&](uint32_t s) {
    Slot& sl = slots_[s];
    ++sl.writers;
    ++sl.epoch;
    const uint64_t chunk_start = sl.chunk * opt_.chunk_bytes;
    const uint64_t lo = std::max(io.offset_bytes, chunk_start) - chunk_start;
    const uint64_t hi = std::min(end, chunk_start + opt_.chunk_bytes) - chunk_start;
    bool changed = false;
    for (uint64_t u = lo / kUnitBytes; u < (hi + kUnitBytes - 1) / kUnitBytes; ++u)
      if (valid(s, uint32_t(u))) {
        set_valid(s, uint32_t(u), false);
        changed = true;
      }
    if (changed) mark_dirty(s);
  });
  w.need_version = meta_version_;
  if (write_ready(w)) return next_.submit(w.io);
  ++counters_.write_waits;
  waiting_.push_back(&w);
}

// Every metadata block holding a slot the write touches carries (durably) each mutation up to
// the write's version: durable >= min(mutated, need).
bool SsdCache::write_ready(const WriteOp& w) const noexcept {
  if (failed_) return superblock_dead_;
  bool ready = true;
  for_each_slot_in(w.io.offset_bytes, w.io.length_bytes, [&](uint32_t s) {
    const uint32_t b = block_of(s);
    if (durable_[b] < std::min(mutated_[b], w.need_version)) ready = false;
  });
  return ready;
}

void SsdCache::check_waiters() noexcept {
  if (checking_) {
    check_again_ = true;
    return;
  }
  checking_ = true;
  do {
    check_again_ = false;
    ready_scratch_.clear();
    for (size_t i = 0; i < waiting_.size();) {
      if (write_ready(*waiting_[i])) {
        ready_scratch_.push_back(waiting_[i]);
        waiting_[i] = waiting_.back();
        waiting_.pop_back();
      } else {
        ++i;
      }
    }
    // Submit from a copy: a submission may complete inline and start other writes.
    for (size_t i = 0; i < ready_scratch_.size(); ++i) {
      WriteOp* w = ready_scratch_[i];
      next_.submit(w->io);
      if (check_again_) {  // re-entered: keep the rest for the next round
        for (size_t j = i + 1; j < ready_scratch_.size(); ++j)
          waiting_.push_back(ready_scratch_[j]);
        break;
      }
    }
  } while (check_again_);
  checking_ = false;
}

void SsdCache::on_written(IoRequest& io) noexcept {
  auto* w = static_cast<WriteOp*>(io.owner);
  SsdCache& c = *w->cache;
  IoRequest* user = w->user;
  c.for_each_slot_in(io.offset_bytes, io.length_bytes, [&](uint32_t s) {
    Slot& sl = c.slots_[s];
    FERRY_ASSERT(sl.writers > 0);
    --sl.writers;
    ++sl.epoch;  // a fetch that overlapped this write may have read the old bytes
  });
  c.for_each_slot_in(io.offset_bytes, io.length_bytes, [&](uint32_t s) { c.try_free(s); });
  c.free_writes_.push_back(w);
  user->complete(io.result);
}

// --------------------------------------------------------------------------- slots, eviction

// Frequency counts reuse, for S3-FIFO's promotion (cache/DESIGN.md, "Scan resistance"): a
// prefetch is no use; a chunk's first demand read after admission is its first use; a read that
// starts where the chunk's previous demand read ended continues the same pass, it is no reuse.
void SsdCache::note_use(uint32_t s, const IoRequest& io) noexcept {
  if (io.priority == IoPriority::prefetch || io.priority == IoPriority::background) return;
  Slot& sl = slots_[s];
  if (sl.prefetched) {
    sl.prefetched = false;
    ++counters_.prefetch_hits;
  }
  if (sl.referenced && io.offset_bytes != sl.last_read_end) policy_.touch(s);
  sl.referenced = true;
  sl.last_read_end = io.offset_bytes + io.length_bytes;
}

int64_t SsdCache::admit(uint64_t chunk) noexcept {
  if (free_slots_.size() <= low_water_) start_evictions();
  if (free_slots_.empty()) return -1;
  const uint32_t s = free_slots_.back();
  free_slots_.pop_back();
  Slot& sl = slots_[s];
  FERRY_ASSERT(!sl.used && sl.readers == 0 && sl.writers == 0 && !sl.filling);
  sl.chunk = chunk;
  sl.seq = 0;
  ++sl.epoch;
  sl.used = true;
  sl.evicting = false;
  sl.referenced = false;
  sl.prefetched = false;
  std::fill_n(bits_.begin() + ptrdiff_t(size_t(s) * words_), words_, 0);
  index_.emplace(chunk, s);
  policy_.insert(s, chunk);
  return s;
}

// Keeps low_water free slots coming: victims are invalidated durably before they are reused.
void SsdCache::start_evictions() noexcept {
  while (free_slots_.size() + evicting_count_ < 2 * size_t(low_water_)) {
    const int64_t v = policy_.victim(
        [](const void* ctx, uint32_t s) noexcept {
          const Slot& sl = static_cast<const SsdCache*>(ctx)->slots_[s];
          return sl.readers > 0 || sl.writers > 0 || sl.filling;
        },
        this);
    if (v < 0) return;
    start_evict(uint32_t(v));
  }
}

// Invariant (write-through): nothing here is dirty, so dropping a chunk loses nothing. The slot
// leaves the index (and may be reused) only once its record's invalidation is durable: until
// then a write to the chunk waits for that block like any write to a cached chunk.
void SsdCache::start_evict(uint32_t s) noexcept {
  Slot& sl = slots_[s];
  FERRY_ASSERT(sl.used && !sl.evicting);
  sl.evicting = true;
  ++evicting_count_;
  ++sl.epoch;
  std::fill_n(bits_.begin() + ptrdiff_t(size_t(s) * words_), words_, 0);
  mark_dirty(s);
  sl.evict_version = mutated_[block_of(s)];
  ++counters_.evictions;
  try_free(s);
}

void SsdCache::try_free(uint32_t s) noexcept {
  Slot& sl = slots_[s];
  if (!sl.evicting || sl.readers > 0 || sl.writers > 0 || sl.filling) return;
  if (durable_[block_of(s)] < sl.evict_version && !(failed_ && superblock_dead_)) return;
  index_.erase(sl.chunk);
  sl.used = false;
  sl.evicting = false;
  --evicting_count_;
  free_slots_.push_back(s);
}

// A failed write to the cache file: the medium can no longer be trusted to hold our
// invalidations, so the superblock is overwritten (a restart then starts empty) and the tier
// turns into a pass-through once that write has finished.
void SsdCache::fail(const char* what) noexcept {
  if (failed_) return;
  failed_ = true;
  std::fprintf(stderr, "ferry: %s: %s failed on the cache file; the SSD tier is off\n",
               opt_.path.c_str(), what);
  if (sb_write_started_) return;
  sb_write_started_ = true;
  std::memset(sb_buf_, 0, kSuperblockBytes);
  sb_io_ = IoRequest{};
  sb_io_.op = IoOp::write;
  sb_io_.fua = true;
  sb_io_.offset_bytes = 0;
  sb_io_.length_bytes = kSuperblockBytes;
  sb_io_.data = sb_buf_;
  sb_io_.owner = this;
  sb_io_.on_complete = &SsdCache::on_superblock_dead;
  io_->submit(sb_io_);
}

void SsdCache::on_superblock_dead(IoRequest& io) noexcept {
  auto& c = *static_cast<SsdCache*>(io.owner);
  c.superblock_dead_ = true;
  for (uint32_t s = 0; s < c.slot_count_; ++s) c.try_free(s);
  c.check_waiters();
}

// -------------------------------------------------------------------------------- metadata

void SsdCache::mark_dirty(uint32_t s) noexcept {
  const uint32_t b = block_of(s);
  mutated_[b] = ++meta_version_;
  if (!meta_inflight_[b] && !meta_queued_[b]) {
    meta_queued_[b] = 1;
    meta_queue_.push_back(b);
  }
  pump_meta();
}

// One write in flight per metadata block, from a copy encoded at issue (records are never
// changed under a DMA); a block dirtied meanwhile is written again when it completes. FUA:
// an invalidation must be on the medium, not in its volatile cache, before next sees a write.
void SsdCache::pump_meta() noexcept {
  if (pumping_) {
    pump_again_ = true;
    return;
  }
  pumping_ = true;
  do {
    pump_again_ = false;
    while (!free_metas_.empty() && meta_queue_head_ < meta_queue_.size()) {
      const uint32_t b = meta_queue_[meta_queue_head_++];
      meta_queued_[b] = 0;
      MetaOp& m = *free_metas_.back();
      free_metas_.pop_back();
      m.block = b;
      m.captured_version = meta_version_;
      std::memset(m.buf, 0, kMetaBlockBytes);
      for (uint32_t i = 0; i < records_per_block_; ++i) {
        const uint32_t s = b * records_per_block_ + i;
        if (s < slot_count_) encode_record(s, m.buf + size_t(i) * record_bytes_);
      }
      meta_inflight_[b] = 1;
      m.io = IoRequest{};
      m.io.op = IoOp::write;
      m.io.fua = true;
      m.io.offset_bytes = meta_offset_ + uint64_t(b) * kMetaBlockBytes;
      m.io.length_bytes = kMetaBlockBytes;
      m.io.data = m.buf;
      m.io.owner = &m;
      m.io.on_complete = &SsdCache::on_meta_written;
      ++counters_.meta_writes;
      io_->submit(m.io);
    }
    if (meta_queue_head_ == meta_queue_.size()) {
      meta_queue_.clear();
      meta_queue_head_ = 0;
    }
  } while (pump_again_);
  pumping_ = false;
}

void SsdCache::on_meta_written(IoRequest& io) noexcept {
  auto* m = static_cast<MetaOp*>(io.owner);
  SsdCache& c = *m->cache;
  const uint32_t b = m->block;
  c.meta_inflight_[b] = 0;
  c.free_metas_.push_back(m);
  if (io.result != Errc::ok) {
    ++c.counters_.ssd_errors;
    c.fail("metadata write");
  } else {
    c.durable_[b] = std::max(c.durable_[b], m->captured_version);
  }
  if (c.mutated_[b] > c.durable_[b] && !c.meta_queued_[b] && !c.failed_) {
    c.meta_queued_[b] = 1;
    c.meta_queue_.push_back(b);
  }
  for (uint32_t i = 0; i < c.records_per_block_; ++i) {
    const uint32_t s = b * c.records_per_block_ + i;
    if (s < c.slot_count_) c.try_free(s);
  }
  c.pump_meta();
  c.check_waiters();
}

}  // namespace ferry::cache
