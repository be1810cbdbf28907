// NbdClientDevice against real NBD servers started here (qemu-nbd on raw and VMDK images, nbdkit
// memory / file with its log, delay and cache filters) on free 127.0.0.1 ports or Unix sockets,
// each stopped by PID; reconnect tests kill a server and start a new one on the same port. The
// device runs on a Reactor on a test thread; the test thread submits through Reactor::post and
// waits (with a deadline: a hang aborts the run). Servers die with the test process
// (PR_SET_PDEATHSIG). Skips when qemu-nbd / qemu-img / nbdkit are missing.
#include "gateway/nbd/client_device.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "datapath/reactor.h"

namespace ferry::nbd {
namespace {

using namespace std::chrono_literals;

// ---- helpers: tools, ports, processes ----

bool have_tool(const char* name) {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return false;
  std::stringstream ss(path);
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    if (access((dir + "/" + name).c_str(), X_OK) == 0) return true;
  }
  return false;
}

uint16_t free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

bool can_connect_tcp(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  close(fd);
  return ok;
}

bool can_connect_unix(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  close(fd);
  return ok;
}

int run(const std::vector<std::string>& argv) {
  pid_t pid = fork();
  if (pid == 0) {
    int null = ::open("/dev/null", O_WRONLY);
    dup2(null, 1);
    dup2(null, 2);
    std::vector<char*> a;
    for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    execvp(a[0], a.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// A server process; stopped (SIGTERM, or SIGKILL if asked) and reaped by PID.
class ServerProcess {
 public:
  ServerProcess() = default;
  ServerProcess(const ServerProcess&) = delete;
  ~ServerProcess() { stop(SIGTERM); }

  // Starts argv; ready when `ready()` is true (≤ 10 s). false if it exited or never got ready.
  template <class Ready>
  bool start(const std::vector<std::string>& argv, const std::string& log_path, Ready ready) {
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      int out = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(out, 1);
      dup2(out, 2);
      std::vector<char*> a;
      for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
      a.push_back(nullptr);
      execvp(a[0], a.data());
      _exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      if (ready()) return true;
      std::this_thread::sleep_for(20ms);
    }
    return false;
  }
  void stop(int sig) {
    if (pid_ <= 0) return;
    kill(pid_, sig);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
};

// ---- helpers: a reactor on a thread ----

class ReactorThread {
 public:
  ReactorThread() : reactor_(0, 256ull << 20) {
    std::promise<bool> ready;
    auto f = ready.get_future();
    thread_ = std::thread([this, &ready] {
      if (!reactor_.init()) {
        ready.set_value(false);
        return;
      }
      ready.set_value(true);
      reactor_.run();
    });
    ok_ = f.get();
  }
  ~ReactorThread() {
    if (!ok_) {
      thread_.join();
      return;
    }
    // Let cancelled polls deliver their last CQEs, then stop.
    call([this] {
      reactor_.arm(
          stop_timer_, 30'000'000, [](void* r) noexcept { static_cast<Reactor*>(r)->stop(); },
          &reactor_);
    });
    thread_.join();
  }
  bool ok() const { return ok_; }
  Reactor& reactor() { return reactor_; }

  template <class F>
  void call(F&& f) {
    std::promise<void> done;
    reactor_.post([&] {
      f();
      done.set_value();
    });
    done.get_future().wait();
  }

 private:
  Reactor reactor_;
  Timer stop_timer_;
  std::thread thread_;
  bool ok_ = false;
};

// Waits for a batch of requests; aborts the run if they do not complete in time (a hang).
struct Batch {
  std::mutex mu;
  std::condition_variable cv;
  size_t done = 0;
  static void on_complete(IoRequest& r) noexcept {
    auto* b = static_cast<Batch*>(r.owner);
    std::lock_guard<std::mutex> lock(b->mu);
    ++b->done;
    b->cv.notify_all();
  }
  void wait(size_t n, std::chrono::milliseconds limit = 10s) {
    std::unique_lock<std::mutex> lock(mu);
    if (!cv.wait_for(lock, limit, [&] { return done >= n; })) {
      std::fprintf(stderr, "client_device_test: %zu of %zu requests never completed (hang)\n",
                   n - done, n);
      std::abort();
    }
  }
};

IoRequest make(IoOp op, uint64_t off, uint64_t len, void* data = nullptr) {
  IoRequest r;
  r.op = op;
  r.offset_bytes = off;
  r.length_bytes = len;
  r.data = static_cast<std::byte*>(data);
  return r;
}

// Submits on the reactor thread and waits.
Errc io(ReactorThread& rt, BlockDevice& dev, IoRequest& r) {
  Batch b;
  r.owner = &b;
  r.on_complete = &Batch::on_complete;
  rt.call([&] { dev.submit(r); });
  b.wait(1);
  return r.result;
}

Errc do_read(ReactorThread& rt, BlockDevice& dev, uint64_t off, void* buf, uint64_t len) {
  IoRequest r = make(IoOp::read, off, len, buf);
  return io(rt, dev, r);
}
Errc do_write(ReactorThread& rt, BlockDevice& dev, uint64_t off, const void* buf, uint64_t len,
              bool fua = false) {
  IoRequest r = make(IoOp::write, off, len, const_cast<void*>(buf));
  r.fua = fua;
  return io(rt, dev, r);
}
struct Status {
  Errc e;
  uint64_t length;
  uint32_t flags;
};
Status do_status(ReactorThread& rt, BlockDevice& dev, uint64_t off, uint64_t len) {
  IoRequest r = make(IoOp::block_status, off, len);
  Errc e = io(rt, dev, r);
  return {e, r.status_length_bytes, r.status_flags};
}

std::vector<char> pattern(size_t n, unsigned seed) {
  std::vector<char> v(n);
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; ++i) {
    x = x * 1103515245u + 12345u;
    v[i] = char(x >> 16);
  }
  return v;
}

bool all_zero(const char* p, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (p[i] != 0) return false;
  return true;
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/ferry-nbd-client-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { run({"rm", "-rf", path_}); }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A sparse raw image: `size` bytes with the given (offset, length) regions filled by pattern().
void make_sparse_raw(const std::string& path, uint64_t size,
                     const std::vector<std::pair<uint64_t, uint64_t>>& regions) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, off_t(size)), 0);
  unsigned seed = 1;
  for (auto [off, len] : regions) {
    auto data = pattern(len, seed++);
    ASSERT_EQ(pwrite(fd, data.data(), len, off_t(off)), ssize_t(len));
  }
  close(fd);
}

// "Read id=N offset=0x... count=0x..." lines of an nbdkit log filter file.
std::vector<std::pair<uint64_t, uint64_t>> nbdkit_reads(const std::string& log) {
  std::vector<std::pair<uint64_t, uint64_t>> v;
  std::ifstream in(log);
  std::string line;
  while (std::getline(in, line)) {
    auto p = line.find(" Read id=");
    if (p == std::string::npos) continue;
    auto o = line.find("offset=", p);
    auto c = line.find("count=", p);
    if (o == std::string::npos || c == std::string::npos) continue;
    v.emplace_back(std::stoull(line.substr(o + 7), nullptr, 16),
                   std::stoull(line.substr(c + 6), nullptr, 16));
  }
  return v;
}

#define REQUIRE_TOOLS(...)                                                       \
  do {                                                                           \
    for (const char* t : {__VA_ARGS__}) {                                        \
      if (!have_tool(t)) GTEST_SKIP() << t << " not installed (Debian package)"; \
    }                                                                            \
  } while (0)

TEST(NbdClientErrors, ErrnoTable) {
  EXPECT_EQ(nbd_errno_to_errc(0), Errc::ok);
  EXPECT_EQ(nbd_errno_to_errc(EIO), Errc::io_error);
  EXPECT_EQ(nbd_errno_to_errc(EPERM), Errc::write_protected);
  EXPECT_EQ(nbd_errno_to_errc(ENOSPC), Errc::no_space);
  EXPECT_EQ(nbd_errno_to_errc(EINVAL), Errc::invalid_argument);
  EXPECT_EQ(nbd_errno_to_errc(ENOTSUP), Errc::unsupported);
  EXPECT_EQ(nbd_errno_to_errc(ENOTCONN), Errc::closed);
  EXPECT_EQ(nbd_errno_to_errc(ESHUTDOWN), Errc::closed);
}

// ---- qemu-nbd ----

class QemuNbd : public ::testing::Test {
 protected:
  // Serves `image` with qemu-nbd on a free port; returns the URI ("" on failure).
  std::string serve(const std::string& image, const std::string& format,
                    std::vector<std::string> extra = {}) {
    const uint16_t port = free_port();
    std::vector<std::string> argv = {"qemu-nbd", "-f",        format, "-t",
                                     "-b",       "127.0.0.1", "-p",   std::to_string(port)};
    argv.insert(argv.end(), extra.begin(), extra.end());
    argv.push_back(image);
    if (!server_.start(argv, dir_ / "qemu-nbd.log", [&] { return can_connect_tcp(port); }))
      return "";
    return "nbd://127.0.0.1:" + std::to_string(port);
  }
  TempDir dir_;
  ServerProcess server_;
};

TEST_F(QemuNbd, RawReadWriteFlushTrimZeroRoundTrip) {
  REQUIRE_TOOLS("qemu-nbd");
  const uint64_t size = 64ull << 20;
  const std::string image = dir_ / "disk.raw";
  make_sparse_raw(image, size, {});
  const std::string uri = serve(image, "raw", {"--discard=unmap"});
  ASSERT_FALSE(uri.empty()) << "qemu-nbd did not start";
  ReactorThread rt;
  ASSERT_TRUE(rt.ok());
  auto dev = NbdClientDevice::open(uri, NbdClientOptions{});
  ASSERT_TRUE(dev.ok()) << to_string(dev.error());
  NbdClientDevice& d = **dev;
  const Geometry g = d.geometry();
  EXPECT_EQ(g.size_bytes(), size);
  EXPECT_EQ(g.block_size_bytes, 512u);
  EXPECT_FALSE(g.read_only);
  EXPECT_TRUE(g.can_discard);
  EXPECT_TRUE(g.volatile_cache);
  EXPECT_FALSE(d.multi_conn());  // qemu-nbd without -e N: one connection
  EXPECT_EQ(d.connection_count(), 1u);
  EXPECT_TRUE(d.has_base_allocation());

  auto out = pattern(1 << 20, 7);
  std::vector<char> in(1 << 20);
  ASSERT_EQ(do_write(rt, d, 4 << 20, out.data(), out.size()), Errc::ok);
  ASSERT_EQ(do_write(rt, d, 8 << 20, out.data(), 4096, /*fua=*/true), Errc::ok);
  ASSERT_EQ(do_read(rt, d, 4 << 20, in.data(), in.size()), Errc::ok);
  EXPECT_EQ(std::memcmp(in.data(), out.data(), out.size()), 0);
  IoRequest flush = make(IoOp::flush, 0, 0);
  ASSERT_EQ(io(rt, d, flush), Errc::ok);
  // The bytes are in the image file itself.
  {
    std::vector<char> file(out.size());
    int fd = ::open(image.c_str(), O_RDONLY);
    ASSERT_EQ(pread(fd, file.data(), file.size(), 4 << 20), ssize_t(file.size()));
    close(fd);
    EXPECT_EQ(std::memcmp(file.data(), out.data(), out.size()), 0);
  }
  // A 40 MiB write is cut into 32 MiB NBD commands.
  auto big = pattern(40 << 20, 9);
  std::vector<char> big_in(big.size());
  ASSERT_EQ(do_write(rt, d, 16 << 20, big.data(), big.size()), Errc::ok);
  ASSERT_EQ(do_read(rt, d, 16 << 20, big_in.data(), big_in.size()), Errc::ok);
  EXPECT_EQ(std::memcmp(big.data(), big_in.data(), big.size()), 0);

  // TRIM (qemu-nbd --discard=unmap punches the raw file) and WRITE_ZEROES.
  IoRequest trim = make(IoOp::discard, 4 << 20, 256 << 10);
  ASSERT_EQ(io(rt, d, trim), Errc::ok);
  IoRequest zero = make(IoOp::write_zeroes, (4 << 20) + (512 << 10), 128 << 10);
  ASSERT_EQ(io(rt, d, zero), Errc::ok);
  ASSERT_EQ(do_read(rt, d, 4 << 20, in.data(), in.size()), Errc::ok);
  EXPECT_TRUE(all_zero(in.data(), 256 << 10));
  EXPECT_EQ(std::memcmp(in.data() + (256 << 10), out.data() + (256 << 10), 256 << 10), 0);
  EXPECT_TRUE(all_zero(in.data() + (512 << 10), 128 << 10));
  EXPECT_EQ(std::memcmp(in.data() + (640 << 10), out.data() + (640 << 10), 384 << 10), 0);
  // After the zeroing the cache knows the range reads as zero (no server query).
  const uint64_t queries = d.stats().nbd_status_queries;
  Status s = do_status(rt, d, (4 << 20) + (512 << 10), 128 << 10);
  EXPECT_EQ(s.e, Errc::ok);
  EXPECT_TRUE(s.flags & kStatusZero);
  EXPECT_EQ(s.length, 128u << 10);
  EXPECT_EQ(d.stats().nbd_status_queries, queries);

  // Edge errors are answered locally.
  EXPECT_EQ(do_read(rt, d, size, in.data(), 512), Errc::out_of_range);
  EXPECT_EQ(do_read(rt, d, 100, in.data(), 512), Errc::invalid_argument);
  rt.call([&] { dev = Errc::cancelled; });  // destroy on the home thread
}

TEST_F(QemuNbd, BlockStatusOfSparseRawImageIsCached) {
  REQUIRE_TOOLS("qemu-nbd");
  const uint64_t size = 32ull << 20;
  const std::string image = dir_ / "sparse.raw";
  make_sparse_raw(image, size, {{0, 64 << 10}, {1 << 20, 192 << 10}, {8 << 20, 4096}});
  const std::string uri = serve(image, "raw");
  ASSERT_FALSE(uri.empty());
  ReactorThread rt;
  NbdClientOptions o;
  o.status_lookahead_bytes = size;
  auto dev = NbdClientDevice::open(uri, o);
  ASSERT_TRUE(dev.ok());
  NbdClientDevice& d = **dev;
  const uint32_t hz = kStatusHole | kStatusZero;
  struct Want {
    uint64_t off, len;
    uint64_t want_len;
    uint32_t want_flags;
  } wants[] = {
      {0, size, 64 << 10, 0},
      {64 << 10, size, (1 << 20) - (64 << 10), hz},
      {1 << 20, size, 192 << 10, 0},
      {(1 << 20) + (64 << 10), size, 128 << 10, 0},
      {(1 << 20) + (192 << 10), size, (8 << 20) - (1 << 20) - (192 << 10), hz},
      {8 << 20, size, 4096, 0},
      {(8 << 20) + 4096, size, size - (8 << 20) - 4096, hz},
      {2 << 20, 4096, 4096, hz},  // clipped to the request
  };
  for (const Want& w : wants) {
    Status s = do_status(rt, d, w.off, std::min(w.len, size - w.off));
    ASSERT_EQ(s.e, Errc::ok) << w.off;
    EXPECT_EQ(s.length, w.want_len) << w.off;
    EXPECT_EQ(s.flags, w.want_flags) << w.off;
  }
  // One query with a whole-device lookahead taught the cache everything.
  EXPECT_EQ(d.stats().nbd_status_queries, 1u);
  EXPECT_EQ(d.stats().status_cache_hits, std::size(wants) - 1);
  // A write updates the cache: the hole splits around it, still without asking the server.
  auto data = pattern(4096, 3);
  ASSERT_EQ(do_write(rt, d, 2 << 20, data.data(), data.size()), Errc::ok);
  Status s = do_status(rt, d, 2 << 20, size - (2 << 20));
  EXPECT_EQ(s.flags, 0u);
  EXPECT_EQ(s.length, 4096u);
  s = do_status(rt, d, (2 << 20) + 4096, size - (2 << 20) - 4096);
  EXPECT_EQ(s.flags, hz);
  EXPECT_EQ(s.length, (8u << 20) - (2u << 20) - 4096);
  EXPECT_EQ(d.stats().nbd_status_queries, 1u);
  rt.call([&] { dev = Errc::cancelled; });
}

TEST_F(QemuNbd, VmdkReadInSkipModeReadsOnlyAllocatedGrains) {
  REQUIRE_TOOLS("qemu-nbd", "qemu-img");
  const uint64_t size = 16ull << 20;
  const std::string raw = dir_ / "src.raw", vmdk = dir_ / "disk.vmdk";
  make_sparse_raw(raw, size, {{0, 64 << 10}, {3 << 20, 128 << 10}, {(12 << 20) + 4096, 8192}});
  ASSERT_EQ(run({"qemu-img", "convert", "-f", "raw", "-O", "vmdk", raw, vmdk}), 0);
  const std::string uri = serve(vmdk, "vmdk", {"-r"});
  ASSERT_FALSE(uri.empty());
  ReactorThread rt;
  NbdClientOptions o;
  o.skip_unallocated_reads = true;
  auto dev = NbdClientDevice::open(uri, o);
  ASSERT_TRUE(dev.ok());
  NbdClientDevice& d = **dev;
  EXPECT_TRUE(d.geometry().read_only);
  EXPECT_FALSE(d.geometry().can_discard);
  std::vector<char> whole(size), expect(size);
  for (uint64_t off = 0; off < size; off += 1 << 20) {
    ASSERT_EQ(do_read(rt, d, off, whole.data() + off, 1 << 20), Errc::ok) << off;
  }
  int fd = ::open(raw.c_str(), O_RDONLY);
  ASSERT_EQ(pread(fd, expect.data(), size, 0), ssize_t(size));
  close(fd);
  EXPECT_EQ(std::memcmp(whole.data(), expect.data(), size), 0);
  // Only the allocated grains (64 KiB each) crossed: 64K + 128K + 64K.
  EXPECT_LE(d.stats().nbd_read_bytes, 256u << 10);
  EXPECT_GE(d.stats().zero_filled_bytes, size - (256u << 10));
  EXPECT_EQ(d.stats().nbd_status_queries, 1u);  // 64 MiB lookahead covers the disk
  auto data = pattern(4096, 1);
  EXPECT_EQ(do_write(rt, d, 0, data.data(), data.size()), Errc::write_protected);
  rt.call([&] { dev = Errc::cancelled; });
}

TEST_F(QemuNbd, UnknownExportAndRefusedPortFailToOpen) {
  REQUIRE_TOOLS("qemu-nbd");
  const std::string image = dir_ / "x.raw";
  make_sparse_raw(image, 1 << 20, {});
  const std::string uri = serve(image, "raw", {"-x", "vol"});
  ASSERT_FALSE(uri.empty());
  EXPECT_TRUE(NbdClientDevice::open(uri + "/vol", {}).ok());
  auto bad = NbdClientDevice::open(uri + "/nope", {});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error(), Errc::not_found);
  auto refused = NbdClientDevice::open("nbd://127.0.0.1:" + std::to_string(free_port()), {});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error(), Errc::closed);
}

