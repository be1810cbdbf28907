// NbdClientDevice implementation (see client_device.h). Everything below open() runs on the
// home reactor thread. libnbd callbacks only record results and queue the Op on the work list:
// they run with the handle lock held, so the next nbd_* call on that handle happens after the
// libnbd call that invoked them has returned (run_work()); replay commands (after a source
// restart) likewise only set replay_wakeup_. Reconnect and give-up waits are reactor Timers.
#include "gateway/nbd/client_device.h"

#include <libnbd.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>

#include "datapath/net_address.h"
#include "datapath/reactor.h"

namespace ferry::nbd {

namespace {

constexpr unsigned kPiecesMax = 8;                   // NBD commands in flight per request
constexpr uint64_t kRangeCommandMax = 1ull << 30;    // one TRIM / WRITE_ZEROES / BLOCK_STATUS
constexpr uint64_t kZeroWriteMax = 1ull << 20;       // WRITE_ZEROES emulated with writes of this
constexpr uint64_t kStatusQueryMax = 0xffffffffull;  // 32-bit length on the wire

// Source of zero-writes when the server has no WRITE_ZEROES (never written to).
alignas(4096) std::byte g_zeroes[kZeroWriteMax];

uint64_t align_down(uint64_t v, uint64_t a) noexcept { return v - v % a; }
uint64_t align_up(uint64_t v, uint64_t a) noexcept { return align_down(v + a - 1, a); }

}  // namespace

Errc nbd_errno_to_errc(int err) noexcept {
  switch (err) {
    case 0:
      return Errc::ok;
    case EPERM:
    case EROFS:
    case EACCES:
      return Errc::write_protected;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return Errc::no_space;
    case EINVAL:
    case EOVERFLOW:
    case ERANGE:
      return Errc::invalid_argument;
    case ENOTSUP:
      return Errc::unsupported;  // == EOPNOTSUPP on Linux
    case ENOMEM:
      return Errc::no_memory;
    case EAGAIN:
      return Errc::would_block;
    case ETIMEDOUT:
      return Errc::timed_out;
    case ECANCELED:
      return Errc::cancelled;
    case ENOENT:
      return Errc::not_found;
    case EPROTO:
      return Errc::protocol_error;
    case ENOTCONN:
    case ECONNRESET:
    case ECONNREFUSED:
    case ECONNABORTED:
    case EPIPE:
    case ESHUTDOWN:
    case EHOSTUNREACH:
    case ENETUNREACH:
      return Errc::closed;
    default:
      return Errc::io_error;  // EIO and anything a server invents
  }
}

// ---- per-handle state and in-flight records ----

class NbdClientDevice::PollOp final : public Operation {
 public:
  PollOp(Conn* c, bool r) noexcept : conn(c), read(r) {}
  void on_cqe(int32_t res, uint32_t) noexcept override;
  Conn* conn;
  bool read;
  bool armed = false;
};

// A handle's life: up ─(lost)─▶ waiting (back-off timer) ─▶ connecting ─▶ up
//                                   ▲                              │ (refused, failed)
//                                   └──────────────────────────────┘
enum class ConnState : uint8_t { up, waiting, connecting };

struct NbdClientDevice::Conn {
  NbdClientDevice* dev = nullptr;
  nbd_handle* h = nullptr;  // null while waiting
  size_t index = 0;
  PollOp* read_poll = nullptr;  // one pair per handle: an old handle's polls are orphaned
  PollOp* write_poll = nullptr;
  unsigned in_flight = 0;  // requests (Ops) assigned to this handle
  uint64_t commands_sent = 0;
  ConnState state = ConnState::up;
  uint32_t delay_ms = 0;  // current back-off
  Timer timer;            // back-off between connection attempts
  // A connection attempt running on a helper thread (the URI names a host: libnbd's
  // nbd_aio_connect_uri calls getaddrinfo, which must not block the home reactor).
  std::shared_ptr<ConnectJob> job;
  bool up() const noexcept { return state == ConnState::up; }
};

// The handle a helper thread is connecting; handed back to the home thread through post(), or
// closed by whichever side sees `cancelled` (shutdown, destruction, geometry change).
struct NbdClientDevice::ConnectJob {
  std::mutex mutex;
  bool cancelled = false;
  nbd_handle* h = nullptr;
  bool started = false;  // nbd_aio_connect_uri returned 0
};

namespace {
// True when the URI's authority names a host rather than an address literal (nbd://name:port,
// nbds://name): connecting then includes a DNS lookup. Unix-socket URIs have no host.
bool uri_names_a_host(const std::string& uri) noexcept {
  const size_t scheme_end = uri.find("://");
  if (scheme_end == std::string::npos) return false;
  const std::string scheme = uri.substr(0, scheme_end);
  if (scheme.find("unix") != std::string::npos || scheme.find("vsock") != std::string::npos)
    return false;
  const size_t start = scheme_end + 3;
  const size_t end = uri.find_first_of("/?#", start);
  std::string authority = uri.substr(start, end == std::string::npos ? end : end - start);
  if (const size_t at = authority.rfind('@'); at != std::string::npos) authority.erase(0, at + 1);
  if (authority.empty() || authority.front() == '[') return false;  // no host, or IPv6 literal
  const std::string host = authority.substr(0, authority.find(':'));
  std::string error;
  return !resolve_tcp(HostPort{host, 10809}, false, /*numeric_only=*/true, error).ok();
}
}  // namespace

// What open() learned; a reconnected server must show the same (else: geometry changed).
struct NbdClientDevice::Facts {
  int64_t size = 0, min_block = 0, max_block = 0;
  int read_only = 0, can_flush = 0, can_fua = 0, can_zero = 0, can_trim = 0, multi_conn = 0;
  int base_allocation = 0;
  static Facts of(nbd_handle* h) noexcept {
    Facts f;
    f.size = nbd_get_size(h);
    f.min_block = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
    f.max_block = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
    f.read_only = nbd_is_read_only(h);
    f.can_flush = nbd_can_flush(h);
    f.can_fua = nbd_can_fua(h);
    f.can_zero = nbd_can_zero(h);
    f.can_trim = nbd_can_trim(h);
    f.multi_conn = nbd_can_multi_conn(h);
    f.base_allocation = nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION);
    return f;
  }
  bool operator==(const Facts&) const = default;
};

// One acknowledged (or in-flight) write kept for replay: data at `pos` in the byte ring, or a
// write_zeroes (no data).
struct NbdClientDevice::ReplayEntry {
  enum State : uint8_t { pending, acked, dropped };
  uint64_t offset_bytes = 0;
  uint64_t length_bytes = 0;
  size_t pos = 0;  // in the byte ring; bytes used = zero ? 0 : length_bytes
  uint64_t ack_stamp = 0;
  State state = pending;
  bool zero = false;
  bool may_deallocate = false;
};

void NbdClientDevice::PollOp::on_cqe(int32_t res, uint32_t) noexcept {
  armed = false;
  if (conn == nullptr) {  // orphaned by the device's destructor: this was the last CQE
    delete this;
    return;
  }
  conn->dev->on_poll(*conn, read, res);
}

struct NbdClientDevice::Op {
  NbdClientDevice* dev = nullptr;
  Op* next = nullptr;
  IoRequest* req = nullptr;
  Reactor* origin = nullptr;  // set when submitted from another reactor thread
  Conn* conn = nullptr;
  Phase phase = Phase::main;
  bool skip_zero = false;
  bool on_work = false;
  bool all_issued = false;  // every command of the current phase has been sent
  bool emulate_fua = false;
  bool force_fua = false;     // a write too large to copy for replay: made stable instead
  bool lost = false;          // its handle was lost: re-sent after the reconnect
  bool waited_space = false;  // counted once in replay_waits
  uint64_t replay_seq = 0;    // its entry in the replay set (0: none)
  uint64_t flush_stamp = 0;   // a FLUSH sent: ack stamps ≤ this are covered when it completes
  uint64_t cursor_bytes = 0;  // main phase: bytes of the request sent or zero filled
  unsigned pieces = 0;        // NBD commands in flight
  int err = 0;                // first errno
  uint64_t claim_floor = 0;   // block status: mutations after this may invalidate the reply
  uint64_t mutation = 0;      // write / discard / write_zeroes: its mutation epoch
  // IoOp::block_status answer taken from the reply's first run of equal extents.
  bool answer_open = false;
  bool answered = false;
  uint64_t answer_end_bytes = 0;
  uint32_t answer_flags = 0;
};

