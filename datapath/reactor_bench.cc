// Micro-benchmarks of io_uring datapath choices, each driven by one Reactor that the benchmark
// thread runs (so the CPU time column is the reactor thread's, kernel work included):
//   (a) receive: one recv re-armed per completion into a pooled buffer (what iscsi::Connection
//       does) vs multishot recv over a provided-buffer ring; 48-byte PDUs and 48 + 4 KiB PDUs
//       sent back to back by a peer thread, over an AF_UNIX socketpair and loopback TCP;
//   (b) file I/O: registered (fixed) buffers vs plain buffers, 4 KiB random and 128 KiB
//       sequential reads and writes, on tmpfs (buffered) and on /tmp (O_DIRECT);
//   (c) send: one sendmsg gathering N PDUs (48 B header + 4 KiB data, N = 1, 16, 256), and
//       128 KiB payloads with sendmsg/send vs sendmsg_zc/send_zc; a peer thread drains TCP.
// Ownership: the benchmark thread owns the reactor, its ring, pool, buffers and every Operation;
// a peer thread owns only its socket loop. Every wait is bounded (kRunTimeoutNs, socket
// timeouts); teardown drains all in-flight operations before buffers go back to the pool.
// Results: perf/README.md, "Receive, registered buffers, send"; conclusions: datapath/DESIGN.md.
#include <arpa/inet.h>
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "datapath/reactor.h"

