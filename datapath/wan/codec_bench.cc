// WAN payload codec on real disk-image data: compression ratio, compress and decompress MB/s
// of lz4, lz4hc, zstd and ISA-L igzip at several levels, one core (the benchmark thread), plus
// the per-chunk fixed costs (zero detection, SHA-256, CRC32C). Answers "which algorithm and
// level does the link use" (datapath/wan/DESIGN.md, "Compression: measured and chosen").
//
// Data: ext4 images built with mke2fs -d from directories of this machine, read in 64 KiB
// chunks, all-zero chunks counted (zero_pct: they travel as ZERO frames) and left out; up to
// FERRY_WAN_BENCH_SAMPLE_MIB (default 64) of the non-zero chunks, sampled evenly over the image,
// are what every algorithm compresses:
//   doc  /usr/share/doc in a 256 MiB image (text, HTML, many already gzipped changelogs)
//   lib  /usr/lib/x86_64-linux-gnu in a 1600 MiB image (ELF shared libraries, mostly)
// FERRY_WAN_BENCH_IMAGE=/path/raw.img adds a set "img" from an existing raw image (e.g. a VM
// disk from `qemu-img convert -O raw`). Images go to a mkdtemp dir under $TMPDIR and are
// deleted once read. Counters: ratio = non-zero bytes / wire payload bytes, with chunks that do
// not save the 6.25 % margin sent raw (what the link would send); comp_MBps / decomp_MBps =
// uncompressed MB per CPU second (decode of raw chunks is a copy); compressed_pct = chunks
// that went compressed. Single-threaded; the data sets are built once and kept for the process.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "datapath/wan/codec.h"
#include "datapath/wan/frame.h"

namespace ferry::wan {
namespace {

constexpr size_t kChunk = 64 * 1024;

struct DataSet {
  std::string error;          // non-empty: could not be built
  std::vector<uint8_t> data;  // sampled non-zero chunks, back to back
  size_t chunks = 0;
  uint64_t image_chunks = 0;
  uint64_t zero_chunks = 0;
};

size_t sample_bytes_max() {
  const char* e = std::getenv("FERRY_WAN_BENCH_SAMPLE_MIB");
  const long mib = e ? std::atol(e) : 64;
  return size_t(mib > 0 ? mib : 64) << 20;
}

// Reads `path` in 64 KiB chunks: zero chunks counted, non-zero ones sampled evenly.
void load_image(const std::string& path, DataSet& s) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  struct stat st {};
  if (fd < 0 || ::fstat(fd, &st) != 0) {
    s.error = "cannot open " + path;
    if (fd >= 0) ::close(fd);
    return;
  }
  const size_t want = sample_bytes_max() / kChunk;
  const uint64_t allocated_chunks = uint64_t(st.st_blocks) * 512 / kChunk + 1;
  const uint64_t stride = allocated_chunks > want ? (allocated_chunks + want - 1) / want : 1;
  std::vector<uint8_t> buf(kChunk);
  uint64_t nonzero = 0;
  s.data.reserve(want * kChunk);
  while (true) {
    size_t got = 0;
    while (got < kChunk) {
      const ssize_t n = ::read(fd, buf.data() + got, kChunk - got);
      if (n <= 0) break;
      got += size_t(n);
    }
    if (got == 0) break;
    std::memset(buf.data() + got, 0, kChunk - got);
    ++s.image_chunks;
    if (is_zero(buf)) {
      ++s.zero_chunks;
    } else if (nonzero++ % stride == 0 && s.chunks < want) {
      s.data.insert(s.data.end(), buf.begin(), buf.end());
      ++s.chunks;
    }
    if (got < kChunk) break;
  }
  ::close(fd);
  if (s.chunks == 0) s.error = "no non-zero data in " + path;
}

DataSet build_ext4(const char* src_dir, const char* size) {
  DataSet s;
  const char* tmp = std::getenv("TMPDIR");
  std::string dir = std::string(tmp && *tmp ? tmp : "/tmp") + "/ferry-wan-bench-XXXXXX";
  if (!::mkdtemp(dir.data())) {
    s.error = "mkdtemp failed";
    return s;
  }
  const std::string img = dir + "/disk.img";
  const std::string cmd = std::string("mke2fs -q -t ext4 -d '") + src_dir + "' -F '" + img + "' " +
                          size + " >/dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) {
    s.error = std::string("mke2fs -d ") + src_dir + " failed (e2fsprogs installed?)";
  } else {
    load_image(img, s);
  }
  ::unlink(img.c_str());
  ::rmdir(dir.c_str());
  return s;
}