// ---- open / close ----

NbdClientDevice::NbdClientDevice(const std::string& uri, const NbdClientOptions& options) noexcept
    : options_(options),
      uri_(uri),
      uri_names_host_(uri_names_a_host(uri)),
      give_up_timer_(new (std::nothrow) Timer()),
      cache_(options.extent_cache_entries_max) {}

namespace {

nbd_handle* create_handle(size_t index) noexcept {
  nbd_handle* h = nbd_create();
  if (h == nullptr) return nullptr;
  char name[48];
  std::snprintf(name, sizeof name, "ferry-nbd-client-%zu", index);
  nbd_set_handle_name(h, name);
  nbd_set_request_structured_replies(h, true);
  nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION);
  // The URI comes from the volume configuration (trusted): nbds:// may name its certificates
  // or PSK file (?tls-certificates=DIR, ?tls-psk-file=FILE).
  nbd_set_uri_allow_local_file(h, true);
  return h;
}

nbd_handle* connect_one(const std::string& uri, size_t index, Errc* errc) noexcept {
  nbd_handle* h = create_handle(index);
  if (h == nullptr) {
    *errc = Errc::no_memory;
    return nullptr;
  }
  if (nbd_connect_uri(h, uri.c_str()) == -1) {
    const int err = nbd_get_errno();
    std::fprintf(stderr, "ferry: nbd-client %s: cannot connect: %s\n", uri.c_str(),
                 nbd_get_error());
    nbd_close(h);
    const Errc e = nbd_errno_to_errc(err);
    *errc = (e == Errc::ok || e == Errc::io_error) ? Errc::closed : e;
    return nullptr;
  }
  return h;
}

}  // namespace

