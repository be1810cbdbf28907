// Tests of the connection engine's two halves: SocketChannel (receive, gathered send with short
// sends continued, peer close, shutdown with operations in flight) and ConnectionHub (limit,
// pre-authentication eviction, authenticated count, stop closing every connection, registry).
#include "datapath/socket_channel.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <thread>
#include <utility>
#include <vector>

#include "datapath/connection_hub.h"

namespace ferry {
namespace {

constexpr uint64_t kMs = 1'000'000;

// Runs the reactor on this thread until stop() or a 10 s guard.
void run_bounded(Reactor& reactor) {
  Timer guard;
  reactor.arm(
      guard, 10'000 * kMs, [](void* r) noexcept { static_cast<Reactor*>(r)->stop(); }, &reactor);
  reactor.run();
  reactor.cancel(guard);
}

struct RecordingOwner final : SocketChannelOwner {
  Reactor* reactor = nullptr;
  std::vector<int32_t> received, sent;
  bool stop_on_receive = true, stop_on_send = true;
  void on_received(int32_t res) noexcept override {
    received.push_back(res);
    if (stop_on_receive) reactor->stop();
  }
  void on_sent(int32_t res) noexcept override {
    sent.push_back(res);
    if (stop_on_send) reactor->stop();
  }
};

class SocketChannelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(reactor_.init(64).ok());
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv_), 0);
    owner_.reactor = &reactor_;
  }
  void TearDown() override {
    if (sv_[1] >= 0) ::close(sv_[1]);
  }
  Reactor reactor_{0, 16 << 20};
  RecordingOwner owner_;
  int sv_[2] = {-1, -1};
};

