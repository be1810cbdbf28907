// `ferry demo`: the whole pipeline on one machine, on embedded defaults. Makes a sample VMDK
// (random, text and zero regions) with qemu-img, serves it with qemu-nbd, starts `ferry
// dc-edge`, the WAN emulator (100 Mbit/s, 40 ms RTT) and `ferry cloud-edge` (iSCSI on
// 127.0.0.1:3260, NBD on 127.0.0.1:10809), reads and writes the disk through iSCSI with qemu-img
// and qemu-io, prints what crossed the WAN, then keeps serving until Ctrl-C (or --duration).
// Child processes are started and stopped by PID. Main thread only.
#pragma once

namespace ferry::mgmt {

int run_demo_command(int argc, char** argv);

}  // namespace ferry::mgmt
