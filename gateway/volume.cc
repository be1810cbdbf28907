// Volume stack parsing and composition (see volume.h). Start-up only, main thread.
#include "gateway/volume.h"

#include <algorithm>
#include <cctype>
#include <cinttypes>
#include <cstdio>

#include "datapath/ram_device.h"

namespace ferry {

namespace {

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t");
  if (a == std::string::npos) return {};
  const size_t b = s.find_last_not_of(" \t");
  return s.substr(a, b - a + 1);
}

bool parse_u64(const std::string& s, uint64_t& out) {
  if (s.empty() || s.size() > 19) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + uint64_t(c - '0');
  }
  out = v;
  return true;
}

// "500us", "2ms", "1s"; a bare number is microseconds.
bool parse_duration_us(const std::string& s, uint64_t& us) {
  struct Unit {
    const char* suffix;
    uint64_t scale;
  };
  for (const Unit u : {Unit{"us", 1}, Unit{"ms", 1000}, Unit{"s", 1000000}}) {
    const std::string suf = u.suffix;
    if (s.size() > suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0) {
      uint64_t v = 0;
      if (!parse_u64(s.substr(0, s.size() - suf.size()), v) || v > 60'000'000 / u.scale)
        return false;
      us = v * u.scale;
      return true;
    }
  }
  return parse_u64(s, us) && us <= 60'000'000;
}

bool parse_op(const std::string& s, IoOp& op) {
  if (s == "read")
    op = IoOp::read;
  else if (s == "write")
    op = IoOp::write;
  else if (s == "flush")
    op = IoOp::flush;
  else if (s == "discard")
    op = IoOp::discard;
  else if (s == "write_zeroes")
    op = IoOp::write_zeroes;
  else
    return false;
  return true;
}

bool parse_errc(const std::string& s, Errc& e) {
  for (Errc c : {Errc::io_error, Errc::medium_error, Errc::no_space, Errc::timed_out, Errc::busy,
                 Errc::write_protected, Errc::closed, Errc::unsupported}) {
    std::string name = to_string(c);
    for (char& ch : name) ch = ch == ' ' ? '_' : char(std::tolower(static_cast<unsigned char>(ch)));
    if (name == s) {
      e = c;
      return true;
    }
  }
  return false;
}

// fault:OP[@OFF[+LEN]][=ERROR][*COUNT]
std::string parse_fault(const std::string& arg, FaultRule& r) {
  std::string rest = arg;
  if (size_t star = rest.find('*'); star != std::string::npos) {
    uint64_t n = 0;
    if (!parse_u64(rest.substr(star + 1), n) || n == 0 || n > INT64_MAX) return "bad count";
    r.remaining = int64_t(n);
    rest.resize(star);
  }
  if (size_t eq = rest.find('='); eq != std::string::npos) {
    if (!parse_errc(rest.substr(eq + 1), r.error))
      return "unknown error '" + rest.substr(eq + 1) +
             "' (io_error, medium_error, no_space, timed_out, busy, "
             "write_protected, closed, unsupported)";
    rest.resize(eq);
  }
  if (size_t at = rest.find('@'); at != std::string::npos) {
    std::string range = rest.substr(at + 1);
    rest.resize(at);
    std::string len;
    if (size_t plus = range.find('+'); plus != std::string::npos) {
      len = range.substr(plus + 1);
      range.resize(plus);
    }
    auto off = parse_size_bytes(range);
    if (!off.ok()) return "bad offset '" + range + "'";
    r.offset_bytes = off.value();
    if (!len.empty()) {
      auto l = parse_size_bytes(len);
      if (!l.ok() || l.value() == 0) return "bad length '" + len + "'";
      r.length_bytes = l.value();
    }
  }
  if (!parse_op(rest, r.op))
    return "unknown operation '" + rest + "' (read, write, flush, discard, write_zeroes)";
  return {};
}

}  // namespace

