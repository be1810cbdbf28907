// `ferry target`: a standalone iSCSI target (and optional NBD export) serving
// RAM or file LUNs. Parses flags, builds the device stacks and logical units, starts one
// reactor thread per core, and runs until SIGINT/SIGTERM (or a set duration). Main thread only.
#pragma once

namespace ferry::mgmt {

int run_target_command(int argc, char** argv);

}  // namespace ferry::mgmt
