// SsdCache unit tests, named after the failures they catch, and a differential property test
// against a plain RamDevice model. Single-threaded: no reactor runs, so the cache file's
// FileDevice does synchronous I/O and every device here completes inline. Cache files live in
// a fresh directory under /tmp (O_DIRECT needs a real file system).
#include "cache/ssd_cache.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "datapath/ram_device.h"

namespace ferry::cache {
namespace {

// Counts the reads that reach it; when `crashed` is set, drops writes (they complete but never
// land): the process died, nothing more reaches the disks.
class GateDevice final : public BlockDevice {
 public:
  explicit GateDevice(BlockDevice& next) : next_(next) {}
  Geometry geometry() const noexcept override { return next_.geometry(); }
  void submit(IoRequest& r) noexcept override {
    if (r.op == IoOp::read) {
      ++reads;
      read_bytes += r.length_bytes;
    }
    if (crashed && *crashed && r.op != IoOp::read && r.op != IoOp::block_status)
      return r.complete(Errc::ok);
    next_.submit(r);
  }
  std::string_view describe() const noexcept override { return "gate"; }
  const bool* crashed = nullptr;
  int reads = 0;
  uint64_t read_bytes = 0;

 private:
  BlockDevice& next_;
};

// The cache file as seen by a process killed at its `crash_at`-th write: writes before it land,
// that one lands torn (its first half) or not at all, every later one is lost. Writes are held
// until drain(), so they complete after whatever the cache did meanwhile (as on a real SSD
// queue): a cache that sends a write to next before its invalidation is on the medium loses.
class CrashFile final : public BlockDevice {
 public:
  explicit CrashFile(BlockDevice& file) : file_(file) {}
  Geometry geometry() const noexcept override { return file_.geometry(); }
  void submit(IoRequest& r) noexcept override {
    if (r.op != IoOp::write) return file_.submit(r);
    held_.push_back(&r);
  }
  void drain() {
    while (!held_.empty()) {
      IoRequest* r = held_.front();
      held_.erase(held_.begin());
      land(*r);
    }
  }
  std::string_view describe() const noexcept override { return "crash-file"; }
  int64_t crash_at = -1;
  int64_t writes = 0;
  bool torn = false;
  bool crashed = false;

 private:
  void land(IoRequest& r) {
    ++writes;
    if (crashed) return r.complete(Errc::ok);
    if (writes == crash_at) {
      crashed = true;
      if (torn && r.length_bytes >= 8192) {
        IoRequest half = r;
        half.length_bytes = (r.length_bytes / 2) & ~uint64_t(4095);
        half.on_complete = [](IoRequest&) noexcept {};
        file_.submit(half);
      }
      return r.complete(Errc::ok);
    }
    file_.submit(r);
  }
  BlockDevice& file_;
  std::vector<IoRequest*> held_;
};

std::vector<std::byte> do_io(BlockDevice& d, IoOp op, uint64_t off, uint64_t len,
                             const std::byte* src = nullptr, Errc* result = nullptr,
                             IoPriority priority = IoPriority::demand) {
  std::vector<std::byte> buf(len);
  if (src) std::memcpy(buf.data(), src, len);
  bool done = false;
  IoRequest r;
  r.op = op;
  r.priority = priority;
  r.offset_bytes = off;
  r.length_bytes = len;
  r.data = buf.data();
  r.owner = &done;
  r.on_complete = [](IoRequest& q) noexcept { *static_cast<bool*>(q.owner) = true; };
  d.submit(r);
  EXPECT_TRUE(done);  // every device here completes inline
  if (result)
    *result = r.result;
  else
    EXPECT_EQ(r.result, Errc::ok) << "op " << int(op) << " at " << off << "+" << len;
  return buf;
}

class SsdCacheTest : public ::testing::Test {
 protected:
  static constexpr uint64_t kVolumeBytes = 4 << 20;
  void SetUp() override {
    char tmpl[] = "/tmp/ferry-ssd-test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/cache";
    ram_ = std::move(RamDevice::create(kVolumeBytes).value());
    gate_ = std::make_unique<GateDevice>(*ram_);
    std::vector<std::byte> pattern(kVolumeBytes);
    for (uint64_t i = 0; i < kVolumeBytes; ++i) pattern[i] = std::byte((i * 7 + i / 4096) & 0xff);
    do_io(*ram_, IoOp::write, 0, kVolumeBytes, pattern.data());
    opt_.path = path_;
    opt_.size_bytes = 2 << 20;
    opt_.volume_uuid = Uuid::parse("11111111-2222-4333-8444-555555555555").value();
    opt_.volume_name = "disk";
  }
  void TearDown() override {
    cache_.reset();
    std::filesystem::remove_all(dir_);
  }
  void open(const SsdCacheOptions& o) {
    cache_.reset();
    std::string why;
    auto c = SsdCache::create(*gate_, o, &why);
    ASSERT_TRUE(c.ok()) << why;
    cache_ = std::move(c.value());
  }
  void open() { open(opt_); }
  std::vector<std::byte> next_bytes(uint64_t off, uint64_t len) {
    return do_io(*ram_, IoOp::read, off, len);
  }
  std::vector<std::byte> file_bytes() {
    std::vector<std::byte> b(std::filesystem::file_size(path_));
    FILE* f = std::fopen(path_.c_str(), "rb");
    EXPECT_EQ(std::fread(b.data(), 1, b.size(), f), b.size());
    std::fclose(f);
    return b;
  }
  void patch_file(uint64_t off, uint8_t x) {
    int fd = ::open(path_.c_str(), O_RDWR);
    uint8_t v = 0;
    ASSERT_EQ(pread(fd, &v, 1, off_t(off)), 1);
    v ^= x;
    ASSERT_EQ(pwrite(fd, &v, 1, off_t(off)), 1);
    ::close(fd);
  }
  uint64_t data_offset() {
    auto b = file_bytes();
    uint64_t v;
    std::memcpy(&v, b.data() + 48, 8);
    return v;
  }
  std::string write_key(mode_t mode) {
    std::string p = dir_ + "/key";
    FILE* f = std::fopen(p.c_str(), "wb");
    for (int i = 0; i < 64; ++i) std::fputc((i * 37 + 11) & 0xff, f);
    std::fclose(f);
    chmod(p.c_str(), mode);
    return p;
  }