const DataSet& data_set(const std::string& name) {
  static std::map<std::string, DataSet> sets;
  auto it = sets.find(name);
  if (it != sets.end()) return it->second;
  DataSet s;
  if (name == "doc") {
    s = build_ext4("/usr/share/doc", "256M");
  } else if (name == "lib") {
    s = build_ext4("/usr/lib/x86_64-linux-gnu", "1600M");
  } else if (name == "img") {
    const char* p = std::getenv("FERRY_WAN_BENCH_IMAGE");
    if (p) {
      load_image(p, s);
    } else {
      s.error = "set FERRY_WAN_BENCH_IMAGE=/path/raw.img";
    }
  }
  if (s.error.empty()) {
    std::fprintf(
        stderr,
        "wan codec data set %s: %llu chunks of 64 KiB, %llu all-zero (%.1f %%), "
        "%zu non-zero sampled (%zu MiB)\n",
        name.c_str(), (unsigned long long)s.image_chunks, (unsigned long long)s.zero_chunks,
        100.0 * double(s.zero_chunks) / double(s.image_chunks), s.chunks, s.data.size() >> 20);
  }
  return sets.emplace(name, std::move(s)).first->second;
}

std::span<const uint8_t> chunk_of(const DataSet& s, size_t i) {
  return {s.data.data() + i * kChunk, kChunk};
}

void set_common_counters(benchmark::State& state, const DataSet& s) {
  state.counters["zero_pct"] = 100.0 * double(s.zero_chunks) / double(s.image_chunks);
}

void BM_compress(benchmark::State& state, const std::string& set, Compression c) {
  const DataSet& s = data_set(set);
  if (!s.error.empty()) {
    state.SkipWithError(s.error.c_str());
    return;
  }
  ChunkEncoder enc;
  if (!enc.init()) {
    state.SkipWithError("encoder init");
    return;
  }
  std::vector<uint8_t> out(kChunk);
  uint64_t wire = 0, compressed = 0;
  for (auto _ : state) {
    wire = 0;
    compressed = 0;
    for (size_t i = 0; i < s.chunks; ++i) {
      const EncodedChunk e = enc.encode(chunk_of(s, i), out, c);
      wire += e.payload.size();
      compressed += e.kind == ChunkKind::compressed;
      benchmark::DoNotOptimize(e.payload.data());
    }
  }
  const double raw = double(s.chunks * kChunk);
  state.counters["ratio"] = raw / double(wire);
  state.counters["compressed_pct"] = 100.0 * double(compressed) / double(s.chunks);
  state.counters["comp_MBps"] =
      benchmark::Counter(raw * double(state.iterations()) / 1e6, benchmark::Counter::kIsRate);
  set_common_counters(state, s);
}

