// Maps a GatewaySnapshot (mgmt/control.h) onto the metrics registry (mgmt/metrics_registry.h):
// the metric names, labels and help texts of every daemon live here, and the same registry serves
// GET /metrics and the report a daemon prints when it stops. Caller's thread (not a reactor).
#pragma once

#include "mgmt/control.h"
#include "mgmt/metrics_registry.h"

namespace ferry::mgmt {

void publish(MetricsRegistry& registry, const GatewaySnapshot& snapshot);

// The report a daemon prints when it stops: "ferry: final metrics (as GET /metrics):" and then
// every series of a registry published from `snapshot`, one per line (no HELP/TYPE lines).
std::string final_report(const GatewaySnapshot& snapshot);

}  // namespace ferry::mgmt
