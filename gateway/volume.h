// Volume: the one place a volume's device stack is composed, from a one-line description, for
// every daemon (`ferry target`, `ferry dc-edge`, `ferry cloud-edge`; later the management API).
// The stack is read top first, as nbdkit's `--filter=a --filter=b plugin`:
//
//   readahead > ram-cache:256MiB > (base)         the cloud edge's default, base = WAN remote
//   delay:2ms > fault:write@0+4096=medium_error*1 > (base)     tests
//
// Layers (each a BlockDevice over the next one; docs in cache/DESIGN.md, datapath/test_devices.h):
//   stream[:RATE]          reads the whole volume in the background (cache/background_stream.h),
//                          optionally capped, e.g. stream:40Mbit; started by Volume::start()
//                          (only `ferry cloud-edge` starts its volumes: stream and prefetch-map
//                          do nothing in the other daemons' stacks)
//   prefetch-map[:MAX]     at start, replays the volume's learned access map (from the datacenter
//                          edge) as prefetches, up to MAX bytes (256MiB) (cache/map_prefetch.h)
//   readahead[:WINDOW]     adaptive sequential read-ahead (cache/readahead.h), window cap (512KiB:
//   about one bandwidth-delay product of 100 Mbit/s x 40 ms) ram-cache:SIZE         RAM tier
//   (cache/ram_cache.h), SIZE like 256MiB ssd-cache:PATH[,size=SIZE][,key=FILE]   SSD tier
//   (cache/ssd_cache.h): a cache file (created)
//                          or block device, survives restarts; `{volume}` in PATH is replaced by
//                          the volume's name; key = AES-256-XTS key file (none: plaintext)
//   journal:PATH[:SIZE][:POLICY]  write-back journal in file PATH (journal/journal_device.h),
//                          SIZE when created (1GiB); writes are acknowledged once durable there;
//                          POLICY write-back (default) | cloud-persist | test-clone
//                          (journal/DESIGN.md "Policies")
//   redo:PATH[:SIZE]       the datacenter edge's redo log in file PATH (journal/redo_log.h), SIZE
//                          when created (256MiB): write-back epochs become atomic on the layer
//                          below; started (recovery) and shut down by `ferry dc-edge`
//   delay:TIME             adds TIME (e.g. 500us, 2ms) to every completion (tests)
//   fault:OP[@OFF[+LEN]][=ERROR][*COUNT]   fails OP (read|write|flush|discard|write_zeroes)
//                          on [OFF, OFF+LEN) with ERROR (io_error, medium_error, ...) COUNT times
//                          (tests)
// The base device (file, RAM, NBD source, WAN remote) is opened by its transport and owned by the
// caller; the Volume owns the layers above it and must be destroyed after every user of top() and
// before the base. Composition runs at start-up on the main thread; the layers then follow the
// BlockDevice threading rule: the caches and readahead are single-reactor devices, so a stack
// shared by several reactor threads (`ferry target --threads N>1`) refuses them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cache/background_stream.h"
#include "cache/map_prefetch.h"
#include "cache/ram_cache.h"
#include "cache/readahead.h"
#include "cache/ssd_cache.h"
#include "datapath/block_device.h"
#include "datapath/metered_device.h"
#include "datapath/test_devices.h"
#include "journal/journal_device.h"
#include "journal/redo_log.h"

