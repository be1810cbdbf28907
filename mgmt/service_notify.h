// systemd readiness protocol for the daemons (Type=notify units in packaging/systemd/): tells
// the service manager when a daemon is ready (its listeners are bound), what it is doing and
// when it begins to stop. Thin wrapper over libsystemd's sd_notify; without $NOTIFY_SOCKET (not
// started by systemd) every call does nothing.
#pragma once

#include <string>

namespace ferry::mgmt {

// READY=1 with a one-line STATUS (e.g. "listening on 127.0.0.1:3260, 2 volume(s)").
void notify_ready(const std::string& status);
// STOPPING=1 with a STATUS saying what the stop waits for.
void notify_stopping(const std::string& status);
// STATUS=... only (progress of a long stop, e.g. the journal drain).
void notify_status(const std::string& status);

}  // namespace ferry::mgmt
