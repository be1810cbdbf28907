// WAN emulator implementation (see wan_emulator.h for the model). One thread, one ppoll() loop:
//
//   ┌▶ now → cut transitions (log; reset mode: RST everything) → deliver due bytes (write)
//   │    → deadline = min(next arrival, queue room, next cut edge) → ppoll(fds, deadline)
//   └── read one chunk per readable source (rotating start: fair FIFO) ◀── accept ◀┘
//
// Connection ownership: WanEmulator owns every Connection; a Connection owns its two sockets
// and two Pipes (one per direction). A Pipe's ring holds bytes read from its source and not yet
// written to its destination: [out, due) have arrived (writable now), [due, in) are on the link.
// Marks record, per read, the link time at which those bytes arrive. Every buffer is bounded:
// ring capacity (conn_buffer_bytes), kMarksMax marks, and the shared queue per direction.
#include "perf/wan_emu/wan_emulator.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <new>

#include "datapath/assert.h"

namespace ferry::wan {

namespace {

constexpr uint64_t kNsPerS = 1000000000ull;
constexpr uint64_t kNsPerMs = 1000000ull;
constexpr size_t kMarksMax = 4096;  // reads in flight per pipe (like netem's packet limit)
constexpr uint64_t kChunkBytesMin = 1500;
constexpr uint64_t kChunkBytesMax = 64 * 1024;
constexpr uint64_t kNever = UINT64_MAX;

uint64_t monotonic_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * kNsPerS + uint64_t(ts.tv_nsec);
}

uint64_t splitmix64(uint64_t x) noexcept {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t round_up(uint64_t v, uint64_t to) noexcept { return (v + to - 1) / to * to; }

const char* dir_name(int dir) noexcept { return dir == 0 ? "client->target" : "target->client"; }

void set_nodelay(int fd) noexcept {
  int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// Close so that the peer sees RST, not FIN.
void close_with_rst(int fd) noexcept {
  if (fd < 0) return;
  linger lg{1, 0};
  (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  close(fd);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// CutSchedule

CutSchedule::CutSchedule(std::vector<CutWindow> windows) noexcept {
  std::sort(windows.begin(), windows.end(),
            [](const CutWindow& a, const CutWindow& b) { return a.start_ns < b.start_ns; });
  for (const CutWindow& w : windows) {
    if (w.length_ns == 0) continue;
    if (!windows_.empty()) {
      CutWindow& last = windows_.back();
      if (w.start_ns <= last.start_ns + last.length_ns) {  // overlapping or touching: merge
        uint64_t end = std::max(last.start_ns + last.length_ns, w.start_ns + w.length_ns);
        last.length_ns = end - last.start_ns;
        continue;
      }
    }
    windows_.push_back(w);
  }
}

uint64_t CutSchedule::link_time(uint64_t wall_ns) const noexcept {
  uint64_t cut_ns = 0;
  for (const CutWindow& w : windows_) {
    if (w.start_ns >= wall_ns) break;
    cut_ns += std::min(wall_ns, w.start_ns + w.length_ns) - w.start_ns;
  }
  return wall_ns - cut_ns;
}

uint64_t CutSchedule::wall_time(uint64_t link_ns) const noexcept {
  uint64_t t = link_ns;
  for (const CutWindow& w : windows_) {
    if (w.start_ns > t) break;
    t += w.length_ns;
  }
  return t;
}

int CutSchedule::cut_at(uint64_t wall_ns) const noexcept {
  for (size_t i = 0; i < windows_.size(); ++i) {
    const CutWindow& w = windows_[i];
    if (w.start_ns > wall_ns) break;
    if (wall_ns < w.start_ns + w.length_ns) return int(i);
  }
  return -1;
}

// ---------------------------------------------------------------------------------------------
// Jitter

Jitter::Jitter(uint64_t jitter_ns, uint64_t seed) noexcept
    : jitter_ns_(jitter_ns),
      seed_(seed),
      period_ns_(std::max<uint64_t>(10 * kNsPerMs, 4 * jitter_ns)) {}

int64_t Jitter::knot(uint64_t k) const noexcept {
  uint64_t h = splitmix64(seed_ ^ splitmix64(k));
  return int64_t(h % (2 * jitter_ns_ + 1)) - int64_t(jitter_ns_);
}

int64_t Jitter::at(uint64_t t_ns) const noexcept {
  if (jitter_ns_ == 0) return 0;
  uint64_t k = t_ns / period_ns_;
  double frac = double(t_ns % period_ns_) / double(period_ns_);
  int64_t v0 = knot(k), v1 = knot(k + 1);
  return v0 + int64_t(std::llround(double(v1 - v0) * frac));
}

// ---------------------------------------------------------------------------------------------
// LinkDirection

LinkDirection::LinkDirection(uint64_t rate_bits_per_s, uint64_t one_way_ns, uint64_t jitter_ns,
                             uint64_t seed, uint64_t queue_bytes_max) noexcept
    : rate_bits_per_s_(rate_bits_per_s),
      one_way_ns_(one_way_ns),
      jitter_(jitter_ns, seed),
      queue_ns_(0) {
  queue_ns_ = serialisation_ns(queue_bytes_max);
}

uint64_t LinkDirection::serialisation_ns(uint64_t bytes) const noexcept {
  if (rate_bits_per_s_ == 0) return 0;
  unsigned __int128 bits_ns = (unsigned __int128)bytes * 8 * kNsPerS;
  return uint64_t((bits_ns + rate_bits_per_s_ - 1) / rate_bits_per_s_);
}

uint64_t LinkDirection::arrival(uint64_t done_link_ns) noexcept {
  int64_t a = int64_t(done_link_ns) + int64_t(one_way_ns_) + jitter_.at(done_link_ns);
  uint64_t at = std::max<uint64_t>(uint64_t(std::max<int64_t>(a, 0)), done_link_ns);
  at = std::max(at, last_arrival_ns_);  // J has slope ≤ 1/2, so this only guards rounding
  last_arrival_ns_ = at;
  return at;
}

uint64_t LinkDirection::admit(uint64_t ready_link_ns, uint64_t bytes) noexcept {
  uint64_t start = std::max(ready_link_ns, free_at_ns_);
  free_at_ns_ = start + serialisation_ns(bytes);
  return arrival(free_at_ns_);
}

uint64_t LinkDirection::admit_fin(uint64_t now_link_ns) noexcept {
  return arrival(std::max(now_link_ns, free_at_ns_));
}

bool LinkDirection::has_room(uint64_t now_link_ns) const noexcept {
  return rate_bits_per_s_ == 0 || free_at_ns_ <= now_link_ns + queue_ns_;
}

uint64_t LinkDirection::room_at(uint64_t now_link_ns) const noexcept {
  if (has_room(now_link_ns)) return now_link_ns;
  return free_at_ns_ - queue_ns_;
}

uint64_t LinkDirection::queued_bytes(uint64_t now_link_ns) const noexcept {
  if (rate_bits_per_s_ == 0 || free_at_ns_ <= now_link_ns) return 0;
  unsigned __int128 b = (unsigned __int128)(free_at_ns_ - now_link_ns) * rate_bits_per_s_;
  return uint64_t(b / (8 * kNsPerS));
}

void LinkDirection::drop_all(uint64_t now_link_ns) noexcept {
  free_at_ns_ = std::min(free_at_ns_, now_link_ns);
  last_arrival_ns_ = 0;
}

// ---------------------------------------------------------------------------------------------
// Connections

struct Mark {
  uint64_t arrival_link_ns;
  uint64_t end_offset;  // Pipe::in after the read this mark records
  bool fin;
};

// One direction of one connection. Source is Connection::fd[dir], destination fd[1 - dir].
struct Pipe {
  std::unique_ptr<uint8_t[]> ring;  // allocated on first read
  std::unique_ptr<Mark[]> marks;
  size_t mark_head = 0;
  size_t mark_count = 0;
  uint64_t in = 0;             // bytes read from the source
  uint64_t due = 0;            // bytes arrived (writable)
  uint64_t out = 0;            // bytes written to the destination
  bool fin_read = false;       // source sent FIN
  bool fin_due = false;        // the FIN has crossed the link
  bool fin_sent = false;       // shutdown(SHUT_WR) done on the destination
  bool write_blocked = false;  // destination returned EAGAIN: wait for POLLOUT
  bool waiting_queue = false;
  bool waiting_buffer = false;
  // Bytes seen waiting in the source socket while the queue was full, and since when (link
  // time): they enter the link as of then (bounded by kCatchUpNsMax), not as of a late read.
  uint64_t pending_bytes = 0;
  uint64_t pending_since_link_ns = 0;
};

struct Connection {
  uint64_t id = 0;
  int fd[2] = {-1, -1};  // 0: client (accepted), 1: target (connected)
  bool connecting = true;
  bool dead = false;
  Pipe pipe[2];  // 0: up (client → target), 1: down (target → client)
};

WanEmulator::WanEmulator(WanConfig config) noexcept
    : config_(std::move(config)),
      cuts_(config_.cuts),
      links_{LinkDirection(0, 0, 0, 0, 0), LinkDirection(0, 0, 0, 0, 0)} {
  const uint64_t rate = config_.rate_bits_per_s;
  const uint64_t rate_bytes_per_s = rate / 8;
  const uint64_t one_way_ns = config_.rtt_ns / 2;
  chunk_bytes_max_ = rate == 0
                         ? kChunkBytesMax
                         : std::clamp(rate_bytes_per_s / 1000, kChunkBytesMin, kChunkBytesMax);
  queue_bytes_max_ = config_.queue_bytes_max;
  if (queue_bytes_max_ == 0)
    queue_bytes_max_ = std::max<uint64_t>(64 * 1024, rate_bytes_per_s * 5 / 1000);  // 5 ms
  conn_buffer_bytes_ = config_.conn_buffer_bytes;
  if (conn_buffer_bytes_ == 0) {
    if (rate == 0) {
      conn_buffer_bytes_ = 4ull << 20;
    } else {
      // Enough for one connection to fill the link: the queue, the bytes propagating, and
      // 10 ms of slack for arrived bytes not yet written when the loop wakes late.
      unsigned __int128 in_flight = (unsigned __int128)rate_bytes_per_s *
                                    (one_way_ns + config_.jitter_ns + 10 * kNsPerMs) / kNsPerS;
      conn_buffer_bytes_ = std::max<uint64_t>(
          256 * 1024,
          round_up(queue_bytes_max_ + uint64_t(in_flight) + 4 * chunk_bytes_max_, 4096));
    }
  }
  conn_buffer_bytes_ = std::max(conn_buffer_bytes_, chunk_bytes_max_);
  for (int d = 0; d < 2; ++d)
    links_[d] = LinkDirection(rate, one_way_ns, config_.jitter_ns,
                              splitmix64(config_.seed + uint64_t(d)), queue_bytes_max_);
}

WanEmulator::~WanEmulator() {
  for (auto& c : connections_) {
    if (c->dead) continue;
    close_with_rst(c->fd[0]);
    close_with_rst(c->fd[1]);
  }
  if (listen_fd_ >= 0) close(listen_fd_);
}

uint64_t WanEmulator::wall_now() const noexcept { return monotonic_ns() - origin_ns_; }

Result<void> WanEmulator::start() noexcept {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_family = AF_UNSPEC;
  addrinfo* res = nullptr;
  std::string port = std::to_string(config_.connect_port);
  int rc = getaddrinfo(config_.connect_host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) {
    std::fprintf(stderr, "wan-emu: cannot resolve --connect %s: %s\n", config_.connect_host.c_str(),
                 gai_strerror(rc));
    return Errc::invalid_argument;
  }
  target_addr_.assign(reinterpret_cast<uint8_t*>(res->ai_addr),
                      reinterpret_cast<uint8_t*>(res->ai_addr) + res->ai_addrlen);
  target_addr_len_ = uint32_t(res->ai_addrlen);
  target_family_ = res->ai_family;
  freeaddrinfo(res);

  hints.ai_flags = AI_PASSIVE;
  port = std::to_string(config_.listen_port);
  rc = getaddrinfo(config_.listen_host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) {
    std::fprintf(stderr, "wan-emu: cannot resolve --listen %s: %s\n", config_.listen_host.c_str(),
                 gai_strerror(rc));
    return Errc::invalid_argument;
  }
  listen_fd_ = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) {
    std::fprintf(stderr, "wan-emu: socket: %s\n", std::strerror(errno));
    freeaddrinfo(res);
    return Errc::io_error;
  }
  int one = 1;
  (void)setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(listen_fd_, res->ai_addr, res->ai_addrlen) != 0 || listen(listen_fd_, 128) != 0) {
    std::fprintf(stderr, "wan-emu: cannot listen on %s:%u: %s\n", config_.listen_host.c_str(),
                 unsigned(config_.listen_port), std::strerror(errno));
    freeaddrinfo(res);
    return Errc::io_error;
  }
  freeaddrinfo(res);

  sockaddr_storage bound{};
  socklen_t bound_len = sizeof(bound);
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&bound), &bound_len);
  char host[INET6_ADDRSTRLEN] = "?";
  uint16_t bound_port = 0;
  if (bound.ss_family == AF_INET) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&bound);
    inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
    bound_port = ntohs(sin->sin_port);
  } else if (bound.ss_family == AF_INET6) {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&bound);
    inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
    bound_port = ntohs(sin6->sin6_port);
  }
  origin_ns_ = monotonic_ns();
  char rate_text[48] = "unlimited";
  if (config_.rate_bits_per_s != 0)
    std::snprintf(rate_text, sizeof(rate_text), "%g Mbit/s", double(config_.rate_bits_per_s) / 1e6);
  std::fprintf(stderr,
               "wan-emu: rtt %g ms, jitter ±%g ms, rate %s, queue %" PRIu64 " KiB, chunk %" PRIu64
               " B, per-connection buffer %" PRIu64 " KiB, %zu cut(s), cut mode %s\n",
               double(config_.rtt_ns) / 1e6, double(config_.jitter_ns) / 1e6, rate_text,
               queue_bytes_max_ / 1024, chunk_bytes_max_, conn_buffer_bytes_ / 1024,
               cuts_.windows().size(), config_.cut_mode == CutMode::hold ? "hold" : "reset");
  std::fprintf(stderr, "wan-emu: listening on %s:%u\n", host, unsigned(bound_port));
  return {};
}

