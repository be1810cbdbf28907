// MeteredDevice: counts what the front end asked, by operation; bytes only for successful I/O;
// latency lands in the right bucket; results (data, lent, block status) pass through untouched.
#include "datapath/metered_device.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "datapath/ram_device.h"
#include "datapath/reactor.h"
#include "datapath/test_devices.h"

namespace ferry {
namespace {

Errc run_sync(BlockDevice& dev, IoOp op, uint64_t offset, uint64_t length, std::byte* data) {
  IoRequest req;
  req.op = op;
  req.offset_bytes = offset;
  req.length_bytes = length;
  req.data = data;
  bool done = false;
  req.owner = &done;
  req.on_complete = [](IoRequest& r) noexcept { *static_cast<bool*>(r.owner) = true; };
  dev.submit(req);
  EXPECT_TRUE(done);  // RamDevice and FaultDevice complete inside submit
  return req.result;
}

TEST(MeteredDevice, CountsOpsAndBytesOfSuccessfulIoOnly) {
  auto ram = RamDevice::create(1 << 20, 512);
  FaultDevice faults(*ram.value());
  FaultRule rule;
  rule.op = IoOp::read;
  rule.offset_bytes = 65536;
  rule.length_bytes = 4096;
  faults.add_rule(rule);
  MeteredDevice meter(faults);
  std::vector<std::byte> buf(8192, std::byte{0x5a});
  EXPECT_EQ(run_sync(meter, IoOp::write, 0, 8192, buf.data()), Errc::ok);
  EXPECT_EQ(run_sync(meter, IoOp::read, 0, 4096, buf.data()), Errc::ok);
  EXPECT_EQ(run_sync(meter, IoOp::read, 4096, 4096, buf.data()), Errc::ok);
  EXPECT_EQ(run_sync(meter, IoOp::read, 65536, 4096, buf.data()), Errc::io_error);
  EXPECT_EQ(run_sync(meter, IoOp::flush, 0, 0, nullptr), Errc::ok);
  const IoMeterSnapshot s = meter.snapshot();
  EXPECT_EQ(s.reads, 3u);
  EXPECT_EQ(s.writes, 1u);
  EXPECT_EQ(s.flushes, 1u);
  EXPECT_EQ(s.errors, 1u);
  EXPECT_EQ(s.bytes_read, 8192u);  // the failed read adds no bytes
  EXPECT_EQ(s.bytes_written, 8192u);
  EXPECT_EQ(s.latency_count, 4u);  // reads and writes are timed, flushes are not
  EXPECT_EQ(s.latency_buckets.back(), s.latency_count);
  for (size_t i = 1; i < s.latency_buckets.size(); ++i)
    EXPECT_GE(s.latency_buckets[i], s.latency_buckets[i - 1]);
}

TEST(MeteredDevice, PassesDataAndBlockStatusThrough) {
  auto ram = RamDevice::create(1 << 20, 512);
  MeteredDevice meter(*ram.value());
  std::vector<std::byte> in(4096, std::byte{0x33}), out(4096);
  ASSERT_EQ(run_sync(meter, IoOp::write, 8192, 4096, in.data()), Errc::ok);
  ASSERT_EQ(run_sync(meter, IoOp::read, 8192, 4096, out.data()), Errc::ok);
  EXPECT_EQ(std::memcmp(in.data(), out.data(), 4096), 0);
  EXPECT_EQ(meter.describe(), ram.value()->describe());  // invisible in the stack's description
  EXPECT_EQ(meter.geometry().size_bytes(), ram.value()->geometry().size_bytes());
}

TEST(MeteredDevice, SlowCompletionLandsInItsLatencyBucket) {
  auto ram = RamDevice::create(1 << 20, 512);
  DelayDevice slow(*ram.value(), 3000);  // 3 ms: the (2.5 ms, 5 ms] bucket
  MeteredDevice meter(slow);
  Reactor reactor(0, 16 << 20);
  std::atomic<bool> ready{false}, done{false};
  std::thread t([&] {
    ASSERT_TRUE(reactor.init(64).ok());
    ready = true;
    reactor.run();
  });
  while (!ready) std::this_thread::yield();
  static IoRequest req;
  static std::vector<std::byte> buf(512);
  reactor.post([&] {
    req = IoRequest{};
    req.op = IoOp::read;
    req.length_bytes = 512;
    req.data = buf.data();
    req.owner = &done;
    req.on_complete = [](IoRequest& r) noexcept {
      static_cast<std::atomic<bool>*>(r.owner)->store(true);
    };
    meter.submit(req);
  });
  for (int i = 0; i < 2000 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  reactor.stop();
  t.join();
  ASSERT_TRUE(done.load());
  const IoMeterSnapshot s = meter.snapshot();
  size_t bucket_2500 = 0;
  while (kLatencyBucketsUs[bucket_2500] != 2500) ++bucket_2500;
  EXPECT_EQ(s.latency_buckets[bucket_2500], 0u);  // nothing at or under 2.5 ms
  EXPECT_EQ(s.latency_buckets.back(), 1u);        // counted once, above it
  EXPECT_GE(s.latency_sum_us, 3000u);
  EXPECT_EQ(req.result, Errc::ok);
}

}  // namespace
}  // namespace ferry
