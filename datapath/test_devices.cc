// FaultDevice and DelayDevice implementations (see test_devices.h).
#include "datapath/test_devices.h"

#include <vector>

#include "datapath/reactor.h"

namespace ferry {

FaultDevice::FaultDevice(BlockDevice& next) noexcept
    : next_(next), description_("fault>" + std::string(next.describe())) {}

void FaultDevice::submit(IoRequest& req) noexcept {
  for (FaultRule& r : rules_) {
    if (r.op != req.op || r.remaining == 0) continue;
    const bool overlaps =
        req.op == IoOp::flush ||
        (req.offset_bytes <
             r.offset_bytes + std::min(r.length_bytes, UINT64_MAX - r.offset_bytes) &&
         r.offset_bytes < req.offset_bytes + std::max<uint64_t>(req.length_bytes, 1));
    if (!overlaps) continue;
    if (r.remaining > 0) --r.remaining;
    injected_.fetch_add(1, std::memory_order_relaxed);
    return req.complete(r.error);
  }
  next_.submit(req);
}

namespace {

// Holds a completed request until its timer fires, then hands it back to the submitter.
struct DelayedCompletion {
  Timer timer;
  IoRequest* outer = nullptr;
  IoRequest inner;
  uint64_t delay_ns = 0;
};

// Per-thread free list (freed at thread exit).
struct FreeDelays {
  std::vector<DelayedCompletion*> list;
  ~FreeDelays() {
    for (DelayedCompletion* d : list) delete d;
  }
  bool empty() const noexcept { return list.empty(); }
  DelayedCompletion* back() const noexcept { return list.back(); }
  void pop_back() noexcept { list.pop_back(); }
  void push_back(DelayedCompletion* d) noexcept { list.push_back(d); }
};
thread_local FreeDelays t_free_delays;

void delayed_fire(void* ctx) noexcept {
  auto* d = static_cast<DelayedCompletion*>(ctx);
  IoRequest* outer = d->outer;
  outer->status_length_bytes = d->inner.status_length_bytes;
  outer->status_flags = d->inner.status_flags;
  outer->lent = d->inner.lent;  // may_lend was copied down with the request
  const Errc e = d->inner.result;
  t_free_delays.push_back(d);
  outer->complete(e);
}

}  // namespace

DelayDevice::DelayDevice(BlockDevice& next, uint64_t delay_us) noexcept
    : next_(next),
      delay_us_(delay_us),
      description_("delay(" + std::to_string(delay_us) + "us)>" + std::string(next.describe())) {}

void DelayDevice::submit(IoRequest& req) noexcept {
  Reactor* r = Reactor::current();
  if (r == nullptr || delay_us_ == 0) return next_.submit(req);
  DelayedCompletion* d;
  if (t_free_delays.empty()) {
    d = new (std::nothrow) DelayedCompletion();
    if (d == nullptr) return req.complete(Errc::no_memory);
  } else {
    d = t_free_delays.back();
    t_free_delays.pop_back();
  }
  d->outer = &req;
  d->inner = req;
  d->inner.owner = d;
  d->delay_ns = delay_us_ * 1000;
  d->inner.on_complete = [](IoRequest& inner) noexcept {
    auto* dc = static_cast<DelayedCompletion*>(inner.owner);
    Reactor::current()->arm(dc->timer, dc->delay_ns, delayed_fire, dc);
  };
  next_.submit(d->inner);
}

}  // namespace ferry