void WanEmulator::update_cuts(uint64_t now) noexcept {
  const auto& w = cuts_.windows();
  for (;;) {
    if (active_cut_ >= 0) {
      const CutWindow& cut = w[size_t(active_cut_)];
      if (now < cut.start_ns + cut.length_ns) break;
      std::fprintf(stderr, "wan-emu: cut %d: link up at t=%.3f s\n", active_cut_ + 1,
                   double(cut.start_ns + cut.length_ns) / 1e9);
      active_cut_ = -1;
      continue;
    }
    if (next_cut_ >= w.size() || w[next_cut_].start_ns > now) break;
    active_cut_ = int(next_cut_++);
    ++stats_.cuts_started;
    const CutWindow& cut = w[size_t(active_cut_)];
    std::fprintf(stderr, "wan-emu: cut %d: link down at t=%.3f s for %.3f s (%s)\n",
                 active_cut_ + 1, double(cut.start_ns) / 1e9, double(cut.length_ns) / 1e9,
                 config_.cut_mode == CutMode::hold ? "bytes held" : "connections reset");
    if (config_.cut_mode == CutMode::reset) reset_all();
  }
}

void WanEmulator::reset_all() noexcept {
  uint64_t n = 0;
  for (auto& c : connections_) {
    if (c->dead) continue;
    close_with_rst(c->fd[0]);
    close_with_rst(c->fd[1]);
    c->fd[0] = c->fd[1] = -1;
    c->dead = true;
    ++n;
  }
  stats_.connections_reset_by_cut += n;
  const uint64_t now_link = cuts_.link_time(wall_now());
  links_[0].drop_all(now_link);
  links_[1].drop_all(now_link);
  std::fprintf(stderr, "wan-emu: reset %" PRIu64 " connection(s)\n", n);
}

