// TLS 1.3 with mutual certificate authentication as a pure byte transformer (OpenSSL with memory
// BIOs): the owner moves ciphertext between the engine and its io_uring socket, so TLS never
// blocks or touches a file descriptor. Used by the WAN link (both ends). One engine per
// connection, on one thread; a TlsContext is shared read-only by all engines of a process.
//
//   socket bytes ─feed_ciphertext()─▶ [engine] ─read_plaintext()─▶ protocol
//   protocol ─write_plaintext()─▶ [engine] ─take_ciphertext()─▶ socket
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "datapath/result.h"

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;
typedef struct bio_st BIO;

namespace ferry::tls {

struct TlsConfig {
  std::string cert_path;  // PEM: our certificate (chain)
  std::string key_path;   // PEM: its private key
  std::string ca_path;    // PEM: the CA the peer's certificate must chain to (required)
  bool server = false;
  // Client side: the name the server's certificate must carry (SAN DNS or CN); empty = any
  // certificate from the CA.
  std::string expected_peer_name;
};

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
  // Common name of the verified peer certificate (after the handshake).
  const std::string& peer_name() const noexcept { return peer_name_; }
  // The fatal alert the peer sent, e.g. "certificate expired", "unknown CA" ("" if none): why
  // the other side refused this handshake.
  const std::string& peer_alert() const noexcept { return peer_alert_; }
  // Why this side refused the peer's certificate ("" if it did not), e.g. "certificate has
  // expired".
  std::string verify_error() const noexcept;

  // Bytes received from the socket. Drives the handshake. protocol_error/auth_failed on failure.
  Errc feed_ciphertext(std::span<const uint8_t> bytes) noexcept;
  // Decrypted application bytes, up to out.size(); 0 when none are ready.
  size_t read_plaintext(std::span<uint8_t> out) noexcept;
  // Encrypts application bytes (only once established). protocol_error if the engine failed.
  Errc write_plaintext(std::span<const uint8_t> bytes) noexcept;
  // Ciphertext waiting to be sent (handshake records included).
  size_t pending_ciphertext() const noexcept;
  size_t take_ciphertext(std::span<uint8_t> out) noexcept;
  // Starts the handshake on the client side (the server waits for the ClientHello).
  Errc start() noexcept;
  // Queues a close_notify.
  void shutdown() noexcept;

 private:
  Errc drive_handshake() noexcept;
  Errc fail(Errc e, const char* what) noexcept;

  SSL* ssl_ = nullptr;
  BIO* rbio_ = nullptr;  // owned by ssl_
  BIO* wbio_ = nullptr;  // owned by ssl_
  TlsState state_ = TlsState::handshaking;
  std::string error_;
  std::string peer_name_;
  std::string peer_alert_;
  static void on_info(const SSL* ssl, int where, int ret) noexcept;
};

}  // namespace ferry::tls