// ---- nbdkit ----

class Nbdkit : public ::testing::Test {
 protected:
  // nbdkit <filters...> memory size=... on a free port (or a Unix socket); returns the URI.
  std::string serve(std::vector<std::string> filters_and_plugin, bool unix_socket = false) {
    std::vector<std::string> argv = {"nbdkit", "-f", "--exit-with-parent"};
    std::function<bool()> ready;
    std::string uri;
    if (unix_socket) {
      const std::string sock = dir_ / "nbdkit.sock";
      argv.insert(argv.end(), {"-U", sock});
      ready = [sock] { return can_connect_unix(sock); };
      uri = "nbd+unix:///?socket=" + sock;
    } else {
      const uint16_t port = free_port();
      argv.insert(argv.end(), {"-i", "127.0.0.1", "-p", std::to_string(port)});
      ready = [port] { return can_connect_tcp(port); };
      uri = "nbd://127.0.0.1:" + std::to_string(port);
    }
    argv.insert(argv.end(), filters_and_plugin.begin(), filters_and_plugin.end());
    if (!server_.start(argv, dir_ / "nbdkit.out", ready)) return "";
    return uri;
  }
  // nbdkit on 127.0.0.1:port (a restart of a server on the port a device already uses).
  bool serve_on(uint16_t port, std::vector<std::string> filters_and_plugin) {
    std::vector<std::string> argv = {"nbdkit",    "-f", "--exit-with-parent", "-i",
                                     "127.0.0.1", "-p", std::to_string(port)};
    argv.insert(argv.end(), filters_and_plugin.begin(), filters_and_plugin.end());
    return server_.start(argv, dir_ / "nbdkit.out", [port] { return can_connect_tcp(port); });
  }
  TempDir dir_;
  ServerProcess server_;
};

