// Reactor implementation: io_uring loop, userspace timer heap, deferred and posted functions.
// Runs on the thread that called run(); only stop() and post() may be called from elsewhere.
#include "datapath/reactor.h"

#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

namespace ferry {

namespace {
thread_local Reactor* t_current = nullptr;
}

Timer::~Timer() { FERRY_ASSERT(!armed()); }

Reactor::Reactor(unsigned index, uint64_t pool_bytes_max) noexcept
    : index_(index), pool_(pool_bytes_max) {}

Reactor::~Reactor() {
  if (ring_ready_) io_uring_queue_exit(&ring_);
  if (event_fd_ >= 0) ::close(event_fd_);
}

uint64_t Reactor::now_ns_fresh() noexcept {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

Result<void> Reactor::init(unsigned sq_entries) noexcept {
  io_uring_params p;
  std::memset(&p, 0, sizeof p);
  // TASKRUN_FLAG: the kernel flags pending completion work in the SQ ring, so a spin can see
  // it without a syscall.
  p.flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER |
            IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
  p.flags |= IORING_SETUP_CQSIZE;
  p.cq_entries = sq_entries * 8;
  int rc = io_uring_queue_init_params(sq_entries, &ring_, &p);
  if (rc < 0) {
    // Older kernels: retry without the optional flags.
    std::memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_CQSIZE;
    p.cq_entries = sq_entries * 8;
    rc = io_uring_queue_init_params(sq_entries, &ring_, &p);
  }
  if (rc < 0) {
    std::fprintf(stderr, "ferry: io_uring_queue_init: %s\n", std::strerror(-rc));
    return Errc::io_error;
  }
  ring_ready_ = true;
  event_fd_ = eventfd(0, EFD_CLOEXEC);
  if (event_fd_ < 0) return Errc::io_error;
  event_op_.set(
      [](void* ctx, int32_t, uint32_t) noexcept {
        auto* self = static_cast<Reactor*>(ctx);
        self->event_armed_ = false;
        self->arm_eventfd_read();
      },
      this);
  now_ns_ = now_ns_fresh();
  return {};
}

Reactor* Reactor::current() noexcept { return t_current; }

io_uring_sqe* Reactor::get_sqe() noexcept {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    ++stats_.sq_full_flushes;
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

void Reactor::arm_eventfd_read() noexcept {
  if (event_armed_) return;  // one read in flight at a time (run() may be re-entered)
  event_armed_ = true;
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_read(sqe, event_fd_, &event_value_, sizeof event_value_, 0);
  prepare(sqe, &event_op_);
}

void Reactor::stop() noexcept {
  stop_.store(true, std::memory_order_release);
  uint64_t one = 1;
  if (event_fd_ >= 0) (void)!::write(event_fd_, &one, sizeof one);
}

void Reactor::post(std::function<void()> fn) noexcept {
  {
    std::lock_guard<std::mutex> lock(posted_mutex_);
    posted_.push_back(std::move(fn));
  }
  uint64_t one = 1;
  (void)!::write(event_fd_, &one, sizeof one);
}

void Reactor::defer(std::function<void()> fn) noexcept { deferred_.push_back(std::move(fn)); }

void Reactor::drain_posted() noexcept {
  {
    std::lock_guard<std::mutex> lock(posted_mutex_);
    if (posted_.empty()) return;
    posted_running_.swap(posted_);
  }
  for (auto& fn : posted_running_) fn();
  posted_running_.clear();
}

void Reactor::run_deferred() noexcept {
  while (!deferred_.empty()) {
    deferred_running_.swap(deferred_);
    for (auto& fn : deferred_running_) fn();
    deferred_running_.clear();
  }
}

// ---- timers: binary min-heap of Timer* on deadline_ns_ ----

void Reactor::heap_up(int i) noexcept {
  while (i > 0) {
    int parent = (i - 1) / 2;
    if (timers_[size_t(parent)]->deadline_ns_ <= timers_[size_t(i)]->deadline_ns_) break;
    std::swap(timers_[size_t(parent)], timers_[size_t(i)]);
    timers_[size_t(parent)]->heap_index_ = parent;
    timers_[size_t(i)]->heap_index_ = i;
    i = parent;
  }
}

void Reactor::heap_down(int i) noexcept {
  const int n = int(timers_.size());
  for (;;) {
    int l = 2 * i + 1, r = l + 1, m = i;
    if (l < n && timers_[size_t(l)]->deadline_ns_ < timers_[size_t(m)]->deadline_ns_) m = l;
    if (r < n && timers_[size_t(r)]->deadline_ns_ < timers_[size_t(m)]->deadline_ns_) m = r;
    if (m == i) return;
    std::swap(timers_[size_t(m)], timers_[size_t(i)]);
    timers_[size_t(m)]->heap_index_ = m;
    timers_[size_t(i)]->heap_index_ = i;
    i = m;
  }
}

void Reactor::heap_remove(int i) noexcept {
  Timer* t = timers_[size_t(i)];
  Timer* last = timers_.back();
  timers_.pop_back();
  t->heap_index_ = -1;
  if (last != t) {
    timers_[size_t(i)] = last;
    last->heap_index_ = i;
    heap_up(i);
    heap_down(last->heap_index_);
  }
}

void Reactor::arm(Timer& t, uint64_t delay_ns, Timer::Fn fn, void* context) noexcept {
  if (t.armed()) cancel(t);
  t.deadline_ns_ = now_ns_fresh() + delay_ns;
  t.fn_ = fn;
  t.context_ = context;
  t.reactor_ = this;
  timers_.push_back(&t);
  t.heap_index_ = int(timers_.size()) - 1;
  heap_up(t.heap_index_);
}

void Reactor::cancel(Timer& t) noexcept {
  if (!t.armed()) return;
  FERRY_ASSERT(t.reactor_ == this);
  heap_remove(t.heap_index_);
}

void Reactor::fire_timers() noexcept {
  while (!timers_.empty() && timers_.front()->deadline_ns_ <= now_ns_) {
    Timer* t = timers_.front();
    heap_remove(0);
    t->fn_(t->context_);
  }
}

// Busy-polls for a completion until deadline_ns (or spin_ns_max_). A sleeping reactor costs its
// peers a wake-up on every message (an IPI; a vCPU exit on a VM) and adds the wake-up latency to
// every reply; spinning through the short gaps of a busy connection avoids both. True if a
// completion is ready. Submits pending SQEs first.
bool Reactor::spin_for_completions(uint64_t deadline_ns) noexcept {
  io_uring_submit(&ring_);
  const uint64_t end = std::min(now_ns_fresh() + spin_ns_max_, deadline_ns);
  ++stats_.spins;
  for (unsigned i = 1;; ++i) {
    if (io_uring_cq_ready(&ring_) > 0) break;
    if (IO_URING_READ_ONCE(*ring_.sq.kflags) & IORING_SQ_TASKRUN)
      io_uring_get_events(&ring_);  // DEFER_TASKRUN: completions are posted when we ask
    if ((i & 31) == 0 && (now_ns_fresh() >= end || stop_.load(std::memory_order_relaxed)))
      return false;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }
  ++stats_.spin_hits;
  return true;
}

void Reactor::run() noexcept {
  t_current = this;
  arm_eventfd_read();
  io_uring_cqe* cqes[256];
  while (!stop_.load(std::memory_order_acquire)) {
    run_deferred();
    drain_posted();
    run_deferred();
    now_ns_ = now_ns_fresh();
    fire_timers();
    run_deferred();
    if (stop_.load(std::memory_order_acquire)) break;

    // Spin instead of sleeping only while completions have been coming within the budget; a
    // fruitless spin skips the next 1, 2, 4, ... (≤ 64) chances, so a reactor that shares its
    // CPU with its peer (which cannot run while we spin) soon stops trying.
    const uint64_t idle_start = now_ns_;
    const uint64_t deadline = timers_.empty() ? UINT64_MAX : timers_.front()->deadline_ns_;
    bool ready = false;
    if (spin_ns_max_ > 0 && idle_ns_last_ < spin_ns_max_) {
      if (spin_skip_ > 0) {
        --spin_skip_;
      } else {
        ready = spin_for_completions(deadline);
        if (ready) {
          spin_backoff_ = 0;
        } else {
          spin_backoff_ = std::min<uint32_t>(spin_backoff_ == 0 ? 1 : spin_backoff_ * 2, 64);
          spin_skip_ = spin_backoff_;
        }
      }
    }
    if (!ready) {
      __kernel_timespec ts{};
      __kernel_timespec* tsp = nullptr;
      if (deadline != UINT64_MAX) {
        const uint64_t now = now_ns_fresh();
        const uint64_t wait = deadline > now ? deadline - now : 0;
        ts.tv_sec = int64_t(wait / 1000000000ull);
        ts.tv_nsec = int64_t(wait % 1000000000ull);
        tsp = &ts;
      }
      io_uring_cqe* first = nullptr;
      ++stats_.submits;
      int rc = io_uring_submit_and_wait_timeout(&ring_, &first, 1, tsp, nullptr);
      if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN) {
        std::fprintf(stderr, "ferry: io_uring wait failed: %s\n", std::strerror(-rc));
      }
    }
    ++stats_.loops;
    now_ns_ = now_ns_fresh();
    idle_ns_last_ = now_ns_ - idle_start;
    for (;;) {
      unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, 256);
      if (n == 0) break;
      for (unsigned i = 0; i < n; ++i) {
        auto* op = static_cast<Operation*>(io_uring_cqe_get_data(cqes[i]));
        int32_t res = cqes[i]->res;
        uint32_t flags = cqes[i]->flags;
        io_uring_cqe_seen(&ring_, cqes[i]);
        if (op != nullptr) op->on_cqe(res, flags);
      }
      stats_.cqes += n;
      run_deferred();
    }
  }
  run_deferred();
  drain_posted();
  stop_.store(false, std::memory_order_release);  // run() may be called again (tests, fuzzers)
  t_current = nullptr;
}

}  // namespace ferry
