// Unit tests for the datapath: Result, BufferPool bounds, RamDevice, FileDevice (sync and on a
// reactor), FaultDevice, DelayDevice, Reactor timers and cross-thread posts, ConnectionBalancer,
// listen_tcp's congestion control.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "datapath/acceptor.h"
#include "datapath/connection_balancer.h"
#include "datapath/file_device.h"
#include "datapath/ram_device.h"
#include "datapath/reactor.h"
#include "datapath/test_devices.h"

namespace ferry {
namespace {

struct SyncIo {
  IoRequest req;
  bool done = false;
  SyncIo(IoOp op, uint64_t off, uint64_t len, std::byte* data) {
    req.op = op;
    req.offset_bytes = off;
    req.length_bytes = len;
    req.data = data;
    req.owner = this;
    req.on_complete = [](IoRequest& r) noexcept { static_cast<SyncIo*>(r.owner)->done = true; };
  }
};

Errc run_sync(BlockDevice& dev, IoOp op, uint64_t off, uint64_t len, std::byte* data,
              IoRequest* out = nullptr) {
  SyncIo io(op, off, len, data);
  dev.submit(io.req);
  EXPECT_TRUE(io.done);
  if (out) *out = io.req;
  return io.req.result;
}

TEST(Result, CarriesValueOrError) {
  Result<int> ok(5);
  EXPECT_TRUE(ok.ok());
  EXPECT_EQ(ok.value(), 5);
  Result<int> bad(Errc::io_error);
  EXPECT_FALSE(bad.ok());
  EXPECT_EQ(bad.error(), Errc::io_error);
  EXPECT_STREQ(to_string(Errc::miscompare), "miscompare");
}

TEST(BufferPool, RefusesBeyondBytesMax) {
  BufferPool pool(64 * 1024);
  Buffer a = pool.allocate(32 * 1024);
  Buffer b = pool.allocate(32 * 1024);
  ASSERT_TRUE(a && b);
  Buffer c = pool.allocate(4096);
  EXPECT_FALSE(c);
  EXPECT_EQ(pool.stats().exhausted_count, 1u);
  a.release();
  Buffer d = pool.allocate(4096);  // cached 32 KiB buffer is dropped to make room
  EXPECT_TRUE(d);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(d.data()) % BufferPool::kAlignment, 0u);
}

TEST(BufferPool, ReusesFreedBuffers) {
  BufferPool pool(1 << 20);
  std::byte* first;
  {
    Buffer a = pool.allocate(5000);
    EXPECT_GE(a.capacity(), 5000u);
    first = a.data();
  }
  Buffer b = pool.allocate(8192);
  EXPECT_EQ(b.data(), first);
  EXPECT_EQ(pool.allocate(BufferPool::kMaxBytes + 1).data(), nullptr);
}

TEST(RamDevice, WriteReadDiscardAndBlockStatus) {
  auto dev = RamDevice::create(1 << 20, 512);
  ASSERT_TRUE(dev.ok());
  RamDevice& d = *dev.value();
  EXPECT_EQ(d.geometry().block_count, 2048u);
  std::vector<std::byte> buf(4096, std::byte{0xab}), back(4096);
  EXPECT_EQ(run_sync(d, IoOp::write, 65536, 4096, buf.data()), Errc::ok);
  EXPECT_EQ(run_sync(d, IoOp::read, 65536, 4096, back.data()), Errc::ok);
  EXPECT_EQ(buf, back);

  IoRequest st;
  EXPECT_EQ(run_sync(d, IoOp::block_status, 0, 1 << 20, nullptr, &st), Errc::ok);
  EXPECT_EQ(st.status_flags, kStatusHole | kStatusZero);
  EXPECT_EQ(st.status_length_bytes, 65536u);
  EXPECT_EQ(run_sync(d, IoOp::block_status, 65536, 1 << 19, nullptr, &st), Errc::ok);
  EXPECT_EQ(st.status_flags, 0u);
  EXPECT_EQ(st.status_length_bytes, 65536u);

  EXPECT_EQ(run_sync(d, IoOp::discard, 65536, 65536, nullptr), Errc::ok);
  EXPECT_EQ(run_sync(d, IoOp::read, 65536, 4096, back.data()), Errc::ok);
  EXPECT_EQ(back, std::vector<std::byte>(4096));
  EXPECT_EQ(run_sync(d, IoOp::block_status, 65536, 4096, nullptr, &st), Errc::ok);
  EXPECT_EQ(st.status_flags, kStatusHole | kStatusZero);
}

TEST(RamDevice, LendsReadsWithoutCopying) {
  auto dev = RamDevice::create(1 << 20, 512);
  RamDevice& d = *dev.value();
  std::vector<std::byte> buf(4096, std::byte{0x5a}), untouched(4096, std::byte{0x11});
  ASSERT_EQ(run_sync(d, IoOp::write, 8192, 4096, buf.data()), Errc::ok);
  SyncIo io(IoOp::read, 8192, 4096, untouched.data());
  io.req.may_lend = true;
  d.submit(io.req);
  ASSERT_TRUE(io.done);
  ASSERT_EQ(io.req.result, Errc::ok);
  ASSERT_NE(io.req.lent, nullptr);
  EXPECT_EQ(std::memcmp(io.req.lent, buf.data(), 4096), 0);
  EXPECT_EQ(untouched, std::vector<std::byte>(4096, std::byte{0x11}));  // data left alone
  // Without may_lend the device copies, as before.
  SyncIo copy(IoOp::read, 8192, 4096, untouched.data());
  d.submit(copy.req);
  EXPECT_EQ(copy.req.lent, nullptr);
  EXPECT_EQ(untouched, buf);
}

TEST(RamDevice, PartialDiscardZeroesOnlyTheRange) {
  auto dev = RamDevice::create(1 << 20, 512);
  RamDevice& d = *dev.value();
  std::vector<std::byte> buf(8192, std::byte{1}), back(8192);
  ASSERT_EQ(run_sync(d, IoOp::write, 0, 8192, buf.data()), Errc::ok);
  ASSERT_EQ(run_sync(d, IoOp::write_zeroes, 512, 512, nullptr), Errc::ok);
  ASSERT_EQ(run_sync(d, IoOp::read, 0, 8192, back.data()), Errc::ok);
  EXPECT_EQ(back[511], std::byte{1});
  EXPECT_EQ(back[512], std::byte{0});
  EXPECT_EQ(back[1023], std::byte{0});
  EXPECT_EQ(back[1024], std::byte{1});
}

TEST(RamDevice, RejectsOutOfRangeAndMisaligned) {
  auto dev = RamDevice::create(1 << 20, 4096);
  RamDevice& d = *dev.value();
  std::vector<std::byte> buf(8192);
  EXPECT_EQ(run_sync(d, IoOp::read, (1 << 20) - 4096, 8192, buf.data()), Errc::out_of_range);
  EXPECT_EQ(run_sync(d, IoOp::read, 512, 4096, buf.data()), Errc::invalid_argument);
  EXPECT_EQ(run_sync(d, IoOp::read, UINT64_MAX - 4095, 4096, buf.data()), Errc::out_of_range);
}

TEST(ParseSize, UnitsAndErrors) {
  EXPECT_EQ(parse_size_bytes("1GiB").value(), 1ull << 30);
  EXPECT_EQ(parse_size_bytes("64M").value(), 64ull << 20);
  EXPECT_EQ(parse_size_bytes("4096").value(), 4096u);
  EXPECT_FALSE(parse_size_bytes("12XB").ok());
  EXPECT_FALSE(parse_size_bytes("").ok());
  EXPECT_FALSE(parse_size_bytes("99999999999999TiB").ok());
  EXPECT_EQ(format_size(1ull << 30), "1GiB");
}

class TempFile {
 public:
  explicit TempFile(uint64_t size) {
    char tmpl[] = "/tmp/ferry-test-XXXXXX";
    fd_ = mkstemp(tmpl);
    path_ = tmpl;
    EXPECT_EQ(ftruncate(fd_, off_t(size)), 0);
  }
  ~TempFile() {
    ::close(fd_);
    unlink(path_.c_str());
  }
  const std::string& path() const { return path_; }