  std::string dir_, path_;
  std::unique_ptr<RamDevice> ram_;
  std::unique_ptr<GateDevice> gate_;
  SsdCacheOptions opt_;
  std::unique_ptr<SsdCache> cache_;
};

TEST_F(SsdCacheTest, ReadsAfterRestartAreHitsAndEqualNext) {
  open();
  ASSERT_GE(cache_->slots(), 16u);
  for (uint64_t off = 0; off < (1 << 20); off += 64 * 1024)
    EXPECT_EQ(do_io(*cache_, IoOp::read, off, 64 * 1024), next_bytes(off, 64 * 1024));
  EXPECT_EQ(cache_->counters().misses, 16u);
  open();  // clean restart
  EXPECT_EQ(cache_->counters().restored_chunks, 16u) << cache_->open_note();
  const int reads_before = gate_->reads;
  for (uint64_t off = 0; off < (1 << 20); off += 4096)
    ASSERT_EQ(do_io(*cache_, IoOp::read, off, 4096), next_bytes(off, 4096)) << off;
  EXPECT_EQ(do_io(*cache_, IoOp::read, 0, 1 << 20), next_bytes(0, 1 << 20));  // across chunks
  EXPECT_EQ(gate_->reads, reads_before);
  EXPECT_EQ(cache_->counters().hits, 257u);
  EXPECT_EQ(cache_->counters().misses, 0u);
}

TEST_F(SsdCacheTest, WriteIsNeverServedStaleFromTheSsd) {
  open();
  do_io(*cache_, IoOp::read, 0, 64 * 1024);
  std::vector<std::byte> x(512, std::byte{0xab});
  do_io(*cache_, IoOp::write, 4096 + 512, 512, x.data());
  EXPECT_EQ(do_io(*cache_, IoOp::read, 0, 64 * 1024), next_bytes(0, 64 * 1024));
  do_io(*cache_, IoOp::discard, 8192, 4096);
  EXPECT_EQ(do_io(*cache_, IoOp::read, 0, 64 * 1024), next_bytes(0, 64 * 1024));
  open();
  EXPECT_EQ(do_io(*cache_, IoOp::read, 0, 64 * 1024), next_bytes(0, 64 * 1024));
}

// A workload whose every cache-file write may be the last one the dying process got out (lost
// or torn); `next` sees nothing after that either. On reopen, every sector must equal next.
TEST_F(SsdCacheTest, KillDashNineLeavesNoStaleSector) {
  const uint64_t region = 512 * 1024;
  // Hundreds of runs, each with FUA metadata writes: on tmpfs when there is one (fdatasync free).
  char shm[] = "/dev/shm/ferry-ssd-crash.XXXXXX";
  const std::string crash_dir = mkdtemp(shm) ? shm : dir_;
  const std::string crash_path = crash_dir + "/cache";
  auto run = [&](int64_t crash_at, bool torn) -> int64_t {
    ram_ = std::move(RamDevice::create(kVolumeBytes).value());
    gate_ = std::make_unique<GateDevice>(*ram_);
    std::filesystem::remove(crash_path);
    CrashFile* crash = nullptr;
    std::unique_ptr<CrashFile> holder;
    SsdCacheOptions o = opt_;
    o.path = crash_path;
    o.chunk_bytes = 16 * 1024;
    o.size_bytes = 8192 + 8 * (16 * 1024 + 4096);  // a handful of slots: evictions happen
    o.wrap_file = [&](BlockDevice& f) -> BlockDevice* {
      holder = std::make_unique<CrashFile>(f);
      crash = holder.get();
      crash->crash_at = crash_at;
      crash->torn = torn;
      return crash;
    };
    {
      auto c = SsdCache::create(*gate_, o);
      EXPECT_TRUE(c.ok());
      if (!c.ok()) return 0;
      std::unique_ptr<SsdCache> cache = std::move(c.value());
      gate_->crashed = &crash->crashed;
      std::mt19937_64 rng(42);
      std::vector<std::byte> buf(64 * 1024);
      for (int i = 0; i < 150; ++i) {
        const uint64_t sectors = 1 + rng() % 64;
        const uint64_t off = (rng() % (region / 512 - sectors)) * 512;
        const int what = int(rng() % 10);
        if (what >= 6 && what < 9)
          for (auto& b : buf) b = std::byte(rng());
        bool done = false;
        IoRequest r;
        r.op = what < 6 ? IoOp::read : what < 9 ? IoOp::write : IoOp::discard;
        r.offset_bytes = off;
        r.length_bytes = sectors * 512;
        r.data = buf.data();
        r.owner = &done;
        r.on_complete = [](IoRequest& q) noexcept { *static_cast<bool*>(q.owner) = true; };
        cache->submit(r);
        crash->drain();
        EXPECT_TRUE(done);
      }
      gate_->crashed = nullptr;
    }
    const int64_t writes = crash->writes;
    o.wrap_file = nullptr;
    auto c = SsdCache::create(*gate_, o);
    EXPECT_TRUE(c.ok());
    for (uint64_t off = 0; off < region; off += 4096)
      EXPECT_EQ(do_io(*c.value(), IoOp::read, off, 4096), next_bytes(off, 4096))
          << "stale or torn data at " << off << " after a crash at cache-file write " << crash_at
          << (torn ? " (torn)" : "");
    return writes;
  };
  const int64_t total = run(-1, false);
  ASSERT_GT(total, 50);
  for (int64_t k = 1; k <= total && !HasFailure(); ++k) {
    run(k, false);
    if (k % 3 == 0) run(k, true);
  }
  if (crash_dir != dir_) std::filesystem::remove_all(crash_dir);
}

TEST_F(SsdCacheTest, CorruptChunkIsDroppedAndFetchedAgain) {
  open();
  do_io(*cache_, IoOp::read, 0, 64 * 1024);
  do_io(*cache_, IoOp::read, 64 * 1024, 64 * 1024);
  cache_.reset();
  // Slot order is the cache's business: corrupt one byte in each slot's third unit.
  const uint64_t d = data_offset();
  patch_file(d + 2 * 4096 + 100, 0x5a);
  open();
  EXPECT_EQ(cache_->counters().restored_chunks, 2u);
  const int before = gate_->reads;
  EXPECT_EQ(do_io(*cache_, IoOp::read, 0, 128 * 1024), next_bytes(0, 128 * 1024));
  EXPECT_EQ(cache_->counters().corrupt_dropped, 1u);
  EXPECT_GT(gate_->reads, before);
  EXPECT_EQ(do_io(*cache_, IoOp::read, 0, 128 * 1024), next_bytes(0, 128 * 1024));
}

TEST_F(SsdCacheTest, TornMetadataRecordIsIgnored) {
  open();
  for (uint64_t off = 0; off < 4 * 64 * 1024; off += 64 * 1024)
    do_io(*cache_, IoOp::read, off, 64 * 1024);
  cache_.reset();
  patch_file(4096 + 40, 0xff);  // inside the first slot record (its validity bitmap)
  open();
  EXPECT_EQ(cache_->counters().restored_chunks, 3u);
  EXPECT_EQ(do_io(*cache_, IoOp::read, 0, 4 * 64 * 1024), next_bytes(0, 4 * 64 * 1024));
}

TEST_F(SsdCacheTest, CacheFileOfAnotherVolumeStartsEmpty) {
  open();
  do_io(*cache_, IoOp::read, 0, 64 * 1024);
  SsdCacheOptions other = opt_;
  other.volume_uuid = Uuid::parse("99999999-2222-4333-8444-555555555555").value();
  open(other);
  EXPECT_EQ(cache_->counters().restored_chunks, 0u);
  EXPECT_NE(cache_->open_note().find("volume"), std::string::npos) << cache_->open_note();
  EXPECT_EQ(do_io(*cache_, IoOp::read, 0, 64 * 1024), next_bytes(0, 64 * 1024));
  SsdCacheOptions chunk = other;
  chunk.chunk_bytes = 32 * 1024;
  open(chunk);
  EXPECT_EQ(cache_->counters().restored_chunks, 0u);
  EXPECT_FALSE(cache_->open_note().empty());
}

TEST_F(SsdCacheTest, EncryptedAtRest) {
  const char kText[] = "FERRY PLAINTEXT!";  // 16 bytes, repeated over the first 256 KiB
  std::vector<std::byte> p(256 * 1024);
  for (size_t i = 0; i < p.size(); ++i) p[i] = std::byte(kText[i % 16]);
  do_io(*ram_, IoOp::write, 0, p.size(), p.data());
  auto contains = [&](const std::vector<std::byte>& f) {
    return std::search(f.begin(), f.end(), p.begin(), p.begin() + 64) != f.end();
  };
  open();  // plaintext first: the pattern is there (the check can see it)
  do_io(*cache_, IoOp::read, 0, p.size());
  cache_.reset();
  EXPECT_TRUE(contains(file_bytes()));
  std::filesystem::remove(path_);
  SsdCacheOptions o = opt_;
  o.key_file = write_key(0600);
  open(o);
  EXPECT_TRUE(cache_->encrypted());
  EXPECT_NE(cache_->describe().find("aes-xts"), std::string::npos);
  EXPECT_EQ(do_io(*cache_, IoOp::read, 0, p.size()), p);
  cache_.reset();
  EXPECT_FALSE(contains(file_bytes()));
  open(o);
  EXPECT_EQ(cache_->counters().restored_chunks, 4u);
  EXPECT_EQ(do_io(*cache_, IoOp::read, 0, p.size()), p);
  EXPECT_EQ(cache_->counters().hits, 1u);
  open();  // without the key: starts empty, never decrypts garbage
  EXPECT_EQ(cache_->counters().restored_chunks, 0u);
  EXPECT_EQ(do_io(*cache_, IoOp::read, 0, p.size()), p);
}

TEST_F(SsdCacheTest, KeyFileReadableByOthersIsRefused) {
  SsdCacheOptions o = opt_;
  o.key_file = write_key(0644);
  std::string why;
  auto c = SsdCache::create(*gate_, o, &why);
  EXPECT_FALSE(c.ok());
  EXPECT_NE(why.find("readable"), std::string::npos) << why;
}

TEST_F(SsdCacheTest, ScanDoesNotEvictHotSet) {
  open();  // ~31 slots of 64 KiB
  const uint32_t hot = cache_->slots() / 2;
  for (int round = 0; round < 3; ++round)
    for (uint32_t c = 0; c < hot; ++c) do_io(*cache_, IoOp::read, uint64_t(c) * 65536, 4096);
  for (uint64_t c = hot; c < kVolumeBytes / 65536; ++c)
    do_io(*cache_, IoOp::read, c * 65536, 65536);
  const uint64_t hits = cache_->counters().hits;
  for (uint32_t c = 0; c < hot; ++c) do_io(*cache_, IoOp::read, uint64_t(c) * 65536, 4096);
  EXPECT_GE(cache_->counters().hits - hits, hot * 9 / 10)
      << "a one-pass scan displaced the hot set";
}

// A fetch for a prefetch read (the RAM tier above fetching for read-ahead) counts as prefetched
// bytes, and a prefetched chunk read on demand counts once toward prefetch accuracy.
TEST_F(SsdCacheTest, PrefetchAccuracyCountsPrefetchedChunksReadOnDemand) {
  open();
  for (uint64_t c = 0; c < 3; ++c)
    do_io(*cache_, IoOp::read, c * 65536, 65536, nullptr, nullptr, IoPriority::prefetch);
  do_io(*cache_, IoOp::read, 0, 4096);
  do_io(*cache_, IoOp::read, 8192, 4096);
  do_io(*cache_, IoOp::read, 5 * 65536, 4096);
  const SsdCacheCounters& c = cache_->counters();
  EXPECT_EQ(c.prefetched_chunks, 3u);
  EXPECT_EQ(c.prefetch_hits, 1u);
  EXPECT_EQ(c.bytes_prefetched, 3u * 65536);
  EXPECT_GT(c.bytes_fetched, 0u);  // chunk 5, on demand
}

// A scan in reads smaller than a chunk reads each chunk several times in a row: those
// correlated re-reads are not reuse and must not promote the scanned chunks into main.
TEST_F(SsdCacheTest, ScanInReadsSmallerThanAChunkDoesNotEvictHotSet) {
  open();  // ~31 slots of 64 KiB
  const uint32_t hot = cache_->slots() / 2;
  for (int round = 0; round < 3; ++round)
    for (uint32_t c = 0; c < hot; ++c) do_io(*cache_, IoOp::read, uint64_t(c) * 65536, 4096);
  for (uint64_t off = uint64_t(hot) * 65536; off < kVolumeBytes; off += 16384)
    do_io(*cache_, IoOp::read, off, 16384);
  const uint64_t hits = cache_->counters().hits;
  for (uint32_t c = 0; c < hot; ++c) do_io(*cache_, IoOp::read, uint64_t(c) * 65536, 4096);
  EXPECT_GE(cache_->counters().hits - hits, hot * 9 / 10)
      << "a one-pass scan in 16 KiB reads displaced the hot set";
}

// Random reads, writes, discards and write_zeroes of random sizes through the cache (with a
// reopen now and then) must read exactly what a plain RamDevice given the same writes reads.
TEST_F(SsdCacheTest, DifferentialAgainstRamDevice) {
  auto model = std::move(RamDevice::create(kVolumeBytes).value());
  do_io(*model, IoOp::write, 0, kVolumeBytes, next_bytes(0, kVolumeBytes).data());
  SsdCacheOptions o = opt_;
  o.chunk_bytes = 32 * 1024;
  o.size_bytes = 1 << 20;
  open(o);
  std::mt19937_64 rng(7);
  std::vector<std::byte> buf(256 * 1024);
  const uint64_t span = 2 << 20;
  uint64_t hits = 0;
  for (int i = 0; i < 4000 && !HasFailure(); ++i) {
    const uint64_t sectors = 1 + (rng() % 4 == 0 ? rng() % 512 : rng() % 16);
    const uint64_t off = (rng() % (span / 512 - sectors)) * 512;
    const uint64_t len = sectors * 512;
    const int what = int(rng() % 20);
    if (what < 12) {
      ASSERT_EQ(do_io(*cache_, IoOp::read, off, len), do_io(*model, IoOp::read, off, len))
          << "op " << i << " read " << off << "+" << len;
    } else if (what < 17) {
      for (uint64_t j = 0; j < len; ++j) buf[j] = std::byte(rng());
      do_io(*cache_, IoOp::write, off, len, buf.data());
      do_io(*model, IoOp::write, off, len, buf.data());
    } else if (what < 18) {
      do_io(*cache_, IoOp::write_zeroes, off, len);
      do_io(*model, IoOp::write_zeroes, off, len);
    } else if (what < 19) {
      do_io(*cache_, IoOp::discard, off, len);  // RamDevice: discarded blocks read as zeroes
      do_io(*model, IoOp::discard, off, len);
    } else if (rng() % 20 == 0) {
      hits += cache_->counters().hits;
      open(o);
    }
  }
  hits += cache_->counters().hits;
  EXPECT_GT(hits, 300u);
}

}  // namespace
}  // namespace ferry::cache
