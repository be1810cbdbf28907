// TlsEngine: two engines pumped into each other in memory (no sockets): mutual TLS 1.3 works
// with certificates from the test PKI; a wrong CA, a missing client certificate, a wrong server
// name or a certificate in the wrong role is refused; data flows both ways; garbage ciphertext
// fails cleanly. The NBD server's settings: no client certificate asked without verify_peer,
// TLS 1.2 only with allow_tls12, no session tickets, one record per read_plaintext_record, and
// peer_certificate_refused only on the side that refused.
#include "datapath/tls/tls_engine.h"

#include <gtest/gtest.h>
#include <openssl/ssl.h>

#include <cstdlib>
#include <string>
#include <vector>

namespace ferry::tls {
namespace {

class TlsEngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string("/tmp/ferry-tls-test-" + std::to_string(getpid()));
    const std::string cmd =
        std::string(FERRY_SOURCE_DIR) + "/scripts/make-test-pki.sh " + *dir_ + " >/dev/null";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
  }
  static void TearDownTestSuite() {
    std::system(("rm -rf " + *dir_).c_str());
    delete dir_;
  }
  static std::string f(const std::string& name) { return *dir_ + "/" + name; }
  static std::unique_ptr<TlsContext> ctx(bool server, const std::string& who, const std::string& ca,
                                         const std::string& expect = "",
                                         const char* role = nullptr) {
    TlsConfig c;
    c.expected_peer_role = role != nullptr ? role : server ? "cloud-edge" : "dc-edge";
    c.server = server;
    c.cert_path = f(who + "-cert.pem");
    c.key_path = f(who + "-key.pem");
    c.ca_path = f(ca + "-cert.pem");
    c.expected_peer_name = expect;
    std::string err;
    auto p = TlsContext::create(c, err);
    EXPECT_NE(p, nullptr) << err;
    return p;
  }
  // Moves ciphertext both ways until nothing moves; returns false if either side failed.
  static bool pump(TlsEngine& a, TlsEngine& b) {
    std::vector<uint8_t> buf(65536);
    for (int i = 0; i < 100; ++i) {
      bool moved = false;
      for (auto [from, to] : {std::pair{&a, &b}, std::pair{&b, &a}}) {
        while (size_t n = from->take_ciphertext(buf)) {
          moved = true;
          if (to->feed_ciphertext({buf.data(), n}) != Errc::ok) return false;
        }
      }
      if (!moved) break;
    }
    return a.state() != TlsState::failed && b.state() != TlsState::failed;
  }
  // An NBD export's server context: no role; client certificates only with a CA.
  static std::unique_ptr<TlsContext> nbd_server_ctx(const std::string& ca, bool tickets = false) {
    TlsConfig c;
    c.server = true;
    c.cert_path = f("dc-edge-cert.pem");
    c.key_path = f("dc-edge-key.pem");
    c.ca_path = ca.empty() ? std::string() : f(ca + "-cert.pem");
    c.verify_peer = !ca.empty();
    c.allow_tls12 = true;
    c.session_tickets = tickets;
    std::string err;
    auto p = TlsContext::create(c, err);
    EXPECT_NE(p, nullptr) << err;
    return p;
  }
  // One flight from `from` to `to`; the bytes moved.
  static size_t flight(TlsEngine& from, TlsEngine& to) {
    std::vector<uint8_t> buf(65536);
    size_t total = 0;
    while (size_t n = from.take_ciphertext(buf)) {
      total += n;
      EXPECT_EQ(to.feed_ciphertext({buf.data(), n}), Errc::ok) << to.error();
    }
    return total;
  }
  static std::string* dir_;
};
std::string* TlsEngineTest::dir_ = nullptr;