TEST_F(Nbdkit, SkipModeNeverReadsHolesFromTheServer) {
  REQUIRE_TOOLS("nbdkit");
  const std::string log = dir_ / "requests.log";
  const std::string uri =
      serve({"--filter=log", "memory", "size=64M", "logfile=" + log}, /*unix_socket=*/true);
  ASSERT_FALSE(uri.empty());
  ReactorThread rt;
  // Writer: plain device fills two regions.
  auto writer = NbdClientDevice::open(uri, {});
  ASSERT_TRUE(writer.ok());
  auto a = pattern(64 << 10, 1), b = pattern(256 << 10, 2);
  ASSERT_EQ(do_write(rt, **writer, 1 << 20, a.data(), a.size()), Errc::ok);
  ASSERT_EQ(do_write(rt, **writer, 10 << 20, b.data(), b.size()), Errc::ok);
  const size_t reads_before = nbdkit_reads(log).size();
  EXPECT_EQ(reads_before, 0u);

  // Reader: a fresh device in skip mode reads 16 MiB.
  NbdClientOptions o;
  o.skip_unallocated_reads = true;
  o.connections = 1;
  auto reader = NbdClientDevice::open(uri, o);
  ASSERT_TRUE(reader.ok());
  NbdClientDevice& r = **reader;
  std::vector<char> buf(16 << 20);
  for (int pass = 0; pass < 2; ++pass) {
    for (uint64_t off = 0; off < buf.size(); off += 2 << 20) {
      ASSERT_EQ(do_read(rt, r, off, buf.data() + off, 2 << 20), Errc::ok);
    }
  }
  EXPECT_EQ(std::memcmp(buf.data() + (1 << 20), a.data(), a.size()), 0);
  EXPECT_EQ(std::memcmp(buf.data() + (10 << 20), b.data(), b.size()), 0);
  EXPECT_TRUE(all_zero(buf.data(), 1 << 20));
  EXPECT_TRUE(all_zero(buf.data() + (1 << 20) + a.size(), (9 << 20) - a.size()));
  EXPECT_TRUE(all_zero(buf.data() + (10 << 20) + b.size(), (6 << 20) - b.size()));

  // What the server saw: only reads overlapping the two written regions, each once.
  auto reads = nbdkit_reads(log);
  ASSERT_FALSE(reads.empty());
  uint64_t read_bytes = 0;
  for (auto [off, len] : reads) {
    const bool in_a = off < (1u << 20) + a.size() && off + len > (1u << 20);
    const bool in_b = off < (10u << 20) + b.size() && off + len > (10u << 20);
    EXPECT_TRUE(in_a || in_b) << "server read a hole at " << off << "+" << len;
    read_bytes += len;
  }
  EXPECT_LE(read_bytes, 2 * (a.size() + b.size()));  // memory plugin pages may round up
  EXPECT_EQ(read_bytes, r.stats().nbd_read_bytes);
  EXPECT_GE(r.stats().zero_filled_bytes, 2 * (16u << 20) - 2 * read_bytes);
  EXPECT_EQ(r.stats().nbd_status_queries, 1u);

  // Writes through the reader keep the cache honest: the new data is read, not zero filled.
  auto c = pattern(4096, 3);
  ASSERT_EQ(do_write(rt, r, 5 << 20, c.data(), c.size()), Errc::ok);
  std::vector<char> back(8192);
  ASSERT_EQ(do_read(rt, r, 5 << 20, back.data(), back.size()), Errc::ok);
  EXPECT_EQ(std::memcmp(back.data(), c.data(), c.size()), 0);
  EXPECT_TRUE(all_zero(back.data() + 4096, 4096));
  rt.call([&] {
    writer = Errc::cancelled;
    reader = Errc::cancelled;
  });
}