std::string parse_stack(const std::string& text, std::vector<LayerSpec>& out) {
  out.clear();
  if (trim(text).empty()) return {};
  size_t start = 0;
  while (start <= text.size()) {
    const size_t gt = text.find('>', start);
    const std::string item =
        trim(text.substr(start, gt == std::string::npos ? std::string::npos : gt - start));
    start = gt == std::string::npos ? text.size() + 1 : gt + 1;
    if (item.empty()) return "empty layer in '" + text + "'";
    LayerSpec l;
    l.text = item;
    const size_t colon = item.find(':');
    const std::string kind = item.substr(0, colon);
    const std::string arg = colon == std::string::npos ? std::string() : item.substr(colon + 1);
    if (kind == "stream") {
      l.kind = LayerSpec::Kind::stream;
      if (!arg.empty()) {  // NMbit
        uint64_t mbit = 0;
        if (arg.size() < 5 || arg.compare(arg.size() - 4, 4, "Mbit") != 0 ||
            !parse_u64(arg.substr(0, arg.size() - 4), mbit) || mbit == 0 || mbit > 100000)
          return "stream: bad rate '" + arg + "' (e.g. stream:40Mbit)";
        l.size_bytes = mbit * 1000000 / 8;
      }
    } else if (kind == "prefetch-map") {
      l.kind = LayerSpec::Kind::prefetch_map;
      l.size_bytes = cache::MapPrefetchOptions{}.bytes_max;
      if (!arg.empty()) {
        auto v = parse_size_bytes(arg);
        if (!v.ok() || v.value() < (1u << 20))
          return "prefetch-map: bad size '" + arg + "' (at least 1MiB)";
        l.size_bytes = v.value();
      }
    } else if (kind == "readahead") {
      l.kind = LayerSpec::Kind::readahead;
      l.size_bytes = cache::ReadAheadOptions{}.window_max_bytes;
      if (!arg.empty()) {
        auto v = parse_size_bytes(arg);
        if (!v.ok() || v.value() < (64u << 10) || v.value() > (1ull << 30))
          return "readahead: bad window '" + arg + "' (64KiB .. 1GiB)";
        l.size_bytes = v.value();
      }
    } else if (kind == "ram-cache") {
      l.kind = LayerSpec::Kind::ram_cache;
      auto v = parse_size_bytes(arg);
      if (!v.ok() || v.value() < (1u << 20))
        return "ram-cache: needs a size of at least 1MiB, e.g. ram-cache:256MiB (got '" + arg +
               "')";
      l.size_bytes = v.value();
    } else if (kind == "ssd-cache") {
      l.kind = LayerSpec::Kind::ssd_cache;
      size_t comma = arg.find(',');
      l.path = arg.substr(0, comma);
      if (l.path.empty())
        return "ssd-cache: needs a path, e.g. ssd-cache:/var/cache/ferry/{volume}.cache,size=8GiB";
      l.size_bytes = 1ull << 30;
      while (comma != std::string::npos) {
        const size_t next = arg.find(',', comma + 1);
        const std::string opt =
            arg.substr(comma + 1, next == std::string::npos ? std::string::npos : next - comma - 1);
        if (opt.rfind("size=", 0) == 0) {
          auto v = parse_size_bytes(opt.substr(5));
          if (!v.ok() || v.value() < (4u << 20))
            return "ssd-cache: bad size '" + opt.substr(5) + "' (at least 4MiB)";
          l.size_bytes = v.value();
        } else if (opt.rfind("key=", 0) == 0 && opt.size() > 4) {
          l.key_file = opt.substr(4);
        } else {
          return "ssd-cache: unknown option '" + opt + "' (size=SIZE, key=FILE)";
        }
        comma = next;
      }
    } else if (kind == "journal") {
      l.kind = LayerSpec::Kind::journal;
      l.size_bytes = journal::JournalOptions{}.size_bytes;
      std::string jarg = arg;  // PATH[:SIZE][:POLICY]
      if (size_t c = jarg.rfind(':');
          c != std::string::npos && journal::parse_policy(jarg.substr(c + 1), l.policy))
        jarg.resize(c);
      l.path = jarg;
      if (size_t c = jarg.rfind(':'); c != std::string::npos) {
        auto v = parse_size_bytes(jarg.substr(c + 1));
        if (!v.ok() || v.value() < (1u << 20))
          return "journal: bad size '" + jarg.substr(c + 1) +
                 "' (at least 1MiB, e.g. journal:PATH:1GiB[:POLICY]; POLICY write-back | "
                 "cloud-persist | test-clone)";
        l.size_bytes = v.value();
        l.path = jarg.substr(0, c);
      }
      if (l.path.empty())
        return "journal: needs a file, e.g. journal:/var/lib/ferry/vm1.journal:1GiB";
    } else if (kind == "redo") {
      l.kind = LayerSpec::Kind::redo;
      l.size_bytes = journal::RedoLogOptions{}.size_bytes;
      l.path = arg;
      if (size_t c = arg.rfind(':'); c != std::string::npos) {
        auto v = parse_size_bytes(arg.substr(c + 1));
        if (!v.ok() || v.value() < (4u << 20))
          return "redo: bad size '" + arg.substr(c + 1) +
                 "' (at least 4MiB, e.g. redo:PATH:256MiB)";
        l.size_bytes = v.value();
        l.path = arg.substr(0, c);
      }
      if (l.path.empty()) return "redo: needs a file, e.g. redo:/var/lib/ferry/vm1.redo:256MiB";
    } else if (kind == "delay") {
      l.kind = LayerSpec::Kind::delay;
      if (!parse_duration_us(arg, l.delay_us))
        return "delay: bad time '" + arg + "' (e.g. 500us, 2ms, at most 60s)";
    } else if (kind == "fault") {
      l.kind = LayerSpec::Kind::fault;
      if (std::string e = parse_fault(arg, l.fault); !e.empty())
        return "fault: " + e + " in '" + item + "' (fault:OP[@OFF[+LEN]][=ERROR][*COUNT])";
    } else {
      return "unknown layer '" + kind +
             "' (stream, prefetch-map, readahead, ram-cache, ssd-cache, journal, redo, delay, "
             "fault)";
    }
    out.push_back(std::move(l));
  }
  return {};
}

