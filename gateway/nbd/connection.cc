// NBD connection: handshake, transmission, TLS through datapath/tls (see connection.h).
// Reactor thread only.
#include "gateway/nbd/connection.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <new>

#include "datapath/endian.h"
#include "datapath/tls/tls_engine.h"
#include "gateway/nbd/server.h"

namespace ferry::nbd {

namespace {
constexpr size_t kRxBytes = 128 * 1024;
constexpr size_t kTlsRxBytes = 64 * 1024;
constexpr size_t kTlsTxBytes = 256 * 1024;
constexpr size_t kTlsRecordRoom = 16384 + 512;  // one record plus overhead
constexpr size_t kTxIovMax = 512;               // per sendmsg (< IOV_MAX)
constexpr uint32_t kReadChunksMax = 16;         // structured READ: chunks per reply
constexpr uint32_t kExtentsMax = 64;            // BLOCK_STATUS: descriptors per reply
constexpr size_t kHeadBytes = kBlockStatusHeadBytes + 8 * kExtentsMax;
constexpr uint32_t kIovPerTask = 2 * kReadChunksMax + 1;
// 32 MiB: the most the NBD spec expects a client to send in one request (pool allows more).
constexpr uint32_t kBlockMaxBytes = uint32_t(std::min<size_t>(BufferPool::kMaxBytes, 32u << 20));
constexpr uint32_t kPreferredBlockBytes = 4096;
constexpr uint32_t kMetaContextId = 1;
constexpr uint64_t kMs = 1000000ull;
static_assert(kHeadBytes >= kReadChunksMax * kOffsetHoleBytes);
}  // namespace

// One request (or one handshake reply) from parse to the last byte of its reply on the wire.
struct NbdTask {
  enum class Stage : uint8_t { none, status, data, single, flush_after };
  struct Extent {
    uint32_t length_bytes;
    uint32_t flags;  // NBD base:allocation flags
  };

