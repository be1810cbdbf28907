// Micro-benchmark: what the per-volume meter (MeteredDevice, on top of every composed volume)
// adds to one 4 KiB read of a RAM device, which completes inside submit (the cheapest device, so
// the meter's share is the largest it can be): two clock reads, a pooled in-flight record, a
// handful of relaxed atomic adds on this thread's shard. Results: perf/README.md.
#include <benchmark/benchmark.h>

#include <vector>

#include "datapath/metered_device.h"
#include "datapath/ram_device.h"

namespace ferry {
namespace {

void read_loop(benchmark::State& state, BlockDevice& dev) {
  std::vector<std::byte> buf(4096);
  IoRequest req;
  uint64_t offset = 0;
  const uint64_t size = dev.geometry().size_bytes();
  for (auto _ : state) {
    req = IoRequest{};
    req.op = IoOp::read;
    req.offset_bytes = offset;
    req.length_bytes = 4096;
    req.data = buf.data();
    req.on_complete = [](IoRequest&) noexcept {};
    dev.submit(req);
    benchmark::DoNotOptimize(req.result);
    offset = (offset + 4096) % size;
  }
}

void BM_RamRead4k(benchmark::State& state) {
  auto ram = RamDevice::create(64 << 20, 512);
  read_loop(state, *ram.value());
}
BENCHMARK(BM_RamRead4k);

void BM_MeteredRamRead4k(benchmark::State& state) {
  auto ram = RamDevice::create(64 << 20, 512);
  MeteredDevice meter(*ram.value());
  read_loop(state, meter);
}
BENCHMARK(BM_MeteredRamRead4k);

}  // namespace
}  // namespace ferry
