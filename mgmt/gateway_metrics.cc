// Snapshot → registry (see gateway_metrics.h).
#include "mgmt/gateway_metrics.h"

namespace ferry::mgmt {

void publish(MetricsRegistry& r, const GatewaySnapshot& s) {
  const Labels daemon{{"daemon", s.daemon}};
  r.gauge("ferry_iscsi_sessions", "iSCSI sessions logged in", daemon).set(double(s.iscsi_sessions));
  r.gauge("ferry_iscsi_connections", "iSCSI connections open (any phase)", daemon)
      .set(double(s.iscsi_connections));
  r.gauge("ferry_nbd_connections", "NBD client connections open (the NBD export)", daemon)
      .set(double(s.nbd_connections));
  if (s.daemon != "target") {  // the edges have a WAN link
    r.gauge("ferry_wan_connections", "WAN link connections up", daemon)
        .set(double(s.wan_connections));
    r.counter("ferry_wan_wire_bytes_total", "bytes on the WAN link wire (TLS records)",
              {{"direction", "in"}})
        .set(s.wan_wire_bytes_in);
    r.counter("ferry_wan_wire_bytes_total", "bytes on the WAN link wire (TLS records)",
              {{"direction", "out"}})
        .set(s.wan_wire_bytes_out);
    r.counter("ferry_wan_reconnects_total", "WAN link reconnects").set(s.wan_reconnects);
  }
  std::vector<double> bounds_s;
  for (uint64_t us : kLatencyBucketsUs) bounds_s.push_back(double(us) / 1e6);
  for (const VolumeSnapshot& v : s.volumes) {
    const Labels vol{{"volume", v.name}};
    auto with = [&](const char* k, const char* value) {
      Labels l = vol;
      l.emplace_back(k, value);
      return l;
    };
    const IoMeterSnapshot& io = v.stats.io;
    const char* ops_help = "I/O requests from the front ends (iSCSI, NBD) by operation";
    r.counter("ferry_volume_ops_total", ops_help, with("op", "read")).set(io.reads);
    r.counter("ferry_volume_ops_total", ops_help, with("op", "write")).set(io.writes);
    r.counter("ferry_volume_ops_total", ops_help, with("op", "flush")).set(io.flushes);
    r.counter("ferry_volume_ops_total", ops_help, with("op", "other")).set(io.others);
    r.counter("ferry_volume_errors_total", "reads and writes that completed with an error", vol)
        .set(io.errors);
    r.counter("ferry_volume_bytes_total", "bytes read and written by the front ends",
              with("op", "read"))
        .set(io.bytes_read);
    r.counter("ferry_volume_bytes_total", "bytes read and written by the front ends",
              with("op", "write"))
        .set(io.bytes_written);
    r.histogram("ferry_volume_latency_seconds",
                "read and write latency at the top of the volume's stack", bounds_s, vol)
        .set(io.latency_buckets.data(), io.latency_buckets.size(), double(io.latency_sum_us) / 1e6);
    r.gauge("ferry_volume_size_bytes", "volume size", vol).set(double(v.size_bytes));
    for (const VolumeStats::Tier& t : v.stats.tiers) {
      const Labels tier = with("tier", t.tier);
      r.counter("ferry_cache_hits_total", "demand reads served by the cache tier", tier)
          .set(t.hits);
      r.counter("ferry_cache_misses_total", "demand reads that needed the tier below", tier)
          .set(t.misses);
      r.counter("ferry_cache_bypassed_total", "reads sent past the tier (limits, failures)", tier)
          .set(t.bypassed);
      r.counter("ferry_cache_fetched_bytes_total", "bytes the tier read from below", tier)
          .set(t.bytes_fetched);
      r.counter("ferry_cache_evictions_total", "chunks evicted from the tier", tier)
          .set(t.evictions);
      const double lookups = double(t.hits + t.misses);
      r.gauge("ferry_cache_hit_ratio", "hits / (hits + misses) since start (0 before any read)",
              tier)
          .set(lookups > 0 ? double(t.hits) / lookups : 0);
      r.gauge("ferry_cache_capacity_bytes", "the tier's budget now", tier)
          .set(double(t.capacity_bytes));
      r.gauge("ferry_cache_resident_bytes", "bytes of the chunks the tier holds", tier)
          .set(double(t.resident_bytes));
    }
    if (v.stats.has_journal) {
      r.gauge("ferry_journal_used_bytes", "journal bytes holding records not yet reclaimed", vol)
          .set(double(v.stats.journal_bytes_used));
      r.gauge("ferry_journal_free_bytes", "journal bytes free", vol)
          .set(double(v.stats.journal_bytes_free));
      const double size = double(v.stats.journal_bytes_used + v.stats.journal_bytes_free);
      r.gauge("ferry_journal_fill_ratio", "used / (used + free)", vol)
          .set(size > 0 ? double(v.stats.journal_bytes_used) / size : 0);
      r.gauge("ferry_journal_dirty_bytes",
              "volume bytes newer in the journal than on the datacenter side", vol)
          .set(double(v.stats.dirty_bytes));
      r.gauge("ferry_write_back_lag_seconds", "age of the oldest write not yet written back", vol)
          .set(double(v.stats.write_back_lag_ms) / 1000);
      r.counter("ferry_journal_written_back_bytes_total",
                "bytes written back to the datacenter side", vol)
          .set(v.stats.journal_bytes_written_back);
      r.gauge("ferry_write_back_rate_cap_bytes_per_second",
              "write-back rate cap (0: none; lifted while the RPO target is missed)", vol)
          .set(double(v.stats.write_back_rate_bytes_per_s));
      r.gauge("ferry_rpo_target_seconds", "target write-back lag (0: none)", vol)
          .set(double(v.stats.rpo_target_ms) / 1000);
      r.gauge("ferry_rpo_missed", "1 while the write-back lag is past the RPO target", vol)
          .set(v.stats.rpo_missed ? 1 : 0);
      r.counter("ferry_rpo_misses_total", "times the write-back lag went past the RPO target", vol)
          .set(v.stats.rpo_misses);
    }
    if (v.stats.stream.started) {
      r.gauge("ferry_stream_progress_ratio",
              "background streaming of the whole volume: done / size", vol)
          .set(v.stats.stream.percent() / 100);
    }
    auto counters = v.stats.counters;
    counters.insert(counters.end(), v.wan_counters.begin(), v.wan_counters.end());
    for (const VolumeStats::LayerCounter& c : counters) {
      const std::string name = std::string("ferry_") + c.layer + "_" + c.name + "_total";
      r.counter(name,
                std::string("the ") + c.layer + " layer's " + c.name +
                    " counter (see its counters struct)",
                vol)
          .set(c.value);
    }
    if (v.has_wan) {
      const char* raw_help =
          "volume data that crossed the WAN link, before zero runs, dedup and compression";
      const char* sent_help = "what it cost on the WAN link: data frame payload bytes";
      r.counter("ferry_wan_raw_bytes_total", raw_help, with("direction", "in"))
          .set(v.wan_raw_bytes_in);
      r.counter("ferry_wan_raw_bytes_total", raw_help, with("direction", "out"))
          .set(v.wan_raw_bytes_out);
      r.counter("ferry_wan_sent_bytes_total", sent_help, with("direction", "in"))
          .set(v.wan_sent_bytes_in);
      if (v.wan_sent_out_known)
        r.counter("ferry_wan_sent_bytes_total", sent_help, with("direction", "out"))
            .set(v.wan_sent_bytes_out);
    }
  }
}

std::string final_report(const GatewaySnapshot& snapshot) {
  MetricsRegistry registry;
  publish(registry, snapshot);
  const std::string text = registry.render();
  std::string out = "ferry: final metrics (as GET /metrics):\n";
  size_t at = 0;
  while (at < text.size()) {
    size_t end = text.find('\n', at);
    if (end == std::string::npos) end = text.size();
    if (text[at] != '#') out.append(text, at, end - at).append("\n");
    at = end + 1;
  }
  return out;
}

}  // namespace ferry::mgmt
