// TLS 1.3 with mutual certificate authentication as a pure byte transformer (OpenSSL with memory
// BIOs): the owner moves ciphertext between the engine and its io_uring socket, so TLS never
// blocks or touches a file descriptor. Used by the WAN link (both ends) and by the NBD server
// (STARTTLS on an open connection: the engine starts after the plaintext option phase, fed the
// bytes that followed STARTTLS). One engine per connection, on one thread; a TlsContext is
// shared read-only by all engines of a process. Plaintext is read into and encrypted from the
// caller's buffers: no copy besides OpenSSL's own, no allocation per record beyond the BIOs'.
//
//   socket bytes ─feed_ciphertext()─▶ [engine] ─read_plaintext()─▶ protocol
//   protocol ─write_plaintext()─▶ [engine] ─take_ciphertext()─▶ socket
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "datapath/result.h"

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;
typedef struct bio_st BIO;
typedef struct x509_st X509;
typedef struct x509_store_ctx_st X509_STORE_CTX;

namespace ferry::tls {

struct TlsConfig {
  std::string cert_path;  // PEM: our certificate (chain)
  std::string key_path;   // PEM: its private key
  std::string ca_path;    // PEM: the CA the peer's certificate must chain to
  bool server = false;
  // false: the peer is not asked for a certificate and ca_path may be empty (an NBD export
  // without client certificates). The WAN link always verifies (mutual authentication).
  bool verify_peer = true;
  // TLS 1.2 accepted too (NBD clients: qemu, libnbd); otherwise TLS 1.3 only (the WAN link).
  bool allow_tls12 = false;
  // false: a server sends no TLS 1.3 session tickets (NBD clients never resume a session).
  bool session_tickets = true;
  // The role the peer's certificate must carry (see "Certificates" in gateway/wan/DESIGN.md):
  // the extended key usage of its side (clientAuth for a cloud edge, serverAuth for a datacenter
  // edge) and a SAN URI urn:ferry:ROLE:NAME, and no other Ferry role. Empty: any certificate
  // from the CA (tests of the engine itself).
  std::string expected_peer_role;
  // The edge name the peer's certificate must carry (NAME of its role URI); empty = any.
  std::string expected_peer_name;
};

// What a certificate says about the Ferry edge holding it. Roles: "cloud-edge" (a client of the
// WAN link) and "dc-edge" (its server).
struct EdgeIdentity {
  std::vector<std::string> roles;  // one per urn:ferry:ROLE:NAME SAN URI
  std::vector<std::string> names;  // the NAME of each, same order
  bool client_auth = false;        // extended key usage TLS Web Client Authentication
  bool server_auth = false;        // ... Server Authentication
};
EdgeIdentity edge_identity_of(X509* cert);
// Why `id` cannot act as `role` (and be named `name` when not empty); "" when it can. On
// success `name_out` is the certificate's edge name for that role.
std::string check_edge_role(const EdgeIdentity& id, const std::string& role,
                            const std::string& name, std::string& name_out);

class TlsContext {
 public:
  // Loads and checks the certificate, key and CA; TLS 1.3 only; peers must present a
  // certificate from the CA. Errors name the file and OpenSSL's reason in `error`.
  static std::unique_ptr<TlsContext> create(const TlsConfig& config, std::string& error);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;
  const TlsConfig& config() const noexcept { return config_; }
  SSL_CTX* native() const noexcept { return ctx_; }

 private:
  TlsContext() = default;
  TlsConfig config_;
  SSL_CTX* ctx_ = nullptr;
};

enum class TlsState : uint8_t { handshaking, established, closed, failed };

class TlsEngine {
 public:
  explicit TlsEngine(const TlsContext& context) noexcept;
  ~TlsEngine();
  TlsEngine(const TlsEngine&) = delete;
  TlsEngine& operator=(const TlsEngine&) = delete;

  bool ok() const noexcept { return ssl_ != nullptr; }  // false: out of memory at creation
  TlsState state() const noexcept { return state_; }
  // Why the engine failed (certificate refused, protocol error, ...), for logs.
  const std::string& error() const noexcept { return error_; }
  // The verified peer's edge name (from its role URI when a role is required, else the
  // certificate's common name), after the handshake.
  const std::string& peer_name() const noexcept { return peer_name_; }
  // The fatal alert the peer sent, e.g. "certificate expired", "unknown CA" ("" if none): why
  // the other side refused this handshake.
  const std::string& peer_alert() const noexcept { return peer_alert_; }
  // Why this side refused the peer's certificate ("" if it did not), e.g. "certificate has
  // expired".
  std::string verify_error() const noexcept;
  // The handshake failed because this side refused the peer's certificate (none sent, not from
  // the CA, wrong role): an authentication failure, e.g. for a failed-authentication back-off.
  // False when the peer refused ours or the protocol failed.
  bool peer_certificate_refused() const noexcept { return peer_refused_; }

  // Bytes received from the socket. Drives the handshake. protocol_error/auth_failed on failure.
  Errc feed_ciphertext(std::span<const uint8_t> bytes) noexcept;
  // Decrypted application bytes, up to out.size(); 0 when none are ready (then state() says
  // whether the peer closed or the engine failed).
  size_t read_plaintext(std::span<uint8_t> out) noexcept;
  // The same, but at most the rest of one TLS record (one SSL_read), so a caller that parses
  // as it goes can aim the next record elsewhere (NBD: a WRITE payload straight into its buffer).
  size_t read_plaintext_record(std::span<uint8_t> out) noexcept;
  // Encrypts application bytes (only once established). protocol_error if the engine failed.
  Errc write_plaintext(std::span<const uint8_t> bytes) noexcept;
  // Ciphertext waiting to be sent (handshake records included).
  size_t pending_ciphertext() const noexcept;
  size_t take_ciphertext(std::span<uint8_t> out) noexcept;
  // Starts the handshake on the client side (the server waits for the ClientHello).
  Errc start() noexcept;
  // Queues a close_notify.
  void shutdown() noexcept;
  // OpenSSL's verify callback (set by TlsContext): adds the role check at the leaf.
  static int on_verify(int preverify_ok, X509_STORE_CTX* store) noexcept;

 private:
  Errc drive_handshake() noexcept;
  Errc fail(Errc e, const char* what) noexcept;

  const TlsConfig& config_;  // the context's, which outlives its engines
  SSL* ssl_ = nullptr;
  BIO* rbio_ = nullptr;  // owned by ssl_
  BIO* wbio_ = nullptr;  // owned by ssl_
  TlsState state_ = TlsState::handshaking;
  bool peer_refused_ = false;
  std::string error_;
  std::string peer_name_;
  std::string peer_alert_;
  std::string role_error_;  // why the peer's certificate does not carry the required role
  std::string role_name_;   // the peer's edge name from its role URI
  static void on_info(const SSL* ssl, int where, int ret) noexcept;
};

}  // namespace ferry::tls
