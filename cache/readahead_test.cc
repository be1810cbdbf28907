// ReadAhead over RamCache over a recording device: a sequential stream of small reads becomes
// cache hits after its first reads (the boot loader's pattern), random reads start no
// prefetch, prefetches carry IoPriority::prefetch and stay within reads_max, interleaved
// streams are both followed, and data stays right when prefetches and writes complete in any
// order (differential against a model). Single-threaded.
#include "cache/readahead.h"

#include <gtest/gtest.h>

#include <cstring>
#include <deque>
#include <random>
#include <vector>

#include "cache/ram_cache.h"
#include "datapath/ram_device.h"

namespace ferry::cache {
namespace {

constexpr uint64_t kDiskBytes = 64ull << 20;

// Records what reaches the bottom; completes inline, or holds requests until released (in any
// order) when `hold` is set.
class Recorder final : public BlockDevice {
 public:
  explicit Recorder(BlockDevice& next) : next_(next) {}
  Geometry geometry() const noexcept override { return next_.geometry(); }
  void submit(IoRequest& r) noexcept override {
    if (r.op == IoOp::read) {
      ++reads;
      if (r.priority == IoPriority::prefetch)
        ++prefetch_reads;
      else
        ++demand_reads;
    }
    if (hold)
      held.push_back(&r);
    else
      next_.submit(r);
  }
  std::string_view describe() const noexcept override { return "recorder"; }
  bool release_one(size_t pick) {
    if (held.empty()) return false;
    const size_t i = pick % held.size();
    IoRequest* r = held[i];
    held.erase(held.begin() + ptrdiff_t(i));
    next_.submit(*r);
    return true;
  }
  bool hold = false;
  int reads = 0, prefetch_reads = 0, demand_reads = 0;
  std::deque<IoRequest*> held;

 private:
  BlockDevice& next_;
};

struct Io {
  IoRequest req;
  std::vector<std::byte> buf;
  bool done = false;
  Io(IoOp op, uint64_t off, uint64_t len) : buf(len) {
    req.op = op;
    req.offset_bytes = off;
    req.length_bytes = len;
    req.data = buf.data();
    req.owner = this;
    req.on_complete = [](IoRequest& r) noexcept { static_cast<Io*>(r.owner)->done = true; };
  }
};

class ReadAheadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = RamDevice::create(kDiskBytes, 512);
    ASSERT_TRUE(d.ok());
    disk_ = std::move(d.value());
    model_.resize(kDiskBytes);
    std::mt19937_64 rng(11);
    for (size_t i = 0; i < kDiskBytes; i += 8) {
      const uint64_t v = rng();
      std::memcpy(model_.data() + i, &v, 8);
    }
    Io w(IoOp::write, 0, kDiskBytes);
    std::memcpy(w.buf.data(), model_.data(), kDiskBytes);
    disk_->submit(w.req);
    ASSERT_TRUE(w.done);
    rec_ = std::make_unique<Recorder>(*disk_);
    RamCacheOptions co;
    co.capacity_bytes = 16ull << 20;
    auto c = RamCache::create(*rec_, co);
    ASSERT_TRUE(c.ok());
    cache_ = std::move(c.value());
    auto r = ReadAhead::create(*cache_, opt_);
    ASSERT_TRUE(r.ok());
    ra_ = std::move(r.value());
  }
  bool read_matches(uint64_t off, uint64_t len) {
    Io r(IoOp::read, off, len);
    ra_->submit(r.req);
    return r.done && r.req.result == Errc::ok &&
           std::memcmp(r.buf.data(), model_.data() + off, len) == 0;
  }

  ReadAheadOptions opt_;
  std::unique_ptr<RamDevice> disk_;
  std::vector<std::byte> model_;
  std::unique_ptr<Recorder> rec_;
  std::unique_ptr<RamCache> cache_;
  std::unique_ptr<ReadAhead> ra_;
};

// Without read-ahead every 64 KiB of a one-at-a-time 4 KiB stream is a miss (a WAN round trip):
// 128 misses for these 8 MiB.
TEST_F(ReadAheadTest, SequentialSmallReadsBecomeCacheHitsAfterTheFirstFew) {
  for (uint64_t off = 0; off < (8u << 20); off += 4096) ASSERT_TRUE(read_matches(off, 4096)) << off;
  const auto& c = cache_->counters();
  EXPECT_LE(c.misses, 3u) << "demand misses";
  EXPECT_EQ(c.hits + c.misses, 2048u);
  EXPECT_GT(ra_->counters().prefetch_reads, 100u);
  EXPECT_GT(ra_->counters().window_grows, 0u);
  // Nearly everything read ahead was used.
  EXPECT_GE(ra_->counters().prefetch_used_bytes * 10, (8u << 20) * 9ull);
}