void WanEmulator::accept_connections() noexcept {
  while (connections_.size() < config_.connections_max) {
    int cfd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
        std::fprintf(stderr, "wan-emu: accept: %s\n", std::strerror(errno));
      return;
    }
    ++stats_.connections_accepted;
    set_nodelay(cfd);
    int tfd = socket(target_family_, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (tfd < 0) {
      std::fprintf(stderr, "wan-emu: socket: %s\n", std::strerror(errno));
      ++stats_.connect_failures;
      close_with_rst(cfd);
      return;
    }
    set_nodelay(tfd);
    auto c = std::make_unique<Connection>();
    c->id = next_id_++;
    c->fd[0] = cfd;
    c->fd[1] = tfd;
    int rc = connect(tfd, reinterpret_cast<const sockaddr*>(target_addr_.data()), target_addr_len_);
    if (rc == 0) {
      c->connecting = false;
    } else if (errno != EINPROGRESS) {
      std::fprintf(stderr, "wan-emu: connection %" PRIu64 ": connect to target: %s\n", c->id,
                   std::strerror(errno));
      ++stats_.connect_failures;
      close_with_rst(cfd);
      close(tfd);
      continue;
    }
    if (config_.verbose) std::fprintf(stderr, "wan-emu: connection %" PRIu64 " accepted\n", c->id);
    connections_.push_back(std::move(c));
  }
}

