// HOST:PORT parsing, getaddrinfo and AsyncResolver (see net_address.h).
#include "datapath/net_address.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>

#include <charconv>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>

#include "datapath/reactor.h"

namespace ferry {

namespace {
bool is_name_char(char c) noexcept {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_';
}
}  // namespace

Result<HostPort> parse_host_port(std::string_view text, std::string& error,
                                 bool allow_zero_port) noexcept {
  const auto bad = [&](const char* why) {
    error = "bad address '" + std::string(text) + "': " + why + " (HOST:PORT or [IPv6]:PORT)";
    return Errc::invalid_argument;
  };
  const size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) return bad("no port");
  std::string_view host = text.substr(0, colon);
  const std::string_view digits = text.substr(colon + 1);
  if (digits.empty()) return bad("empty port");
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (ec != std::errc{} || end != digits.data() + digits.size() || value > 65535)
    return bad("the port is not a number from 1 to 65535");
  if (value == 0 && !allow_zero_port) return bad("port 0");
  if (host.empty()) return bad("empty host");
  HostPort out;
  out.port = uint16_t(value);
  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') return bad("unclosed bracket");
    out.host = std::string(host.substr(1, host.size() - 2));
    in6_addr a6{};
    if (inet_pton(AF_INET6, out.host.c_str(), &a6) != 1)
      return bad("not an IPv6 literal in brackets");
    return out;
  }
  if (host.find(':') != std::string_view::npos) return bad("an IPv6 literal needs brackets");
  for (char c : host)
    if (!is_name_char(c)) return bad("a character no host name has");
  out.host = std::string(host);
  return out;
}

std::string format_host_port(const std::string& host, uint16_t port) {
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

std::string SocketAddress::text() const {
  char host[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (storage.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&storage);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
    port = ntohs(a->sin_port);
  } else if (storage.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&storage);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
    port = ntohs(a->sin6_port);
  }
  return format_host_port(host, port);
}

Result<std::vector<SocketAddress>> resolve_tcp(const HostPort& where, bool passive,
                                               bool numeric_only, std::string& error) noexcept {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_protocol = IPPROTO_TCP;
  hints.ai_flags =
      AI_NUMERICSERV | (passive ? AI_PASSIVE : 0) | (numeric_only ? AI_NUMERICHOST : 0);
  addrinfo* list = nullptr;
  const std::string port = std::to_string(where.port);
  const int rc = getaddrinfo(where.host.c_str(), port.c_str(), &hints, &list);
  if (rc != 0) {
    error = "cannot resolve " + format_host_port(where.host, where.port) + ": " + gai_strerror(rc);
    return Errc::not_found;
  }
  std::vector<SocketAddress> out;
  for (const addrinfo* a = list; a != nullptr; a = a->ai_next) {
    if (a->ai_addrlen > sizeof(sockaddr_storage)) continue;
    SocketAddress s;
    std::memcpy(&s.storage, a->ai_addr, a->ai_addrlen);
    s.length = socklen_t(a->ai_addrlen);
    out.push_back(s);
  }
  freeaddrinfo(list);
  if (out.empty()) {
    error = "no TCP address for " + format_host_port(where.host, where.port);
    return Errc::not_found;
  }
  return out;
}

struct AsyncResolver::Pending {
  std::mutex mutex;
  bool cancelled = false;  // set under mutex on the reactor thread; read under it by the helper
  AsyncResolver* owner = nullptr;
  Done done;
  std::optional<Result<std::vector<SocketAddress>>> result;  // written by the helper
  std::string error;
};

bool AsyncResolver::resolve(const HostPort& where, Done done) noexcept {
  if (pending_ != nullptr) return false;
  auto p = std::make_shared<Pending>();
  p->owner = this;
  p->done = std::move(done);
  Reactor* reactor = &reactor_;
  try {
    std::thread([p, where, reactor] {
      std::string error;
      auto result = resolve_tcp(where, false, false, error);
      std::lock_guard lock(p->mutex);
      if (p->cancelled) return;  // the owner may be gone, and with it the reactor
      p->result.emplace(std::move(result));
      p->error = std::move(error);
      reactor->post([p] {
        if (p->cancelled) return;
        p->owner->pending_ = nullptr;
        Done d = std::move(p->done);
        d(std::move(*p->result), p->error);
      });
    }).detach();
  } catch (...) {
    return false;
  }
  pending_ = std::move(p);
  return true;
}

void AsyncResolver::cancel() noexcept {
  if (pending_ == nullptr) return;
  {
    std::lock_guard lock(pending_->mutex);
    pending_->cancelled = true;
  }
  pending_ = nullptr;
}

}  // namespace ferry
