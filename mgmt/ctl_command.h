// `ferry ctl`: the management API's command-line client (HTTP/JSON over cpp-httplib, bearer
// token from a file): `ferry ctl volumes` prints a readable table of the daemon's volumes,
// `ferry ctl volume NAME` one volume, `ferry ctl metrics` the Prometheus text; `--json` prints
// the API's JSON as it is, for scripts. Main thread only; exits 0, 1 (the daemon said no or did
// not answer) or 2 (usage).
#pragma once

namespace ferry::mgmt {

int run_ctl_command(int argc, char** argv);

}  // namespace ferry::mgmt