void BM_decompress(benchmark::State& state, const std::string& set, Compression c) {
  const DataSet& s = data_set(set);
  if (!s.error.empty()) {
    state.SkipWithError(s.error.c_str());
    return;
  }
  ChunkEncoder enc;
  ChunkDecoder dec;
  if (!enc.init() || !dec.init()) {
    state.SkipWithError("codec init");
    return;
  }
  // Encode once, untimed: the frames as the receiver sees them.
  struct Frame {
    FrameHeader h;
    size_t at = 0;
  };
  std::vector<Frame> frames(s.chunks);
  std::vector<uint8_t> wire;
  wire.reserve(s.data.size());
  std::vector<uint8_t> out(kChunk);
  for (size_t i = 0; i < s.chunks; ++i) {
    const EncodedChunk e = enc.encode(chunk_of(s, i), out, c);
    FrameHeader& h = frames[i].h;
    h.type = FrameType::read_data;
    h.flags = e.frame_flags();
    h.algo = e.algo;
    h.length_bytes = kChunk;
    h.payload_bytes = uint32_t(e.payload.size());
    frames[i].at = wire.size();
    wire.insert(wire.end(), e.payload.begin(), e.payload.end());
  }
  for (auto _ : state) {
    for (const Frame& f : frames) {
      if (!dec.decode(f.h, {wire.data() + f.at, f.h.payload_bytes}, out)) {
        state.SkipWithError("decode failed");
        return;
      }
      benchmark::ClobberMemory();
    }
  }
  // Spot check: the last chunk came back.
  if (std::memcmp(out.data(), chunk_of(s, s.chunks - 1).data(), kChunk) != 0)
    state.SkipWithError("round trip mismatch");
  state.counters["decomp_MBps"] = benchmark::Counter(
      double(s.chunks * kChunk) * double(state.iterations()) / 1e6, benchmark::Counter::kIsRate);
  state.counters["ratio"] = double(s.data.size()) / double(wire.size());
  set_common_counters(state, s);
}

std::vector<uint8_t> random_chunk() {
  std::vector<uint8_t> b(kChunk);
  std::mt19937_64 rng(5);
  for (size_t i = 0; i < kChunk; i += 8) {
    const uint64_t v = rng() | 1;
    std::memcpy(&b[i], &v, 8);
  }
  return b;
}

// Fixed per-chunk costs on the link: every chunk is zero-checked, hashed (dedup) and CRC'd.
void BM_zero_detect(benchmark::State& state) {
  std::vector<uint8_t> b(kChunk, 0);
  b[kChunk - 1] = 1;  // worst case: the whole chunk is scanned
  for (auto _ : state) benchmark::DoNotOptimize(is_zero(b));
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(kChunk));
}

void BM_sha256(benchmark::State& state) {
  const auto b = random_chunk();
  const size_t n = size_t(state.range(0));
  for (auto _ : state) benchmark::DoNotOptimize(content_hash({b.data(), n}));
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(n));
}

void BM_crc32c(benchmark::State& state) {
  const auto b = random_chunk();
  for (auto _ : state) benchmark::DoNotOptimize(crc32c(b));
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(kChunk));
}

const struct {
  const char* name;
  Compression c;
} kVariants[] = {
    {"lz4:1", {CompressAlgo::lz4, 1}},     {"lz4hc:9", {CompressAlgo::lz4, 9}},
    {"zstd:-1", {CompressAlgo::zstd, -1}}, {"zstd:1", {CompressAlgo::zstd, 1}},
    {"zstd:3", {CompressAlgo::zstd, 3}},   {"zstd:6", {CompressAlgo::zstd, 6}},
    {"igzip:0", {CompressAlgo::igzip, 0}}, {"igzip:1", {CompressAlgo::igzip, 1}},
    {"igzip:2", {CompressAlgo::igzip, 2}}, {"igzip:3", {CompressAlgo::igzip, 3}},
};

int register_all() {
  for (const char* set : {"doc", "lib", "img"}) {
    if (std::string(set) == "img" && !std::getenv("FERRY_WAN_BENCH_IMAGE")) continue;
    for (const auto& v : kVariants) {
      benchmark::RegisterBenchmark(
          (std::string("wan_codec/compress/") + set + "/" + v.name).c_str(),
          [set, c = v.c](benchmark::State& st) { BM_compress(st, set, c); })
          ->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark(
          (std::string("wan_codec/decompress/") + set + "/" + v.name).c_str(),
          [set, c = v.c](benchmark::State& st) { BM_decompress(st, set, c); })
          ->Unit(benchmark::kMillisecond);
    }
  }
  benchmark::RegisterBenchmark("wan_codec/zero_detect/64k", BM_zero_detect);
  benchmark::RegisterBenchmark("wan_codec/sha256", BM_sha256)->Arg(4096)->Arg(65536);
  benchmark::RegisterBenchmark("wan_codec/crc32c/64k", BM_crc32c);
  return 0;
}

[[maybe_unused]] const int registered = register_all();

}  // namespace
}  // namespace ferry::wan
