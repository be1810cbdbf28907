// NBD codec (see codec.h): pure parsing/building, any thread, no allocation.
#include "gateway/nbd/codec.h"

#include <cstring>

#include "datapath/endian.h"

namespace ferry::nbd {

namespace {
std::string_view as_string(std::span<const uint8_t> s) noexcept {
  return {reinterpret_cast<const char*>(s.data()), s.size()};
}
}  // namespace

void build_greeting(uint8_t out[kGreetingBytes]) noexcept {
  store_be64(out, kNbdMagic);
  store_be64(out + 8, kIHaveOpt);
  store_be16(out + 16, kFlagFixedNewstyle | kFlagNoZeroes);
}

ClientFlagsParse parse_client_flags(std::span<const uint8_t> in) noexcept {
  ClientFlagsParse p;
  if (in.size() < kClientFlagsBytes) return p;
  p.flags = load_be32(in.data());
  if (!(p.flags & kClientFlagFixedNewstyle)) {
    p.status = ParseStatus::fatal;
    p.why = "client does not support fixed newstyle";
  } else if (p.flags & ~(kClientFlagFixedNewstyle | kClientFlagNoZeroes)) {
    p.status = ParseStatus::fatal;  // spec: unknown client flags → disconnect
    p.why = "unknown client flags";
  } else {
    p.status = ParseStatus::ok;
  }
  return p;
}

OptionParse parse_option(std::span<const uint8_t> in) noexcept {
  OptionParse p;
  if (in.size() < kOptionHeaderBytes) return p;
  if (load_be64(in.data()) != kIHaveOpt) {
    p.status = ParseStatus::fatal;
    p.why = "bad option magic";
    return p;
  }
  p.option = load_be32(in.data() + 8);
  const uint32_t len = load_be32(in.data() + 12);
  if (len > kOptionDataBytesMax) {
    p.status = ParseStatus::fatal;
    p.why = "option data too long";
    return p;
  }
  p.total_bytes = kOptionHeaderBytes + len;
  if (in.size() < p.total_bytes) return p;
  p.data = in.subspan(kOptionHeaderBytes, len);
  p.status = ParseStatus::ok;
  return p;
}

uint16_t InfoRequest::request(size_t i) const noexcept {
  return load_be16(requests.data() + 2 * i);
}

Result<InfoRequest> parse_info_request(std::span<const uint8_t> data) noexcept {
  if (data.size() < 6) return Errc::protocol_error;
  const uint32_t name_len = load_be32(data.data());
  if (name_len > kNameBytesMax || name_len > data.size() - 6) return Errc::protocol_error;
  InfoRequest r;
  r.name = as_string(data.subspan(4, name_len));
  r.request_count = load_be16(data.data() + 4 + name_len);
  if (r.request_count > kInfoRequestsMax) return Errc::protocol_error;
  const size_t rest = data.size() - 6 - name_len;
  if (rest != size_t(r.request_count) * 2) return Errc::protocol_error;
  r.requests = data.subspan(6 + name_len);
  return r;
}

Result<MetaContextRequest> parse_meta_context_request(std::span<const uint8_t> data) noexcept {
  if (data.size() < 8) return Errc::protocol_error;
  const uint32_t name_len = load_be32(data.data());
  if (name_len > kNameBytesMax || name_len > data.size() - 8) return Errc::protocol_error;
  MetaContextRequest r;
  r.export_name = as_string(data.subspan(4, name_len));
  r.query_count = load_be32(data.data() + 4 + name_len);
  if (r.query_count > kMetaQueriesMax) return Errc::protocol_error;
  r.queries = data.subspan(8 + name_len);
  size_t pos = 0;
  for (uint32_t i = 0; i < r.query_count; ++i) {
    if (r.queries.size() - pos < 4) return Errc::protocol_error;
    const uint32_t len = load_be32(r.queries.data() + pos);
    pos += 4;
    if (len > kNameBytesMax || len > r.queries.size() - pos) return Errc::protocol_error;
    pos += len;
  }
  if (pos != r.queries.size()) return Errc::protocol_error;
  return r;
}

std::string_view next_meta_query(const MetaContextRequest& r, size_t& pos) noexcept {
  const uint32_t len = load_be32(r.queries.data() + pos);
  std::string_view q = as_string(r.queries.subspan(pos + 4, len));
  pos += 4 + len;
  return q;
}

bool meta_query_matches_base_allocation(std::string_view query, bool list) noexcept {
  if (query == kBaseAllocation) return true;
  return list && query == "base:";
}

void build_option_reply_header(uint8_t out[kOptionReplyHeaderBytes], uint32_t option,
                               uint32_t reply_type, uint32_t data_bytes) noexcept {
  store_be64(out, kOptionReplyMagic);
  store_be32(out + 8, option);
  store_be32(out + 12, reply_type);
  store_be32(out + 16, data_bytes);
}

void build_info_export(uint8_t out[kInfoExportBytes], uint64_t size_bytes,
                       uint16_t transmission_flags) noexcept {
  store_be16(out, kInfoExport);
  store_be64(out + 2, size_bytes);
  store_be16(out + 10, transmission_flags);
}

void build_info_block_size(uint8_t out[kInfoBlockSizeBytes], uint32_t min_bytes,
                           uint32_t preferred_bytes, uint32_t max_bytes) noexcept {
  store_be16(out, kInfoBlockSize);
  store_be32(out + 2, min_bytes);
  store_be32(out + 6, preferred_bytes);
  store_be32(out + 10, max_bytes);
}

size_t build_export_name_reply(uint8_t out[kExportNameReplyBytesMax], uint64_t size_bytes,
                               uint16_t transmission_flags, bool no_zeroes) noexcept {
  store_be64(out, size_bytes);
  store_be16(out + 8, transmission_flags);
  if (no_zeroes) return 10;
  std::memset(out + 10, 0, kExportNameZeroesBytes);
  return kExportNameReplyBytesMax;
}

RequestParse parse_request(std::span<const uint8_t> in) noexcept {
  RequestParse p;
  if (in.size() < kRequestBytes) return p;
  if (load_be32(in.data()) != kRequestMagic) {
    p.status = ParseStatus::fatal;
    p.why = "bad request magic";
    return p;
  }
  Request& r = p.request;
  r.flags = load_be16(in.data() + 4);
  r.type = load_be16(in.data() + 6);
  r.cookie = load_be64(in.data() + 8);
  r.offset_bytes = load_be64(in.data() + 16);
  r.length_bytes = load_be32(in.data() + 24);
  if (r.type == kCmdWrite) {
    if (r.length_bytes > kWritePayloadBytesMax) {
      p.status = ParseStatus::fatal;
      p.why = "write payload too long";
      return p;
    }
    p.payload_bytes = r.length_bytes;
  }
  if (r.flags & kCmdFlagPayloadLen) {
    // Only meaningful with extended headers, which we never negotiate: the payload length is
    // unknowable for non-write commands, so the stream is lost.
    p.status = ParseStatus::fatal;
    p.why = "PAYLOAD_LEN without extended headers";
    return p;
  }
  p.status = ParseStatus::ok;
  return p;
}

uint32_t validate_request(const Request& r, const ExportLimits& l) noexcept {
  constexpr uint16_t kKnown =
      kCmdFlagFua | kCmdFlagNoHole | kCmdFlagDf | kCmdFlagReqOne | kCmdFlagFastZero;
  if (r.flags & ~kKnown) return kEinval;
  uint16_t allowed = kCmdFlagFua;  // FUA is harmless on any command
  switch (r.type) {
    case kCmdRead:
      allowed |= kCmdFlagDf;
      break;
    case kCmdWriteZeroes:
      allowed |= kCmdFlagNoHole | kCmdFlagFastZero;
      break;
    case kCmdBlockStatus:
      allowed |= kCmdFlagReqOne;
      break;
    case kCmdWrite:
    case kCmdTrim:
    case kCmdCache:
    case kCmdFlush:
    case kCmdDisc:
      break;
    default:
      return kEinval;
  }
  if (r.flags & ~allowed) return kEinval;
  if ((r.flags & kCmdFlagDf) && !l.structured_replies) return kEinval;
  if (r.type == kCmdDisc || r.type == kCmdFlush) return 0;
  const bool writes = r.type == kCmdWrite || r.type == kCmdTrim || r.type == kCmdWriteZeroes;
  if (writes && l.read_only) return kEperm;
  if (r.type == kCmdBlockStatus) {
    if (!l.meta_context_base_allocation) return kEinval;
    if (r.length_bytes == 0) return kEinval;
  }
  if (r.offset_bytes > l.size_bytes || r.length_bytes > l.size_bytes - r.offset_bytes)
    return (r.type == kCmdWrite || r.type == kCmdWriteZeroes) ? kEnospc : kEinval;
  if (l.block_min_bytes > 1 &&
      ((r.offset_bytes % l.block_min_bytes) != 0 || (r.length_bytes % l.block_min_bytes) != 0))
    return kEinval;
  if ((r.type == kCmdRead || r.type == kCmdWrite) && r.length_bytes > l.block_max_bytes)
    return r.type == kCmdRead ? kEoverflow : kEinval;
  return 0;
}

void build_simple_reply(uint8_t out[kSimpleReplyBytes], uint32_t error, uint64_t cookie) noexcept {
  store_be32(out, kSimpleReplyMagic);
  store_be32(out + 4, error);
  store_be64(out + 8, cookie);
}

void build_chunk_header(uint8_t out[kChunkHeaderBytes], uint16_t flags, uint16_t type,
                        uint64_t cookie, uint32_t payload_bytes) noexcept {
  store_be32(out, kStructuredReplyMagic);
  store_be16(out + 4, flags);
  store_be16(out + 6, type);
  store_be64(out + 8, cookie);
  store_be32(out + 16, payload_bytes);
}

void build_offset_data_head(uint8_t out[kOffsetDataHeadBytes], uint16_t flags, uint64_t cookie,
                            uint64_t offset_bytes, uint32_t data_bytes) noexcept {
  build_chunk_header(out, flags, kReplyTypeOffsetData, cookie, 8 + data_bytes);
  store_be64(out + kChunkHeaderBytes, offset_bytes);
}

void build_offset_hole(uint8_t out[kOffsetHoleBytes], uint16_t flags, uint64_t cookie,
                       uint64_t offset_bytes, uint32_t hole_bytes) noexcept {
  build_chunk_header(out, flags, kReplyTypeOffsetHole, cookie, 12);
  store_be64(out + kChunkHeaderBytes, offset_bytes);
  store_be32(out + kChunkHeaderBytes + 8, hole_bytes);
}

void build_error_chunk(uint8_t out[kErrorChunkBytes], uint16_t flags, uint64_t cookie,
                       uint32_t error) noexcept {
  build_chunk_header(out, flags, kReplyTypeError, cookie, 6);
  store_be32(out + kChunkHeaderBytes, error);
  store_be16(out + kChunkHeaderBytes + 4, 0);
}

void build_block_status_head(uint8_t out[kBlockStatusHeadBytes], uint16_t flags, uint64_t cookie,
                             uint32_t context_id, uint32_t descriptor_count) noexcept {
  build_chunk_header(out, flags, kReplyTypeBlockStatus, cookie, 4 + 8 * descriptor_count);
  store_be32(out + kChunkHeaderBytes, context_id);
}

void build_block_descriptor(uint8_t out[8], uint32_t length_bytes, uint32_t status_flags) noexcept {
  store_be32(out, length_bytes);
  store_be32(out + 4, status_flags);
}

uint32_t to_nbd_error(Errc e) noexcept {
  switch (e) {
    case Errc::ok:
      return 0;
    case Errc::invalid_argument:
    case Errc::protocol_error:
    case Errc::out_of_range:
      return kEinval;
    case Errc::no_space:
      return kEnospc;
    case Errc::no_memory:
    case Errc::would_block:
    case Errc::busy:
      return kEnomem;
    case Errc::unsupported:
      return kEnotsup;
    case Errc::write_protected:
    case Errc::auth_failed:
      return kEperm;
    case Errc::cancelled:
    case Errc::closed:
      return kEshutdown;
    case Errc::io_error:
    case Errc::timed_out:
    case Errc::medium_error:
    case Errc::miscompare:
    case Errc::not_found:
    case Errc::exists:
      return kEio;
  }
  return kEio;
}

}  // namespace ferry::nbd