std::string to_string(const std::vector<LayerSpec>& stack) {
  std::string s;
  for (const LayerSpec& l : stack) s += (s.empty() ? "" : " > ") + l.text;
  return s;
}

std::unique_ptr<Volume> Volume::compose(std::string name, BlockDevice& base,
                                        const std::vector<LayerSpec>& stack,
                                        bool shared_by_reactors, std::string& error,
                                        const Uuid& uuid) {
  std::unique_ptr<Volume> v(new Volume());
  v->name_ = std::move(name);
  BlockDevice* below = &base;
  // Built bottom up: the last layer written sits on the base.
  for (auto it = stack.rbegin(); it != stack.rend(); ++it) {
    const LayerSpec& l = *it;
    if (shared_by_reactors && l.single_reactor()) {
      error =
          "volume " + v->name_ + ": layer '" + l.text +
          "' runs on one reactor thread, but this volume is served by several (use --threads 1)";
      return nullptr;
    }
    std::unique_ptr<BlockDevice> dev;
    switch (l.kind) {
      case LayerSpec::Kind::stream: {
        cache::BackgroundStreamOptions o;
        o.rate_bytes_per_s = l.size_bytes;
        auto r = cache::BackgroundStream::create(*below, v->name_, o);
        if (!r.ok()) {
          error = "volume " + v->name_ + ": " + l.text + ": " + to_string(r.error());
          return nullptr;
        }
        v->streams_.push_back(r.value().get());
        dev = std::move(r).value();
        break;
      }
      case LayerSpec::Kind::prefetch_map: {
        cache::MapPrefetchOptions o;
        o.bytes_max = l.size_bytes;
        auto r = cache::MapPrefetch::create(*below, v->name_, o);
        if (!r.ok()) {
          error = "volume " + v->name_ + ": " + l.text + ": " + to_string(r.error());
          return nullptr;
        }
        v->map_prefetches_.push_back(r.value().get());
        dev = std::move(r).value();
        break;
      }
      case LayerSpec::Kind::readahead: {
        cache::ReadAheadOptions o;
        o.window_max_bytes = l.size_bytes;
        o.window_min_bytes = std::min(o.window_min_bytes, o.window_max_bytes);
        auto r = cache::ReadAhead::create(*below, o);
        if (!r.ok()) {
          error = "volume " + v->name_ + ": " + l.text + ": " + to_string(r.error());
          return nullptr;
        }
        v->readaheads_.push_back(r.value().get());
        dev = std::move(r).value();
        break;
      }
      case LayerSpec::Kind::ram_cache: {
        cache::RamCacheOptions o;
        o.capacity_bytes = l.size_bytes;
        auto r = cache::RamCache::create(*below, o);
        if (!r.ok()) {
          error = "volume " + v->name_ + ": " + l.text +
                  ": cannot create the RAM cache: " + to_string(r.error());
          return nullptr;
        }
        v->ram_caches_.push_back(r.value().get());
        dev = std::move(r).value();
        break;
      }
      case LayerSpec::Kind::ssd_cache: {
        cache::SsdCacheOptions o;
        o.path = l.path;
        if (const size_t at = o.path.find("{volume}"); at != std::string::npos)
          o.path.replace(at, 8, v->name_);
        o.size_bytes = l.size_bytes;
        o.key_file = l.key_file;
        o.volume_uuid = uuid;
        o.volume_name = v->name_;
        std::string why;
        auto r = cache::SsdCache::create(*below, o, &why);
        if (!r.ok()) {
          error = "volume " + v->name_ + ": " + l.text + ": " +
                  (why.empty() ? to_string(r.error()) : why);
          return nullptr;
        }
        if (!r.value()->open_note().empty())
          std::fprintf(stderr, "ferry: volume %s: ssd cache %s: %s\n", v->name_.c_str(),
                       o.path.c_str(), r.value()->open_note().c_str());
        v->ssd_caches_.push_back(r.value().get());
        dev = std::move(r).value();
        break;
      }
      case LayerSpec::Kind::journal: {
        journal::JournalOptions o;
        o.path = l.path;
        o.size_bytes = l.size_bytes;
        o.policy = l.policy;
        auto r = journal::JournalDevice::open(*below, o);
        if (!r.ok()) {
          error = "volume " + v->name_ + ": " + l.text +
                  ": cannot open the journal: " + to_string(r.error());
          return nullptr;
        }
        v->journals_.insert(v->journals_.begin(), r.value().get());
        dev = std::move(r).value();
        break;
      }
      case LayerSpec::Kind::redo: {
        journal::RedoLogOptions o;
        o.path = l.path;
        o.size_bytes = l.size_bytes;
        auto r = journal::RedoLogDevice::open(*below, o);
        if (!r.ok()) {
          error = "volume " + v->name_ + ": " + l.text +
                  ": cannot open the redo log: " + to_string(r.error());
          return nullptr;
        }
        v->redo_logs_.insert(v->redo_logs_.begin(), r.value().get());
        dev = std::move(r).value();
        break;
      }
      case LayerSpec::Kind::delay:
        dev = std::make_unique<DelayDevice>(*below, l.delay_us);
        break;
      case LayerSpec::Kind::fault: {
        auto f = std::make_unique<FaultDevice>(*below);
        f->add_rule(l.fault);
        dev = std::move(f);
        break;
      }
    }
    below = dev.get();
    v->layers_.push_back(std::move(dev));
  }
  // The meter on top sees what the front end asks (prefetch and stream layers read below it).
  auto meter = std::make_unique<MeteredDevice>(*below);
  v->meter_ = meter.get();
  v->layers_.push_back(std::move(meter));
  v->top_ = v->meter_;
  return v;
}

