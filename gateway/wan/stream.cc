// WanStream (see stream.h).
#include "gateway/wan/stream.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

namespace ferry::wan {

namespace {
constexpr size_t kCipherInBytes = 256 * 1024;
constexpr size_t kPlainInBytes = kFrameHeaderBytes + kFramePayloadBytesMax + 64 * 1024;
// Ciphertext handed to the kernel per send: small, so bursts into the WAN stay short.
constexpr size_t kCipherOutBytes = 64 * 1024;
}  // namespace

WanStream::WanStream(Reactor& reactor, const tls::TlsContext& tls,
                     WanStreamHandler& handler) noexcept
    : reactor_(reactor), handler_(handler), tls_(tls), channel_(reactor, *this, 1) {}

WanStream::~WanStream() = default;

void WanStream::start(int fd, bool client) noexcept {
  channel_.attach(fd);
  started_ = true;
  if (socket_send_bytes_ > 0) {
    // A small kernel send queue keeps frames in our priority queues rather than behind
    // background data in the socket (must stay >= the link's bandwidth-delay product).
    int sndbuf = int(socket_send_bytes_ / 2);  // the kernel doubles it (bookkeeping overhead)
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  }
  cipher_in_ = reactor_.pool().allocate(kCipherInBytes);
  plain_in_ = reactor_.pool().allocate(kPlainInBytes);
  cipher_out_ = reactor_.pool().allocate(kCipherOutBytes);
  if (!tls_.ok() || !cipher_in_ || !plain_in_ || !cipher_out_) return close("out of memory");
  if (client && tls_.start() != Errc::ok) return close("TLS start failed");
  flush();
  post_recv();
}

size_t WanStream::backlog_bytes() const noexcept { return tls_.pending_ciphertext() + out_len_; }

bool WanStream::send_frame(const FrameHeader& h, std::span<const uint8_t> payload) noexcept {
  if (!established() || backlog_bytes() > kBacklogHighBytes) return false;
  uint8_t header[kFrameHeaderBytes];
  encode_header(header, h, payload);
  if (tls_.write_plaintext({header, sizeof header}) != Errc::ok ||
      (!payload.empty() && tls_.write_plaintext(payload) != Errc::ok)) {
    close("TLS write failed");
    return false;
  }
  ++counters_.frames_out;
  counters_.plain_bytes_out += sizeof header + payload.size();
  was_above_low_ |= backlog_bytes() >= kBacklogLowBytes;
  flush();
  return true;
}

void WanStream::flush() noexcept {
  if (channel_.sending() || !started_ || closed_) return;
  out_len_ = tls_.take_ciphertext(
      {reinterpret_cast<uint8_t*>(cipher_out_.data()), cipher_out_.capacity()});
  if (out_len_ == 0) {
    if (was_above_low_ && established()) {
      was_above_low_ = false;
      handler_.on_writable();
    }
    return;
  }
  channel_.gather().push_back({cipher_out_.data(), out_len_});
  channel_.send();
}

void WanStream::on_sent(int32_t res) noexcept {
  const size_t sent = std::exchange(out_len_, 0);
  if (closed_) return;
  if (res < 0) return close("send failed (peer gone)");
  counters_.wire_bytes_out += sent;
  if (backlog_bytes() < kBacklogLowBytes && was_above_low_ && established()) {
    was_above_low_ = false;
    handler_.on_writable();
    if (closed_) return;
  }
  flush();
}

void WanStream::post_recv() noexcept {
  if (closed_ || channel_.receiving()) return;
  channel_.receive(cipher_in_.data(), cipher_in_.capacity());
}

void WanStream::on_received(int32_t res) noexcept {
  if (closed_) return;
  if (res <= 0) return close(res == 0 ? "peer closed the connection" : "receive failed");
  counters_.wire_bytes_in += uint64_t(res);
  if (tls_.feed_ciphertext({reinterpret_cast<const uint8_t*>(cipher_in_.data()), size_t(res)}) !=
      Errc::ok) {
    std::fprintf(stderr, "ferry: wan: %s\n", tls_.error().c_str());
    // The TLS alert saying why (bad certificate, unknown CA, expired, ...) is the peer's only
    // clue: hand it to the kernel now, without waiting, since close() shuts the socket before a
    // queued send would be submitted. Best effort: a few dozen bytes into an idle socket.
    if (!channel_.sending()) {
      uint8_t alert[512];
      const size_t n = tls_.take_ciphertext({alert, sizeof alert});
      if (n > 0) (void)::send(channel_.fd(), alert, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    }
    return close("TLS handshake or record error");
  }
  flush();  // handshake replies
  if (!established_ && tls_.state() == tls::TlsState::established) {
    established_ = true;
    handler_.on_established();
    if (closed_) return;
  }
  if (!parse_frames()) return;
  post_recv();
}

bool WanStream::parse_frames() noexcept {
  for (;;) {
    auto* base = reinterpret_cast<uint8_t*>(plain_in_.data());
    const size_t got = tls_.read_plaintext({base + plain_len_, plain_in_.capacity() - plain_len_});
    plain_len_ += got;
    if (tls_.state() == tls::TlsState::failed) {
      close("TLS record error");
      return false;
    }
    size_t pos = 0;
    while (pos < plain_len_) {
      const FrameParse f = parse_frame({base + pos, plain_len_ - pos}, payload_bytes_max_);
      if (f.status == ParseStatus::need_more) break;
      if (f.status == ParseStatus::fatal) {
        std::fprintf(stderr, "ferry: wan: malformed frame from %s: %s\n", tls_.peer_name().c_str(),
                     f.why != nullptr ? f.why : "?");
        close("malformed frame");
        return false;
      }
      ++counters_.frames_in;
      counters_.plain_bytes_in += f.frame_bytes;
      if (f.status == ParseStatus::reject) {
        std::fprintf(stderr, "ferry: wan: rejected frame from %s: %s\n", tls_.peer_name().c_str(),
                     f.why != nullptr ? f.why : "?");
        uint8_t body[kErrorBytesMax];
        FrameHeader e;
        e.type = FrameType::error;
        e.request_id = f.header.request_id;
        e.volume_id = f.header.volume_id;
        const size_t n =
            encode_error(body, WireError::protocol_error, f.why != nullptr ? f.why : "");
        send_frame(e, {body, n});
      } else if (!handler_.on_frame(f.header, f.payload)) {
        return false;
      }
      if (closed_) return false;
      pos += f.frame_bytes;
    }
    if (pos > 0) {
      std::memmove(base, base + pos, plain_len_ - pos);
      plain_len_ -= pos;
    }
    if (got == 0) break;  // TLS has nothing more decrypted for now
  }
  if (tls_.state() == tls::TlsState::closed) {
    close("peer closed the TLS session");
    return false;
  }
  return true;
}

void WanStream::close(const char* why) noexcept {
  if (closed_) return;
  closed_ = true;
  close_reason_ = why;
  if (started_) channel_.shutdown();  // ends in-flight receive and send
  reactor_.defer([this] {
    if (!closed_reported_) {
      closed_reported_ = true;
      handler_.on_closed(close_reason_);
    }
  });
}

bool WanStream::tcp_rtt(uint32_t& rtt_us, uint32_t& rtt_var_us) const noexcept {
  if (closed_ || channel_.fd() < 0) return false;
  tcp_info info{};
  socklen_t len = sizeof info;
  if (::getsockopt(channel_.fd(), IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return false;
  rtt_us = info.tcpi_rtt;
  rtt_var_us = info.tcpi_rttvar;
  return true;
}

}  // namespace ferry::wan
