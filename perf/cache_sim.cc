// ferry-cache-sim: replays a hot-set workload mixed with a full-disk sequential scan through
// cache eviction policies (LRU, CLOCK, ARC, and the repo's S3-FIFO, cache/s3fifo.h) at chunk
// granularity and prints the hot set's hit ratio before, during and after the scan (issue 10:
// "scan-resistant admission and eviction, chosen by measurement"). Results and the choice:
// perf/README.md, cache/DESIGN.md.
//
// The trace: the recorded Debian 12 boot (../shared/traces/debian12-boot-reads.csv: offset and
// length of each read) replayed once in order to warm the cache, then a hot phase of reads drawn
// at random from the boot's reads (so each chunk is read as often as the boot read it), then the
// same hot reads interleaved with a sequential scan of the whole disk, then a hot phase again.
// The scan's read size matters: reads smaller than a chunk touch each chunk several times in a
// row, which a frequency-based policy takes for reuse. `--filter` (the default prints both) does
// not count a read that continues exactly where the previous read of the same chunk ended as a
// new reference (a correlated reference), the rule RamCache and SsdCache follow.
//
// Single-threaded, offline tool (not a daemon; allocates freely). Usage:
//   ferry-cache-sim TRACE.csv [--disk-gib 4] [--chunk-kib 64] [--scan-kib 4] [--hot-reads 65536]
//                   [--cache-mib 32,64,128] [--seed 1]
#include <algorithm>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <list>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "cache/s3fifo.h"

namespace {

struct Read {
  uint64_t offset_bytes, length_bytes;
};

// A policy holds `slots` chunks; access() returns true on a hit and admits the chunk on a miss.
// `reference` is false for a correlated re-read (sequential continuation inside the chunk).
class Policy {
 public:
  virtual ~Policy() = default;
  virtual bool access(uint64_t chunk, bool reference) = 0;
};

class Lru final : public Policy {
 public:
  explicit Lru(uint32_t slots) : slots_(slots) {}
  bool access(uint64_t chunk, bool) override {
    auto it = map_.find(chunk);
    if (it != map_.end()) {
      order_.splice(order_.begin(), order_, it->second);
      return true;
    }
    if (map_.size() == slots_) {
      map_.erase(order_.back());
      order_.pop_back();
    }
    order_.push_front(chunk);
    map_[chunk] = order_.begin();
    return false;
  }

 private:
  uint32_t slots_;
  std::list<uint64_t> order_;
  std::unordered_map<uint64_t, std::list<uint64_t>::iterator> map_;
};

class Clock final : public Policy {
 public:
  explicit Clock(uint32_t slots) : keys_(slots, ~0ull), ref_(slots, 0) {}
  bool access(uint64_t chunk, bool reference) override {
    auto it = map_.find(chunk);
    if (it != map_.end()) {
      if (reference) ref_[it->second] = 1;
      return true;
    }
    while (keys_[hand_] != ~0ull && ref_[hand_]) {
      ref_[hand_] = 0;
      hand_ = (hand_ + 1) % keys_.size();
    }
    if (keys_[hand_] != ~0ull) map_.erase(keys_[hand_]);
    keys_[hand_] = chunk;
    ref_[hand_] = 0;
    map_[chunk] = hand_;
    hand_ = (hand_ + 1) % keys_.size();
    return false;
  }

 private:
  std::vector<uint64_t> keys_;
  std::vector<uint8_t> ref_;
  size_t hand_ = 0;
  std::unordered_map<uint64_t, size_t> map_;
};

// ARC (Megiddo and Modha, FAST'03): T1 recent once, T2 frequent, ghosts B1/B2 adapt target p.
class Arc final : public Policy {
 public:
  explicit Arc(uint32_t slots) : c_(slots) {}
  bool access(uint64_t x, bool reference) override {
    auto it = where_.find(x);
    if (it != where_.end() && (it->second.list == kT1 || it->second.list == kT2)) {
      if (reference || it->second.list == kT2) move_to(x, kT2);
      return true;
    }
    if (it != where_.end() && it->second.list == kB1) {
      p_ = std::min<double>(c_, p_ + std::max(1.0, double(b2_.size()) / double(b1_.size())));
      replace(false);
      move_to(x, kT2);
      return false;
    }
    if (it != where_.end() && it->second.list == kB2) {
      p_ = std::max(0.0, p_ - std::max(1.0, double(b1_.size()) / double(b2_.size())));
      replace(true);
      move_to(x, kT2);
      return false;
    }
    const size_t l1 = t1_.size() + b1_.size(), total = l1 + t2_.size() + b2_.size();
    if (l1 == c_) {
      if (t1_.size() < c_) {
        erase_lru(b1_);
        replace(false);
      } else {
        erase_lru(t1_);
      }
    } else if (total >= c_) {
      if (total == 2 * size_t(c_)) erase_lru(b2_);
      replace(false);
    }
    push(x, kT1);
    return false;
  }