Result<std::unique_ptr<NbdClientDevice>> NbdClientDevice::open(
    const std::string& uri, const NbdClientOptions& options) noexcept {
  if (options.requests_in_flight_max == 0) return Errc::invalid_argument;
  std::unique_ptr<NbdClientDevice> dev(new (std::nothrow) NbdClientDevice(uri, options));
  if (!dev) return Errc::no_memory;
  Errc errc = Errc::ok;
  nbd_handle* first = connect_one(uri, 0, &errc);
  if (first == nullptr) return errc;
  auto add_conn = [&](nbd_handle* h) {
    auto c = std::make_unique<Conn>();
    c->dev = dev.get();
    c->h = h;
    c->index = dev->conns_.size();
    c->read_poll = new (std::nothrow) PollOp(c.get(), true);
    c->write_poll = new (std::nothrow) PollOp(c.get(), false);
    const bool ok = c->read_poll != nullptr && c->write_poll != nullptr;
    dev->conns_.push_back(std::move(c));  // the destructor frees what was made
    return ok;
  };
  if (!add_conn(first)) return Errc::no_memory;

  const int64_t size = nbd_get_size(first);
  const int64_t min_block = nbd_get_block_size(first, LIBNBD_SIZE_MINIMUM);
  const int64_t preferred = nbd_get_block_size(first, LIBNBD_SIZE_PREFERRED);
  const int64_t maximum = nbd_get_block_size(first, LIBNBD_SIZE_MAXIMUM);
  if (size <= 0) {
    std::fprintf(stderr, "ferry: nbd-client %s: export size unknown or zero\n", uri.c_str());
    return Errc::unsupported;
  }
  const uint64_t bs = std::max<uint64_t>(512, min_block > 0 ? uint64_t(min_block) : 1);
  if ((bs & (bs - 1)) != 0 || bs > 65536) {
    std::fprintf(stderr, "ferry: nbd-client %s: server minimum block size %lld unsupported\n",
                 uri.c_str(), static_cast<long long>(min_block));
    return Errc::unsupported;
  }
  Geometry& g = dev->geometry_;
  g.block_size_bytes = uint32_t(bs);
  g.block_count = uint64_t(size) / bs;
  if (g.block_count == 0) return Errc::unsupported;
  if (uint64_t(size) % bs != 0) {
    std::fprintf(stderr,
                 "ferry: nbd-client %s: size %lld is not a multiple of %llu; the tail "
                 "is not served\n",
                 uri.c_str(), static_cast<long long>(size), static_cast<unsigned long long>(bs));
  }
  dev->preferred_block_bytes_ = preferred > 0 ? uint32_t(preferred) : 4096;
  uint64_t piece = 32u << 20;
  if (maximum > 0) piece = std::min<uint64_t>(piece, uint64_t(maximum));
  dev->piece_bytes_max_ = std::max<uint64_t>(align_down(piece, bs), bs);
  dev->multi_conn_ = nbd_can_multi_conn(first) == 1;
  dev->base_allocation_ = nbd_can_meta_context(first, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
  dev->can_flush_ = nbd_can_flush(first) == 1;
  dev->can_fua_ = nbd_can_fua(first) == 1;
  dev->can_zero_ = nbd_can_zero(first) == 1;
  dev->can_trim_ = nbd_can_trim(first) == 1;
  g.read_only = options.read_only || nbd_is_read_only(first) == 1;
  g.can_discard = dev->can_trim_ && !g.read_only;
  g.discard_zeroes = false;  // NBD_CMD_TRIM promises nothing about what reads return
  g.volatile_cache = dev->can_flush_;
  dev->facts_.reset(new (std::nothrow) Facts(Facts::of(first)));
  if (!dev->facts_ || !dev->give_up_timer_) return Errc::no_memory;

  const unsigned wanted = dev->multi_conn_ ? std::clamp(options.connections, 1u, 64u) : 1u;
  for (unsigned i = 1; i < wanted; ++i) {
    nbd_handle* h = connect_one(uri, i, &errc);
    if (h == nullptr) return errc;
    if (nbd_get_size(h) != size) {
      std::fprintf(stderr, "ferry: nbd-client %s: connection %u sees another size\n", uri.c_str(),
                   i);
      nbd_close(h);
      return Errc::protocol_error;
    }
    if (!add_conn(h)) return Errc::no_memory;
  }
  dev->description_ = "nbd-client:" + uri;
  if (dev->conns_.size() > 1) dev->description_ += " x" + std::to_string(dev->conns_.size());
  return dev;
}

NbdClientDevice::~NbdClientDevice() {
  // Requests still in flight (a hung source at shutdown) are abandoned: nbd_close below drops
  // their commands without calling completion callbacks (none has a free callback), so no Op
  // is touched after this. Asserting here turned a SIGTERM with the source hung into an abort.
  if (ops_in_flight_ != 0) {
    std::fprintf(stderr,
                 "ferry: nbd-client %s: closed with %zu request(s) in flight; they are abandoned "
                 "(never completed)\n",
                 uri_.c_str(), ops_in_flight_);
  }
  Reactor* home = home_.load(std::memory_order_acquire);
  if (home != nullptr && give_up_timer_) home->cancel(*give_up_timer_);
  for (auto& c : conns_) {
    if (home != nullptr) home->cancel(c->timer);
    cancel_connect_job(*c);
    if (c->h != nullptr && nbd_aio_is_ready(c->h) == 1)
      (void)nbd_aio_disconnect(c->h, 0);  // polite NBD_CMD_DISC
    release_handle(*c);  // armed polls are cancelled and free themselves at their final CQE
  }
}

Reactor* NbdClientDevice::home() const noexcept { return home_.load(std::memory_order_acquire); }

size_t NbdClientDevice::live_connection_count() const noexcept {
  size_t n = 0;
  for (const auto& c : conns_) n += c->up() ? 1 : 0;
  return n;
}

uint64_t NbdClientDevice::requests_sent_on(size_t i) const noexcept {
  return i < conns_.size() ? conns_[i]->commands_sent : 0;
}

// ---- submission ----

void NbdClientDevice::submit(IoRequest& req) noexcept {
  if (req.op == IoOp::access_map) return req.complete(Errc::unsupported);  // NBD has none
  submit_from(req, options_.skip_unallocated_reads, Reactor::current());
}

void NbdClientDevice::read_allocated(IoRequest& req) noexcept {
  FERRY_ASSERT(req.op == IoOp::read);
  submit_from(req, true, Reactor::current());
}

void NbdClientDevice::submit_from(IoRequest& req, bool skip_zero, Reactor* r) noexcept {
  if (r == nullptr) return req.complete(Errc::unsupported);  // needs a reactor thread
  Reactor* home = home_.load(std::memory_order_acquire);
  if (home == nullptr) {
    Reactor* expected = nullptr;
    if (home_.compare_exchange_strong(expected, r, std::memory_order_acq_rel)) {
      bind_home(*r);
      home = r;
    } else {
      home = expected;
    }
  }
  if (home != r) {
    // Slow path: run on the home thread, complete back on this one.
    home->post([this, q = &req, skip_zero, r] {
      ++stats_.forwarded;
      submit_home(*q, skip_zero, r);
    });
    return;
  }
  submit_home(req, skip_zero, nullptr);
}

void NbdClientDevice::bind_home(Reactor&) noexcept {
  for (auto& c : conns_) after_nbd_call(*c);
}

void NbdClientDevice::complete_request(IoRequest& req, Errc e, Reactor* origin) noexcept {
  if (origin == nullptr) return req.complete(e);
  origin->post([q = &req, e] { q->complete(e); });
}

NbdClientDevice::Op* NbdClientDevice::take_op() noexcept {
  if (free_ops_ == nullptr) {
    auto op = std::unique_ptr<Op>(new (std::nothrow) Op());
    if (!op) return nullptr;
    op->dev = this;
    all_ops_.push_back(std::move(op));
    return all_ops_.back().get();
  }
  Op* op = free_ops_;
  free_ops_ = op->next;
  *op = Op{};
  op->dev = this;
  return op;
}

void NbdClientDevice::submit_home(IoRequest& req, bool skip_zero, Reactor* origin) noexcept {
  ++stats_.requests;
  if (shut_down_) return complete_request(req, Errc::closed, origin);
  const Geometry& g = geometry_;
  if (req.op != IoOp::flush) {
    const Errc e = check_range(g, req.offset_bytes, req.length_bytes);
    if (e != Errc::ok) return complete_request(req, e, origin);
  }
  const bool mutates =
      req.op == IoOp::write || req.op == IoOp::discard || req.op == IoOp::write_zeroes;
  if (mutates && g.read_only) return complete_request(req, Errc::write_protected, origin);
  if (req.op == IoOp::discard && !can_trim_)
    return complete_request(req, Errc::unsupported, origin);
  if (req.op != IoOp::flush && req.length_bytes == 0) {
    return complete_request(req, req.op == IoOp::block_status ? Errc::invalid_argument : Errc::ok,
                            origin);
  }
  if (req.op == IoOp::flush && !can_flush_) return complete_request(req, Errc::ok, origin);

  // Answers that need no server.
  if (req.op == IoOp::block_status) {
    if (!base_allocation_) {  // the server cannot tell: everything is data
      req.status_length_bytes = req.length_bytes;
      req.status_flags = 0;
      return complete_request(req, Errc::ok, origin);
    }
    if (auto x = cache_.find(req.offset_bytes)) {
      ++stats_.status_cache_hits;
      uint64_t len = std::min(x->end_bytes, req.offset_bytes + req.length_bytes) - req.offset_bytes;
      req.status_flags = x->flags;
      len = align_down(len, g.block_size_bytes);
      if (len == 0) {  // a partial block: call it data
        len = std::min<uint64_t>(g.block_size_bytes, req.length_bytes);
        req.status_flags = 0;
      }
      req.status_length_bytes = len;
      return complete_request(req, Errc::ok, origin);
    }
  }
  skip_zero = skip_zero && req.op == IoOp::read && base_allocation_;
  if (skip_zero) {
    const uint64_t end = req.offset_bytes + req.length_bytes;
    auto x = cache_.find(req.offset_bytes);
    if (x && (x->flags & kStatusZero) && x->end_bytes >= end) {
      std::memset(req.data, 0, req.length_bytes);
      stats_.zero_filled_bytes += req.length_bytes;
      return complete_request(req, Errc::ok, origin);
    }
  }

  Op* op = take_op();
  if (op == nullptr) return complete_request(req, Errc::no_memory, origin);
  op->req = &req;
  op->origin = origin;
  op->skip_zero = skip_zero;
  ++ops_in_flight_;
  if (mutates) {
    // The cache forgets (or marks as data) the range now, before any later read can look.
    op->mutation = note_mutation(req.offset_bytes, req.length_bytes);
    if (req.op == IoOp::write) {
      cache_.assign(req.offset_bytes, req.offset_bytes + req.length_bytes, 0);
    } else {
      cache_.erase(req.offset_bytes, req.offset_bytes + req.length_bytes);
    }
  }
  op->emulate_fua =
      req.fua && !can_fua_ && can_flush_ && (req.op == IoOp::write || req.op == IoOp::write_zeroes);
  if (skip_zero && cache_.first_unknown(req.offset_bytes, req.offset_bytes + req.length_bytes) <
                       req.offset_bytes + req.length_bytes) {
    op->phase = Phase::status;
  }

  // FIFO: while anything waits (for a slot, the reconnect, the replay or replay space), new
  // requests queue behind it.
  const bool must_wait = retry_head_ != nullptr || queue_head_ != nullptr || replaying_;
  Conn* c = must_wait || geometry_changed_ ? nullptr : pick_conn();
  if (c != nullptr && !reserve_replay(*op)) c = nullptr;
  if (c == nullptr) {
    if (geometry_changed_) {
      op->err = EIO;
      push_work(*op);
    } else if (down_ && gave_up_) {
      op->err = ENOTCONN;
      push_work(*op);
    } else if (queued_ >= options_.requests_queued_max) {
      ++stats_.would_block;
      op->err = EAGAIN;
      push_work(*op);
    } else {
      ++stats_.queued;
      ++queued_;
      op->next = nullptr;
      if (queue_tail_)
        queue_tail_->next = op;
      else
        queue_head_ = op;
      queue_tail_ = op;
    }
    return run_work();
  }
  op->conn = c;
  ++c->in_flight;
  push_work(*op);
  run_work();
}

NbdClientDevice::Conn* NbdClientDevice::pick_conn() noexcept {
  Conn* best = nullptr;
  const size_t n = conns_.size();
  for (size_t k = 0; k < n; ++k) {
    Conn* c = conns_[(next_conn_ + k) % n].get();
    if (!c->up() || c->in_flight >= options_.requests_in_flight_max) continue;
    if (best == nullptr || c->in_flight < best->in_flight) best = c;
  }
  if (best != nullptr) next_conn_ = (best->index + 1) % n;
  return best;
}

NbdClientDevice::Op* NbdClientDevice::pop_waiting() noexcept {
  Op* op = retry_head_;
  if (op != nullptr) {
    retry_head_ = op->next;
    if (retry_head_ == nullptr) retry_tail_ = nullptr;
  } else if ((op = queue_head_) != nullptr) {
    queue_head_ = op->next;
    if (queue_head_ == nullptr) queue_tail_ = nullptr;
    --queued_;
  }
  if (op != nullptr) op->next = nullptr;
  return op;
}

// Starts waiting requests in order (lost ones first) while handles have slots. A write at the
// head that finds no replay space stops the line until a FLUSH frees some.
void NbdClientDevice::dispatch_queued() noexcept {
  if (replaying_ || geometry_changed_ || shut_down_) return;
  for (;;) {
    Op* head = retry_head_ != nullptr ? retry_head_ : queue_head_;
    if (head == nullptr) return;
    Conn* c = pick_conn();
    if (c == nullptr) return;
    if (!reserve_replay(*head)) return;
    Op* op = pop_waiting();
    op->conn = c;
    ++c->in_flight;
    push_work(*op);
  }
}

void NbdClientDevice::push_work(Op& op) noexcept {
  if (op.on_work) return;
  op.on_work = true;
  op.next = nullptr;
  if (work_tail_)
    work_tail_->next = &op;
  else
    work_head_ = &op;
  work_tail_ = &op;
}

void NbdClientDevice::run_work() noexcept {
  if (in_work_) return;  // the outer loop picks it up (no recursion through completions)
  in_work_ = true;
  while (work_head_ != nullptr || replay_wakeup_) {
    if (replay_wakeup_) {  // a replay command completed (recorded by on_replay_done)
      replay_wakeup_ = false;
      continue_replay();
      continue;
    }
    Op* op = work_head_;
    work_head_ = op->next;
    if (work_head_ == nullptr) work_tail_ = nullptr;
    op->on_work = false;
    op->next = nullptr;
    advance(*op);
  }
  in_work_ = false;
}

// Moves an Op forward: sends what can be sent, changes phase when a phase is done, finishes.
void NbdClientDevice::advance(Op& op) noexcept {
  for (;;) {
    if (op.lost) return requeue_lost(op);  // its handle is gone (and with it its commands)
    if (op.err == 0 && !op.all_issued && op.conn != nullptr) issue_more(op);
    if (op.on_work) return;     // a callback inside libnbd requeued it: the work loop resumes
    if (op.pieces > 0) return;  // more replies to come; their callbacks requeue the Op
    if (op.err != 0) {
      if (op.phase == Phase::status && op.conn != nullptr && op.conn->up()) {
        op.err = 0;  // a failed lookup only costs the optimisation: read everything
      } else {
        return finish(op, nbd_errno_to_errc(op.err));
      }
    }
    if (!op.all_issued) return;  // issue_more could not start (cannot happen without error)
    switch (op.phase) {
      case Phase::status:
        op.phase = Phase::main;
        op.all_issued = false;
        op.cursor_bytes = 0;
        continue;
      case Phase::main:
        if (op.emulate_fua) {
          op.phase = Phase::fua_flush;
          op.all_issued = false;
          continue;
        }
        if (op.req->op == IoOp::block_status) {
          if (!op.answer_open && !op.answered) return finish(op, Errc::io_error);
          IoRequest& q = *op.req;
          uint64_t len =
              std::min(op.answer_end_bytes, q.offset_bytes + q.length_bytes) - q.offset_bytes;
          q.status_flags = op.answer_flags;
          len = align_down(len, geometry_.block_size_bytes);
          if (len == 0) {
            len = std::min<uint64_t>(geometry_.block_size_bytes, q.length_bytes);
            q.status_flags = 0;
          }
          q.status_length_bytes = len;
        }
        return finish(op, Errc::ok);
      case Phase::fua_flush:
        return finish(op, Errc::ok);
    }
  }
}

void NbdClientDevice::issue_more(Op& op) noexcept {
  while (op.err == 0 && !op.all_issued && op.pieces < kPiecesMax) {
    if (!issue_piece(op)) break;
  }
  after_nbd_call(*op.conn);
}

int64_t NbdClientDevice::issue_status_query(Op& op, uint64_t from, uint64_t min_end) noexcept {
  const uint64_t size = geometry_.size_bytes();
  uint64_t want = std::max(min_end - from, options_.status_lookahead_bytes);
  want = std::min({want, size - from, align_down(kStatusQueryMax, geometry_.block_size_bytes)});
  op.claim_floor = claim_floor();
  ++stats_.nbd_status_queries;
  return nbd_aio_block_status(op.conn->h, want, from,
                              nbd_extent_callback{&on_extents, &op, nullptr},
                              nbd_completion_callback{&on_command_done, &op, nullptr}, 0);
}

// Sends one NBD command for op (or zero fills locally). false: stop (error recorded).
bool NbdClientDevice::issue_piece(Op& op) noexcept {
  IoRequest& q = *op.req;
  nbd_handle* h = op.conn->h;
  const nbd_completion_callback done{&on_command_done, &op, nullptr};
  // Counted before the call: libnbd may run the completion callback inside it (the connection
  // dies while sending, or TLS-buffered replies are processed on the way back to READY).
  ++op.pieces;
  const uint64_t end = q.offset_bytes + q.length_bytes;
  const uint64_t pos = q.offset_bytes + op.cursor_bytes;
  int64_t cookie = 0;
  uint64_t len = 0;

  if (op.phase == Phase::status) {
    const uint64_t from = cache_.first_unknown(q.offset_bytes, end);
    op.all_issued = true;
    if (from >= end) {  // learned meanwhile
      --op.pieces;
      return true;
    }
    cookie = issue_status_query(op, from, end);
  } else if (op.phase == Phase::fua_flush || q.op == IoOp::flush) {
    op.all_issued = true;
    ++stats_.nbd_flushes;
    op.flush_stamp = ack_clock_;  // covers every write acknowledged before it is sent
    cookie = nbd_aio_flush(h, done, 0);
  } else if (q.op == IoOp::block_status) {
    op.all_issued = true;
    cookie = issue_status_query(op, q.offset_bytes, end);
  } else {
    switch (q.op) {
      case IoOp::access_map:
        FERRY_ASSERT(false && "access_map is answered in submit()");
        return false;
      case IoOp::read: {
        uint64_t limit = std::min(end, pos + piece_bytes_max_);
        if (op.skip_zero) {
          auto x = cache_.find(pos);
          if (x && (x->flags & kStatusZero)) {
            const uint64_t zero_end = std::min(x->end_bytes, end);
            std::memset(q.data + op.cursor_bytes, 0, zero_end - pos);
            stats_.zero_filled_bytes += zero_end - pos;
            op.cursor_bytes += zero_end - pos;
            op.all_issued = op.cursor_bytes == q.length_bytes;
            --op.pieces;  // served locally
            return true;
          }
          limit = cache_.first_with(pos, limit, kStatusZero);
        }
        len = limit - pos;
        ++stats_.nbd_reads;
        stats_.nbd_read_bytes += len;
        cookie = nbd_aio_pread(h, q.data + op.cursor_bytes, len, pos, done, 0);
        break;
      }
      case IoOp::write:
        len = std::min(end - pos, piece_bytes_max_);
        ++stats_.nbd_writes;
        stats_.nbd_write_bytes += len;
        cookie = nbd_aio_pwrite(h, q.data + op.cursor_bytes, len, pos, done,
                                (q.fua || op.force_fua) && can_fua_ ? LIBNBD_CMD_FLAG_FUA : 0);
        break;
      case IoOp::discard:
        len = std::min(end - pos, align_down(kRangeCommandMax, geometry_.block_size_bytes));
        ++stats_.nbd_trims;
        cookie = nbd_aio_trim(h, len, pos, done, 0);
        break;
      case IoOp::write_zeroes:
        if (can_zero_) {
          len = std::min(end - pos, align_down(kRangeCommandMax, geometry_.block_size_bytes));
          uint32_t flags = q.may_deallocate ? 0 : LIBNBD_CMD_FLAG_NO_HOLE;
          if ((q.fua || op.force_fua) && can_fua_) flags |= LIBNBD_CMD_FLAG_FUA;
          ++stats_.nbd_zeroes;
          cookie = nbd_aio_zero(h, len, pos, done, flags);
        } else {
          len = std::min(end - pos, kZeroWriteMax);
          ++stats_.nbd_writes;
          stats_.nbd_write_bytes += len;
          cookie = nbd_aio_pwrite(h, g_zeroes, len, pos, done,
                                  (q.fua || op.force_fua) && can_fua_ ? LIBNBD_CMD_FLAG_FUA : 0);
        }
        break;
      case IoOp::flush:
      case IoOp::block_status:
        FERRY_ASSERT(false);
    }
    op.cursor_bytes += len;
    op.all_issued = op.cursor_bytes == q.length_bytes;
  }
  if (cookie == -1) {
    // Not queued: libnbd will not call the completion callback.
    --op.pieces;
    const int err = nbd_get_errno();
    op.err =
        (nbd_aio_is_dead(h) == 1 || nbd_aio_is_closed(h) == 1) ? ENOTCONN : (err != 0 ? err : EIO);
    op.all_issued = true;
    return false;
  }
  ++op.conn->commands_sent;
  return true;
}

void NbdClientDevice::finish(Op& op, Errc e) noexcept {
  FERRY_ASSERT(!op.on_work && op.pieces == 0);
  IoRequest* req = op.req;
  Reactor* origin = op.origin;
  if (op.conn != nullptr) --op.conn->in_flight;
  if (e == Errc::ok && (req->op == IoOp::flush || op.emulate_fua)) {
    covered_ = std::max(covered_, op.flush_stamp);  // what this FLUSH made stable
    free_covered();
    if (req->op == IoOp::flush && req != &internal_flush_ && unflushed_lost_) {
      // Writes acknowledged before a source restart could not be replayed: this FLUSH must
      // not claim they are stable.
      unflushed_lost_ = false;
      e = Errc::io_error;
      std::fprintf(stderr,
                   "ferry: nbd-client %s: FLUSH fails with io_error: acknowledged writes lost "
                   "with the restarted source could not be replayed\n",
                   uri_.c_str());
    }
  }
  replay_settle(op, e);
  if (op.mutation != 0) {
    Mutation& m = mutations_[op.mutation % kMutationRing];
    if (m.epoch == op.mutation) m.done = true;
    --mutations_in_flight_;
    if (e == Errc::ok && req->op == IoOp::write_zeroes) {
      // The range reads as zero now, unless a mutation still in flight (or newer) overlaps.
      learn(claim_floor(), req->offset_bytes, req->offset_bytes + req->length_bytes, kStatusZero);
    }
  }
  --ops_in_flight_;
  op.req = nullptr;
  op.next = free_ops_;
  free_ops_ = &op;
  dispatch_queued();
  complete_request(*req, e, origin);
}

// ---- libnbd callbacks ----

int NbdClientDevice::on_command_done(void* user_data, int* error) {
  Op& op = *static_cast<Op*>(user_data);
  FERRY_ASSERT(op.pieces > 0);
  --op.pieces;
  if (*error != 0 && op.err == 0) op.err = *error;
  op.dev->push_work(op);
  return 1;  // retire the command: nobody calls nbd_aio_command_completed
}

int NbdClientDevice::on_extents(void* user_data, const char* context, uint64_t offset,
                                uint32_t* entries, size_t nr_entries, int* error) {
  Op& op = *static_cast<Op*>(user_data);
  NbdClientDevice& dev = *op.dev;
  if (*error != 0 || std::strcmp(context, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0) return 0;
  const uint64_t size = dev.geometry_.size_bytes();
  const uint64_t bs = dev.geometry_.block_size_bytes;
  const bool cacheable = dev.mutation_epoch_ - op.claim_floor <= kMutationRing;
  if (!cacheable) ++dev.stats_.status_replies_dropped;
  uint64_t pos = offset;
  for (size_t i = 0; i + 1 < nr_entries && pos < size; i += 2) {
    const uint64_t len = entries[i];
    const uint32_t flags = entries[i + 1] & (kStatusHole | kStatusZero);
    if (len == 0) break;  // broken server: stop here
    const uint64_t end = std::min(pos + len, size);
    if (op.req->op == IoOp::block_status && !op.answered) {
      if (!op.answer_open) {
        op.answer_open = true;
        op.answer_flags = flags;
        op.answer_end_bytes = end;
      } else if (flags == op.answer_flags && pos == op.answer_end_bytes) {
        op.answer_end_bytes = end;
      } else {
        op.answered = true;
      }
    }
    if (cacheable) {
      if (flags & kStatusZero) {
        // Zero claims are kept block aligned (partial blocks are data: always safe to read).
        const uint64_t zs = std::min(align_up(pos, bs), end),
                       ze = std::max(align_down(end, bs), zs);
        dev.cache_.assign(pos, zs, 0);
        dev.cache_.assign(zs, ze, flags);
        dev.cache_.assign(ze, end, 0);
      } else {
        dev.cache_.assign(pos, end, flags);
      }
    }
    pos = end;
  }
  if (cacheable) dev.reapply_mutations_since(op.claim_floor);
  return 0;
}

// ---- cache coherence ----

uint64_t NbdClientDevice::note_mutation(uint64_t offset, uint64_t length) noexcept {
  const uint64_t epoch = ++mutation_epoch_;
  mutations_[epoch % kMutationRing] = Mutation{epoch, offset, length, false};
  ++mutations_in_flight_;
  return epoch;
}

// Claims learned now are checked against every mutation from the oldest one still in flight
// (its effect on the server may not be visible in what we learned) to the newest.
uint64_t NbdClientDevice::claim_floor() const noexcept {
  if (mutations_in_flight_ == 0) return mutation_epoch_;
  uint64_t low = mutation_epoch_;
  size_t seen = 0;
  for (uint64_t k = mutation_epoch_; k > 0 && mutation_epoch_ - k < kMutationRing; --k) {
    const Mutation& m = mutations_[k % kMutationRing];
    if (m.epoch == k && !m.done) {
      low = k - 1;
      if (++seen == mutations_in_flight_) return low;
    }
  }
  return 0;  // an in-flight mutation fell out of the ring: claims are dropped (if epoch > ring)
}

bool NbdClientDevice::learn(uint64_t floor, uint64_t start, uint64_t end, uint32_t flags) noexcept {
  if (mutation_epoch_ - floor > kMutationRing) {
    ++stats_.status_replies_dropped;
    return false;
  }
  cache_.assign(start, end, flags);
  reapply_mutations_since(floor);
  return true;
}

void NbdClientDevice::reapply_mutations_since(uint64_t floor) noexcept {
  for (uint64_t k = floor + 1; k <= mutation_epoch_; ++k) {
    const Mutation& m = mutations_[k % kMutationRing];
    FERRY_ASSERT(m.epoch == k);
    cache_.erase(m.offset_bytes, m.offset_bytes + m.length_bytes);
  }
}

// ---- socket readiness ----

void NbdClientDevice::arm_poll(Conn& c, PollOp& p, bool read) noexcept {
  Reactor* home = home_.load(std::memory_order_relaxed);
  const int fd = nbd_aio_get_fd(c.h);
  if (fd < 0) return;
  io_uring_sqe* sqe = home->get_sqe();
  io_uring_prep_poll_add(sqe, fd, read ? POLLIN : POLLOUT);
  Reactor::prepare(sqe, &p);
  p.armed = true;
}

void NbdClientDevice::rearm(Conn& c) noexcept {
  if (c.h == nullptr || c.state == ConnState::waiting) return;
  if (home_.load(std::memory_order_relaxed) == nullptr) return;
  const unsigned dir = nbd_aio_get_direction(c.h);
  if ((dir & LIBNBD_AIO_DIRECTION_READ) && !c.read_poll->armed) arm_poll(c, *c.read_poll, true);
  if ((dir & LIBNBD_AIO_DIRECTION_WRITE) && !c.write_poll->armed) {
    arm_poll(c, *c.write_poll, false);
  }
}

void NbdClientDevice::after_nbd_call(Conn& c, const char* why) noexcept {
  if (c.h == nullptr || c.state == ConnState::waiting) return;
  if (c.state == ConnState::connecting) return connect_done(c);
  if (nbd_aio_is_closed(c.h) == 1) {
    return connection_lost(c, why != nullptr ? why : "the server closed the connection");
  }
  if (nbd_aio_is_dead(c.h) == 1) {
    // Failed inside an nbd_aio_* call that still queued its command: the last libnbd error on
    // this thread is the best description there is.
    const char* e = why != nullptr ? why : nbd_get_error();
    return connection_lost(c, e != nullptr ? e : "connection failed");
  }
  rearm(c);
}

void NbdClientDevice::on_poll(Conn& c, bool read, int32_t res) noexcept {
  if (c.h == nullptr) return;
  char why[256] = "";
  if (res != -ECANCELED) {
    const unsigned dir = nbd_aio_get_direction(c.h);
    // Poll errors (res < 0) are handed to libnbd too: its recv/send reports the real cause.
    int rc = 0;
    if (read && (dir & LIBNBD_AIO_DIRECTION_READ)) {
      rc = nbd_aio_notify_read(c.h);
    } else if (!read && (dir & LIBNBD_AIO_DIRECTION_WRITE)) {
      rc = nbd_aio_notify_write(c.h);
    }
    // The message lives until the next libnbd call on this thread: copy it now.
    const char* e = rc == -1 ? nbd_get_error() : nullptr;
    if (e != nullptr) std::snprintf(why, sizeof why, "%s", e);
  }
  after_nbd_call(c, why[0] != 0 ? why : nullptr);
  run_work();
}

// A handle is gone. libnbd has already failed its commands (their callbacks ran with ENOTCONN):
// its requests are marked lost and re-sent after a reconnect (or on a surviving handle).
void NbdClientDevice::connection_lost(Conn& c, const char* why_in) noexcept {
  char why[256];
  std::snprintf(why, sizeof why, "%s", why_in);
  c.state = ConnState::waiting;
  ++stats_.connections_lost;
  size_t moved = 0;
  for (auto& p : all_ops_) {
    Op& op = *p;
    if (op.req == nullptr || op.conn != &c) continue;
    op.conn = nullptr;
    op.lost = true;
    op.pieces = 0;  // aborted by libnbd; nbd_close below drops anything left, without callbacks
    push_work(op);
    ++moved;
  }
  c.in_flight = 0;
  const bool replay_aborted = replaying_ && replay_conn_ == &c;
  if (replay_aborted) {
    replaying_ = false;
    replay_conn_ = nullptr;
    replay_pieces_ = 0;
  }
  const size_t live = live_connection_count();
  if (conns_.size() > 1) {
    std::fprintf(stderr,
                 "ferry: nbd-client %s: connection %zu/%zu lost: %s; its %zu request(s) are "
                 "re-sent%s\n",
                 uri_.c_str(), c.index + 1, conns_.size(), why, moved,
                 live == 0 ? " after the reconnect" : " on the other connections");
  }
  release_handle(c);
  c.delay_ms = 0;
  schedule_reconnect(c);
  if (live == 0) {
    device_down(why);
  } else if (replay_aborted) {
    start_replay();  // on a surviving handle
  }
}

void NbdClientDevice::release_handle(Conn& c) noexcept {
  Reactor* home = home_.load(std::memory_order_relaxed);
  for (PollOp** pp : {&c.read_poll, &c.write_poll}) {
    PollOp* p = *pp;
    if (p == nullptr) continue;
    if (p->armed && home != nullptr) {
      // Cancelled; the PollOp frees itself at its final CQE (a new handle gets new PollOps).
      io_uring_sqe* sqe = home->get_sqe();
      io_uring_prep_poll_remove(sqe, reinterpret_cast<uint64_t>(static_cast<Operation*>(p)));
      Reactor::prepare_ignored(sqe);
      p->conn = nullptr;
    } else {
      delete p;
    }
    *pp = nullptr;
  }
  if (c.h != nullptr) {
    nbd_close(c.h);
    c.h = nullptr;
  }
}

void NbdClientDevice::shutdown() noexcept {
  if (shut_down_) return;
  shut_down_ = true;
  Reactor* home = home_.load(std::memory_order_relaxed);
  if (home != nullptr && give_up_timer_) home->cancel(*give_up_timer_);
  for (auto& c : conns_) {
    if (home != nullptr) home->cancel(c->timer);
    cancel_connect_job(*c);
    if (c->h != nullptr && nbd_aio_is_ready(c->h) == 1) (void)nbd_aio_disconnect(c->h, 0);
    release_handle(*c);  // nbd_close drops the handle's commands without their callbacks
    c->state = ConnState::waiting;
    c->in_flight = 0;
  }
  replaying_ = false;
  replay_pieces_ = 0;
  queue_head_ = queue_tail_ = retry_head_ = retry_tail_ = work_head_ = work_tail_ = nullptr;
  queued_ = 0;
  if (ops_in_flight_ != 0) {
    std::fprintf(stderr, "ferry: nbd-client %s: shut down: %zu request(s) fail with 'closed'\n",
                 uri_.c_str(), ops_in_flight_);
  }
  // By index: a completion may submit again (answered at once, no new Op).
  for (size_t i = 0; i < all_ops_.size(); ++i) {
    Op& op = *all_ops_[i];
    if (op.req == nullptr) continue;
    op.on_work = false;
    op.lost = false;
    op.pieces = 0;
    op.conn = nullptr;
    finish(op, Errc::closed);
  }
}

// ---- reconnecting ----

void NbdClientDevice::schedule_reconnect(Conn& c) noexcept {
  Reactor* home = home_.load(std::memory_order_relaxed);
  if (home == nullptr || geometry_changed_ || shut_down_) return;
  const uint32_t lo = std::max<uint32_t>(options_.reconnect_delay_ms_min, 1);
  const uint32_t hi = std::max(options_.reconnect_delay_ms_max, lo);
  c.delay_ms = c.delay_ms == 0 ? lo : std::min<uint32_t>(hi, c.delay_ms * 2);
  c.state = ConnState::waiting;
  home->arm(c.timer, uint64_t(c.delay_ms) * 1'000'000, &NbdClientDevice::on_reconnect_timer, &c);
}

void NbdClientDevice::on_reconnect_timer(void* ctx) noexcept {
  Conn& c = *static_cast<Conn*>(ctx);
  c.dev->start_connect(c);
  c.dev->run_work();
}

// One non-blocking connection attempt: nbd_aio_connect_uri, then the handshake is driven by
// the same polls as commands (connect_done sees where it got to after every libnbd call).
void NbdClientDevice::start_connect(Conn& c) noexcept {
  if (geometry_changed_ || c.state != ConnState::waiting) return;
  if (down_ && !reconnecting_logged_) {
    reconnecting_logged_ = true;
    std::fprintf(stderr,
                 "ferry: nbd-client %s: reconnecting (back-off %u ms doubling to %u ms, "
                 "attempts not logged)\n",
                 uri_.c_str(), options_.reconnect_delay_ms_min, options_.reconnect_delay_ms_max);
  }
  if (c.job != nullptr) return;  // an attempt is already on a helper thread
  nbd_handle* h = create_handle(c.index);
  if (h != nullptr && uri_names_host_) return start_connect_off_reactor(c, h);
  c.read_poll = new (std::nothrow) PollOp(&c, true);
  c.write_poll = new (std::nothrow) PollOp(&c, false);
  if (h == nullptr || c.read_poll == nullptr || c.write_poll == nullptr ||
      nbd_aio_connect_uri(h, uri_.c_str()) == -1) {
    if (h != nullptr) nbd_close(h);
    release_handle(c);
    return schedule_reconnect(c);
  }
  c.h = h;
  c.state = ConnState::connecting;
  connect_done(c);
}

// nbd_aio_connect_uri on a helper thread (it resolves the name with a blocking getaddrinfo,
// again at every attempt, so a changed DNS record is followed), then the handshake goes on on
// the home thread's polls as for a literal. The handle belongs to the helper until it is
// handed back.
void NbdClientDevice::start_connect_off_reactor(Conn& c, nbd_handle* h) noexcept {
  Reactor* home = home_.load(std::memory_order_relaxed);
  auto job = std::make_shared<ConnectJob>();
  job->h = h;
  try {
    std::thread([job, home, this, conn = &c, uri = uri_] {
      const bool started = nbd_aio_connect_uri(job->h, uri.c_str()) != -1;
      std::lock_guard lock(job->mutex);
      if (job->cancelled) {  // the device may be gone
        nbd_close(job->h);
        job->h = nullptr;
        return;
      }
      job->started = started;
      home->post([job, this, conn] { connect_looked_up(*conn, job); });
    }).detach();
  } catch (...) {
    nbd_close(h);
    return schedule_reconnect(c);
  }
  c.job = std::move(job);
  ++stats_.connects_off_reactor;
}

void NbdClientDevice::connect_looked_up(Conn& c, const std::shared_ptr<ConnectJob>& job) noexcept {
  nbd_handle* h = nullptr;
  {
    std::lock_guard lock(job->mutex);
    if (job->cancelled) {  // cancel_connect_job ran after the post: the handle is ours to close
      if (job->h != nullptr) nbd_close(job->h);
      job->h = nullptr;
      return;
    }
    h = std::exchange(job->h, nullptr);
  }
  c.job = nullptr;
  c.read_poll = new (std::nothrow) PollOp(&c, true);
  c.write_poll = new (std::nothrow) PollOp(&c, false);
  if (!job->started || c.read_poll == nullptr || c.write_poll == nullptr || geometry_changed_ ||
      shut_down_) {
    nbd_close(h);
    release_handle(c);
    return schedule_reconnect(c);
  }
  c.h = h;
  c.state = ConnState::connecting;
  connect_done(c);
  run_work();
}

void NbdClientDevice::cancel_connect_job(Conn& c) noexcept {
  if (c.job == nullptr) return;
  std::lock_guard lock(c.job->mutex);
  c.job->cancelled = true;  // the helper, or the posted hand-back, closes the handle
  c.job = nullptr;
}

void NbdClientDevice::connect_done(Conn& c) noexcept {
  if (nbd_aio_is_ready(c.h) == 1) {
    const Facts f = Facts::of(c.h);
    if (!(f == *facts_)) {
      geometry_changed_ = true;
      std::fprintf(stderr,
                   "ferry: nbd-client %s: the source came back with another geometry or other "
                   "flags (size %lld, was %lld; block %lld, was %lld; read-only %d, was %d): every "
                   "request fails with io_error until the volume is reopened\n",
                   uri_.c_str(), static_cast<long long>(f.size),
                   static_cast<long long>(facts_->size), static_cast<long long>(f.min_block),
                   static_cast<long long>(facts_->min_block), f.read_only, facts_->read_only);
      release_handle(c);
      c.state = ConnState::waiting;
      Reactor* home = home_.load(std::memory_order_relaxed);
      for (auto& other : conns_) {
        if (home != nullptr) home->cancel(other->timer);
        cancel_connect_job(*other);
        if (other->state == ConnState::connecting) {
          release_handle(*other);
          other->state = ConnState::waiting;
        }
      }
      if (home != nullptr && give_up_timer_) home->cancel(*give_up_timer_);
      down_ = false;
      fail_waiting(EIO);
      return;
    }
    c.state = ConnState::up;
    c.delay_ms = 0;
    ++stats_.reconnects;
    rearm(c);
    if (down_) return device_up(c);
    if (conns_.size() > 1) {
      std::fprintf(stderr, "ferry: nbd-client %s: connection %zu/%zu reconnected\n", uri_.c_str(),
                   c.index + 1, conns_.size());
    }
    return dispatch_queued();
  }
  if (nbd_aio_is_dead(c.h) == 1 || nbd_aio_is_closed(c.h) == 1 || nbd_aio_get_fd(c.h) < 0) {
    release_handle(c);  // refused, reset, handshake failed: try again later (not logged)
    return schedule_reconnect(c);
  }
  rearm(c);
}

void NbdClientDevice::device_down(const char* why) noexcept {
  Reactor* home = home_.load(std::memory_order_relaxed);
  down_ = true;
  gave_up_ = false;
  reconnecting_logged_ = false;
  down_since_ns_ = Reactor::now_ns_fresh();
  if (home != nullptr && give_up_timer_) {
    home->arm(*give_up_timer_, uint64_t(options_.source_give_up_ms) * 1'000'000,
              &NbdClientDevice::on_give_up_timer, this);
  }
  std::fprintf(stderr,
               "ferry: nbd-client %s: source down (%s): no connection left; requests wait for the "
               "reconnect, for up to %u ms, then fail with 'closed'\n",
               uri_.c_str(), why, options_.source_give_up_ms);
}

void NbdClientDevice::on_give_up_timer(void* ctx) noexcept {
  auto& d = *static_cast<NbdClientDevice*>(ctx);
  if (!d.down_) return;
  d.gave_up_ = true;
  const size_t n = d.fail_waiting(ENOTCONN);
  std::fprintf(stderr,
               "ferry: nbd-client %s: source down for more than %u ms: %zu waiting request(s) "
               "fail with 'closed', and new ones at once; reconnecting continues\n",
               d.uri_.c_str(), d.options_.source_give_up_ms, n);
  d.run_work();
}

void NbdClientDevice::device_up(Conn&) noexcept {
  Reactor* home = home_.load(std::memory_order_relaxed);
  if (home != nullptr && give_up_timer_) home->cancel(*give_up_timer_);
  down_ = false;
  gave_up_ = false;
  cache_.clear();  // the server may have changed under us
  if (unprotected_ack_ > covered_ && !unflushed_lost_) {
    unflushed_lost_ = true;  // replay off (replay_bytes_max 0): the next FLUSH must fail
    std::fprintf(stderr,
                 "ferry: nbd-client %s: writes acknowledged since the last FLUSH were not kept "
                 "for replay: the next FLUSH fails with io_error\n",
                 uri_.c_str());
  }
  size_t waiting = queued_;
  for (Op* op = retry_head_; op != nullptr; op = op->next) ++waiting;
  size_t unflushed = 0;
  for (uint64_t k = replay_first_; k < replay_end_; ++k) {
    unflushed += replay_entries_[k % options_.replay_entries_max].state == ReplayEntry::acked;
  }
  std::fprintf(
      stderr,
      "ferry: nbd-client %s: source up again after %llu ms; %zu waiting request(s) "
      "resume; %zu acknowledged unflushed write(s) replayed first\n",
      uri_.c_str(),
      static_cast<unsigned long long>((Reactor::now_ns_fresh() - down_since_ns_) / 1'000'000),
      waiting, unflushed);
  start_replay();
}

size_t NbdClientDevice::fail_waiting(int err) noexcept {
  size_t n = 0;
  while (Op* op = pop_waiting()) {
    op->err = err;
    push_work(*op);
    ++n;
  }
  return n;
}

void NbdClientDevice::requeue_lost(Op& op) noexcept {
  op.lost = false;
  op.err = 0;
  op.pieces = 0;
  op.all_issued = false;
  op.cursor_bytes = 0;
  op.answer_open = false;
  op.answered = false;
  op.phase = op.skip_zero ? Phase::status : Phase::main;
  ++stats_.requests_reissued;
  if (geometry_changed_) return finish(op, Errc::io_error);
  if (down_ && gave_up_) return finish(op, Errc::closed);
  op.next = nullptr;
  if (retry_tail_)
    retry_tail_->next = &op;
  else
    retry_head_ = &op;
  retry_tail_ = &op;
  dispatch_queued();
}

// ---- replay set ----

std::optional<size_t> NbdClientDevice::alloc_replay_bytes(size_t len) noexcept {
  const size_t cap = options_.replay_bytes_max;
  if (replay_first_ == replay_end_) {
    bytes_head_ = bytes_tail_ = 0;
    bytes_wrapped_ = false;
  }
  if (!bytes_wrapped_) {
    if (cap - bytes_tail_ >= len) {
      const size_t pos = bytes_tail_;
      bytes_tail_ += len;
      return pos;
    }
    if (len <= bytes_head_) {  // wrap: [0, len) ends before the oldest entry's bytes
      bytes_wrapped_ = true;
      bytes_tail_ = len;
      return 0;
    }
    return std::nullopt;
  }
  if (bytes_head_ - bytes_tail_ >= len) {
    const size_t pos = bytes_tail_;
    bytes_tail_ += len;
    return pos;
  }
  return std::nullopt;
}

size_t NbdClientDevice::replay_used_bytes() const noexcept {
  return bytes_wrapped_ ? options_.replay_bytes_max - bytes_head_ + bytes_tail_
                        : bytes_tail_ - bytes_head_;
}

// Called as a write (or write_zeroes) is about to be sent: copies it into the replay set.
// false: no room — the caller keeps it waiting and an internal FLUSH is on its way.
bool NbdClientDevice::reserve_replay(Op& op) noexcept {
  const IoRequest& q = *op.req;
  if (!can_flush_ || op.replay_seq != 0 || op.force_fua) return true;
  if (q.op != IoOp::write && q.op != IoOp::write_zeroes) return true;
  if (q.fua) return true;  // stable when acknowledged (FUA, or emulated by a FLUSH)
  const size_t cap = options_.replay_bytes_max;
  const size_t emax = options_.replay_entries_max;
  if (cap == 0 || emax == 0) return true;  // replay off: a restart marks unflushed data lost
  const uint64_t bytes = q.op == IoOp::write ? q.length_bytes : 0;
  if (bytes > cap / 2) {
    op.force_fua = true;  // too large to copy: made stable before it is acknowledged instead
    if (!can_fua_) op.emulate_fua = true;
    return true;
  }
  if (!replay_entries_) {  // once, at the first write
    replay_entries_.reset(new (std::nothrow) ReplayEntry[emax]);
    replay_bytes_.reset(new (std::nothrow) std::byte[std::max<size_t>(cap, 1)]);
    if (!replay_entries_ || !replay_bytes_) {
      replay_entries_.reset();
      replay_bytes_.reset();
      op.force_fua = true;
      if (!can_fua_) op.emulate_fua = true;
      return true;
    }
  }
  std::optional<size_t> pos;
  if (replay_end_ - replay_first_ < emax) pos = alloc_replay_bytes(bytes);
  if (!pos) {
    if (!op.waited_space) {
      op.waited_space = true;
      ++stats_.replay_waits;
    }
    replay_space_wanted_ = true;
    request_internal_flush();
    return false;
  }
  replay_space_wanted_ = false;
  const uint64_t seq = replay_end_++;
  ReplayEntry& r = replay_entries_[seq % emax];
  r = ReplayEntry{};
  r.offset_bytes = q.offset_bytes;
  r.length_bytes = q.length_bytes;
  r.pos = *pos;
  r.zero = q.op == IoOp::write_zeroes;
  r.may_deallocate = q.may_deallocate;
  if (bytes != 0) std::memcpy(replay_bytes_.get() + *pos, q.data, bytes);
  op.replay_seq = seq;
  if (replay_used_bytes() > cap / 2) request_internal_flush();
  return true;
}

// The request is done: its copy is kept (acknowledged, until a FLUSH covers it) or dropped.
void NbdClientDevice::replay_settle(Op& op, Errc e) noexcept {
  if (op.replay_seq == 0) {
    const IoOp o = op.req->op;
    if (e == Errc::ok && can_flush_ && !op.req->fua && !op.force_fua &&
        (o == IoOp::write || o == IoOp::write_zeroes)) {
      unprotected_ack_ = ++ack_clock_;  // replay off: acknowledged without a copy
    }
    return;
  }
  ReplayEntry& r = replay_entries_[op.replay_seq % options_.replay_entries_max];
  op.replay_seq = 0;
  if (e == Errc::ok) {
    r.state = ReplayEntry::acked;
    r.ack_stamp = ++ack_clock_;
  } else {
    r.state = ReplayEntry::dropped;  // the submitter learns of the failure; nothing to keep
  }
  free_covered();
  if (replay_space_wanted_ || replay_used_bytes() > options_.replay_bytes_max / 2) {
    request_internal_flush();
  }
}

void NbdClientDevice::free_covered() noexcept {
  if (!replay_entries_ || replaying_) return;  // a replay reads the entries' bytes
  const size_t emax = options_.replay_entries_max;
  while (replay_first_ < replay_end_) {
    const ReplayEntry& r = replay_entries_[replay_first_ % emax];
    if (r.state == ReplayEntry::pending) break;
    if (r.state == ReplayEntry::acked && r.ack_stamp > covered_) break;
    ++replay_first_;
    if (replay_first_ == replay_end_) {
      bytes_head_ = bytes_tail_ = 0;
      bytes_wrapped_ = false;
    } else {
      const size_t next = replay_entries_[replay_first_ % emax].pos;
      if (next < bytes_head_) bytes_wrapped_ = false;
      bytes_head_ = next;
    }
  }
}

// One FLUSH of our own to cover acknowledged copies, first in line (the writes waiting for
// space are behind it).
void NbdClientDevice::request_internal_flush() noexcept {
  if (internal_flush_busy_ || !can_flush_ || geometry_changed_ || shut_down_) return;
  if (ack_clock_ <= covered_) return;  // nothing acknowledged since the last FLUSH
  Op* op = take_op();
  if (op == nullptr) return;
  internal_flush_busy_ = true;
  ++stats_.internal_flushes;
  internal_flush_ = IoRequest{};
  internal_flush_.op = IoOp::flush;
  internal_flush_.owner = this;
  internal_flush_.on_complete = &NbdClientDevice::on_internal_flush_done;
  op->req = &internal_flush_;
  ++ops_in_flight_;
  Conn* c = replaying_ || down_ ? nullptr : pick_conn();
  if (c != nullptr) {
    op->conn = c;
    ++c->in_flight;
    push_work(*op);
    return;
  }
  op->next = retry_head_;
  retry_head_ = op;
  if (retry_tail_ == nullptr) retry_tail_ = op;
}

void NbdClientDevice::on_internal_flush_done(IoRequest& req) noexcept {
  auto& d = *static_cast<NbdClientDevice*>(req.owner);
  d.internal_flush_busy_ = false;
  if (d.replay_space_wanted_) d.dispatch_queued();
}

// After a source restart: every acknowledged, unflushed write is re-sent (in submission order;
// overlapping ones never in flight together) before anything else.
void NbdClientDevice::start_replay() noexcept {
  Conn* c = nullptr;
  for (auto& x : conns_) {
    if (x->up()) {
      c = x.get();
      break;
    }
  }
  bool any = false;
  for (uint64_t k = replay_first_; k < replay_end_ && !any; ++k) {
    any = replay_entries_[k % options_.replay_entries_max].state == ReplayEntry::acked;
  }
  if (c == nullptr || !any) {
    replaying_ = false;
    return dispatch_queued();
  }
  replaying_ = true;
  replay_conn_ = c;
  replay_next_ = replay_first_;
  replay_cursor_bytes_ = 0;
  replay_pieces_ = 0;
  replay_err_ = 0;
  replay_batch_n_ = 0;
  continue_replay();
}

void NbdClientDevice::continue_replay() noexcept {
  if (!replaying_) return;
  Conn& c = *replay_conn_;
  const size_t emax = options_.replay_entries_max;
  const nbd_completion_callback done{&NbdClientDevice::on_replay_done, this, nullptr};
  if (replay_pieces_ == 0) replay_batch_n_ = 0;
  while (replay_err_ == 0 && replay_next_ < replay_end_ && replay_pieces_ < 2 * kPiecesMax) {
    const ReplayEntry& r = replay_entries_[replay_next_ % emax];
    if (r.state != ReplayEntry::acked) {
      ++replay_next_;
      continue;
    }
    const uint64_t start = r.offset_bytes, end = r.offset_bytes + r.length_bytes;
    if (replay_cursor_bytes_ == 0) {  // a new entry joins the batch unless it overlaps it
      bool overlaps = replay_batch_n_ == kReplayBatchMax;
      for (size_t i = 0; i < replay_batch_n_ && !overlaps; ++i) {
        overlaps = start < replay_batch_[i].end_bytes && replay_batch_[i].start_bytes < end;
      }
      if (overlaps) break;  // wait for the batch to complete
      replay_batch_[replay_batch_n_++] = Range{start, end};
    }
    const uint64_t pos = start + replay_cursor_bytes_, left = end - pos;
    uint64_t len = 0;
    int64_t cookie = 0;
    ++replay_pieces_;
    if (!r.zero) {
      len = std::min(left, piece_bytes_max_);
      ++stats_.nbd_writes;
      stats_.nbd_write_bytes += len;
      cookie = nbd_aio_pwrite(c.h, replay_bytes_.get() + r.pos + replay_cursor_bytes_, len, pos,
                              done, 0);
    } else if (can_zero_) {
      len = std::min(left, align_down(kRangeCommandMax, geometry_.block_size_bytes));
      ++stats_.nbd_zeroes;
      cookie = nbd_aio_zero(c.h, len, pos, done, r.may_deallocate ? 0 : LIBNBD_CMD_FLAG_NO_HOLE);
    } else {
      len = std::min(left, kZeroWriteMax);
      ++stats_.nbd_writes;
      stats_.nbd_write_bytes += len;
      cookie = nbd_aio_pwrite(c.h, g_zeroes, len, pos, done, 0);
    }
    if (cookie == -1) {
      --replay_pieces_;
      const int err = nbd_get_errno();
      replay_err_ = err != 0 ? err : EIO;
      break;
    }
    ++c.commands_sent;
    replay_cursor_bytes_ += len;
    if (replay_cursor_bytes_ == r.length_bytes) {
      ++replay_next_;
      replay_cursor_bytes_ = 0;
      ++stats_.writes_replayed;
    }
  }
  after_nbd_call(c);  // a lost connection ends this replay (connection_lost restarts it)
  if (!replaying_ || replay_pieces_ > 0) return;
  if (replay_err_ == 0 && replay_next_ < replay_end_) {  // a batch boundary: go on
    replay_wakeup_ = true;
    return run_work();
  }
  replaying_ = false;
  replay_conn_ = nullptr;
  if (replay_err_ != 0) {
    unflushed_lost_ = true;
    std::fprintf(stderr,
                 "ferry: nbd-client %s: replaying acknowledged unflushed writes failed (%s): the "
                 "next FLUSH fails with io_error\n",
                 uri_.c_str(), std::strerror(replay_err_));
  }
  free_covered();
  dispatch_queued();
  run_work();
}

int NbdClientDevice::on_replay_done(void* ctx, int* error) {
  auto& d = *static_cast<NbdClientDevice*>(ctx);
  FERRY_ASSERT(d.replay_pieces_ > 0);
  --d.replay_pieces_;
  if (*error != 0 && d.replay_err_ == 0) d.replay_err_ = *error;
  d.replay_wakeup_ = true;
  return 1;
}

}  // namespace ferry::nbd
