// WanServer and its per-connection ServerSession (see wan_server.h).
#include "gateway/wan/wan_server.h"

#include <openssl/rand.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "datapath/fixed_pool.h"
#include "gateway/wan/stream.h"

namespace ferry::wan {

namespace {
constexpr uint64_t kSweepNs = 100'000'000;
constexpr size_t kOpenVolumesMax = 1024;
constexpr size_t kRequestsMax = 4096;
// Writes, flushes and block-status queries applied to a device at once per connection (one a
// chunk frame of a write). Beyond: the request is answered BUSY.
constexpr size_t kDeviceOpsMax = 4096;
// Priorities below write-back may hold at most half of the chunk-read slots, so demand reads
// always find room.
bool low_priority(Priority p) { return p == Priority::prefetch || p == Priority::background; }
}  // namespace

// One cloud edge connection.
class ServerSession final : public WanStreamHandler, public HubConnection {
 public:
  ServerSession(WanServer& server, Reactor& reactor, uint64_t id)
      : HubConnection(id),
        server_(server),
        reactor_(reactor),
        stream_(reactor, server.tls_, *this),
        accepted_ns_(reactor.now_ns()) {}
  ~ServerSession() { reactor_.cancel(pace_timer_); }

  void start(int fd) {
    stream_.set_socket_send_bytes(server_.options_.socket_send_bytes);
    stream_.start(fd, false);
  }
  void close(const char* why) noexcept override { stream_.close(why); }
  bool authenticating() const noexcept override { return !hello_done_; }
  bool idle() const { return stream_.idle() && device_ios_ == 0; }
  bool authenticated() const { return hello_done_; }
  uint64_t accepted_ns() const { return accepted_ns_; }
  uint64_t last_rx_ns() const { return last_rx_ns_; }
  const std::string& edge_name() const { return stream_.peer_name(); }
  uint64_t session() const { return dedup_session_; }

  void on_established() noexcept override {
    std::fprintf(stderr, "ferry: wan: connection %" PRIu64 " from cloud edge '%s' (TLS 1.3)\n",
                 id(), stream_.peer_name().c_str());
  }
  bool on_frame(const FrameHeader& h, std::span<const uint8_t> payload) noexcept override;
  void on_writable() noexcept override { pump(); }
  void on_closed(const char* why) noexcept override {
    std::fprintf(stderr, "ferry: wan: connection %" PRIu64 " ('%s') closed: %s\n", id(),
                 stream_.peer_name().c_str(), why != nullptr ? why : "");
    while (ReadJob* job = jobs_head_) {
      jobs_head_ = job->next;
      while (ChunkRead* c = job->ready_head) {
        job->ready_head = c->next_ready;
        --chunk_reads_;
        chunk_pool_.put(c);
      }
      job_pool_.put(job);
    }
    jobs_tail_ = nullptr;
    jobs_count_ = 0;
    server_.connection_lost(*this);
    server_.session_closed(this);
  }

 private:
  struct ReadJob;
  struct ChunkRead {
    ServerSession* session = nullptr;
    ReadJob* job = nullptr;
    IoRequest io;
    Buffer buf;
    uint64_t offset = 0;
    uint32_t length = 0;
    bool done = false;
    ChunkRead* next_ready = nullptr;  // in job->ready
  };
  struct ReadJob {
    uint64_t request_id = 0;
    uint16_t volume_id = 0;
    size_t volume = 0;
    Priority priority = Priority::demand_read;
    bool no_dedup = false;
    uint64_t next_offset = 0, end = 0;
    uint32_t chunks_in_flight = 0;  // reads issued, not yet sent
    Errc error = Errc::ok;
    bool cancelled = false;
    // Completed chunks waiting to be sent, in completion order (intrusive FIFO).
    ChunkRead* ready_head = nullptr;
    ChunkRead* ready_tail = nullptr;
    ReadJob* next = nullptr;  // in jobs_, in arrival order
  };
  struct WriteJob {
    uint32_t pending = 0;
    bool final_seen = false;
    bool fua = false;
    Errc error = Errc::ok;
    uint16_t volume_id = 0;
    size_t volume = 0;
    Priority priority = Priority::write_back;
  };
  struct DeviceOp {  // write / flush / block status in flight
    ServerSession* session = nullptr;
    IoRequest io;
    Buffer buf;
    uint64_t request_id = 0;
    uint16_t volume_id = 0;
    size_t volume = 0;
    uint32_t requested = 0;
    Priority priority = Priority::write_back;
  };

  // The server volume behind a request's volume id, or false after answering the request with
  // ERROR: not open (never opened / closed) or fenced (its lease was taken over).
  bool volume_of(const FrameHeader& h, size_t& index) {
    const uint16_t id = h.volume_id;
    if (id == 0 || id > volumes_.size() || !volumes_[id - 1].open) {
      send_error(h.request_id, id, WireError::not_found, "volume not open", h.priority);
      return false;
    }
    index = volumes_[id - 1].index;
    if (!server_.lease_valid(*this, index, volumes_[id - 1].generation)) {
      send_error(h.request_id, id, WireError::lease_held,
                 "lease of volume " + server_.volumes_[index].name + " lost (taken over)",
                 h.priority);
      return false;
    }
    return true;
  }
  void send_error(uint64_t request_id, uint16_t volume_id, WireError code, const std::string& msg,
                  Priority p = Priority::demand_read) {
    uint8_t body[kErrorBytesMax];
    FrameHeader e;
    e.type = FrameType::error;
    e.request_id = request_id;
    e.volume_id = volume_id;
    e.priority = p;
    const size_t n = encode_error(body, code, msg);
    send_control(e, {body, n});
  }
  // Control frames are small: they bypass the scheduler (but not the stream's hard bound).
  void send_control(const FrameHeader& h, std::span<const uint8_t> payload) {
    if (!stream_.send_frame(h, payload) && !stream_.closed()) stream_.close("send backlog full");
  }
  void start_reads();
  void pump();
  bool send_chunk(ReadJob& job, ChunkRead* c);
  void finish_job_if_done(ReadJob& job);
  void remove_finished_jobs() noexcept;
  void finish_write(uint64_t request_id);
  static void on_chunk_read(IoRequest& io) noexcept;
  static void on_device_op(IoRequest& io) noexcept;
  static void on_pace(void* ctx) noexcept { static_cast<ServerSession*>(ctx)->pump(); }
  bool take_tokens(size_t bytes, bool may_wait);