 private:
  int fd_;
  std::string path_;
};

TEST(FileDevice, SyncFallbackWithoutReactor) {
  TempFile f(1 << 20);
  auto dev = FileDevice::open(f.path(), {});
  ASSERT_TRUE(dev.ok());
  FileDevice& d = *dev.value();
  std::vector<std::byte> buf(4096, std::byte{7}), back(4096);
  EXPECT_EQ(run_sync(d, IoOp::write, 8192, 4096, buf.data()), Errc::ok);
  EXPECT_EQ(run_sync(d, IoOp::flush, 0, 0, nullptr), Errc::ok);
  EXPECT_EQ(run_sync(d, IoOp::read, 8192, 4096, back.data()), Errc::ok);
  EXPECT_EQ(buf, back);
  IoRequest st;
  EXPECT_EQ(run_sync(d, IoOp::block_status, 1 << 19, 4096, nullptr, &st), Errc::ok);
  EXPECT_EQ(st.status_flags, kStatusHole | kStatusZero);
}

TEST(FileDevice, OpenMissingFileFails) {
  auto dev = FileDevice::open("/nonexistent/ferry/disk", {});
  EXPECT_EQ(dev.error(), Errc::not_found);
}

// Runs `body` on a reactor thread and waits for it to call done().
class ReactorThread {
 public:
  ReactorThread() : reactor_(0, 64 << 20) {
    thread_ = std::thread([this] {
      ASSERT_TRUE(reactor_.init(256).ok());
      ready_ = true;
      reactor_.run();
    });
    while (!ready_) std::this_thread::yield();
  }
  ~ReactorThread() {
    reactor_.stop();
    thread_.join();
  }
  Reactor& reactor() { return reactor_; }