bool WanEmulator::can_read(const Connection& c, Pipe& p, int dir, uint64_t now_link) noexcept {
  if (c.dead || c.connecting || p.fin_read) return false;
  if (p.in - p.out >= conn_buffer_bytes_ || p.mark_count >= kMarksMax) {
    if (!p.waiting_buffer) ++(dir == 0 ? stats_.up : stats_.down).buffer_full_waits;
    p.waiting_buffer = true;
    return false;
  }
  p.waiting_buffer = false;
  if (!links_[dir].has_room(now_link)) {
    int avail = 0;
    if (p.pending_bytes == 0 && ioctl(c.fd[dir], FIONREAD, &avail) == 0 && avail > 0) {
      p.pending_bytes = uint64_t(avail);
      p.pending_since_link_ns = now_link;
    }
    if (!p.waiting_queue) ++(dir == 0 ? stats_.up : stats_.down).queue_full_waits;
    p.waiting_queue = true;
    return false;
  }
  p.waiting_queue = false;
  return true;
}

// Reads at most one chunk from the pipe's source. False if the connection died.
bool WanEmulator::read_into(Connection& c, Pipe& p, int dir, uint64_t now_link) noexcept {
  if (!can_read(c, p, dir, now_link)) return true;
  if (!p.ring) {
    p.ring.reset(new (std::nothrow) uint8_t[conn_buffer_bytes_]);
    p.marks.reset(new (std::nothrow) Mark[kMarksMax]);
    if (!p.ring || !p.marks) return false;  // out of memory: the connection is dropped
  }
  const uint64_t free_bytes = conn_buffer_bytes_ - (p.in - p.out);
  const uint64_t pos = p.in % conn_buffer_bytes_;
  const uint64_t len = std::min({chunk_bytes_max_, free_bytes, conn_buffer_bytes_ - pos});
  FERRY_ASSERT(len > 0);
  ssize_t n = recv(c.fd[dir], p.ring.get() + pos, len, MSG_DONTWAIT);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return true;
    abort_connection(c, std::strerror(errno));
    return false;
  }
  Mark m{};
  if (n == 0) {
    p.fin_read = true;
    m.arrival_link_ns = links_[dir].admit_fin(now_link);
    m.fin = true;
  } else {
    p.in += uint64_t(n);
    (dir == 0 ? stats_.up : stats_.down).bytes_read += uint64_t(n);
    uint64_t ready = now_link;
    if (p.pending_bytes > 0) {
      const uint64_t oldest = now_link > kCatchUpNsMax ? now_link - kCatchUpNsMax : 0;
      ready = std::max(p.pending_since_link_ns, oldest);
      p.pending_bytes -= std::min(p.pending_bytes, uint64_t(n));
    }
    m.arrival_link_ns = links_[dir].admit(ready, uint64_t(n));
  }
  m.end_offset = p.in;
  FERRY_ASSERT(p.mark_count < kMarksMax);
  p.marks[(p.mark_head + p.mark_count) % kMarksMax] = m;
  ++p.mark_count;
  return true;
}