 private:
  enum List : uint8_t { kT1, kT2, kB1, kB2 };
  struct Pos {
    List list;
    std::list<uint64_t>::iterator it;
  };
  std::list<uint64_t>& of(List l) { return l == kT1 ? t1_ : l == kT2 ? t2_ : l == kB1 ? b1_ : b2_; }
  void push(uint64_t x, List l) {
    of(l).push_front(x);
    where_[x] = Pos{l, of(l).begin()};
  }
  void move_to(uint64_t x, List l) {
    Pos& p = where_[x];
    of(p.list).erase(p.it);
    push(x, l);
  }
  void erase_lru(std::list<uint64_t>& l) {
    where_.erase(l.back());
    l.pop_back();
  }
  void replace(bool in_b2) {
    if (!t1_.empty() && (t1_.size() > p_ || (in_b2 && double(t1_.size()) == p_))) {
      move_to(t1_.back(), kB1);
    } else if (!t2_.empty()) {
      move_to(t2_.back(), kB2);
    } else if (!t1_.empty()) {
      move_to(t1_.back(), kB1);
    }
  }
  uint32_t c_;
  double p_ = 0;
  std::list<uint64_t> t1_, t2_, b1_, b2_;
  std::unordered_map<uint64_t, Pos> where_;
};

// The repo's policy class, driven as SsdCache drives it (slot ids, no pinned slots here).
class S3FifoPolicy final : public Policy {
 public:
  explicit S3FifoPolicy(uint32_t slots) : fifo_(slots), key_of_(slots), slots_(slots) {}
  bool access(uint64_t chunk, bool reference) override {
    auto it = map_.find(chunk);
    if (it != map_.end()) {
      if (reference) fifo_.touch(it->second);
      return true;
    }
    uint32_t slot;
    if (used_ < slots_) {
      slot = used_++;
    } else {
      const int64_t v = fifo_.victim([](const void*, uint32_t) noexcept { return false; }, nullptr);
      if (v < 0) std::abort();
      slot = uint32_t(v);
      map_.erase(key_of_[slot]);
    }
    fifo_.insert(slot, chunk);
    key_of_[slot] = chunk;
    map_[chunk] = slot;
    return false;
  }

 private:
  ferry::cache::S3Fifo fifo_;
  std::vector<uint64_t> key_of_;
  std::unordered_map<uint64_t, uint32_t> map_;
  uint32_t slots_, used_ = 0;
};

std::unique_ptr<Policy> make(const std::string& name, uint32_t slots) {
  if (name == "lru") return std::make_unique<Lru>(slots);
  if (name == "clock") return std::make_unique<Clock>(slots);
  if (name == "arc") return std::make_unique<Arc>(slots);
  return std::make_unique<S3FifoPolicy>(slots);
}

// Feeds reads to a policy, chunk by chunk; tracks where the last read of each chunk ended so a
// sequential continuation inside a chunk is not counted as a new reference (when filtering).
class Driver {
 public:
  Driver(Policy& p, uint64_t chunk_bytes, bool filter) : p_(p), cb_(chunk_bytes), filter_(filter) {}
  bool read(const Read& r) {
    bool hit = true;
    const uint64_t end = r.offset_bytes + r.length_bytes;
    for (uint64_t c = r.offset_bytes / cb_; c <= (end - 1) / cb_; ++c) {
      auto [it, fresh] = last_end_.try_emplace(c, ~0ull);
      const bool continuation = !fresh && it->second == r.offset_bytes;
      it->second = end;
      hit &= p_.access(c, !(filter_ && continuation));
    }
    return hit;
  }