TEST_F(ReadAheadTest, RandomReadsStartNoPrefetch) {
  std::mt19937_64 rng(3);
  for (int i = 0; i < 500; ++i) {
    const uint64_t off = (rng() % (kDiskBytes / 4096)) * 4096;
    ASSERT_TRUE(read_matches(off, 4096));
  }
  EXPECT_EQ(ra_->counters().prefetch_reads, 0u);
  EXPECT_EQ(rec_->prefetch_reads, 0);
}

TEST_F(ReadAheadTest, PrefetchesCarryPrefetchPriorityAndStayWithinReadsMax) {
  rec_->hold = true;
  std::vector<std::unique_ptr<Io>> ios;
  for (uint64_t off = 0; off < 3 * 4096; off += 4096) {
    ios.push_back(std::make_unique<Io>(IoOp::read, off, 4096));
    ra_->submit(ios.back()->req);
  }
  EXPECT_LE(ra_->in_flight(), opt_.reads_max);
  EXPECT_GT(rec_->prefetch_reads, 0);
  EXPECT_EQ(rec_->demand_reads, 1);  // the three demand reads wait on one chunk fetch
  std::mt19937 rng(5);
  while (rec_->release_one(rng())) {
  }
  for (auto& io : ios) {
    ASSERT_TRUE(io->done);
    EXPECT_EQ(std::memcmp(io->buf.data(), model_.data() + io->req.offset_bytes, 4096), 0);
  }
  EXPECT_EQ(ra_->in_flight(), 0u);
}

TEST_F(ReadAheadTest, TwoInterleavedStreamsAreBothReadAhead) {
  const uint64_t a = 0, b = 32u << 20;
  for (uint64_t i = 0; i < 512; ++i) {
    ASSERT_TRUE(read_matches(a + i * 4096, 4096));
    ASSERT_TRUE(read_matches(b + i * 4096, 4096));
  }
  EXPECT_LE(cache_->counters().misses, 6u);
}

// Prefetches, demand reads and writes in flight together, completed in random order: every
// read returns the latest acknowledged write (the cache's rule that a fetch never overwrites
// newer bytes holds for read-ahead fetches too).
TEST_F(ReadAheadTest, DataStaysRightWhenPrefetchesAndWritesCompleteInAnyOrder) {
  rec_->hold = true;
  std::mt19937_64 rng(17);
  struct Read {
    std::unique_ptr<Io> io;
    bool racing = false;  // a write to its block was in flight at some point of its life
  };
  std::vector<Read> reads;
  std::vector<std::unique_ptr<Io>> writes;
  uint64_t seq = 0;
  size_t checked = 0;
  auto writing = [&](uint64_t off) {
    for (auto& w : writes)
      if (w->req.offset_bytes == off) return true;
    return false;
  };
  for (int step = 0; step < 4000; ++step) {
    const int what = int(rng() % 10);
    if (what < 6) {
      const uint64_t off = (seq++ % 2048) * 4096;
      reads.push_back({std::make_unique<Io>(IoOp::read, off, 4096), writing(off)});
      ra_->submit(reads.back().io->req);
    } else if (what < 7 && writes.size() < 8) {
      const uint64_t off = (rng() % 2048) * 4096;
      if (writing(off)) continue;  // one write per block at a time: the model knows its order
      for (auto& r : reads)
        if (r.io->req.offset_bytes == off) r.racing = true;
      auto w = std::make_unique<Io>(IoOp::write, off, 4096);
      for (auto& b : w->buf) b = std::byte(rng());
      ra_->submit(w->req);
      writes.push_back(std::move(w));
    } else {
      rec_->release_one(size_t(rng()));
    }
    for (auto it = writes.begin(); it != writes.end();) {  // acknowledged: the model takes it
      if (!(*it)->done) {
        ++it;
        continue;
      }
      ASSERT_EQ((*it)->req.result, Errc::ok);
      std::memcpy(model_.data() + (*it)->req.offset_bytes, (*it)->buf.data(), 4096);
      it = writes.erase(it);
    }
    for (auto it = reads.begin(); it != reads.end();) {
      Io& r = *it->io;
      if (!r.done) {
        ++it;
        continue;
      }
      ASSERT_EQ(r.req.result, Errc::ok);
      if (!it->racing) {
        ASSERT_EQ(std::memcmp(r.buf.data(), model_.data() + r.req.offset_bytes, 4096), 0) << step;
        ++checked;
      }
      it = reads.erase(it);
    }
  }
  while (rec_->release_one(size_t(rng()))) {
  }
  EXPECT_GT(checked, 1000u);
  EXPECT_GT(ra_->counters().prefetch_reads, 0u);
}

}  // namespace
}  // namespace ferry::cache
