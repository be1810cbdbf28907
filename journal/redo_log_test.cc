// RedoLogDevice tests, named after the failures they catch: a committed epoch lost or half
// applied by a crash, an uncommitted one applied, torn / corrupt records at replay, replay not
// idempotent, reads seeing the image mid-apply, re-shipped or incomplete epochs, a full log.
// The device runs on a reactor thread; "crashes" stop it with next refusing writes (so a
// committed epoch is not applied yet) and reopen its file.
#include "journal/redo_log.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <fstream>
#include <future>
#include <random>
#include <thread>
#include <vector>

#include "datapath/ram_device.h"

namespace ferry::journal {
namespace {

constexpr uint64_t kBs = 4096;

class ReactorThread {
 public:
  ReactorThread() : reactor_(0, 64 << 20) {
    thread_ = std::thread([this] {
      if (!reactor_.init(256).ok()) std::abort();
      ready_ = true;
      reactor_.run();
    });
    while (!ready_) std::this_thread::yield();
  }
  ~ReactorThread() {
    reactor_.stop();
    thread_.join();
  }
  template <class F>
  void call(F fn) {
    std::promise<void> p;
    reactor_.post([&] {
      fn();
      p.set_value();
    });
    p.get_future().wait();
  }
  Reactor& reactor() { return reactor_; }

 private:
  Reactor reactor_;
  std::atomic<bool> ready_{false};
  std::thread thread_;
};

struct TempDir {
  std::string path;
  TempDir() {
    char t[] = "/tmp/ferry-redo-XXXXXX";
    path = mkdtemp(t);
  }
  ~TempDir() { std::system(("rm -rf " + path).c_str()); }
  std::string file(const std::string& n) const { return path + "/" + n; }
};

// Next device with switches: `down` fails writes (the NBD source is gone), `hold` parks them.
class SwitchDevice final : public BlockDevice {
 public:
  explicit SwitchDevice(BlockDevice& next) : next_(next) {}
  Geometry geometry() const noexcept override { return next_.geometry(); }
  std::string_view describe() const noexcept override { return "switch"; }
  void submit(IoRequest& r) noexcept override {
    const bool w = r.op == IoOp::write || r.op == IoOp::write_zeroes;
    if (w) ++writes;
    if (down && (w || r.op == IoOp::flush)) return r.complete(Errc::closed);
    if (hold && w) {
      held.push_back(&r);
      return;
    }
    next_.submit(r);
  }
  void release() {
    hold = false;
    while (!held.empty()) {
      IoRequest* r = held.front();
      held.pop_front();
      next_.submit(*r);
    }
  }
  BlockDevice& next_;
  std::atomic<bool> down{false};
  bool hold = false;
  std::deque<IoRequest*> held;
  std::atomic<uint64_t> writes{0};
};

// A request submitted from the test thread; wait() for its result.
struct Pending {
  IoRequest req;
  std::promise<Errc> p;
  std::future<Errc> f = p.get_future();
  std::vector<std::byte> buf;
  bool ready(int ms = 0) {
    return f.wait_for(std::chrono::milliseconds(ms)) == std::future_status::ready;
  }
  Errc wait() {
    if (!ready(20000)) {
      ADD_FAILURE() << "I/O did not complete";
      std::abort();
    }
    return f.get();
  }
};

std::unique_ptr<Pending> start_io(ReactorThread& rt, BlockDevice& dev, IoOp op, uint64_t off,
                                  uint64_t len, uint8_t fill = 0, bool epoch = false,
                                  uint64_t epoch_id = 0, uint64_t stream = 7) {
  auto p = std::make_unique<Pending>();
  p->buf.assign(len, std::byte{fill});
  p->req.op = op;
  p->req.offset_bytes = off;
  p->req.length_bytes = len;
  p->req.data = p->buf.data();
  p->req.epoch_write = epoch;
  p->req.epoch_id = epoch_id;
  p->req.epoch_stream = stream;
  p->req.owner = p.get();
  p->req.on_complete = [](IoRequest& r) noexcept {
    static_cast<Pending*>(r.owner)->p.set_value(r.result);
  };
  Pending* raw = p.get();
  rt.reactor().post([&dev, raw] { dev.submit(raw->req); });
  return p;
}

Errc epoch_write(ReactorThread& rt, BlockDevice& d, uint64_t block, uint8_t fill) {
  return start_io(rt, d, IoOp::write, block * kBs, kBs, fill, true)->wait();
}
struct RedoFixture : ::testing::Test {
  TempDir dir;
  std::string path = dir.file("vol.redo");
  std::unique_ptr<RamDevice> ram = RamDevice::create(4 << 20, 4096).value();
  SwitchDevice next{*ram};
  ReactorThread rt;

