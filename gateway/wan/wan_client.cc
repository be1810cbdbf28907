// WanClient and RemoteDevice (see wan_client.h).
#include "gateway/wan/wan_client.h"

#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <utility>

namespace ferry::wan {

namespace {
constexpr uint64_t kMs = 1'000'000;
constexpr uint64_t kTickNs = 200 * kMs;
constexpr uint32_t kBackoffMaxMs = 2000;
// Request ids at or above this are control requests: | 1 ping, | 2 + i open volume i,
// | kCloseIdBase + i close volume i.
constexpr uint64_t kControlIdBase = 1ull << 62;
constexpr uint64_t kCloseIdBase = 1ull << 32;
}  // namespace

WanClient::WanClient(Reactor& reactor, WanClientOptions options, const tls::TlsContext& tls,
                     std::vector<std::string> volume_names)
    : reactor_(reactor),
      options_(std::move(options)),
      tls_(tls),
      names_(std::move(volume_names)),
      resolver_(reactor),
      store_(reactor.pool(), options_.content_store_bytes_max, kChunkBytesMax) {
  for (size_t i = 0; i < names_.size(); ++i)
    devices_.push_back(std::make_unique<RemoteDevice>(*this, i, names_[i]));
  counters_.resize(names_.size());
  volume_ids_.assign(names_.size(), 0);
}

WanClient::~WanClient() {
  for (auto& [id, p] : pending_) delete p;
  for (Pending* p : free_pending_) delete p;
}

void WanClient::start(std::function<void(Errc, const std::string&)> on_ready) {
  on_ready_ = std::move(on_ready);
  std::string error;
  auto literal = resolve_tcp(HostPort{options_.server_address, options_.server_port},
                             /*passive=*/false, /*numeric_only=*/true, error);
  server_is_literal_ = literal.ok();
  if (server_is_literal_) addresses_ = std::move(literal.value());
  if (!encoder_.init().ok() || !decoder_.init().ok() ||
      !(scratch_ = reactor_.pool().allocate(kChunkBytesMax))) {
    ready_reported_ = true;
    on_ready_(Errc::no_memory, "out of memory for the WAN codecs");
    return;
  }
  down_since_ns_ = reactor_.now_ns_fresh();
  reactor_.arm(tick_timer_, kTickNs, &WanClient::on_tick, this);
  connect();
}

void WanClient::release(std::function<void()> done) {
  if (!ready_ || !stream_ || stopping_) {
    done();
    return;
  }
  release_done_ = std::move(done);
  send_closes_when_idle();
}

void WanClient::send_closes_when_idle() noexcept {
  if (!release_done_ || closes_sent_ || !pending_.empty() || !ready_ || !stream_) return;
  closes_sent_ = true;
  for (size_t i = 0; i < names_.size(); ++i) {
    if (volume_ids_[i] == 0) continue;
    FrameHeader c;
    c.type = FrameType::close_volume;
    c.volume_id = volume_ids_[i];
    c.request_id = kControlIdBase | (kCloseIdBase + i);
    if (stream_->send_frame(c, {})) ++closes_pending_;
  }
  if (closes_pending_ == 0) std::exchange(release_done_, nullptr)();
}

void WanClient::stop() {
  release_done_ = nullptr;
  stopping_ = true;
  reactor_.cancel(tick_timer_);
  reactor_.cancel(reconnect_timer_);
  reactor_.cancel(connect_deadline_);
  resolver_.cancel();
  fail_all(Errc::cancelled, "cloud edge stopping");
  if (stream_) stream_->close("cloud edge stopping");
  if (connecting_fd_ >= 0) ::shutdown(connecting_fd_, SHUT_RDWR);
}

// ---------------------------------------------------------------- connection

// A round of attempts: resolve the name (on a helper thread; literals need no lookup), then try
// its addresses in order; when every one failed, back off and start a new round.
void WanClient::connect() noexcept {
  if (stopping_) return;
  if (server_is_literal_) return connect_to(0);
  const bool started = resolver_.resolve(
      HostPort{options_.server_address, options_.server_port},
      [this](Result<std::vector<SocketAddress>> addresses, const std::string& error) noexcept {
        on_resolved(std::move(addresses), error);
      });
  if (!started) return connect_failed("cannot start the name lookup");
  ++name_lookups_;
}

void WanClient::on_resolved(Result<std::vector<SocketAddress>> addresses,
                            const std::string& error) noexcept {
  if (stopping_) return;
  if (!addresses.ok()) return connect_failed(error);
  addresses_ = std::move(addresses.value());
  connect_to(0);
}

void WanClient::connect_to(size_t index) noexcept {
  address_index_ = index;
  const SocketAddress& to = addresses_[index];
  const int fd = ::socket(to.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return connect_failed(std::string("socket: ") + std::strerror(errno));
  connecting_fd_ = fd;
  connect_op_.set([](void* ctx, int32_t res,
                     uint32_t) noexcept { static_cast<WanClient*>(ctx)->on_connected(res); },
                  this);
  io_uring_sqe* sqe = reactor_.get_sqe();
  io_uring_prep_connect(sqe, fd, to.get(), to.length);
  Reactor::prepare(sqe, &connect_op_);
  reactor_.arm(
      connect_deadline_, options_.connect_timeout_ms * kMs,
      [](void* ctx) noexcept {
        auto* self = static_cast<WanClient*>(ctx);
        if (self->connecting_fd_ >= 0) ::shutdown(self->connecting_fd_, SHUT_RDWR);
      },
      this);
}

// Every address of this round failed (or the lookup did): report once the back-off has reached
// its maximum before the link was ever up, and try again later.
void WanClient::connect_failed(const std::string& why) noexcept {
  if (!ready_reported_ && !stopping_ && backoff_ms_ >= kBackoffMaxMs) {
    ready_reported_ = true;
    on_ready_(Errc::closed, "cannot connect to the datacenter edge " +
                                format_host_port(options_.server_address, options_.server_port) +
                                ": " + why);
  }
  schedule_reconnect();
}

void WanClient::on_connected(int32_t res) noexcept {
  reactor_.cancel(connect_deadline_);
  const int fd = connecting_fd_;
  connecting_fd_ = -1;
  if (res < 0 || stopping_) {
    ::close(fd);
    if (stopping_) return;
    if (address_index_ + 1 < addresses_.size()) return connect_to(address_index_ + 1);
    return connect_failed(addresses_[address_index_].text() + ": " + std::strerror(-res));
  }
  if (stream_) old_streams_.push_back(std::move(stream_));
  stream_ = std::make_unique<WanStream>(reactor_, tls_, *this);
  hello_acked_ = false;
  volumes_opened_ = 0;
  std::fill(volume_ids_.begin(), volume_ids_.end(), 0);
  stream_->start(fd, true);
}

void WanClient::schedule_reconnect() noexcept {
  if (stopping_ || reconnect_timer_.armed()) return;
  reactor_.arm(reconnect_timer_, backoff_ms_ * kMs, &WanClient::on_reconnect_timer, this);
  backoff_ms_ = std::min(backoff_ms_ * 2, kBackoffMaxMs);
}

void WanClient::on_reconnect_timer(void* ctx) noexcept { static_cast<WanClient*>(ctx)->connect(); }

void WanClient::on_established() noexcept {
  last_rx_ns_ = reactor_.now_ns_fresh();
  ping_sent_ns_ = 0;
  ping_srtt_us_ = 0;
  Hello h;
  h.capabilities =
      kCapLz4 | kCapZstd | kCapIgzip | kCapDedupSha256 | kCapBlockStatus | kCapWrite | kCapEpochs;
  h.requests_max = options_.requests_max;
  h.session_id = session_id_;
  uint8_t body[kHelloBytes];
  encode_hello(body, h);
  FrameHeader f;
  f.type = FrameType::hello;
  stream_->send_frame(f, {body, sizeof body});
}

void WanClient::on_closed(const char* why) noexcept {
  if (stream_) {
    link_totals_ += stream_->counters();
    old_streams_.push_back(std::move(stream_));
  }
  const bool was_ready = ready_;
  const bool handshake_done = hello_acked_;
  ready_ = false;
  hello_acked_ = false;
  if (down_since_ns_ == 0) down_since_ns_ = reactor_.now_ns_fresh();
  if (stopping_) return;
  // A certificate refusal, by the datacenter edge (its fatal alert) or by us (our verify
  // result): say why, and give up after auth_failures_max of them in a row before the link was
  // ever up (retrying every 2 s forever with "peer closed the connection" told nobody anything).
  std::string auth_reason;
  if (!handshake_done && !old_streams_.empty()) {
    const tls::TlsEngine& t = old_streams_.back()->tls();
    if (!t.verify_error().empty())
      auth_reason = "we refused the datacenter edge's certificate: " + t.verify_error();
    else if (!t.peer_alert().empty())
      auth_reason =
          "the datacenter edge refused our certificate (TLS alert: " + t.peer_alert() + ")";
  }
  if (!auth_reason.empty()) {
    ++auth_failures_;
    std::fprintf(stderr, "ferry: wan: %s:%u: %s (%u of %u tries)\n",
                 options_.server_address.c_str(), options_.server_port, auth_reason.c_str(),
                 auth_failures_, options_.auth_failures_max);
    if (!ready_reported_ && auth_failures_ >= options_.auth_failures_max) {
      ready_reported_ = true;
      stopping_ = true;
      on_ready_(Errc::auth_failed, auth_reason);
      return;
    }
  }
  std::fprintf(stderr,
               "ferry: wan: link to %s:%u lost (%s); %zu request(s) in flight will be resent\n",
               options_.server_address.c_str(), options_.server_port, why != nullptr ? why : "",
               pending_.size());
  // Everything goes out again on the next connection.
  unsent_.clear();
  for (auto& [id, p] : pending_) {
    p->sent = false;
    p->sent_bytes = 0;
    p->received_bytes = 0;
    if (was_ready) ++counters_[p->volume].retries;
    unsent_.push_back(p);
  }
  schedule_reconnect();
}

void WanClient::on_tick(void* ctx) noexcept {
  auto* self = static_cast<WanClient*>(ctx);
  const uint64_t now = self->reactor_.now_ns_fresh();
  // Old streams are freed once their socket operations are done.
  auto& old = self->old_streams_;
  old.erase(std::remove_if(old.begin(), old.end(), [](const auto& s) { return s->idle(); }),
            old.end());
  if (self->ready_ && self->stream_) {
    if (now - self->last_rx_ns_ > self->options_.dead_after_ms * kMs) {
      self->stream_->close("no answer to keepalive (link dead)");
    } else if (now - self->last_ping_ns_ > self->options_.keepalive_ms * kMs) {
      self->last_ping_ns_ = now;
      if (self->ping_sent_ns_ == 0) self->ping_sent_ns_ = now;
      FrameHeader ping;
      ping.type = FrameType::ping;
      ping.request_id = kControlIdBase | 1;
      self->stream_->send_frame(ping, {});
    }
  }
  if (self->down_since_ns_ != 0 && !self->pending_.empty() &&
      now - self->down_since_ns_ > self->options_.give_up_ms * kMs) {
    std::fprintf(stderr, "ferry: wan: link down for more than %u ms: failing %zu request(s)\n",
                 self->options_.give_up_ms, self->pending_.size());
    self->fail_all(Errc::timed_out, "WAN link down");
  }
  self->send_closes_when_idle();
  if (!self->stopping_) self->reactor_.arm(self->tick_timer_, kTickNs, &WanClient::on_tick, self);
}

// ---------------------------------------------------------------- requests

void WanClient::submit(size_t volume, IoRequest& io) noexcept {
  static_assert(uint8_t(IoPriority::prefetch) == uint8_t(Priority::prefetch) &&
                uint8_t(IoPriority::background) == uint8_t(Priority::background));
  Priority p = static_cast<Priority>(io.priority);
  // The initiator's own writes travel in the write-back class (they do not hold demand reads).
  if (io.priority == IoPriority::demand && (io.op == IoOp::write || io.op == IoOp::write_zeroes))
    p = Priority::write_back;
  enqueue(volume, io, p);
}

void WanClient::enqueue(size_t volume, IoRequest& io, Priority priority) noexcept {
  if (stopping_) return io.complete(Errc::cancelled);
  const Geometry& g = devices_[volume]->geometry();
  if (io.op != IoOp::flush && io.op != IoOp::access_map) {
    const Errc e = check_range(g, io.offset_bytes, io.length_bytes);
    if (e != Errc::ok) return io.complete(e);
    if (io.length_bytes == 0) return io.complete(Errc::ok);
    // A BLOCK_STATUS may answer a prefix (it is clamped to one request when framed); data
    // requests longer than one frame are the caller's bug.
    if (io.length_bytes > kRequestBytesMax && io.op != IoOp::block_status)
      return io.complete(Errc::invalid_argument);
  }
  if (io.op == IoOp::discard) return io.complete(Errc::ok);  // advisory; the source keeps its data
  if (down_since_ns_ != 0 && reactor_.now_ns() - down_since_ns_ > options_.give_up_ms * kMs)
    return io.complete(Errc::timed_out);
  if (pending_.size() >= options_.requests_max) return io.complete(Errc::busy);
  Pending* p;
  if (!free_pending_.empty()) {
    p = free_pending_.back();
    free_pending_.pop_back();
    *p = Pending();
  } else {
    p = new (std::nothrow) Pending();
    if (p == nullptr) return io.complete(Errc::no_memory);
  }
  p->id = next_id_++;
  p->volume = volume;
  p->io = &io;
  p->priority = priority;
  pending_.emplace(p->id, p);
  unsent_.push_back(p);
  pump();
}

WanStreamCounters WanClient::link_counters() const noexcept {
  WanStreamCounters t = link_totals_;
  if (stream_) t += stream_->counters();
  return t;
}

uint64_t WanClient::down_for_ms() const noexcept {
  if (down_since_ns_ == 0) return 0;
  const uint64_t now = Reactor::now_ns_fresh();
  return now > down_since_ns_ ? (now - down_since_ns_) / kMs : 0;
}

// Sends unsent requests, most urgent first, while the stream takes them.
void WanClient::pump() noexcept {
  if (!ready_ || !stream_) return;
  for (uint8_t prio = 0; prio < kPriorityCount; ++prio) {
    for (auto it = unsent_.begin(); it != unsent_.end();) {
      Pending* p = *it;
      if (uint8_t(p->priority) != prio) {
        ++it;
        continue;
      }
      if (!send_request(*p)) return;  // backlog full: on_writable resumes
      if (stream_ == nullptr || stream_->closed()) return;
      p->sent = true;
      it = unsent_.erase(it);
    }
  }
}

bool WanClient::send_request(Pending& p) noexcept {
  IoRequest& io = *p.io;
  const uint16_t vid = volume_ids_[p.volume];
  FrameHeader f;
  f.request_id = p.id;
  f.volume_id = vid;
  f.priority = p.priority;
  switch (io.op) {
    case IoOp::read:
      f.type = FrameType::read;
      f.offset_bytes = io.offset_bytes;
      f.length_bytes = uint32_t(io.length_bytes);
      if (p.no_dedup) f.flags = kFlagNoDedup;
      return stream_->send_frame(f, {});
    case IoOp::flush:
      if (io.epoch_id != 0) {  // commit of a write-back epoch (block_device.h); a peer without
        // kCapEpochs answers ERROR (the cloud edge refuses such a peer at start)
        uint8_t body[kEpochCommitBytes];
        encode_epoch_commit(body, {io.epoch_stream, io.epoch_id, io.length_bytes});
        f.type = FrameType::epoch_commit;
        return stream_->send_frame(f, {body, sizeof body});
      }
      f.type = FrameType::flush;
      return stream_->send_frame(f, {});
    case IoOp::access_map:
      f.type = FrameType::access_map;
      return stream_->send_frame(f, {});
    case IoOp::block_status:
      f.type = FrameType::block_status;
      f.offset_bytes = io.offset_bytes;
      f.length_bytes = uint32_t(std::min<uint64_t>(io.length_bytes, kRequestBytesMax));
      return stream_->send_frame(f, {});
    case IoOp::write:
    case IoOp::write_zeroes: {
      f.type = FrameType::write;
      const uint32_t chunk = options_.chunk_bytes;
      while (p.sent_bytes < io.length_bytes) {
        if (stream_->backlog_bytes() >= WanStream::kBacklogLowBytes) return false;
        const uint64_t off = io.offset_bytes + p.sent_bytes;
        const uint64_t boundary = (off / chunk + 1) * chunk;
        const uint32_t len = uint32_t(std::min(io.offset_bytes + io.length_bytes, boundary) - off);
        f.offset_bytes = off;
        f.length_bytes = len;
        f.flags = 0;
        f.algo = CompressAlgo::none;
        std::span<const uint8_t> payload;
        if (io.op == IoOp::write_zeroes) {
          f.flags = kFlagZero;
        } else {
          const std::span<const uint8_t> data{
              reinterpret_cast<const uint8_t*>(io.data) + p.sent_bytes, len};
          Compression comp = options_.compression;
          if (!(caps_ & capability_for(comp.algo))) comp.algo = CompressAlgo::none;
          const EncodedChunk enc = encoder_.encode(
              data, {reinterpret_cast<uint8_t*>(scratch_.data()), scratch_.capacity()}, comp);
          f.flags = enc.frame_flags();
          if (enc.kind == ChunkKind::compressed) f.algo = enc.algo;
          payload = enc.payload;
        }
        const bool last = p.sent_bytes + len == io.length_bytes;
        if (last) f.flags |= kFlagFinal | (io.fua ? kFlagFua : 0);
        if (io.epoch_write && (caps_ & kCapEpochs)) f.flags |= kFlagEpoch;
        if (!stream_->send_frame(f, payload)) return false;
        counters_[p.volume].payload_bytes_out += payload.size();
        p.sent_bytes += len;
      }
      return true;
    }
    case IoOp::discard:
      break;
  }
  return true;
}

void WanClient::complete(Pending* p, Errc e) noexcept {
  pending_.erase(p->id);
  if (!p->sent) unsent_.remove(p);
  IoRequest* io = p->io;
  auto& c = counters_[p->volume];
  if (e == Errc::ok && io->op == IoOp::read) c.bytes_read += io->length_bytes;
  if (e == Errc::ok && (io->op == IoOp::write || io->op == IoOp::write_zeroes))
    c.bytes_written += io->length_bytes;
  free_pending_.push_back(p);
  io->complete(e);
}

void WanClient::fail_all(Errc e, const char* why) noexcept {
  if (pending_.empty()) return;
  std::fprintf(stderr, "ferry: wan: failing %zu request(s): %s\n", pending_.size(), why);
  std::vector<Pending*> all;
  for (auto& [id, p] : pending_) all.push_back(p);
  unsent_.clear();
  for (Pending* p : all) {
    p->sent = true;  // not in unsent_ any more
    complete(p, e);
  }
}

// ---------------------------------------------------------------- frames from the server

bool WanClient::on_frame(const FrameHeader& h, std::span<const uint8_t> payload) noexcept {
  last_rx_ns_ = reactor_.now_ns_fresh();
  if (!hello_acked_) {
    if (h.type == FrameType::error) {
      auto e = parse_error(payload);
      std::fprintf(stderr, "ferry: wan: datacenter edge refused the link: %.*s\n",
                   e ? int(e.value().message.size()) : 0, e ? e.value().message.data() : "");
      stream_->close("HELLO refused");
      return false;
    }
    auto ack =
        h.type == FrameType::hello_ack ? parse_hello(payload) : Result<Hello>(Errc::protocol_error);
    if (!ack) {
      stream_->close("expected HELLO_ACK");
      return false;
    }
    hello_acked_ = true;
    auth_failures_ = 0;
    caps_ = ack.value().capabilities;
    session_id_ = ack.value().session_id;
    for (size_t i = 0; i < names_.size(); ++i) {
      FrameHeader o;
      o.type = FrameType::open_volume;
      o.request_id = kControlIdBase | (2 + i);
      stream_->send_frame(o,
                          {reinterpret_cast<const uint8_t*>(names_[i].data()), names_[i].size()});
    }
    return true;
  }
  if (h.request_id >= kControlIdBase) {
    const uint64_t idx = (h.request_id & ~kControlIdBase);
    if (h.type == FrameType::pong) {
      if (ping_sent_ns_ != 0) {
        const uint64_t now = reactor_.now_ns_fresh();
        const uint64_t sample_us = now > ping_sent_ns_ ? (now - ping_sent_ns_) / 1000 : 0;
        ping_srtt_us_ = ping_srtt_us_ == 0 ? sample_us : (7 * ping_srtt_us_ + sample_us) / 8;
        ping_sent_ns_ = 0;
      }
      return true;
    }
    if (idx >= kCloseIdBase) {
      if (h.type == FrameType::error) {
        auto e = parse_error(payload);
        std::fprintf(stderr, "ferry: wan: releasing volume %" PRIu64 ": %.*s\n", idx - kCloseIdBase,
                     e ? int(e.value().message.size()) : 0, e ? e.value().message.data() : "");
      }
      if (closes_pending_ > 0 && --closes_pending_ == 0 && release_done_)
        std::exchange(release_done_, nullptr)();
      return true;
    }
    if (idx < 2 || idx - 2 >= names_.size()) return true;
    const size_t vol = size_t(idx - 2);
    if (h.type == FrameType::error) {
      auto e = parse_error(payload);
      const std::string msg = e ? std::string(e.value().message) : "error";
      std::fprintf(stderr, "ferry: wan: cannot open volume '%s': %s\n", names_[vol].c_str(),
                   msg.c_str());
      if (!ready_reported_) {
        ready_reported_ = true;
        on_ready_(e ? from_wire_error(e.value().code) : Errc::not_found,
                  "volume '" + names_[vol] + "': " + msg);
      } else {
        // Refused on a reconnect (another edge took the lease after ours expired): this edge
        // must not touch the volume again; everything in flight and after fails.
        std::fprintf(stderr, "ferry: wan: volume '%s' lost; every request fails from now on\n",
                     names_[vol].c_str());
        fail_all(Errc::io_error, "volume refused on reconnect");
      }
      stopping_ = true;
      stream_->close("volume refused");
      return false;
    }
    if (h.type != FrameType::volume_info) return true;
    auto info = parse_volume_info(payload);
    if (!info) {
      stream_->close("bad VOLUME_INFO");
      return false;
    }
    Geometry g;
    g.block_size_bytes = info.value().block_bytes;
    g.block_count = info.value().size_bytes / g.block_size_bytes;
    g.read_only = (info.value().flags & kVolumeReadOnly) != 0;
    g.volatile_cache = true;       // durability needs FLUSH to reach the datacenter edge
    g.block_status_remote = true;  // a WAN round trip: the NBD front end must not ask it per READ
    const Geometry old = devices_[vol]->geometry();
    if (ready_reported_ && old.size_bytes() != g.size_bytes()) {
      std::fprintf(stderr, "ferry: wan: volume '%s' changed size on the datacenter edge\n",
                   names_[vol].c_str());
    }
    devices_[vol]->set_geometry(g);
    volume_ids_[vol] = h.volume_id;
    if (++volumes_opened_ == names_.size()) {
      ready_ = true;
      if (down_since_ns_ != 0 && ready_reported_) {
        ++reconnects_;
        std::fprintf(stderr, "ferry: wan: link back after %.1f s; resending %zu request(s)\n",
                     double(reactor_.now_ns_fresh() - down_since_ns_) / 1e9, unsent_.size());
      }
      down_since_ns_ = 0;
      backoff_ms_ = 100;
      if (!ready_reported_) {
        ready_reported_ = true;
        on_ready_(Errc::ok, "");
      }
      pump();
    }
    return true;
  }
  auto it = pending_.find(h.request_id);
  if (it == pending_.end()) return true;  // a request we already failed (give-up) or stale
  Pending* p = it->second;
  IoRequest& io = *p->io;
  auto& c = counters_[p->volume];
  switch (h.type) {
    case FrameType::read_data: {
      if (io.op != IoOp::read || h.offset_bytes < io.offset_bytes ||
          h.offset_bytes + h.length_bytes > io.offset_bytes + io.length_bytes) {
        stream_->close("READ_DATA outside its request");
        return false;
      }
      std::span<uint8_t> out{
          reinterpret_cast<uint8_t*>(io.data) + (h.offset_bytes - io.offset_bytes), h.length_bytes};
      c.payload_bytes_in += payload.size();
      if (h.flags & kFlagDedupRef) {
        const std::span<const uint8_t> s = store_.recall(payload);
        if (s.empty() || s.size() != h.length_bytes) {
          p->dedup_miss = true;
        } else {
          std::memcpy(out.data(), s.data(), out.size());
          c.bytes_dedup += out.size();
        }
      } else {
        if (!decoder_.decode(h, payload, out).ok()) {
          stream_->close("undecodable READ_DATA");
          return false;
        }
        if (h.flags & kFlagZero)
          c.bytes_zero += out.size();
        else
          store_.remember(out);
        if (h.flags & kFlagCompressed) c.bytes_compressed += out.size();
      }
      p->received_bytes += h.length_bytes;
      return true;
    }
    case FrameType::read_done:
      if (p->dedup_miss) {  // repeat without references
        p->dedup_miss = false;
        p->no_dedup = true;
        p->sent = false;
        p->received_bytes = 0;
        ++c.retries;
        unsent_.push_back(p);
        pump();
        return true;
      }
      complete(p, p->received_bytes == io.length_bytes ? Errc::ok : Errc::io_error);
      return true;
    case FrameType::write_ack:
    case FrameType::flush_ack:
    case FrameType::epoch_committed:
      complete(p, Errc::ok);
      return true;
    case FrameType::access_map_reply: {
      if (io.op != IoOp::access_map) {
        stream_->close("ACCESS_MAP_REPLY for another request");
        return false;
      }
      const size_t n = std::min<size_t>(payload.size(), io.length_bytes / 8 * 8);
      if (n != 0) std::memcpy(io.data, payload.data(), n);
      io.status_length_bytes = n;
      complete(p, Errc::ok);
      return true;
    }
    case FrameType::block_status_reply: {
      const Extent e = extent_at(payload, 0);
      io.status_length_bytes = e.length_bytes;
      io.status_flags =
          ((e.flags & kExtentHole) ? kStatusHole : 0) | ((e.flags & kExtentZero) ? kStatusZero : 0);
      complete(p, Errc::ok);
      return true;
    }
    case FrameType::error: {
      auto e = parse_error(payload);
      const Errc errc = e ? from_wire_error(e.value().code) : Errc::io_error;
      std::fprintf(stderr,
                   "ferry: wan: request on volume '%s' failed at the datacenter edge: %.*s\n",
                   names_[p->volume].c_str(), e ? int(e.value().message.size()) : 0,
                   e ? e.value().message.data() : "");
      complete(p, errc);
      return true;
    }
    default:
      return true;
  }
}

std::string WanClient::stats_text() const {
  std::string out;
  for (size_t i = 0; i < names_.size(); ++i) {
    const auto& c = counters_[i];
    char line[512];
    std::snprintf(line, sizeof line,
                  "volume %s: read %" PRIu64 " B (zero runs %" PRIu64
                  " B, from content store %" PRIu64 " B, compressed %" PRIu64 " B) for %" PRIu64
                  " B of payload; written %" PRIu64 " B as %" PRIu64 " B; %" PRIu64 " retries\n",
                  names_[i].c_str(), c.bytes_read, c.bytes_zero, c.bytes_dedup, c.bytes_compressed,
                  c.payload_bytes_in, c.bytes_written, c.payload_bytes_out, c.retries);
    out += line;
  }
  const WanStreamCounters t = link_counters();
  char line[256];
  std::snprintf(line, sizeof line,
                "link: %" PRIu64 " B in, %" PRIu64 " B out on the wire (TLS); %" PRIu64
                " reconnect(s)\n",
                t.wire_bytes_in, t.wire_bytes_out, reconnects_);
  out += line;
  return out;
}

}  // namespace ferry::wan
