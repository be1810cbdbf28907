// SocketChannel: the socket half of every connection (iSCSI, NBD, WAN link) on a reactor. It
// owns the connected socket and keeps at most one receive and one send in flight through
// io_uring; the connection above it owns the buffers (from the reactor's pool), parses, and
// decides when to read (back-pressure: it simply does not call receive()).
//
//   receive(buf, len) ──recv (POLL_FIRST once a receive left the socket empty)──▶ on_received(n)
//   gather() += iovecs; send(flags) ──sendmsg, short sends continued here──▶ on_sent(0)
//   shutdown() ──▶ both in-flight operations end; idle() says when the owner may free itself
//
// EINTR and EAGAIN are retried here; a receive of 0 (peer closed) or an error reaches the owner
// as res <= 0, a send error as res < 0. After shutdown() nothing is resubmitted: every completion
// goes to the owner, which frees itself once idle(). TLS sits above, in the one engine of
// datapath/tls (its records are what the owner gathers and receives). The gather vector is
// reserved once (iov_max) and reused: no allocation per send. Reactor thread only.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "datapath/reactor.h"

namespace ferry {

class SocketChannelOwner {
 public:
  // A receive completed: res > 0 bytes landed at the start of the posted buffer; 0: the peer
  // closed; < 0: an error (-errno).
  virtual void on_received(int32_t res) noexcept = 0;
  // The whole gather was sent (res == 0) or the send failed (res < 0, -errno).
  virtual void on_sent(int32_t res) noexcept = 0;

 protected:
  ~SocketChannelOwner() = default;
};

struct SocketChannelStats {
  uint64_t receives = 0;
  uint64_t sends = 0;  // sendmsg submissions (a short send costs one more)
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
};

class SocketChannel {
 public:
  SocketChannel(Reactor& reactor, SocketChannelOwner& owner, size_t iov_max) noexcept;
  ~SocketChannel();  // closes the socket
  SocketChannel(const SocketChannel&) = delete;
  SocketChannel& operator=(const SocketChannel&) = delete;

  // Takes the connected socket; sets TCP_NODELAY (harmless failure on AF_UNIX).
  void attach(int fd) noexcept;
  int fd() const noexcept { return fd_; }
  // Whether a receive that follows one that left the socket empty waits for readiness first
  // (IORING_RECVSEND_POLL_FIRST: saves the recv that would only say EAGAIN). On by default.
  void set_poll_first(bool on) noexcept { poll_first_ = on; }

  // Posts one receive into [data, data + len). Precondition: !receiving(), len > 0.
  void receive(void* data, size_t len) noexcept;
  bool receiving() const noexcept { return recv_in_flight_; }

  // The iovecs of the next send; the owner appends (at most iov_max) while !sending().
  std::vector<iovec>& gather() noexcept { return gather_; }
  // Sends the gather (all of it: short sends are continued; flags e.g. MSG_WAITALL, always with
  // MSG_NOSIGNAL). An empty gather is not sent. Precondition: !sending().
  void send(int flags = 0) noexcept;
  bool sending() const noexcept { return send_in_flight_; }

  // Ends both directions (wakes the in-flight receive and send); idempotent.
  void shutdown() noexcept;
  bool shut_down() const noexcept { return shut_down_; }
  // No socket operation in flight.
  bool idle() const noexcept { return !recv_in_flight_ && !send_in_flight_; }
  const SocketChannelStats& stats() const noexcept { return stats_; }

 private:
  struct RecvOp final : Operation {
    SocketChannel* ch;
    void on_cqe(int32_t res, uint32_t) noexcept override { ch->on_recv_cqe(res); }
  };
  struct SendOp final : Operation {
    SocketChannel* ch;
    void on_cqe(int32_t res, uint32_t) noexcept override { ch->on_send_cqe(res); }
  };
  void submit_recv() noexcept;
  void submit_send() noexcept;
  void on_recv_cqe(int32_t res) noexcept;
  void on_send_cqe(int32_t res) noexcept;

  Reactor& reactor_;
  SocketChannelOwner& owner_;
  int fd_ = -1;
  bool poll_first_ = true;
  bool drained_ = false;  // the last receive did not fill its buffer (the socket is likely empty)
  bool shut_down_ = false;
  bool recv_in_flight_ = false;
  bool send_in_flight_ = false;
  RecvOp recv_op_;
  SendOp send_op_;
  void* recv_data_ = nullptr;
  size_t recv_len_ = 0;
  std::vector<iovec> gather_;
  size_t gather_pos_ = 0;  // first iovec not yet fully sent
  int send_flags_ = 0;
  msghdr msg_{};
  SocketChannelStats stats_;
};

}  // namespace ferry
