// sd_notify wrapper (see service_notify.h). Called from the main thread only, never a reactor.
#include "mgmt/service_notify.h"

#include <systemd/sd-daemon.h>

namespace ferry::mgmt {

namespace {

void send(const std::string& state) {
  // sd_notify returns 0 when $NOTIFY_SOCKET is unset and < 0 on a send error; neither stops the
  // daemon (the service manager's start timeout reports a missing READY).
  (void)sd_notify(0, state.c_str());
}

std::string one_line(const std::string& s) {
  std::string out = s;
  for (char& c : out)
    if (c == '\n' || c == '\r') c = ' ';
  return out;
}

}  // namespace

void notify_ready(const std::string& status) { send("READY=1\nSTATUS=" + one_line(status)); }

void notify_stopping(const std::string& status) { send("STOPPING=1\nSTATUS=" + one_line(status)); }

void notify_status(const std::string& status) { send("STATUS=" + one_line(status)); }

}  // namespace ferry::mgmt