  WanServer& server_;
  Reactor& reactor_;
  WanStream stream_;
  bool hello_done_ = false;
  uint32_t caps_ = 0;
  uint64_t dedup_session_ = 0;
  bool pump_scheduled_ = false;
  struct OpenHandle {
    size_t index = 0;         // server volume index
    uint64_t generation = 0;  // of the lease it was opened under
    bool open = true;
  };
  std::vector<OpenHandle> volumes_;  // volume_id - 1 → handle
  uint64_t last_rx_ns_ = 0;
  // Allocated once, at HELLO (an unauthenticated connection holds none): no allocation per
  // request. Bounds: kRequestsMax reads and writes, chunk_reads_max chunk reads, kDeviceOpsMax
  // device operations; a request beyond them is answered BUSY.
  bool init_pools() noexcept {
    return job_pool_.init(kRequestsMax) && chunk_pool_.init(server_.options_.chunk_reads_max) &&
           op_pool_.init(kDeviceOpsMax) && writes_.init(kRequestsMax);
  }
  FixedPool<ReadJob> job_pool_;
  FixedPool<ChunkRead> chunk_pool_;
  FixedPool<DeviceOp> op_pool_;
  ReadJob* jobs_head_ = nullptr;  // reads in arrival order (intrusive list)
  ReadJob* jobs_tail_ = nullptr;
  size_t jobs_count_ = 0;
  FixedMap<WriteJob> writes_;  // request id → write in progress
  uint32_t chunk_reads_ = 0, low_chunk_reads_ = 0;
  uint32_t device_ios_ = 0;  // chunk reads + device ops in flight (keep the session alive)
  ChunkEncoder encoder_;
  ChunkDecoder decoder_;
  bool codecs_ready_ = false;
  Buffer compress_buf_;
  Timer pace_timer_;
  uint64_t accepted_ns_;
};

bool ServerSession::on_frame(const FrameHeader& h, std::span<const uint8_t> payload) noexcept {
  last_rx_ns_ = reactor_.now_ns();
  if (!hello_done_) {
    if (h.type != FrameType::hello) {
      close("first frame is not HELLO");
      return false;
    }
    auto client = parse_hello(payload);
    Hello ours;
    ours.capabilities = kCapLz4 | kCapZstd | kCapIgzip | kCapDedupSha256 | kCapBlockStatus |
                        kCapWrite | (server_.options_.epochs ? kCapEpochs : 0u);
    ours.requests_max = kRequestsMax;
    if (client)
      dedup_session_ =
          server_.resume_or_new_session(stream_.peer_name(), client.value().session_id);
    auto ack = client ? negotiate(client.value(), ours, dedup_session_)
                      : Result<Hello>(Errc::protocol_error);
    if (!ack) {
      send_error(0, 0, WireError::unsupported, "no common protocol version");
      close("HELLO: no common version");
      return false;
    }
    if (!codecs_ready_) {
      codecs_ready_ = encoder_.init().ok() && decoder_.init().ok();
      compress_buf_ = reactor_.pool().allocate(kChunkBytesMax);
      if (!codecs_ready_ || !compress_buf_ || !init_pools()) {
        close("out of memory for codecs and request pools");
        return false;
      }
    }
    caps_ = ack.value().capabilities;
    stream_.set_payload_limit(kFramePayloadBytesMax);
    uint8_t body[kHelloBytes];
    encode_hello(body, ack.value());
    FrameHeader a;
    a.type = FrameType::hello_ack;
    send_control(a, {body, sizeof body});
    hello_done_ = true;
    server_.hub_.authenticated(this);
    return true;
  }
  size_t vol = 0;
  switch (h.type) {
    case FrameType::open_volume: {
      auto name = parse_volume_name(payload);
      const auto& vols = server_.volumes_;
      size_t i = 0;
      while (name && i < vols.size() && vols[i].name != name.value()) ++i;
      if (!name || i == vols.size()) {
        const std::string n = name ? std::string(name.value()) : std::string("?");
        std::fprintf(stderr, "ferry: wan: '%s' asked for unknown volume '%s'\n",
                     stream_.peer_name().c_str(), n.c_str());
        send_error(h.request_id, 0, WireError::not_found, "unknown volume " + n);
        return true;
      }
      if (volumes_.size() >= kOpenVolumesMax) {
        send_error(h.request_id, 0, WireError::busy, "too many open volumes");
        return true;
      }
      uint64_t generation = 0;
      if (std::string why = server_.acquire_lease(*this, i, generation); !why.empty()) {
        std::fprintf(stderr, "ferry: wan: refused volume '%s' to cloud edge '%s': %s\n",
                     vols[i].name.c_str(), stream_.peer_name().c_str(), why.c_str());
        send_error(h.request_id, 0, WireError::lease_held, why);
        return true;
      }
      volumes_.push_back({i, generation, true});
      const Geometry g = vols[i].device->geometry();
      VolumeInfo info;
      info.size_bytes = g.size_bytes();
      info.block_bytes = g.block_size_bytes;
      info.chunk_bytes = server_.options_.chunk_bytes;
      info.flags = kVolumeAllocationKnown | kVolumeCanFlush | (g.read_only ? kVolumeReadOnly : 0);
      uint8_t body[kVolumeInfoBytes];
      encode_volume_info(body, info);
      FrameHeader r;
      r.type = FrameType::volume_info;
      r.request_id = h.request_id;
      r.volume_id = uint16_t(volumes_.size());
      send_control(r, {body, sizeof body});
      return true;
    }
    case FrameType::access_map: {
      if (!volume_of(h, vol)) return true;
      const auto& offsets = server_.maps_[vol].offsets;
      const size_t n = std::min(offsets.size(), kAccessMapEntriesMax);
      std::vector<uint8_t> body(n * 8);  // one control request per attach: not the hot path
      for (size_t i = 0; i < n; ++i)
        for (int b = 0; b < 8; ++b) body[i * 8 + size_t(b)] = uint8_t(offsets[i] >> (56 - 8 * b));
      FrameHeader r;
      r.type = FrameType::access_map_reply;
      r.request_id = h.request_id;
      r.volume_id = h.volume_id;
      r.priority = h.priority;
      send_control(r, body);
      return true;
    }
    case FrameType::close_volume: {
      if (!volume_of(h, vol)) return true;
      volumes_[h.volume_id - 1].open = false;
      server_.release_lease(*this, vol, true);
      FrameHeader r;
      r.type = FrameType::volume_closed;
      r.request_id = h.request_id;
      r.volume_id = h.volume_id;
      send_control(r, {});
      return true;
    }
    case FrameType::ping: {
      FrameHeader r;
      r.type = FrameType::pong;
      r.request_id = h.request_id;
      send_control(r, {});
      return true;
    }
    case FrameType::read: {
      if (!volume_of(h, vol)) return true;
      const Geometry g = server_.volumes_[vol].device->geometry();
      if (h.offset_bytes + h.length_bytes > g.size_bytes()) {
        send_error(h.request_id, h.volume_id, WireError::out_of_range, "read beyond the end",
                   h.priority);
        return true;
      }
      ReadJob* job = job_pool_.take();
      if (job == nullptr) {
        send_error(h.request_id, h.volume_id, WireError::busy, "too many requests", h.priority);
        return true;
      }
      job->request_id = h.request_id;
      job->volume_id = h.volume_id;
      job->volume = vol;
      job->priority = h.priority;
      job->no_dedup = (h.flags & kFlagNoDedup) != 0 || !(caps_ & kCapDedupSha256);
      job->next_offset = h.offset_bytes;
      job->end = h.offset_bytes + h.length_bytes;
      server_.counters_[vol].bytes_requested += h.length_bytes;
      if (h.priority == Priority::demand_read || h.priority == Priority::prefetch)
        server_.record_access(vol, h.offset_bytes, h.length_bytes);
      if (jobs_tail_ != nullptr)
        jobs_tail_->next = job;
      else
        jobs_head_ = job;
      jobs_tail_ = job;
      ++jobs_count_;
      pump();
      return true;
    }
    case FrameType::write: {
      if (!volume_of(h, vol)) return true;
      auto& dev = *server_.volumes_[vol].device;
      WriteJob* wp = writes_.insert(h.request_id);
      if (wp == nullptr) {
        send_error(h.request_id, h.volume_id, WireError::busy, "too many write requests",
                   h.priority);
        return true;
      }
      WriteJob& w = *wp;
      w.volume_id = h.volume_id;
      w.volume = vol;
      w.priority = h.priority;
      w.fua |= (h.flags & kFlagFua) != 0;
      if (h.flags & kFlagFinal) w.final_seen = true;
      const Geometry g = dev.geometry();
      if (g.read_only)
        w.error = Errc::write_protected;
      else if (h.offset_bytes + h.length_bytes > g.size_bytes())
        w.error = Errc::out_of_range;
      else if (h.flags & kFlagDedupRef)
        w.error = Errc::invalid_argument;  // we keep no content
      else if ((h.flags & kFlagEpoch) && !(caps_ & kCapEpochs))
        w.error = Errc::unsupported;
      if (w.error == Errc::ok) {
        DeviceOp* op = op_pool_.take();
        if (op == nullptr) {
          w.error = Errc::busy;  // kDeviceOpsMax chunks being applied: the request is refused
        } else {
          op->session = this;
          op->request_id = h.request_id;
          op->volume_id = h.volume_id;
          op->volume = vol;
          op->io.owner = op;
          op->io.on_complete = &ServerSession::on_device_op;
          op->io.offset_bytes = h.offset_bytes;
          op->io.length_bytes = h.length_bytes;
          op->io.fua = w.fua;
          op->io.epoch_write =
              (h.flags & kFlagEpoch) != 0;  // the redo log holds it until EPOCH_COMMIT
          if (h.flags & kFlagZero) {
            op->io.op = IoOp::write_zeroes;
          } else {
            op->io.op = IoOp::write;
            op->buf = reactor_.pool().allocate(h.length_bytes);
            const bool decoded =
                op->buf && decoder_
                               .decode(h, payload,
                                       {reinterpret_cast<uint8_t*>(op->buf.data()), h.length_bytes})
                               .ok();
            if (!decoded) {
              w.error = op->buf ? Errc::protocol_error : Errc::no_memory;
              op_pool_.put(op);
              op = nullptr;
            } else {
              op->io.data = op->buf.data();
            }
          }
          if (op != nullptr) {
            ++w.pending;
            ++device_ios_;
            server_.counters_[vol].bytes_written += h.length_bytes;
            dev.submit(op->io);
            return !stream_.closed();
          }
        }
      }
      if (w.final_seen && w.pending == 0) finish_write(h.request_id);
      return true;
    }
    case FrameType::epoch_commit:
    case FrameType::flush:
    case FrameType::block_status: {
      if (!volume_of(h, vol)) return true;
      EpochCommitBody commit;
      if (h.type == FrameType::epoch_commit) {
        auto b = parse_epoch_commit(payload);  // validated by the codec already
        if (!(caps_ & kCapEpochs) || !b) {
          send_error(h.request_id, h.volume_id, WireError::unsupported, "epochs not negotiated",
                     h.priority);
          return true;
        }
        commit = b.value();
      }
      DeviceOp* op = op_pool_.take();
      if (op == nullptr) {
        send_error(h.request_id, h.volume_id, WireError::busy, "too many device operations",
                   h.priority);
        return true;
      }
      op->session = this;
      op->request_id = h.request_id;
      op->volume_id = h.volume_id;
      op->volume = vol;
      op->priority = h.priority;
      op->requested = h.length_bytes;
      op->io.owner = op;
      op->io.on_complete = &ServerSession::on_device_op;
      op->io.op = h.type == FrameType::block_status ? IoOp::block_status : IoOp::flush;
      op->io.offset_bytes = h.offset_bytes;
      op->io.length_bytes = h.length_bytes;
      if (h.type ==
          FrameType::epoch_commit) {  // a flush that commits the open epoch (block_device.h)
        op->io.epoch_id = commit.epoch_id;
        op->io.epoch_stream = commit.stream;
        op->io.length_bytes = commit.data_bytes;
      }
      ++device_ios_;
      server_.volumes_[vol].device->submit(op->io);
      return !stream_.closed();
    }
    default:
      send_error(h.request_id, h.volume_id, WireError::unsupported,
                 std::string("unexpected frame ") + to_string(h.type));
      return true;
  }
}

void ServerSession::on_device_op(IoRequest& io) noexcept {
  auto* op = static_cast<DeviceOp*>(io.owner);
  ServerSession* s = op->session;
  --s->device_ios_;
  if (s->stream_.closed()) {
    s->op_pool_.put(op);
    return;
  }
  if (io.op == IoOp::write || io.op == IoOp::write_zeroes) {
    if (WriteJob* wp = s->writes_.find(op->request_id)) {
      WriteJob& w = *wp;
      --w.pending;
      if (io.result != Errc::ok && w.error == Errc::ok) w.error = io.result;
      if (w.final_seen && w.pending == 0) s->finish_write(op->request_id);
    }
  } else if (io.result != Errc::ok) {
    s->send_error(op->request_id, op->volume_id, to_wire_error(io.result),
                  io.epoch_id            ? "epoch commit failed"
                  : io.op == IoOp::flush ? "flush failed"
                                         : "block status failed",
                  op->priority);
  } else if (io.op == IoOp::flush) {
    FrameHeader a;
    a.type = io.epoch_id ? FrameType::epoch_committed : FrameType::flush_ack;
    a.request_id = op->request_id;
    a.volume_id = op->volume_id;
    a.priority = op->priority;
    s->send_control(a, {});
  } else {  // block status: one extent
    const uint32_t len =
        uint32_t(std::min<uint64_t>(std::max<uint64_t>(io.status_length_bytes, 1), op->requested));
    uint8_t body[kExtentBytes];
    Extent e;
    e.length_bytes = len;
    e.flags = ((io.status_flags & kStatusHole) ? kExtentHole : 0) |
              ((io.status_flags & kStatusZero) ? kExtentZero : 0);
    encode_extent(body, e);
    FrameHeader r;
    r.type = FrameType::block_status_reply;
    r.request_id = op->request_id;
    r.volume_id = op->volume_id;
    r.priority = op->priority;
    r.offset_bytes = io.offset_bytes;
    r.length_bytes = len;
    s->send_control(r, {body, sizeof body});
  }
  s->op_pool_.put(op);
}

// Issues device reads for jobs in priority order, within the slot budgets.
void ServerSession::start_reads() {
  const uint32_t total_max = server_.options_.chunk_reads_max;
  const uint32_t low_max = std::max<uint32_t>(1, total_max / 2);
  const uint32_t chunk = server_.options_.chunk_bytes;
  for (uint8_t p = 0; p < kPriorityCount; ++p) {
    for (ReadJob* job = jobs_head_; job != nullptr; job = job->next) {
      if (uint8_t(job->priority) != p || job->error != Errc::ok) continue;
      while (job->next_offset < job->end && chunk_reads_ < total_max &&
             (!low_priority(job->priority) || low_chunk_reads_ < low_max)) {
        // Chunks are aligned to absolute chunk boundaries so equal content hashes alike.
        const uint64_t boundary = (job->next_offset / chunk + 1) * chunk;
        const uint32_t len = uint32_t(std::min(job->end, boundary) - job->next_offset);
        ChunkRead* c = chunk_pool_.take();  // chunk_reads_ < chunk_reads_max: one is free
        if (c == nullptr) return;
        c->buf = reactor_.pool().allocate(len);
        if (!c->buf) {
          chunk_pool_.put(c);
          return;  // buffer pool exhausted: retried on the next pump
        }
        c->session = this;
        c->job = job;
        c->offset = job->next_offset;
        c->length = len;
        c->io.op = IoOp::read;
        c->io.offset_bytes = c->offset;
        c->io.length_bytes = len;
        c->io.data = c->buf.data();
        c->io.owner = c;
        c->io.on_complete = &ServerSession::on_chunk_read;
        job->next_offset += len;
        ++job->chunks_in_flight;
        ++chunk_reads_;
        if (low_priority(job->priority)) ++low_chunk_reads_;
        ++device_ios_;
        server_.volumes_[job->volume].device->submit(c->io);
        if (stream_.closed()) return;
      }
    }
  }
}

void ServerSession::on_chunk_read(IoRequest& io) noexcept {
  auto* c = static_cast<ChunkRead*>(io.owner);
  ServerSession* s = c->session;
  --s->device_ios_;
  c->done = true;
  if (s->stream_.closed() || c->job == nullptr) {
    --s->chunk_reads_;
    s->chunk_pool_.put(c);
    return;
  }
  ReadJob& job = *c->job;
  if (io.result != Errc::ok && job.error == Errc::ok) job.error = io.result;
  if (job.ready_tail != nullptr)
    job.ready_tail->next_ready = c;
  else
    job.ready_head = c;
  job.ready_tail = c;
  if (!s->pump_scheduled_) {  // one pump for every chunk that completes in this loop pass
    s->pump_scheduled_ = true;
    s->reactor_.defer([s] {
      s->pump_scheduled_ = false;
      if (!s->stream_.closed()) s->pump();
    });
  }
}

// The cap paces prefetch and background streaming; demand reads and write-back are never held
// by it (they still use up tokens), so a cap a little under the link rate keeps the WAN's
// queues empty for urgent frames without slowing them.
bool ServerSession::take_tokens(size_t bytes, bool may_wait) {
  const uint64_t rate = server_.rate_limit_.load(std::memory_order_relaxed);
  if (rate == 0) return true;
  auto& b = server_.bucket_;
  const uint64_t now = Reactor::now_ns_fresh();
  if (b.last_ns == 0) b.last_ns = now;
  // Burst allowance: 10 ms of the rate or one chunk, whichever is larger.
  const double burst =
      std::max<double>(double(rate) / 100, double(server_.options_.chunk_bytes) + 1024);
  b.tokens = std::min(burst, b.tokens + double(now - b.last_ns) * double(rate) / 1e9);
  b.last_ns = now;
  if (b.tokens >= double(bytes) || !may_wait) {
    b.tokens = std::max(-burst, b.tokens - double(bytes));
    return true;
  }
  const uint64_t wait_ns = uint64_t((double(bytes) - b.tokens) * 1e9 / double(rate)) + 1000;
  if (!pace_timer_.armed()) reactor_.arm(pace_timer_, wait_ns, &ServerSession::on_pace, this);
  return false;
}

// Sends one chunk; false when it must wait (backlog or rate), leaving it queued.
bool ServerSession::send_chunk(ReadJob& job, ChunkRead* c) {
  if (stream_.backlog_bytes() >= WanStream::kBacklogLowBytes) return false;
  auto& counters = server_.counters_[job.volume];
  std::span<const uint8_t> data{reinterpret_cast<const uint8_t*>(c->buf.data()), c->length};
  FrameHeader f;
  f.type = FrameType::read_data;
  f.request_id = job.request_id;
  f.volume_id = job.volume_id;
  f.priority = job.priority;
  f.offset_bytes = c->offset;
  f.length_bytes = c->length;
  EncodedChunk enc;
  ContentHash hash{};
  bool dedup = false;
  if (is_zero(data)) {
    enc.kind = ChunkKind::zero;
  } else {
    if (!job.no_dedup) {
      hash = content_hash(data);
      WanServer::DedupSet* set = server_.dedup_for(stream_.peer_name(), dedup_session_);
      dedup = set != nullptr && set->hashes.count(hash) != 0;
    }
    if (!dedup) {
      Compression comp = server_.options_.compression;
      if (!(caps_ & capability_for(comp.algo))) comp.algo = CompressAlgo::none;
      enc = encoder_.encode(
          data, {reinterpret_cast<uint8_t*>(compress_buf_.data()), compress_buf_.capacity()}, comp);
    }
  }
  std::span<const uint8_t> payload;
  if (dedup) {
    f.flags = kFlagDedupRef;
    payload = {hash.data(), hash.size()};
  } else {
    f.flags = enc.frame_flags();
    if (enc.kind == ChunkKind::compressed) f.algo = enc.algo;
    payload = enc.payload;
  }
  if (!take_tokens(kFrameHeaderBytes + payload.size(),
                   low_priority(job.priority) || server_.options_.rate_limit_all))
    return false;
  if (!stream_.send_frame(f, payload)) return false;
  ++counters.frames_sent;
  counters.payload_bytes_sent += payload.size();
  if (dedup) {
    counters.bytes_dedup += c->length;
  } else if (enc.kind == ChunkKind::zero) {
    counters.bytes_zero += c->length;
  } else if (enc.kind == ChunkKind::compressed) {
    counters.bytes_compressed_in += c->length;
    counters.bytes_compressed_out += payload.size();
  } else {
    counters.bytes_raw += c->length;
  }
  if (!dedup && enc.kind != ChunkKind::zero && !job.no_dedup) {
    WanServer::DedupSet* setp = server_.dedup_for(stream_.peer_name(), dedup_session_);
    if (setp != nullptr && setp->hashes.insert(hash).second) {
      auto& set = *setp;
      const size_t max = server_.options_.dedup_entries_max;
      if (set.order.size() < max) {
        set.order.push_back(hash);
      } else {
        set.hashes.erase(set.order[set.next_evict]);
        set.order[set.next_evict] = hash;
        set.next_evict = (set.next_evict + 1) % max;
      }
    }
  }
  return true;
}

// A write request whose last frame arrived and whose chunks are all applied: ack or error.
void ServerSession::finish_write(uint64_t request_id) {
  const WriteJob* found = writes_.find(request_id);
  if (found == nullptr) return;
  const WriteJob done = *found;
  writes_.erase(request_id);
  if (done.error != Errc::ok) {
    send_error(request_id, done.volume_id, to_wire_error(done.error), "write failed",
               done.priority);
    return;
  }
  FrameHeader a;
  a.type = FrameType::write_ack;
  a.request_id = request_id;
  a.volume_id = done.volume_id;
  a.priority = done.priority;
  send_control(a, {});
}

void ServerSession::remove_finished_jobs() noexcept {
  ReadJob* prev = nullptr;
  for (ReadJob* job = jobs_head_; job != nullptr;) {
    ReadJob* next = job->next;
    if (job->cancelled) {
      (prev != nullptr ? prev->next : jobs_head_) = next;
      if (jobs_tail_ == job) jobs_tail_ = prev;
      --jobs_count_;
      job_pool_.put(job);
    } else {
      prev = job;
    }
    job = next;
  }
}

void ServerSession::finish_job_if_done(ReadJob& job) {
  if (job.chunks_in_flight != 0) return;
  if (job.error == Errc::ok && job.next_offset < job.end) return;
  if (job.error != Errc::ok) {
    send_error(job.request_id, job.volume_id, to_wire_error(job.error), "read failed",
               job.priority);
  } else {
    FrameHeader d;
    d.type = FrameType::read_done;
    d.request_id = job.request_id;
    d.volume_id = job.volume_id;
    d.priority = job.priority;
    send_control(d, {});
  }
  job.cancelled = true;
}

void ServerSession::pump() {
  if (stream_.closed()) return;
  start_reads();
  if (stream_.closed()) return;
  for (uint8_t p = 0; p < kPriorityCount; ++p) {
    for (ReadJob* job = jobs_head_; job != nullptr; job = job->next) {
      if (uint8_t(job->priority) != p) continue;
      while (ChunkRead* c = job->ready_head) {
        if (job->error == Errc::ok && !send_chunk(*job, c)) return;  // wait: backlog or rate
        if (stream_.closed()) return;
        job->ready_head = c->next_ready;
        if (job->ready_head == nullptr) job->ready_tail = nullptr;
        --job->chunks_in_flight;
        --chunk_reads_;
        if (low_priority(job->priority)) --low_chunk_reads_;
        chunk_pool_.put(c);
      }
      finish_job_if_done(*job);
      if (stream_.closed()) return;
    }
  }
  remove_finished_jobs();
  start_reads();  // slots freed above
}

// ---------------------------------------------------------------- WanServer

WanServer::WanServer(WanServerOptions options, const tls::TlsContext& tls,
                     std::vector<WanVolume> volumes)
    : options_(std::move(options)),
      tls_(tls),
      volumes_(std::move(volumes)),
      counters_(volumes_.size()),
      leases_(volumes_.size()),
      maps_(volumes_.size()),
      rate_limit_(options_.rate_limit_bytes_per_s),
      hub_(HubOptions{"wan", options_.connections_max, true, options_.pre_auth},
           &WanServer::start_session, this) {
  // Access maps are bounded and allocated here, not on the read path.
  for (size_t v = 0; v < volumes_.size(); ++v) {
    const uint64_t chunks =
        (volumes_[v].device->geometry().size_bytes() + options_.chunk_bytes - 1) /
        options_.chunk_bytes;
    maps_[v].seen.assign(size_t((chunks + 63) / 64), 0);
    maps_[v].offsets.reserve(std::min<uint64_t>(kAccessMapEntriesMax, chunks));
  }
}

// The sweep re-arms itself while a closing session is not idle; at shutdown one can stay busy
// for good (a request stuck on a hung NBD source), so the timer may still be armed here. The
// reactor has stopped by now (or runs on this thread).
WanServer::~WanServer() {
  if (reactor_ != nullptr) reactor_->cancel(sweep_timer_);
}

Result<void> WanServer::start(Reactor& reactor, std::string& error) noexcept {
  reactor_ = &reactor;
  load_access_maps();
  auto fd = listen_tcp(options_.listen_address, options_.port, error);
  if (!fd.ok()) return fd.error();
  bound_port_ = local_port(fd.value());
  hub_.join(reactor);
  hub_.add_listener(reactor, fd.value());
  reactor.arm(sweep_timer_, kSweepNs, &WanServer::on_sweep, this);
  return {};
}

uint64_t WanServer::resume_or_new_session(const std::string& client, uint64_t wanted) noexcept {
  if (wanted != 0 && dedup_.count(client + "/" + std::to_string(wanted)) != 0) return wanted;
  uint64_t id = 0;
  while (id == 0) RAND_bytes(reinterpret_cast<unsigned char*>(&id), sizeof id);
  const std::string key = client + "/" + std::to_string(id);
  dedup_[key];
  dedup_order_.push_back(key);
  if (dedup_order_.size() > kDedupSessionsMax) {
    dedup_.erase(dedup_order_.front());
    dedup_order_.erase(dedup_order_.begin());
  }
  return id;
}

WanServer::DedupSet* WanServer::dedup_for(const std::string& client, uint64_t session) noexcept {
  auto it = dedup_.find(client + "/" + std::to_string(session));
  return it == dedup_.end() ? nullptr : &it->second;
}

std::string WanServer::acquire_lease(ServerSession& s, size_t v, uint64_t& generation) noexcept {
  VolumeLease& l = leases_[v];
  const uint64_t now = reactor_->now_ns();
  const std::string& name = volumes_[v].name;
  if (!l.holder.empty() && l.owner == nullptr && now >= l.expires_ns) {
    std::fprintf(stderr, "ferry: wan: lease of volume '%s' by cloud edge '%s' expired\n",
                 name.c_str(), l.holder.c_str());
    l.holder.clear();
  }
  const char* how = "granted";
  if (!l.holder.empty()) {
    if (l.owner == &s) {  // opened twice on one connection: the same lease
      generation = l.generation;
      return {};
    }
    if (l.holder != s.edge_name()) {
      char why[320];
      if (l.owner != nullptr)
        std::snprintf(why, sizeof why,
                      "volume '%s' is attached by cloud edge '%s' (lease held for %.0f s)",
                      name.c_str(), l.holder.c_str(), double(now - l.since_ns) / 1e9);
      else
        std::snprintf(
            why, sizeof why,
            "volume '%s' is leased to cloud edge '%s', disconnected; the lease expires in %.0f s",
            name.c_str(), l.holder.c_str(), double(l.expires_ns - now) / 1e9);
      return why;
    }
    // The same edge. Its previous connection is gone, or it is the same process (same session)
    // back before we noticed the old connection die: it takes over and the old handle is fenced.
    // Another process with the same certificate while the first is connected is refused.
    if (l.owner != nullptr && l.holder_session != s.session()) {
      char why[320];
      std::snprintf(
          why, sizeof why,
          "volume '%s' is attached by another process of cloud edge '%s' (same certificate, "
          "another session)",
          name.c_str(), l.holder.c_str());
      return why;
    }
    how = l.owner != nullptr ? "taken over from its previous connection" : "resumed";
  }
  if (l.holder.empty()) l.since_ns = now;
  l.holder = s.edge_name();
  l.holder_session = s.session();
  l.owner = &s;
  generation = ++l.generation;
  std::fprintf(stderr,
               "ferry: wan: lease of volume '%s' %s: cloud edge '%s' (generation %" PRIu64 ")\n",
               name.c_str(), how, l.holder.c_str(), l.generation);
  return {};
}

bool WanServer::lease_valid(const ServerSession& s, size_t v, uint64_t generation) const noexcept {
  const VolumeLease& l = leases_[v];
  return l.owner == &s && l.generation == generation;
}

void WanServer::release_lease(ServerSession& s, size_t v, bool closed_cleanly) noexcept {
  VolumeLease& l = leases_[v];
  if (l.owner != &s) return;
  l.owner = nullptr;
  if (closed_cleanly) {
    std::fprintf(stderr, "ferry: wan: lease of volume '%s' released by cloud edge '%s'\n",
                 volumes_[v].name.c_str(), l.holder.c_str());
    l.holder.clear();
  } else {
    l.expires_ns = reactor_->now_ns() + uint64_t(options_.lease_ms) * 1'000'000;
    std::fprintf(stderr,
                 "ferry: wan: cloud edge '%s' lost; its lease of volume '%s' is kept %u ms\n",
                 l.holder.c_str(), volumes_[v].name.c_str(), options_.lease_ms);
  }
}

void WanServer::connection_lost(ServerSession& s) noexcept {
  for (size_t v = 0; v < leases_.size(); ++v) release_lease(s, v, false);
}

void WanServer::record_access(size_t v, uint64_t offset, uint64_t length) noexcept {
  AccessMap& m = maps_[v];
  if (m.offsets.size() >= m.offsets.capacity() || length == 0) return;
  const uint64_t chunk = options_.chunk_bytes;
  for (uint64_t c = offset / chunk; c <= (offset + length - 1) / chunk; ++c) {
    uint64_t& w = m.seen[size_t(c / 64)];
    if (w & (1ull << (c % 64))) continue;
    w |= 1ull << (c % 64);
    m.offsets.push_back(c * chunk);  // within the capacity reserved at construction
    m.dirty = true;
    if (m.offsets.size() >= m.offsets.capacity()) return;
  }
}

// Access map file (gateway/wan/DESIGN.md "Access maps"): "FERRYMAP" u32 version 1, u32 chunk
// bytes, u64 count, count × u64 offsets (little endian), u32 CRC32C of everything before it.
void WanServer::load_access_maps() {
  if (options_.access_map_dir.empty()) return;
  for (size_t v = 0; v < volumes_.size(); ++v) {
    const std::string path = options_.access_map_dir + "/" + volumes_[v].name + ".map";
    FILE* f = std::fopen(path.c_str(), "rb");
    if (f == nullptr) continue;
    std::vector<uint8_t> b;
    uint8_t buf[65536];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0 && b.size() < (kAccessMapEntriesMax + 4) * 8)
      b.insert(b.end(), buf, buf + n);
    std::fclose(f);
    auto le = [&](size_t at, int bytes) {
      uint64_t x = 0;
      for (int i = bytes - 1; i >= 0; --i) x = (x << 8) | b[at + size_t(i)];
      return x;
    };
    const char* why = nullptr;
    if (b.size() < 28 || std::memcmp(b.data(), "FERRYMAP", 8) != 0)
      why = "not an access map";
    else if (le(8, 4) != 1)
      why = "unknown version";
    else if (le(12, 4) != options_.chunk_bytes)
      why = "made with another chunk size";
    else if (const uint64_t count = le(16, 8);
             count > kAccessMapEntriesMax || b.size() != 24 + count * 8 + 4)
      why = "truncated";
    else if (crc32c({b.data(), b.size() - 4}) != uint32_t(le(b.size() - 4, 4)))
      why = "checksum mismatch";
    if (why != nullptr) {
      std::fprintf(stderr, "ferry: wan: access map %s ignored: %s\n", path.c_str(), why);
      continue;
    }
    const uint64_t size = volumes_[v].device->geometry().size_bytes();
    for (uint64_t i = 0; i < le(16, 8); ++i)
      if (const uint64_t o = le(24 + size_t(i) * 8, 8);
          o < size && o % options_.chunk_bytes == 0 &&
          maps_[v].offsets.size() < maps_[v].offsets.capacity()) {
        const uint64_t c = o / options_.chunk_bytes;
        if (maps_[v].seen[size_t(c / 64)] & (1ull << (c % 64))) continue;  // duplicate entry
        maps_[v].seen[size_t(c / 64)] |= 1ull << (c % 64);
        maps_[v].offsets.push_back(o);
      }
    std::fprintf(stderr, "ferry: wan: volume '%s': access map of %zu chunks from %s\n",
                 volumes_[v].name.c_str(), maps_[v].offsets.size(), path.c_str());
  }
}

