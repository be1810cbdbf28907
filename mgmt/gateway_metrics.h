// Maps a GatewaySnapshot (mgmt/control.h) onto the metrics registry (mgmt/metrics_registry.h):
// the metric names, labels and help texts of every daemon live here, and the same registry serves
// GET /metrics and the report a daemon prints when it stops. Caller's thread (not a reactor).
#pragma once

#include "mgmt/control.h"
#include "mgmt/metrics_registry.h"

namespace ferry::mgmt {

void publish(MetricsRegistry& registry, const GatewaySnapshot& snapshot);

}  // namespace ferry::mgmt
