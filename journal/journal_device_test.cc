// JournalDevice tests, named after the failures they catch (LevelDB log_test style): crash
// safety by SIGKILL of a child process, torn and corrupt records at replay, reads before
// write-back, coalescing, next down, journal full, FLUSH, and a differential test against a model.
// Each test runs the device on a reactor thread (ReactorThread) and drives it from the test thread
// through posted functions; journals and "next" files live in a fresh temporary directory.
#include "journal/journal_device.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <future>
#include <map>
#include <random>
#include <thread>
#include <vector>

#include "datapath/file_device.h"
#include "datapath/ram_device.h"
#include "datapath/wan/frame.h"

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
  // Runs fn on the reactor thread and waits for it.
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
    char t[] = "/tmp/ferry-journal-XXXXXX";
    path = mkdtemp(t);
  }
  ~TempDir() { std::system(("rm -rf " + path).c_str()); }
  std::string file(const std::string& n) const { return path + "/" + n; }
};

// One request submitted from the test thread, waited for.
Errc sync_io(ReactorThread& rt, BlockDevice& dev, IoOp op, uint64_t off, uint64_t len, void* data) {
  struct S {
    IoRequest req;
    std::promise<Errc> done;
  } s;
  s.req.op = op;
  s.req.offset_bytes = off;
  s.req.length_bytes = len;
  s.req.data = static_cast<std::byte*>(data);
  s.req.owner = &s;
  s.req.on_complete = [](IoRequest& r) noexcept {
    static_cast<S*>(r.owner)->done.set_value(r.result);
  };
  auto f = s.done.get_future();
  rt.reactor().post([&] { dev.submit(s.req); });
  if (f.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
    ADD_FAILURE() << "I/O did not complete";
    std::abort();  // the request is still referenced by the device
  }
  return f.get();
}

bool drain(ReactorThread& rt, JournalDevice& j, int seconds = 20) {
  auto p = std::make_shared<std::promise<void>>();
  rt.reactor().post([&j, p] { j.drain([p] { p->set_value(); }); });
  return p->get_future().wait_for(std::chrono::seconds(seconds)) == std::future_status::ready;
}

// A block that names itself: sequence number, block index, filler from both, CRC32C.
void fill_block(std::byte* b, uint64_t seq, uint64_t block) {
  std::memcpy(b, &seq, 8);
  std::memcpy(b + 8, &block, 8);
  std::mt19937_64 g(seq * 1315423911u + block);
  for (size_t i = 16; i + 8 <= kBs - 8; i += 8) {
    uint64_t v = g();
    std::memcpy(b + i, &v, 8);
  }
  const uint32_t c = wan::crc32c({reinterpret_cast<const uint8_t*>(b), kBs - 4});
  std::memcpy(b + kBs - 4, &c, 4);
}
// Sequence number of a valid self-describing block at `block`; 0 for zeroes; -1 if corrupt.
int64_t block_seq(const std::byte* b, uint64_t block) {
  bool zero = true;
  for (size_t i = 0; i < kBs && zero; ++i) zero = b[i] == std::byte{0};
  if (zero) return 0;
  uint32_t c;
  std::memcpy(&c, b + kBs - 4, 4);
  if (wan::crc32c({reinterpret_cast<const uint8_t*>(b), kBs - 4}) != c) return -1;
  uint64_t seq, blk;
  std::memcpy(&seq, b, 8);
  std::memcpy(&blk, b + 8, 8);
  return blk == block ? int64_t(seq) : -1;
}

