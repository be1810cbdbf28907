// libFuzzer target: the NBD handshake codec (client flags, option framing, INFO/GO and
// META_CONTEXT payloads) over arbitrary bytes. Single-threaded, no I/O.
#include <cstddef>
#include <cstdint>
#include <span>

#include "gateway/nbd/codec.h"

using namespace ferry::nbd;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> in(data, size);
  ClientFlagsParse f = parse_client_flags(in);
  if (f.status == ParseStatus::ok) in = in.subspan(kClientFlagsBytes);
  // Walk the options exactly as the connection does.
  for (int guard = 0; guard < 1000; ++guard) {
    OptionParse p = parse_option(in);
    if (p.status != ParseStatus::ok) break;
    if (p.total_bytes > in.size() || p.data.size() > kOptionDataBytesMax) __builtin_trap();
    if (auto r = parse_info_request(p.data)) {
      for (size_t i = 0; i < r->request_count; ++i) (void)r->request(i);
      if (r->name.size() > kNameBytesMax) __builtin_trap();
    }
    if (auto r = parse_meta_context_request(p.data)) {
      size_t pos = 0;
      for (uint32_t i = 0; i < r->query_count; ++i) {
        std::string_view q = next_meta_query(*r, pos);
        (void)meta_query_matches_base_allocation(q, true);
        if (pos > r->queries.size()) __builtin_trap();
      }
      if (pos != r->queries.size()) __builtin_trap();
    }
    in = in.subspan(p.total_bytes);
  }
  return 0;
}
