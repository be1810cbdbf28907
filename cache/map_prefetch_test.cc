// MapPrefetch: asks the stack below for its access map at start, replays it in order as
// prefetch reads (bounded in flight, up to bytes_max), passes demand I/O through, and does
// nothing when the stack below has no map. Single-threaded: the fake device completes inline.
#include "cache/map_prefetch.h"

#include <gtest/gtest.h>

#include <vector>

#include "datapath/ram_device.h"

namespace ferry::cache {
namespace {

class MapDevice final : public BlockDevice {
 public:
  MapDevice(BlockDevice& next, std::vector<uint64_t> map) : next_(next), map_(std::move(map)) {}
  Geometry geometry() const noexcept override { return next_.geometry(); }
  void submit(IoRequest& r) noexcept override {
    if (r.op == IoOp::access_map) {
      if (!has_map) return r.complete(Errc::unsupported);
      size_t n = std::min<size_t>(map_.size(), r.length_bytes / 8);
      auto* p = reinterpret_cast<uint8_t*>(r.data);
      for (size_t i = 0; i < n; ++i)
        for (int b = 0; b < 8; ++b) p[i * 8 + size_t(b)] = uint8_t(map_[i] >> (56 - 8 * b));
      r.status_length_bytes = n * 8;
      return r.complete(Errc::ok);
    }
    if (r.op == IoOp::read && r.priority == IoPriority::prefetch)
      prefetched.push_back(r.offset_bytes);
    next_.submit(r);
  }
  std::string_view describe() const noexcept override { return "map"; }
  bool has_map = true;
  std::vector<uint64_t> prefetched;

 private:
  BlockDevice& next_;
  std::vector<uint64_t> map_;
};

TEST(MapPrefetch, ReplaysTheAccessMapInOrderUpToItsBudget) {
  auto disk = std::move(RamDevice::create(16u << 20, 512).value());
  MapDevice below(*disk,
                  {5u << 20, 0, 1u << 20, 64u << 20 /* beyond the end: skipped */, 2u << 20});
  MapPrefetchOptions o;
  o.bytes_max = 3 * 65536;
  auto m = std::move(MapPrefetch::create(below, "vol", o).value());
  m->start();
  EXPECT_EQ(below.prefetched, (std::vector<uint64_t>{5u << 20, 0, 1u << 20}));
  EXPECT_EQ(m->counters().entries, 5u);
  EXPECT_EQ(m->counters().reads, 3u);
  EXPECT_TRUE(m->counters().done);
}

TEST(MapPrefetch, NoMapBelowMeansNoPrefetch) {
  auto disk = std::move(RamDevice::create(16u << 20, 512).value());
  MapDevice below(*disk, {});
  below.has_map = false;
  auto m = std::move(MapPrefetch::create(below, "vol", {}).value());
  m->start();
  EXPECT_TRUE(below.prefetched.empty());
  EXPECT_TRUE(m->counters().map_unsupported);
  EXPECT_TRUE(m->counters().done);
}

}  // namespace
}  // namespace ferry::cache