void WanServer::save_access_maps() const {
  if (options_.access_map_dir.empty()) return;
  for (size_t v = 0; v < volumes_.size(); ++v) {
    const AccessMap& m = maps_[v];
    if (!m.dirty) continue;
    std::vector<uint8_t> b(24 + m.offsets.size() * 8 + 4);
    auto put = [&](size_t at, uint64_t x, int bytes) {
      for (int i = 0; i < bytes; ++i) b[at + size_t(i)] = uint8_t(x >> (8 * i));
    };
    std::memcpy(b.data(), "FERRYMAP", 8);
    put(8, 1, 4);
    put(12, options_.chunk_bytes, 4);
    put(16, m.offsets.size(), 8);
    for (size_t i = 0; i < m.offsets.size(); ++i) put(24 + i * 8, m.offsets[i], 8);
    put(b.size() - 4, crc32c({b.data(), b.size() - 4}), 4);
    const std::string path = options_.access_map_dir + "/" + volumes_[v].name + ".map";
    const std::string tmp = path + ".tmp";
    FILE* f = std::fopen(tmp.c_str(), "wb");
    const bool ok = f != nullptr && std::fwrite(b.data(), 1, b.size(), f) == b.size() &&
                    std::fflush(f) == 0 && ::fsync(fileno(f)) == 0;
    if (f != nullptr) std::fclose(f);
    if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0)
      std::fprintf(stderr, "ferry: wan: cannot save the access map %s: %s\n", path.c_str(),
                   std::strerror(errno));
    else
      std::fprintf(stderr, "ferry: wan: volume '%s': access map of %zu chunks saved to %s\n",
                   volumes_[v].name.c_str(), m.offsets.size(), path.c_str());
  }
}