TEST_F(Nbdkit, TlsPskRoundTrip) {
  REQUIRE_TOOLS("nbdkit");
  const std::string keys = dir_ / "psk.keys";
  {
    std::ofstream f(keys);
    f << "ferry:" << std::string(64, 'a') << "\n";
  }
  chmod(keys.c_str(), 0600);
  const uint16_t port = free_port();
  std::vector<std::string> argv = {"nbdkit",
                                   "-f",
                                   "--exit-with-parent",
                                   "-i",
                                   "127.0.0.1",
                                   "-p",
                                   std::to_string(port),
                                   "--tls=require",
                                   "--tls-psk=" + keys,
                                   "memory",
                                   "size=16M"};
  ASSERT_TRUE(server_.start(argv, dir_ / "nbdkit.out", [&] { return can_connect_tcp(port); }));
  const std::string base = "127.0.0.1:" + std::to_string(port) + "/?tls-psk-file=" + keys;
  // Plain nbd:// is refused by a TLS-only server.
  EXPECT_FALSE(NbdClientDevice::open("nbd://" + base, {}).ok());
  ReactorThread rt;
  auto dev = NbdClientDevice::open("nbds://ferry@" + base, {});
  ASSERT_TRUE(dev.ok());
  // Many small replies in few TLS records: the ones gnutls buffers must still be processed.
  auto out = pattern(4 << 20, 4);
  ASSERT_EQ(do_write(rt, **dev, 0, out.data(), out.size()), Errc::ok);
  constexpr size_t kN = 256;
  std::vector<char> in(out.size());
  std::vector<IoRequest> reqs(kN);
  Batch b;
  for (size_t i = 0; i < kN; ++i) {
    reqs[i] = make(IoOp::read, i * 16384, 16384, in.data() + i * 16384);
    reqs[i].owner = &b;
    reqs[i].on_complete = &Batch::on_complete;
  }
  rt.call([&] {
    for (auto& r : reqs) (*dev)->submit(r);
  });
  b.wait(kN);
  for (auto& r : reqs) EXPECT_EQ(r.result, Errc::ok);
  EXPECT_EQ(in, out);
  Status s = do_status(rt, **dev, 8 << 20, 8 << 20);
  EXPECT_EQ(s.e, Errc::ok);
  EXPECT_EQ(s.flags, kStatusHole | kStatusZero);
  rt.call([&] { dev = Errc::cancelled; });
}

// Regression guard for the cache's coherence rule: a BLOCK_STATUS reply that the server
// computed before a write landed (and sent after the write completed) must not leave a "zero"
// claim over the written range. nbdkit's sh plugin makes that race deterministic: its extents
// method decides "hole" and then sleeps 400 ms while the write goes through.
TEST_F(Nbdkit, StaleBlockStatusReplyDoesNotHideAWrite) {
  REQUIRE_TOOLS("nbdkit", "dd");
  const std::string script = dir_ / "plugin.sh", disk = dir_ / "disk";
  make_sparse_raw(disk, 16 << 20, {});
  {
    std::ofstream f(script);
    f << "#!/bin/sh\n"
         "d="
      << (dir_ / "")
      << "\n"
         "case \"$1\" in\n"
         "  thread_model) echo parallel ;;\n"
         "  get_size) echo 16M ;;\n"
         "  can_write|can_extents|can_flush) exit 0 ;;\n"
         "  flush) ;;\n"
         "  pread) dd if=$d/disk iflag=skip_bytes,count_bytes skip=$4 count=$3 status=none ;;\n"
         "  pwrite) dd of=$d/disk oflag=seek_bytes conv=notrunc seek=$4 status=none &&"
         " touch $d/written ;;\n"
         "  extents) if [ -e $d/written ]; then echo '0 16M'; else\n"
         "             sleep 0.4; echo '0 16M hole,zero'; fi ;;\n"
         "  *) exit 2 ;;\n"
         "esac\n";
  }
  chmod(script.c_str(), 0755);
  const std::string uri = serve({"sh", script});
  ASSERT_FALSE(uri.empty());
  ReactorThread rt;
  NbdClientOptions o;
  o.skip_unallocated_reads = true;
  auto dev = NbdClientDevice::open(uri, o);
  ASSERT_TRUE(dev.ok());
  NbdClientDevice& d = **dev;
  auto data = pattern(4096, 8);
  IoRequest status = make(IoOp::block_status, 1 << 20, 1 << 20);
  IoRequest write = make(IoOp::write, 1 << 20, data.size(), data.data());
  Batch b;
  for (IoRequest* r : {&status, &write}) {
    r->owner = &b;
    r->on_complete = &Batch::on_complete;
  }
  rt.call([&] {
    d.submit(status);  // answered in 400 ms from the state before the write
    d.submit(write);   // completes long before that
  });
  b.wait(2);
  EXPECT_EQ(write.result, Errc::ok);
  EXPECT_EQ(status.result, Errc::ok);  // a racing query may answer either way
  std::vector<char> in(8192, 'x');
  ASSERT_EQ(do_read(rt, d, 1 << 20, in.data(), in.size()), Errc::ok);
  EXPECT_EQ(std::memcmp(in.data(), data.data(), data.size()), 0) << "write hidden by the cache";
  EXPECT_TRUE(all_zero(in.data() + 4096, 4096));
  rt.call([&] { dev = Errc::cancelled; });
}

