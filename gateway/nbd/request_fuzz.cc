// libFuzzer target: NBD transmission request parsing and validation over arbitrary bytes, with
// the reply builders run on every accepted request. Single-threaded, no I/O.
#include <cstddef>
#include <cstdint>
#include <span>

#include "datapath/endian.h"
#include "gateway/nbd/codec.h"

using namespace ferry::nbd;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  ExportLimits l;
  l.size_bytes = (uint64_t{data[0]} << 20) * 512;
  l.block_min_bytes = (data[1] & 1) ? 4096 : 512;
  l.structured_replies = data[1] & 2;
  l.meta_context_base_allocation = data[1] & 4;
  l.read_only = data[1] & 8;
  std::span<const uint8_t> in(data + 2, size - 2);
  uint8_t out[64];
  while (true) {
    RequestParse p = parse_request(in);
    if (p.status != ParseStatus::ok) break;
    if (p.payload_bytes > kWritePayloadBytesMax) __builtin_trap();
    const Request& r = p.request;
    const uint32_t e = validate_request(r, l);
    if (e == 0 && r.type != kCmdDisc && r.type != kCmdFlush) {
      // Accepted requests are inside the export and aligned.
      if (r.offset_bytes + r.length_bytes > l.size_bytes) __builtin_trap();
      if (r.offset_bytes % l.block_min_bytes || r.length_bytes % l.block_min_bytes)
        __builtin_trap();
    }
    build_simple_reply(out, e, r.cookie);
    build_error_chunk(out, kReplyFlagDone, r.cookie, e);
    build_offset_hole(out, 0, r.cookie, r.offset_bytes, r.length_bytes);
    size_t skip = kRequestBytes + p.payload_bytes;
    if (skip > in.size()) break;
    in = in.subspan(skip);
  }
  return 0;
}