namespace ferry {
namespace {

constexpr uint64_t kNsPerMs = 1000000ull;
constexpr uint64_t kRunTimeoutNs = 5000 * kNsPerMs;  // one iteration or one drain, at most
constexpr uint64_t kPollNs = 10 * kNsPerMs;          // run_until's predicate check
constexpr int kPeerIoTimeoutMs = 20;                 // peer notices stop() within this
constexpr size_t kBhsBytes = 48;
constexpr uint64_t kPoolBytesMax = 256ull << 20;

uint64_t thread_cpu_ns() noexcept {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

uint64_t process_cpu_ns() noexcept {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

class Fd {
 public:
  Fd() noexcept = default;
  explicit Fd(int fd) noexcept : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = o.fd_;
      o.fd_ = -1;
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  void reset() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// ---------------------------------------------------------------- reactor helpers

// Runs the reactor on this thread until pred() holds or timeout_ns passes. Callbacks that make
// pred() true may call stop() to end the wait at once; otherwise a 10 ms poll timer notices.
template <class Pred>
bool run_until(Reactor& r, Pred pred, uint64_t timeout_ns) noexcept {
  struct Poll {
    Reactor* reactor;
    Pred* pred;
    uint64_t deadline_ns;
    bool timed_out = false;
    Timer timer;
  } poll{&r, &pred, Reactor::now_ns_fresh() + timeout_ns};
  struct Trampoline {  // Timer::Fn is a plain function pointer
    static void fire(void* context) noexcept {
      auto* p = static_cast<Poll*>(context);
      if ((*p->pred)()) {
        p->reactor->stop();
      } else if (Reactor::now_ns_fresh() >= p->deadline_ns) {
        p->timed_out = true;
        p->reactor->stop();
      } else {
        p->reactor->arm(p->timer, kPollNs, &Trampoline::fire, p);
      }
    }
  };
  r.arm(poll.timer, kPollNs, &Trampoline::fire, &poll);
  while (!pred() && !poll.timed_out) r.run();
  r.cancel(poll.timer);
  return pred();
}

// Counts completed units toward a target; the callback that reaches it stops the reactor.
struct Goal {
  explicit Goal(Reactor& r) noexcept : reactor(&r) {}
  Reactor* reactor;
  uint64_t done = 0;
  uint64_t target = 0;
  bool reached = true;
  bool failed = false;
  const char* why = nullptr;

  void add(uint64_t n) noexcept {
    done += n;
    if (!reached && done >= target) {
      reached = true;
      reactor->stop();
    }
  }
  void fail(const char* reason) noexcept {
    if (!failed) {
      failed = true;
      why = reason;
      reactor->stop();
    }
  }
  // Runs the reactor until n more units are done; false on failure or timeout.
  bool run_for(uint64_t n) noexcept {
    target = done + n;
    reached = done >= target;
    run_until(
        *reactor, [this] { return reached || failed; }, kRunTimeoutNs);
    return reached && !failed;
  }
};

// ---------------------------------------------------------------- sockets and peers

enum class Transport { unix_stream, tcp };

const char* to_string(Transport t) noexcept { return t == Transport::tcp ? "tcp" : "unix"; }

struct SocketPair {
  Fd reactor_side;  // accepted side: the target
  Fd peer_side;     // the initiator
};

bool make_socket_pair(Transport t, SocketPair& out) noexcept {
  if (t == Transport::unix_stream) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return false;
    out.reactor_side = Fd(sv[0]);
    out.peer_side = Fd(sv[1]);
  } else {
    Fd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!listener) return false;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return false;
    if (::listen(listener.get(), 1) != 0) return false;
    if (::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0) return false;
    Fd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!client) return false;
    if (::connect(client.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return false;
    Fd server(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!server) return false;
    int one = 1;
    ::setsockopt(server.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ::setsockopt(client.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    out.reactor_side = std::move(server);
    out.peer_side = std::move(client);
  }
  timeval tv{0, kPeerIoTimeoutMs * 1000};
  ::setsockopt(out.peer_side.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  ::setsockopt(out.peer_side.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return true;
}

// A peer thread running a socket loop until stop(); joined on destruction.
class Peer {
 public:
  Peer() = default;
  Peer(const Peer&) = delete;
  Peer& operator=(const Peer&) = delete;
  ~Peer() { stop(); }
  void start(std::function<void(const std::atomic<bool>&)> loop) {
    thread_ = std::thread([this, loop = std::move(loop)] { loop(stop_); });
  }
  void stop() noexcept {
    stop_.store(true, std::memory_order_relaxed);
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Sends `chunk` over and over (an initiator with many commands in flight).
void send_loop(int fd, const std::vector<uint8_t>& chunk, const std::atomic<bool>& stop) noexcept {
  size_t off = 0;
  while (!stop.load(std::memory_order_relaxed)) {
    ssize_t n = ::send(fd, chunk.data() + off, chunk.size() - off, MSG_NOSIGNAL);
    if (n > 0) {
      off += size_t(n);
      if (off == chunk.size()) off = 0;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      continue;  // timed out: look at stop
    } else {
      return;  // reactor side shut down
    }
  }
}

// Reads and drops everything (an initiator reading Data-In).
void drain_loop(int fd, const std::atomic<bool>& stop) noexcept {
  std::vector<uint8_t> buf(1 << 20);
  while (!stop.load(std::memory_order_relaxed)) {
    ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
    if (n > 0) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
    return;
  }
}

// ---------------------------------------------------------------- (a) receive

// 48-byte header (BHS-shaped: opcode in byte 0, DataSegmentLength in bytes 5..7) + data.
size_t message_bytes(const uint8_t* h) noexcept {
  const uint32_t dsl = uint32_t(h[5]) << 16 | uint32_t(h[6]) << 8 | uint32_t(h[7]);
  return kBhsBytes + ((dsl + 3) & ~3u);
}

std::vector<uint8_t> make_messages(size_t payload_bytes, size_t count) {
  std::vector<uint8_t> out((kBhsBytes + payload_bytes) * count, 0x5a);
  for (size_t i = 0; i < count; ++i) {
    uint8_t* h = out.data() + i * (kBhsBytes + payload_bytes);
    std::memset(h, 0, kBhsBytes);
    h[0] = payload_bytes > 0 ? 0x05 : 0x01;  // Data-Out : SCSI Command
    h[5] = uint8_t(payload_bytes >> 16);
    h[6] = uint8_t(payload_bytes >> 8);
    h[7] = uint8_t(payload_bytes);
  }
  return out;
}

// Walks complete messages in a contiguous span (reads each header, as frame_pdu does).
struct Framer {
  uint64_t messages = 0;
  uint64_t bytes = 0;
  uint64_t opcode_sum = 0;  // keeps the header reads observable

  size_t consume(const uint8_t* p, size_t n) noexcept {
    size_t pos = 0;
    while (n - pos >= kBhsBytes) {
      const size_t m = message_bytes(p + pos);
      if (n - pos < m) break;
      opcode_sum += p[pos] & 0x3f;
      pos += m;
      ++messages;
    }
    bytes += pos;
    return pos;
  }
};

struct RecvStats {
  uint64_t sqes = 0;
  uint64_t cqes = 0;  // completions that carried data
  uint64_t enobufs = 0;
  uint64_t staged_bytes = 0;  // copied to reassemble a message split across buffers
};

// Today's iscsi::Connection: one recv into the pooled receive buffer (sized for
// MaxRecvDataSegmentLength 256 KiB + 64 KiB of small PDUs), complete messages processed, the
// partial tail moved to the front, the recv re-armed.
class PooledRecv final : public Operation {
 public:
  static constexpr size_t kRxBytes = kBhsBytes + 1024 + 8 + (256 << 10) + (64 << 10);

  // recv_bytes_max caps one recv (0: the whole free space of the buffer, as today).
  PooledRecv(Reactor& r, int fd, Goal& goal, size_t recv_bytes_max) noexcept
      : reactor_(r),
        fd_(fd),
        goal_(goal),
        rx_(r.pool().allocate(kRxBytes)),
        recv_bytes_max_(recv_bytes_max) {}
  bool ok() const noexcept { return bool(rx_); }
  bool in_flight() const noexcept { return in_flight_; }
  void begin_drain() noexcept { draining_ = true; }
  const Framer& framer() const noexcept { return framer_; }
  const RecvStats& stats() const noexcept { return stats_; }

  void arm() noexcept {
    io_uring_sqe* sqe = reactor_.get_sqe();
    size_t len = rx_.capacity() - rx_len_;
    if (recv_bytes_max_ > 0) len = std::min(len, recv_bytes_max_);
    io_uring_prep_recv(sqe, fd_, rx_.data() + rx_len_, len, 0);
    Reactor::prepare(sqe, this);
    in_flight_ = true;
    ++stats_.sqes;
  }

  void on_cqe(int32_t res, uint32_t) noexcept override {
    in_flight_ = false;
    if (res <= 0) {
      if ((res == -EINTR || res == -EAGAIN) && !draining_) return arm();
      if (!draining_) goal_.fail("recv failed or peer closed");
      return;
    }
    ++stats_.cqes;
    rx_len_ += size_t(res);
    const uint64_t before = framer_.messages;
    const size_t used = framer_.consume(reinterpret_cast<const uint8_t*>(rx_.data()), rx_len_);
    if (used > 0) {
      std::memmove(rx_.data(), rx_.data() + used, rx_len_ - used);
      rx_len_ -= used;
    }
    if (!draining_) arm();
    goal_.add(framer_.messages - before);
  }

 private:
  Reactor& reactor_;
  int fd_;
  Goal& goal_;
  Buffer rx_;
  size_t recv_bytes_max_;
  size_t rx_len_ = 0;
  bool in_flight_ = false;
  bool draining_ = false;
  Framer framer_;
  RecvStats stats_;
};

// Multishot recv over a provided-buffer ring (liburing 2.3 has no io_uring_setup_buf_ring: the
// ring memory is mmapped and registered by hand). Each CQE names the buffer the kernel filled;
// complete messages are processed in place, a message split across buffers is copied into a
// staging buffer, and the buffer goes straight back to the ring.
class MultishotRecv final : public Operation {
 public:
  static constexpr uint16_t kGroupId = 1;
  static constexpr size_t kStageBytes = 8192;  // largest message: 48 + 4096

  MultishotRecv(Reactor& r, int fd, Goal& goal, size_t buf_bytes, unsigned entries) noexcept
      : reactor_(r),
        fd_(fd),
        goal_(goal),
        buf_bytes_(buf_bytes),
        entries_(entries),
        stage_(r.pool().allocate(kStageBytes)) {}
  MultishotRecv(const MultishotRecv&) = delete;
  MultishotRecv& operator=(const MultishotRecv&) = delete;
  ~MultishotRecv() {
    if (registered_) io_uring_unregister_buf_ring(reactor_.ring(), kGroupId);
    if (ring_mem_ != nullptr) ::munmap(ring_mem_, ring_mem_bytes_);
  }

  bool init() noexcept {
    if (!stage_) return false;
    const size_t page = size_t(::sysconf(_SC_PAGESIZE));
    ring_mem_bytes_ = (entries_ * sizeof(io_uring_buf) + page - 1) / page * page;
    void* mem = ::mmap(nullptr, ring_mem_bytes_, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return false;
    ring_mem_ = mem;
    br_ = static_cast<io_uring_buf_ring*>(mem);
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<uint64_t>(mem);
    reg.ring_entries = entries_;
    reg.bgid = kGroupId;
    if (io_uring_register_buf_ring(reactor_.ring(), &reg, 0) != 0) return false;
    registered_ = true;
    io_uring_buf_ring_init(br_);
    bufs_.reserve(entries_);
    for (unsigned i = 0; i < entries_; ++i) {
      bufs_.push_back(reactor_.pool().allocate(buf_bytes_));
      if (!bufs_.back()) return false;
      io_uring_buf_ring_add(br_, bufs_.back().data(), unsigned(buf_bytes_), uint16_t(i),
                            io_uring_buf_ring_mask(entries_), int(i));
    }
    io_uring_buf_ring_advance(br_, int(entries_));
    return true;
  }
  bool in_flight() const noexcept { return in_flight_; }
  void begin_drain() noexcept { draining_ = true; }
  const Framer& framer() const noexcept { return framer_; }
  const RecvStats& stats() const noexcept { return stats_; }

  void arm() noexcept {
    io_uring_sqe* sqe = reactor_.get_sqe();
    io_uring_prep_recv_multishot(sqe, fd_, nullptr, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = kGroupId;
    Reactor::prepare(sqe, this);
    in_flight_ = true;
    ++stats_.sqes;
  }

  void on_cqe(int32_t res, uint32_t flags) noexcept override {
    const bool more = (flags & IORING_CQE_F_MORE) != 0;
    if (!more) in_flight_ = false;
    const uint64_t before = framer_.messages;
    bool closed = false;
    if (res > 0) {
      FERRY_ASSERT(flags & IORING_CQE_F_BUFFER);
      const unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
      FERRY_ASSERT(bid < entries_);
      ++stats_.cqes;
      consume(reinterpret_cast<const uint8_t*>(bufs_[bid].data()), size_t(res));
      io_uring_buf_ring_add(br_, bufs_[bid].data(), unsigned(buf_bytes_), uint16_t(bid),
                            io_uring_buf_ring_mask(entries_), 0);
      io_uring_buf_ring_advance(br_, 1);
    } else if (res == -ENOBUFS) {
      ++stats_.enobufs;  // ring ran dry: the multishot ended, re-arm below
    } else if (res != -EINTR && res != -EAGAIN) {
      closed = true;
      if (!draining_) goal_.fail("multishot recv failed or peer closed");
    }
    if (!more && !draining_ && !closed) arm();
    goal_.add(framer_.messages - before);
  }

 private:
  void consume(const uint8_t* p, size_t n) noexcept {
    auto* stage = reinterpret_cast<uint8_t*>(stage_.data());
    if (stage_len_ > 0) {
      if (stage_len_ < kBhsBytes) {
        const size_t take = std::min(kBhsBytes - stage_len_, n);
        std::memcpy(stage + stage_len_, p, take);
        stage_len_ += take;
        stats_.staged_bytes += take;
        p += take;
        n -= take;
        if (stage_len_ < kBhsBytes) return;
      }
      const size_t m = message_bytes(stage);
      if (m > kStageBytes) return goal_.fail("message larger than the staging buffer");
      const size_t take = std::min(m - stage_len_, n);
      std::memcpy(stage + stage_len_, p, take);
      stage_len_ += take;
      stats_.staged_bytes += take;
      p += take;
      n -= take;
      if (stage_len_ < m) return;
      framer_.consume(stage, m);
      stage_len_ = 0;
    }
    const size_t used = framer_.consume(p, n);
    std::memcpy(stage, p + used, n - used);
    stage_len_ = n - used;
    stats_.staged_bytes += n - used;
  }

  Reactor& reactor_;
  int fd_;
  Goal& goal_;
  size_t buf_bytes_;
  unsigned entries_;
  Buffer stage_;
  size_t stage_len_ = 0;
  void* ring_mem_ = nullptr;
  size_t ring_mem_bytes_ = 0;
  io_uring_buf_ring* br_ = nullptr;
  bool registered_ = false;
  std::vector<Buffer> bufs_;
  bool in_flight_ = false;
  bool draining_ = false;
  Framer framer_;
  RecvStats stats_;
};

// Peer sends back-to-back messages; the reactor receives kIterationBytes worth per iteration.
template <class Receiver>
void run_recv(benchmark::State& state, Reactor& reactor, SocketPair& sp, Receiver& rx, Goal& goal,
              size_t payload_bytes) {
  constexpr size_t kChunkMessages = 32;
  constexpr size_t kIterationBytes = 1 << 20;
  const size_t msg_bytes = kBhsBytes + payload_bytes;
  const uint64_t per_iteration = std::max<uint64_t>(64, kIterationBytes / msg_bytes);
  const std::vector<uint8_t> chunk = make_messages(payload_bytes, kChunkMessages);
  Peer peer;
  const int peer_fd = sp.peer_side.get();
  peer.start([peer_fd, &chunk](const std::atomic<bool>& stop) { send_loop(peer_fd, chunk, stop); });
  rx.arm();

  const uint64_t msgs0 = rx.framer().messages, bytes0 = rx.framer().bytes;
  const RecvStats s0 = rx.stats();
  const uint64_t loops0 = reactor.stats().loops;
  const uint64_t cpu0 = thread_cpu_ns(), pcpu0 = process_cpu_ns();
  for (auto _ : state) {
    if (!goal.run_for(per_iteration)) {
      state.SkipWithError(goal.why != nullptr ? goal.why : "timed out");
      break;
    }
  }
  const uint64_t cpu_ns = thread_cpu_ns() - cpu0, pcpu_ns = process_cpu_ns() - pcpu0;
  const uint64_t msgs = rx.framer().messages - msgs0, bytes = rx.framer().bytes - bytes0;
  const uint64_t loops = reactor.stats().loops - loops0;
  const RecvStats& s = rx.stats();

  // Teardown: stop the sender, shut the socket so the receive ends, wait for its last CQE.
  peer.stop();
  rx.begin_drain();
  ::shutdown(sp.reactor_side.get(), SHUT_RDWR);
  if (!run_until(
          reactor, [&rx] { return !rx.in_flight(); }, kRunTimeoutNs)) {
    std::fprintf(stderr, "reactor_bench: receive did not drain; buffers still lent out\n");
    std::abort();
  }

  if (msgs == 0) return;
  state.SetBytesProcessed(int64_t(bytes));
  state.counters["msgs_per_s"] = benchmark::Counter(double(msgs), benchmark::Counter::kIsRate);
  state.counters["cpu_ns_per_msg"] = double(cpu_ns) / double(msgs);
  state.counters["proc_cpu_ns_per_msg"] = double(pcpu_ns) / double(msgs);  // + sender thread
  state.counters["bytes_per_cqe"] = double(bytes) / double(std::max<uint64_t>(1, s.cqes - s0.cqes));
  state.counters["sqes_per_kmsg"] = 1000.0 * double(s.sqes - s0.sqes) / double(msgs);
  state.counters["waits_per_kmsg"] = 1000.0 * double(loops) / double(msgs);  // ring waits
  state.counters["staged_pct"] = 100.0 * double(s.staged_bytes - s0.staged_bytes) / double(bytes);
  state.counters["enobufs"] = double(s.enobufs - s0.enobufs);
}

enum class RecvMode { pooled, multishot };

// ring_buf_bytes: multishot buffer size, or pooled recv cap (0: none).
void bm_recv(benchmark::State& state, Transport t, size_t payload_bytes, RecvMode mode,
             size_t ring_buf_bytes, unsigned ring_entries) {
  Reactor reactor(0, kPoolBytesMax);
  if (!reactor.init(256).ok()) return state.SkipWithError("reactor init failed");
  SocketPair sp;
  if (!make_socket_pair(t, sp)) return state.SkipWithError("socket pair failed");
  Goal goal(reactor);
  if (mode == RecvMode::pooled) {
    PooledRecv rx(reactor, sp.reactor_side.get(), goal, ring_buf_bytes);
    if (!rx.ok()) return state.SkipWithError("pool exhausted");
    run_recv(state, reactor, sp, rx, goal, payload_bytes);
  } else {
    MultishotRecv rx(reactor, sp.reactor_side.get(), goal, ring_buf_bytes, ring_entries);
    if (!rx.init()) return state.SkipWithError("buffer ring setup failed");
    run_recv(state, reactor, sp, rx, goal, payload_bytes);
  }
}

// ---------------------------------------------------------------- (b) file I/O

// One prefilled file per location, created on first use and unlinked at exit.
struct BenchFile {
  std::string path;
  Fd fd;
  uint64_t bytes = 0;
  bool direct = false;
  bool ok = false;

  BenchFile(const char* dir, uint64_t size_bytes, bool want_direct) {
    path = std::string(dir) + "/ferry_reactor_bench." + std::to_string(::getpid());
    Fd w(::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!w) return;
    std::vector<uint8_t> chunk(1 << 20, 0xa5);
    for (uint64_t off = 0; off < size_bytes; off += chunk.size()) {
      if (::pwrite(w.get(), chunk.data(), chunk.size(), off_t(off)) != ssize_t(chunk.size())) {
        return;
      }
    }
    ::fsync(w.get());
    bytes = size_bytes;
    if (want_direct) {
      fd = Fd(::open(path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC));
      direct = bool(fd);
    }
    if (!fd) fd = std::move(w);
    ok = true;
  }
  ~BenchFile() {
    if (!path.empty()) ::unlink(path.c_str());
  }
};

enum class FileLocation { shm, tmp_direct };

BenchFile& bench_file(FileLocation where) {
  if (where == FileLocation::shm) {
    static BenchFile f("/dev/shm", 256ull << 20, false);
    return f;
  }
  static BenchFile f("/tmp", 64ull << 20, true);
  return f;
}

struct FileIoShape {
  size_t io_bytes;
  bool random;
  bool write;
  unsigned queue_depth;
};

// queue_depth slots, each with its own pooled buffer (registered as fixed buffer `slot` when
// `fixed`); each completion resubmits its slot at the next offset.
class FileIo {
 public:
  FileIo(Reactor& r, const BenchFile& file, FileIoShape shape, bool fixed, Goal& goal) noexcept
      : reactor_(r), file_(file), shape_(shape), fixed_(fixed), goal_(goal) {}
  FileIo(const FileIo&) = delete;
  FileIo& operator=(const FileIo&) = delete;
  ~FileIo() {
    if (registered_) io_uring_unregister_buffers(reactor_.ring());
  }

  bool init() noexcept {
    slots_.resize(shape_.queue_depth);
    std::vector<iovec> iov;
    for (unsigned i = 0; i < shape_.queue_depth; ++i) {
      Slot& s = slots_[i];
      s.owner = this;
      s.index = i;
      s.buf = reactor_.pool().allocate(shape_.io_bytes);
      if (!s.buf) return false;
      std::memset(s.buf.data(), int(0x30 + i), shape_.io_bytes);
      iov.push_back({s.buf.data(), shape_.io_bytes});
    }
    if (fixed_) {
      if (io_uring_register_buffers(reactor_.ring(), iov.data(), unsigned(iov.size())) != 0) {
        return false;
      }
      registered_ = true;
    }
    return true;
  }
  void start() noexcept {
    for (unsigned i = 0; i < shape_.queue_depth; ++i) submit(i);
  }
  void begin_drain() noexcept { draining_ = true; }
  unsigned in_flight() const noexcept { return in_flight_; }

 private:
  struct Slot final : Operation {
    FileIo* owner = nullptr;
    unsigned index = 0;
    Buffer buf;
    void on_cqe(int32_t res, uint32_t) noexcept override { owner->on_done(index, res); }
  };

  uint64_t next_offset() noexcept {
    const uint64_t blocks = file_.bytes / shape_.io_bytes;
    if (shape_.random) {
      rng_ ^= rng_ << 13;
      rng_ ^= rng_ >> 7;
      rng_ ^= rng_ << 17;
      return (rng_ % blocks) * shape_.io_bytes;
    }
    const uint64_t off = seq_block_ * shape_.io_bytes;
    seq_block_ = (seq_block_ + 1) % blocks;
    return off;
  }

  void submit(unsigned i) noexcept {
    Slot& s = slots_[i];
    const uint64_t off = next_offset();
    const unsigned len = unsigned(shape_.io_bytes);
    io_uring_sqe* sqe = reactor_.get_sqe();
    if (shape_.write) {
      if (fixed_) {
        io_uring_prep_write_fixed(sqe, file_.fd.get(), s.buf.data(), len, off, int(i));
      } else {
        io_uring_prep_write(sqe, file_.fd.get(), s.buf.data(), len, off);
      }
    } else {
      if (fixed_) {
        io_uring_prep_read_fixed(sqe, file_.fd.get(), s.buf.data(), len, off, int(i));
      } else {
        io_uring_prep_read(sqe, file_.fd.get(), s.buf.data(), len, off);
      }
    }
    Reactor::prepare(sqe, &s);
    ++in_flight_;
  }

  void on_done(unsigned i, int32_t res) noexcept {
    --in_flight_;
    if (res != int32_t(shape_.io_bytes)) return goal_.fail("short or failed file I/O");
    if (!draining_) submit(i);
    goal_.add(1);
  }

  Reactor& reactor_;
  const BenchFile& file_;
  FileIoShape shape_;
  bool fixed_;
  Goal& goal_;
  std::vector<Slot> slots_;
  bool registered_ = false;
  bool draining_ = false;
  unsigned in_flight_ = 0;
  uint64_t rng_ = 0x9e3779b97f4a7c15ull;
  uint64_t seq_block_ = 0;
};

void bm_file(benchmark::State& state, FileLocation where, FileIoShape shape, bool fixed) {
  BenchFile& file = bench_file(where);
  if (!file.ok) return state.SkipWithError("cannot create the benchmark file");
  if (where == FileLocation::tmp_direct && !file.direct) {
    return state.SkipWithError("O_DIRECT not supported on /tmp");
  }
  Reactor reactor(0, kPoolBytesMax);
  if (!reactor.init(256).ok()) return state.SkipWithError("reactor init failed");
  Goal goal(reactor);
  {
    FileIo io(reactor, file, shape, fixed, goal);
    if (!io.init()) return state.SkipWithError("buffer allocation or registration failed");
    const uint64_t per_iteration = std::max<uint64_t>(16, (1u << 20) / shape.io_bytes);
    io.start();
    const uint64_t done0 = goal.done;
    const uint64_t cpu0 = thread_cpu_ns(), pcpu0 = process_cpu_ns();
    for (auto _ : state) {
      if (!goal.run_for(per_iteration)) {
        state.SkipWithError(goal.why != nullptr ? goal.why : "timed out");
        break;
      }
    }
    const uint64_t cpu_ns = thread_cpu_ns() - cpu0, pcpu_ns = process_cpu_ns() - pcpu0;
    const uint64_t ios = goal.done - done0;
    io.begin_drain();
    if (!run_until(
            reactor, [&io] { return io.in_flight() == 0; }, kRunTimeoutNs)) {
      std::fprintf(stderr, "reactor_bench: file I/O did not drain\n");
      std::abort();
    }
    if (ios == 0) return;
    state.SetBytesProcessed(int64_t(ios * shape.io_bytes));
    state.counters["iops"] = benchmark::Counter(double(ios), benchmark::Counter::kIsRate);
    state.counters["cpu_ns_per_io"] = double(cpu_ns) / double(ios);
    // Includes io-wq workers, should the kernel punt the I/O.
    state.counters["proc_cpu_ns_per_io"] = double(pcpu_ns) / double(ios);
  }
}

// ---------------------------------------------------------------- (c) send

// N PDUs (48-byte header in a TxPdu-sized record + 4 KiB data from the pool) per sendmsg, one
// sendmsg in flight, short sends resumed from the iovec where they stopped (as flush_tx does).
class GatherSend final : public Operation {
 public:
  struct TxRecord {  // header inline in a TxPdu-sized record, as iscsi::TxPdu holds it
    uint8_t bhs[kBhsBytes];
    uint8_t rest[192 - kBhsBytes];
  };

  GatherSend(Reactor& r, int fd, unsigned pdus, size_t data_bytes, Goal& goal) noexcept
      : reactor_(r), fd_(fd), pdus_(pdus), data_bytes_(data_bytes), goal_(goal) {}

  bool init() noexcept {
    records_.resize(pdus_);
    for (auto& rec : records_) std::memset(&rec, 0x11, sizeof rec);
    for (unsigned i = 0; i < pdus_; ++i) {
      data_.push_back(reactor_.pool().allocate(data_bytes_));
      if (!data_.back()) return false;
      std::memset(data_.back().data(), int(i), data_bytes_);
    }
    iov_.reserve(2 * pdus_);
    return true;
  }
  void start_batch() noexcept {
    iov_.clear();
    for (unsigned i = 0; i < pdus_; ++i) {
      iov_.push_back({records_[i].bhs, kBhsBytes});
      iov_.push_back({data_[i].data(), data_bytes_});
    }
    iov_pos_ = 0;
    submit();
  }
  void begin_drain() noexcept { draining_ = true; }
  bool in_flight() const noexcept { return in_flight_; }
  uint64_t calls() const noexcept { return calls_; }
  uint64_t bytes() const noexcept { return bytes_; }

  void on_cqe(int32_t res, uint32_t) noexcept override {
    in_flight_ = false;
    if (res < 0) return goal_.fail("sendmsg failed");
    bytes_ += uint64_t(res);
    size_t left = size_t(res);
    while (iov_pos_ < iov_.size() && left >= iov_[iov_pos_].iov_len) {
      left -= iov_[iov_pos_].iov_len;
      ++iov_pos_;
    }
    if (iov_pos_ < iov_.size()) {
      iov_[iov_pos_].iov_base = static_cast<char*>(iov_[iov_pos_].iov_base) + left;
      iov_[iov_pos_].iov_len -= left;
      return submit();
    }
    if (!draining_) start_batch();
    goal_.add(pdus_);
  }

 private:
  void submit() noexcept {
    msg_ = msghdr{};
    msg_.msg_iov = iov_.data() + iov_pos_;
    msg_.msg_iovlen = iov_.size() - iov_pos_;
    io_uring_sqe* sqe = reactor_.get_sqe();
    io_uring_prep_sendmsg(sqe, fd_, &msg_, MSG_NOSIGNAL);
    Reactor::prepare(sqe, this);
    in_flight_ = true;
    ++calls_;
  }

  Reactor& reactor_;
  int fd_;
  unsigned pdus_;
  size_t data_bytes_;
  Goal& goal_;
  std::vector<TxRecord> records_;
  std::vector<Buffer> data_;
  std::vector<iovec> iov_;
  size_t iov_pos_ = 0;
  msghdr msg_{};
  bool in_flight_ = false;
  bool draining_ = false;
  uint64_t calls_ = 0;
  uint64_t bytes_ = 0;
};

enum class LargeSendMode { sendmsg, sendmsg_zc, send, send_zc };

const char* to_string(LargeSendMode m) noexcept {
  switch (m) {
    case LargeSendMode::sendmsg:
      return "sendmsg";
    case LargeSendMode::sendmsg_zc:
      return "sendmsg_zc";
    case LargeSendMode::send:
      return "send";
    case LargeSendMode::send_zc:
      return "send_zc";
  }
  return "?";
}

// 128 KiB payloads (sendmsg modes add the 48-byte header as a first iovec) rotating over
// kSlots pooled buffers, one request in flight. A zero-copy slot is reused only after its
// notification CQE (IORING_CQE_F_NOTIF); the sender waits for it when the next slot is busy.
class LargeSend {
 public:
  static constexpr unsigned kSlots = 8;

  LargeSend(Reactor& r, int fd, LargeSendMode mode, size_t payload_bytes, Goal& goal) noexcept
      : reactor_(r), fd_(fd), mode_(mode), payload_bytes_(payload_bytes), goal_(goal) {}

  bool init() noexcept {
    for (unsigned i = 0; i < kSlots; ++i) {
      Slot& s = slots_[i];
      s.owner = this;
      s.index = i;
      s.buf = reactor_.pool().allocate(payload_bytes_);
      if (!s.buf) return false;
      std::memset(s.buf.data(), int(i), payload_bytes_);
      std::memset(s.bhs, 0x22, sizeof s.bhs);
    }
    return true;
  }
  void start() noexcept { start_slot(0); }
  void begin_drain() noexcept { draining_ = true; }
  bool idle() const noexcept {
    if (in_flight_) return false;
    for (const Slot& s : slots_)
      if (s.notifs_pending > 0) return false;
    return true;
  }
  uint64_t calls() const noexcept { return calls_; }
  uint64_t bytes() const noexcept { return bytes_; }
  uint64_t slot_waits() const noexcept { return slot_waits_; }

 private:
  struct Slot final : Operation {
    LargeSend* owner = nullptr;
    unsigned index = 0;
    Buffer buf;
    uint8_t bhs[kBhsBytes];
    iovec iov[2];
    unsigned iov_pos = 0;
    msghdr msg{};
    unsigned notifs_pending = 0;
    void on_cqe(int32_t res, uint32_t flags) noexcept override { owner->on_cqe(*this, res, flags); }
  };

  bool is_msg() const noexcept {
    return mode_ == LargeSendMode::sendmsg || mode_ == LargeSendMode::sendmsg_zc;
  }

  void start_slot(unsigned i) noexcept {
    Slot& s = slots_[i];
    current_ = i;
    if (s.notifs_pending > 0) {
      waiting_for_slot_ = true;  // the kernel still holds this buffer
      ++slot_waits_;
      return;
    }
    waiting_for_slot_ = false;
    s.iov_pos = 0;
    if (is_msg()) {
      s.iov[0] = {s.bhs, kBhsBytes};
      s.iov[1] = {s.buf.data(), payload_bytes_};
    } else {
      s.iov[0] = {s.buf.data(), payload_bytes_};
      s.iov[1] = {nullptr, 0};
    }
    submit(s);
  }

  void submit(Slot& s) noexcept {
    io_uring_sqe* sqe = reactor_.get_sqe();
    const unsigned iov_count = is_msg() ? 2 : 1;
    switch (mode_) {
      case LargeSendMode::sendmsg:
      case LargeSendMode::sendmsg_zc:
        s.msg = msghdr{};
        s.msg.msg_iov = s.iov + s.iov_pos;
        s.msg.msg_iovlen = iov_count - s.iov_pos;
        if (mode_ == LargeSendMode::sendmsg) {
          io_uring_prep_sendmsg(sqe, fd_, &s.msg, MSG_NOSIGNAL);
        } else {
          io_uring_prep_sendmsg_zc(sqe, fd_, &s.msg, MSG_NOSIGNAL);
        }
        break;
      case LargeSendMode::send:
        io_uring_prep_send(sqe, fd_, s.iov[0].iov_base, s.iov[0].iov_len, MSG_NOSIGNAL);
        break;
      case LargeSendMode::send_zc:
        io_uring_prep_send_zc(sqe, fd_, s.iov[0].iov_base, s.iov[0].iov_len, MSG_NOSIGNAL, 0);
        break;
    }
    Reactor::prepare(sqe, &s);
    in_flight_ = true;
    ++calls_;
  }

  void on_cqe(Slot& s, int32_t res, uint32_t flags) noexcept {
    if (flags & IORING_CQE_F_NOTIF) {
      FERRY_ASSERT(s.notifs_pending > 0);
      --s.notifs_pending;
      if (waiting_for_slot_ && s.index == current_ && s.notifs_pending == 0 && !draining_) {
        start_slot(current_);
      }
      return;
    }
    in_flight_ = false;
    if (flags & IORING_CQE_F_MORE) ++s.notifs_pending;  // a notification will follow
    if (res < 0) return goal_.fail("send failed");
    bytes_ += uint64_t(res);
    const unsigned iov_count = is_msg() ? 2 : 1;
    size_t left = size_t(res);
    while (s.iov_pos < iov_count && left >= s.iov[s.iov_pos].iov_len) {
      left -= s.iov[s.iov_pos].iov_len;
      ++s.iov_pos;
    }
    if (s.iov_pos < iov_count) {  // short send: the rest of this slot
      s.iov[s.iov_pos].iov_base = static_cast<char*>(s.iov[s.iov_pos].iov_base) + left;
      s.iov[s.iov_pos].iov_len -= left;
      return submit(s);
    }
    if (!draining_) start_slot((s.index + 1) % kSlots);
    goal_.add(1);
  }

  Reactor& reactor_;
  int fd_;
  LargeSendMode mode_;
  size_t payload_bytes_;
  Goal& goal_;
  Slot slots_[kSlots];
  unsigned current_ = 0;
  bool in_flight_ = false;
  bool waiting_for_slot_ = false;
  bool draining_ = false;
  uint64_t calls_ = 0;
  uint64_t bytes_ = 0;
  uint64_t slot_waits_ = 0;
};

// Shared send harness: a peer drains the socket; `units` per iteration; drain, then stop peer.
template <class Sender, class Start, class Idle>
void run_send(benchmark::State& state, Reactor& reactor, SocketPair& sp, Sender& tx, Goal& goal,
              uint64_t per_iteration, Start start, Idle idle, const char* unit_name) {
  Peer peer;
  const int peer_fd = sp.peer_side.get();
  peer.start([peer_fd](const std::atomic<bool>& stop) { drain_loop(peer_fd, stop); });
  start();
  const uint64_t units0 = goal.done, bytes0 = tx.bytes(), calls0 = tx.calls();
  const uint64_t loops0 = reactor.stats().loops;
  const uint64_t cpu0 = thread_cpu_ns(), pcpu0 = process_cpu_ns();
  for (auto _ : state) {
    if (!goal.run_for(per_iteration)) {
      state.SkipWithError(goal.why != nullptr ? goal.why : "timed out");
      break;
    }
  }
  const uint64_t cpu_ns = thread_cpu_ns() - cpu0, pcpu_ns = process_cpu_ns() - pcpu0;
  const uint64_t units = goal.done - units0, bytes = tx.bytes() - bytes0;
  const uint64_t calls = tx.calls() - calls0;
  const uint64_t loops = reactor.stats().loops - loops0;
  // Drain while the peer still reads; if that fails, shut the socket and try once more.
  tx.begin_drain();
  if (!run_until(reactor, idle, kRunTimeoutNs)) {
    ::shutdown(sp.reactor_side.get(), SHUT_RDWR);
    if (!run_until(reactor, idle, kRunTimeoutNs)) {
      std::fprintf(stderr, "reactor_bench: send did not drain\n");
      std::abort();
    }
  }
  peer.stop();
  if (units == 0) return;
  state.SetBytesProcessed(int64_t(bytes));
  state.counters[std::string(unit_name) + "_per_s"] =
      benchmark::Counter(double(units), benchmark::Counter::kIsRate);
  state.counters["cpu_ns_per_" + std::string(unit_name)] = double(cpu_ns) / double(units);
  state.counters["proc_cpu_ns_per_" + std::string(unit_name)] =  // + draining peer thread
      double(pcpu_ns) / double(units);
  state.counters["bytes_per_call"] = double(bytes) / double(std::max<uint64_t>(1, calls));
  state.counters["waits_per_" + std::string(unit_name)] = double(loops) / double(units);
}

void bm_send_gather(benchmark::State& state, unsigned pdus) {
  Reactor reactor(0, kPoolBytesMax);
  if (!reactor.init(256).ok()) return state.SkipWithError("reactor init failed");
  SocketPair sp;
  if (!make_socket_pair(Transport::tcp, sp)) return state.SkipWithError("socket pair failed");
  Goal goal(reactor);
  GatherSend tx(reactor, sp.reactor_side.get(), pdus, 4096, goal);
  if (!tx.init()) return state.SkipWithError("pool exhausted");
  run_send(
      state, reactor, sp, tx, goal, 256, [&tx] { tx.start_batch(); },
      [&tx] { return !tx.in_flight(); }, "pdu");
}

void bm_send_large(benchmark::State& state, LargeSendMode mode) {
  Reactor reactor(0, kPoolBytesMax);
  if (!reactor.init(256).ok()) return state.SkipWithError("reactor init failed");
  SocketPair sp;
  if (!make_socket_pair(Transport::tcp, sp)) return state.SkipWithError("socket pair failed");
  Goal goal(reactor);
  LargeSend tx(reactor, sp.reactor_side.get(), mode, 128 << 10, goal);
  if (!tx.init()) return state.SkipWithError("pool exhausted");
  run_send(
      state, reactor, sp, tx, goal, 8, [&tx] { tx.start(); }, [&tx] { return tx.idle(); }, "send");
  state.counters["slot_waits"] = double(tx.slot_waits());
}

// ---------------------------------------------------------------- registration

int register_all() {
  using benchmark::RegisterBenchmark;
  auto finish = [](benchmark::internal::Benchmark* b) {
    b->UseRealTime()->Unit(benchmark::kMicrosecond);
  };
  for (Transport t : {Transport::unix_stream, Transport::tcp}) {
    for (size_t payload : {size_t(0), size_t(4096)}) {
      const std::string base =
          std::string("recv/") + to_string(t) + "/msg" + std::to_string(kBhsBytes + payload) + "/";
      finish(RegisterBenchmark((base + "pooled_recv").c_str(), [=](benchmark::State& s) {
        bm_recv(s, t, payload, RecvMode::pooled, 0, 0);
      }));
      finish(RegisterBenchmark((base + "pooled_recv_cap64k").c_str(), [=](benchmark::State& s) {
        bm_recv(s, t, payload, RecvMode::pooled, 64 << 10, 0);
      }));
      finish(RegisterBenchmark((base + "multishot_4k_x256").c_str(), [=](benchmark::State& s) {
        bm_recv(s, t, payload, RecvMode::multishot, 4096, 256);
      }));
      finish(RegisterBenchmark((base + "multishot_64k_x64").c_str(), [=](benchmark::State& s) {
        bm_recv(s, t, payload, RecvMode::multishot, 64 << 10, 64);
      }));
    }
  }
  struct Workload {
    const char* name;
    FileIoShape shape;
  };
  const Workload workloads[] = {
      {"randread_4k_qd32", {4096, true, false, 32}},
      {"randwrite_4k_qd32", {4096, true, true, 32}},
      {"seqread_128k_qd8", {128 << 10, false, false, 8}},
      {"seqwrite_128k_qd8", {128 << 10, false, true, 8}},
  };
  for (FileLocation where : {FileLocation::shm, FileLocation::tmp_direct}) {
    for (const Workload& w : workloads) {
      for (bool fixed : {false, true}) {
        const std::string name = std::string("file/") +
                                 (where == FileLocation::shm ? "shm" : "tmp_odirect") + "/" +
                                 w.name + (fixed ? "/fixed" : "/plain");
        const FileIoShape shape = w.shape;
        finish(RegisterBenchmark(name.c_str(),
                                 [=](benchmark::State& s) { bm_file(s, where, shape, fixed); }));
      }
    }
  }
  for (unsigned pdus : {1u, 16u, 256u}) {
    const std::string name = "send/tcp/gather_4k/pdus_per_sendmsg:" + std::to_string(pdus);
    finish(RegisterBenchmark(name.c_str(), [=](benchmark::State& s) { bm_send_gather(s, pdus); }));
  }
  for (LargeSendMode m : {LargeSendMode::sendmsg, LargeSendMode::sendmsg_zc, LargeSendMode::send,
                          LargeSendMode::send_zc}) {
    const std::string name = std::string("send/tcp/128k/") + to_string(m);
    finish(RegisterBenchmark(name.c_str(), [=](benchmark::State& s) { bm_send_large(s, m); }));
  }
  return 0;
}

[[maybe_unused]] const int kRegistered = register_all();

}  // namespace
}  // namespace ferry
