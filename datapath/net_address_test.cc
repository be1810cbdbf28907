// parse_host_port, resolve_tcp, AsyncResolver and listen_tcp on names and IPv6 literals.
#include "datapath/net_address.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "datapath/acceptor.h"
#include "datapath/reactor.h"

namespace ferry {
namespace {

HostPort parsed(std::string_view text, bool allow_zero = false) {
  std::string error;
  auto r = parse_host_port(text, error, allow_zero);
  EXPECT_TRUE(r.ok()) << text << ": " << error;
  return r.ok() ? r.value() : HostPort{};
}

bool refused(std::string_view text, bool allow_zero = false) {
  std::string error;
  auto r = parse_host_port(text, error, allow_zero);
  if (r.ok()) return false;
  EXPECT_EQ(r.error(), Errc::invalid_argument);
  EXPECT_NE(error.find(std::string(text)), std::string::npos) << error;  // names what it refused
  return true;
}

TEST(ParseHostPort, Ipv4Literal) {
  const HostPort hp = parsed("127.0.0.1:3260");
  EXPECT_EQ(hp.host, "127.0.0.1");
  EXPECT_EQ(hp.port, 3260);
}

TEST(ParseHostPort, Ipv6LiteralInBracketsLosesTheBrackets) {
  const HostPort hp = parsed("[::1]:9111");
  EXPECT_EQ(hp.host, "::1");
  EXPECT_EQ(hp.port, 9111);
  EXPECT_EQ(parsed("[fe80::1:2]:80").host, "fe80::1:2");
}

// The README's own example was refused when only IPv4 literals were accepted.
TEST(ParseHostPort, HostNameFromTheReadmeIsAccepted) {
  const HostPort hp = parsed("dc.example:9111");
  EXPECT_EQ(hp.host, "dc.example");
  EXPECT_EQ(hp.port, 9111);
  EXPECT_EQ(parsed("localhost:1").host, "localhost");
}

TEST(ParseHostPort, MissingPortIsRefused) {
  EXPECT_TRUE(refused("nohost"));
  EXPECT_TRUE(refused("host:"));
  EXPECT_TRUE(refused("[::1]"));
}

TEST(ParseHostPort, BadPortIsRefused) {
  EXPECT_TRUE(refused("h:99999"));
  EXPECT_TRUE(refused("h:65536"));
  EXPECT_TRUE(refused("h:12x"));
  EXPECT_TRUE(refused("h:-1"));
  EXPECT_TRUE(refused("h: 80"));
  EXPECT_TRUE(refused("h:0"));
  EXPECT_EQ(parsed("h:0", /*allow_zero=*/true).port, 0);
  EXPECT_EQ(parsed("h:65535").port, 65535);
}

TEST(ParseHostPort, GarbageIsRefused) {
  EXPECT_TRUE(refused(":80"));          // empty host
  EXPECT_TRUE(refused("::1:80"));       // IPv6 without brackets: which colon is the port's?
  EXPECT_TRUE(refused("[nothex]:80"));  // brackets around something that is not IPv6
  EXPECT_TRUE(refused("[::1:80"));      // unclosed bracket
  EXPECT_TRUE(refused("[]:80"));
  EXPECT_TRUE(refused("a b:80"));
  EXPECT_TRUE(refused("host/x:80"));
}

TEST(FormatHostPort, BracketsIpv6Only) {
  EXPECT_EQ(format_host_port("::1", 9111), "[::1]:9111");
  EXPECT_EQ(format_host_port("dc.example", 9111), "dc.example:9111");
}

TEST(ResolveTcp, NumericOnlyRefusesANameWithoutALookup) {
  std::string error;
  auto literal = resolve_tcp({"127.0.0.1", 80}, false, /*numeric_only=*/true, error);
  ASSERT_TRUE(literal.ok()) << error;
  EXPECT_EQ(literal.value().front().text(), "127.0.0.1:80");
  auto name = resolve_tcp({"localhost", 80}, false, /*numeric_only=*/true, error);
  EXPECT_FALSE(name.ok());
  EXPECT_EQ(name.error(), Errc::not_found);
}

TEST(ResolveTcp, UnknownNameIsNotFoundWithTheName) {
  std::string error;
  auto r =
      resolve_tcp({"no-such-host.invalid", 80}, false, false, error);  // RFC 6761: never resolves
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error(), Errc::not_found);
  EXPECT_NE(error.find("no-such-host.invalid"), std::string::npos) << error;
}

bool has_ipv6_loopback() {
  const int fd = ::socket(AF_INET6, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_addr = in6addr_loopback;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

// listen_tcp took IPv4 literals only ("IPv4 literal expected").
TEST(ListenTcp, ListensOnAHostNameAndAnIpv6Literal) {
  std::string error;
  auto named = listen_tcp("localhost", 0, error);
  ASSERT_TRUE(named.ok()) << error;
  EXPECT_NE(local_port(named.value()), 0);
  ::close(named.value());
  if (!has_ipv6_loopback()) GTEST_SKIP() << "no IPv6 loopback on this machine";
  auto v6 = listen_tcp("::1", 0, error);
  ASSERT_TRUE(v6.ok()) << error;
  const uint16_t port = local_port(v6.value());
  ASSERT_NE(port, 0);
  const int client = ::socket(AF_INET6, SOCK_STREAM, 0);
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(port);
  a.sin6_addr = in6addr_loopback;
  EXPECT_EQ(::connect(client, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ::close(client);
  ::close(v6.value());
}

TEST(ListenTcp, UnknownHostNameIsRefusedWithItsName) {
  std::string error;
  auto r = listen_tcp("no-such-host.invalid", 0, error);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(error.find("no-such-host.invalid"), std::string::npos) << error;
}

// The answer must arrive on the reactor's thread, not on the lookup's.
TEST(AsyncResolver, DeliversOnTheReactorThread) {
  Reactor reactor(0, 1 << 20);
  ASSERT_TRUE(reactor.init(64).ok());
  AsyncResolver resolver(reactor);
  std::thread::id delivered_on;
  bool ok = false;
  std::string seen_error;
  ASSERT_TRUE(resolver.resolve({"localhost", 9111}, [&](auto addresses, const std::string& error) {
    delivered_on = std::this_thread::get_id();
    ok = addresses.ok() && !addresses.value().empty();
    seen_error = error;
    reactor.stop();
  }));
  EXPECT_TRUE(resolver.busy());
  EXPECT_FALSE(
      resolver.resolve({"localhost", 1}, [](auto, const std::string&) {}));  // one at a time
  reactor.run();  // bounded by ctest's timeout; the lookup of localhost is /etc/hosts
  EXPECT_EQ(delivered_on, std::this_thread::get_id());
  EXPECT_TRUE(ok) << seen_error;
  EXPECT_FALSE(resolver.busy());
}

// A cancelled lookup must not call back into an owner that has gone.
TEST(AsyncResolver, CancelledLookupNeverCallsBack) {
  Reactor reactor(0, 1 << 20);
  ASSERT_TRUE(reactor.init(64).ok());
  bool called = false;
  {
    AsyncResolver resolver(reactor);
    ASSERT_TRUE(
        resolver.resolve({"localhost", 9111}, [&](auto, const std::string&) { called = true; }));
  }  // destroyed: cancels
  Timer done;
  reactor.arm(
      done, 300'000'000, [](void* r) noexcept { static_cast<Reactor*>(r)->stop(); }, &reactor);
  reactor.run();
  EXPECT_FALSE(called);
}

}  // namespace
}  // namespace ferry