// Moves arrived marks into [out, due) and writes what the destination takes.
void WanEmulator::deliver(Connection& c, Pipe& p, int dir, uint64_t now_link) noexcept {
  while (p.mark_count > 0 && p.marks[p.mark_head].arrival_link_ns <= now_link) {
    const Mark& m = p.marks[p.mark_head];
    p.due = m.end_offset;
    if (m.fin) p.fin_due = true;
    p.mark_head = (p.mark_head + 1) % kMarksMax;
    --p.mark_count;
  }
  if (!p.write_blocked && (p.out < p.due || (p.fin_due && !p.fin_sent))) (void)write_out(c, p, dir);
}

// Writes [out, due) to the destination; sends the FIN once everything before it is out.
// False if the connection died (closed or aborted).
bool WanEmulator::write_out(Connection& c, Pipe& p, int dir) noexcept {
  const int dst = c.fd[1 - dir];
  while (p.out < p.due) {
    const uint64_t pos = p.out % conn_buffer_bytes_;
    const uint64_t len = p.due - p.out;
    iovec iov[2];
    int iovcnt = 1;
    iov[0].iov_base = p.ring.get() + pos;
    iov[0].iov_len = std::min(len, conn_buffer_bytes_ - pos);
    if (iov[0].iov_len < len) {
      iov[1].iov_base = p.ring.get();
      iov[1].iov_len = len - iov[0].iov_len;
      iovcnt = 2;
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = size_t(iovcnt);
    ssize_t n = sendmsg(dst, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        p.write_blocked = true;
        return true;
      }
      abort_connection(c, std::strerror(errno));
      return false;
    }
    p.out += uint64_t(n);
    (dir == 0 ? stats_.up : stats_.down).bytes_delivered += uint64_t(n);
  }
  if (p.fin_due && !p.fin_sent && p.out == p.in) {
    (void)shutdown(dst, SHUT_WR);
    p.fin_sent = true;
    if (config_.verbose)
      std::fprintf(stderr, "wan-emu: connection %" PRIu64 ": %s FIN delivered\n", c.id,
                   dir_name(dir));
    if (c.pipe[0].fin_sent && c.pipe[1].fin_sent) {
      close_connection(c);
      return false;
    }
  }
  return true;
}

