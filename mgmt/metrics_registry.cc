// MetricsRegistry implementation (see metrics_registry.h).
#include "mgmt/metrics_registry.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "datapath/assert.h"

namespace ferry::mgmt {

namespace {

std::string escape(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

std::string render_labels(const Labels& labels) {
  std::string out;
  for (const auto& [k, v] : labels) {
    if (!out.empty()) out += ',';
    out += k + "=\"" + escape(v) + "\"";
  }
  return out;
}

std::string number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return ec == std::errc{} ? std::string(buf, end) : "NaN";
}

void add_double(std::atomic<double>& a, double v) noexcept {
  double old = a.load(std::memory_order_relaxed);
  while (!a.compare_exchange_weak(old, old + v, std::memory_order_relaxed)) {
  }
}

// name{labels} or name{labels,extra}
std::string series_name(const std::string& name, const std::string& labels,
                        const std::string& extra = {}) {
  if (labels.empty() && extra.empty()) return name;
  return name + "{" + labels + (labels.empty() || extra.empty() ? "" : ",") + extra + "}";
}

}  // namespace

void MetricsRegistry::Histogram::observe(double v) noexcept {
  const size_t i = size_t(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  add_double(sum_, v);
}

void MetricsRegistry::Histogram::set(const uint64_t* cumulative, size_t n, double sum) noexcept {
  FERRY_ASSERT(n == buckets_.size());
  uint64_t below = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint64_t c = std::max(cumulative[i], below);
    buckets_[i].store(c - below, std::memory_order_relaxed);
    below = c;
  }
  sum_.store(sum, std::memory_order_relaxed);
}

MetricsRegistry::Series& MetricsRegistry::find(const std::string& name, const std::string& help,
                                               Type type, const Labels& labels) {
  auto [it, inserted] = families_.try_emplace(name, Family{type, help, {}});
  Family& f = it->second;
  FERRY_ASSERT(f.type == type);
  const std::string rendered = render_labels(labels);
  for (Series& s : f.series)
    if (s.labels == rendered) return s;
  f.series.push_back(Series{rendered, nullptr, nullptr, nullptr});
  return f.series.back();
}

MetricsRegistry::Counter& MetricsRegistry::counter(const std::string& name, const std::string& help,
                                                   const Labels& labels) {
  std::lock_guard<std::mutex> lock(mutex_);
  Series& s = find(name, help, Type::counter, labels);
  if (!s.counter) s.counter = std::make_unique<Counter>();
  return *s.counter;
}

MetricsRegistry::Gauge& MetricsRegistry::gauge(const std::string& name, const std::string& help,
                                               const Labels& labels) {
  std::lock_guard<std::mutex> lock(mutex_);
  Series& s = find(name, help, Type::gauge, labels);
  if (!s.gauge) s.gauge = std::make_unique<Gauge>();
  return *s.gauge;
}

MetricsRegistry::Histogram& MetricsRegistry::histogram(const std::string& name,
                                                       const std::string& help,
                                                       const std::vector<double>& bounds,
                                                       const Labels& labels) {
  std::lock_guard<std::mutex> lock(mutex_);
  Series& s = find(name, help, Type::histogram, labels);
  if (!s.histogram) s.histogram = std::make_unique<Histogram>(bounds);
  return *s.histogram;
}

std::string MetricsRegistry::render() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::string out;
  for (const auto& [name, f] : families_) {
    const char* type = f.type == Type::counter ? "counter"
                       : f.type == Type::gauge ? "gauge"
                                               : "histogram";
    // Counters are exposed with the _total suffix their family name carries.
    out += "# HELP " + name + " " + f.help + "\n# TYPE " + name + " " + type + "\n";
    for (const Series& s : f.series) {
      if (s.counter) {
        out += series_name(name, s.labels) + " " + std::to_string(s.counter->value()) + "\n";
      } else if (s.gauge) {
        out += series_name(name, s.labels) + " " + number(s.gauge->value()) + "\n";
      } else if (s.histogram) {
        const Histogram& h = *s.histogram;
        uint64_t cumulative = 0;
        for (size_t i = 0; i < h.buckets_.size(); ++i) {
          cumulative += h.buckets_[i].load(std::memory_order_relaxed);
          const std::string le = i < h.bounds_.size() ? number(h.bounds_[i]) : "+Inf";
          out += series_name(name + "_bucket", s.labels, "le=\"" + le + "\"") + " " +
                 std::to_string(cumulative) + "\n";
        }
        out += series_name(name + "_sum", s.labels) + " " +
               number(h.sum_.load(std::memory_order_relaxed)) + "\n";
        out += series_name(name + "_count", s.labels) + " " + std::to_string(cumulative) + "\n";
      }
    }
  }
  return out;
}

}  // namespace ferry::mgmt