TEST_F(Nbdkit, FallbacksWithoutWriteZeroesAndFua) {
  REQUIRE_TOOLS("nbdkit");
  const std::string uri = serve({"--filter=nozero", "--filter=fua", "memory", "size=16M",
                                 "zeromode=none"});  // fua filter default: no FUA
  ASSERT_FALSE(uri.empty());
  ReactorThread rt;
  auto dev = NbdClientDevice::open(uri, {});
  ASSERT_TRUE(dev.ok());
  NbdClientDevice& d = **dev;
  auto data = pattern(3 << 20, 2);
  ASSERT_EQ(do_write(rt, d, 0, data.data(), data.size(), /*fua=*/true), Errc::ok);
  EXPECT_EQ(d.stats().nbd_flushes, 1u);  // FUA emulated by a FLUSH
  IoRequest zero = make(IoOp::write_zeroes, 4096, (2 << 20) + 8192);
  ASSERT_EQ(io(rt, d, zero), Errc::ok);
  EXPECT_EQ(d.stats().nbd_zeroes, 0u);
  EXPECT_EQ(d.stats().nbd_writes, 1u + 3u);  // 1 MiB zero writes
  std::vector<char> in(data.size());
  ASSERT_EQ(do_read(rt, d, 0, in.data(), in.size()), Errc::ok);
  EXPECT_EQ(std::memcmp(in.data(), data.data(), 4096), 0);
  EXPECT_TRUE(all_zero(in.data() + 4096, (2 << 20) + 8192));
  const size_t tail = (2 << 20) + 12288;
  EXPECT_EQ(std::memcmp(in.data() + tail, data.data() + tail, data.size() - tail), 0);
  rt.call([&] { dev = Errc::cancelled; });
}

TEST_F(Nbdkit, MultiConnSpreadsRequestsAndBoundsTheQueue) {
  REQUIRE_TOOLS("nbdkit");
  const std::string uri = serve({"memory", "size=64M"});
  ASSERT_FALSE(uri.empty());
  ReactorThread rt;
  NbdClientOptions o;
  o.connections = 4;
  o.requests_in_flight_max = 4;
  auto dev = NbdClientDevice::open(uri, o);
  ASSERT_TRUE(dev.ok());
  NbdClientDevice& d = **dev;
  EXPECT_TRUE(d.multi_conn());
  ASSERT_EQ(d.connection_count(), 4u);

  constexpr size_t kN = 64, kLen = 64 << 10;
  std::vector<std::vector<char>> out(kN), in(kN, std::vector<char>(kLen));
  std::vector<IoRequest> reqs(kN);
  Batch wb;
  for (size_t i = 0; i < kN; ++i) {
    out[i] = pattern(kLen, unsigned(i + 10));
    reqs[i] = make(IoOp::write, i * kLen * 3, kLen, out[i].data());
    reqs[i].owner = &wb;
    reqs[i].on_complete = &Batch::on_complete;
  }
  rt.call([&] {
    for (auto& r : reqs) d.submit(r);
  });
  wb.wait(kN);
  for (auto& r : reqs) EXPECT_EQ(r.result, Errc::ok);
  EXPECT_GT(d.stats().queued, 0u);  // 16 slots for 64 requests
  Batch rb;
  for (size_t i = 0; i < kN; ++i) {
    reqs[i] = make(IoOp::read, i * kLen * 3, kLen, in[i].data());
    reqs[i].owner = &rb;
    reqs[i].on_complete = &Batch::on_complete;
  }
  rt.call([&] {
    for (auto& r : reqs) d.submit(r);
  });
  rb.wait(kN);
  for (size_t i = 0; i < kN; ++i) {
    EXPECT_EQ(reqs[i].result, Errc::ok);
    EXPECT_EQ(in[i], out[i]) << i;
  }
  for (size_t c = 0; c < 4; ++c) EXPECT_GT(d.requests_sent_on(c), 8u) << c;
  IoRequest flush = make(IoOp::flush, 0, 0);
  EXPECT_EQ(io(rt, d, flush), Errc::ok);

  // A tiny device: 1 connection × 1 in flight, 4 queued; 10 at once → 5 would_block.
  NbdClientOptions tiny;
  tiny.connections = 1;
  tiny.requests_in_flight_max = 1;
  tiny.requests_queued_max = 4;
  auto t = NbdClientDevice::open(uri, tiny);
  ASSERT_TRUE(t.ok());
  Batch tb;
  for (size_t i = 0; i < 10; ++i) {
    reqs[i] = make(IoOp::read, i * kLen, kLen, in[i].data());
    reqs[i].owner = &tb;
    reqs[i].on_complete = &Batch::on_complete;
  }
  rt.call([&] {
    for (size_t i = 0; i < 10; ++i) (*t)->submit(reqs[i]);
  });
  tb.wait(10);
  size_t ok = 0, blocked = 0;
  for (size_t i = 0; i < 10; ++i) {
    ok += reqs[i].result == Errc::ok;
    blocked += reqs[i].result == Errc::would_block;
  }
  EXPECT_EQ(ok, 5u);
  EXPECT_EQ(blocked, 5u);
  EXPECT_EQ((*t)->stats().would_block, 5u);
  rt.call([&] {
    dev = Errc::cancelled;
    t = Errc::cancelled;
  });
}

TEST_F(Nbdkit, SubmitFromAnotherReactorIsForwarded) {
  REQUIRE_TOOLS("nbdkit");
  const std::string uri = serve({"memory", "size=16M"});
  ASSERT_FALSE(uri.empty());
  ReactorThread home, other;
  auto dev = NbdClientDevice::open(uri, {});
  ASSERT_TRUE(dev.ok());
  auto out = pattern(8192, 5);
  std::vector<char> in(8192);
  ASSERT_EQ(do_write(home, **dev, 0, out.data(), out.size()), Errc::ok);  // binds home
  ASSERT_EQ(do_read(other, **dev, 0, in.data(), in.size()), Errc::ok);
  EXPECT_EQ(in, out);
  EXPECT_EQ((*dev)->stats().forwarded, 1u);
  EXPECT_EQ((*dev)->home(), &home.reactor());
  home.call([&] { dev = Errc::cancelled; });
}

