// BackgroundStream: reads the whole volume once at IoPriority::background through the layers
// below (so a cache fills), passes other I/O through, reports progress to 100 %, keeps its
// rate cap, and stop() ends it. Runs a real reactor thread (the cap's timer is the reactor's).
#include "cache/background_stream.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

#include "cache/ram_cache.h"
#include "datapath/ram_device.h"

namespace ferry::cache {
namespace {

class Counting final : public BlockDevice {
 public:
  explicit Counting(BlockDevice& next) : next_(next) {}
  Geometry geometry() const noexcept override { return next_.geometry(); }
  void submit(IoRequest& r) noexcept override {
    if (r.op == IoOp::read) {
      if (r.priority == IoPriority::background)
        background_bytes += r.length_bytes;
      else
        other_reads++;
    }
    next_.submit(r);
  }
  std::string_view describe() const noexcept override { return "counting"; }
  uint64_t background_bytes = 0;
  uint64_t other_reads = 0;

 private:
  BlockDevice& next_;
};

class BackgroundStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    disk_ = std::move(RamDevice::create(8u << 20, 512).value());
    counting_ = std::make_unique<Counting>(*disk_);
    thread_ = std::thread([this] {
      ASSERT_TRUE(reactor_.init(64).ok());
      ready_ = true;
      reactor_.run();
    });
    while (!ready_) std::this_thread::yield();
  }
  void TearDown() override {
    reactor_.stop();
    thread_.join();
  }
  template <typename F>
  void on_reactor(F f) {
    std::promise<void> done;
    reactor_.post([&] {
      f();
      done.set_value();
    });
    done.get_future().wait();
  }
  StreamProgress wait_finished(BackgroundStream& s, int seconds) {
    StreamProgress p;
    for (int i = 0; i < seconds * 100; ++i) {
      on_reactor([&] { p = s.progress(); });
      if (p.finished) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return p;
  }
  std::unique_ptr<RamDevice> disk_;
  std::unique_ptr<Counting> counting_;
  Reactor reactor_{0, 64u << 20};
  std::atomic<bool> ready_{false};
  std::thread thread_;
};

TEST_F(BackgroundStreamTest, StreamsTheWholeVolumeOnceAtBackgroundPriorityIntoTheCache) {
  RamCacheOptions co;
  co.capacity_bytes = 16u << 20;
  auto cache = std::move(RamCache::create(*counting_, co).value());
  auto s = std::move(BackgroundStream::create(*cache, "vol", {}).value());
  on_reactor([&] { s->start(reactor_); });
  const StreamProgress p = wait_finished(*s, 10);
  ASSERT_TRUE(p.finished);
  EXPECT_EQ(p.done_bytes, 8u << 20);
  EXPECT_DOUBLE_EQ(p.percent(), 100.0);
  EXPECT_EQ(p.errors, 0u);
  EXPECT_EQ(counting_->background_bytes, 8u << 20);  // fetched by the cache at background priority
  EXPECT_EQ(counting_->other_reads, 0u);
  // Afterwards a demand read is a cache hit: nothing more goes below.
  std::vector<std::byte> buf(4096);
  IoRequest r;
  r.op = IoOp::read;
  r.offset_bytes = 5u << 20;
  r.length_bytes = buf.size();
  r.data = buf.data();
  std::atomic<bool> done{false};
  r.owner = &done;
  r.on_complete = [](IoRequest& q) noexcept {
    static_cast<std::atomic<bool>*>(q.owner)->store(true);
  };
  on_reactor([&] { s->submit(r); });
  EXPECT_TRUE(done.load());
  EXPECT_EQ(counting_->other_reads, 0u);
  EXPECT_EQ(cache->counters().hits, 1u);
}

TEST_F(BackgroundStreamTest, RateCapHoldsTheStreamBack) {
  BackgroundStreamOptions o;
  o.request_bytes = 256u << 10;
  o.rate_bytes_per_s = 4u << 20;  // 8 MiB at 4 MiB/s: at least ~1.75 s (one request of burst)
  auto s = std::move(BackgroundStream::create(*counting_, "vol", o).value());
  const auto t0 = std::chrono::steady_clock::now();
  on_reactor([&] { s->start(reactor_); });
  const StreamProgress p = wait_finished(*s, 20);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(p.finished);
  EXPECT_EQ(p.done_bytes, 8u << 20);
  EXPECT_GE(took, 1.6);
  EXPECT_LE(p.rate_bytes_per_s, 1.2 * double(o.rate_bytes_per_s));
}

TEST_F(BackgroundStreamTest, StopEndsItEarlyAndProgressSaysSo) {
  BackgroundStreamOptions o;
  o.request_bytes = 256u << 10;
  o.rate_bytes_per_s = 1u << 20;
  auto s = std::move(BackgroundStream::create(*counting_, "vol", o).value());
  on_reactor([&] { s->start(reactor_); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  on_reactor([&] { s->stop(); });
  StreamProgress p;
  on_reactor([&] { p = s->progress(); });
  EXPECT_LT(p.done_bytes, 8u << 20);
  EXPECT_GT(p.eta_s, 0);
}

}  // namespace
}  // namespace ferry::cache