void WanEmulator::abort_connection(Connection& c, const char* why) noexcept {
  if (c.dead) return;
  if (config_.verbose)
    std::fprintf(stderr, "wan-emu: connection %" PRIu64 ": %s: reset both sides\n", c.id, why);
  close_with_rst(c.fd[0]);
  close_with_rst(c.fd[1]);
  c.fd[0] = c.fd[1] = -1;
  c.dead = true;
  ++stats_.connections_aborted;
}

void WanEmulator::close_connection(Connection& c) noexcept {
  if (c.dead) return;
  if (config_.verbose) std::fprintf(stderr, "wan-emu: connection %" PRIu64 " closed\n", c.id);
  close(c.fd[0]);
  close(c.fd[1]);
  c.fd[0] = c.fd[1] = -1;
  c.dead = true;
  ++stats_.connections_closed;
}

Result<void> WanEmulator::run(const volatile sig_atomic_t* stop,
                              const sigset_t* wait_mask) noexcept {
  std::vector<pollfd> pfds;
  std::vector<bool> polled_in;  // per pfd: POLLIN was asked (so a read is expected)
  while (!*stop) {
    uint64_t now = wall_now();
    update_cuts(now);
    uint64_t now_link = cuts_.link_time(now);

    for (auto& c : connections_)
      for (int d = 0; d < 2 && !c->dead; ++d)
        if (!c->connecting) deliver(*c, c->pipe[d], d, now_link);
    std::erase_if(connections_, [](const std::unique_ptr<Connection>& c) { return c->dead; });

    // Next thing that needs the clock: an arrival, a queue with room again, a cut edge.
    uint64_t deadline = kNever;
    for (auto& c : connections_)
      for (const Pipe& p : c->pipe)
        if (p.mark_count > 0)
          deadline = std::min(deadline, cuts_.wall_time(p.marks[p.mark_head].arrival_link_ns));
    for (const LinkDirection& l : links_)
      if (!l.has_room(now_link))
        deadline = std::min(deadline, cuts_.wall_time(l.room_at(now_link)));
    const auto& w = cuts_.windows();
    if (active_cut_ >= 0)
      deadline =
          std::min(deadline, w[size_t(active_cut_)].start_ns + w[size_t(active_cut_)].length_ns);
    else if (next_cut_ < w.size())
      deadline = std::min(deadline, w[next_cut_].start_ns);

    // Poll set: [0] listener (not during a cut: new connections wait in the backlog), then two
    // entries per connection (client, target).
    const size_t n = connections_.size();
    pfds.assign(1 + 2 * n, pollfd{-1, 0, 0});
    polled_in.assign(1 + 2 * n, false);
    if (active_cut_ < 0 && n < config_.connections_max) pfds[0] = {listen_fd_, POLLIN, 0};
    for (size_t i = 0; i < n; ++i) {
      Connection& c = *connections_[i];
      for (int s = 0; s < 2; ++s) {
        short ev = 0;
        if (c.connecting) {
          if (s == 1) ev = POLLOUT;
        } else {
          if (can_read(c, c.pipe[s], s, now_link)) ev |= POLLIN;
          if (c.pipe[1 - s].write_blocked) ev |= POLLOUT;  // that pipe writes to fd[s]
        }
        pollfd& pf = pfds[1 + 2 * i + size_t(s)];
        pf.fd = ev ? c.fd[s] : -1;
        pf.events = ev;
        polled_in[1 + 2 * i + size_t(s)] = (ev & POLLIN) != 0;
      }
    }

    timespec ts{};
    timespec* tsp = nullptr;
    if (deadline != kNever) {
      uint64_t t = wall_now();
      uint64_t wait = deadline > t ? deadline - t : 0;
      ts.tv_sec = time_t(wait / kNsPerS);
      ts.tv_nsec = long(wait % kNsPerS);
      tsp = &ts;
    }
    int rc = ppoll(pfds.data(), pfds.size(), tsp, wait_mask);
    if (rc < 0) {
      if (errno == EINTR) continue;
      std::fprintf(stderr, "wan-emu: ppoll: %s\n", std::strerror(errno));
      return Errc::io_error;
    }
    now = wall_now();
    if (deadline != kNever && now > deadline) {
      const uint64_t late = now - deadline;
      if (late > 2 * kNsPerMs) ++stats_.wakeups_late;
      stats_.wakeup_late_ns_max = std::max(stats_.wakeup_late_ns_max, late);
    }
    if (rc == 0) continue;
    update_cuts(now);  // a reset cut may have closed everything: entries are checked for dead
    now_link = cuts_.link_time(now);
    for (size_t k = 0; k < n; ++k) {
      const size_t i = (rotate_ + k) % n;
      Connection& c = *connections_[i];
      if (c.dead) continue;
      const short rev_client = pfds[1 + 2 * i].revents;
      const short rev_target = pfds[2 + 2 * i].revents;
      if (c.connecting) {
        if (rev_target == 0) continue;
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(c.fd[1], SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
          std::fprintf(stderr, "wan-emu: connection %" PRIu64 ": connect to target: %s\n", c.id,
                       std::strerror(err));
          ++stats_.connect_failures;
          abort_connection(c, "connect failed");
          continue;
        }
        c.connecting = false;
        continue;
      }
      for (int s = 0; s < 2 && !c.dead; ++s) {
        const short rev = s == 0 ? rev_client : rev_target;
        if (rev == 0) continue;
        Pipe& into_s = c.pipe[1 - s];  // the pipe whose destination is fd[s]
        if ((rev & (POLLOUT | POLLERR | POLLHUP)) && into_s.write_blocked) {
          into_s.write_blocked = false;
          if (!write_out(c, into_s, 1 - s)) break;
        }
        if ((rev & (POLLIN | POLLERR | POLLHUP)) && polled_in[1 + 2 * i + size_t(s)]) {
          if (!read_into(c, c.pipe[s], s, now_link)) break;
        }
      }
    }
    rotate_ = n ? (rotate_ + 1) % n : 0;
    if ((pfds[0].revents & POLLIN) && active_cut_ < 0) accept_connections();
  }
  return {};
}