// The source dies and never comes back: requests in flight and new ones wait for the reconnect
// (issue 15 item 6), then fail with closed once source_give_up_ms has passed — not at once
// (what this test checked before reconnecting existed) and not after the server's delay.
TEST_F(Nbdkit, SourceNeverBackFailsWaitingRequestsWithClosedAfterGiveUp) {
  REQUIRE_TOOLS("nbdkit");
  // Reads take 3 s at the server, so they are in flight when it dies.
  const std::string uri = serve({"--filter=delay", "memory", "size=16M", "rdelay=3"});
  ASSERT_FALSE(uri.empty());
  ReactorThread rt;
  NbdClientOptions o;
  o.connections = 2;
  o.source_give_up_ms = 1000;
  auto dev = NbdClientDevice::open(uri, o);
  ASSERT_TRUE(dev.ok());
  NbdClientDevice& d = **dev;
  ASSERT_EQ(d.connection_count(), 2u);
  auto data = pattern(4096, 1);
  ASSERT_EQ(do_write(rt, d, 0, data.data(), data.size()), Errc::ok);  // writes are not delayed

  std::vector<std::vector<char>> bufs(6, std::vector<char>(4096));
  std::vector<IoRequest> reqs(6);
  Batch b;
  for (size_t i = 0; i < reqs.size(); ++i) {
    reqs[i] = make(IoOp::read, i * 4096, 4096, bufs[i].data());
    reqs[i].owner = &b;
    reqs[i].on_complete = &Batch::on_complete;
  }
  const auto t0 = std::chrono::steady_clock::now();
  rt.call([&] {
    for (auto& r : reqs) d.submit(r);
  });
  std::this_thread::sleep_for(200ms);
  server_.stop(SIGKILL);
  b.wait(reqs.size(), 5s);
  const auto elapsed = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(elapsed, 1100ms) << "requests failed before the give-up time";
  EXPECT_LT(elapsed, 2900ms) << "requests waited for the server's delay instead of failing";
  for (auto& r : reqs) EXPECT_EQ(r.result, Errc::closed);
  size_t live = 1;
  rt.call([&] { live = d.live_connection_count(); });
  EXPECT_EQ(live, 0u);
  EXPECT_EQ(d.stats().connections_lost, 2u);
  // Past the give-up time, later requests fail at once.
  std::vector<char> buf(4096);
  const auto t1 = std::chrono::steady_clock::now();
  EXPECT_EQ(do_read(rt, d, 0, buf.data(), buf.size()), Errc::closed);
  EXPECT_EQ(do_write(rt, d, 0, buf.data(), buf.size()), Errc::closed);
  EXPECT_LT(std::chrono::steady_clock::now() - t1, 500ms);
  rt.call([&] { dev = Errc::cancelled; });
}

// The server dies while requests are being issued (before the reactor has seen the poll CQE):
// libnbd fails the commands from inside nbd_aio_pwrite; every request still completes once.
TEST_F(Nbdkit, ServerKilledWhileSubmitting) {
  REQUIRE_TOOLS("nbdkit");
  const std::string uri = serve({"memory", "size=16M"});
  ASSERT_FALSE(uri.empty());
  ReactorThread rt;
  NbdClientOptions o;
  o.connections = 1;
  o.source_give_up_ms = 500;  // the server does not come back
  auto dev = NbdClientDevice::open(uri, o);
  ASSERT_TRUE(dev.ok());
  NbdClientDevice& d = **dev;
  auto data = pattern(1 << 20, 6);
  ASSERT_EQ(do_write(rt, d, 0, data.data(), data.size()), Errc::ok);
  std::vector<IoRequest> reqs(16);
  Batch b;
  for (size_t i = 0; i < reqs.size(); ++i) {
    reqs[i] = make(IoOp::write, i * data.size() / 2, data.size() / 2, data.data());
    reqs[i].owner = &b;
    reqs[i].on_complete = &Batch::on_complete;
  }
  rt.call([&] {
    server_.stop(SIGKILL);
    for (auto& r : reqs) d.submit(r);
  });
  b.wait(reqs.size(), 5s);
  for (auto& r : reqs) EXPECT_EQ(r.result, Errc::closed);
  size_t live = 1;
  rt.call([&] { live = d.live_connection_count(); });
  EXPECT_EQ(live, 0u);
  rt.call([&] { dev = Errc::cancelled; });
}

// ---- reconnecting (issue 15 item 6) ----

std::vector<char> read_file(const std::string& path, uint64_t off, uint64_t len) {
  std::vector<char> v(len);
  int fd = ::open(path.c_str(), O_RDONLY);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(pread(fd, v.data(), len, off_t(off)), ssize_t(len));
  close(fd);
  return v;
}

