// SsdCache: the SSD cache tier, a BlockDevice over a `next` device (cache/DESIGN.md, on-media
// layout in cache/FORMAT.md). Chunks (64 KiB default) live in fixed slots of a cache file or
// block device opened O_DIRECT and driven through the reactor's io_uring by a FileDevice the
// cache owns. Validity and a CRC32C are kept per 4 KiB unit; every unit read from the SSD is
// checked against its CRC, so a torn or corrupt chunk is dropped and fetched again, never
// served. Optional AES-256-XTS at rest (OpenSSL EVP, tweak = unit number in the file).
// Write-through and NOT write-allocate: a write, discard or write_zeroes invalidates the cached
// units it touches, durably (FUA metadata write) BEFORE it goes to `next`, so nothing here is
// ever dirty, eviction is always safe, and after a crash at any moment no slot can serve bytes
// older than `next` holds. The metadata survives a restart (clean or kill -9): warm on reopen.
// S3-FIFO eviction (cache/s3fifo.h). Bounded: slots, fetch buffers, read/write/metadata ops are
// fixed at create(); misses beyond the bounds bypass to `next`.
//
// Threading: one reactor thread per SsdCache (submit() and every completion, from `next` and from
// the cache file, run on that thread; no locks). Completions may run inside submit(). create()
// does synchronous file I/O (open, format or load the metadata): call it off the hot path.
// Lending: never lends (`lent` stays null); bytes are always copied into `data`.
// Ownership: the cache owns its FileDevice, buffers and cipher contexts; `next` outlives it.
// Destroy only when idle (or when nothing will complete again): ops in flight point into it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "cache/s3fifo.h"
#include "datapath/block_device.h"
#include "datapath/uuid.h"

typedef struct evp_cipher_ctx_st EVP_CIPHER_CTX;

namespace ferry {
class FileDevice;
}

namespace ferry::cache {

struct SsdCacheOptions {
  std::string path;                  // cache file (created if missing) or block device
  uint64_t size_bytes = 0;           // size of the cache file (created / resized); 0 = as it is
  uint32_t chunk_bytes = 64 * 1024;  // multiple of 4 KiB, at most 1 MiB
  std::string key_file;  // AES-256-XTS key: 64 raw bytes or 128 hex digits; "" = plaintext
  // Identity of the cached volume, kept in the superblock with its size: a cache file written
  // for another volume (or size, chunk size, key) is never used; the cache starts empty instead.
  Uuid volume_uuid;
  std::string volume_name;
  uint32_t fetches_max = 32;      // chunk fetches + fills in flight; more misses bypass
  uint32_t reads_max = 64;        // SSD reads in flight (one per chunk piece of a read)
  uint32_t writes_max = 256;      // writes/discards in flight; more answer busy
  uint32_t meta_writes_max = 16;  // metadata block writes in flight
  bool direct_io = true;          // O_DIRECT (falls back to buffered I/O where unsupported)
  // Test hook: the cache's asynchronous I/O to its file goes through the device returned here
  // (e.g. a crash-simulating wrapper; owned by the test, outlives the cache).
  std::function<BlockDevice*(BlockDevice& file)> wrap_file;
};

struct SsdCacheCounters {
  uint64_t hits = 0;               // reads served from the SSD entirely
  uint64_t misses = 0;             // reads that needed next for at least one chunk piece
  uint64_t bypassed = 0;           // reads sent straight to next (op/slot limits, cache failed)
  uint64_t fetches = 0;            // chunk fetches from next (demand and prefetch)
  uint64_t bytes_fetched = 0;      // bytes read from next by fetches for demand reads
  uint64_t bytes_prefetched = 0;   // bytes read from next by fetches for prefetch reads (a tier
                                   // or read-ahead above fetching at IoPriority::prefetch)
  uint64_t prefetched_chunks = 0;  // chunks a prefetch read brought in
  uint64_t prefetch_hits = 0;      // of those: read on demand before eviction (accuracy)
  uint64_t fills = 0;              // chunk writes to the SSD that became valid
  uint64_t evictions = 0;
  uint64_t busy = 0;             // writes refused: writes_max in flight
  uint64_t write_waits = 0;      // writes that waited for a durable invalidation
  uint64_t meta_writes = 0;      // metadata block writes
  uint64_t corrupt_dropped = 0;  // slots dropped because a unit failed its CRC
  uint64_t restored_chunks = 0;  // chunks found valid in the metadata at create()
  uint64_t ssd_errors = 0;       // failed I/O on the cache file
};

class SsdCache final : public BlockDevice {
 public:
  // Opens (or creates) the cache file and loads its metadata. `error_text`, if given, receives
  // a one-line reason on failure.
  static Result<std::unique_ptr<SsdCache>> create(BlockDevice& next, const SsdCacheOptions& o,
                                                  std::string* error_text = nullptr) noexcept;
  ~SsdCache() override;