// Next device with switches: `down` fails writes and flushes (the WAN is cut); `hold` parks
// writes until release(). Counts what reaches it. Reactor thread only.
class SwitchDevice final : public BlockDevice {
 public:
  explicit SwitchDevice(BlockDevice& next) : next_(next) {}
  Geometry geometry() const noexcept override { return next_.geometry(); }
  std::string_view describe() const noexcept override { return "switch"; }
  void submit(IoRequest& r) noexcept override {
    if (r.op == IoOp::write) {
      ++writes;
      write_bytes += r.length_bytes;
    }
    if (r.op == IoOp::flush) ++flushes;
    if (r.op == IoOp::write || r.op == IoOp::flush)
      log.push_back({r.op, r.offset_bytes,
                     r.op == IoOp::write ? block_seq(r.data, r.offset_bytes / kBs) : 0,
                     r.epoch_write, r.epoch_id, r.epoch_stream, r.length_bytes});
    if (down && (r.op == IoOp::write || r.op == IoOp::flush)) return r.complete(Errc::closed);
    if (r.op == IoOp::flush && r.epoch_id != 0 && fail_commits > 0) {
      --fail_commits;
      log.back().failed = true;
      return r.complete(Errc::io_error);
    }
    if (hold && r.op == IoOp::write) {
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
  std::atomic<uint64_t> writes{0}, write_bytes{0}, flushes{0};
  // What reached this device, in order (reactor thread; read it with rt.call).
  struct Event {
    IoOp op;
    uint64_t offset;
    int64_t seq;  // write: block_seq of its first block
    bool epoch_write;
    uint64_t epoch_id, epoch_stream, length;
    bool failed = false;
  };
  std::vector<Event> log;
  int fail_commits = 0;  // the next N epoch commits fail
};

JournalOptions small_options(const std::string& path, uint64_t size = 8 << 20) {
  JournalOptions o;
  o.path = path;
  o.size_bytes = size;
  o.retry_ms_min = 2;
  o.retry_ms_max = 20;
  o.epoch_ms_max = 20;  // tests write without FLUSH too: close such epochs soon
  return o;
}

std::unique_ptr<JournalDevice> open_journal(BlockDevice& next, const JournalOptions& o) {
  auto r = JournalDevice::open(next, o);
  EXPECT_TRUE(r.ok()) << to_string(r.error());
  if (!r.ok()) return nullptr;
  return std::move(r).value();
}

// Shuts a journal device down and destroys it on the reactor thread (its timers belong to it).
void close_journal(ReactorThread& rt, std::unique_ptr<JournalDevice>& j) {
  auto p = std::make_shared<std::promise<void>>();
  rt.reactor().post([&j, p] { j->shutdown([p] { p->set_value(); }); });
  if (p->get_future().wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
    ADD_FAILURE() << "shutdown did not finish";
    std::abort();
  }
  rt.call([&] { j.reset(); });
}

// ---------------------------------------------------------------- crash safety

// Child: writes self-describing blocks through a journal over the file `next_path`, QD 8, never two
// in flight to one block, and reports each acknowledged (seq, block) through `fd`. Never returns.
[[noreturn]] void crash_child(const std::string& jpath, const std::string& next_path,
                              uint64_t seq_base, uint64_t blocks, int fd) {
  auto nf = FileDevice::open(next_path, {false, false, 4096});
  if (!nf.ok()) _exit(10);
  JournalOptions o = small_options(jpath, 4 << 20);  // small: the ring wraps and fills
  auto jr = JournalDevice::open(*nf.value(), o);
  if (!jr.ok()) _exit(11);
  JournalDevice& j = *jr.value();
  Reactor reactor(0, 64 << 20);
  if (!reactor.init(256).ok()) _exit(12);
  struct W {
    IoRequest req;
    alignas(4096) std::byte buf[kBs];
  };
  static W ws[8];
  static std::vector<bool> busy;
  busy.assign(blocks, false);
  static uint64_t seq;
  seq = seq_base;
  static std::mt19937_64 rng(seq_base ^ uint64_t(getpid()));
  static int out;
  out = fd;
  static JournalDevice* dev;
  dev = &j;
  static uint64_t nblocks;
  nblocks = blocks;
  struct Issue {
    static void one(W& w) noexcept {
      uint64_t b;
      do {
        b = rng() % nblocks;
      } while (busy[b]);
      busy[b] = true;
      const uint64_t s = ++seq;
      fill_block(w.buf, s, b);
      w.req = IoRequest{};
      w.req.op = IoOp::write;
      w.req.offset_bytes = b * kBs;
      w.req.length_bytes = kBs;
      w.req.data = w.buf;
      w.req.owner = &w;
      w.req.on_complete = [](IoRequest& r) noexcept {
        W& w = *static_cast<W*>(r.owner);
        if (r.result != Errc::ok) _exit(13);
        uint64_t rec[2];
        std::memcpy(&rec[0], w.buf, 8);
        rec[1] = r.offset_bytes / kBs;
        if (::write(out, rec, sizeof rec) != sizeof rec) _exit(14);
        busy[rec[1]] = false;
        one(w);
      };
      dev->submit(w.req);
    }
  };
  reactor.post([] {
    for (W& w : ws) Issue::one(w);
  });
  reactor.run();
  _exit(0);
}

TEST(JournalDevice, AcknowledgedWriteSurvivesKillDashNine) {
  TempDir dir;
  const std::string jpath = dir.file("vol.journal"), npath = dir.file("next.img");
  constexpr uint64_t kBlocks = 512;  // 2 MiB volume
  {
    int fd = ::open(npath.c_str(), O_RDWR | O_CREAT, 0600);
    ASSERT_EQ(ftruncate(fd, kBlocks * kBs), 0);
    ::close(fd);
  }
  std::map<uint64_t, uint64_t> acked;  // block -> highest acknowledged seq
  std::mt19937 rng(std::random_device{}());
  uint64_t total_acked = 0;
  for (int round = 0; round < 4; ++round) {
    int p[2];
    ASSERT_EQ(pipe(p), 0);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(p[0]);
      crash_child(jpath, npath, uint64_t(round + 1) << 40, kBlocks, p[1]);
    }
    ::close(p[1]);
    std::this_thread::sleep_for(std::chrono::milliseconds(100 + rng() % 400));  // a random moment
    ASSERT_EQ(kill(pid, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status)) << "child exited by itself with " << WEXITSTATUS(status);
    uint64_t rec[2];
    uint64_t n = 0;
    while (::read(p[0], rec, sizeof rec) == sizeof rec) {
      acked[rec[1]] = std::max(acked[rec[1]], rec[0]);
      ++n;
    }
    ::close(p[0]);
    total_acked += n;
    ASSERT_GT(n, 0u) << "round " << round << ": nothing acknowledged before the kill";

    // Restart: replay, verify through the journal (reads before write-back), drain, verify next.
    auto nf = FileDevice::open(npath, {false, false, 4096});
    ASSERT_TRUE(nf.ok());
    ReactorThread rt;
    auto j = open_journal(*nf.value(), small_options(jpath, 4 << 20));
    ASSERT_TRUE(j);
    std::vector<std::byte> buf(kBs);
    for (int pass = 0; pass < 2; ++pass) {
      BlockDevice& dev = pass == 0 ? static_cast<BlockDevice&>(*j) : *nf.value();
      for (const auto& [block, seq] : acked) {
        ASSERT_EQ(sync_io(rt, dev, IoOp::read, block * kBs, kBs, buf.data()), Errc::ok);
        const int64_t got = block_seq(buf.data(), block);
        ASSERT_GE(got, int64_t(seq))
            << "round " << round << (pass ? " on next" : " via journal") << ": block " << block
            << " lost acknowledged write " << seq << " (found " << got << ")";
      }
      if (pass == 0) {
        ASSERT_TRUE(drain(rt, *j));
      }
    }
    close_journal(rt, j);
  }
  std::printf("acknowledged writes across 4 kills: %llu, blocks verified: %zu, lost: 0\n",
              static_cast<unsigned long long>(total_acked), acked.size());
}

// ---------------------------------------------------------------- replay

struct ReplayFixture : ::testing::Test {
  TempDir dir;
  std::string jpath = dir.file("vol.journal");
  std::unique_ptr<RamDevice> ram = RamDevice::create(4 << 20, 4096).value();
  ReactorThread rt;
  JournalOptions opts = [this] {
    JournalOptions o = small_options(jpath);
    o.write_back = false;  // records stay in the journal
    return o;
  }();
  std::vector<std::byte> block(uint64_t seq, uint64_t b) {
    std::vector<std::byte> v(kBs);
    fill_block(v.data(), seq, b);
    return v;
  }
  // Writes blocks (seq i+1 to block blocks[i]) in a fresh journal process lifetime.
  void write_session(const std::vector<std::pair<uint64_t, uint64_t>>& writes) {
    auto j = open_journal(*ram, opts);
    ASSERT_TRUE(j);
    for (auto [seq, b] : writes) {
      auto v = block(seq, b);
      ASSERT_EQ(sync_io(rt, *j, IoOp::write, b * kBs, kBs, v.data()), Errc::ok);
    }
    close_journal(rt, j);
  }
  // Journal file offset of the n-th record (1-based) of a journal of 4 KiB writes, first lap.
  static uint64_t record_pos(uint64_t n) { return 2 * kBs + (n - 1) * 2 * kBs; }
  void scribble(uint64_t off, size_t len) {
    int fd = ::open(jpath.c_str(), O_RDWR);
    std::vector<char> junk(len, 'X');
    ASSERT_EQ(pwrite(fd, junk.data(), len, off_t(off)), ssize_t(len));
    ::close(fd);
  }
  int64_t read_seq(JournalDevice& j, uint64_t b) {
    std::vector<std::byte> v(kBs);
    EXPECT_EQ(sync_io(rt, j, IoOp::read, b * kBs, kBs, v.data()), Errc::ok);
    return block_seq(v.data(), b);
  }
};

TEST_F(ReplayFixture, TornLastRecordIsIgnoredAndEarlierOnesReplayed) {
  write_session({{1, 10}, {2, 11}, {3, 12}});
  scribble(record_pos(3) + kBs + 2048, 2048);  // the last record's data half written
  auto j = open_journal(*ram, opts);
  ASSERT_TRUE(j);
  EXPECT_EQ(j->counters().replayed_records, 2u);
  EXPECT_EQ(read_seq(*j, 10), 1);
  EXPECT_EQ(read_seq(*j, 11), 2);
  EXPECT_EQ(read_seq(*j, 12), 0);  // never there
  // The journal goes on where the torn record was; the next replay sees the new record.
  auto v = block(4, 12);
  ASSERT_EQ(sync_io(rt, *j, IoOp::write, 12 * kBs, kBs, v.data()), Errc::ok);
  close_journal(rt, j);
  j = open_journal(*ram, opts);
  EXPECT_EQ(j->counters().replayed_records, 3u);
  EXPECT_EQ(read_seq(*j, 12), 4);
  close_journal(rt, j);
}

// A record in the middle whose CRC fails (bit rot, a stray write) ends the replay there: the
// records after it cannot be trusted to be in sequence, so they are not applied (and are lost:
// journal/DESIGN.md, "Limits"). The device opens; it does not apply garbage.
TEST_F(ReplayFixture, CorruptRecordInTheMiddleStopsReplayThere) {
  write_session({{1, 20}, {2, 21}, {3, 22}, {4, 23}, {5, 24}});
  scribble(record_pos(3) + kBs + 100, 1);
  auto j = open_journal(*ram, opts);
  ASSERT_TRUE(j);
  EXPECT_EQ(j->counters().replayed_records, 2u);
  EXPECT_EQ(read_seq(*j, 21), 2);
  EXPECT_EQ(read_seq(*j, 22), 0);
  EXPECT_EQ(read_seq(*j, 24), 0);
  close_journal(rt, j);
}

// Boot 1 wrote records 1..3, record 2 was torn, record 3 reached the disk (a group commit
// written out of order). Boot 2 replays record 1 only and writes a new record 2 of the same size,
// which puts the stale record 3 exactly where the next record is expected. Boot 3 must not
// apply it over the acknowledged new record 2 (the boot generation catches it).
TEST_F(ReplayFixture, StaleRecordOfAnEarlierBootAfterATornOneIsNotReplayed) {
  write_session({{1, 30}, {2, 31}, {3, 32}});
  scribble(record_pos(2) + kBs, 512);
  {
    auto j = open_journal(*ram, opts);
    ASSERT_TRUE(j);
    EXPECT_EQ(j->counters().replayed_records, 1u);
    auto v = block(7, 32);  // the acknowledged write to the block stale record 3 also wrote
    ASSERT_EQ(sync_io(rt, *j, IoOp::write, 32 * kBs, kBs, v.data()), Errc::ok);
    close_journal(rt, j);
  }
  auto j = open_journal(*ram, opts);
  ASSERT_TRUE(j);
  EXPECT_EQ(j->counters().replayed_records, 2u);
  EXPECT_EQ(read_seq(*j, 32), 7);
  EXPECT_EQ(read_seq(*j, 31), 0);
  close_journal(rt, j);
}

TEST_F(ReplayFixture, FlushMeansDurableInTheJournal) {
  SwitchDevice next(*ram);
  auto j = open_journal(next, opts);
  ASSERT_TRUE(j);
  // Eight writes and a FLUSH submitted together: the FLUSH completes after all eight, without
  // touching next.
  struct S {
    IoRequest req;
    std::vector<std::byte> buf;
  };
  std::vector<S> ws(8);
  std::atomic<int> done{0};
  std::atomic<bool> flush_after_all{false}, flushed{false};
  IoRequest flush;
  rt.call([&] {
    for (size_t i = 0; i < ws.size(); ++i) {
      ws[i].buf = block(100 + i, 40 + i);
      ws[i].req.op = IoOp::write;
      ws[i].req.offset_bytes = (40 + i) * kBs;
      ws[i].req.length_bytes = kBs;
      ws[i].req.data = ws[i].buf.data();
      ws[i].req.owner = &done;
      ws[i].req.on_complete = [](IoRequest& r) noexcept {
        ++*static_cast<std::atomic<int>*>(r.owner);
      };
      j->submit(ws[i].req);
    }
    flush.op = IoOp::flush;
    flush.owner = this;
    static std::atomic<int>* d;
    static std::atomic<bool>*fa, *fl;
    d = &done;
    fa = &flush_after_all;
    fl = &flushed;
    flush.on_complete = [](IoRequest& r) noexcept {
      fa->store(r.result == Errc::ok && d->load() == 8);
      fl->store(true);
    };
    j->submit(flush);
  });
  for (int i = 0; i < 2000 && !flushed; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_TRUE(flushed);
  EXPECT_TRUE(flush_after_all);
  EXPECT_EQ(next.flushes.load(), 0u);
  EXPECT_EQ(next.writes.load(), 0u);
  close_journal(rt, j);
  // "Crash" (nothing was written back) and reopen: all eight are there.
  j = open_journal(*ram, opts);
  for (uint64_t i = 0; i < 8; ++i) EXPECT_EQ(read_seq(*j, 40 + i), int64_t(100 + i));
  close_journal(rt, j);
}

// ---------------------------------------------------------------- reads, write-back

struct LiveFixture : ::testing::Test {
  TempDir dir;
  std::string jpath = dir.file("vol.journal");
  std::unique_ptr<RamDevice> ram = RamDevice::create(4 << 20, 4096).value();
  SwitchDevice next{*ram};
  ReactorThread rt;
};

TEST_F(LiveFixture, ReadsSeeTheLatestWriteBeforeWriteBack) {
  // next holds every write-back write: reads must come from the journal, merged with next.
  std::vector<std::byte> base(64 << 10);
  for (size_t i = 0; i < base.size(); ++i) base[i] = std::byte(i * 13 + 1);
  ASSERT_EQ(sync_io(rt, *ram, IoOp::write, 0, base.size(), base.data()), Errc::ok);
  rt.call([&] { next.hold = true; });
  auto j = open_journal(next, small_options(jpath));
  std::vector<std::byte> a(8192, std::byte{0xaa}), b(4096, std::byte{0xbb});
  ASSERT_EQ(sync_io(rt, *j, IoOp::write, 8192, a.size(), a.data()), Errc::ok);   // [8K, 16K) = aa
  ASSERT_EQ(sync_io(rt, *j, IoOp::write, 12288, b.size(), b.data()), Errc::ok);  // [12K, 16K) = bb
  ASSERT_EQ(sync_io(rt, *j, IoOp::write, 32768, b.size(), b.data()), Errc::ok);  // [32K, 36K) = bb
  std::vector<std::byte> want = base;
  std::memcpy(want.data() + 8192, a.data(), a.size());
  std::memcpy(want.data() + 12288, b.data(), b.size());
  std::memcpy(want.data() + 32768, b.data(), b.size());
  std::vector<std::byte> got(base.size());
  ASSERT_EQ(sync_io(rt, *j, IoOp::read, 0, got.size(), got.data()), Errc::ok);
  EXPECT_TRUE(got == want);
  EXPECT_GE(j->counters().reads_from_journal, 3u);
  rt.call([&] { next.release(); });
  ASSERT_TRUE(drain(rt, *j));
  ASSERT_EQ(sync_io(rt, *ram, IoOp::read, 0, got.size(), got.data()), Errc::ok);
  EXPECT_TRUE(got == want);
  EXPECT_EQ(j->state().dirty_bytes, 0u);
  close_journal(rt, j);
}

TEST_F(LiveFixture, OverwritesAreCoalescedOnWriteBack) {
  rt.call([&] { next.hold = true; });
  auto j = open_journal(next, small_options(jpath));
  std::vector<std::byte> v(kBs);
  for (uint64_t s = 1; s <= 20; ++s) {
    fill_block(v.data(), s, 7);
    ASSERT_EQ(sync_io(rt, *j, IoOp::write, 7 * kBs, kBs, v.data()), Errc::ok);
  }
  rt.call([&] { next.release(); });
  ASSERT_TRUE(drain(rt, *j));
  EXPECT_LE(next.writes.load(), 2u) << "20 overwrites of one block while the first was in flight";
  EXPECT_GE(j->counters().bytes_superseded, 18 * kBs);
  ASSERT_EQ(sync_io(rt, *ram, IoOp::read, 7 * kBs, kBs, v.data()), Errc::ok);
  EXPECT_EQ(block_seq(v.data(), 7), 20);
  close_journal(rt, j);
}

TEST_F(LiveFixture, NextDeviceDownThenUpLosesNothing) {
  next.down = true;
  auto j = open_journal(next, small_options(jpath));
  std::vector<std::byte> v(kBs);
  for (uint64_t b = 0; b < 100; ++b) {
    fill_block(v.data(), b + 1, b);
    ASSERT_EQ(sync_io(rt, *j, IoOp::write, b * kBs, kBs, v.data()), Errc::ok)
        << "acknowledged while next is down";
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  uint64_t errors = 0;
  rt.call([&] { errors = j->counters().next_errors; });
  EXPECT_GT(errors, 0u);
  for (uint64_t b = 0; b < 100; b += 17) {
    ASSERT_EQ(sync_io(rt, *j, IoOp::read, b * kBs, kBs, v.data()), Errc::ok);
    EXPECT_EQ(block_seq(v.data(), b), int64_t(b + 1));
  }
  next.down = false;
  ASSERT_TRUE(drain(rt, *j));
  for (uint64_t b = 0; b < 100; ++b) {
    ASSERT_EQ(sync_io(rt, *ram, IoOp::read, b * kBs, kBs, v.data()), Errc::ok);
    EXPECT_EQ(block_seq(v.data(), b), int64_t(b + 1)) << "block " << b;
  }
  close_journal(rt, j);
}

TEST_F(LiveFixture, JournalFullSlowsWritersAndNeverFailsThem) {
  rt.call([&] { next.hold = true; });
  auto j = open_journal(next, small_options(jpath, 256 << 10));  // 62 ring blocks: ~30 records
  struct S {
    IoRequest req;
    std::vector<std::byte> buf;
  };
  constexpr int kWrites = 100;
  std::vector<S> ws(kWrites);
  std::atomic<int> ok{0}, failed{0};
  static std::atomic<int>*okp, *failp;
  okp = &ok;
  failp = &failed;
  rt.call([&] {
    for (int i = 0; i < kWrites; ++i) {
      ws[i].buf.resize(kBs);
      fill_block(ws[i].buf.data(), uint64_t(i) + 1, uint64_t(i));
      ws[i].req.op = IoOp::write;
      ws[i].req.offset_bytes = uint64_t(i) * kBs;
      ws[i].req.length_bytes = kBs;
      ws[i].req.data = ws[i].buf.data();
      ws[i].req.on_complete = [](IoRequest& r) noexcept {
        ++*(r.result == Errc::ok ? okp : failp);
      };
      j->submit(ws[i].req);
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_LT(ok.load(), kWrites) << "the journal cannot hold 100 records";
  EXPECT_GT(ok.load(), 0);
  EXPECT_EQ(failed.load(), 0);
  uint64_t waited = 0;
  rt.call([&] { waited = j->counters().waited_for_space; });
  EXPECT_GT(waited, 0u);
  rt.call([&] { next.release(); });
  ASSERT_TRUE(drain(rt, *j));
  EXPECT_EQ(ok.load(), kWrites);
  EXPECT_EQ(failed.load(), 0);
  std::vector<std::byte> v(kBs);
  for (int i = 0; i < kWrites; ++i) {
    ASSERT_EQ(sync_io(rt, *ram, IoOp::read, uint64_t(i) * kBs, kBs, v.data()), Errc::ok);
    EXPECT_EQ(block_seq(v.data(), uint64_t(i)), i + 1);
  }
  close_journal(rt, j);
}

// Random writes (several sizes, overlapping), reads, flushes, discards and reopenings against a
// byte-array model, over a small journal (the ring wraps, fills and waits) and a next that goes
// down now and then. Every read must equal the model; after the drain, next must equal it.
TEST_F(LiveFixture, DifferentialRandomAgainstAModel) {
  const uint64_t vol = ram->geometry().size_bytes();
  std::vector<std::byte> model(vol, std::byte{0});
  std::mt19937_64 rng(12345);
  auto opts = small_options(jpath, 512 << 10);
  auto j = open_journal(next, opts);
  std::vector<std::byte> buf(256 << 10), got(256 << 10);
  for (int step = 0; step < 3000; ++step) {
    const int what = int(rng() % 100);
    const uint64_t len = kBs * (1 + rng() % (rng() % 4 == 0 ? 64 : 4));
    const uint64_t off = (rng() % ((vol - len) / kBs + 1)) * kBs;
    if (what < 50) {
      if (next.down) {
        // Full and next down, a write rightly waits for next: bring it back before that.
        uint64_t free_bytes = 0;
        rt.call([&] { free_bytes = j->state().journal_bytes_free; });
        if (free_bytes < 2 * len + (128 << 10)) next.down = false;
      }
      for (uint64_t i = 0; i < len; ++i) buf[i] = std::byte(rng());
      ASSERT_EQ(sync_io(rt, *j, IoOp::write, off, len, buf.data()), Errc::ok);
      std::memcpy(model.data() + off, buf.data(), len);
    } else if (what < 85) {
      ASSERT_EQ(sync_io(rt, *j, IoOp::read, off, len, got.data()), Errc::ok);
      ASSERT_EQ(std::memcmp(got.data(), model.data() + off, len), 0)
          << "step " << step << " read " << off << "+" << len;
    } else if (what < 90) {
      ASSERT_EQ(sync_io(rt, *j, IoOp::flush, 0, 0, nullptr), Errc::ok);
    } else if (what < 92) {
      next.down = false;  // a barrier waits for next (it never fails while next may come back)
      ASSERT_EQ(sync_io(rt, *j, IoOp::write_zeroes, off, len, nullptr), Errc::ok);
      std::memset(model.data() + off, 0, len);
    } else if (what < 96) {
      next.down = !next.down;
    } else if (what < 98) {
      close_journal(rt, j);  // a clean restart without drain: replay must rebuild the same view
      j = open_journal(next, opts);
      ASSERT_TRUE(j);
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  next.down = false;
  ASSERT_TRUE(drain(rt, *j));
  std::vector<std::byte> all(vol);
  ASSERT_EQ(sync_io(rt, *ram, IoOp::read, 0, vol, all.data()), Errc::ok);
  EXPECT_TRUE(all == model);
  const JournalCounters c = j->counters();
  EXPECT_GT(c.group_commits, 0u);
  std::printf("%s", j->stats_text("model").c_str());
  close_journal(rt, j);
}

// ---------------------------------------------------------------- epochs

namespace {
Errc flush_io(ReactorThread& rt, BlockDevice& dev) {
  return sync_io(rt, dev, IoOp::flush, 0, 0, nullptr);
}
}  // namespace

TEST_F(LiveFixture, EpochClosesAtTheInitiatorsFlushAndCommitsEveryWriteBeforeIt) {
  JournalOptions o = small_options(jpath);
  o.epoch_ms_max = 60000;  // only the FLUSH (or the drain) may close an epoch here
  auto j = open_journal(next, o);
  std::vector<std::byte> v(kBs);
  for (uint64_t b = 0; b < 3; ++b) {
    fill_block(v.data(), 10 + b, b);
    ASSERT_EQ(sync_io(rt, *j, IoOp::write, b * kBs, kBs, v.data()), Errc::ok);
  }
  ASSERT_EQ(flush_io(rt, *j), Errc::ok);
  std::vector<SwitchDevice::Event> log;
  for (int i = 0; i < 2000; ++i) {
    rt.call([&] { log = next.log; });
    if (!log.empty() && log.back().epoch_id != 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_EQ(log.size(), 4u) << "three writes, then the commit";
  for (int i = 0; i < 3; ++i)
    EXPECT_TRUE(log[size_t(i)].epoch_write) << "write-back writes belong to the epoch";
  EXPECT_EQ(log[3].op, IoOp::flush);
  EXPECT_EQ(log[3].epoch_id, 3u) << "epoch id = last record of the epoch";
  EXPECT_EQ(log[3].length, 3 * kBs) << "the commit names the epoch's bytes";
  EXPECT_NE(log[3].epoch_stream, 0u);
  uint64_t at_boundary = 0;
  rt.call([&] { at_boundary = j->counters().epochs_at_boundary; });
  EXPECT_EQ(at_boundary, 1u);
  close_journal(rt, j);
}

TEST_F(LiveFixture, OverwriteInALaterEpochIsNotCoalescedIntoAnEarlierOne) {
  // Block 0 written (seq 1), FLUSH, overwritten (seq 2), FLUSH: next must receive seq 1 and its
  // commit before seq 2. Coalescing across the boundary would leave next, after the first commit,
  // in a state the initiator never had (its block 1 of round 1 without block 0 of round 1).
  JournalOptions o = small_options(jpath);
  o.epoch_ms_max = 60000;
  next.hold = true;  // nothing reaches next until both rounds are journaled
  auto j = open_journal(next, o);
  std::vector<std::byte> v(kBs);
  fill_block(v.data(), 1, 0);
  ASSERT_EQ(sync_io(rt, *j, IoOp::write, 0, kBs, v.data()), Errc::ok);
  fill_block(v.data(), 1, 1);
  ASSERT_EQ(sync_io(rt, *j, IoOp::write, kBs, kBs, v.data()), Errc::ok);
  ASSERT_EQ(flush_io(rt, *j), Errc::ok);
  fill_block(v.data(), 2, 0);
  ASSERT_EQ(sync_io(rt, *j, IoOp::write, 0, kBs, v.data()), Errc::ok);
  ASSERT_EQ(flush_io(rt, *j), Errc::ok);
  rt.call([&] { next.release(); });
  ASSERT_TRUE(drain(rt, *j));
  std::vector<SwitchDevice::Event> log;
  rt.call([&] { log = next.log; });
  ASSERT_EQ(log.size(), 5u);
  EXPECT_EQ(log[0].seq + log[1].seq, 2) << "epoch 1: both round-1 blocks";
  EXPECT_EQ(log[2].epoch_id, 2u);
  EXPECT_EQ(log[3].seq, 2);
  EXPECT_EQ(log[3].offset, 0u);
  EXPECT_EQ(log[4].epoch_id, 3u);
  ASSERT_EQ(sync_io(rt, *ram, IoOp::read, 0, kBs, v.data()), Errc::ok);
  EXPECT_EQ(block_seq(v.data(), 0), 2);
  close_journal(rt, j);
}

TEST_F(LiveFixture, OverwritesWithinOneEpochAreCoalesced) {
  JournalOptions o = small_options(jpath);
  o.epoch_ms_max = 60000;
  next.hold = true;
  auto j = open_journal(next, o);
  std::vector<std::byte> v(kBs);
  for (uint64_t s = 1; s <= 5; ++s) {
    fill_block(v.data(), s, 4);
    ASSERT_EQ(sync_io(rt, *j, IoOp::write, 4 * kBs, kBs, v.data()), Errc::ok);
  }
  ASSERT_EQ(flush_io(rt, *j), Errc::ok);
  rt.call([&] { next.release(); });
  ASSERT_TRUE(drain(rt, *j));
  std::vector<SwitchDevice::Event> log;
  rt.call([&] { log = next.log; });
  ASSERT_EQ(log.size(), 2u) << "one write (the last of five) and the commit";
  EXPECT_EQ(log[0].seq, 5);
  EXPECT_EQ(log[1].length, kBs);
  close_journal(rt, j);
}

TEST_F(LiveFixture, FailedEpochCommitShipsTheWholeEpochAgain) {
  JournalOptions o = small_options(jpath);
  o.epoch_ms_max = 60000;
  next.fail_commits = 1;
  auto j = open_journal(next, o);
  std::vector<std::byte> v(kBs);
  for (uint64_t b = 0; b < 4; ++b) {
    fill_block(v.data(), 1, b);
    ASSERT_EQ(sync_io(rt, *j, IoOp::write, b * kBs, kBs, v.data()), Errc::ok);
  }
  ASSERT_EQ(flush_io(rt, *j), Errc::ok);
  ASSERT_TRUE(drain(rt, *j));
  std::vector<SwitchDevice::Event> log;
  uint64_t retries = 0, checkpoint = 0;
  rt.call([&] {
    log = next.log;
    retries = j->counters().epoch_retries;
    checkpoint = j->state().checkpoint_seq;
  });
  ASSERT_EQ(log.size(), 10u) << "4 writes, failed commit, the same 4 writes again, commit";
  EXPECT_TRUE(log[4].failed);
  for (size_t i = 5; i < 9; ++i) EXPECT_EQ(log[i].op, IoOp::write);
  EXPECT_EQ(log[9].epoch_id, 4u);
  EXPECT_FALSE(log[9].failed);
  EXPECT_EQ(retries, 1u);
  EXPECT_EQ(checkpoint, 4u) << "checkpointed only after the successful commit";
  close_journal(rt, j);
}

TEST_F(LiveFixture, EpochWithoutFlushIsCutAtItsSizeBound) {
  JournalOptions o = small_options(jpath);
  o.epoch_ms_max = 60000;
  o.epoch_bytes_max = 4 * kBs;
  auto j = open_journal(next, o);
  std::vector<std::byte> v(kBs);
  for (uint64_t b = 0; b < 9; ++b) {
    fill_block(v.data(), b + 1, b);
    ASSERT_EQ(sync_io(rt, *j, IoOp::write, b * kBs, kBs, v.data()), Errc::ok);
  }
  std::vector<SwitchDevice::Event> log;
  for (int i = 0; i < 2000; ++i) {
    rt.call([&] { log = next.log; });
    size_t commits = 0;
    for (const auto& e : log) commits += e.epoch_id != 0;
    if (commits >= 2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::vector<uint64_t> sizes;
  for (const auto& e : log)
    if (e.epoch_id != 0) sizes.push_back(e.length);
  ASSERT_GE(sizes.size(), 2u) << "no FLUSH, no time bound: the size bound must close epochs";
  for (uint64_t sz : sizes) EXPECT_LE(sz, 4 * kBs);
  close_journal(rt, j);
}

TEST_F(LiveFixture, DiscardDoesNotWaitForTheEpochTimeBound) {
  JournalOptions o = small_options(jpath);
  o.epoch_ms_max = 60000;  // without the barrier closing the epoch, the discard would wait a minute
  auto j = open_journal(next, o);
  std::vector<std::byte> v(kBs);
  fill_block(v.data(), 1, 0);
  ASSERT_EQ(sync_io(rt, *j, IoOp::write, 0, kBs, v.data()), Errc::ok);
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(sync_io(rt, *j, IoOp::write_zeroes, 8 * kBs, kBs, nullptr), Errc::ok);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  close_journal(rt, j);
}

TEST_F(LiveFixture, EpochWithoutFlushClosesAtItsTimeBound) {
  JournalOptions o = small_options(jpath);
  o.epoch_ms_max = 50;
  auto j = open_journal(next, o);
  std::vector<std::byte> v(kBs);
  fill_block(v.data(), 1, 0);
  ASSERT_EQ(sync_io(rt, *j, IoOp::write, 0, kBs, v.data()), Errc::ok);
  uint64_t epochs = 0;
  for (int i = 0; i < 2000 && epochs == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    rt.call([&] { epochs = j->counters().epochs; });
  }
  EXPECT_EQ(epochs, 1u) << "no FLUSH ever came: the time bound closed the epoch";
  close_journal(rt, j);
}

// ---------------------------------------------------------------- policies

JournalOptions policy_options(const std::string& path, Policy p, uint64_t size = 8 << 20) {
  JournalOptions o = small_options(path, size);
  o.policy = p;
  return o;
}

void write_blocks(ReactorThread& rt, JournalDevice& j, uint64_t first, uint64_t count,
                  uint64_t seq) {
  std::vector<std::byte> v(kBs);
  for (uint64_t b = first; b < first + count; ++b) {
    fill_block(v.data(), seq, b);
    ASSERT_EQ(sync_io(rt, j, IoOp::write, b * kBs, kBs, v.data()), Errc::ok) << "block " << b;
  }
}
int64_t seq_at(ReactorThread& rt, BlockDevice& dev, uint64_t b) {
  std::vector<std::byte> v(kBs);
  if (sync_io(rt, dev, IoOp::read, b * kBs, kBs, v.data()) != Errc::ok) return -2;
  return block_seq(v.data(), b);
}
uint64_t next_writes(ReactorThread& rt, SwitchDevice& next) {
  uint64_t n = 0;
  rt.call([&] { n = next.writes.load(); });
  return n;
}

TEST_F(LiveFixture, CloudPersistShipsNothingAndItsDataSurvivesARestart) {
  auto j = open_journal(next, policy_options(jpath, Policy::cloud_persist));
  write_blocks(rt, *j, 0, 20, 7);
  ASSERT_EQ(sync_io(rt, *j, IoOp::flush, 0, 0, nullptr), Errc::ok);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // 5 epoch time bounds
  EXPECT_EQ(next_writes(rt, next), 0u) << "cloud-persist wrote back";
  EXPECT_EQ(next.flushes.load(), 0u);
  for (uint64_t b = 0; b < 20; ++b) EXPECT_EQ(seq_at(rt, *j, b), 7) << "block " << b;
  close_journal(rt, j);
  j = open_journal(next, policy_options(jpath, Policy::cloud_persist));
  for (uint64_t b = 0; b < 20; ++b) EXPECT_EQ(seq_at(rt, *j, b), 7) << "after restart, block " << b;
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(next_writes(rt, next), 0u) << "the replayed records were shipped";
  EXPECT_EQ(seq_at(rt, *ram, 0), 0);
  close_journal(rt, j);
}

TEST_F(LiveFixture, CloudPersistFullJournalRefusesWritesWithNoSpaceAndLosesNothing) {
  auto j = open_journal(next, policy_options(jpath, Policy::cloud_persist, 256 << 10));
  std::vector<std::byte> v(kBs);
  uint64_t accepted = 0;
  Errc refused = Errc::ok;
  for (uint64_t b = 0; b < 100; ++b) {
    fill_block(v.data(), 3, b);
    const Errc e = sync_io(rt, *j, IoOp::write, b * kBs, kBs, v.data());  // would hang if it waited
    if (e != Errc::ok) {
      refused = e;
      break;
    }
    ++accepted;
  }
  EXPECT_EQ(refused, Errc::no_space);
  EXPECT_GT(accepted, 10u);
  EXPECT_LT(accepted, 100u);
  uint64_t no_space = 0;
  rt.call([&] { no_space = j->counters().no_space; });
  EXPECT_EQ(no_space, 1u);
  for (uint64_t b = 0; b < accepted; ++b) EXPECT_EQ(seq_at(rt, *j, b), 3) << "block " << b;
  EXPECT_EQ(next_writes(rt, next), 0u);
  // Back to write-back: the backlog ships, space comes back, writes go on.
  std::string why;
  Errc e = Errc::io_error;
  rt.call([&] { e = j->set_policy(Policy::write_back, why); });
  EXPECT_EQ(e, Errc::ok);
  write_blocks(rt, *j, accepted, 100 - accepted, 4);
  ASSERT_TRUE(drain(rt, *j));
  for (uint64_t b = 0; b < 100; ++b)
    EXPECT_EQ(seq_at(rt, *ram, b), b < accepted ? 3 : 4) << "block " << b;
  close_journal(rt, j);
}

TEST_F(LiveFixture, WriteBackToCloudPersistStopsShippingAndBackCatchesUp) {
  auto j = open_journal(next, small_options(jpath));
  write_blocks(rt, *j, 0, 10, 1);
  ASSERT_TRUE(drain(rt, *j));
  std::string why;
  Errc e = Errc::io_error;
  rt.call([&] { e = j->set_policy(Policy::cloud_persist, why); });
  ASSERT_EQ(e, Errc::ok);
  const uint64_t shipped = next_writes(rt, next);
  write_blocks(rt, *j, 0, 10, 2);
  ASSERT_EQ(sync_io(rt, *j, IoOp::flush, 0, 0, nullptr), Errc::ok);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(next_writes(rt, next), shipped) << "shipped after the change to cloud-persist";
  for (uint64_t b = 0; b < 10; ++b) {
    EXPECT_EQ(seq_at(rt, *ram, b), 1) << "on-prem changed, block " << b;
    EXPECT_EQ(seq_at(rt, *j, b), 2) << "the reader misses a write, block " << b;
  }
  rt.call([&] { e = j->set_policy(Policy::write_back, why); });
  ASSERT_EQ(e, Errc::ok);
  ASSERT_TRUE(drain(rt, *j));
  for (uint64_t b = 0; b < 10; ++b)
    EXPECT_EQ(seq_at(rt, *ram, b), 2) << "not caught up, block " << b;
  close_journal(rt, j);
}

TEST_F(LiveFixture, TestCloneKeepsWritesAsideAndTheNextOpenDiscardsThem) {
  std::vector<std::byte> v(kBs);
  for (uint64_t b = 0; b < 10; ++b) {
    fill_block(v.data(), 1, b);
    ASSERT_EQ(sync_io(rt, *ram, IoOp::write, b * kBs, kBs, v.data()), Errc::ok);
  }
  auto j = open_journal(next, policy_options(jpath, Policy::test_clone));
  EXPECT_EQ(::access((jpath + ".clone").c_str(), F_OK), 0) << "no clone marker";
  write_blocks(rt, *j, 0, 5, 9);
  ASSERT_EQ(sync_io(rt, *j, IoOp::flush, 0, 0, nullptr), Errc::ok);
  for (uint64_t b = 0; b < 10; ++b)
    EXPECT_EQ(seq_at(rt, *j, b), b < 5 ? 9 : 1) << "clone read, block " << b;
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(next_writes(rt, next), 0u) << "a clone write reached on-prem";
  close_journal(rt, j);  // the clone ends (a kill -9 here leaves the same journal and marker)
  j = open_journal(next, small_options(jpath));  // write-back now
  EXPECT_EQ(j->counters().clone_discards, 1u);
  EXPECT_NE(::access((jpath + ".clone").c_str(), F_OK), 0) << "marker left after the discard";
  ASSERT_TRUE(drain(rt, *j));
  EXPECT_EQ(next_writes(rt, next), 0u) << "the clone's writes were shipped after it ended";
  for (uint64_t b = 0; b < 10; ++b)
    EXPECT_EQ(seq_at(rt, *j, b), 1) << "clone write still seen, block " << b;
  close_journal(rt, j);
}

TEST_F(LiveFixture, TestCloneIsRefusedOverWritesNotYetWrittenBack) {
  next.down = true;
  auto j = open_journal(next, small_options(jpath));
  write_blocks(rt, *j, 0, 3, 5);
  close_journal(rt, j);
  next.down = false;
  auto r = JournalDevice::open(next, policy_options(jpath, Policy::test_clone));
  ASSERT_FALSE(r.ok()) << "a clone would have discarded writes on-prem lacks";
  EXPECT_EQ(r.error(), Errc::busy);
  j = open_journal(next, small_options(jpath));
  ASSERT_TRUE(drain(rt, *j));
  for (uint64_t b = 0; b < 3; ++b) EXPECT_EQ(seq_at(rt, *ram, b), 5);
  close_journal(rt, j);
}

TEST_F(LiveFixture, PolicyChangeIntoOrOutOfTestCloneIsRefused) {
  auto j = open_journal(next, small_options(jpath));
  std::string why;
  Errc e = Errc::ok;
  rt.call([&] { e = j->set_policy(Policy::test_clone, why); });
  EXPECT_EQ(e, Errc::busy);
  EXPECT_FALSE(why.empty());
  EXPECT_EQ(j->policy(), Policy::write_back);
  close_journal(rt, j);
  j = open_journal(next, policy_options(jpath, Policy::test_clone));
  for (Policy p : {Policy::write_back, Policy::cloud_persist}) {
    why.clear();
    rt.call([&] { e = j->set_policy(p, why); });
    EXPECT_EQ(e, Errc::busy) << to_string(p);
    EXPECT_EQ(j->policy(), Policy::test_clone);
  }
  close_journal(rt, j);
}

TEST(JournalPolicy, NamesRoundTripAndUnknownOnesAreRefused) {
  for (Policy p : {Policy::write_back, Policy::cloud_persist, Policy::test_clone}) {
    Policy q = Policy::write_back;
    EXPECT_TRUE(parse_policy(to_string(p), q));
    EXPECT_EQ(q, p);
  }
  Policy q;
  EXPECT_FALSE(parse_policy("writeback", q));
  EXPECT_FALSE(parse_policy("", q));
}

TEST_F(LiveFixture, PausedWriteBackShipsNothingKeepsWritersGoingAndResumeCatchesUp) {
  auto j = open_journal(next, small_options(jpath));
  rt.call([&] { j->pause_write_back(true); });
  write_blocks(rt, *j, 0, 10, 6);
  ASSERT_EQ(sync_io(rt, *j, IoOp::flush, 0, 0, nullptr), Errc::ok);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // 5 epoch time bounds
  EXPECT_EQ(next_writes(rt, next), 0u) << "shipped while paused";
  std::string why;
  Errc e = Errc::ok;
  rt.call([&] { e = j->flush_write_back(why); });
  EXPECT_EQ(e, Errc::busy) << "a flush while paused must say it cannot";
  rt.call([&] { j->pause_write_back(false); });
  ASSERT_TRUE(drain(rt, *j));
  for (uint64_t b = 0; b < 10; ++b) EXPECT_EQ(seq_at(rt, *ram, b), 6) << "block " << b;
  close_journal(rt, j);
}

TEST_F(LiveFixture, FlushWriteBackShipsWithoutWaitingForTheEpochTimeBound) {
  JournalOptions o = small_options(jpath);
  o.epoch_ms_max = 60'000;  // without the flush nothing would ship for a minute
  auto j = open_journal(next, o);
  write_blocks(rt, *j, 0, 4, 8);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(next_writes(rt, next), 0u);
  std::string why;
  Errc e = Errc::io_error;
  rt.call([&] { e = j->flush_write_back(why); });
  ASSERT_EQ(e, Errc::ok) << why;
  uint64_t epochs = 0;
  for (int i = 0; i < 2000 && epochs == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    rt.call([&] { epochs = j->counters().epochs; });
  }
  EXPECT_EQ(epochs, 1u);
  for (uint64_t b = 0; b < 4; ++b) EXPECT_EQ(seq_at(rt, *ram, b), 8) << "block " << b;
  close_journal(rt, j);
  j = open_journal(next, policy_options(jpath, Policy::cloud_persist));
  rt.call([&] { e = j->flush_write_back(why); });
  EXPECT_EQ(e, Errc::busy) << "cloud-persist has nothing to flush to on-prem";
  close_journal(rt, j);
}

TEST_F(LiveFixture, CloudPersistWriteAtTheRingsEndWrapsInsteadOfBeingRefused) {
  auto j = open_journal(next, small_options(jpath, 256 << 10));  // 62 ring blocks
  write_blocks(rt, *j, 0, 26, 1);  // 52 blocks (10 left: 3 writes, then a wrap marker), reclaimed
  ASSERT_TRUE(drain(rt, *j));
  std::string why;
  Errc e = Errc::io_error;
  rt.call([&] { e = j->set_policy(Policy::cloud_persist, why); });
  ASSERT_EQ(e, Errc::ok);
  // 8 KiB writes (3 ring blocks): a few fit before the ring's end, the rest after the wrap.
  std::vector<std::byte> v(2 * kBs);
  uint64_t accepted = 0;
  for (uint64_t i = 0; i < 40; ++i) {
    fill_block(v.data(), 2, 2 * i);
    fill_block(v.data() + kBs, 2, 2 * i + 1);
    if (sync_io(rt, *j, IoOp::write, 2 * i * kBs, 2 * kBs, v.data()) != Errc::ok) break;
    ++accepted;
  }
  EXPECT_GE(accepted, 15u) << "refused at the wrap although the ring's start was free";
  EXPECT_LT(accepted, 40u);
  for (uint64_t b = 0; b < 2 * accepted; ++b) EXPECT_EQ(seq_at(rt, *j, b), 2) << "block " << b;
  close_journal(rt, j);
}

// ---------------------------------------------------------------- write-back rate cap, RPO target

// Waits (at most `seconds`) until write-back has shipped everything journaled (no dirty bytes):
// not drain(), which is not capped.
bool shipped_all(ReactorThread& rt, JournalDevice& j, int seconds) {
  for (int i = 0; i < seconds * 1000; ++i) {
    uint64_t dirty = 1;
    rt.call([&] { dirty = j.state().dirty_bytes; });
    if (dirty == 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

// The cap bounds what write-back ships per second: 2 MiB at 1 MiB/s cannot be on next in much
// less than 2 s minus the bucket (100 ms of the cap). Lifting the cap at runtime lets the rest go.
TEST_F(LiveFixture, WriteBackRateCapHoldsShippingToTheCap) {
  JournalOptions o = small_options(jpath);
  o.write_back_rate_bytes_per_s = 1u << 20;
  o.rpo_target_ms = 0;  // no target: the cap always holds
  auto j = open_journal(next, o);
  const auto t0 = std::chrono::steady_clock::now();
  write_blocks(rt, *j, 0, 512, 3);  // 2 MiB
  ASSERT_TRUE(shipped_all(rt, *j, 20));
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GE(took, 1.6) << "2 MiB shipped faster than a 1 MiB/s cap allows";
  uint64_t waits = 0;
  rt.call([&] { waits = j->counters().rate_waits; });
  EXPECT_GT(waits, 0u);
  for (uint64_t b = 0; b < 512; b += 31) EXPECT_EQ(seq_at(rt, *ram, b), 3) << "block " << b;
  rt.call([&] { j->set_write_back_limits(0, 0); });
  write_blocks(rt, *j, 0, 512, 4);
  ASSERT_TRUE(shipped_all(rt, *j, 20));
  uint64_t waits_after = 0;
  rt.call([&] { waits_after = j->counters().rate_waits; });
  EXPECT_EQ(waits_after, waits) << "no cap: nothing held back";
  for (uint64_t b = 0; b < 512; b += 31) EXPECT_EQ(seq_at(rt, *ram, b), 4) << "block " << b;
  close_journal(rt, j);
}

// The clean stop's drain is bounded by --journal-drain-s: it must not wait for the cap. 1 MiB at
// 64 KiB/s would take 16 s; the drain ships it at once.
TEST_F(LiveFixture, DrainIsNotHeldBackByTheRateCap) {
  JournalOptions o = small_options(jpath);
  o.write_back_rate_bytes_per_s = 64u << 10;
  o.rpo_target_ms = 0;
  auto j = open_journal(next, o);
  write_blocks(rt, *j, 0, 256, 6);
  ASSERT_TRUE(drain(rt, *j, 8)) << "the drain waited for the rate cap";
  for (uint64_t b = 0; b < 256; b += 17) EXPECT_EQ(seq_at(rt, *ram, b), 6) << "block " << b;
  close_journal(rt, j);
}

// A cap far below the write rate must not let the lag grow without bound: once the oldest write
// is older than the RPO target the cap is lifted (counted) until it is met. 1 MiB at 64 KiB/s
// alone would take 16 s after the writes; it must be shipped within 8 s of them.
TEST_F(LiveFixture, RpoTargetMissedLiftsTheRateCapUntilTheLagIsMet) {
  JournalOptions o = small_options(jpath);
  o.write_back_rate_bytes_per_s = 64u << 10;
  o.rpo_target_ms = 300;
  auto j = open_journal(next, o);
  write_blocks(rt, *j, 0, 256, 5);  // 1 MiB
  // (Not polled for the live rpo_missed: on a loaded machine the writes themselves can take
  // longer than the target, and the lifts then keep the lag near it while they go on.)
  ASSERT_TRUE(shipped_all(rt, *j, 8)) << "the RPO target did not lift the cap";
  uint64_t misses = 0;
  bool still = true;
  rt.call([&] {
    misses = j->counters().rpo_misses;
    still = j->state().rpo_missed;
  });
  EXPECT_GE(misses, 1u);
  EXPECT_FALSE(still) << "nothing left to ship: the target is met";
  for (uint64_t b = 0; b < 256; b += 17) EXPECT_EQ(seq_at(rt, *ram, b), 5) << "block " << b;
  close_journal(rt, j);
}

}  // namespace
}  // namespace ferry::journal