  RedoLogOptions options(uint64_t size = 4 << 20) {
    RedoLogOptions o;
    o.path = path;
    o.size_bytes = size;
    o.record_data_bytes_max = 16 * 1024;
    o.retry_ms_min = 2;
    o.retry_ms_max = 20;
    return o;
  }
  std::unique_ptr<RedoLogDevice> open_log(const RedoLogOptions& o) {
    auto r = RedoLogDevice::open(next, o);
    EXPECT_TRUE(r.ok()) << to_string(r.error());
    if (!r.ok()) return nullptr;
    auto d = std::move(r).value();
    std::promise<void> p;
    rt.reactor().post([&] { d->start([&p] { p.set_value(); }); });
    EXPECT_EQ(p.get_future().wait_for(std::chrono::seconds(20)), std::future_status::ready)
        << "recovery";
    return d;
  }
  void close_log(std::unique_ptr<RedoLogDevice>& d) {
    std::promise<void> p;
    rt.reactor().post([&] { d->shutdown([&p] { p.set_value(); }); });
    ASSERT_EQ(p.get_future().wait_for(std::chrono::seconds(20)), std::future_status::ready);
    rt.call([&] { d.reset(); });
  }
  Errc commit_epoch(RedoLogDevice& d, uint64_t id, uint64_t bytes, uint64_t stream = 7) {
    auto p = std::make_unique<Pending>();
    p->req.op = IoOp::flush;
    p->req.epoch_id = id;
    p->req.epoch_stream = stream;
    p->req.length_bytes = bytes;
    p->req.owner = p.get();
    p->req.on_complete = [](IoRequest& r) noexcept {
      static_cast<Pending*>(r.owner)->p.set_value(r.result);
    };
    Pending* raw = p.get();
    rt.reactor().post([&d, raw] { d.submit(raw->req); });
    return p->wait();
  }
  uint8_t image_byte(uint64_t block) {
    std::vector<std::byte> b(kBs);
    auto p = start_io(rt, *ram, IoOp::read, block * kBs, kBs);
    EXPECT_EQ(p->wait(), Errc::ok);
    return uint8_t(p->buf[100]);
  }
  // Waits (bounded) until the device has applied `n` epochs.
  bool wait_applied(RedoLogDevice& d, uint64_t n) {
    for (int i = 0; i < 5000; ++i) {
      uint64_t a = 0;
      rt.call([&] { a = d.counters().epochs_applied; });
      if (a >= n) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return false;
  }
  // File offset of the first record header of `type` (FORMAT.md: magic "FRDO", type at 6).
  uint64_t find_record(uint16_t type, int nth = 0) {
    std::ifstream f(path, std::ios::binary);
    std::vector<char> b(kBs);
    for (uint64_t off = 2 * kBs;; off += kBs) {
      f.seekg(off);
      if (!f.read(b.data(), kBs)) return 0;
      uint32_t magic;
      uint16_t t;
      std::memcpy(&magic, b.data(), 4);
      std::memcpy(&t, b.data() + 6, 2);
      if (magic == 0x4f445246u && t == type && nth-- == 0) return off;
    }
  }
  void flip_byte(uint64_t off) {
    std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
    f.seekg(off);
    char c;
    f.read(&c, 1);
    c ^= 0x5a;
    f.seekp(off);
    f.write(&c, 1);
  }
  // Writes blocks 0..n-1 with `fill` as one epoch and commits it while next refuses writes, then
  // "crashes": the epoch is committed in the log and not on next.
  void committed_then_crash(int n, uint8_t fill) {
    next.down = true;
    auto d = open_log(options());
    for (int b = 0; b < n; ++b) ASSERT_EQ(epoch_write(rt, *d, uint64_t(b), fill), Errc::ok);
    ASSERT_EQ(commit_epoch(*d, 10, uint64_t(n) * kBs), Errc::ok);
    close_log(d);
    next.down = false;
  }
};

TEST_F(RedoFixture, CommittedEpochIsAppliedAfterACrashBeforeApply) {
  committed_then_crash(3, 0xA1);
  EXPECT_EQ(image_byte(0), 0) << "next never got it before the crash";
  auto d = open_log(options());
  for (uint64_t b = 0; b < 3; ++b) EXPECT_EQ(image_byte(b), 0xA1) << "block " << b;
  uint64_t recovered = 0;
  rt.call([&] { recovered = d->counters().epochs_recovered; });
  EXPECT_EQ(recovered, 1u);
  close_log(d);
}

TEST_F(RedoFixture, EpochWithoutCommitMarkerIsDiscardedAtReplay) {
  next.down = true;
  auto d = open_log(options());
  for (uint64_t b = 0; b < 4; ++b) ASSERT_EQ(epoch_write(rt, *d, b, 0xB2), Errc::ok);
  close_log(d);  // crash before EPOCH_COMMIT
  next.down = false;
  d = open_log(options());
  for (uint64_t b = 0; b < 4; ++b)
    EXPECT_EQ(image_byte(b), 0) << "an uncommitted epoch must not reach the image";
  uint64_t discarded = 0;
  rt.call([&] { discarded = d->counters().records_discarded_at_open; });
  EXPECT_EQ(discarded, 4u);
  close_log(d);
}

TEST_F(RedoFixture, TornCommitRecordDiscardsTheWholeEpoch) {
  committed_then_crash(3, 0xC3);
  const uint64_t c = find_record(3);
  ASSERT_NE(c, 0u);
  flip_byte(c + 44);  // inside the CRC-covered header: as a torn write would leave it
  auto d = open_log(options());
  for (uint64_t b = 0; b < 3; ++b)
    EXPECT_EQ(image_byte(b), 0) << "block " << b << ": commit marker invalid";
  close_log(d);
}

TEST_F(RedoFixture, CorruptDataRecordBeforeTheCommitStopsReplayThere) {
  committed_then_crash(3, 0xD4);
  const uint64_t w = find_record(1, 1);  // the second write record
  ASSERT_NE(w, 0u);
  flip_byte(w + kBs + 10);  // its data: CRC mismatch
  auto d = open_log(options());
  for (uint64_t b = 0; b < 3; ++b)
    EXPECT_EQ(image_byte(b), 0) << "block " << b << ": the commit lies past a corrupt record";
  close_log(d);
}

TEST_F(RedoFixture, ReplayIsIdempotentWhenTheAppliedMarkIsLost) {
  // One epoch overwrites block 0 (0x11 then 0x22) and writes block 1: applied in log order.
  next.down = true;
  auto d = open_log(options());
  ASSERT_EQ(epoch_write(rt, *d, 0, 0x11), Errc::ok);
  ASSERT_EQ(epoch_write(rt, *d, 1, 0x33), Errc::ok);
  ASSERT_EQ(epoch_write(rt, *d, 0, 0x22), Errc::ok);
  ASSERT_EQ(commit_epoch(*d, 10, 3 * kBs), Errc::ok);
  close_log(d);
  next.down = false;
  const std::string saved = path + ".copy";
  ASSERT_EQ(std::system(("cp " + path + " " + saved).c_str()), 0);
  d = open_log(options());
  close_log(d);
  EXPECT_EQ(image_byte(0), 0x22);
  EXPECT_EQ(image_byte(1), 0x33);
  // A crash after the apply, before its superblock: the same log again over the applied image.
  ASSERT_EQ(std::system(("cp " + saved + " " + path).c_str()), 0);
  d = open_log(options());
  EXPECT_EQ(image_byte(0), 0x22);
  EXPECT_EQ(image_byte(1), 0x33);
  close_log(d);
  // And once marked applied, a third open applies nothing.
  const uint64_t writes_before = next.writes;
  d = open_log(options());
  EXPECT_EQ(next.writes.load(), writes_before);
  close_log(d);
}

TEST_F(RedoFixture, ReadOfACommittedEpochWaitsUntilItIsApplied) {
  next.hold = true;
  auto d = open_log(options());
  ASSERT_EQ(epoch_write(rt, *d, 5, 0x5E), Errc::ok);
  ASSERT_EQ(commit_epoch(*d, 10, kBs), Errc::ok)
      << "committed once durable in the log, before the apply";
  auto r = start_io(rt, *d, IoOp::read, 5 * kBs, kBs);
  EXPECT_FALSE(r->ready(50)) << "a read must not see the image before the epoch is applied";
  auto other = start_io(rt, *d, IoOp::read, 100 * kBs, kBs);
  EXPECT_EQ(other->wait(), Errc::ok) << "a range the epoch does not touch is read at once";
  rt.call([&] { next.release(); });
  ASSERT_EQ(r->wait(), Errc::ok);
  EXPECT_EQ(uint8_t(r->buf[100]), 0x5E);
  close_log(d);
}

TEST_F(RedoFixture, EpochWritesDoNotReachTheImageBeforeTheirCommit) {
  auto d = open_log(options());
  ASSERT_EQ(epoch_write(rt, *d, 2, 0x77), Errc::ok);
  EXPECT_EQ(image_byte(2), 0);
  EXPECT_EQ(next.writes.load(), 0u);
  ASSERT_EQ(commit_epoch(*d, 10, kBs), Errc::ok);
  ASSERT_TRUE(wait_applied(*d, 1));
  EXPECT_EQ(image_byte(2), 0x77);
  close_log(d);
}

TEST_F(RedoFixture, ReshippedEpochAlreadyContainedIsDroppedAndAcknowledged) {
  auto d = open_log(options());
  ASSERT_EQ(epoch_write(rt, *d, 0, 0x01), Errc::ok);
  ASSERT_EQ(commit_epoch(*d, 20, kBs), Errc::ok);
  ASSERT_TRUE(wait_applied(*d, 1));
  // The cloud edge restarted before its checkpoint and cut a smaller epoch (id 15 <= 20).
  ASSERT_EQ(epoch_write(rt, *d, 0, 0x09), Errc::ok);
  EXPECT_EQ(commit_epoch(*d, 15, kBs), Errc::ok);
  uint64_t dropped = 0;
  rt.call([&] { dropped = d->counters().epochs_dropped; });
  EXPECT_EQ(dropped, 1u);
  EXPECT_EQ(image_byte(0), 0x01) << "an older state must not be applied over a newer one";
  // Another stream (a new journal) starts its own numbering.
  ASSERT_EQ(epoch_write(rt, *d, 0, 0x02), Errc::ok);
  EXPECT_EQ(commit_epoch(*d, 1, kBs, 8), Errc::ok);
  ASSERT_TRUE(wait_applied(*d, 2));
  EXPECT_EQ(image_byte(0), 0x02);
  close_log(d);
}

TEST_F(RedoFixture, IncompleteEpochIsRefusedAndDiscarded) {
  auto d = open_log(options());
  ASSERT_EQ(epoch_write(rt, *d, 0, 0x44), Errc::ok);
  ASSERT_EQ(epoch_write(rt, *d, 1, 0x44), Errc::ok);
  EXPECT_EQ(commit_epoch(*d, 10, 3 * kBs), Errc::io_error) << "a write of the epoch never arrived";
  EXPECT_EQ(image_byte(0), 0);
  for (uint64_t b = 0; b < 3; ++b) ASSERT_EQ(epoch_write(rt, *d, b, 0x45), Errc::ok);
  ASSERT_EQ(commit_epoch(*d, 10, 3 * kBs), Errc::ok) << "shipped again whole";
  ASSERT_TRUE(wait_applied(*d, 1));
  for (uint64_t b = 0; b < 3; ++b) EXPECT_EQ(image_byte(b), 0x45);
  close_log(d);
}

TEST_F(RedoFixture, FullLogBackPressuresWritesUntilTheApplyFreesSpace) {
  next.hold = true;  // the first epoch's apply stalls: its records keep their space
  auto d = open_log(options(128 * 1024));  // ring: 30 blocks; a 4 KiB record takes 2
  for (uint64_t b = 0; b < 8; ++b) ASSERT_EQ(epoch_write(rt, *d, b, 0x61), Errc::ok);
  ASSERT_EQ(commit_epoch(*d, 10, 8 * kBs), Errc::ok);
  std::vector<std::unique_ptr<Pending>> w;
  for (uint64_t b = 0; b < 8; ++b)
    w.push_back(start_io(rt, *d, IoOp::write, (20 + b) * kBs, kBs, 0x62, true));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  int done = 0;
  for (auto& p : w) done += p->ready() ? 1 : 0;
  EXPECT_LT(done, 8) << "the log is full: some writes must wait";
  EXPECT_GT(done, 0);
  for (auto& p : w)
    if (p->ready()) {
      EXPECT_EQ(p->f.get(), Errc::ok) << "waiting, never failing";
    }
  rt.call([&] { next.release(); });
  for (auto& p : w)
    if (p->f.valid()) {
      EXPECT_EQ(p->wait(), Errc::ok);
    }
  ASSERT_EQ(commit_epoch(*d, 11, 8 * kBs), Errc::ok);
  ASSERT_TRUE(wait_applied(*d, 2));
  EXPECT_EQ(image_byte(27), 0x62);
  uint64_t waited = 0;
  rt.call([&] { waited = d->counters().waited_for_space; });
  EXPECT_GT(waited, 0u);
  close_log(d);
}

TEST_F(RedoFixture, DrainWaitsUntilTheCommittedEpochIsOnTheImage) {
  // A clean stop of the dc-edge drains first: stopping mid-apply left the image behind the
  // cloud edge's checkpoint until the next start (seen in dc_edge_epoch_crash_test).
  next.hold = true;
  auto d = open_log(options());
  ASSERT_EQ(epoch_write(rt, *d, 3, 0x3D), Errc::ok);
  ASSERT_EQ(commit_epoch(*d, 10, kBs), Errc::ok);
  auto drained = std::make_shared<std::promise<void>>();
  rt.call([&] { d->drain([drained] { drained->set_value(); }); });
  auto f = drained->get_future();
  EXPECT_NE(f.wait_for(std::chrono::milliseconds(50)), std::future_status::ready)
      << "the apply is held";
  rt.call([&] { next.release(); });
  ASSERT_EQ(f.wait_for(std::chrono::seconds(20)), std::future_status::ready);
  EXPECT_EQ(image_byte(3), 0x3D);
  close_log(d);
}

TEST_F(RedoFixture, AnyCorruptByteLeavesTheEpochAllOrNothing) {
  // A property over hostile disk bytes (a fuzz-like sweep that runs in the suite): whatever
  // byte of the log is damaged, open() never crashes and the image ends up with the whole
  // committed epoch or none of it.
  committed_then_crash(3, 0xE5);
  const std::string saved = path + ".copy";
  ASSERT_EQ(std::system(("cp " + path + " " + saved).c_str()), 0);
  const uint64_t end = find_record(3) + kBs;  // the used part: superblocks .. commit record
  std::mt19937_64 rnd(11);
  int applied = 0, refused = 0;
  for (int i = 0; i < 150; ++i) {
    ASSERT_EQ(std::system(("cp " + saved + " " + path).c_str()), 0);
    uint64_t off = rnd() % end;
    if (i % 3 == 0) off = (off % 64) + (rnd() % 4) * kBs;  // often in a header's fields
    flip_byte(off);
    ASSERT_EQ(start_io(rt, *ram, IoOp::write, 0, 3 * kBs)->wait(), Errc::ok);
    auto r = RedoLogDevice::open(next, options());
    if (!r.ok()) {
      ++refused;  // both superblocks unusable: refused, never reformatted over
      continue;
    }
    auto d = std::move(r).value();
    std::promise<void> p;
    rt.reactor().post([&] { d->start([&p] { p.set_value(); }); });
    ASSERT_EQ(p.get_future().wait_for(std::chrono::seconds(20)), std::future_status::ready);
    const uint8_t b0 = image_byte(0), b1 = image_byte(1), b2 = image_byte(2);
    EXPECT_TRUE((b0 == 0 && b1 == 0 && b2 == 0) || (b0 == 0xE5 && b1 == 0xE5 && b2 == 0xE5))
        << "byte " << off << " damaged: image blocks " << int(b0) << " " << int(b1) << " "
        << int(b2);
    applied += b0 == 0xE5;
    close_log(d);
  }
  EXPECT_GT(applied, 0) << "undamaged parts (e.g. header padding) must still replay";
  std::printf("applied %d, discarded %d, refused %d of 150\n", applied, 150 - applied - refused,
              refused);
}

}  // namespace
}  // namespace ferry::journal