namespace ferry {

struct LayerSpec {
  enum class Kind : uint8_t {
    stream,
    prefetch_map,
    readahead,
    ram_cache,
    ssd_cache,
    journal,
    redo,
    delay,
    fault
  } kind = Kind::delay;
  uint64_t size_bytes = 0;  // ram-cache: capacity; readahead: window cap; stream: bytes/s cap;
                            // prefetch-map: bytes to replay; journal, redo: file size
  uint64_t delay_us = 0;
  FaultRule fault;
  std::string path, key_file;  // ssd-cache, journal, redo: the file (ssd-cache: its key)
  journal::Policy policy = journal::Policy::write_back;  // journal: what becomes of its writes
  std::string text;                                      // as written, for messages
  bool single_reactor() const noexcept { return kind != Kind::delay && kind != Kind::fault; }
};

// Parses "a > b:arg > c" (top first; empty = no layers). Empty string on success, else a
// message naming the layer that is wrong.
std::string parse_stack(const std::string& text, std::vector<LayerSpec>& out);
std::string to_string(const std::vector<LayerSpec>& stack);

// What a volume's stack counts, copied out for the management layer (mgmt/volume_metrics.h).
struct VolumeStats {
  struct Tier {
    const char* tier;  // "ram", "ssd"
    uint64_t hits, misses, bypassed, bytes_fetched, evictions;
    uint64_t capacity_bytes, resident_bytes;  // the budget now; chunks held x chunk size
  };
  // Every other counter a layer keeps (what stats_text prints), by layer and counter name; mgmt
  // exposes each as ferry_<layer>_<name>_total{volume}.
  struct LayerCounter {
    const char*
        layer;         // "readahead", "prefetch_map", "ram_cache", "ssd_cache", "journal", "stream"
    const char* name;  // the counters struct's field name
    uint64_t value;
  };
  IoMeterSnapshot io;  // the front end's I/O at the top of the stack
  std::vector<LayerCounter> counters;
  std::vector<Tier> tiers;  // top first
  bool has_journal = false;
  journal::Policy journal_policy = journal::Policy::write_back;  // the top journal's
  bool write_back_paused = false;                                // the top journal's
  uint64_t journal_bytes_used = 0, journal_bytes_free = 0, dirty_bytes = 0, write_back_lag_ms = 0;
  uint64_t journal_bytes_written_back = 0;
  // RPO control of the top journal: the write-back rate cap (bytes/s, 0: none), the target lag,
  // whether the lag is past it now, and how often it went past.
  uint64_t write_back_rate_bytes_per_s = 0, rpo_misses = 0;
  uint32_t rpo_target_ms = 0;
  bool rpo_missed = false;
  cache::StreamProgress stream;
};

class Volume {
 public:
  // Builds `stack` over `base`. `shared_by_reactors`: the stack will be used from several
  // reactor threads (refuses single-reactor layers). nullptr and `error` set on failure.
  // `uuid` identifies the volume to layers that persist (the SSD tier never serves a cache file
  // written for another volume).
  static std::unique_ptr<Volume> compose(std::string name, BlockDevice& base,
                                         const std::vector<LayerSpec>& stack,
                                         bool shared_by_reactors, std::string& error,
                                         const Uuid& uuid = Uuid{});
  ~Volume();
  Volume(const Volume&) = delete;
  Volume& operator=(const Volume&) = delete;

  const std::string& name() const noexcept { return name_; }
  BlockDevice& top() noexcept { return *top_; }
  // "readahead:512KiB>ram-cache:256MiB/64KiB>wan volume vm1"
  std::string describe() const;
  // One line per layer that counts something (cache hits, prefetch accuracy, ...), for the
  // daemon's stop report and later the metrics registry. Reactor thread or after it stopped.
  std::string stats_text() const;
  // A copy of the counters of every layer; on the reactor thread that runs the stack (the cache
  // and journal counters are that thread's), or after it stopped.
  VolumeStats stats() const;
  // On the reactor thread: start the layers that work on their own (background streams), and
  // stop them (before the link below goes away).
  void start(Reactor& reactor) noexcept;
  void stop() noexcept;
  // Management, on the reactor thread that runs the stack. The RAM tier's budget (see
  // cache::RamCache::set_capacity): empty on success with `now_bytes` the budget it took, else
  // why not (no RAM tier; below 2 chunks or above the size given at start, which is the
  // ceiling). drop_clean_cache(): drops what the RAM tiers hold (all clean) and returns the
  // chunks dropped, or -1 when the stack has no RAM tier.
  std::string set_ram_cache_capacity(uint64_t bytes, uint64_t& now_bytes);
  int64_t drop_clean_cache() noexcept;
  // The background stream's progress (started == false when the stack has none).
  cache::StreamProgress stream_progress() const noexcept;
  // The stack's journals (top first): the daemon starts, drains and shuts them down on the reactor.
  const std::vector<journal::JournalDevice*>& journals() const noexcept { return journals_; }
  // The stack's redo logs (top first): the daemon starts (recovers) and shuts them down.
  const std::vector<journal::RedoLogDevice*>& redo_logs() const noexcept { return redo_logs_; }

 private:
  Volume() = default;
  std::string name_;
  BlockDevice* top_ = nullptr;
  std::vector<std::unique_ptr<BlockDevice>> layers_;  // bottom first: destroyed top first
  std::vector<cache::RamCache*> ram_caches_;
  std::vector<const cache::SsdCache*> ssd_caches_;
  std::vector<const cache::ReadAhead*> readaheads_;
  std::vector<cache::BackgroundStream*> streams_;
  std::vector<cache::MapPrefetch*> map_prefetches_;
  std::vector<journal::JournalDevice*> journals_;
  std::vector<journal::RedoLogDevice*> redo_logs_;
  MeteredDevice* meter_ = nullptr;  // top of the stack
};

}  // namespace ferry