std::string Volume::set_ram_cache_capacity(uint64_t bytes, uint64_t& now_bytes) {
  if (ram_caches_.empty()) return "volume '" + name_ + "' has no RAM cache tier";
  for (const cache::RamCache* rc : ram_caches_) {
    if (bytes < 2ull * rc->chunk_bytes())
      return "a RAM tier holds at least 2 chunks (" + std::to_string(2 * rc->chunk_bytes()) +
             " bytes)";
    if (bytes > rc->max_capacity_bytes())
      return "above the RAM tier's ceiling, the size it was started with (" +
             std::to_string(rc->max_capacity_bytes() >> 20) + " MiB); restart to grow beyond";
  }
  now_bytes = 0;
  for (cache::RamCache* rc : ram_caches_) now_bytes += rc->set_capacity(bytes);
  return {};
}

int64_t Volume::drop_clean_cache() noexcept {
  if (ram_caches_.empty()) return -1;
  int64_t n = 0;
  for (cache::RamCache* rc : ram_caches_) n += rc->drop_clean();
  return n;
}

VolumeStats Volume::stats() const {
  VolumeStats out;
  out.io = meter_->snapshot();
  for (const cache::RamCache* rc : ram_caches_) {
    const auto& c = rc->counters();
    out.tiers.push_back({"ram", c.hits, c.misses, c.bypassed, c.bytes_fetched, c.evictions,
                         rc->capacity_bytes(),
                         uint64_t(rc->resident_chunks()) * rc->chunk_bytes()});
  }
  for (const cache::SsdCache* sc : ssd_caches_) {
    const auto& c = sc->counters();
    out.tiers.push_back({"ssd", c.hits, c.misses, c.bypassed, c.bytes_fetched, c.evictions,
                         sc->capacity_bytes(),
                         uint64_t(sc->resident_chunks()) * sc->chunk_bytes()});
  }
  if (!journals_.empty()) {
    out.journal_policy = journals_.front()->policy();
    out.write_back_paused = journals_.front()->write_back_paused();
    out.write_back_rate_bytes_per_s = journals_.front()->write_back_rate_bytes_per_s();
    out.rpo_target_ms = journals_.front()->rpo_target_ms();
  }
  for (const journal::JournalDevice* j : journals_) {
    out.has_journal = true;
    const journal::JournalState st = j->state();
    out.journal_bytes_used += st.journal_bytes_used;
    out.journal_bytes_free += st.journal_bytes_free;
    out.dirty_bytes += st.dirty_bytes;
    out.write_back_lag_ms = std::max(out.write_back_lag_ms, st.write_back_lag_ms);
    out.rpo_missed = out.rpo_missed || st.rpo_missed;
    out.rpo_misses += j->counters().rpo_misses;
    out.journal_bytes_written_back += j->counters().bytes_written_back;
  }
  out.stream = stream_progress();
  auto add = [&](const char* layer, const char* name, uint64_t value) {
    out.counters.push_back({layer, name, value});
  };
  for (const cache::MapPrefetch* m : map_prefetches_) {
    const auto& c = m->counters();
    add("prefetch_map", "entries", c.entries);
    add("prefetch_map", "reads", c.reads);
    add("prefetch_map", "bytes", c.bytes);
    add("prefetch_map", "errors", c.errors);
  }
  for (const cache::ReadAhead* r : readaheads_) {
    const auto& c = r->counters();
    add("readahead", "demand_reads", c.demand_reads);
    add("readahead", "sequential_reads", c.sequential_reads);
    add("readahead", "prefetch_reads", c.prefetch_reads);
    add("readahead", "prefetch_bytes", c.prefetch_bytes);
    add("readahead", "prefetch_used_bytes", c.prefetch_used_bytes);
    add("readahead", "prefetch_errors", c.prefetch_errors);
    add("readahead", "throttled", c.throttled);
  }
  for (const cache::BackgroundStream* st : streams_) {
    const cache::StreamProgress p = st->progress();
    add("stream", "done_bytes", p.done_bytes);
    add("stream", "errors", p.errors);
  }
  for (const journal::JournalDevice* j : journals_) {
    const auto& c = j->counters();
    add("journal", "records", c.records);
    add("journal", "replayed_records", c.replayed_records);
    add("journal", "group_commits", c.group_commits);
    add("journal", "bytes_journaled", c.bytes_journaled);
    add("journal", "bytes_superseded", c.bytes_superseded);
    add("journal", "checkpoints", c.checkpoints);
    add("journal", "waited_for_space", c.waited_for_space);
    add("journal", "busy", c.busy);
    add("journal", "next_errors", c.next_errors);
    add("journal", "journal_errors", c.journal_errors);
    add("journal", "reads_from_journal", c.reads_from_journal);
    add("journal", "barriers", c.barriers);
    add("journal", "no_space", c.no_space);
    add("journal", "clone_discards", c.clone_discards);
  }
  for (const cache::RamCache* rc : ram_caches_) {
    const auto& c = rc->counters();
    add("ram_cache", "prefetch_cached", c.prefetch_cached);
    add("ram_cache", "prefetch_misses", c.prefetch_misses);
    add("ram_cache", "fetches", c.fetches);
    add("ram_cache", "dropped", c.dropped);
  }
  for (const cache::SsdCache* sc : ssd_caches_) {
    const auto& c = sc->counters();
    add("ssd_cache", "fetches", c.fetches);
    add("ssd_cache", "fills", c.fills);
    add("ssd_cache", "restored_chunks", c.restored_chunks);
    add("ssd_cache", "corrupt_dropped", c.corrupt_dropped);
    add("ssd_cache", "write_waits", c.write_waits);
    add("ssd_cache", "ssd_errors", c.ssd_errors);
  }
  return out;
}