 private:
  Policy& p_;
  uint64_t cb_;
  bool filter_;
  std::unordered_map<uint64_t, uint64_t> last_end_;
};

struct Phase {
  uint64_t hot_reads = 0, hot_hits = 0, scan_reads = 0, scan_hits = 0;
  double hot_ratio() const { return hot_reads ? double(hot_hits) / double(hot_reads) : 0; }
};

std::vector<uint64_t> parse_list(const char* s) {
  std::vector<uint64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::strtoull(item.c_str(), nullptr, 10));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(
        stderr,
        "usage: %s TRACE.csv [--disk-gib 4] [--chunk-kib 64] [--scan-kib 4] [--hot-reads 65536] "
        "[--cache-mib 32,64,128] [--seed 1]\n",
        argv[0]);
    return 2;
  }
  uint64_t disk_gib = 4, chunk_kib = 64, scan_kib = 4, hot_reads = 65536, seed = 1;
  std::vector<uint64_t> cache_mib = {32, 64, 128};
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const char* v = argv[i + 1];
    if (k == "--disk-gib")
      disk_gib = std::strtoull(v, nullptr, 10);
    else if (k == "--chunk-kib")
      chunk_kib = std::strtoull(v, nullptr, 10);
    else if (k == "--scan-kib")
      scan_kib = std::strtoull(v, nullptr, 10);
    else if (k == "--hot-reads")
      hot_reads = std::strtoull(v, nullptr, 10);
    else if (k == "--cache-mib")
      cache_mib = parse_list(v);
    else if (k == "--seed")
      seed = std::strtoull(v, nullptr, 10);
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  std::ifstream in(argv[1]);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", argv[1]);
    return 1;
  }
  std::vector<Read> boot;
  std::string line;
  std::getline(in, line);  // header seq,t_s,conn,offset,length
  while (std::getline(in, line)) {
    std::stringstream ss(line);
    std::string f[5];
    for (auto& x : f) std::getline(ss, x, ',');
    const uint64_t len = std::strtoull(f[4].c_str(), nullptr, 10);
    if (len) boot.push_back({std::strtoull(f[3].c_str(), nullptr, 10), len});
  }
  const uint64_t cb = chunk_kib << 10, disk = disk_gib << 30, scan_bytes = scan_kib << 10;
  std::unordered_map<uint64_t, int> distinct;
  for (const Read& r : boot)
    for (uint64_t c = r.offset_bytes / cb; c <= (r.offset_bytes + r.length_bytes - 1) / cb; ++c)
      distinct[c] = 1;
  std::printf("# ferry-cache-sim: %zu boot reads, %zu distinct %" PRIu64
              " KiB chunks (hot set %.1f MiB); "
              "disk %" PRIu64 " GiB scanned in %" PRIu64 " KiB reads; %" PRIu64
              " hot reads per phase; seed %" PRIu64 "\n\n",
              boot.size(), distinct.size(), chunk_kib, double(distinct.size() * cb) / 1048576.0,
              disk_gib, scan_kib, hot_reads, seed);
  std::printf(
      "| cache | policy | correlated re-reads | hot hits before | during scan | after | drop "
      "during | scan hits |\n");
  std::printf("|---:|---|---|---:|---:|---:|---:|---:|\n");
  const uint64_t scan_reads_total = disk / scan_bytes;
  for (uint64_t mib : cache_mib) {
    const uint32_t slots = uint32_t((mib << 20) / cb);
    for (const char* name : {"lru", "clock", "arc", "s3fifo"}) {
      for (bool filter : {false, true}) {
        if (std::string(name) == "lru" && filter) continue;  // LRU has no frequency to fool
        auto policy = make(name, slots);
        Driver d(*policy, cb, filter);
        std::mt19937_64 rng(seed);  // same hot reads for every policy
        std::uniform_int_distribution<size_t> pick(0, boot.size() - 1);
        for (const Read& r : boot) d.read(r);  // warm: the boot once, in order
        Phase ph[3];
        uint64_t scan_next = 0;
        for (int p = 0; p < 3; ++p) {
          for (uint64_t i = 0; i < hot_reads; ++i) {
            ph[p].hot_hits += d.read(boot[pick(rng)]);
            ++ph[p].hot_reads;
            if (p != 1) continue;
            // Spread the whole scan evenly over the phase's hot reads.
            const uint64_t due = (i + 1) * scan_reads_total / hot_reads;
            for (; scan_next < due; ++scan_next) {
              ph[p].scan_hits += d.read({scan_next * scan_bytes, scan_bytes});
              ++ph[p].scan_reads;
            }
          }
        }
        std::printf(
            "| %" PRIu64
            " MiB | %s | %s | %.1f %% | %.1f %% | %.1f %% | %+.1f points | %.1f %% |\n",
            mib, name,
            std::string(name) == "lru" ? "n/a"
            : filter                   ? "ignored"
                                       : "counted",
            100 * ph[0].hot_ratio(), 100 * ph[1].hot_ratio(), 100 * ph[2].hot_ratio(),
            100 * (ph[1].hot_ratio() - ph[0].hot_ratio()),
            100.0 * double(ph[1].scan_hits) / double(std::max<uint64_t>(ph[1].scan_reads, 1)));
      }
    }
  }
  return 0;
}