std::string WanEmulator::stats_line() const {
  char buf[512];
  std::snprintf(
      buf, sizeof(buf),
      "client->target %" PRIu64 " bytes delivered (%" PRIu64 " read), target->client %" PRIu64
      " bytes delivered (%" PRIu64 " read); connections %" PRIu64 " (closed %" PRIu64
      ", aborted %" PRIu64 ", reset by cut %" PRIu64 ", connect failures %" PRIu64
      "); cuts %" PRIu64 "; late wake-ups %" PRIu64 " (max %.1f ms)",
      stats_.up.bytes_delivered, stats_.up.bytes_read, stats_.down.bytes_delivered,
      stats_.down.bytes_read, stats_.connections_accepted, stats_.connections_closed,
      stats_.connections_aborted, stats_.connections_reset_by_cut, stats_.connect_failures,
      stats_.cuts_started, stats_.wakeups_late, double(stats_.wakeup_late_ns_max) / 1e6);
  return buf;
}

void WanEmulator::write_stats_file() const noexcept {
  if (config_.stats_file.empty()) return;
  const std::string tmp = config_.stats_file + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (!f) {
    std::fprintf(stderr, "wan-emu: cannot write %s: %s\n", tmp.c_str(), std::strerror(errno));
    return;
  }
  auto dir = [&](const char* name, const DirectionStats& d, const char* sep) {
    std::fprintf(f,
                 "  \"%s\": {\"bytes_read\": %" PRIu64 ", \"bytes_delivered\": %" PRIu64
                 ", \"queue_full_waits\": %" PRIu64 ", \"buffer_full_waits\": %" PRIu64 "}%s\n",
                 name, d.bytes_read, d.bytes_delivered, d.queue_full_waits, d.buffer_full_waits,
                 sep);
  };
  std::fprintf(f, "{\n");
  dir("client_to_target", stats_.up, ",");
  dir("target_to_client", stats_.down, ",");
  std::fprintf(f,
               "  \"connections_accepted\": %" PRIu64 ",\n  \"connections_closed\": %" PRIu64
               ",\n  \"connections_aborted\": %" PRIu64
               ",\n  \"connections_reset_by_cut\": %" PRIu64 ",\n  \"connect_failures\": %" PRIu64
               ",\n  \"cuts_started\": %" PRIu64 ",\n  \"wakeups_late\": %" PRIu64
               ",\n  \"wakeup_late_ns_max\": %" PRIu64 ",\n",
               stats_.connections_accepted, stats_.connections_closed, stats_.connections_aborted,
               stats_.connections_reset_by_cut, stats_.connect_failures, stats_.cuts_started,
               stats_.wakeups_late, stats_.wakeup_late_ns_max);
  std::fprintf(f,
               "  \"config\": {\"rtt_ns\": %" PRIu64 ", \"jitter_ns\": %" PRIu64
               ", \"rate_bits_per_s\": %" PRIu64 ", \"queue_bytes_max\": %" PRIu64
               ", \"conn_buffer_bytes\": %" PRIu64 "}\n}\n",
               config_.rtt_ns, config_.jitter_ns, config_.rate_bits_per_s, queue_bytes_max_,
               conn_buffer_bytes_);
  const bool good = std::fflush(f) == 0 && fsync(fileno(f)) == 0;
  std::fclose(f);
  if (!good || std::rename(tmp.c_str(), config_.stats_file.c_str()) != 0)
    std::fprintf(stderr, "wan-emu: cannot write %s: %s\n", config_.stats_file.c_str(),
                 std::strerror(errno));
}

}  // namespace ferry::wan
