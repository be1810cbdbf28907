// MetricsRegistry: Prometheus text that parsers accept (HELP/TYPE once per family, label values
// escaped, histogram buckets cumulative ending in +Inf with _sum and _count), series found again
// by their labels rather than duplicated.
#include "mgmt/metrics_registry.h"

#include <gtest/gtest.h>

namespace ferry::mgmt {
namespace {

TEST(MetricsRegistry, SameNameAndLabelsIsOneSeries) {
  MetricsRegistry r;
  r.counter("ferry_x_total", "x", {{"volume", "a"}}).add(2);
  r.counter("ferry_x_total", "x", {{"volume", "a"}}).add(3);
  r.counter("ferry_x_total", "x", {{"volume", "b"}}).set(7);
  const std::string text = r.render();
  EXPECT_NE(text.find("ferry_x_total{volume=\"a\"} 5\n"), std::string::npos) << text;
  EXPECT_NE(text.find("ferry_x_total{volume=\"b\"} 7\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("# TYPE ferry_x_total counter"), text.rfind("# TYPE ferry_x_total counter"));
}

TEST(MetricsRegistry, LabelValuesAreEscaped) {
  MetricsRegistry r;
  r.gauge("ferry_g", "g", {{"volume", "a\"b\\c\nd"}}).set(1.5);
  EXPECT_NE(r.render().find("ferry_g{volume=\"a\\\"b\\\\c\\nd\"} 1.5\n"), std::string::npos)
      << r.render();
}

TEST(MetricsRegistry, HistogramBucketsAreCumulativeWithInfSumAndCount) {
  MetricsRegistry r;
  auto& h = r.histogram("ferry_lat_seconds", "latency", {0.001, 0.01}, {{"volume", "v"}});
  h.observe(0.0005);
  h.observe(0.005);
  h.observe(0.005);
  h.observe(3);
  const std::string text = r.render();
  EXPECT_NE(text.find("ferry_lat_seconds_bucket{volume=\"v\",le=\"0.001\"} 1\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("ferry_lat_seconds_bucket{volume=\"v\",le=\"0.01\"} 3\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("ferry_lat_seconds_bucket{volume=\"v\",le=\"+Inf\"} 4\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("ferry_lat_seconds_count{volume=\"v\"} 4\n"), std::string::npos) << text;
  EXPECT_NE(text.find("ferry_lat_seconds_sum{volume=\"v\"} 3.0105\n"), std::string::npos) << text;
}

TEST(MetricsRegistry, MirroredHistogramNeverGoesNegative) {
  MetricsRegistry r;
  auto& h = r.histogram("ferry_h", "h", {1, 2});
  const uint64_t cumulative[] = {5, 4, 9};  // a torn read of the source: 4 < 5
  h.set(cumulative, 3, 10);
  const std::string text = r.render();
  EXPECT_NE(text.find("ferry_h_bucket{le=\"2\"} 5\n"), std::string::npos) << text;
  EXPECT_NE(text.find("ferry_h_bucket{le=\"+Inf\"} 9\n"), std::string::npos) << text;
}

}  // namespace
}  // namespace ferry::mgmt
