// WanStream: one TLS 1.3 connection of the WAN link on a reactor — socket receive/send through
// the SocketChannel of datapath/ (io_uring), the TLS engine of datapath/tls in between, frames
// parsed out of the plaintext with the wire codec (datapath/wan/frame.h) and handed to a handler;
// frames to send are encrypted as they are queued. Both edges use it (the datacenter edge per
// accepted connection, the cloud edge for its one connection). Reactor thread only.
//
// Bounds: the plaintext receive buffer holds one maximal frame plus slack; the ciphertext
// backlog (TLS output not yet sent) is what send_frame reports, and callers stop producing
// above a watermark (back-pressure; priority scheduling happens before frames are queued).
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "datapath/buffer_pool.h"
#include "datapath/reactor.h"
#include "datapath/socket_channel.h"
#include "datapath/tls/tls_engine.h"
#include "datapath/wan/frame.h"

namespace ferry::wan {

class WanStreamHandler {
 public:
  virtual void on_established() noexcept = 0;
  // A parsed, validated frame. Return false to stop processing (the handler closed the stream).
  virtual bool on_frame(const FrameHeader& h, std::span<const uint8_t> payload) noexcept = 0;
  // The ciphertext backlog fell below the low watermark: produce more.
  virtual void on_writable() noexcept {}
  // The stream is closed (once); the handler may destroy the stream from here on (deferred).
  virtual void on_closed(const char* why) noexcept = 0;

 protected:
  ~WanStreamHandler() = default;
};

struct WanStreamCounters {
  uint64_t frames_in = 0, frames_out = 0;
  uint64_t plain_bytes_in = 0, plain_bytes_out = 0;  // frames (header + payload)
  uint64_t wire_bytes_in = 0, wire_bytes_out = 0;    // TLS records on the socket
  WanStreamCounters& operator+=(const WanStreamCounters& o) noexcept {
    frames_in += o.frames_in;
    frames_out += o.frames_out;
    plain_bytes_in += o.plain_bytes_in;
    plain_bytes_out += o.plain_bytes_out;
    wire_bytes_in += o.wire_bytes_in;
    wire_bytes_out += o.wire_bytes_out;
    return *this;
  }
};

class WanStream final : private SocketChannelOwner {
 public:
  static constexpr size_t kBacklogLowBytes = 128 * 1024;    // on_writable below this
  static constexpr size_t kBacklogHighBytes = 1024 * 1024;  // send_frame refuses above this

  WanStream(Reactor& reactor, const tls::TlsContext& tls, WanStreamHandler& handler) noexcept;
  ~WanStream();
  WanStream(const WanStream&) = delete;
  WanStream& operator=(const WanStream&) = delete;

  // Takes a connected socket; the client side starts the TLS handshake.
  void start(int fd, bool client) noexcept;
  // Queues a frame (header encoded here; payload copied into TLS). False when the stream is not
  // established, closed, or the backlog is above kBacklogHighBytes.
  bool send_frame(const FrameHeader& h, std::span<const uint8_t> payload) noexcept;
  // Payload given in two pieces (e.g. a gathered header body + data).
  size_t backlog_bytes() const noexcept;
  bool established() const noexcept { return established_ && !closed_; }
  bool closed() const noexcept { return closed_; }
  void set_payload_limit(uint32_t bytes) noexcept { payload_bytes_max_ = bytes; }
  // Before start(): SO_SNDBUF for the socket (0: the kernel's autotuning).
  void set_socket_send_bytes(uint32_t bytes) noexcept { socket_send_bytes_ = bytes; }
  const std::string& peer_name() const noexcept { return tls_.peer_name(); }
  const tls::TlsEngine& tls() const noexcept { return tls_; }
  const WanStreamCounters& counters() const noexcept { return counters_; }
  // Closes (idempotent); on_closed runs from a deferred callback, never inside this call.
  void close(const char* why) noexcept;
  // True once no socket operation is in flight: the owner may delete the stream.
  bool idle() const noexcept { return closed_ && channel_.idle(); }
  // The kernel's smoothed RTT and its variance of the socket (TCP_INFO), in microseconds; false
  // when closed or unknown. A syscall: for management, not per frame.
  bool tcp_rtt(uint32_t& rtt_us, uint32_t& rtt_var_us) const noexcept;

 private:
  void post_recv() noexcept;
  void on_received(int32_t res) noexcept override;
  void on_sent(int32_t res) noexcept override;
  void flush() noexcept;
  bool parse_frames() noexcept;

  Reactor& reactor_;
  WanStreamHandler& handler_;
  tls::TlsEngine tls_;
  SocketChannel channel_;
  bool started_ = false;
  bool established_ = false;
  bool closed_ = false;
  bool closed_reported_ = false;
  const char* close_reason_ = nullptr;
  uint32_t payload_bytes_max_ = kFramePayloadBytesMax;
  uint32_t socket_send_bytes_ = 0;

  Buffer cipher_in_;  // socket receive buffer
  Buffer plain_in_;   // decrypted bytes awaiting a whole frame
  size_t plain_len_ = 0;
  Buffer cipher_out_;   // ciphertext being sent
  size_t out_len_ = 0;  // bytes of cipher_out_ in the send in flight
  bool was_above_low_ = false;
  WanStreamCounters counters_;
};

}  // namespace ferry::wan