// The source (nbdkit over a file) is killed -9 with reads and writes in flight and restarted on
// the same port 0.5 s later: every request completes ok after the reconnect, the data is right
// (in the file and read back), and both handles of a multi-conn device are up again.
TEST_F(Nbdkit, ServerRestartedWithIoInFlightResumes) {
  REQUIRE_TOOLS("nbdkit");
  const std::string disk = dir_ / "disk";
  make_sparse_raw(disk, 16 << 20, {});
  const uint16_t port = free_port();
  // Reads and writes take 2 s at the first server, so they are in flight when it dies.
  ASSERT_TRUE(serve_on(port, {"--filter=delay", "file", disk, "rdelay=2", "wdelay=2"}));
  const std::string uri = "nbd://127.0.0.1:" + std::to_string(port);
  ReactorThread rt;
  NbdClientOptions o;
  o.connections = 2;
  auto dev = NbdClientDevice::open(uri, o);
  ASSERT_TRUE(dev.ok());
  NbdClientDevice& d = **dev;
  ASSERT_EQ(d.connection_count(), 2u);
  const auto before = pattern(1 << 20, 21);
  ASSERT_EQ(do_write(rt, d, 0, before.data(), before.size()), Errc::ok);  // 2 s

  constexpr size_t kN = 8, kLen = 64 << 10;
  std::vector<std::vector<char>> out(kN), in(kN, std::vector<char>(kLen));
  std::vector<IoRequest> reqs(2 * kN);
  Batch b;
  for (size_t i = 0; i < kN; ++i) {
    out[i] = pattern(kLen, unsigned(100 + i));
    reqs[i] = make(IoOp::read, i * kLen, kLen, in[i].data());  // inside `before`
    reqs[kN + i] = make(IoOp::write, (4 << 20) + i * kLen, kLen, out[i].data());
  }
  for (auto& r : reqs) {
    r.owner = &b;
    r.on_complete = &Batch::on_complete;
  }
  rt.call([&] {
    for (auto& r : reqs) d.submit(r);
  });
  std::this_thread::sleep_for(300ms);
  server_.stop(SIGKILL);
  std::this_thread::sleep_for(500ms);
  ASSERT_TRUE(serve_on(port, {"file", disk}));  // back, without the delay
  b.wait(reqs.size(), 15s);
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(reqs[i].result, Errc::ok) << i;
  for (size_t i = 0; i < kN; ++i) {
    EXPECT_EQ(std::memcmp(in[i].data(), before.data() + i * kLen, kLen), 0) << i;
    std::vector<char> back(kLen);
    ASSERT_EQ(do_read(rt, d, (4 << 20) + i * kLen, back.data(), kLen), Errc::ok);
    EXPECT_EQ(back, out[i]) << i;
  }
  IoRequest flush = make(IoOp::flush, 0, 0);
  EXPECT_EQ(io(rt, d, flush), Errc::ok);
  for (size_t i = 0; i < kN; ++i) {
    EXPECT_EQ(read_file(disk, (4 << 20) + i * kLen, kLen), out[i]) << i;
  }
  size_t live = 0;
  for (int k = 0; k < 100 && live < 2; ++k) {  // the second handle may still be backing off
    rt.call([&] { live = d.live_connection_count(); });
    if (live < 2) std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(live, 2u);
  EXPECT_EQ(d.stats().connections_lost, 2u);
  EXPECT_EQ(d.stats().reconnects, 2u);
  EXPECT_GT(d.stats().requests_reissued, 0u);
  rt.call([&] { dev = Errc::cancelled; });
}

// What a FLUSH means across a restart: the server (nbdkit's cache filter in writeback mode:
// writes stay in the server process until a FLUSH) loses an acknowledged, unflushed write when
// it is killed. The next FLUSH after the reconnect must not succeed falsely: the device
// replays the write first, so the file holds it afterwards.
TEST_F(Nbdkit, FlushAfterRestartReplaysAcknowledgedUnflushedWrites) {
  REQUIRE_TOOLS("nbdkit");
  const std::string disk = dir_ / "disk";
  make_sparse_raw(disk, 16 << 20, {});
  const uint16_t port = free_port();
  const std::vector<std::string> args = {"--filter=cache", "file", disk, "cache=writeback"};
  ASSERT_TRUE(serve_on(port, args));
  ReactorThread rt;
  auto dev = NbdClientDevice::open("nbd://127.0.0.1:" + std::to_string(port), {});
  ASSERT_TRUE(dev.ok());
  NbdClientDevice& d = **dev;
  ASSERT_TRUE(d.geometry().volatile_cache);
  const auto a = pattern(64 << 10, 31), bdata = pattern(64 << 10, 32), c = pattern(4096, 33);
  ASSERT_EQ(do_write(rt, d, 0, a.data(), a.size()), Errc::ok);
  IoRequest flush = make(IoOp::flush, 0, 0);
  ASSERT_EQ(io(rt, d, flush), Errc::ok);
  ASSERT_EQ(read_file(disk, 0, a.size()), a) << "the flushed write is in the file";
  ASSERT_EQ(do_write(rt, d, 1 << 20, bdata.data(), bdata.size()), Errc::ok);  // acknowledged
  IoRequest zero = make(IoOp::write_zeroes, 32 << 10, 4096);                  // inside a, unflushed
  ASSERT_EQ(io(rt, d, zero), Errc::ok);
  ASSERT_EQ(do_write(rt, d, 2 << 20, c.data(), c.size(), /*fua=*/true), Errc::ok);  // stable
  server_.stop(SIGKILL);
  ASSERT_NE(read_file(disk, 1 << 20, bdata.size()), bdata)
      << "precondition: the killed server lost the unflushed write";
  ASSERT_TRUE(serve_on(port, args));
  IoRequest flush2 = make(IoOp::flush, 0, 0);
  EXPECT_EQ(io(rt, d, flush2), Errc::ok);
  EXPECT_EQ(read_file(disk, 1 << 20, bdata.size()), bdata) << "acknowledged write lost";
  auto head = read_file(disk, 0, a.size());
  EXPECT_TRUE(all_zero(head.data() + (32 << 10), 4096)) << "acknowledged write_zeroes lost";
  EXPECT_EQ(std::memcmp(head.data(), a.data(), 32 << 10), 0);
  EXPECT_EQ(read_file(disk, 2 << 20, c.size()), c);
  EXPECT_EQ(d.stats().writes_replayed, 2u);  // the write and the write_zeroes, not the FUA one
  size_t live = 0;
  for (int k = 0; k < 200 && live < d.connection_count(); ++k) {  // the others may still back off
    rt.call([&] { live = d.live_connection_count(); });
    if (live < d.connection_count()) std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(live, d.connection_count());  // every handle came back
  rt.call([&] { dev = Errc::cancelled; });
}

// Replay off (replay_bytes_max 0): the same loss cannot be repaired, so the first FLUSH after
// the reconnect fails with io_error — never a false success — and the one after it succeeds.
TEST_F(Nbdkit, FlushAfterRestartFailsWhenUnflushedWritesWereNotKept) {
  REQUIRE_TOOLS("nbdkit");
  const std::string disk = dir_ / "disk";
  make_sparse_raw(disk, 16 << 20, {});
  const uint16_t port = free_port();
  const std::vector<std::string> args = {"--filter=cache", "file", disk, "cache=writeback"};
  ASSERT_TRUE(serve_on(port, args));
  ReactorThread rt;
  NbdClientOptions o;
  o.replay_bytes_max = 0;
  auto dev = NbdClientDevice::open("nbd://127.0.0.1:" + std::to_string(port), o);
  ASSERT_TRUE(dev.ok());
  NbdClientDevice& d = **dev;
  const auto data = pattern(64 << 10, 51);
  ASSERT_EQ(do_write(rt, d, 1 << 20, data.data(), data.size()), Errc::ok);
  server_.stop(SIGKILL);
  ASSERT_TRUE(serve_on(port, args));
  IoRequest flush = make(IoOp::flush, 0, 0);
  EXPECT_EQ(io(rt, d, flush), Errc::io_error);
  IoRequest flush2 = make(IoOp::flush, 0, 0);
  EXPECT_EQ(io(rt, d, flush2), Errc::ok);
  EXPECT_EQ(d.stats().writes_replayed, 0u);
  rt.call([&] { dev = Errc::cancelled; });
}

// A source named by host name: libnbd resolves it inside nbd_aio_connect_uri with a blocking
// getaddrinfo, so a reconnect must run that call off the home reactor (issue 14) and still
// bring the handle back and serve requests; a literal URI never takes that path.
TEST_F(Nbdkit, ReconnectToAHostNameRunsTheLookupOffTheReactor) {
  REQUIRE_TOOLS("nbdkit");
  const uint16_t port = free_port();
  ASSERT_TRUE(serve_on(port, {"memory", "size=16M"}));
  ReactorThread rt;
  NbdClientOptions o;
  o.connections = 1;
  auto dev = NbdClientDevice::open("nbd://localhost:" + std::to_string(port), o);
  ASSERT_TRUE(dev.ok());
  NbdClientDevice& d = **dev;
  const auto data = pattern(4096, 61);
  ASSERT_EQ(do_write(rt, d, 0, data.data(), data.size()), Errc::ok);
  server_.stop(SIGKILL);
  ASSERT_TRUE(serve_on(port, {"memory", "size=16M"}));
  std::vector<char> buf(4096);
  EXPECT_EQ(do_read(rt, d, 0, buf.data(), buf.size()), Errc::ok);
  EXPECT_EQ(buf, data);  // the unflushed write was replayed to the new server first
  EXPECT_GE(d.stats().reconnects, 1u);
  EXPECT_GE(d.stats().connects_off_reactor, 1u);
  rt.call([&] { dev = Errc::cancelled; });

  // The same with a literal: no helper thread.
  const uint16_t port2 = free_port();
  ServerProcess second;
  ASSERT_TRUE(second.start({"nbdkit", "-f", "--exit-with-parent", "-i", "127.0.0.1", "-p",
                            std::to_string(port2), "memory", "size=16M"},
                           dir_ / "nbdkit2.out", [port2] { return can_connect_tcp(port2); }));
  auto literal = NbdClientDevice::open("nbd://127.0.0.1:" + std::to_string(port2), o);
  ASSERT_TRUE(literal.ok());
  second.stop(SIGKILL);
  ASSERT_TRUE(second.start({"nbdkit", "-f", "--exit-with-parent", "-i", "127.0.0.1", "-p",
                            std::to_string(port2), "memory", "size=16M"},
                           dir_ / "nbdkit2.out", [port2] { return can_connect_tcp(port2); }));
  EXPECT_EQ(do_read(rt, **literal, 0, buf.data(), buf.size()), Errc::ok);
  EXPECT_EQ((*literal)->stats().connects_off_reactor, 0u);
  rt.call([&] { literal = Errc::cancelled; });
}

// The source comes back with another size: nothing is served at the wrong geometry — waiting
// and later requests fail with io_error (logged once), no reconnect loop.
TEST_F(Nbdkit, SourceBackWithAnotherSizeFailsEverythingWithIoError) {
  REQUIRE_TOOLS("nbdkit");
  const uint16_t port = free_port();
  ASSERT_TRUE(serve_on(port, {"memory", "size=16M"}));
  ReactorThread rt;
  NbdClientOptions o;
  o.connections = 1;
  auto dev = NbdClientDevice::open("nbd://127.0.0.1:" + std::to_string(port), o);
  ASSERT_TRUE(dev.ok());
  NbdClientDevice& d = **dev;
  std::vector<char> buf(4096);
  ASSERT_EQ(do_read(rt, d, 0, buf.data(), buf.size()), Errc::ok);
  server_.stop(SIGKILL);
  ASSERT_TRUE(serve_on(port, {"memory", "size=32M"}));
  EXPECT_EQ(do_read(rt, d, 0, buf.data(), buf.size()), Errc::io_error);
  EXPECT_EQ(do_write(rt, d, 0, buf.data(), buf.size()), Errc::io_error);
  EXPECT_EQ(d.stats().reconnects, 0u);
  rt.call([&] { dev = Errc::cancelled; });
}

// dc-edge shutdown with the source hung (SIGSTOP-like: a 3 s delay): shutdown() completes the
// stuck read with closed at once, so its submitter can release what it holds; later submits
// answer closed.
TEST_F(Nbdkit, ShutdownCompletesRequestsStuckOnAHungServerWithClosed) {
  REQUIRE_TOOLS("nbdkit");
  const std::string uri = serve({"--filter=delay", "memory", "size=16M", "rdelay=3"});
  ASSERT_FALSE(uri.empty());
  ReactorThread rt;
  auto dev = NbdClientDevice::open(uri, {});
  ASSERT_TRUE(dev.ok());
  NbdClientDevice& d = **dev;
  std::vector<char> buf(4096);
  IoRequest req = make(IoOp::read, 0, buf.size(), buf.data());
  Batch b;
  req.owner = &b;
  req.on_complete = &Batch::on_complete;
  const auto t0 = std::chrono::steady_clock::now();
  rt.call([&] { d.submit(req); });
  rt.call([&] { d.shutdown(); });
  b.wait(1, 1s);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
  EXPECT_EQ(req.result, Errc::closed);
  EXPECT_EQ(do_read(rt, d, 0, buf.data(), buf.size()), Errc::closed);
  rt.call([&] { dev = Errc::cancelled; });
}

// A small replay budget: writes never wait long and never go unprotected — at half full an
// internal FLUSH frees the copies.
TEST_F(Nbdkit, ReplayCopiesAreBoundedByInternalFlushes) {
  REQUIRE_TOOLS("nbdkit");
  const std::string uri = serve({"memory", "size=16M"});
  ASSERT_FALSE(uri.empty());
  ReactorThread rt;
  NbdClientOptions o;
  o.connections = 1;
  o.replay_bytes_max = 256 << 10;
  auto dev = NbdClientDevice::open(uri, o);
  ASSERT_TRUE(dev.ok());
  NbdClientDevice& d = **dev;
  constexpr size_t kN = 64, kLen = 32 << 10;
  auto data = pattern(kLen, 41);
  std::vector<IoRequest> reqs(kN);
  Batch b;
  for (size_t i = 0; i < kN; ++i) {
    reqs[i] = make(IoOp::write, i * kLen, kLen, data.data());
    reqs[i].owner = &b;
    reqs[i].on_complete = &Batch::on_complete;
  }
  rt.call([&] {
    for (auto& r : reqs) d.submit(r);
  });
  b.wait(kN);
  for (auto& r : reqs) EXPECT_EQ(r.result, Errc::ok);
  EXPECT_GT(d.stats().internal_flushes, 2u);
  // A write larger than half the budget is sent with FUA instead of being copied.
  auto big = pattern(1 << 20, 42);
  const uint64_t flushes = d.stats().internal_flushes;
  ASSERT_EQ(do_write(rt, d, 8 << 20, big.data(), big.size()), Errc::ok);
  EXPECT_EQ(d.stats().internal_flushes, flushes);
  rt.call([&] { dev = Errc::cancelled; });
}

// Shutdown with the source not answering (issue 15 item 6: SIGTERM of a dc-edge whose source
// hung): destroying the device with a read in flight used to abort on an assertion. Now the
// read is abandoned: no crash, and its on_complete never runs (its Op is gone).
TEST_F(Nbdkit, DestroyWithReadInFlightToHungServerAbandonsIt) {
  REQUIRE_TOOLS("nbdkit");
  const std::string uri = serve({"--filter=delay", "memory", "size=16M", "rdelay=3"});
  ASSERT_FALSE(uri.empty());
  ReactorThread rt;
  NbdClientOptions o;
  o.connections = 1;
  auto dev = NbdClientDevice::open(uri, o);
  ASSERT_TRUE(dev.ok());
  NbdClientDevice& d = **dev;
  std::vector<char> buf(4096);
  IoRequest req = make(IoOp::read, 0, buf.size(), buf.data());
  Batch b;
  req.owner = &b;
  req.on_complete = &Batch::on_complete;
  rt.call([&] { d.submit(req); });
  rt.call([&] { dev = Errc::cancelled; });  // destroyed on its home thread, read in flight
  std::lock_guard<std::mutex> lock(b.mu);
  EXPECT_EQ(b.done, 0u) << "an abandoned request must not complete";
}

}  // namespace
}  // namespace ferry::nbd
