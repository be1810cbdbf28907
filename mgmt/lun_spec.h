// Parsing of LUN specifications given on the command line and building their device stacks:
//   ram:SIZE[:BLOCK]            e.g. ram:1GiB, ram:64MiB:4096
//   file:PATH[,bs=BLOCK][,direct][,ro]   e.g. file:/var/lib/ferry/disk.img,bs=4096,direct
// Runs at start-up on the main thread; errors are returned as text for the user.
#pragma once

#include <memory>
#include <string>

#include "datapath/block_device.h"

namespace ferry::mgmt {

struct LunSpec {
  enum class Kind { ram, file } kind = Kind::ram;
  uint64_t size_bytes = 0;  // ram
  std::string path;         // file
  uint32_t block_size_bytes = 512;
  bool direct_io = false;
  bool read_only = false;
};

// Returns an empty string on success, else a message naming what is wrong.
std::string parse_lun_spec(const std::string& text, LunSpec& out);
// Opens the device; on failure returns nullptr and sets `error`.
std::unique_ptr<BlockDevice> open_lun(const LunSpec& spec, std::string& error);

}  // namespace ferry::mgmt