Volume::~Volume() {
  while (!layers_.empty()) layers_.pop_back();  // top first: nothing points at a freed layer
}

std::string Volume::describe() const { return std::string(top_->describe()); }

void Volume::start(Reactor& reactor) noexcept {
  for (cache::MapPrefetch* m : map_prefetches_) m->start();
  for (cache::BackgroundStream* s : streams_) s->start(reactor);
}

void Volume::stop() noexcept {
  for (cache::MapPrefetch* m : map_prefetches_) m->stop();
  for (cache::BackgroundStream* s : streams_) s->stop();
}

cache::StreamProgress Volume::stream_progress() const noexcept {
  return streams_.empty() ? cache::StreamProgress{} : streams_.front()->progress();
}

std::string Volume::stats_text() const {
  std::string out;
  char line[768];
  for (const cache::MapPrefetch* m : map_prefetches_) {
    const auto& c = m->counters();
    std::snprintf(line, sizeof line,
                  "prefetch-map %s: %" PRIu64 " chunks in the map, %" PRIu64 " replayed (%" PRIu64
                  " B), %" PRIu64 " errors%s\n",
                  name_.c_str(), c.entries, c.reads, c.bytes, c.errors,
                  c.map_unsupported ? " (no map below)" : "");
    out += line;
  }
  for (const cache::ReadAhead* r : readaheads_) {
    const auto& c = r->counters();
    const double accuracy =
        c.prefetch_bytes ? 100.0 * double(c.prefetch_used_bytes) / double(c.prefetch_bytes) : 0;
    std::snprintf(line, sizeof line,
                  "readahead %s: %" PRIu64 " demand reads (%" PRIu64 " sequential); %" PRIu64
                  " prefetch reads, %" PRIu64 " B ahead, %" PRIu64
                  " B of it used (%.1f %%), %" PRIu64 " errors, %" PRIu64 " throttled\n",
                  name_.c_str(), c.demand_reads, c.sequential_reads, c.prefetch_reads,
                  c.prefetch_bytes, c.prefetch_used_bytes, accuracy, c.prefetch_errors,
                  c.throttled);
    out += line;
  }
  for (const cache::BackgroundStream* st : streams_) {
    const cache::StreamProgress p = st->progress();
    std::snprintf(line, sizeof line,
                  "stream %s: %.1f %% (%" PRIu64 " of %" PRIu64 " B) in %.1f s, %.1f MB/s, %" PRIu64
                  " failed reads%s\n",
                  name_.c_str(), p.percent(), p.done_bytes, p.size_bytes, p.elapsed_s,
                  p.rate_bytes_per_s / 1e6, p.errors,
                  p.finished  ? ""
                  : p.started ? " (not finished)"
                              : " (not started)");
    out += line;
  }
  for (const journal::JournalDevice* j : journals_) out += j->stats_text(name_);
  for (const journal::RedoLogDevice* r : redo_logs_) out += r->stats_text(name_);
  auto pct = [](uint64_t part, uint64_t whole) {
    return whole ? 100.0 * double(part) / double(whole) : 0.0;
  };
  for (const cache::RamCache* rc : ram_caches_) {
    const auto& c = rc->counters();
    std::snprintf(line, sizeof line,
                  "ram cache %s: %" PRIu64 " hits, %" PRIu64 " misses (%.1f %% hits), %" PRIu64
                  " bypassed; prefetch: %" PRIu64 " already cached, %" PRIu64 " fetched; %" PRIu64
                  " B fetched in %" PRIu64 " fetches (%" PRIu64 " B on demand, %" PRIu64
                  " B by prefetch); %" PRIu64 " chunks prefetched, %" PRIu64
                  " of them used (accuracy %.1f %%); %" PRIu64 " evictions\n",
                  name_.c_str(), c.hits, c.misses, pct(c.hits, c.hits + c.misses), c.bypassed,
                  c.prefetch_cached, c.prefetch_misses, c.bytes_fetched, c.fetches,
                  c.bytes_fetched - c.bytes_prefetched, c.bytes_prefetched, c.prefetched_chunks,
                  c.prefetched_chunks_used, pct(c.prefetched_chunks_used, c.prefetched_chunks),
                  c.evictions);
    out += line;
  }
  for (const cache::SsdCache* sc : ssd_caches_) {
    const auto& c = sc->counters();
    std::snprintf(line, sizeof line,
                  "ssd cache %s: %" PRIu64 " hits, %" PRIu64 " misses (%.1f %% hits), %" PRIu64
                  " bypassed, %" PRIu64 " fetches (%" PRIu64 " B on demand, %" PRIu64
                  " B by prefetch); %" PRIu64 " chunks prefetched, %" PRIu64
                  " of them used (accuracy %.1f %%); %" PRIu64 " fills, %" PRIu64
                  " evictions, %" PRIu64 " restored at open, %" PRIu64 " corrupt dropped, %" PRIu64
                  " writes waited for invalidation, %" PRIu64 " cache-file errors\n",
                  name_.c_str(), c.hits, c.misses, pct(c.hits, c.hits + c.misses), c.bypassed,
                  c.fetches, c.bytes_fetched, c.bytes_prefetched, c.prefetched_chunks,
                  c.prefetch_hits, pct(c.prefetch_hits, c.prefetched_chunks), c.fills, c.evictions,
                  c.restored_chunks, c.corrupt_dropped, c.write_waits, c.ssd_errors);
    out += line;
  }
  return out;
}

}  // namespace ferry
