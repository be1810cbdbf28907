// libFuzzer target for the CDB decoder: check, decode and sense building on arbitrary bytes.
// Built only with clang and -DFERRY_FUZZ=ON. Single-threaded.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "gateway/scsi/cdb.h"
#include "gateway/scsi/sense.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  uint8_t cdb[16] = {};
  std::memcpy(cdb, data, size < sizeof(cdb) ? size : sizeof(cdb));
  ferry::scsi::CdbCheck c = ferry::scsi::check_cdb(cdb);
  uint8_t sense[ferry::scsi::kFixedSenseBytes];
  if (c.ok()) {
    ferry::scsi::BlockCdb b = ferry::scsi::decode_block_cdb(cdb);
    volatile uint64_t sink = b.lba + b.transfer_length + ferry::scsi::cdb_allocation_length(cdb);
    (void)sink;
    if (ferry::scsi::cdb_length(cdb[0]) != c.spec->cdb_bytes) __builtin_trap();
  } else {
    ferry::scsi::build_sense(c.sense, sense);
    if ((sense[0] & 0x7f) != 0x70) __builtin_trap();
  }
  return 0;
}
