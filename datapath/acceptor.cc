// Acceptor and listen_tcp (see acceptor.h).
#include "datapath/acceptor.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "datapath/net_address.h"

namespace ferry {

namespace {
std::string available_congestion_controls() {
  FILE* f = std::fopen("/proc/sys/net/ipv4/tcp_allowed_congestion_control", "r");
  if (f == nullptr) return "unknown";
  char line[256] = {};
  const bool ok = std::fgets(line, sizeof line, f) != nullptr;
  std::fclose(f);
  std::string s = ok ? line : "unknown";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}
}  // namespace

Result<int> listen_tcp(const std::string& address, uint16_t port, std::string& error,
                       const std::string& congestion) noexcept {
  auto addresses =
      resolve_tcp(HostPort{address, port}, /*passive=*/true, /*numeric_only=*/false, error);
  if (!addresses.ok()) {
    error = "bad listen address: " + error;
    return Errc::invalid_argument;
  }
  // The first address that binds (a name such as localhost may stand for ::1 and 127.0.0.1).
  Errc last = Errc::io_error;
  for (const SocketAddress& addr : addresses.value()) {
    const int fd = ::socket(addr.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      error = std::string("socket: ") + std::strerror(errno);
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (!congestion.empty() && setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, congestion.data(),
                                          socklen_t(congestion.size())) != 0) {
      error = "TCP congestion control '" + congestion + "': " + std::strerror(errno) +
              " (allowed without CAP_NET_ADMIN: " + available_congestion_controls() +
              "; loaded: see /proc/sys/net/ipv4/tcp_available_congestion_control)";
      ::close(fd);
      return Errc::invalid_argument;
    }
    if (::bind(fd, addr.get(), addr.length) == 0 && ::listen(fd, 1024) == 0) return fd;
    const int err = errno;
    error = "cannot listen on " + addr.text() + ": " + std::strerror(err);
    if (err == EADDRINUSE) error += " (another process, or another server of this one, has it)";
    last = err == EADDRINUSE ? Errc::exists : Errc::io_error;
    ::close(fd);
  }
  return last;
}

uint16_t local_port(int fd) noexcept {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return 0;
  if (addr.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
  if (addr.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  return 0;
}

Acceptor::Acceptor(Reactor& reactor, int listen_fd, OnAccept on_accept, void* context,
                   const char* name) noexcept
    : reactor_(reactor), fd_(listen_fd), on_accept_(on_accept), context_(context), name_(name) {}

Acceptor::~Acceptor() {
  if (fd_ >= 0) ::close(fd_);
}

void Acceptor::start() noexcept { arm(); }

void Acceptor::arm() noexcept {
  io_uring_sqe* sqe = reactor_.get_sqe();
  io_uring_prep_multishot_accept(sqe, fd_, nullptr, nullptr, SOCK_CLOEXEC);
  Reactor::prepare(sqe, this);
  accepting_ = true;
}

void Acceptor::stop() noexcept {
  stopping_ = true;
  if (backoff_.armed()) reactor_.cancel(backoff_);
  ::shutdown(fd_, SHUT_RDWR);  // ends the multishot accept
}

void Acceptor::on_cqe(int32_t res, uint32_t flags) noexcept {
  if (!(flags & IORING_CQE_F_MORE)) accepting_ = false;
  if (res >= 0) {
    if (stopping_)
      ::close(res);
    else
      on_accept_(context_, res);
  } else if (!stopping_ && res != -ECANCELED && res != -EINTR && res != -EAGAIN &&
             res != -ECONNABORTED) {
    std::fprintf(stderr, "ferry: %s: accept: %s\n", name_, std::strerror(-res));
    if (!accepting_) {
      // Out of descriptors or memory: back off instead of spinning on the same error.
      reactor_.arm(backoff_, 100'000'000, &Acceptor::on_backoff, this);
      return;
    }
  }
  if (!accepting_ && !stopping_) arm();
}

void Acceptor::on_backoff(void* context) noexcept {
  auto* a = static_cast<Acceptor*>(context);
  if (!a->stopping_ && !a->accepting_) a->arm();
}

}  // namespace ferry
