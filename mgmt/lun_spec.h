// Parsing of LUN specifications given on the command line and building their device stacks:
//   ram:SIZE[:BLOCK]            e.g. ram:1GiB, ram:64MiB:4096
//   file:PATH[,bs=BLOCK][,direct][,ro][,uuid=UUID]   e.g.
//   file:/var/lib/ferry/disk.img,bs=4096,direct
// Runs at start-up on the main thread; errors are returned as text for the user.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "datapath/block_device.h"
#include "datapath/uuid.h"

namespace ferry::mgmt {

struct LunSpec {
  enum class Kind { ram, file } kind = Kind::ram;
  uint64_t size_bytes = 0;  // ram
  std::string path;         // file
  uint32_t block_size_bytes = 512;
  bool direct_io = false;
  bool read_only = false;
  std::optional<Uuid> uuid;  // file: uuid=; else kept with the file (see lun_uuid)
};

// Returns an empty string on success, else a message naming what is wrong.
std::string parse_lun_spec(const std::string& text, LunSpec& out);
// Opens the device; on failure returns nullptr and sets `error`.
std::unique_ptr<BlockDevice> open_lun(const LunSpec& spec, std::string& error);
// The LUN's volume identity: uuid= if given; a file LUN keeps one with the disk (extended
// attribute user.ferry.uuid, or the sidecar file PATH.ferry-uuid where the file system has no
// user xattrs), made on first use; a RAM LUN is a new disk at every start and gets a random one.
// Empty string on success, else what went wrong.
std::string lun_uuid(const LunSpec& spec, Uuid& out);

}  // namespace ferry::mgmt