std::string WanServer::lease_holder(size_t v) const {
  const VolumeLease& l = leases_[v];
  if (l.holder.empty()) return {};
  if (l.owner == nullptr && reactor_ != nullptr && reactor_->now_ns() >= l.expires_ns) return {};
  return l.holder;
}

bool WanServer::start_session(void* self, Reactor& reactor, int fd, uint64_t id) noexcept {
  auto* server = static_cast<WanServer*>(self);
  auto* s = new (std::nothrow) ServerSession(*server, reactor, id);
  if (s == nullptr) return false;
  server->sessions_.emplace_back(s);
  server->hub_.opened(s);
  s->start(fd);
  return true;
}

// A closed session stays (in closing_, and in the hub's drain count) until its I/O has
// completed; it stops counting against the limits at once.
void WanServer::session_closed(ServerSession* s) noexcept {
  hub_.closing(s);
  for (auto it = sessions_.begin(); it != sessions_.end(); ++it) {
    if (it->get() == s) {
      closing_.push_back(std::move(*it));
      sessions_.erase(it);
      return;
    }
  }
}

void WanServer::on_sweep(void* ctx) noexcept {
  auto* self = static_cast<WanServer*>(ctx);
  // Handshake deadline: TLS + HELLO within handshake_timeout_ms of the accept.
  const uint64_t now = self->reactor_->now_ns();
  const uint64_t deadline_ns = uint64_t(self->options_.handshake_timeout_ms) * 1'000'000;
  std::vector<ServerSession*> late;
  for (auto& s : self->sessions_)
    if (!s->authenticated() && now - s->accepted_ns() > deadline_ns) late.push_back(s.get());
  for (ServerSession* s : late) s->close("handshake timeout");
  // Dead links: an authenticated cloud edge pings every second.
  const uint64_t idle_ns = uint64_t(self->options_.idle_timeout_ms) * 1'000'000;
  late.clear();
  for (auto& s : self->sessions_)
    if (s->authenticated() && now - std::max(s->last_rx_ns(), s->accepted_ns()) > idle_ns)
      late.push_back(s.get());
  for (ServerSession* s : late) s->close("nothing received within the idle timeout (link dead)");
  self->closing_.erase(std::remove_if(self->closing_.begin(), self->closing_.end(),
                                      [self](const std::unique_ptr<ServerSession>& s) {
                                        if (!s->idle()) return false;
                                        self->hub_.closed(s.get());
                                        return true;
                                      }),
                       self->closing_.end());
  if (!self->stopping_ || !self->closing_.empty() || !self->sessions_.empty())
    self->reactor_->arm(self->sweep_timer_, kSweepNs, &WanServer::on_sweep, self);
}

void WanServer::stop() noexcept {
  stopping_ = true;
  if (reactor_ != nullptr) hub_.stop(*reactor_, "datacenter edge shutting down");
}

std::string WanServer::stats_text() const {
  std::string out;
  for (size_t i = 0; i < volumes_.size(); ++i) {
    const auto& c = counters_[i];
    char line[512];
    std::snprintf(line, sizeof line,
                  "volume %s: requested %" PRIu64 " B; sent %" PRIu64 " B of payload in %" PRIu64
                  " frames (zero %" PRIu64 " B, dedup %" PRIu64 " B, compressed %" PRIu64
                  " -> %" PRIu64 " B, raw %" PRIu64 " B); written %" PRIu64
                  " B; access map %zu chunks\n",
                  volumes_[i].name.c_str(), c.bytes_requested, c.payload_bytes_sent, c.frames_sent,
                  c.bytes_zero, c.bytes_dedup, c.bytes_compressed_in, c.bytes_compressed_out,
                  c.bytes_raw, c.bytes_written, maps_[i].offsets.size());
    out += line;
  }
  return out;
}

}  // namespace ferry::wan
