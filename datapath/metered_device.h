// MeteredDevice: counts what passes through a volume's stack at its top (operations, bytes,
// errors, and a latency histogram with fixed buckets) for the management layer to read.
// Lock-free on the hot path: each reactor thread adds to its own cache-line-aligned shard
// (indexed by Reactor::index(), so a stack shared by several reactors does not share lines),
// with relaxed atomics; snapshot() sums the shards from any thread (values may be a few I/Os
// behind, never torn). A request's start time and the submitter's request travel in a small
// per-thread pooled record (no heap allocation per I/O once warm), as DelayDevice does.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string_view>

#include "datapath/block_device.h"

namespace ferry {

// Latency bucket upper bounds in microseconds (Prometheus `le`); the last bucket is +Inf.
inline constexpr std::array<uint64_t, 14> kLatencyBucketsUs = {
    10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 100000, 500000, 2000000};

struct IoMeterSnapshot {
  uint64_t reads = 0, writes = 0, flushes = 0, others = 0, errors = 0;
  uint64_t bytes_read = 0, bytes_written = 0;
  // Reads and writes: cumulative count per bucket of kLatencyBucketsUs, then +Inf (= count).
  std::array<uint64_t, kLatencyBucketsUs.size() + 1> latency_buckets{};
  uint64_t latency_count = 0;
  uint64_t latency_sum_us = 0;
};

class MeteredDevice final : public BlockDevice {
 public:
  static constexpr unsigned kShards = 16;  // reactor index modulo this

  explicit MeteredDevice(BlockDevice& next) noexcept : next_(next) {}
  Geometry geometry() const noexcept override { return next_.geometry(); }
  void submit(IoRequest& req) noexcept override;
  // The stack reads as before in logs: the meter is not a layer anyone configures.
  std::string_view describe() const noexcept override { return next_.describe(); }
  // Any thread.
  IoMeterSnapshot snapshot() const noexcept;

 private:
  struct alignas(64) Shard {
    std::atomic<uint64_t> reads{0}, writes{0}, flushes{0}, others{0}, errors{0};
    std::atomic<uint64_t> bytes_read{0}, bytes_written{0};
    std::atomic<uint64_t> latency_sum_us{0};
    std::array<std::atomic<uint64_t>, kLatencyBucketsUs.size() + 1> buckets{};  // not cumulative
  };
  static void on_inner_complete(IoRequest& inner) noexcept;
  Shard& shard() noexcept;

  BlockDevice& next_;
  std::array<Shard, kShards> shards_{};
};

}  // namespace ferry
