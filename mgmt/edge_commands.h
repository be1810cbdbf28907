// `ferry dc-edge` and `ferry cloud-edge`: the two ends of the WAN link as processes.
//   dc-edge:    volumes from NBD servers (the VMDK's qemu-nbd / nbdkit) served to cloud edges
//               over TLS 1.3 (gateway/wan/wan_server.h).
//   cloud-edge: those volumes as iSCSI LUNs (and optional NBD exports), every block fetched on
//               demand over the WAN link (gateway/wan/wan_client.h).
// Both run one reactor thread; they stop on SIGINT/SIGTERM or after --duration, printing what
// crossed the WAN. Main thread only.
#pragma once

namespace ferry::mgmt {

int run_dc_edge_command(int argc, char** argv);
int run_cloud_edge_command(int argc, char** argv);

}  // namespace ferry::mgmt
