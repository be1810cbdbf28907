// ferry: the single binary. Dispatches to subcommands (target; more as issues land).
#include <cstdio>
#include <cstring>

#include "mgmt/ctl_command.h"
#include "mgmt/demo_command.h"
#include "mgmt/edge_commands.h"
#include "mgmt/target_command.h"

namespace {
void usage() {
  std::fprintf(
      stderr,
      "usage: ferry <command> [options]\n"
      "commands:\n"
      "  --version  print the version\n"
      "  target   serve RAM or file LUNs over iSCSI and NBD (see ferry target --help)\n"
      "  demo     the whole pipeline on one machine: VMDK → dc-edge → emulated WAN → cloud-edge → "
      "iSCSI\n"
      "  dc-edge     datacenter edge: NBD volumes served over the WAN link\n"
      "  cloud-edge  cloud edge: WAN volumes served as iSCSI LUNs\n"
      "  ctl         talk to a running daemon's management endpoint (ferry ctl volumes)\n");
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    usage();
    return 2;
  }
  if (std::strcmp(argv[1], "target") == 0)
    return ferry::mgmt::run_target_command(argc - 1, argv + 1);
  if (std::strcmp(argv[1], "dc-edge") == 0)
    return ferry::mgmt::run_dc_edge_command(argc - 1, argv + 1);
  if (std::strcmp(argv[1], "cloud-edge") == 0)
    return ferry::mgmt::run_cloud_edge_command(argc - 1, argv + 1);
  if (std::strcmp(argv[1], "ctl") == 0) return ferry::mgmt::run_ctl_command(argc - 1, argv + 1);
  if (std::strcmp(argv[1], "demo") == 0) return ferry::mgmt::run_demo_command(argc - 1, argv + 1);
  if (std::strcmp(argv[1], "--version") == 0) {
    std::printf("ferry %s\n", FERRY_VERSION);
    return 0;
  }
  if (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    usage();
    return 0;
  }
  std::fprintf(stderr, "ferry: unknown command '%s'\n", argv[1]);
  usage();
  return 2;
}