  NbdTask* next = nullptr;
  Connection* conn = nullptr;
  bool command = false;          // a transmission request (false: handshake reply)
  bool start_tls_after = false;  // STARTTLS ACK: switch to TLS once sent
  bool discard_payload = false;  // rejected WRITE: payload is read and dropped
  Stage stage = Stage::none;
  Request req;
  uint32_t error = 0;
  uint32_t payload_received = 0;
  uint64_t pos_bytes = 0;
  IoRequest io;
  Buffer buf;
  const std::byte* lent = nullptr;  // READ: the device's own copy of the data (buf released)
  std::array<Extent, kExtentsMax> extents;
  uint32_t extent_count = 0;
  uint8_t head[kHeadBytes];
  iovec iov[kIovPerTask];
  uint32_t iov_count = 0;
};

Connection::Connection(NbdServer& server, Reactor& reactor, int fd, uint64_t id) noexcept
    : HubConnection(id),
      server_(server),
      reactor_(reactor),
      channel_(reactor, *this, kTxIovMax),
      source_(peer_address(fd)),
      in_flight_max_(std::max<uint32_t>(1, server.options().requests_in_flight_max)) {
  channel_.attach(fd);
  tx_batch_.reserve(kTxIovMax);
}

Connection::~Connection() {
  for (NbdTask* t : free_tasks_) delete t;
}

void Connection::start() noexcept {
  server_.hub().opened(this);
  rx_ = reactor_.pool().allocate(kRxBytes);
  if (!rx_) return close("no receive buffer");
  reactor_.arm(timer_, uint64_t(server_.options().handshake_timeout_ms) * kMs,
               &Connection::on_timer, this);
  NbdTask* t = new_task();
  if (t == nullptr) return close("no memory");
  build_greeting(t->head);
  t->iov[0] = {t->head, kGreetingBytes};
  t->iov_count = 1;
  queue_task(t);
  post_recv();
}

// ---------------------------------------------------------------- lifetime

void Connection::close(const char* why) noexcept {
  if (phase_ == Phase::closing) return;
  if (why != nullptr)
    std::fprintf(stderr, "ferry: nbd connection %lu: closing: %s\n",
                 static_cast<unsigned long>(id()), why);
  phase_ = Phase::closing;
  server_.hub().unpublish(this);
  reactor_.cancel(timer_);
  reactor_.cancel(retry_timer_);
  channel_.shutdown();  // wakes the in-flight receive and send
  if (payload_task_ != nullptr) {
    NbdTask* t = payload_task_;
    payload_task_ = nullptr;
    release_task(t);
  }
  maybe_free();
}

void Connection::maybe_free() noexcept {
  if (phase_ != Phase::closing || !channel_.idle() || flush_scheduled_ || device_in_flight_ > 0)
    return;
  for (NbdTask* t : tx_batch_) release_task(t);
  tx_batch_.clear();
  if (tls_task_ != nullptr) release_task(std::exchange(tls_task_, nullptr));
  while (tx_head_ != nullptr) {
    NbdTask* t = tx_head_;
    tx_head_ = t->next;
    release_task(t);
  }
  tx_tail_ = nullptr;
  server_.hub().closed(this);
  Connection* self = this;
  reactor_.defer([self] { delete self; });
}

void Connection::on_timer(void* ctx) noexcept {
  auto* c = static_cast<Connection*>(ctx);
  if (c->phase_ != Phase::transmission) c->close("handshake timeout");
}

void Connection::on_retry(void* ctx) noexcept {
  auto* c = static_cast<Connection*>(ctx);
  c->waiting_buffer_ = false;
  c->resume();
}

// ---------------------------------------------------------------- tasks

NbdTask* Connection::new_task() noexcept {
  NbdTask* t;
  if (!free_tasks_.empty()) {
    t = free_tasks_.back();
    free_tasks_.pop_back();
  } else {
    t = new (std::nothrow) NbdTask;  // grows to the high-water mark once, then reused
    if (t == nullptr) return nullptr;
  }
  t->next = nullptr;
  t->conn = this;
  t->command = false;
  t->start_tls_after = false;
  t->discard_payload = false;
  t->stage = NbdTask::Stage::none;
  t->error = 0;
  t->payload_received = 0;
  t->pos_bytes = 0;
  t->extent_count = 0;
  t->iov_count = 0;
  t->lent = nullptr;
  t->io = IoRequest{};
  ++tasks_live_;
  return t;
}

void Connection::release_task(NbdTask* t) noexcept {
  t->buf.release();
  --tasks_live_;
  if (free_tasks_.size() < in_flight_max_ + 8) {
    free_tasks_.push_back(t);
  } else {
    delete t;
  }
  if (phase_ != Phase::closing && tasks_live_ + 1 == in_flight_max_) {
    // We may have paused reading at the limit: pick up again after this dispatch.
    reactor_.defer([this] { resume(); });
  }
}

// ---------------------------------------------------------------- receive

bool Connection::rx_paused() const noexcept {
  return phase_ == Phase::closing || phase_ == Phase::tls_starting || disc_ || waiting_buffer_ ||
         close_after_send_ || tasks_live_ >= in_flight_max_;
}

void Connection::post_recv() noexcept {
  if (phase_ == Phase::closing || phase_ == Phase::tls_starting || channel_.receiving()) return;
  if (payload_task_ == nullptr && rx_paused()) return;
  if (tls_engine_ != nullptr) {
    channel_.receive(tls_rx_.data(), tls_rx_.capacity());
  } else if (payload_task_ != nullptr && !payload_task_->discard_payload && rx_len_ == 0) {
    NbdTask* t = payload_task_;  // a WRITE's payload lands in its own buffer
    channel_.receive(t->buf.data() + t->payload_received,
                     t->req.length_bytes - t->payload_received);
  } else if (rx_len_ < rx_.capacity()) {  // always: items fit (asserted by bounds)
    channel_.receive(rx_.data() + rx_len_, rx_.capacity() - rx_len_);
  }
}

void Connection::on_received(int32_t res) noexcept {
  if (phase_ == Phase::closing) return maybe_free();
  if (res <= 0) return close(res == 0 || res == -ECONNRESET ? nullptr : "receive error");
  if (tls_engine_ != nullptr) {
    const Errc fed = tls_engine_->feed_ciphertext(
        {reinterpret_cast<const uint8_t*>(tls_rx_.data()), size_t(res)});
    if (phase_ == Phase::tls_handshake)
      tls_handshake_step(fed);
    else if (fed != Errc::ok)
      return close(tls_engine_->error().c_str());
    else if (!tls_pump_rx())
      return;
  } else if (payload_task_ != nullptr && !payload_task_->discard_payload && rx_len_ == 0) {
    on_plain_bytes(size_t(res));
  } else {
    rx_len_ += size_t(res);
    process_rx();
  }
  post_recv();
}

void Connection::on_plain_bytes(size_t n) noexcept {
  NbdTask* t = payload_task_;
  t->payload_received += uint32_t(n);
  if (t->payload_received < t->req.length_bytes) return;
  payload_task_ = nullptr;
  if (t->discard_payload)
    reply(t, t->error);
  else
    execute(t);
  process_rx();
}

bool Connection::tls_pump_rx() noexcept {
  for (;;) {
    if (phase_ == Phase::closing) return false;
    if (payload_task_ == nullptr && rx_paused()) return true;
    std::byte* dst;
    size_t cap;
    bool to_payload = false;
    if (payload_task_ != nullptr && !payload_task_->discard_payload && rx_len_ == 0) {
      dst = payload_task_->buf.data() + payload_task_->payload_received;
      cap = payload_task_->req.length_bytes - payload_task_->payload_received;
      to_payload = true;
    } else {
      dst = rx_.data() + rx_len_;
      cap = rx_.capacity() - rx_len_;
    }
    if (cap == 0) return true;
    const size_t n = tls_engine_->read_plaintext_record({reinterpret_cast<uint8_t*>(dst), cap});
    if (n == 0) {
      const tls::TlsState state = tls_engine_->state();
      if (state == tls::TlsState::established) {  // needs more ciphertext
        if (tls_engine_->pending_ciphertext() > 0) kick_tx();
        return true;
      }
      close(state == tls::TlsState::closed ? nullptr : tls_engine_->error().c_str());
      return false;
    }
    if (to_payload) {
      on_plain_bytes(n);
    } else {
      rx_len_ += n;
      process_rx();
    }
  }
}

void Connection::resume() noexcept {
  if (phase_ == Phase::closing || phase_ == Phase::tls_starting) return;
  if (tls_engine_ != nullptr) {
    if (phase_ != Phase::tls_handshake && !tls_pump_rx()) return;
  } else {
    process_rx();
  }
  post_recv();
}

void Connection::process_rx() noexcept {
  size_t pos = 0;
  const auto* base = reinterpret_cast<const uint8_t*>(rx_.data());
  while (phase_ != Phase::closing) {
    const std::span<const uint8_t> avail(base + pos, rx_len_ - pos);
    if (payload_task_ != nullptr) {
      NbdTask* t = payload_task_;
      const size_t take = std::min<size_t>(avail.size(), t->req.length_bytes - t->payload_received);
      if (take == 0) break;
      if (!t->discard_payload) std::memcpy(t->buf.data() + t->payload_received, avail.data(), take);
      pos += take;
      t->payload_received += uint32_t(take);
      if (t->payload_received < t->req.length_bytes) continue;
      payload_task_ = nullptr;
      if (t->discard_payload)
        reply(t, t->error);
      else
        execute(t);
      continue;
    }
    if (rx_paused()) break;
    if (phase_ == Phase::greeting) {
      ClientFlagsParse p = parse_client_flags(avail);
      if (p.status == ParseStatus::need_more) break;
      if (p.status != ParseStatus::ok) return close(p.why);
      no_zeroes_ = (p.flags & kClientFlagNoZeroes) != 0;
      pos += kClientFlagsBytes;
      phase_ = Phase::options;
    } else if (phase_ == Phase::options) {
      OptionParse p = parse_option(avail);
      if (p.status == ParseStatus::need_more) break;
      if (p.status != ParseStatus::ok) return close(p.why);
      pos += p.total_bytes;
      if (!handle_option(p.option, p.data)) return;
    } else if (phase_ == Phase::transmission) {
      RequestParse p = parse_request(avail);
      if (p.status == ParseStatus::need_more) break;
      if (p.status != ParseStatus::ok) return close(p.why);
      if (!handle_request(p)) break;  // waiting for a buffer: header stays in rx_
      pos += kRequestBytes;
    } else {
      break;  // TLS handshake in progress or starting
    }
  }
  if (phase_ == Phase::closing) return;
  if (pos > 0) {
    std::memmove(rx_.data(), rx_.data() + pos, rx_len_ - pos);
    rx_len_ -= pos;
  }
  if (disc_ && tasks_live_ == 0 && payload_task_ == nullptr && tx_head_ == nullptr &&
      !channel_.sending())
    close(nullptr);
}

// ---------------------------------------------------------------- handshake

void Connection::queue_option_reply(uint32_t option, uint32_t type, std::span<const uint8_t> a,
                                    std::span<const uint8_t> b) noexcept {
  NbdTask* t = new_task();
  if (t == nullptr) return close("no memory");
  const size_t total = kOptionReplyHeaderBytes + a.size() + b.size();
  uint8_t* out = t->head;
  if (total > sizeof t->head) {
    t->buf = reactor_.pool().allocate(total);
    if (!t->buf) {
      release_task(t);
      return close("no memory for option reply");
    }
    out = reinterpret_cast<uint8_t*>(t->buf.data());
  }
  build_option_reply_header(out, option, type, uint32_t(a.size() + b.size()));
  if (!a.empty()) std::memcpy(out + kOptionReplyHeaderBytes, a.data(), a.size());
  if (!b.empty()) std::memcpy(out + kOptionReplyHeaderBytes + a.size(), b.data(), b.size());
  t->iov[0] = {out, total};
  t->iov_count = 1;
  queue_task(t);
}

uint16_t Connection::transmission_flags(const NbdExport& e) const noexcept {
  const Geometry g = e.device->geometry();
  uint16_t f = kTxHasFlags | kTxSendFlush | kTxSendFua | kTxSendWriteZeroes | kTxSendFastZero |
               kTxSendCache | kTxCanMultiConn;
  if (structured_) f |= kTxSendDf;
  if (g.can_discard) f |= kTxSendTrim;
  if (g.read_only) f |= kTxReadOnly;
  return f;
}

bool Connection::handle_option(uint32_t option, std::span<const uint8_t> data) noexcept {
  const bool tls_missing = server_.options().tls_required && !tls_;
  if (tls_missing && option != kOptStartTls && option != kOptAbort) {
    if (option == kOptExportName) {
      close("EXPORT_NAME without TLS on a TLS-only server");
      return false;
    }
    queue_option_reply(option, kRepErrTlsReqd, {});
    return phase_ != Phase::closing;
  }
  switch (option) {
    case kOptExportName:
      return handle_export_name(data);
    case kOptAbort:
      queue_option_reply(option, kRepAck, {});
      close_after_send_ = true;
      break;
    case kOptList: {
      if (!data.empty()) {
        queue_option_reply(option, kRepErrInvalid, {});
        break;
      }
      for (const NbdExport& e : server_.exports()) {
        uint8_t len[4];
        store_be32(len, uint32_t(e.name.size()));
        queue_option_reply(option, kRepServer, len,
                           {reinterpret_cast<const uint8_t*>(e.name.data()), e.name.size()});
      }
      queue_option_reply(option, kRepAck, {});
      break;
    }
    case kOptStartTls:
      if (!data.empty() || tls_) {
        queue_option_reply(option, kRepErrInvalid, {});
      } else if (server_.tls_context() == nullptr) {
        queue_option_reply(option, kRepErrPolicy, {});
      } else if (server_.auth_backoff().remaining_ns(source_) > 0) {
        queue_option_reply(option, kRepErrPolicy, {});  // failed-authentication back-off
      } else {
        queue_option_reply(option, kRepAck, {});
        if (phase_ == Phase::closing) return false;
        tx_tail_->start_tls_after = true;
        phase_ = Phase::tls_starting;  // the bytes that follow are TLS records
      }
      break;
    case kOptInfo:
    case kOptGo:
      return handle_info_or_go(option, data);
    case kOptStructuredReply:
      if (!data.empty()) {
        queue_option_reply(option, kRepErrInvalid, {});
      } else {
        structured_ = true;
        queue_option_reply(option, kRepAck, {});
      }
      break;
    case kOptListMetaContext:
    case kOptSetMetaContext:
      return handle_meta_context(option, data);
    default:
      queue_option_reply(option, kRepErrUnsup, {});
      break;
  }
  return phase_ != Phase::closing;
}

bool Connection::handle_export_name(std::span<const uint8_t> data) noexcept {
  const std::string_view name(reinterpret_cast<const char*>(data.data()), data.size());
  const NbdExport* e = server_.find_export(name);
  if (e == nullptr || (server_.export_requires_tls(*e) && !tls_)) {
    close(e == nullptr ? "EXPORT_NAME: unknown export" : "EXPORT_NAME: export requires TLS");
    return false;
  }
  NbdTask* t = new_task();
  if (t == nullptr) {
    close("no memory");
    return false;
  }
  const size_t n = build_export_name_reply(t->head, e->device->geometry().size_bytes(),
                                           transmission_flags(*e), no_zeroes_);
  t->iov[0] = {t->head, n};
  t->iov_count = 1;
  queue_task(t);
  enter_transmission(*e);
  return true;
}

bool Connection::handle_info_or_go(uint32_t option, std::span<const uint8_t> data) noexcept {
  Result<InfoRequest> r = parse_info_request(data);
  if (!r) {
    queue_option_reply(option, kRepErrInvalid, {});
    return phase_ != Phase::closing;
  }
  const NbdExport* e = server_.find_export(r->name);
  if (e == nullptr) {
    queue_option_reply(option, kRepErrUnknown, {});
    return phase_ != Phase::closing;
  }
  if (server_.export_requires_tls(*e) && !tls_) {
    queue_option_reply(option, kRepErrTlsReqd, {});
    return phase_ != Phase::closing;
  }
  const Geometry g = e->device->geometry();
  uint8_t info[kInfoExportBytes];
  build_info_export(info, g.size_bytes(), transmission_flags(*e));
  queue_option_reply(option, kRepInfo, info);
  uint8_t bs[kInfoBlockSizeBytes];
  build_info_block_size(bs, g.block_size_bytes, std::max(kPreferredBlockBytes, g.block_size_bytes),
                        kBlockMaxBytes);
  queue_option_reply(option, kRepInfo, bs);
  for (size_t i = 0; i < r->request_count; ++i) {
    const uint16_t type = r->request(i);
    uint8_t t[2];
    store_be16(t, type);
    if (type == kInfoName) {
      queue_option_reply(option, kRepInfo, t,
                         {reinterpret_cast<const uint8_t*>(e->name.data()), e->name.size()});
    } else if (type == kInfoDescription && !e->description.empty()) {
      queue_option_reply(
          option, kRepInfo, t,
          {reinterpret_cast<const uint8_t*>(e->description.data()), e->description.size()});
    }
  }
  queue_option_reply(option, kRepAck, {});
  if (phase_ == Phase::closing) return false;
  if (option == kOptGo) enter_transmission(*e);
  return true;
}

bool Connection::handle_meta_context(uint32_t option, std::span<const uint8_t> data) noexcept {
  Result<MetaContextRequest> r = parse_meta_context_request(data);
  if (!r || (option == kOptSetMetaContext && !structured_)) {
    queue_option_reply(option, kRepErrInvalid, {});
    return phase_ != Phase::closing;
  }
  const NbdExport* e = server_.find_export(r->export_name);
  if (e == nullptr) {
    queue_option_reply(option, kRepErrUnknown, {});
    return phase_ != Phase::closing;
  }
  if (server_.export_requires_tls(*e) && !tls_) {
    queue_option_reply(option, kRepErrTlsReqd, {});
    return phase_ != Phase::closing;
  }
  const bool list = option == kOptListMetaContext;
  bool match = list && r->query_count == 0;
  size_t pos = 0;
  for (uint32_t i = 0; i < r->query_count; ++i)
    match |= meta_query_matches_base_allocation(next_meta_query(*r, pos), list);
  if (!list) meta_export_ = match ? e : nullptr;
  if (match) {
    uint8_t id[4];
    store_be32(id, list ? 0 : kMetaContextId);
    queue_option_reply(
        option, kRepMetaContext, id,
        {reinterpret_cast<const uint8_t*>(kBaseAllocation), sizeof kBaseAllocation - 1});
  }
  queue_option_reply(option, kRepAck, {});
  return phase_ != Phase::closing;
}

void Connection::enter_transmission(const NbdExport& e) noexcept {
  export_ = &e;
  device_ = e.device;
  geometry_ = device_->geometry();
  limits_.size_bytes = geometry_.size_bytes();
  limits_.block_min_bytes = geometry_.block_size_bytes;
  limits_.block_max_bytes = kBlockMaxBytes;
  limits_.read_only = geometry_.read_only;
  limits_.structured_replies = structured_;
  limits_.meta_context_base_allocation = meta_export_ == &e;
  phase_ = Phase::transmission;
  reactor_.cancel(timer_);
  server_.hub().authenticated(this);
  SessionInfo info;
  info.protocol = "nbd";
  info.peer = peer_endpoint(channel_.fd());
  if (info.peer.empty()) info.peer = "unix";
  info.target = e.name;
  info.detail = tls_engine_ != nullptr ? "tls" : "plain";
  server_.hub().publish(this, std::move(info), &session_counters_);
}

void Connection::start_tls() noexcept {
  if (phase_ != Phase::tls_starting) return;
  tls_engine_.reset(new (std::nothrow) tls::TlsEngine(*server_.tls_context()));
  tls_rx_ = reactor_.pool().allocate(kTlsRxBytes);
  if (tls_engine_ == nullptr || !tls_engine_->ok() || !tls_rx_) return close("cannot start TLS");
  phase_ = Phase::tls_handshake;
  // Whatever followed STARTTLS in the plaintext buffer is the start of the TLS handshake.
  const Errc fed =
      tls_engine_->feed_ciphertext({reinterpret_cast<const uint8_t*>(rx_.data()), rx_len_});
  rx_len_ = 0;
  tls_handshake_step(fed);
  post_recv();
}

void Connection::tls_handshake_step(Errc fed) noexcept {
  if (tls_engine_->pending_ciphertext() > 0) kick_tx();
  if (fed == Errc::ok) {
    if (tls_engine_->state() != tls::TlsState::established) return;  // wants more
    tls_ = true;
    phase_ = Phase::options;
    tls_pump_rx();
    return;
  }
  // The client's certificate was refused (none sent, or not from the CA): an authentication
  // failure for the back-off. A client refusing our certificate is not.
  if (tls_engine_->peer_certificate_refused()) server_.auth_backoff().record_failure(source_);
  close(tls_engine_->error().c_str());
}

// ---------------------------------------------------------------- transmission

bool Connection::handle_request(const RequestParse& p) noexcept {
  const Request& r = p.request;
  if (r.type == kCmdDisc) {
    disc_ = true;  // no reply: finish what is in flight, then close
    return true;
  }
  const uint32_t error = validate_request(r, limits_);
  const bool needs_buffer =
      error == 0 && (r.type == kCmdRead || r.type == kCmdWrite) && r.length_bytes > 0;
  Buffer buf;
  if (needs_buffer) {
    buf = reactor_.pool().allocate(r.length_bytes);
    if (!buf) {
      // Pool exhausted: leave the header in rx_ and try again shortly (bounded wait, one
      // request per connection).
      ++stats_.waits_for_buffer;
      waiting_buffer_ = true;
      reactor_.arm(retry_timer_, 1 * kMs, &Connection::on_retry, this);
      return false;
    }
  }
  NbdTask* t = new_task();
  if (t == nullptr) {
    close("no memory");
    return false;
  }
  ++stats_.requests;
  SessionCounters::add(session_counters_.commands, 1);
  t->command = true;
  t->req = r;
  t->error = error;
  t->buf = std::move(buf);
  if (p.payload_bytes > 0) {
    t->discard_payload = error != 0;
    payload_task_ = t;
    return true;
  }
  if (error != 0)
    reply(t, error);
  else
    execute(t);
  return true;
}

void Connection::execute(NbdTask* t) noexcept {
  const Request& r = t->req;
  IoRequest& io = t->io;
  io = IoRequest{};
  io.owner = t;
  io.on_complete = &Connection::on_io_done;
  t->pos_bytes = r.offset_bytes;
  switch (r.type) {
    case kCmdRead:
      if (r.length_bytes == 0) return reply(t, 0);
      // Holes go out as holes only when asking where they are is cheap: on a remote device
      // BLOCK_STATUS is a second WAN round trip per READ (a cold read cost 2 RTT, not 1).
      t->stage = structured_ && !(r.flags & kCmdFlagDf) && !geometry_.block_status_remote
                     ? NbdTask::Stage::status
                     : NbdTask::Stage::data;
      break;
    case kCmdWrite:
      if (r.length_bytes == 0) return reply(t, 0);
      t->stage = NbdTask::Stage::data;
      break;
    case kCmdBlockStatus:
      t->stage = NbdTask::Stage::status;
      break;
    case kCmdFlush:
      t->stage = NbdTask::Stage::single;
      io.op = IoOp::flush;
      break;
    case kCmdTrim:
      if (r.length_bytes == 0 || !geometry_.can_discard) return reply(t, 0);  // advisory
      t->stage = NbdTask::Stage::single;
      io.op = IoOp::discard;
      break;
    case kCmdWriteZeroes: {
      if (r.length_bytes == 0) return reply(t, 0);
      const bool may_deallocate = !(r.flags & kCmdFlagNoHole);
      // FAST_ZERO: only a deallocation that reads back as zeroes is "fast"; writing zeroes
      // costs as much as a write, so the client would rather do it itself.
      if ((r.flags & kCmdFlagFastZero) &&
          !(may_deallocate && geometry_.can_discard && geometry_.discard_zeroes))
        return reply(t, kEnotsup);
      t->stage = NbdTask::Stage::single;
      io.op = IoOp::write_zeroes;
      io.may_deallocate = may_deallocate;
      io.fua = (r.flags & kCmdFlagFua) != 0;
      break;
    }
    case kCmdCache:
      return reply(t, 0);  // advisory; RAM/file devices have nothing to warm
    default:
      return reply(t, kEinval);
  }
  submit_io(t);
}

void Connection::submit_io(NbdTask* t) noexcept {
  IoRequest& io = t->io;
  const Request& r = t->req;
  const uint64_t end = r.offset_bytes + r.length_bytes;
  io.result = Errc::ok;
  io.may_lend = false;
  io.lent = nullptr;
  switch (t->stage) {
    case NbdTask::Stage::status:
      io.op = IoOp::block_status;
      io.offset_bytes = t->pos_bytes;
      io.length_bytes = end - t->pos_bytes;
      break;
    case NbdTask::Stage::data: {
      const uint64_t piece = std::min<uint64_t>(
          end - t->pos_bytes,
          std::max<uint32_t>(geometry_.max_transfer_bytes, geometry_.block_size_bytes));
      io.op = r.type == kCmdWrite ? IoOp::write : IoOp::read;
      io.fua = r.type == kCmdWrite && (r.flags & kCmdFlagFua);
      io.offset_bytes = t->pos_bytes;
      io.length_bytes = piece;
      io.data = t->buf.data() + (t->pos_bytes - r.offset_bytes);
      // A READ done in one piece may be sent straight from the device's memory: the reply is
      // copied into the socket before the client can see it complete.
      io.may_lend = r.type == kCmdRead && piece == r.length_bytes;
      break;
    }
    case NbdTask::Stage::single:
      io.offset_bytes = r.offset_bytes;
      io.length_bytes = r.length_bytes;
      if (io.op == IoOp::flush) io.offset_bytes = io.length_bytes = 0;
      break;
    case NbdTask::Stage::flush_after:
      io.op = IoOp::flush;
      io.offset_bytes = io.length_bytes = 0;
      break;
    case NbdTask::Stage::none:
      FERRY_ASSERT(false);
  }
  ++device_in_flight_;
  device_->submit(io);  // may complete inline
}

void Connection::on_io_done(IoRequest& io) noexcept {
  auto* t = static_cast<NbdTask*>(io.owner);
  t->conn->io_done(t);
}

void Connection::io_done(NbdTask* t) noexcept {
  --device_in_flight_;
  if (phase_ == Phase::closing) {
    release_task(t);
    return maybe_free();
  }
  IoRequest& io = t->io;
  const Request& r = t->req;
  const uint64_t end = r.offset_bytes + r.length_bytes;
  if (io.result != Errc::ok) {
    if (t->stage == NbdTask::Stage::status && r.type == kCmdRead) {
      t->stage = NbdTask::Stage::data;  // no map: send everything as data
      t->extent_count = 0;
      t->pos_bytes = r.offset_bytes;
      return submit_io(t);
    }
    return reply(t, to_nbd_error(io.result));
  }
  switch (t->stage) {
    case NbdTask::Stage::status: {
      uint32_t flags = 0;
      if (io.status_flags & kStatusHole) flags |= kStateHole;
      if (io.status_flags & kStatusZero) flags |= kStateZero;
      const uint64_t len =
          std::min<uint64_t>(std::max<uint64_t>(io.status_length_bytes, 1), end - t->pos_bytes);
      const bool is_read = r.type == kCmdRead;
      // READ only cares about "reads as zero"; BLOCK_STATUS keeps every distinction.
      const uint32_t key = is_read ? (flags & kStateZero) : flags;
      if (t->extent_count > 0 && t->extents[t->extent_count - 1].flags == key) {
        t->extents[t->extent_count - 1].length_bytes += uint32_t(len);
      } else {
        t->extents[t->extent_count++] = {uint32_t(len), key};
      }
      t->pos_bytes += len;
      const uint32_t limit =
          is_read ? kReadChunksMax - 1 : ((r.flags & kCmdFlagReqOne) ? 1 : kExtentsMax);
      if (t->pos_bytes < end && t->extent_count < limit) return submit_io(t);
      if (!is_read) return finish_block_status(t);
      if (t->pos_bytes < end) {  // too fragmented: the rest goes as data
        if (t->extents[t->extent_count - 1].flags == 0) {
          t->extents[t->extent_count - 1].length_bytes += uint32_t(end - t->pos_bytes);
        } else {
          t->extents[t->extent_count++] = {uint32_t(end - t->pos_bytes), 0};
        }
      }
      bool any_data = false;
      for (uint32_t i = 0; i < t->extent_count; ++i) any_data |= t->extents[i].flags == 0;
      if (!any_data) return finish_read(t);
      t->stage = NbdTask::Stage::data;
      t->pos_bytes = r.offset_bytes;
      return submit_io(t);
    }
    case NbdTask::Stage::data:
      if (io.lent != nullptr) {
        t->lent = io.lent;
        t->buf.release();
      }
      t->pos_bytes += io.length_bytes;
      if (t->pos_bytes < end) return submit_io(t);
      if (r.type == kCmdRead) return finish_read(t);
      SessionCounters::add(session_counters_.bytes_written, r.length_bytes);
      return reply(t, 0);
    case NbdTask::Stage::single:
      if (r.type == kCmdTrim && (r.flags & kCmdFlagFua)) {
        t->stage = NbdTask::Stage::flush_after;
        return submit_io(t);
      }
      return reply(t, 0);
    case NbdTask::Stage::flush_after:
      return reply(t, 0);
    case NbdTask::Stage::none:
      break;
  }
  FERRY_ASSERT(false);
}

void Connection::finish_read(NbdTask* t) noexcept {
  const Request& r = t->req;
  SessionCounters::add(session_counters_.bytes_read, r.length_bytes);
  // iovec wants a mutable pointer; sendmsg and the TLS engine only read through it.
  std::byte* data = t->lent != nullptr ? const_cast<std::byte*>(t->lent) : t->buf.data();
  if (!structured_) {
    build_simple_reply(t->head, 0, r.cookie);
    t->iov[0] = {t->head, kSimpleReplyBytes};
    t->iov[1] = {data, r.length_bytes};
    t->iov_count = 2;
    return queue_task(t);
  }
  if (t->extent_count == 0) t->extents[t->extent_count++] = {r.length_bytes, 0};
  uint8_t* head = t->head;
  uint64_t off = r.offset_bytes;
  t->iov_count = 0;
  for (uint32_t i = 0; i < t->extent_count; ++i) {
    const auto& e = t->extents[i];
    const uint16_t flags = i + 1 == t->extent_count ? kReplyFlagDone : 0;
    if (e.flags & kStateZero) {
      build_offset_hole(head, flags, r.cookie, off, e.length_bytes);
      t->iov[t->iov_count++] = {head, kOffsetHoleBytes};
      head += kOffsetHoleBytes;
    } else {
      build_offset_data_head(head, flags, r.cookie, off, e.length_bytes);
      t->iov[t->iov_count++] = {head, kOffsetDataHeadBytes};
      t->iov[t->iov_count++] = {data + (off - r.offset_bytes), e.length_bytes};
      head += kOffsetDataHeadBytes;
    }
    off += e.length_bytes;
  }
  queue_task(t);
}

void Connection::finish_block_status(NbdTask* t) noexcept {
  build_block_status_head(t->head, kReplyFlagDone, t->req.cookie, kMetaContextId, t->extent_count);
  for (uint32_t i = 0; i < t->extent_count; ++i)
    build_block_descriptor(t->head + kBlockStatusHeadBytes + 8 * i, t->extents[i].length_bytes,
                           t->extents[i].flags);
  t->iov[0] = {t->head, kBlockStatusHeadBytes + 8 * size_t(t->extent_count)};
  t->iov_count = 1;
  queue_task(t);
}

void Connection::reply(NbdTask* t, uint32_t error) noexcept {
  if (error != 0) {
    t->buf.release();
    if (structured_) {
      build_error_chunk(t->head, kReplyFlagDone, t->req.cookie, error);
      t->iov[0] = {t->head, kErrorChunkBytes};
    } else {
      build_simple_reply(t->head, error, t->req.cookie);
      t->iov[0] = {t->head, kSimpleReplyBytes};
    }
    t->iov_count = 1;
    return queue_task(t);
  }
  if (t->req.type == kCmdRead) return finish_read(t);  // zero-length read
  if (t->req.type == kCmdBlockStatus) return finish_block_status(t);
  build_simple_reply(t->head, 0, t->req.cookie);
  t->iov[0] = {t->head, kSimpleReplyBytes};
  t->iov_count = 1;
  queue_task(t);
}

// ---------------------------------------------------------------- transmit

void Connection::queue_task(NbdTask* t) noexcept {
  if (phase_ == Phase::closing) {
    release_task(t);
    return maybe_free();
  }
  t->next = nullptr;
  if (tx_tail_ == nullptr)
    tx_head_ = tx_tail_ = t;
  else {
    tx_tail_->next = t;
    tx_tail_ = t;
  }
  kick_tx();
}

void Connection::kick_tx() noexcept {
  if (channel_.sending() || flush_scheduled_ || phase_ == Phase::closing) return;
  flush_scheduled_ = true;
  reactor_.defer([this] { flush_tx(); });  // batch everything this dispatch produced
}

void Connection::flush_tx() noexcept {
  flush_scheduled_ = false;
  if (phase_ == Phase::closing) return maybe_free();
  if (channel_.sending()) return;
  std::vector<iovec>& iov = channel_.gather();
  if (tls_engine_ != nullptr) {
    if (!tls_fill_tx()) return close("TLS write error");
    if (tls_tx_len_ == 0) {
      if (close_after_send_ && tx_head_ == nullptr) close(nullptr);
      return;
    }
    iov.push_back({tls_tx_.data(), tls_tx_len_});
    return channel_.send();
  }
  tx_batch_.clear();
  while (tx_head_ != nullptr && iov.size() + tx_head_->iov_count <= kTxIovMax) {
    NbdTask* t = tx_head_;
    tx_head_ = t->next;
    if (tx_head_ == nullptr) tx_tail_ = nullptr;
    tx_batch_.push_back(t);
    for (uint32_t i = 0; i < t->iov_count; ++i) iov.push_back(t->iov[i]);
    if (t->start_tls_after) break;  // nothing after it may go out in plaintext
  }
  if (tx_batch_.empty()) return;
  // MSG_WAITALL: the ring itself waits for socket room until the whole gather is out, instead of
  // handing back a short count that costs a loop pass and a resubmit per refill (1 MiB READs).
  channel_.send(MSG_WAITALL);
}

bool Connection::tls_fill_tx() noexcept {
  if (!tls_tx_) {
    tls_tx_ = reactor_.pool().allocate(kTlsTxBytes);
    if (!tls_tx_) return false;
  }
  auto* out = reinterpret_cast<uint8_t*>(tls_tx_.data());
  const size_t cap = tls_tx_.capacity();
  tls::TlsEngine& engine = *tls_engine_;
  auto drain = [&]() noexcept {
    while (tls_tx_len_ < cap && engine.pending_ciphertext() > 0) {
      const size_t n = engine.take_ciphertext({out + tls_tx_len_, cap - tls_tx_len_});
      if (n == 0) break;
      tls_tx_len_ += n;
    }
  };
  drain();
  // Encrypt only while established (a peer's close_notify ends writing; the receive side closes).
  while (tls_ && engine.state() == tls::TlsState::established &&
         tls_tx_len_ + kTlsRecordRoom <= cap && engine.pending_ciphertext() == 0) {
    if (tls_task_ == nullptr) {
      if (tx_head_ == nullptr) break;
      tls_task_ = tx_head_;
      tx_head_ = tls_task_->next;
      if (tx_head_ == nullptr) tx_tail_ = nullptr;
      tls_iov_ = 0;
      tls_iov_off_ = 0;
    }
    NbdTask* t = tls_task_;
    if (tls_iov_ < t->iov_count) {
      const iovec& v = t->iov[tls_iov_];
      const size_t n = std::min<size_t>(16384, v.iov_len - tls_iov_off_);
      if (n > 0 && engine.write_plaintext(
                       {static_cast<const uint8_t*>(v.iov_base) + tls_iov_off_, n}) != Errc::ok)
        return false;
      tls_iov_off_ += n;
      if (tls_iov_off_ == v.iov_len) {
        ++tls_iov_;
        tls_iov_off_ = 0;
      }
      drain();
    }
    if (tls_iov_ == t->iov_count) {  // encrypted: the plaintext is no longer needed
      tls_task_ = nullptr;
      after_task_sent(t);
    }
  }
  return true;
}

void Connection::on_sent(int32_t res) noexcept {
  if (phase_ == Phase::closing || res < 0) {
    for (NbdTask* t : tx_batch_) release_task(t);
    tx_batch_.clear();
    if (phase_ != Phase::closing)
      close(res == -EPIPE || res == -ECONNRESET ? nullptr : "send error");
    return maybe_free();
  }
  if (tls_engine_ != nullptr && tx_batch_.empty()) {
    tls_tx_len_ = 0;
    flush_tx();  // encrypts and sends more
    if (disc_ && tasks_live_ == 0 && tx_head_ == nullptr && !channel_.sending()) close(nullptr);
    return;
  }
  for (NbdTask* t : tx_batch_) after_task_sent(t);
  tx_batch_.clear();
  if (phase_ == Phase::closing) return maybe_free();
  if (tx_head_ != nullptr) return flush_tx();
  if (close_after_send_) return close(nullptr);
  if (disc_ && tasks_live_ == 0 && payload_task_ == nullptr) close(nullptr);
}

void Connection::after_task_sent(NbdTask* t) noexcept {
  const bool tls_after = t->start_tls_after;
  release_task(t);
  if (tls_after) start_tls();
}

}  // namespace ferry::nbd