  Geometry geometry() const noexcept override { return next_.geometry(); }
  void submit(IoRequest& req) noexcept override;
  std::string_view describe() const noexcept override { return description_; }
  const SsdCacheCounters& counters() const noexcept { return counters_; }
  // Why the cache started empty ("" when it came back warm or the file was new).
  const std::string& open_note() const noexcept { return open_note_; }
  uint32_t slots() const noexcept { return slot_count_; }
  uint32_t chunk_bytes() const noexcept { return opt_.chunk_bytes; }
  uint64_t capacity_bytes() const noexcept { return uint64_t(slot_count_) * opt_.chunk_bytes; }
  uint32_t resident_chunks() const noexcept { return uint32_t(index_.size()); }
  bool encrypted() const noexcept { return enc_ != nullptr; }
  bool failed() const noexcept { return failed_; }

  static constexpr uint32_t kUnitBytes = 4096;
  static constexpr uint32_t kSuperblockBytes = 4096;
  static constexpr uint32_t kMetaBlockBytes = 4096;
  static constexpr uint32_t kFormatVersion = 1;

 private:
  struct Slot {
    uint64_t chunk = 0;
    uint64_t seq = 0;    // sequence of the record's last valid-making write
    uint64_t epoch = 0;  // bumped by every write that touches the chunk (start and end)
    uint64_t evict_version = 0;
    uint64_t last_read_end = 0;  // byte offset where the chunk's last demand read ended
    uint32_t readers = 0, writers = 0;
    bool used = false, filling = false, evicting = false;
    bool referenced = false;  // a demand read used the chunk since admission (restored: true)
    bool prefetched = false;  // admitted by a prefetch read, not used on demand yet
  };
  struct ReadCtx {
    IoRequest* user = nullptr;
    uint32_t remaining = 0;
    Errc result = Errc::ok;
  };
  struct ReadOp {  // one chunk piece of a read: from the SSD, or passed to next
    IoRequest io;
    SsdCache* cache = nullptr;
    ReadCtx* ctx = nullptr;
    std::byte* buf = nullptr;  // chunk_bytes, 4 KiB aligned
    uint64_t piece_offset = 0, piece_length = 0;
    uint64_t epoch = 0;
    uint32_t slot = 0, first_unit = 0, unit_count = 0;
  };
  struct FetchOp {  // a chunk span read from next, copied to the reader, then written to the SSD
    IoRequest io;
    SsdCache* cache = nullptr;
    ReadCtx* ctx = nullptr;
    std::byte* buf = nullptr;
    std::vector<uint32_t> crcs;  // per unit of the span, capacity units per chunk
    uint64_t piece_offset = 0, piece_length = 0;
    uint64_t epoch = 0;
    uint32_t slot = 0, first_unit = 0, unit_count = 0, full_units = 0;
  };
  struct WriteOp {
    IoRequest io;
    IoRequest* user = nullptr;
    SsdCache* cache = nullptr;
    uint64_t need_version = 0;
  };
  struct MetaOp {
    IoRequest io;
    SsdCache* cache = nullptr;
    std::byte* buf = nullptr;  // kMetaBlockBytes, aligned
    uint32_t block = 0;
    uint64_t captured_version = 0;
  };

  SsdCache(BlockDevice& next, const SsdCacheOptions& o) noexcept;
  Result<void> open_file(std::string* why) noexcept;
  Result<void> load_or_format(std::string* why) noexcept;
  void encode_superblock(std::byte* out) const noexcept;
  void encode_record(uint32_t slot, std::byte* out) const noexcept;
  bool decode_record(uint32_t slot, const std::byte* in) noexcept;

  void read(IoRequest& io) noexcept;
  void start_piece_from_ssd(ReadCtx& ctx, uint32_t s, uint64_t off, uint64_t len) noexcept;
  void start_piece_to_next(ReadCtx& ctx, ReadOp& op, uint64_t off, uint64_t len) noexcept;
  bool start_fetch(ReadCtx& ctx, uint32_t s, uint64_t off, uint64_t len) noexcept;
  static void on_ssd_read(IoRequest& io) noexcept;
  static void on_piece_from_next(IoRequest& io) noexcept;
  static void on_fetched(IoRequest& io) noexcept;
  static void on_filled(IoRequest& io) noexcept;
  void piece_done(ReadCtx& ctx, Errc e) noexcept;
  void write(IoRequest& io) noexcept;
  static void on_written(IoRequest& io) noexcept;
  bool write_ready(const WriteOp& w) const noexcept;
  void check_waiters() noexcept;

