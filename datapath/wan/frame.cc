// WAN link frame codec (see frame.h; layout in datapath/wan/DESIGN.md). Pure functions, any
// thread; every check on peer bytes returns a status, assertions guard only our own frames.
#include "datapath/wan/frame.h"

#include <isa-l.h>

#include <cstring>

#include "datapath/assert.h"
#include "datapath/endian.h"

namespace ferry::wan {
namespace {

// Header byte offsets.
constexpr size_t kOffMagic = 0;
constexpr size_t kOffType = 2;
constexpr size_t kOffFlags = 3;
constexpr size_t kOffPriority = 4;
constexpr size_t kOffAlgo = 5;
constexpr size_t kOffVolume = 6;
constexpr size_t kOffRequest = 8;
constexpr size_t kOffOffset = 16;
constexpr size_t kOffLength = 24;
constexpr size_t kOffPayloadBytes = 28;
constexpr size_t kOffPayloadCrc = 32;
constexpr size_t kOffHeaderCrc = 36;
static_assert(kOffHeaderCrc + 4 == kFrameHeaderBytes);

constexpr size_t kHelloBytesMax = 256;  // longer HELLOs (later versions) are accepted, tail ignored

bool known_type(uint8_t t) noexcept {
  switch (static_cast<FrameType>(t)) {
    case FrameType::hello:
    case FrameType::hello_ack:
    case FrameType::open_volume:
    case FrameType::volume_info:
    case FrameType::close_volume:
    case FrameType::volume_closed:
    case FrameType::read:
    case FrameType::read_data:
    case FrameType::read_done:
    case FrameType::write:
    case FrameType::write_ack:
    case FrameType::flush:
    case FrameType::flush_ack:
    case FrameType::block_status:
    case FrameType::block_status_reply:
    case FrameType::access_map:
    case FrameType::access_map_reply:
    case FrameType::epoch_commit:
    case FrameType::epoch_committed:
    case FrameType::ping:
    case FrameType::pong:
    case FrameType::error:
      return true;
  }
  return false;
}

bool is_pow2(uint32_t v) noexcept { return v != 0 && (v & (v - 1)) == 0; }

bool printable(uint8_t c) noexcept { return c >= 0x20 && c <= 0x7e; }

// Frames that carry nothing but their header fields (and maybe a volume).
const char* check_bare(const FrameHeader& h, bool needs_volume) noexcept {
  if (h.flags != 0) return "flags not allowed on this frame type";
  if (needs_volume ? h.volume_id == 0 : h.volume_id != 0) return "bad volume id for frame type";
  if (h.offset_bytes != 0 || h.length_bytes != 0) return "offset/length not allowed";
  if (h.payload_bytes != 0) return "payload not allowed";
  return nullptr;
}

const char* check_range(const FrameHeader& h, uint32_t length_max) noexcept {
  if (h.length_bytes == 0) return "zero length";
  if (h.length_bytes > length_max) return "length over limit";
  if (h.offset_bytes > UINT64_MAX - h.length_bytes) return "offset + length overflows";
  return nullptr;
}

// READ_DATA and WRITE: one chunk, encoded raw / zero / compressed / dedup.
const char* check_data(const FrameHeader& h, uint8_t flags_allowed) noexcept {
  if (h.volume_id == 0) return "data frame without volume";
  if (h.flags & ~flags_allowed) return "flags not allowed on this frame type";
  const uint8_t enc = h.flags & kDataEncodingFlags;
  if (enc & (enc - 1)) return "more than one data encoding flag";
  if (enc == kFlagZero) {
    if (h.payload_bytes != 0) return "zero run with payload";
    return check_range(h, kRequestBytesMax);
  }
  if (const char* why = check_range(h, kChunkBytesMax)) return why;
  if (enc == kFlagCompressed) {
    if (h.payload_bytes == 0) return "empty compressed payload";
    if (h.payload_bytes >= h.length_bytes) return "compressed payload not smaller than data";
    return nullptr;
  }
  if (enc == kFlagDedupRef) {
    if (h.payload_bytes != kContentHashBytes) return "dedup reference is not a 32-byte hash";
    return nullptr;
  }
  if (h.payload_bytes != h.length_bytes) return "raw payload size differs from length";
  return nullptr;
}

// Rules that need only the header (payload shape of bodies is checked in validate_frame).
const char* check_header(const FrameHeader& h) noexcept {
  if (static_cast<uint8_t>(h.priority) >= kPriorityCount) return "bad priority";
  const uint8_t algo = static_cast<uint8_t>(h.algo);
  if (h.flags & kFlagCompressed) {
    if (algo == 0 || algo >= kCompressAlgoCount) return "bad compression algorithm";
  } else if (algo != 0) {
    return "algorithm without the compressed flag";
  }
  switch (h.type) {
    case FrameType::hello:
    case FrameType::hello_ack:
      if (h.flags || h.volume_id || h.offset_bytes || h.length_bytes) return "bad hello header";
      if (h.payload_bytes < kHelloBytes || h.payload_bytes > kHelloBytesMax)
        return "bad hello size";
      return nullptr;
    case FrameType::open_volume:
      if (h.flags || h.volume_id || h.offset_bytes || h.length_bytes) return "bad open header";
      if (h.payload_bytes == 0 || h.payload_bytes > kVolumeNameBytesMax)
        return "bad volume name size";
      return nullptr;
    case FrameType::volume_info:
      if (h.flags || h.volume_id == 0 || h.offset_bytes || h.length_bytes)
        return "bad volume info header";
      if (h.payload_bytes != kVolumeInfoBytes) return "bad volume info size";
      return nullptr;
    case FrameType::read:
      if (h.flags & ~kFlagNoDedup) return "flags not allowed on this frame type";
      if (h.volume_id == 0) return "read without volume";
      if (h.payload_bytes != 0) return "payload not allowed";
      return check_range(h, kRequestBytesMax);
    case FrameType::read_data:
      return check_data(h, kDataEncodingFlags);
    case FrameType::write:
      return check_data(h, kDataEncodingFlags | kFlagFinal | kFlagFua | kFlagEpoch);
    case FrameType::epoch_commit:
      if (h.flags || h.volume_id == 0 || h.offset_bytes || h.length_bytes)
        return "bad epoch commit header";
      if (h.payload_bytes != kEpochCommitBytes) return "bad epoch commit size";
      return nullptr;
    case FrameType::epoch_committed:
      return check_bare(h, true);
    case FrameType::close_volume:
    case FrameType::volume_closed:
    case FrameType::read_done:
    case FrameType::write_ack:
    case FrameType::flush:
    case FrameType::flush_ack:
      return check_bare(h, true);
    case FrameType::block_status:
      if (h.flags != 0) return "flags not allowed on this frame type";
      if (h.volume_id == 0) return "block status without volume";
      if (h.payload_bytes != 0) return "payload not allowed";
      return check_range(h, kRequestBytesMax);
    case FrameType::block_status_reply:
      if (h.flags != 0) return "flags not allowed on this frame type";
      if (h.volume_id == 0) return "block status without volume";
      if (h.payload_bytes == 0 || h.payload_bytes % kExtentBytes) return "bad extent list size";
      return check_range(h, kRequestBytesMax);
    case FrameType::access_map:
      return check_bare(h, true);
    case FrameType::access_map_reply:
      if (h.flags || h.volume_id == 0 || h.offset_bytes || h.length_bytes)
        return "bad access map header";
      if (h.payload_bytes % 8 != 0) return "bad access map size";
      return nullptr;
    case FrameType::ping:
    case FrameType::pong:
      return check_bare(h, false);
    case FrameType::error:
      if (h.flags || h.offset_bytes || h.length_bytes) return "bad error header";
      if (h.payload_bytes < kErrorHeadBytes || h.payload_bytes > kErrorBytesMax)
        return "bad error size";
      return nullptr;
  }
  return "unknown frame type";
}

FrameHeader decode_fields(const uint8_t* p) noexcept {
  FrameHeader h;
  h.type = static_cast<FrameType>(p[kOffType]);
  h.flags = p[kOffFlags];
  h.priority = static_cast<Priority>(p[kOffPriority]);
  h.algo = static_cast<CompressAlgo>(p[kOffAlgo]);
  h.volume_id = load_be16(p + kOffVolume);
  h.request_id = load_be64(p + kOffRequest);
  h.offset_bytes = load_be64(p + kOffOffset);
  h.length_bytes = load_be32(p + kOffLength);
  h.payload_bytes = load_be32(p + kOffPayloadBytes);
  h.payload_crc = load_be32(p + kOffPayloadCrc);
  return h;
}

}  // namespace

uint32_t capability_for(CompressAlgo a) noexcept {
  switch (a) {
    case CompressAlgo::none:
      return 0;
    case CompressAlgo::lz4:
      return kCapLz4;
    case CompressAlgo::zstd:
      return kCapZstd;
    case CompressAlgo::igzip:
      return kCapIgzip;
  }
  return 0;
}

uint32_t crc32c(std::span<const uint8_t> data, uint32_t prev) noexcept {
  if (data.empty()) return prev;
  // crc32_iscsi keeps the register un-inverted: invert on the way in and out.
  return ~crc32_iscsi(const_cast<uint8_t*>(data.data()), static_cast<int>(data.size()), ~prev);
}

void encode_header(uint8_t out[kFrameHeaderBytes], const FrameHeader& h) noexcept {
  FERRY_ASSERT(h.payload_bytes <= kFramePayloadBytesMax);
  FERRY_ASSERT(known_type(static_cast<uint8_t>(h.type)));
  FERRY_ASSERT(check_header(h) == nullptr);
  store_be16(out + kOffMagic, kFrameMagic);
  out[kOffType] = static_cast<uint8_t>(h.type);
  out[kOffFlags] = h.flags;
  out[kOffPriority] = static_cast<uint8_t>(h.priority);
  out[kOffAlgo] = static_cast<uint8_t>(h.algo);
  store_be16(out + kOffVolume, h.volume_id);
  store_be64(out + kOffRequest, h.request_id);
  store_be64(out + kOffOffset, h.offset_bytes);
  store_be32(out + kOffLength, h.length_bytes);
  store_be32(out + kOffPayloadBytes, h.payload_bytes);
  store_be32(out + kOffPayloadCrc, h.payload_crc);
  store_be32(out + kOffHeaderCrc, crc32c({out, kOffHeaderCrc}));
}

void encode_header(uint8_t out[kFrameHeaderBytes], FrameHeader h,
                   std::span<const uint8_t> payload) noexcept {
  FERRY_ASSERT(payload.size() <= kFramePayloadBytesMax);
  h.payload_bytes = static_cast<uint32_t>(payload.size());
  h.payload_crc = crc32c(payload);
  encode_header(out, h);
}

HeaderParse parse_header(std::span<const uint8_t> in, uint32_t payload_bytes_max) noexcept {
  HeaderParse r;
  if (in.size() < kFrameHeaderBytes) return r;
  const uint8_t* p = in.data();
  if (load_be16(p + kOffMagic) != kFrameMagic) {
    r.status = ParseStatus::fatal;
    r.why = "bad frame magic";
    return r;
  }
  if (crc32c({p, kOffHeaderCrc}) != load_be32(p + kOffHeaderCrc)) {
    r.status = ParseStatus::fatal;
    r.why = "header CRC mismatch";
    return r;
  }
  r.header = decode_fields(p);
  if (r.header.payload_bytes > payload_bytes_max ||
      r.header.payload_bytes > kFramePayloadBytesMax) {
    r.status = ParseStatus::fatal;
    r.why = "payload over the frame limit";
    return r;
  }
  r.why = check_header(r.header);
  r.status = r.why ? ParseStatus::reject : ParseStatus::ok;
  return r;
}

const char* validate_frame(const FrameHeader& h, std::span<const uint8_t> payload) noexcept {
  if (payload.size() != h.payload_bytes) return "payload size differs from header";
  if (const char* why = check_header(h)) return why;
  switch (h.type) {
    case FrameType::hello:
    case FrameType::hello_ack:
      return parse_hello(payload) ? nullptr : "bad hello body";
    case FrameType::open_volume:
      return parse_volume_name(payload) ? nullptr : "bad volume name";
    case FrameType::volume_info:
      return parse_volume_info(payload) ? nullptr : "bad volume info body";
    case FrameType::error:
      return parse_error(payload) ? nullptr : "bad error body";
    case FrameType::epoch_commit:
      return parse_epoch_commit(payload) ? nullptr : "bad epoch commit body";
    case FrameType::block_status_reply: {
      uint64_t covered = 0;
      for (size_t i = 0; i < payload.size() / kExtentBytes; ++i) {
        const Extent e = extent_at(payload, i);
        if (e.length_bytes == 0) return "empty extent";
        if (e.flags & ~(kExtentHole | kExtentZero)) return "unknown extent flags";
        covered += e.length_bytes;
      }
      if (covered != h.length_bytes) return "extents do not add up to the length";
      return nullptr;
    }
    default:
      return nullptr;
  }
}

FrameParse parse_frame(std::span<const uint8_t> in, uint32_t payload_bytes_max) noexcept {
  FrameParse r;
  const HeaderParse hp = parse_header(in, payload_bytes_max);
  if (hp.status == ParseStatus::need_more || hp.status == ParseStatus::fatal) {
    r.status = hp.status;
    r.why = hp.why;
    return r;
  }
  r.header = hp.header;
  const size_t total = kFrameHeaderBytes + size_t{hp.header.payload_bytes};
  if (in.size() < total) {
    r.bytes_needed = total;
    return r;
  }
  const std::span<const uint8_t> payload = in.subspan(kFrameHeaderBytes, hp.header.payload_bytes);
  if (crc32c(payload) != hp.header.payload_crc) {
    r.status = ParseStatus::fatal;
    r.why = "payload CRC mismatch";
    return r;
  }
  r.frame_bytes = total;
  r.bytes_needed = total;
  r.why = hp.status == ParseStatus::reject ? hp.why : validate_frame(hp.header, payload);
  if (r.why) {
    r.status = ParseStatus::reject;
    return r;
  }
  r.status = ParseStatus::ok;
  r.payload = payload;
  return r;
}

// ---------------------------------------------------------------- bodies

void encode_epoch_commit(uint8_t out[kEpochCommitBytes], const EpochCommitBody& b) noexcept {
  store_be64(out + 0, b.stream);
  store_be64(out + 8, b.epoch_id);
  store_be64(out + 16, b.data_bytes);
}

Result<EpochCommitBody> parse_epoch_commit(std::span<const uint8_t> payload) noexcept {
  if (payload.size() != kEpochCommitBytes) return Errc::protocol_error;
  EpochCommitBody b;
  b.stream = load_be64(payload.data() + 0);
  b.epoch_id = load_be64(payload.data() + 8);
  b.data_bytes = load_be64(payload.data() + 16);
  if (b.epoch_id == 0) return Errc::protocol_error;
  return b;
}

void encode_hello(uint8_t out[kHelloBytes], const Hello& h) noexcept {
  store_be16(out + 0, h.version_min);
  store_be16(out + 2, h.version_max);
  store_be32(out + 4, h.capabilities);
  store_be32(out + 8, h.frame_payload_bytes_max);
  store_be32(out + 12, h.requests_max);
  store_be64(out + 16, h.session_id);
  std::memset(out + 24, 0, kHelloBytes - 24);
}

Result<Hello> parse_hello(std::span<const uint8_t> payload) noexcept {
  if (payload.size() < kHelloBytes || payload.size() > kHelloBytesMax) return Errc::protocol_error;
  const uint8_t* p = payload.data();
  Hello h;
  h.version_min = load_be16(p + 0);
  h.version_max = load_be16(p + 2);
  h.capabilities = load_be32(p + 4);
  h.frame_payload_bytes_max = load_be32(p + 8);
  h.requests_max = load_be32(p + 12);
  h.session_id = load_be64(p + 16);
  // Bytes 24.. are reserved for later versions and ignored.
  if (h.version_min == 0 || h.version_min > h.version_max) return Errc::protocol_error;
  if (h.frame_payload_bytes_max < kFramePayloadBytesMin ||
      h.frame_payload_bytes_max > kFramePayloadBytesMax)
    return Errc::protocol_error;
  if (h.requests_max == 0) return Errc::protocol_error;
  return h;
}

Result<Hello> negotiate(const Hello& client, const Hello& server, uint64_t session_id) noexcept {
  const uint16_t lo =
      client.version_min > server.version_min ? client.version_min : server.version_min;
  const uint16_t hi =
      client.version_max < server.version_max ? client.version_max : server.version_max;
  if (lo > hi) return Errc::unsupported;
  Hello a;
  a.version_min = a.version_max = hi;
  a.capabilities = client.capabilities & server.capabilities & kCapsKnown;
  a.frame_payload_bytes_max = client.frame_payload_bytes_max < server.frame_payload_bytes_max
                                  ? client.frame_payload_bytes_max
                                  : server.frame_payload_bytes_max;
  a.requests_max =
      client.requests_max < server.requests_max ? client.requests_max : server.requests_max;
  a.session_id = session_id;
  return a;
}

void encode_volume_info(uint8_t out[kVolumeInfoBytes], const VolumeInfo& v) noexcept {
  store_be64(out + 0, v.size_bytes);
  store_be32(out + 8, v.block_bytes);
  store_be32(out + 12, v.flags);
  store_be32(out + 16, v.chunk_bytes);
  store_be32(out + 20, 0);
}

Result<VolumeInfo> parse_volume_info(std::span<const uint8_t> payload) noexcept {
  if (payload.size() != kVolumeInfoBytes) return Errc::protocol_error;
  const uint8_t* p = payload.data();
  VolumeInfo v;
  v.size_bytes = load_be64(p + 0);
  v.block_bytes = load_be32(p + 8);
  v.flags = load_be32(p + 12);
  v.chunk_bytes = load_be32(p + 16);
  if (load_be32(p + 20) != 0) return Errc::protocol_error;
  if (!is_pow2(v.block_bytes) || v.block_bytes < 512 || v.block_bytes > 65536)
    return Errc::protocol_error;
  if (v.size_bytes % v.block_bytes) return Errc::protocol_error;
  if (v.flags & ~kVolumeFlagsKnown) return Errc::protocol_error;
  if (!is_pow2(v.chunk_bytes) || v.chunk_bytes < v.block_bytes || v.chunk_bytes > kChunkBytesMax)
    return Errc::protocol_error;
  return v;
}

Result<std::string_view> parse_volume_name(std::span<const uint8_t> payload) noexcept {
  if (payload.empty() || payload.size() > kVolumeNameBytesMax) return Errc::protocol_error;
  for (uint8_t c : payload) {
    if (c <= 0x20 || c > 0x7e) return Errc::protocol_error;
  }
  return std::string_view(reinterpret_cast<const char*>(payload.data()), payload.size());
}

void encode_extent(uint8_t out[kExtentBytes], Extent e) noexcept {
  store_be32(out + 0, e.length_bytes);
  store_be32(out + 4, e.flags);
}

Extent extent_at(std::span<const uint8_t> payload, size_t i) noexcept {
  FERRY_ASSERT((i + 1) * kExtentBytes <= payload.size());
  const uint8_t* p = payload.data() + i * kExtentBytes;
  return Extent{load_be32(p), load_be32(p + 4)};
}

// The one table between Errc and the wire.
WireError to_wire_error(Errc e) noexcept {
  switch (e) {
    case Errc::invalid_argument:
      return WireError::invalid_argument;
    case Errc::out_of_range:
      return WireError::out_of_range;
    case Errc::no_space:
      return WireError::no_space;
    case Errc::no_memory:
    case Errc::would_block:
    case Errc::busy:
      return WireError::busy;
    case Errc::unsupported:
      return WireError::unsupported;
    case Errc::timed_out:
      return WireError::timed_out;
    case Errc::cancelled:
    case Errc::closed:
      return WireError::shutting_down;
    case Errc::protocol_error:
      return WireError::protocol_error;
    case Errc::auth_failed:
      return WireError::auth_failed;
    case Errc::not_found:
      return WireError::not_found;
    case Errc::write_protected:
      return WireError::write_protected;
    case Errc::medium_error:
      return WireError::medium_error;
    case Errc::ok:
    case Errc::io_error:
    case Errc::miscompare:
    case Errc::exists:
      return WireError::io_error;
  }
  return WireError::io_error;
}

Errc from_wire_error(uint16_t code) noexcept {
  switch (static_cast<WireError>(code)) {
    case WireError::io_error:
      return Errc::io_error;
    case WireError::invalid_argument:
      return Errc::invalid_argument;
    case WireError::out_of_range:
      return Errc::out_of_range;
    case WireError::not_found:
      return Errc::not_found;
    case WireError::unsupported:
      return Errc::unsupported;
    case WireError::busy:
      return Errc::busy;
    case WireError::no_space:
      return Errc::no_space;
    case WireError::write_protected:
      return Errc::write_protected;
    case WireError::protocol_error:
      return Errc::protocol_error;
    case WireError::auth_failed:
      return Errc::auth_failed;
    case WireError::timed_out:
      return Errc::timed_out;
    case WireError::dedup_miss:
      return Errc::not_found;
    case WireError::shutting_down:
      return Errc::closed;
    case WireError::medium_error:
      return Errc::medium_error;
    case WireError::lease_held:
      return Errc::busy;
  }
  return Errc::io_error;
}

size_t encode_error(uint8_t out[kErrorBytesMax], WireError code,
                    std::string_view message) noexcept {
  const size_t n = message.size() < kErrorMessageBytesMax ? message.size() : kErrorMessageBytesMax;
  store_be16(out + 0, static_cast<uint16_t>(code));
  store_be16(out + 2, static_cast<uint16_t>(n));
  for (size_t i = 0; i < n; ++i) {
    const auto c = static_cast<uint8_t>(message[i]);
    out[kErrorHeadBytes + i] = printable(c) ? c : '?';
  }
  return kErrorHeadBytes + n;
}

Result<ErrorBody> parse_error(std::span<const uint8_t> payload) noexcept {
  if (payload.size() < kErrorHeadBytes || payload.size() > kErrorBytesMax)
    return Errc::protocol_error;
  ErrorBody b;
  b.code = load_be16(payload.data());
  const size_t n = load_be16(payload.data() + 2);
  if (b.code == 0) return Errc::protocol_error;
  if (kErrorHeadBytes + n != payload.size()) return Errc::protocol_error;
  for (size_t i = 0; i < n; ++i) {
    if (!printable(payload[kErrorHeadBytes + i])) return Errc::protocol_error;
  }
  b.message = std::string_view(reinterpret_cast<const char*>(payload.data()) + kErrorHeadBytes, n);
  return b;
}

const char* to_string(FrameType t) noexcept {
  switch (t) {
    case FrameType::hello:
      return "HELLO";
    case FrameType::hello_ack:
      return "HELLO_ACK";
    case FrameType::open_volume:
      return "OPEN_VOLUME";
    case FrameType::volume_info:
      return "VOLUME_INFO";
    case FrameType::close_volume:
      return "CLOSE_VOLUME";
    case FrameType::volume_closed:
      return "VOLUME_CLOSED";
    case FrameType::read:
      return "READ";
    case FrameType::read_data:
      return "READ_DATA";
    case FrameType::read_done:
      return "READ_DONE";
    case FrameType::write:
      return "WRITE";
    case FrameType::write_ack:
      return "WRITE_ACK";
    case FrameType::flush:
      return "FLUSH";
    case FrameType::flush_ack:
      return "FLUSH_ACK";
    case FrameType::block_status:
      return "BLOCK_STATUS";
    case FrameType::block_status_reply:
      return "BLOCK_STATUS_REPLY";
    case FrameType::access_map:
      return "ACCESS_MAP";
    case FrameType::access_map_reply:
      return "ACCESS_MAP_REPLY";
    case FrameType::epoch_commit:
      return "EPOCH_COMMIT";
    case FrameType::epoch_committed:
      return "EPOCH_COMMITTED";
    case FrameType::ping:
      return "PING";
    case FrameType::pong:
      return "PONG";
    case FrameType::error:
      return "ERROR";
  }
  return "UNKNOWN";
}

}  // namespace ferry::wan
