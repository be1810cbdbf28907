// BackgroundStream: full-disk streaming (migration) as a layer: once started it reads the whole
// volume front to back through `next` at IoPriority::background — the cache tiers below keep the
// bytes, the WAN link sends these reads after every demand read, write-back and prefetch — under
// an optional bandwidth cap, and reports progress (bytes, percent, rate, ETA). Every other
// request passes through unchanged. Replaces the WAN client's own streamer: streaming is cache
// logic, and now it fills whatever tiers sit below it.
//
// Bounded: `outstanding` reads of `request_bytes` in flight into buffers allocated at create().
// Threading: one reactor thread (start() and every completion on it); the pacing timer is that
// reactor's. Progress lines go to stderr at every 10 % and at the end (never per request).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "datapath/block_device.h"
#include "datapath/reactor.h"

namespace ferry::cache {

struct BackgroundStreamOptions {
  uint32_t request_bytes = 1u << 20;  // one background read
  uint32_t outstanding = 2;           // background reads in flight
  uint64_t rate_bytes_per_s = 0;      // cap (0: none; demand traffic is never held by it)
};

struct StreamProgress {
  uint64_t size_bytes = 0;
  uint64_t done_bytes = 0;  // read (completed) so far
  uint64_t errors = 0;      // reads that failed (their range is skipped, counted)
  double elapsed_s = 0;
  double rate_bytes_per_s = 0;
  double eta_s = -1;  // -1: unknown (not started / no rate yet)
  bool started = false, finished = false;
  double percent() const noexcept {
    return size_bytes ? 100.0 * double(done_bytes) / double(size_bytes) : 100.0;
  }
};

class BackgroundStream final : public BlockDevice {
 public:
  static Result<std::unique_ptr<BackgroundStream>> create(
      BlockDevice& next, std::string name, const BackgroundStreamOptions& o) noexcept;
  ~BackgroundStream() override;

  Geometry geometry() const noexcept override { return next_.geometry(); }
  void submit(IoRequest& req) noexcept override { next_.submit(req); }
  std::string_view describe() const noexcept override { return description_; }

  // On the reactor thread: begin streaming (once). stop() ends it after the reads in flight.
  void start(Reactor& reactor) noexcept;
  void stop() noexcept;
  StreamProgress progress() const noexcept;

 private:
  struct Op {
    IoRequest io;
    BackgroundStream* owner = nullptr;
    std::byte* buf = nullptr;
  };
  BackgroundStream(BlockDevice& next, const BackgroundStreamOptions& o) noexcept;
  void pump() noexcept;
  static void on_read(IoRequest& io) noexcept;
  static void on_pace(void* ctx) noexcept;
  void report(bool final) noexcept;

  BlockDevice& next_;
  BackgroundStreamOptions opt_;
  std::string name_, description_;
  Reactor* reactor_ = nullptr;
  std::unique_ptr<std::byte[]> mem_;
  std::vector<Op> ops_;
  std::vector<Op*> free_ops_;
  uint64_t next_offset_ = 0;
  uint64_t done_bytes_ = 0;
  uint64_t errors_ = 0;
  uint64_t started_ns_ = 0, finished_ns_ = 0;
  double tokens_ = 0;
  uint64_t tokens_ns_ = 0;
  int reported_decile_ = 0;
  bool started_ = false, stopping_ = false, finished_ = false;
  Timer pace_timer_;
};

}  // namespace ferry::cache