TEST_F(TlsEngineTest, MutualTls13HandshakeAndDataBothWays) {
  auto server_ctx = ctx(true, "dc-edge", "ca");
  auto client_ctx = ctx(false, "cloud-edge", "ca", "dc-edge");
  TlsEngine server(*server_ctx), client(*client_ctx);
  ASSERT_EQ(client.start(), Errc::ok);
  ASSERT_TRUE(pump(client, server)) << client.error() << " / " << server.error();
  EXPECT_EQ(client.state(), TlsState::established);
  EXPECT_EQ(server.state(), TlsState::established);
  EXPECT_EQ(server.peer_name(), "cloud-edge");
  EXPECT_EQ(client.peer_name(), "dc-edge");

  std::vector<uint8_t> big(200000);
  for (size_t i = 0; i < big.size(); ++i) big[i] = uint8_t(i * 7);
  ASSERT_EQ(client.write_plaintext(big), Errc::ok);
  ASSERT_TRUE(pump(client, server));
  std::vector<uint8_t> got(big.size());
  size_t n = 0;
  while (n < got.size()) {
    const size_t r = server.read_plaintext({got.data() + n, got.size() - n});
    if (r == 0) break;
    n += r;
  }
  EXPECT_EQ(n, big.size());
  EXPECT_EQ(got, big);

  const std::string reply = "pong";
  ASSERT_EQ(server.write_plaintext({reinterpret_cast<const uint8_t*>(reply.data()), reply.size()}),
            Errc::ok);
  ASSERT_TRUE(pump(client, server));
  uint8_t out[16];
  EXPECT_EQ(client.read_plaintext(out), 4u);
}

TEST_F(TlsEngineTest, ClientCertificateFromAnotherCaIsRefused) {
  auto server_ctx = ctx(true, "dc-edge", "ca");
  auto client_ctx = ctx(false, "rogue", "ca");
  TlsEngine server(*server_ctx), client(*client_ctx);
  ASSERT_EQ(client.start(), Errc::ok);
  EXPECT_FALSE(pump(client, server));
  EXPECT_NE(server.state(), TlsState::established);
  EXPECT_NE(server.error().find("certificate"), std::string::npos) << server.error();
}

TEST_F(TlsEngineTest, ServerFromAnotherCaIsRefusedByTheClient) {
  auto server_ctx = ctx(true, "rogue", "ca");
  auto client_ctx = ctx(false, "cloud-edge", "ca");
  TlsEngine server(*server_ctx), client(*client_ctx);
  ASSERT_EQ(client.start(), Errc::ok);
  EXPECT_FALSE(pump(client, server));
  EXPECT_EQ(client.state(), TlsState::failed);
}

TEST_F(TlsEngineTest, WrongServerNameIsRefused) {
  auto server_ctx = ctx(true, "dc-edge", "ca");
  auto client_ctx = ctx(false, "cloud-edge", "ca", "some-other-host");
  TlsEngine server(*server_ctx), client(*client_ctx);
  ASSERT_EQ(client.start(), Errc::ok);
  EXPECT_FALSE(pump(client, server));
  EXPECT_EQ(client.state(), TlsState::failed);
}

// Issue 15, failure 4: any certificate from the CA was accepted in any role; the dc-edge's own
// server certificate worked as a client.
TEST_F(TlsEngineTest, DcEdgeServerCertificateIsRefusedAsACloudEdge) {
  auto server_ctx = ctx(true, "dc-edge", "ca");
  auto client_ctx = ctx(false, "dc-edge", "ca");
  TlsEngine server(*server_ctx), client(*client_ctx);
  ASSERT_EQ(client.start(), Errc::ok);
  EXPECT_FALSE(pump(client, server));
  EXPECT_NE(server.state(), TlsState::established);
  EXPECT_NE(server.verify_error().find("clientAuth"), std::string::npos) << server.verify_error();
}

TEST_F(TlsEngineTest, CloudEdgeCertificateIsRefusedAsADatacenterEdge) {
  auto server_ctx = ctx(true, "cloud-edge-2", "ca");
  auto client_ctx = ctx(false, "cloud-edge", "ca");
  TlsEngine server(*server_ctx), client(*client_ctx);
  ASSERT_EQ(client.start(), Errc::ok);
  EXPECT_FALSE(pump(client, server));
  EXPECT_EQ(client.state(), TlsState::failed);
  EXPECT_NE(client.verify_error().find("serverAuth"), std::string::npos) << client.verify_error();
}

TEST_F(TlsEngineTest, CertificateWithoutARoleUriIsRefused) {
  auto server_ctx = ctx(true, "dc-edge", "ca");
  auto client_ctx = ctx(false, "norole", "ca");
  TlsEngine server(*server_ctx), client(*client_ctx);
  ASSERT_EQ(client.start(), Errc::ok);
  EXPECT_FALSE(pump(client, server));
  EXPECT_NE(server.verify_error().find("urn:ferry:cloud-edge"), std::string::npos)
      << server.verify_error();
}