 private:
  Reactor reactor_;
  std::atomic<bool> ready_{false};
  std::thread thread_;
};

TEST(Reactor, PostRunsOnReactorThread) {
  ReactorThread rt;
  std::atomic<bool> ran{false};
  rt.reactor().post([&] {
    EXPECT_EQ(Reactor::current(), &rt.reactor());
    ran = true;
  });
  for (int i = 0; i < 2000 && !ran; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_TRUE(ran);
}

TEST(Reactor, TimersFireInDeadlineOrderAndCancel) {
  ReactorThread rt;
  std::atomic<int> done{0};
  std::vector<int> order;
  static Timer t1, t2, t3;
  struct Ctx {
    std::vector<int>* order;
    int id;
    std::atomic<int>* done;
  };
  static Ctx c1, c2, c3;
  c1 = {&order, 1, &done};
  c2 = {&order, 2, &done};
  c3 = {&order, 3, &done};
  auto fire = [](void* p) noexcept {
    auto* c = static_cast<Ctx*>(p);
    c->order->push_back(c->id);
    c->done->fetch_add(1);
  };
  rt.reactor().post([&] {
    Reactor& r = *Reactor::current();
    r.arm(t1, 30'000'000, fire, &c1);
    r.arm(t2, 10'000'000, fire, &c2);
    r.arm(t3, 20'000'000, fire, &c3);
    r.cancel(t3);
  });
  for (int i = 0; i < 2000 && done < 2; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  ASSERT_EQ(done.load(), 2);
  EXPECT_EQ(order, (std::vector<int>{2, 1}));
}

// Issues `left` NOPs one after another (each completes at once), then stops the reactor after an
// idle pause.
struct NopChain final : Operation {
  Reactor* reactor = nullptr;
  int left = 0;
  uint64_t spins_when_done = 0;
  Timer idle;
  void issue() noexcept {
    io_uring_sqe* sqe = reactor->get_sqe();
    io_uring_prep_nop(sqe);
    Reactor::prepare(sqe, this);
  }
  void on_cqe(int32_t, uint32_t) noexcept override {
    if (--left > 0) return issue();
    spins_when_done = reactor->stats().spins;
    reactor->arm(
        idle, 30'000'000, [](void* r) noexcept { static_cast<Reactor*>(r)->stop(); }, reactor);
  }
};

TEST(Reactor, SpinsThroughShortGapsButNotWhenIdle) {
  for (const uint64_t spin_ns : {Reactor::kSpinNsSuggested, uint64_t{0}}) {
    Reactor reactor(0, 1 << 20);
    ASSERT_TRUE(reactor.init(64).ok());
    reactor.set_spin_ns(spin_ns);
    NopChain chain;
    chain.reactor = &reactor;
    chain.left = 1000;
    chain.issue();
    reactor.run();
    if (spin_ns == 0) {
      EXPECT_EQ(reactor.stats().spins, 0u);
      continue;
    }
    // Busy: the next completion was always ready, so nearly every wait was a short spin.
    EXPECT_GT(reactor.stats().spin_hits, 900u);
    // Idle for 30 ms: at most the one spin that finds nothing, then the thread sleeps.
    EXPECT_LE(reactor.stats().spins - chain.spins_when_done, 1u);
  }
}

TEST(FileDevice, IoUringReadWriteOnReactor) {
  TempFile f(4 << 20);
  auto dev = FileDevice::open(f.path(), {});
  ASSERT_TRUE(dev.ok());
  FileDevice& d = *dev.value();
  ReactorThread rt;
  std::vector<std::byte> buf(1 << 20), back(1 << 20);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = std::byte(i * 7);
  std::atomic<int> stage{0};
  static IoRequest req;
  struct State {
    std::vector<std::byte>* buf;
    std::vector<std::byte>* back;
    FileDevice* dev;
    std::atomic<int>* stage;
    Errc last = Errc::ok;
  } st{&buf, &back, &d, &stage};
  rt.reactor().post([&] {
    req = IoRequest{};
    req.op = IoOp::write;
    req.fua = true;
    req.offset_bytes = 1 << 20;
    req.length_bytes = buf.size();
    req.data = buf.data();
    req.owner = &st;
    req.on_complete = [](IoRequest& r) noexcept {
      auto* s = static_cast<State*>(r.owner);
      s->last = r.result;
      if (r.op == IoOp::write && r.result == Errc::ok) {
        r.op = IoOp::read;
        r.fua = false;
        r.data = s->back->data();
        s->dev->submit(r);
        return;
      }
      s->stage->store(1);
    };
    d.submit(req);
  });
  for (int i = 0; i < 5000 && stage == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_EQ(stage.load(), 1);
  EXPECT_EQ(st.last, Errc::ok);
  EXPECT_EQ(buf, back);
}

TEST(FaultDevice, InjectsErrorsByRuleThenPassesThrough) {
  auto ram = RamDevice::create(1 << 20, 512);
  FaultDevice f(*ram.value());
  f.add_rule({IoOp::read, 4096, 4096, Errc::medium_error, 1});
  std::vector<std::byte> buf(512);
  EXPECT_EQ(run_sync(f, IoOp::read, 0, 512, buf.data()), Errc::ok);
  EXPECT_EQ(run_sync(f, IoOp::read, 4096, 512, buf.data()), Errc::medium_error);
  EXPECT_EQ(run_sync(f, IoOp::read, 4096, 512, buf.data()), Errc::ok);  // fired once
  EXPECT_EQ(f.injected_count(), 1u);
}

TEST(DelayDevice, CompletesLaterOnTheReactor) {
  auto ram = RamDevice::create(1 << 20, 512);
  DelayDevice delayed(*ram.value(), 20'000);
  ReactorThread rt;
  std::atomic<uint64_t> elapsed_ns{0};
  static IoRequest req;
  static std::vector<std::byte> buf(512);
  static uint64_t start;
  rt.reactor().post([&] {
    req = IoRequest{};
    req.op = IoOp::read;
    req.length_bytes = 512;
    req.data = buf.data();
    req.owner = &elapsed_ns;
    req.on_complete = [](IoRequest& r) noexcept {
      static_cast<std::atomic<uint64_t>*>(r.owner)->store(Reactor::now_ns_fresh() - start);
    };
    start = Reactor::now_ns_fresh();
    delayed.submit(req);
  });
  for (int i = 0; i < 2000 && elapsed_ns == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_GE(elapsed_ns.load(), 20'000'000u);
}

TEST(DelayDevice, HandsBackALentRead) {
  auto ram = RamDevice::create(1 << 20, 512);
  static std::vector<std::byte> data(4096, std::byte{0x77}), untouched(4096);
  ASSERT_EQ(run_sync(*ram.value(), IoOp::write, 0, 4096, data.data()), Errc::ok);
  DelayDevice delayed(*ram.value(), 100);
  ReactorThread rt;
  std::atomic<const std::byte*> lent{nullptr};
  static IoRequest req;
  rt.reactor().post([&] {
    req = IoRequest{};
    req.op = IoOp::read;
    req.length_bytes = 4096;
    req.data = untouched.data();
    req.may_lend = true;
    req.owner = &lent;
    req.on_complete = [](IoRequest& r) noexcept {
      static_cast<std::atomic<const std::byte*>*>(r.owner)->store(r.lent);
    };
    delayed.submit(req);
  });
  for (int i = 0; i < 2000 && lent.load() == nullptr; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_NE(lent.load(), nullptr);
  EXPECT_EQ(std::memcmp(lent.load(), data.data(), 4096), 0);
}

TEST(ConnectionBalancer, PicksTheLeastLoadedJoinedReactor) {
  Reactor a(0, 1 << 20), b(1, 1 << 20), outsider(2, 1 << 20);
  ConnectionBalancer balancer;
  EXPECT_EQ(&balancer.pick(a), &a);  // nobody joined: stays, uncounted
  EXPECT_EQ(balancer.live(a), 0u);
  balancer.join(a);
  balancer.join(b);
  balancer.join(a);  // idempotent
  // Everything is accepted on a (the kernel's hash favoured it): connections alternate.
  EXPECT_EQ(&balancer.pick(a), &a);  // tie: the accepting reactor keeps it
  EXPECT_EQ(&balancer.pick(a), &b);
  EXPECT_EQ(&balancer.pick(a), &a);
  EXPECT_EQ(&balancer.pick(a), &b);
  EXPECT_EQ(balancer.live(a), 2u);
  EXPECT_EQ(balancer.live(b), 2u);
  balancer.release(a);
  balancer.release(a);
  EXPECT_EQ(&balancer.pick(b), &a);  // a emptied: it gets the next ones
  EXPECT_EQ(balancer.live(a), 1u);
  // A reactor that left gets no more, and says so to posts still on their way.
  balancer.leave(a);
  EXPECT_FALSE(balancer.accepting(a));
  EXPECT_TRUE(balancer.accepting(b));
  EXPECT_EQ(&balancer.pick(a), &b);
  EXPECT_EQ(balancer.live(b), 3u);
  // Releases never underflow, and unknown reactors are ignored.
  for (int i = 0; i < 5; ++i) balancer.release(a);
  EXPECT_EQ(balancer.live(a), 0u);
  balancer.release(outsider);
  EXPECT_EQ(balancer.live(outsider), 0u);
  EXPECT_EQ(&balancer.pick(outsider), &b);  // accepted on a non-member: goes to a member
}

TEST(ListenTcp, CongestionControlIsInheritedAndValidated) {
  std::string error;
  // reno is built into every Linux kernel.
  auto fd = listen_tcp("127.0.0.1", 0, error, "reno");
  ASSERT_TRUE(fd.ok()) << error;
  const uint16_t port = local_port(fd.value());
  const int client = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(client, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  const int accepted = ::accept(fd.value(), nullptr, nullptr);
  ASSERT_GE(accepted, 0);
  char name[16] = {};
  socklen_t len = sizeof name;
  ASSERT_EQ(getsockopt(accepted, IPPROTO_TCP, TCP_CONGESTION, name, &len), 0);
  EXPECT_STREQ(name, "reno");
  ::close(accepted);
  ::close(client);
  ::close(fd.value());

  auto bad = listen_tcp("127.0.0.1", 0, error, "no-such-cc");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error(), Errc::invalid_argument);
  EXPECT_NE(error.find("no-such-cc"), std::string::npos) << error;
}

// A port in use is refused, not shared (SO_REUSEPORT let a second process take half the
// connections of the first: issue 15, failure 1).
TEST(ListenTcp, PortInUseIsRefusedNotShared) {
  std::string error;
  auto first = listen_tcp("127.0.0.1", 0, error);
  ASSERT_TRUE(first.ok()) << error;
  const uint16_t port = local_port(first.value());
  auto second = listen_tcp("127.0.0.1", port, error);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error(), Errc::exists);
  EXPECT_NE(error.find("in use"), std::string::npos) << error;
  ::close(first.value());
  // Once the first listener is closed the port can be taken again at once (SO_REUSEADDR).
  auto again = listen_tcp("127.0.0.1", port, error);
  ASSERT_TRUE(again.ok()) << error;
  ::close(again.value());
}

}  // namespace
}  // namespace ferry
