// `ferry target` and `ferry demo`: a standalone iSCSI target (and optional NBD export) serving
// RAM or file LUNs. Parses flags, builds the device stacks and logical units, starts one
// reactor thread per core, and runs until SIGINT/SIGTERM (or a set duration). Main thread only.
#pragma once

namespace ferry::mgmt {

int run_target_command(int argc, char** argv);
// The demo: a target on 127.0.0.1:3260 with a 1 GiB RAM LUN and its NBD export on
// 127.0.0.1:10809, on embedded defaults; prints how to connect.
int run_demo_command(int argc, char** argv);

}  // namespace ferry::mgmt
