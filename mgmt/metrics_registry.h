// MetricsRegistry: the one place the daemons' metrics live (counters, gauges, histograms with
// fixed buckets, each a family of labelled series), rendered in the Prometheus text format for
// GET /metrics and for the report a daemon prints when it stops. Series are registered (by name
// and label set) under a mutex, then written with relaxed atomics: writers never lock, and the
// exporter reads consistent single values. The datapath does not write here: its layers count in
// structures they own (MeteredDevice shards, cache and journal counters) and mgmt copies a
// snapshot of those in (mgmt/gateway_metrics.h). Any thread.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace ferry::mgmt {

// `volume="vm1",tier="ram"`: label pairs in order; values are escaped by the registry.
using Labels = std::vector<std::pair<std::string, std::string>>;

class MetricsRegistry {
 public:
  class Counter {
   public:
    void add(uint64_t n = 1) noexcept { value_.fetch_add(n, std::memory_order_relaxed); }
    // Mirrors a monotonic counter kept elsewhere (never goes down unless its source restarted).
    void set(uint64_t v) noexcept { value_.store(v, std::memory_order_relaxed); }
    uint64_t value() const noexcept { return value_.load(std::memory_order_relaxed); }

   private:
    std::atomic<uint64_t> value_{0};
  };
  class Gauge {
   public:
    void set(double v) noexcept { value_.store(v, std::memory_order_relaxed); }
    double value() const noexcept { return value_.load(std::memory_order_relaxed); }

   private:
    std::atomic<double> value_{0};
  };
  class Histogram {
   public:
    explicit Histogram(std::vector<double> bounds)
        : bounds_(std::move(bounds)), buckets_(bounds_.size() + 1) {}
    void observe(double v) noexcept;
    // Mirrors a histogram kept elsewhere: cumulative counts per bound then +Inf, and the sum.
    void set(const uint64_t* cumulative, size_t n, double sum) noexcept;
    const std::vector<double>& bounds() const noexcept { return bounds_; }

   private:
    friend class MetricsRegistry;
    std::vector<double> bounds_;
    std::vector<std::atomic<uint64_t>> buckets_;  // not cumulative; last = above every bound
    std::atomic<double> sum_{0};
  };

  // Finds or creates the series; the reference stays valid for the registry's lifetime. A name
  // keeps the type and help of its first registration.
  Counter& counter(const std::string& name, const std::string& help, const Labels& labels = {});
  Gauge& gauge(const std::string& name, const std::string& help, const Labels& labels = {});
  Histogram& histogram(const std::string& name, const std::string& help,
                       const std::vector<double>& bounds, const Labels& labels = {});

  // Prometheus text exposition format 0.0.4.
  std::string render() const;

 private:
  enum class Type { counter, gauge, histogram };
  struct Series {
    std::string labels;  // rendered: a="x",b="y"
    std::unique_ptr<Counter> counter;
    std::unique_ptr<Gauge> gauge;
    std::unique_ptr<Histogram> histogram;
  };
  struct Family {
    Type type;
    std::string help;
    std::vector<Series> series;
  };
  Series& find(const std::string& name, const std::string& help, Type type, const Labels& labels);

  mutable std::mutex mutex_;
  std::map<std::string, Family> families_;
};

}  // namespace ferry::mgmt