TEST_F(TlsEngineTest, PeerNameIsTheEdgeNameOfItsRole) {
  auto server_ctx = ctx(true, "dc-edge", "ca");
  auto client_ctx = ctx(false, "cloud-edge-2", "ca", "dc-edge");
  TlsEngine server(*server_ctx), client(*client_ctx);
  ASSERT_EQ(client.start(), Errc::ok);
  ASSERT_TRUE(pump(client, server)) << client.error() << " / " << server.error();
  EXPECT_EQ(server.peer_name(), "cloud-edge-2");
  EXPECT_EQ(client.peer_name(), "dc-edge");
}

TEST_F(TlsEngineTest, MissingFilesAreReportedByName) {
  TlsConfig c;
  c.cert_path = "/nonexistent/cert.pem";
  c.key_path = f("dc-edge-key.pem");
  c.ca_path = f("ca-cert.pem");
  std::string err;
  EXPECT_EQ(TlsContext::create(c, err), nullptr);
  EXPECT_NE(err.find("/nonexistent/cert.pem"), std::string::npos) << err;
  c.ca_path.clear();
  EXPECT_EQ(TlsContext::create(c, err), nullptr);
}

TEST_F(TlsEngineTest, GarbageCiphertextFailsWithoutCrashing) {
  auto server_ctx = ctx(true, "dc-edge", "ca");
  TlsEngine server(*server_ctx);
  std::vector<uint8_t> junk(4096, 0x16);
  EXPECT_NE(server.feed_ciphertext(junk), Errc::ok);
  EXPECT_EQ(server.state(), TlsState::failed);
  uint8_t out[16];
  EXPECT_EQ(server.read_plaintext(out), 0u);
  EXPECT_NE(server.write_plaintext({out, 4}), Errc::ok);
}

// NBD without --nbd-tls-ca: the server asks for no certificate, so a client whose certificate
// comes from another CA (it would be refused with verify_peer) gets in; no CA file is needed.
TEST_F(TlsEngineTest, ServerWithoutPeerVerificationAsksForNoCertificate) {
  auto server_ctx = nbd_server_ctx("");
  auto client_ctx = ctx(false, "rogue", "ca", "", "dc-edge");
  TlsEngine server(*server_ctx), client(*client_ctx);
  ASSERT_EQ(client.start(), Errc::ok);
  ASSERT_TRUE(pump(client, server)) << client.error() << " / " << server.error();
  EXPECT_EQ(server.state(), TlsState::established);
  EXPECT_EQ(server.peer_name(), "");  // no peer certificate
  // With verify_peer the same client is refused.
  auto verifying_ctx = nbd_server_ctx("ca");
  TlsEngine verifying(*verifying_ctx), client2(*client_ctx);
  ASSERT_EQ(client2.start(), Errc::ok);
  EXPECT_FALSE(pump(client2, verifying));
  // verify_peer without a CA is refused at creation.
  TlsConfig c;
  c.server = true;
  c.cert_path = f("dc-edge-cert.pem");
  c.key_path = f("dc-edge-key.pem");
  std::string err;
  EXPECT_EQ(TlsContext::create(c, err), nullptr);
  c.verify_peer = false;
  EXPECT_NE(TlsContext::create(c, err), nullptr) << err;
}

