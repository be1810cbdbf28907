// TLS engine over memory BIOs (see tls_engine.h).
#include "datapath/tls/tls_engine.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <climits>

namespace ferry::tls {

namespace {
std::string openssl_errors() {
  std::string out;
  unsigned long e;
  while ((e = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}
}  // namespace

std::unique_ptr<TlsContext> TlsContext::create(const TlsConfig& config, std::string& error) {
  if (config.cert_path.empty() || config.key_path.empty() || config.ca_path.empty()) {
    error = "TLS needs a certificate, its key and a CA (mutual authentication)";
    return nullptr;
  }
  std::unique_ptr<TlsContext> c(new TlsContext());
  c->config_ = config;
  ERR_clear_error();
  c->ctx_ = SSL_CTX_new(config.server ? TLS_server_method() : TLS_client_method());
  if (c->ctx_ == nullptr) {
    error = "SSL_CTX_new: " + openssl_errors();
    return nullptr;
  }
  SSL_CTX_set_min_proto_version(c->ctx_, TLS1_3_VERSION);
  SSL_CTX_set_mode(c->ctx_, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE);
  if (SSL_CTX_use_certificate_chain_file(c->ctx_, config.cert_path.c_str()) != 1) {
    error = "certificate " + config.cert_path + ": " + openssl_errors();
    return nullptr;
  }
  if (SSL_CTX_use_PrivateKey_file(c->ctx_, config.key_path.c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(c->ctx_) != 1) {
    error = "private key " + config.key_path + ": " + openssl_errors();
    return nullptr;
  }
  if (SSL_CTX_load_verify_locations(c->ctx_, config.ca_path.c_str(), nullptr) != 1) {
    error = "CA " + config.ca_path + ": " + openssl_errors();
    return nullptr;
  }
  SSL_CTX_set_verify(c->ctx_, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  return c;
}

TlsContext::~TlsContext() {
  if (ctx_ != nullptr) SSL_CTX_free(ctx_);
}

TlsEngine::TlsEngine(const TlsContext& context) noexcept {
  ssl_ = SSL_new(context.native());
  if (ssl_ == nullptr) return;
  rbio_ = BIO_new(BIO_s_mem());
  wbio_ = BIO_new(BIO_s_mem());
  if (rbio_ == nullptr || wbio_ == nullptr) {
    if (rbio_ != nullptr) BIO_free(rbio_);
    if (wbio_ != nullptr) BIO_free(wbio_);
    SSL_free(ssl_);
    ssl_ = nullptr;
    return;
  }
  SSL_set_bio(ssl_, rbio_, wbio_);  // ssl_ owns both now
  SSL_set_app_data(ssl_, this);
  SSL_set_info_callback(ssl_, &TlsEngine::on_info);
  const TlsConfig& cfg = context.config();
  if (cfg.server) {
    SSL_set_accept_state(ssl_);
  } else {
    SSL_set_connect_state(ssl_);
    if (!cfg.expected_peer_name.empty()) {
      SSL_set_hostflags(ssl_, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
      SSL_set1_host(ssl_, cfg.expected_peer_name.c_str());
    }
  }
}

void TlsEngine::on_info(const SSL* ssl, int where, int ret) noexcept {
  if ((where & SSL_CB_READ_ALERT) == 0 || (ret >> 8) != SSL3_AL_FATAL) return;
  auto* self = static_cast<TlsEngine*>(SSL_get_app_data(ssl));
  if (self != nullptr && self->peer_alert_.empty()) self->peer_alert_ = SSL_alert_desc_string_long(ret);
}

std::string TlsEngine::verify_error() const noexcept {
  if (ssl_ == nullptr) return {};
  const long verify = SSL_get_verify_result(ssl_);
  return verify == X509_V_OK ? std::string() : std::string(X509_verify_cert_error_string(verify));
}

TlsEngine::~TlsEngine() {
  if (ssl_ != nullptr) SSL_free(ssl_);
}

Errc TlsEngine::fail(Errc e, const char* what) noexcept {
  state_ = TlsState::failed;
  const long verify = SSL_get_verify_result(ssl_);
  error_ = what;
  if (verify != X509_V_OK) {
    error_ += ": peer certificate: ";
    error_ += X509_verify_cert_error_string(verify);
  } else {
    error_ += ": " + openssl_errors();
  }
  ERR_clear_error();
  return e;
}

Errc TlsEngine::start() noexcept {
  if (ssl_ == nullptr) return Errc::no_memory;
  return drive_handshake();
}

Errc TlsEngine::drive_handshake() noexcept {
  if (state_ != TlsState::handshaking) return state_ == TlsState::failed ? Errc::auth_failed : Errc::ok;
  ERR_clear_error();
  const int r = SSL_do_handshake(ssl_);
  if (r == 1) {
    state_ = TlsState::established;
    if (X509* peer = SSL_get_peer_certificate(ssl_)) {
      char cn[256] = {};
      X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, cn, sizeof cn);
      peer_name_ = cn;
      X509_free(peer);
    }
    return Errc::ok;
  }
  const int err = SSL_get_error(ssl_, r);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return Errc::ok;
  return fail(Errc::auth_failed, "TLS handshake failed");
}

Errc TlsEngine::feed_ciphertext(std::span<const uint8_t> bytes) noexcept {
  if (ssl_ == nullptr) return Errc::no_memory;
  if (state_ == TlsState::failed) return Errc::auth_failed;
  while (!bytes.empty()) {
    const int chunk = int(std::min<size_t>(bytes.size(), INT_MAX));
    const int n = BIO_write(rbio_, bytes.data(), chunk);
    if (n <= 0) return fail(Errc::no_memory, "TLS receive buffer");
    bytes = bytes.subspan(size_t(n));
  }
  return drive_handshake();
}

size_t TlsEngine::read_plaintext(std::span<uint8_t> out) noexcept {
  if (ssl_ == nullptr || state_ != TlsState::established || out.empty()) return 0;
  size_t total = 0;
  while (total < out.size()) {
    ERR_clear_error();
    const int n = SSL_read(ssl_, out.data() + total, int(std::min<size_t>(out.size() - total, INT_MAX)));
    if (n > 0) {
      total += size_t(n);
      continue;
    }
    const int err = SSL_get_error(ssl_, n);
    if (err == SSL_ERROR_ZERO_RETURN) {
      state_ = TlsState::closed;
    } else if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
      fail(Errc::protocol_error, "TLS read failed");
    }
    break;
  }
  return total;
}

Errc TlsEngine::write_plaintext(std::span<const uint8_t> bytes) noexcept {
  if (ssl_ == nullptr) return Errc::no_memory;
  if (state_ != TlsState::established) return Errc::protocol_error;
  while (!bytes.empty()) {
    ERR_clear_error();
    const int n = SSL_write(ssl_, bytes.data(), int(std::min<size_t>(bytes.size(), INT_MAX)));
    if (n <= 0) return fail(Errc::protocol_error, "TLS write failed");
    bytes = bytes.subspan(size_t(n));
  }
  return Errc::ok;
}

size_t TlsEngine::pending_ciphertext() const noexcept {
  return wbio_ == nullptr ? 0 : BIO_ctrl_pending(wbio_);
}

size_t TlsEngine::take_ciphertext(std::span<uint8_t> out) noexcept {
  if (wbio_ == nullptr || out.empty()) return 0;
  const int n = BIO_read(wbio_, out.data(), int(std::min<size_t>(out.size(), INT_MAX)));
  return n > 0 ? size_t(n) : 0;
}

void TlsEngine::shutdown() noexcept {
  if (ssl_ != nullptr && state_ == TlsState::established) {
    SSL_shutdown(ssl_);
    state_ = TlsState::closed;
  }
}

}  // namespace ferry::tls
