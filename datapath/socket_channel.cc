// SocketChannel: one receive and one gathered send in flight on a connected socket (see
// socket_channel.h).
#include "datapath/socket_channel.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <cerrno>

#include "datapath/assert.h"

namespace ferry {

SocketChannel::SocketChannel(Reactor& reactor, SocketChannelOwner& owner, size_t iov_max) noexcept
    : reactor_(reactor), owner_(owner) {
  recv_op_.ch = this;
  send_op_.ch = this;
  gather_.reserve(iov_max);  // a connection's one allocation for its sends, at set-up
}

SocketChannel::~SocketChannel() {
  if (fd_ >= 0) ::close(fd_);
}

void SocketChannel::attach(int fd) noexcept {
  fd_ = fd;
  int one = 1;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void SocketChannel::receive(void* data, size_t len) noexcept {
  FERRY_ASSERT(!recv_in_flight_ && len > 0);
  recv_data_ = data;
  recv_len_ = len;
  recv_in_flight_ = true;
  submit_recv();
}

void SocketChannel::submit_recv() noexcept {
  io_uring_sqe* sqe = reactor_.get_sqe();
  io_uring_prep_recv(sqe, fd_, recv_data_, recv_len_, 0);
  if (poll_first_ && drained_) sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
  Reactor::prepare(sqe, &recv_op_);
  ++stats_.receives;
}

void SocketChannel::on_recv_cqe(int32_t res) noexcept {
  if ((res == -EINTR || res == -EAGAIN) && !shut_down_) {
    drained_ = true;
    return submit_recv();
  }
  recv_in_flight_ = false;
  if (res > 0) {
    drained_ = size_t(res) < recv_len_;
    stats_.bytes_in += uint64_t(res);
  }
  owner_.on_received(res);
}

void SocketChannel::send(int flags) noexcept {
  FERRY_ASSERT(!send_in_flight_);
  if (gather_.empty()) return;
  gather_pos_ = 0;
  send_flags_ = flags | MSG_NOSIGNAL;
  send_in_flight_ = true;
  submit_send();
}

void SocketChannel::submit_send() noexcept {
  msg_ = msghdr{};
  msg_.msg_iov = gather_.data() + gather_pos_;
  msg_.msg_iovlen = gather_.size() - gather_pos_;
  io_uring_sqe* sqe = reactor_.get_sqe();
  io_uring_prep_sendmsg(sqe, fd_, &msg_, unsigned(send_flags_));
  Reactor::prepare(sqe, &send_op_);
  ++stats_.sends;
}

void SocketChannel::on_send_cqe(int32_t res) noexcept {
  if ((res == -EINTR || res == -EAGAIN) && !shut_down_) return submit_send();
  if (res >= 0) {
    stats_.bytes_out += uint64_t(res);
    // Advance over what was sent; resubmit the remainder of a short send.
    size_t left = size_t(res);
    while (gather_pos_ < gather_.size() && left >= gather_[gather_pos_].iov_len) {
      left -= gather_[gather_pos_].iov_len;
      ++gather_pos_;
    }
    if (gather_pos_ < gather_.size()) {
      if (shut_down_) {
        res = -ECANCELED;  // shut down while a short send was being continued
      } else {
        iovec& v = gather_[gather_pos_];
        v.iov_base = static_cast<char*>(v.iov_base) + left;
        v.iov_len -= left;
        return submit_send();
      }
    }
  }
  send_in_flight_ = false;
  gather_.clear();
  owner_.on_sent(res < 0 ? res : 0);
}

void SocketChannel::shutdown() noexcept {
  if (shut_down_) return;
  shut_down_ = true;
  if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
}

}  // namespace ferry
