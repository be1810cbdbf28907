// Test devices stacked over a `next` BlockDevice: FaultDevice injects errors by rule,
// DelayDevice delays completions using the calling thread's reactor timers (or completes
// immediately when no reactor runs on the thread). Not for production stacks.
// Thread safety: rules are set before I/O starts; counters are atomics.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "datapath/block_device.h"

namespace ferry {

struct FaultRule {
  IoOp op = IoOp::read;
  uint64_t offset_bytes = 0;  // range the rule covers
  uint64_t length_bytes = UINT64_MAX;
  Errc error = Errc::io_error;
  int64_t remaining = -1;  // how many times to fire; -1 = forever
};

class FaultDevice final : public BlockDevice {
 public:
  explicit FaultDevice(BlockDevice& next) noexcept;
  void add_rule(const FaultRule& rule) { rules_.push_back(rule); }
  Geometry geometry() const noexcept override { return next_.geometry(); }
  void submit(IoRequest& req) noexcept override;
  std::string_view describe() const noexcept override { return description_; }
  uint64_t injected_count() const noexcept { return injected_.load(); }

 private:
  BlockDevice& next_;
  std::vector<FaultRule> rules_;
  std::atomic<uint64_t> injected_{0};
  std::string description_;
};

class DelayDevice final : public BlockDevice {
 public:
  DelayDevice(BlockDevice& next, uint64_t delay_us) noexcept;
  Geometry geometry() const noexcept override { return next_.geometry(); }
  void submit(IoRequest& req) noexcept override;
  std::string_view describe() const noexcept override { return description_; }

 private:
  BlockDevice& next_;
  uint64_t delay_us_;
  std::string description_;
};

}  // namespace ferry