TEST_F(TlsEngineTest, Tls12OnlyWithAllowTls12) {
  auto client_ctx = ctx(false, "cloud-edge", "ca", "", "dc-edge");
  SSL_CTX_set_min_proto_version(client_ctx->native(), TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(client_ctx->native(), TLS1_2_VERSION);
  auto nbd_ctx = nbd_server_ctx("ca");
  TlsEngine nbd(*nbd_ctx), client(*client_ctx);
  ASSERT_EQ(client.start(), Errc::ok);
  ASSERT_TRUE(pump(client, nbd)) << client.error() << " / " << nbd.error();
  EXPECT_EQ(nbd.state(), TlsState::established);
  EXPECT_EQ(nbd.peer_name(), "cloud-edge");

  auto wan_ctx = ctx(true, "dc-edge", "ca");  // the WAN link: TLS 1.3 only
  TlsEngine wan(*wan_ctx), client2(*client_ctx);
  ASSERT_EQ(client2.start(), Errc::ok);
  EXPECT_FALSE(pump(client2, wan));
  EXPECT_EQ(wan.state(), TlsState::failed);
  EXPECT_FALSE(wan.peer_certificate_refused()) << wan.error();  // a protocol failure
}

// The server's last handshake flight is NewSessionTicket records, sent once it has the client's
// Finished; without session tickets it has nothing left to send then.
TEST_F(TlsEngineTest, NoSessionTicketsWhenTurnedOff) {
  auto client_ctx = ctx(false, "cloud-edge", "ca", "", "dc-edge");
  for (const bool tickets : {false, true}) {
    auto server_ctx = nbd_server_ctx("ca", tickets);
    TlsEngine server(*server_ctx), client(*client_ctx);
    ASSERT_EQ(client.start(), Errc::ok);
    EXPECT_GT(flight(client, server), 0u);  // ClientHello
    EXPECT_GT(flight(server, client), 0u);  // ServerHello ... Finished
    EXPECT_GT(flight(client, server), 0u);  // Certificate ... Finished
    ASSERT_EQ(server.state(), TlsState::established) << server.error();
    EXPECT_EQ(server.pending_ciphertext() > 0, tickets);
  }
}

TEST_F(TlsEngineTest, ReadPlaintextRecordReturnsOneRecordAtATime) {
  auto server_ctx = nbd_server_ctx("ca");
  auto client_ctx = ctx(false, "cloud-edge", "ca", "", "dc-edge");
  TlsEngine server(*server_ctx), client(*client_ctx);
  ASSERT_EQ(client.start(), Errc::ok);
  ASSERT_TRUE(pump(client, server));
  std::vector<uint8_t> data(40000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = uint8_t(i * 13);
  ASSERT_EQ(client.write_plaintext(data), Errc::ok);
  ASSERT_TRUE(pump(client, server));
  std::vector<uint8_t> got(65536);
  const size_t first = server.read_plaintext_record(got);
  EXPECT_EQ(first, 16384u);  // one full record, though all 40000 bytes are in
  const size_t rest = server.read_plaintext({got.data() + first, got.size() - first});
  ASSERT_EQ(first + rest, data.size());
  got.resize(data.size());
  EXPECT_EQ(got, data);
  EXPECT_EQ(server.read_plaintext_record(got), 0u);
  EXPECT_EQ(server.state(), TlsState::established);  // 0: waiting for more
  client.shutdown();
  ASSERT_TRUE(pump(client, server));
  EXPECT_EQ(server.read_plaintext_record(got), 0u);
  EXPECT_EQ(server.state(), TlsState::closed);
}

// The NBD server counts a refused client certificate against the back-off; a client refusing
// the server's is not the client's authentication failure.
TEST_F(TlsEngineTest, PeerCertificateRefusedOnlyOnTheRefusingSide) {
  auto server_ctx = nbd_server_ctx("ca");
  auto rogue_client_ctx = ctx(false, "rogue", "ca", "", "dc-edge");
  TlsEngine server(*server_ctx), client(*rogue_client_ctx);
  ASSERT_EQ(client.start(), Errc::ok);
  EXPECT_FALSE(pump(client, server));
  EXPECT_EQ(server.state(), TlsState::failed);
  EXPECT_TRUE(server.peer_certificate_refused()) << server.error();
  EXPECT_FALSE(client.peer_certificate_refused()) << client.error();

  auto rogue_server_ctx = ctx(true, "rogue", "ca", "", "");
  auto good_client_ctx = ctx(false, "cloud-edge", "ca", "", "dc-edge");
  TlsEngine rogue_server(*rogue_server_ctx), good_client(*good_client_ctx);
  ASSERT_EQ(good_client.start(), Errc::ok);
  EXPECT_FALSE(pump(good_client, rogue_server));
  EXPECT_TRUE(good_client.peer_certificate_refused()) << good_client.error();
  EXPECT_FALSE(rogue_server.peer_certificate_refused()) << rogue_server.error();
}

}  // namespace
}  // namespace ferry::tls