  template <class Fn>
  void for_each_slot_in(uint64_t offset_bytes, uint64_t length_bytes, Fn fn) const noexcept;
  int64_t find(uint64_t chunk) const noexcept;  // resident, not evicting
  int64_t find_any(uint64_t chunk) const noexcept;
  int64_t admit(uint64_t chunk) noexcept;
  void note_use(uint32_t s, const IoRequest& io) noexcept;
  void start_evictions() noexcept;
  void start_evict(uint32_t s) noexcept;
  void try_free(uint32_t s) noexcept;
  void fail(const char* what) noexcept;
  static void on_superblock_dead(IoRequest& io) noexcept;

  void mark_dirty(uint32_t s) noexcept;
  void pump_meta() noexcept;
  static void on_meta_written(IoRequest& io) noexcept;

  void crypt(bool encrypt, uint64_t unit_number, std::byte* unit) noexcept;
  uint64_t unit_offset(uint32_t s, uint32_t u) const noexcept {
    return data_offset_ + (uint64_t(s) * units_per_chunk_ + u) * kUnitBytes;
  }
  bool valid(uint32_t s, uint32_t u) const noexcept {
    return (bits_[size_t(s) * words_ + u / 64] >> (u % 64)) & 1;
  }
  void set_valid(uint32_t s, uint32_t u, bool v) noexcept {
    uint64_t& w = bits_[size_t(s) * words_ + u / 64];
    w = v ? (w | (1ull << (u % 64))) : (w & ~(1ull << (u % 64)));
  }
  uint32_t& crc_of(uint32_t s, uint32_t u) noexcept {
    return crcs_[size_t(s) * units_per_chunk_ + u];
  }
  uint32_t block_of(uint32_t s) const noexcept { return s / records_per_block_; }

  BlockDevice& next_;
  SsdCacheOptions opt_;
  std::string description_;
  std::string open_note_;
  std::unique_ptr<FileDevice> file_;
  BlockDevice* io_ = nullptr;  // file_ or the test wrapper
  uint64_t volume_bytes_ = 0;
  uint32_t sector_bytes_ = 512;
  uint32_t units_per_chunk_ = 0;
  uint32_t words_ = 0;
  uint32_t record_bytes_ = 0;
  uint32_t records_per_block_ = 0;
  uint32_t slot_count_ = 0;
  uint32_t block_count_ = 0;
  uint32_t low_water_ = 1;
  uint32_t evicting_count_ = 0;
  uint64_t meta_offset_ = 0, data_offset_ = 0, file_bytes_ = 0;
  uint8_t key_check_[16] = {};
  bool direct_ = true;
  bool failed_ = false, superblock_dead_ = false, sb_write_started_ = false;
  bool pumping_ = false, pump_again_ = false, checking_ = false, check_again_ = false;
  uint64_t seq_ = 0;
  uint64_t meta_version_ = 0;

  EVP_CIPHER_CTX* enc_ = nullptr;
  EVP_CIPHER_CTX* dec_ = nullptr;

  std::vector<Slot> slots_;
  std::vector<uint64_t> bits_;
  std::vector<uint32_t> crcs_;
  std::vector<uint32_t> free_slots_;
  std::unordered_map<uint64_t, uint32_t> index_;  // chunk -> slot (resident or evicting)
  S3Fifo policy_;
  std::vector<uint64_t> mutated_, durable_;  // per metadata block: versions
  std::vector<uint8_t> meta_inflight_, meta_queued_;
  std::vector<uint32_t> meta_queue_;  // blocks waiting for a MetaOp (bounded: block count)
  size_t meta_queue_head_ = 0;

  std::byte* mem_ = nullptr;  // every aligned buffer, one allocation
  std::vector<ReadCtx> ctxs_;
  std::vector<ReadCtx*> free_ctxs_;
  std::vector<ReadOp> reads_;
  std::vector<ReadOp*> free_reads_;
  std::vector<FetchOp> fetches_;
  std::vector<FetchOp*> free_fetches_;
  std::vector<WriteOp> writes_;
  std::vector<WriteOp*> free_writes_;
  std::vector<WriteOp*> waiting_, ready_scratch_;
  std::vector<MetaOp> metas_;
  std::vector<MetaOp*> free_metas_;
  IoRequest sb_io_;
  std::byte* sb_buf_ = nullptr;
  SsdCacheCounters counters_;
};

}  // namespace ferry::cache
