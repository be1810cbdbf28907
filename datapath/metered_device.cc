// MeteredDevice implementation (see metered_device.h).
#include "datapath/metered_device.h"

#include <algorithm>
#include <new>
#include <vector>

#include "datapath/reactor.h"

namespace ferry {

namespace {

// One timed request in flight: the copy sent down, the submitter's request, when it started.
struct InFlight {
  IoRequest inner;
  IoRequest* outer = nullptr;
  MeteredDevice* device = nullptr;
  uint64_t start_ns = 0;
};

// Per-thread free list of in-flight records (freed at thread exit).
struct FreeRecords {
  std::vector<InFlight*> list;
  ~FreeRecords() {
    for (InFlight* f : list) delete f;
  }
};
thread_local FreeRecords t_free;

}  // namespace

MeteredDevice::Shard& MeteredDevice::shard() noexcept {
  const Reactor* r = Reactor::current();
  return shards_[r != nullptr ? r->index() % kShards : 0];
}

void MeteredDevice::submit(IoRequest& req) noexcept {
  Shard& s = shard();
  switch (req.op) {
    case IoOp::read:
      s.reads.fetch_add(1, std::memory_order_relaxed);
      break;
    case IoOp::write:
      s.writes.fetch_add(1, std::memory_order_relaxed);
      break;
    case IoOp::flush:
      s.flushes.fetch_add(1, std::memory_order_relaxed);
      break;
    default:
      s.others.fetch_add(1, std::memory_order_relaxed);
      break;
  }
  if (req.op != IoOp::read && req.op != IoOp::write)
    return next_.submit(req);  // counted, not timed
  InFlight* f;
  if (t_free.list.empty()) {
    f = new (std::nothrow) InFlight();
    if (f == nullptr) return next_.submit(req);  // untimed rather than failed
  } else {
    f = t_free.list.back();
    t_free.list.pop_back();
  }
  f->outer = &req;
  f->inner = req;
  f->inner.owner = f;
  f->inner.on_complete = on_inner_complete;
  f->device = this;
  f->start_ns = Reactor::now_ns_fresh();
  next_.submit(f->inner);
}

void MeteredDevice::on_inner_complete(IoRequest& inner) noexcept {
  auto* f = static_cast<InFlight*>(inner.owner);
  IoRequest* outer = f->outer;
  Shard& s = f->device->shard();
  const uint64_t now = Reactor::now_ns_fresh();
  const uint64_t us = now > f->start_ns ? (now - f->start_ns) / 1000 : 0;
  const auto bucket =
      size_t(std::lower_bound(kLatencyBucketsUs.begin(), kLatencyBucketsUs.end(), us) -
             kLatencyBucketsUs.begin());
  s.buckets[bucket].fetch_add(1, std::memory_order_relaxed);
  s.latency_sum_us.fetch_add(us, std::memory_order_relaxed);
  if (inner.result == Errc::ok) {
    (inner.op == IoOp::read ? s.bytes_read : s.bytes_written)
        .fetch_add(inner.length_bytes, std::memory_order_relaxed);
  } else {
    s.errors.fetch_add(1, std::memory_order_relaxed);
  }
  outer->status_length_bytes = inner.status_length_bytes;
  outer->status_flags = inner.status_flags;
  outer->lent = inner.lent;
  const Errc e = inner.result;
  t_free.list.push_back(f);
  outer->complete(e);
}

IoMeterSnapshot MeteredDevice::snapshot() const noexcept {
  IoMeterSnapshot out;
  for (const Shard& s : shards_) {
    out.reads += s.reads.load(std::memory_order_relaxed);
    out.writes += s.writes.load(std::memory_order_relaxed);
    out.flushes += s.flushes.load(std::memory_order_relaxed);
    out.others += s.others.load(std::memory_order_relaxed);
    out.errors += s.errors.load(std::memory_order_relaxed);
    out.bytes_read += s.bytes_read.load(std::memory_order_relaxed);
    out.bytes_written += s.bytes_written.load(std::memory_order_relaxed);
    out.latency_sum_us += s.latency_sum_us.load(std::memory_order_relaxed);
    for (size_t i = 0; i < s.buckets.size(); ++i)
      out.latency_buckets[i] += s.buckets[i].load(std::memory_order_relaxed);
  }
  for (size_t i = 1; i < out.latency_buckets.size(); ++i)
    out.latency_buckets[i] += out.latency_buckets[i - 1];
  out.latency_count = out.latency_buckets.back();
  return out;
}

}  // namespace ferry