TEST_F(SocketChannelTest, ShortSendsAreContinuedUntilTheWholeGatherIsOut) {
  int small = 16 * 1024;  // a send buffer far smaller than the gather: the kernel takes it in parts
  setsockopt(sv_[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  constexpr size_t kPieces = 16, kPieceBytes = 256 * 1024;
  std::vector<std::vector<uint8_t>> pieces(kPieces, std::vector<uint8_t>(kPieceBytes));
  for (size_t p = 0; p < kPieces; ++p)
    for (size_t i = 0; i < kPieceBytes; ++i) pieces[p][i] = uint8_t(p * 31 + i * 7);
  std::vector<uint8_t> got;
  std::thread reader([&] {  // a slow peer: small reads
    uint8_t buf[4096];
    while (got.size() < kPieces * kPieceBytes) {
      const ssize_t n = ::read(sv_[1], buf, sizeof buf);
      if (n <= 0) break;
      got.insert(got.end(), buf, buf + n);
    }
  });
  SocketChannel ch(reactor_, owner_, kPieces);
  ch.attach(sv_[0]);
  for (auto& p : pieces) ch.gather().push_back({p.data(), p.size()});
  ch.send();
  EXPECT_TRUE(ch.sending());
  run_bounded(reactor_);
  reader.join();
  ASSERT_EQ(owner_.sent, std::vector<int32_t>{0});  // once, when everything was out
  EXPECT_FALSE(ch.sending());
  EXPECT_TRUE(ch.gather().empty());
  EXPECT_EQ(ch.stats().bytes_out, kPieces * kPieceBytes);
  EXPECT_GT(ch.stats().sends, 1u);  // the kernel did take it in parts: continuation was exercised
  ASSERT_EQ(got.size(), kPieces * kPieceBytes);
  for (size_t p = 0; p < kPieces; ++p)
    ASSERT_EQ(std::memcmp(got.data() + p * kPieceBytes, pieces[p].data(), kPieceBytes), 0) << p;
}

TEST_F(SocketChannelTest, ReceiveAfterADrainingReceiveStillGetsLaterData) {
  // The first receive leaves the socket empty, so the second waits for readiness first
  // (POLL_FIRST): it must still complete when the peer writes later.
  SocketChannel ch(reactor_, owner_, 1);
  ch.attach(sv_[0]);
  ASSERT_EQ(::write(sv_[1], "abc", 3), 3);
  char buf[64];
  ch.receive(buf, sizeof buf);
  run_bounded(reactor_);
  ASSERT_EQ(owner_.received, std::vector<int32_t>{3});
  ch.receive(buf, sizeof buf);
  std::thread late([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    (void)!::write(sv_[1], "defgh", 5);
  });
  run_bounded(reactor_);
  late.join();
  ASSERT_EQ(owner_.received, (std::vector<int32_t>{3, 5}));
  EXPECT_EQ(std::memcmp(buf, "defgh", 5), 0);
  EXPECT_EQ(ch.stats().bytes_in, 8u);
}

TEST_F(SocketChannelTest, PeerCloseReachesTheOwnerAsZero) {
  SocketChannel ch(reactor_, owner_, 1);
  ch.attach(sv_[0]);
  ::close(std::exchange(sv_[1], -1));
  char buf[16];
  ch.receive(buf, sizeof buf);
  run_bounded(reactor_);
  ASSERT_EQ(owner_.received, std::vector<int32_t>{0});
  EXPECT_TRUE(ch.idle());
}

TEST_F(SocketChannelTest, ShutdownEndsInFlightReceiveAndStuckSend) {
  // Nobody reads the peer: the send cannot finish. shutdown() must end both operations, report
  // the unfinished send as an error, and leave the channel idle (the owner may free itself).
  int small = 4096;
  setsockopt(sv_[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  owner_.stop_on_receive = owner_.stop_on_send = false;
  SocketChannel ch(reactor_, owner_, 1);
  ch.attach(sv_[0]);
  std::vector<uint8_t> big(8 << 20, 0x5a);
  char buf[16];
  ch.receive(buf, sizeof buf);
  ch.gather().push_back({big.data(), big.size()});
  ch.send();
  Timer later;
  reactor_.arm(
      later, 50 * kMs, [](void* c) noexcept { static_cast<SocketChannel*>(c)->shutdown(); }, &ch);
  struct Poll {
    Reactor* r;
    SocketChannel* ch;
    Timer timer;
    static void check(void* p) noexcept {
      auto* self = static_cast<Poll*>(p);
      if (self->ch->idle()) return self->r->stop();
      self->r->arm(self->timer, 5 * kMs, &Poll::check, p);
    }
  } poll{&reactor_, &ch, {}};
  reactor_.arm(poll.timer, 5 * kMs, &Poll::check, &poll);
  run_bounded(reactor_);
  reactor_.cancel(poll.timer);
  EXPECT_TRUE(ch.idle());
  ASSERT_EQ(owner_.sent.size(), 1u);
  EXPECT_LT(owner_.sent[0], 0);
  ASSERT_EQ(owner_.received.size(), 1u);
  EXPECT_LE(owner_.received[0], 0);
  EXPECT_TRUE(ch.shut_down());
}

// ---------------------------------------------------------------- ConnectionHub

struct FakeConnection final : HubConnection {
  FakeConnection(ConnectionHub& hub, int fd, uint64_t id) : HubConnection(id), hub(hub), fd(fd) {}
  ~FakeConnection() { ::close(fd); }
  void close(const char* why) noexcept override {
    if (closed) return;
    closed = true;
    reason = why != nullptr ? why : "";
    hub.closed(this);
  }
  bool authenticating() const noexcept override { return !authed; }
  ConnectionHub& hub;
  int fd;
  bool authed = false, closed = false;
  std::string reason;
};

struct HubFixture {
  std::vector<std::unique_ptr<FakeConnection>> made;
  static bool start(void* self, Reactor&, int fd, uint64_t id) noexcept {
    auto* f = static_cast<HubFixture*>(self);
    f->made.push_back(std::make_unique<FakeConnection>(*f->hub, fd, id));
    f->hub->opened(f->made.back().get());
    return true;
  }
  ConnectionHub* hub = nullptr;
};

// Runs fn on the reactor (this thread), then the reactor's deferred work, then stops.
template <typename Fn>
void on_reactor(Reactor& r, Fn fn) {
  r.post([&] {
    fn();
    Reactor::current()->defer([] { Reactor::current()->stop(); });
  });
  run_bounded(r);
}

int connected_socket(std::vector<int>& peers) {
  int sv[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  peers.push_back(sv[1]);
  return sv[0];
}

TEST(ConnectionHub, LimitRefusesBeyondConnectionsMax) {
  Reactor r(0, 1 << 20);
  ASSERT_TRUE(r.init(64).ok());
  HubFixture f;
  ConnectionHub hub(HubOptions{"test", 2, false, {}}, &HubFixture::start, &f);
  f.hub = &hub;
  std::vector<int> peers;
  on_reactor(r, [&] {
    hub.join(r);
    for (int i = 0; i < 3; ++i) hub.adopt(r, connected_socket(peers));
  });
  EXPECT_EQ(f.made.size(), 2u);
  EXPECT_EQ(hub.count().value(), 2u);
  char c;  // the third was closed at once: its peer reads end-of-file
  EXPECT_EQ(::read(peers[2], &c, 1), 0);
  on_reactor(r, [&] { hub.stop(r, "stopping"); });
  EXPECT_EQ(hub.wait_closed(1000), 0u);
  for (auto& m : f.made) EXPECT_EQ(m->reason, "stopping");
  for (int p : peers) ::close(p);
}

TEST(ConnectionHub, OnlyAuthenticatedCountWhenTheLimitSaysSo) {
  Reactor r(0, 1 << 20);
  ASSERT_TRUE(r.init(64).ok());
  HubFixture f;
  ConnectionHub hub(HubOptions{"test", 1, true, {}}, &HubFixture::start, &f);
  f.hub = &hub;
  std::vector<int> peers;
  on_reactor(r, [&] {
    hub.join(r);
    hub.adopt(r, connected_socket(peers));
    hub.adopt(r, connected_socket(peers));  // not authenticated yet: both admitted
    hub.authenticated(f.made[0].get());
    f.made[0]->authed = true;
    hub.adopt(r, connected_socket(peers));  // one authenticated = limit: refused
  });
  EXPECT_EQ(f.made.size(), 2u);
  EXPECT_EQ(hub.authenticated_count(), 1u);
  on_reactor(r, [&] { f.made[0]->close("gone"); });
  EXPECT_EQ(hub.authenticated_count(), 0u);
  on_reactor(r, [&] { hub.stop(r, "stopping"); });
  EXPECT_EQ(hub.wait_closed(1000), 0u);
  for (int p : peers) ::close(p);
}

TEST(ConnectionHub, FullPreAuthPoolEvictsTheOldestUnauthenticated) {
  Reactor r(0, 1 << 20);
  ASSERT_TRUE(r.init(64).ok());
  HubFixture f;
  ConnectionHub hub(HubOptions{"test", 100, false, PreAuthLimits{2, 10}}, &HubFixture::start, &f);
  f.hub = &hub;
  std::vector<int> peers;
  on_reactor(r, [&] {
    hub.join(r);
    for (int i = 0; i < 3; ++i) hub.adopt(r, connected_socket(peers));
  });
  ASSERT_EQ(f.made.size(), 3u);
  EXPECT_TRUE(f.made[0]->closed);
  EXPECT_EQ(f.made[0]->reason, "evicted: too many connections not yet authenticated");
  EXPECT_FALSE(f.made[1]->closed);
  EXPECT_FALSE(f.made[2]->closed);
  EXPECT_EQ(hub.pre_auth().pending(), 2u);
  on_reactor(r, [&] {
    EXPECT_EQ(hub.find_here(f.made[1]->id()), f.made[1].get());
    EXPECT_EQ(hub.find_here(f.made[0]->id()), nullptr);  // closed: out of the table
    hub.stop(r, "stopping");
  });
  EXPECT_EQ(hub.wait_closed(1000), 0u);
  EXPECT_EQ(hub.pre_auth().pending(), 0u);
  for (int p : peers) ::close(p);
}

TEST(ConnectionHub, StopClosesOnlyItsOwnConnections) {
  Reactor r(0, 1 << 20);
  ASSERT_TRUE(r.init(64).ok());
  HubFixture fa, fb;
  ConnectionHub a(HubOptions{"a", 10, false, {}}, &HubFixture::start, &fa);
  ConnectionHub b(HubOptions{"b", 10, false, {}}, &HubFixture::start, &fb);
  fa.hub = &a;
  fb.hub = &b;
  std::vector<int> peers;
  on_reactor(r, [&] {
    a.join(r);
    b.join(r);
    a.adopt(r, connected_socket(peers));
    b.adopt(r, connected_socket(peers));
    a.stop(r, "a stops");
  });
  EXPECT_TRUE(fa.made[0]->closed);
  EXPECT_FALSE(fb.made[0]->closed);
  on_reactor(r, [&] { b.stop(r, "b stops"); });
  EXPECT_TRUE(fb.made[0]->closed);
  for (int p : peers) ::close(p);
}

// The management API's view: a published connection is listed with its counters from another
// thread, disconnect() closes it on its own reactor, and a closed one is listed no more.
TEST(ConnectionHub, PublishedSessionsAreListedAndDisconnectClosesOnTheirReactor) {
  Reactor r(0, 1 << 20);
  ASSERT_TRUE(r.init(64).ok());
  HubFixture f;
  ConnectionHub hub(HubOptions{"test", 10, false, {}}, &HubFixture::start, &f);
  f.hub = &hub;
  std::vector<int> peers;
  SessionCounters counters[2];
  on_reactor(r, [&] {
    hub.join(r);
    hub.adopt(r, connected_socket(peers));
    hub.adopt(r, connected_socket(peers));
    hub.adopt(r, connected_socket(peers));  // never published (still authenticating)
    for (int i = 0; i < 2; ++i) {
      SessionInfo info;
      info.protocol = "test";
      info.client = "client-" + std::to_string(i);
      hub.publish(f.made[size_t(i)].get(), std::move(info), &counters[i]);
    }
    SessionCounters::add(counters[1].commands, 3);
    SessionCounters::add(counters[1].bytes_read, 4096);
  });
  std::vector<SessionInfo> listed;
  std::thread other([&] { listed = hub.sessions(); });  // any thread
  other.join();
  ASSERT_EQ(listed.size(), 2u);
  EXPECT_EQ(listed[1].id, f.made[1]->id());
  EXPECT_EQ(listed[1].client, "client-1");
  EXPECT_EQ(listed[1].commands, 3u);
  EXPECT_EQ(listed[1].bytes_read, 4096u);
  EXPECT_GT(listed[1].since_unix_ms, 0u);
  EXPECT_FALSE(hub.disconnect(f.made[2]->id(), "x"));  // not published: not a session
  EXPECT_FALSE(hub.disconnect(999999, "x"));
  bool asked = false;
  std::thread admin([&] { asked = hub.disconnect(f.made[0]->id(), "disconnected by test"); });
  admin.join();
  EXPECT_TRUE(asked);
  EXPECT_FALSE(f.made[0]->closed);  // posted: closed by its reactor, not the asking thread
  on_reactor(r, [] {});
  EXPECT_TRUE(f.made[0]->closed);
  EXPECT_EQ(f.made[0]->reason, "disconnected by test");
  listed = hub.sessions();
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].id, f.made[1]->id());
  on_reactor(r, [&] { hub.stop(r, "stopping"); });
  EXPECT_EQ(hub.wait_closed(1000), 0u);
  EXPECT_TRUE(hub.sessions().empty());
  for (int p : peers) ::close(p);
}

}  // namespace
}  // namespace ferry
