// ControlInterface and MgmtServer: a reactor that does not answer yields no snapshot within the
// timeout (HTTP 503), and its late answer lands in shared state rather than a gone stack frame;
// a running one answers; the server refuses a missing or wrong token (401), names an unknown
// volume 404, and serves the snapshot's volume; token files that are short or readable by others
// are refused.
#include "mgmt/mgmt_server.h"

#include <gtest/gtest.h>
#include <httplib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <thread>

#include "datapath/reactor.h"
#include "mgmt/control.h"

namespace ferry::mgmt {
namespace {

class RunningReactor {
 public:
  RunningReactor() : reactor_(0, 16 << 20) {
    thread_ = std::thread([this] {
      ASSERT_TRUE(reactor_.init(64).ok());
      ready_ = true;
      reactor_.run();
    });
    while (!ready_) std::this_thread::yield();
  }
  ~RunningReactor() {
    reactor_.stop();
    thread_.join();
  }
  Reactor& reactor() { return reactor_; }

 private:
  Reactor reactor_;
  std::atomic<bool> ready_{false};
  std::thread thread_;
};

void collect_one_volume(GatewaySnapshot& s) {
  s.daemon = "target";
  VolumeSnapshot v;
  v.name = "lun0";
  v.stack = "ram:1MiB";
  v.size_bytes = 1 << 20;
  v.block_size_bytes = 512;
  v.stats.io.reads = 42;
  s.volumes.push_back(v);
}

TEST(ControlInterface, ReactorThatDoesNotAnswerTimesOut) {
  Reactor idle(0, 16 << 20);  // never runs: the posted collection waits in its queue
  std::atomic<int> collected{0};
  ControlInterface control(idle, [&](GatewaySnapshot&) { collected++; });
  GatewaySnapshot s;
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(control.snapshot(s, std::chrono::milliseconds(50)));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  EXPECT_EQ(collected.load(), 0);
}

TEST(ControlInterface, RunningReactorAnswersOnItsThread) {
  RunningReactor r;
  std::thread::id collected_on;
  ControlInterface control(r.reactor(), [&](GatewaySnapshot& s) {
    collected_on = std::this_thread::get_id();
    collect_one_volume(s);
  });
  GatewaySnapshot s;
  ASSERT_TRUE(control.snapshot(s, std::chrono::seconds(5)));
  ASSERT_EQ(s.volumes.size(), 1u);
  EXPECT_EQ(s.volumes[0].stats.io.reads, 42u);
  EXPECT_NE(collected_on, std::this_thread::get_id());
}

std::string write_token(const char* text, mode_t mode) {
  char path[] = "/tmp/ferry-token-test.XXXXXX";
  const int fd = mkstemp(path);
  EXPECT_GE(fd, 0);
  ::close(fd);
  std::ofstream(path) << text;
  chmod(path, mode);
  return path;
}

TEST(MgmtServer, TokenFileShortOrReadableByOthersRefused) {
  std::string token;
  const std::string good = write_token("  0123456789abcdef0123\n", 0600);
  EXPECT_EQ(MgmtServer::read_token_file(good, token), "");
  EXPECT_EQ(token, "0123456789abcdef0123");
  const std::string open = write_token("0123456789abcdef0123\n", 0644);
  EXPECT_NE(MgmtServer::read_token_file(open, token).find("readable by others"), std::string::npos);
  const std::string short_token = write_token("short\n", 0600);
  EXPECT_NE(MgmtServer::read_token_file(short_token, token).find("at least 16"), std::string::npos);
  EXPECT_NE(MgmtServer::read_token_file("/nonexistent/token", token), "");
  for (const auto& p : {good, open, short_token}) std::remove(p.c_str());
}

TEST(MgmtServer, AuthUnknownVolumeAndUnansweredReactor) {
  RunningReactor r;
  ControlInterface control(r.reactor(), collect_one_volume);
  MetricsRegistry registry;
  MgmtServer server(control, registry, "0123456789abcdef0123");
  ASSERT_EQ(server.start("127.0.0.1", 0), "");
  httplib::Client client("127.0.0.1", server.bound_port());
  const httplib::Headers good = {{"Authorization", "Bearer 0123456789abcdef0123"}};
  auto res = client.Get("/api/v1/volumes/lun0");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 401);
  EXPECT_EQ(res->get_header_value("WWW-Authenticate").rfind("Bearer", 0), 0u);
  res = client.Get("/api/v1/volumes/lun0", {{"Authorization", "Bearer 0123456789abcdef0124"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 401);
  res = client.Get("/api/v1/volumes/lun0", good);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_NE(res->body.find("\"reads\": 42"), std::string::npos) << res->body;
  res = client.Get("/api/v1/volumes/lun9", good);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
  res = client.Get("/api/v1/nothing", good);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
  res = client.Get("/metrics", good);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_NE(res->body.find("ferry_volume_ops_total{volume=\"lun0\",op=\"read\"} 42"),
            std::string::npos);
  server.stop();

  Reactor idle(1, 16 << 20);  // a reactor stuck elsewhere: /metrics answers 503 within the bound
  ControlInterface stuck(idle, collect_one_volume);
  MgmtServer server2(stuck, registry, "0123456789abcdef0123");
  ASSERT_EQ(server2.start("127.0.0.1", 0), "");
  httplib::Client client2("127.0.0.1", server2.bound_port());
  client2.set_read_timeout(10);
  res = client2.Get("/metrics", good);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 503);
}

TEST(MgmtServer, SetPolicyRunsOnTheReactorAndAnswers400For404And409) {
  RunningReactor r;
  std::thread::id handler_thread;
  journal::Policy got = journal::Policy::write_back;
  ControlInterface control(r.reactor(), collect_one_volume,
                           [&](const std::string& name, const ControlAction& a) {
                             const journal::Policy p = a.policy;
                             handler_thread = std::this_thread::get_id();
                             if (name != "lun0")
                               return ControlAnswer{ControlAnswer::Status::not_found, "no " + name};
                             if (p == journal::Policy::test_clone)
                               return ControlAnswer{ControlAnswer::Status::conflict, "refused"};
                             got = p;
                             return ControlAnswer{};
                           });
  MetricsRegistry registry;
  MgmtServer server(control, registry, "0123456789abcdef0123");
  ASSERT_EQ(server.start("127.0.0.1", 0), "");
  httplib::Client client("127.0.0.1", server.bound_port());
  const httplib::Headers good = {{"Authorization", "Bearer 0123456789abcdef0123"}};
  const char* path = "/api/v1/volumes/lun0/policy";
  auto res = client.Put(path, R"({"policy": "cloud-persist"})", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 401);
  EXPECT_EQ(got, journal::Policy::write_back) << "changed without a token";
  res = client.Put(path, good, R"({"policy": "cloud-persist"})", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(got, journal::Policy::cloud_persist);
  EXPECT_NE(handler_thread, std::this_thread::get_id());
  for (const char* bad : {"{", R"({"policy": "writeback"})", R"({"policy": 3})", "[]",
                          R"({"policy": "write-back", "extra": 1})"}) {
    res = client.Put(path, good, bad, "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 400) << bad;
    EXPECT_NE(res->body.find("\"error\""), std::string::npos);
  }
  res = client.Put(path, good, R"({"policy": "test-clone"})", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 409);
  EXPECT_NE(res->body.find("refused"), std::string::npos);
  res = client.Put("/api/v1/volumes/lun9/policy", good, R"({"policy": "write-back"})",
                   "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
  server.stop();

  ControlInterface without(r.reactor(), collect_one_volume);  // a daemon without journals
  MgmtServer server2(without, registry, "0123456789abcdef0123");
  ASSERT_EQ(server2.start("127.0.0.1", 0), "");
  httplib::Client client2("127.0.0.1", server2.bound_port());
  res = client2.Put(path, good, R"({"policy": "write-back"})", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 409);
}

TEST(MgmtServer, WriteBackPauseResumeFlushReachTheReactorAsActions) {
  RunningReactor r;
  std::vector<ControlAction::Kind> seen;
  ControlInterface control(r.reactor(), collect_one_volume,
                           [&](const std::string& name, const ControlAction& a) {
                             if (name != "lun0")
                               return ControlAnswer{ControlAnswer::Status::not_found, "no " + name};
                             seen.push_back(a.kind);
                             if (a.kind == ControlAction::Kind::flush_write_back)
                               return ControlAnswer{ControlAnswer::Status::conflict, "paused"};
                             return ControlAnswer{};
                           });
  MetricsRegistry registry;
  MgmtServer server(control, registry, "0123456789abcdef0123");
  ASSERT_EQ(server.start("127.0.0.1", 0), "");
  httplib::Client client("127.0.0.1", server.bound_port());
  const httplib::Headers good = {{"Authorization", "Bearer 0123456789abcdef0123"}};
  auto res = client.Post("/api/v1/volumes/lun0/write-back/pause", "", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 401);
  EXPECT_TRUE(seen.empty());
  res = client.Post("/api/v1/volumes/lun0/write-back/pause", good, "", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  res = client.Post("/api/v1/volumes/lun0/write-back/resume", good, "", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  res = client.Post("/api/v1/volumes/lun0/write-back/flush", good, "", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 409);
  res = client.Post("/api/v1/volumes/lun9/write-back/flush", good, "", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
  res = client.Post("/api/v1/volumes/lun0/write-back/stop", good, "", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404) << "no such endpoint";
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0], ControlAction::Kind::pause_write_back);
  EXPECT_EQ(seen[1], ControlAction::Kind::resume_write_back);
  EXPECT_EQ(seen[2], ControlAction::Kind::flush_write_back);
}

}  // namespace
}  // namespace ferry::mgmt
