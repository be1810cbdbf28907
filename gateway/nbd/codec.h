// NBD codec: pure parsing and building of the fixed-newstyle handshake (client flags, option
// haggling payloads) and of transmission requests / replies. No I/O, no allocation; every input
// byte is validated here once. Any thread. Parsers answer ok | need_more | reject | fatal:
// reject = answer the peer with an NBD error (option error reply / request error), fatal =
// drop the connection. Returned string_views and spans borrow the caller's input buffer and
// live as long as it does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "datapath/result.h"
#include "gateway/nbd/protocol.h"

namespace ferry::nbd {

enum class ParseStatus : uint8_t { ok, need_more, reject, fatal };

// Bounds enforced by the parsers.
inline constexpr uint32_t kOptionDataBytesMax = 64 * 1024;
inline constexpr uint32_t kNameBytesMax = 4096;  // export names, context queries
inline constexpr uint32_t kMetaQueriesMax = 128;
inline constexpr uint32_t kInfoRequestsMax = 64;
inline constexpr uint32_t kWritePayloadBytesMax = 32u << 20;

// ---------------------------------------------------------------- handshake

// The 18-byte greeting the server sends first.
void build_greeting(uint8_t out[kGreetingBytes]) noexcept;

struct ClientFlagsParse {
  ParseStatus status = ParseStatus::need_more;
  uint32_t flags = 0;
  const char* why = nullptr;
};
// Fatal when the client does not set FIXED_NEWSTYLE or sets unknown bits.
ClientFlagsParse parse_client_flags(std::span<const uint8_t> in) noexcept;

struct OptionParse {
  ParseStatus status = ParseStatus::need_more;
  uint32_t option = 0;
  std::span<const uint8_t> data;  // borrowed from the input
  size_t total_bytes = 0;         // header + data, to consume
  const char* why = nullptr;
};
// One option: IHAVEOPT, option, length, data. Fatal on bad magic or data > kOptionDataBytesMax.
OptionParse parse_option(std::span<const uint8_t> in) noexcept;

// NBD_OPT_INFO / NBD_OPT_GO payload.
struct InfoRequest {
  std::string_view name;
  uint16_t request_count = 0;
  std::span<const uint8_t> requests;  // request_count big-endian uint16 info types
  uint16_t request(size_t i) const noexcept;
};
Result<InfoRequest> parse_info_request(std::span<const uint8_t> data) noexcept;

// NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT payload; queries validated up front.
struct MetaContextRequest {
  std::string_view export_name;
  uint32_t query_count = 0;
  std::span<const uint8_t> queries;  // query_count × (uint32 length, bytes)
};
Result<MetaContextRequest> parse_meta_context_request(std::span<const uint8_t> data) noexcept;
// Iterates the queries of a validated request: pos starts at 0.
std::string_view next_meta_query(const MetaContextRequest& r, size_t& pos) noexcept;

// What a meta context query selects from the contexts we serve (only base:allocation).
// true when `query` is "base:allocation" or, for LIST only, the namespace "base:".
bool meta_query_matches_base_allocation(std::string_view query, bool list) noexcept;

// Option replies: 20-byte header; the caller appends data_bytes of payload.
void build_option_reply_header(uint8_t out[kOptionReplyHeaderBytes], uint32_t option,
                               uint32_t reply_type, uint32_t data_bytes) noexcept;
// NBD_INFO_EXPORT payload: 12 bytes.
inline constexpr size_t kInfoExportBytes = 12;
void build_info_export(uint8_t out[kInfoExportBytes], uint64_t size_bytes,
                       uint16_t transmission_flags) noexcept;
// NBD_INFO_BLOCK_SIZE payload: 14 bytes.
inline constexpr size_t kInfoBlockSizeBytes = 14;
void build_info_block_size(uint8_t out[kInfoBlockSizeBytes], uint32_t min_bytes,
                           uint32_t preferred_bytes, uint32_t max_bytes) noexcept;
// Reply to NBD_OPT_EXPORT_NAME: size, flags, and 124 zeroes unless NO_ZEROES was agreed.
inline constexpr size_t kExportNameReplyBytesMax = 10 + kExportNameZeroesBytes;
size_t build_export_name_reply(uint8_t out[kExportNameReplyBytesMax], uint64_t size_bytes,
                               uint16_t transmission_flags, bool no_zeroes) noexcept;

// ---------------------------------------------------------------- transmission

struct Request {
  uint16_t flags = 0;
  uint16_t type = 0;
  uint64_t cookie = 0;
  uint64_t offset_bytes = 0;
  uint32_t length_bytes = 0;
};

struct RequestParse {
  ParseStatus status = ParseStatus::need_more;
  Request request;
  uint32_t payload_bytes = 0;  // WRITE payload following the header (also on reject)
  const char* why = nullptr;
};
// The 28-byte request header. Fatal on bad magic or a WRITE payload > kWritePayloadBytesMax
// (the stream cannot be resynchronised cheaply). need_more when fewer than 28 bytes.
// Only framing is checked here; see validate_request for semantics.
RequestParse parse_request(std::span<const uint8_t> in) noexcept;

// What the export negotiated / offers, for validate_request.
struct ExportLimits {
  uint64_t size_bytes = 0;
  uint32_t block_min_bytes = 512;
  uint32_t block_max_bytes = 32u << 20;
  bool read_only = false;
  bool structured_replies = false;
  bool meta_context_base_allocation = false;
};
// 0 when the request may be executed, else the NBD error to reply with (EINVAL, ENOSPC for
// out of range per spec, EPERM for writes to a read-only export, EOVERFLOW for too long).
uint32_t validate_request(const Request& r, const ExportLimits& limits) noexcept;

void build_simple_reply(uint8_t out[kSimpleReplyBytes], uint32_t error, uint64_t cookie) noexcept;
void build_chunk_header(uint8_t out[kChunkHeaderBytes], uint16_t flags, uint16_t type,
                        uint64_t cookie, uint32_t payload_bytes) noexcept;
// OFFSET_DATA header + offset (28 bytes); the data follows.
inline constexpr size_t kOffsetDataHeadBytes = kChunkHeaderBytes + 8;
void build_offset_data_head(uint8_t out[kOffsetDataHeadBytes], uint16_t flags, uint64_t cookie,
                            uint64_t offset_bytes, uint32_t data_bytes) noexcept;
// OFFSET_HOLE chunk: 32 bytes.
inline constexpr size_t kOffsetHoleBytes = kChunkHeaderBytes + 12;
void build_offset_hole(uint8_t out[kOffsetHoleBytes], uint16_t flags, uint64_t cookie,
                       uint64_t offset_bytes, uint32_t hole_bytes) noexcept;
// ERROR chunk without message: 26 bytes.
inline constexpr size_t kErrorChunkBytes = kChunkHeaderBytes + 6;
void build_error_chunk(uint8_t out[kErrorChunkBytes], uint16_t flags, uint64_t cookie,
                       uint32_t error) noexcept;
// BLOCK_STATUS chunk: header + context id (24 bytes), then descriptor_count × 8 bytes.
inline constexpr size_t kBlockStatusHeadBytes = kChunkHeaderBytes + 4;
void build_block_status_head(uint8_t out[kBlockStatusHeadBytes], uint16_t flags, uint64_t cookie,
                             uint32_t context_id, uint32_t descriptor_count) noexcept;
void build_block_descriptor(uint8_t out[8], uint32_t length_bytes, uint32_t status_flags) noexcept;

// The one table from Ferry errors to NBD wire errors.
uint32_t to_nbd_error(Errc e) noexcept;

}  // namespace ferry::nbd
