// BackgroundStream (see background_stream.h). Runs on its volume's one reactor thread.
#include "cache/background_stream.h"

#include <algorithm>
#include <cstdio>
#include <new>

#include "datapath/assert.h"

namespace ferry::cache {

Result<std::unique_ptr<BackgroundStream>> BackgroundStream::create(
    BlockDevice& next, std::string name, const BackgroundStreamOptions& o) noexcept {
  const Geometry g = next.geometry();
  if (o.request_bytes == 0 || o.request_bytes % g.block_size_bytes != 0 || o.outstanding == 0)
    return Errc::invalid_argument;
  std::unique_ptr<BackgroundStream> s(new (std::nothrow) BackgroundStream(next, o));
  if (!s) return Errc::no_memory;
  s->name_ = std::move(name);
  s->mem_.reset(new (std::nothrow) std::byte[size_t(o.outstanding) * o.request_bytes]);
  if (!s->mem_) return Errc::no_memory;
  s->ops_.resize(o.outstanding);
  for (uint32_t i = 0; i < o.outstanding; ++i) {
    Op& op = s->ops_[i];
    op.owner = s.get();
    op.buf = s->mem_.get() + size_t(i) * o.request_bytes;
    op.io.owner = &op;
    op.io.on_complete = &BackgroundStream::on_read;
    s->free_ops_.push_back(&op);
  }
  // Appends, not one `a + b + c` expression: g++ 12 -O3 warns -Wrestrict on that (false positive).
  s->description_ = "stream";
  if (o.rate_bytes_per_s != 0) {
    s->description_ += ':';
    s->description_ += std::to_string(o.rate_bytes_per_s * 8 / 1000000);
    s->description_ += "Mbit";
  }
  s->description_ += '>';
  s->description_ += next.describe();
  return s;
}

BackgroundStream::BackgroundStream(BlockDevice& next, const BackgroundStreamOptions& o) noexcept
    : next_(next), opt_(o) {}

BackgroundStream::~BackgroundStream() {
  if (reactor_ != nullptr) reactor_->cancel(pace_timer_);
}

void BackgroundStream::start(Reactor& reactor) noexcept {
  if (started_) return;
  started_ = true;
  reactor_ = &reactor;
  started_ns_ = tokens_ns_ = reactor.now_ns_fresh();
  std::fprintf(stderr, "ferry: stream %s: streaming %llu bytes in the background%s\n",
               name_.c_str(), static_cast<unsigned long long>(next_.geometry().size_bytes()),
               opt_.rate_bytes_per_s ? " under a rate cap" : "");
  pump();
}

void BackgroundStream::stop() noexcept {
  stopping_ = true;
  if (reactor_ != nullptr) reactor_->cancel(pace_timer_);
}

void BackgroundStream::pump() noexcept {
  const uint64_t size = next_.geometry().size_bytes();
  while (!stopping_ && next_offset_ < size && !free_ops_.empty()) {
    const uint32_t len = uint32_t(std::min<uint64_t>(opt_.request_bytes, size - next_offset_));
    if (opt_.rate_bytes_per_s != 0) {  // token bucket, at most one request's worth of burst
      const uint64_t now = reactor_->now_ns_fresh();
      tokens_ =
          std::min<double>(double(opt_.request_bytes), tokens_ + double(now - tokens_ns_) * 1e-9 *
                                                                     double(opt_.rate_bytes_per_s));
      tokens_ns_ = now;
      if (tokens_ < double(len)) {
        if (!pace_timer_.armed()) {
          const double wait_s = (double(len) - tokens_) / double(opt_.rate_bytes_per_s);
          reactor_->arm(pace_timer_, uint64_t(wait_s * 1e9) + 1, &BackgroundStream::on_pace, this);
        }
        return;
      }
      tokens_ -= double(len);
    }
    Op* op = free_ops_.back();
    free_ops_.pop_back();
    op->io.op = IoOp::read;
    op->io.priority = IoPriority::background;
    op->io.offset_bytes = next_offset_;
    op->io.length_bytes = len;
    op->io.data = op->buf;
    op->io.may_lend = false;
    op->io.lent = nullptr;
    next_offset_ += len;
    next_.submit(op->io);
  }
  if (free_ops_.size() == ops_.size() && (next_offset_ >= size || stopping_) && !finished_) {
    finished_ = true;
    finished_ns_ = reactor_->now_ns_fresh();
    report(true);
  }
}

void BackgroundStream::on_pace(void* ctx) noexcept { static_cast<BackgroundStream*>(ctx)->pump(); }

void BackgroundStream::on_read(IoRequest& io) noexcept {
  auto* op = static_cast<Op*>(io.owner);
  BackgroundStream& s = *op->owner;
  if (io.result == Errc::ok)
    s.done_bytes_ += io.length_bytes;
  else
    ++s.errors_;  // a failed range is skipped: demand reads fetch it when needed
  s.free_ops_.push_back(op);
  s.report(false);
  s.pump();
}

StreamProgress BackgroundStream::progress() const noexcept {
  StreamProgress p;
  p.size_bytes = next_.geometry().size_bytes();
  p.done_bytes = done_bytes_;
  p.errors = errors_;
  p.started = started_;
  p.finished = finished_;
  if (!started_) return p;
  const uint64_t end = finished_ ? finished_ns_ : Reactor::now_ns_fresh();
  p.elapsed_s = double(end - started_ns_) / 1e9;
  if (p.elapsed_s > 0) p.rate_bytes_per_s = double(done_bytes_) / p.elapsed_s;
  if (finished_)
    p.eta_s = 0;
  else if (p.rate_bytes_per_s > 0)
    p.eta_s = double(p.size_bytes - std::min(p.size_bytes, done_bytes_)) / p.rate_bytes_per_s;
  return p;
}

void BackgroundStream::report(bool final) noexcept {
  const StreamProgress p = progress();
  const int decile = int(p.percent() / 10);
  if (!final && decile <= reported_decile_) return;
  reported_decile_ = decile;
  if (final)
    std::fprintf(
        stderr,
        "ferry: stream %s: %s: %llu of %llu bytes in %.1f s (%.1f MB/s), %llu failed reads\n",
        name_.c_str(), stopping_ && next_offset_ < p.size_bytes ? "stopped" : "done",
        static_cast<unsigned long long>(p.done_bytes),
        static_cast<unsigned long long>(p.size_bytes), p.elapsed_s, p.rate_bytes_per_s / 1e6,
        static_cast<unsigned long long>(p.errors));
  else
    std::fprintf(stderr, "ferry: stream %s: %.0f %% (%llu of %llu bytes), %.1f MB/s, ETA %.0f s\n",
                 name_.c_str(), p.percent(), static_cast<unsigned long long>(p.done_bytes),
                 static_cast<unsigned long long>(p.size_bytes), p.rate_bytes_per_s / 1e6, p.eta_s);
}

}  // namespace ferry::cache
