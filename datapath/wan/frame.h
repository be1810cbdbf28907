// WAN link frame codec: the wire format between the cloud edge and the datacenter edge (one TLS
// connection multiplexing every volume and many outstanding requests, completed out of order).
// Pure: no I/O, no allocation, any thread. Every byte from the peer is validated here once.
// Parsers answer ok | need_more | reject | fatal: reject = the frame is intact (both CRCs good)
// and skippable but breaks the rules, answer ERROR(protocol_error) for its request id;
// fatal = the stream cannot be trusted or resynchronised, drop the connection.
// Returned spans borrow the caller's input buffer and live as long as it does.
// Byte layout, limits and the protocol rules: datapath/wan/DESIGN.md ("Wire format").
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "datapath/result.h"

namespace ferry::wan {

enum class ParseStatus : uint8_t { ok, need_more, reject, fatal };

// ---------------------------------------------------------------- constants

inline constexpr uint16_t kFrameMagic = 0xFE77;
inline constexpr size_t kFrameHeaderBytes = 40;
inline constexpr uint16_t kProtocolVersion = 1;  // the only version this build speaks

// Hard bounds, whatever the peer announces. A data frame's decoded length (length_bytes of a
// raw, compressed or dedup frame) never exceeds kChunkBytesMax, so a decoder's output is bounded.
inline constexpr uint32_t kFramePayloadBytesMax = 256 * 1024;
inline constexpr uint32_t kFramePayloadBytesMin = 4096;  // smallest limit a peer may announce
inline constexpr uint32_t kChunkBytesMax = kFramePayloadBytesMax;
inline constexpr uint32_t kRequestBytesMax = 32u
                                             << 20;  // READ, WRITE request, ZERO run, BLOCK_STATUS
inline constexpr size_t kVolumeNameBytesMax = 255;
inline constexpr size_t kErrorMessageBytesMax = 256;
inline constexpr uint16_t kVolumeIdMax = 0xFFFF;                           // 0 = no volume
inline constexpr size_t kContentHashBytes = 32;                            // SHA-256
inline constexpr size_t kAccessMapEntriesMax = kFramePayloadBytesMax / 8;  // one reply frame

enum class FrameType : uint8_t {
  hello = 0x01,          // client → server, first frame: versions, capabilities, limits
  hello_ack = 0x02,      // server → client: the negotiated link
  open_volume = 0x03,    // payload: volume name
  volume_info = 0x04,    // reply: header volume_id = assigned id, payload VolumeInfo
  close_volume = 0x05,   // the client is done with volume_id: release its lease
  volume_closed = 0x06,  // reply: released
  read = 0x10,           // offset, length; no payload
  read_data = 0x11,      // one chunk of a READ's data (raw / zero / compressed / dedup)
  read_done = 0x12,      // the READ completed successfully (after all its READ_DATA)
  write = 0x13,          // one chunk of a write request; the last one carries kFlagFinal
  write_ack = 0x14,      // the whole write request is applied (durable if kFlagFua)
  flush = 0x15,          // make every acknowledged write of the volume durable
  flush_ack = 0x16,
  block_status = 0x17,        // offset, length: allocation of a range
  block_status_reply = 0x18,  // payload: extents from offset
  access_map = 0x19,          // the volume's learned access map (IoOp::access_map)
  access_map_reply = 0x1A,    // payload: 0..32768 big-endian u64 chunk offsets, in first-read order
  epoch_commit = 0x1B,     // commit the volume's open epoch (kCapEpochs); payload EpochCommitBody
  epoch_committed = 0x1C,  // reply: the epoch is durable on the datacenter edge (redo log)
  ping = 0x20,             // keepalive; request_id is the token PONG echoes
  pong = 0x21,
  error = 0x30,  // ends request request_id (0: the connection) with a WireError
};

// Header flags. ZERO, COMPRESSED and DEDUP_REF are mutually exclusive data encodings.
inline constexpr uint8_t kFlagZero = 0x01;        // a run of zeroes of length_bytes, no payload
inline constexpr uint8_t kFlagCompressed = 0x02;  // payload compressed with the header's algo
inline constexpr uint8_t kFlagDedupRef = 0x04;    // payload = content hash the receiver has seen
inline constexpr uint8_t kFlagFinal = 0x08;       // WRITE: last frame of the request
inline constexpr uint8_t kFlagFua = 0x10;         // WRITE: durable before WRITE_ACK
inline constexpr uint8_t kFlagNoDedup = 0x20;     // READ: never answer with a DEDUP_REF
inline constexpr uint8_t kFlagEpoch = 0x40;  // WRITE: part of the volume's open epoch (kCapEpochs)
inline constexpr uint8_t kDataEncodingFlags = kFlagZero | kFlagCompressed | kFlagDedupRef;

// Scheduling class, most urgent first. Responses carry their request's class.
enum class Priority : uint8_t { demand_read = 0, write_back = 1, prefetch = 2, background = 3 };
inline constexpr uint8_t kPriorityCount = 4;

// Payload compression; the numbers are on the wire.
enum class CompressAlgo : uint8_t { none = 0, lz4 = 1, zstd = 2, igzip = 3 };
inline constexpr uint8_t kCompressAlgoCount = 4;

// HELLO capability bits. Unknown bits are ignored (the ack carries the intersection).
inline constexpr uint32_t kCapLz4 = 1u << 0;
inline constexpr uint32_t kCapZstd = 1u << 1;
inline constexpr uint32_t kCapIgzip = 1u << 2;
inline constexpr uint32_t kCapDedupSha256 = 1u << 3;  // DEDUP_REF frames, SHA-256 hashes
inline constexpr uint32_t kCapBlockStatus = 1u << 4;  // BLOCK_STATUS
inline constexpr uint32_t kCapWrite = 1u << 5;        // WRITE / FLUSH (write-back)
// Write-back epochs: WRITE with kFlagEpoch is held aside in the datacenter edge's redo log until
// EPOCH_COMMIT, which makes the epoch atomic on the source (journal/DESIGN.md "Epochs"). Offered
// by a datacenter edge with a redo log (--redo-dir); a cloud edge with a journal requires it.
inline constexpr uint32_t kCapEpochs = 1u << 6;
inline constexpr uint32_t kCapsKnown = (1u << 7) - 1;
uint32_t capability_for(CompressAlgo a) noexcept;  // 0 for none

// ---------------------------------------------------------------- header

struct FrameHeader {
  FrameType type = FrameType::ping;
  uint8_t flags = 0;
  Priority priority = Priority::demand_read;
  CompressAlgo algo = CompressAlgo::none;  // only with kFlagCompressed
  uint16_t volume_id = 0;
  uint64_t request_id = 0;
  uint64_t offset_bytes = 0;  // byte offset in the volume (data, READ, BLOCK_STATUS)
  uint32_t length_bytes = 0;  // bytes of the volume this frame covers (decoded length)
  uint32_t payload_bytes = 0;
  uint32_t payload_crc = 0;  // CRC32C of the payload; 0 when there is none
};

// Standard CRC32C (Castagnoli, reflected, init and xorout 0xFFFFFFFF; "123456789" →
// 0xE3069283) computed with ISA-L. `prev` chains: crc32c(b, crc32c(a)) == crc32c(a ++ b).
uint32_t crc32c(std::span<const uint8_t> data, uint32_t prev = 0) noexcept;

// Writes the 40-byte header. The first form takes payload_bytes/payload_crc from the header
// (the caller computed them, e.g. over a gathered payload); the second computes them from
// `payload`. Asserts the header is one the parser would accept (our own frames are never
// malformed) and payload_bytes <= kFramePayloadBytesMax.
void encode_header(uint8_t out[kFrameHeaderBytes], const FrameHeader& h) noexcept;
void encode_header(uint8_t out[kFrameHeaderBytes], FrameHeader h,
                   std::span<const uint8_t> payload) noexcept;

struct HeaderParse {
  ParseStatus status = ParseStatus::need_more;
  FrameHeader header;
  const char* why = nullptr;  // short static text when not ok
};
// The header at the front of `in` (need_more below 40 bytes). Fatal: bad magic, header CRC
// mismatch, payload_bytes > payload_bytes_max. Reject: an intact header that breaks a rule of
// its type (only meaningful once its payload is skipped: see parse_frame). Lets a receiver learn
// the payload size and pick a buffer before the payload arrives.
HeaderParse parse_header(std::span<const uint8_t> in, uint32_t payload_bytes_max) noexcept;

struct FrameParse {
  ParseStatus status = ParseStatus::need_more;
  FrameHeader header;                       // when ok or reject
  std::span<const uint8_t> payload;         // borrowed from the input, when ok
  size_t frame_bytes = 0;                   // header + payload to consume, when ok or reject
  size_t bytes_needed = kFrameHeaderBytes;  // when need_more: the whole frame needs this many
  const char* why = nullptr;
};
// One whole frame at the front of `in`: header checks as parse_header, then need_more until the
// payload is there, fatal on a payload CRC mismatch, then every rule of the frame's type
// (flags, priority, algo, volume id, lengths, payload shape and body fields): reject when one
// is broken. `payload_bytes_max` is the negotiated limit (kFramePayloadBytesMax before HELLO).
// Reads nothing past in.size(), allocates nothing.
FrameParse parse_frame(std::span<const uint8_t> in, uint32_t payload_bytes_max) noexcept;

// The rules of parse_frame for an already framed, CRC-checked frame: nullptr when valid, else
// why not. Exposed for the encoder's assertions and for tests.
const char* validate_frame(const FrameHeader& h, std::span<const uint8_t> payload) noexcept;

// ---------------------------------------------------------------- bodies

// HELLO / HELLO_ACK payload (32 bytes). In HELLO, [version_min, version_max] is what the client
// speaks, the limits what it accepts. HELLO_ACK carries the outcome: version_min == version_max
// == the chosen version, the common capabilities, min of the limits, and the session id.
inline constexpr size_t kHelloBytes = 32;
struct Hello {
  uint16_t version_min = kProtocolVersion;
  uint16_t version_max = kProtocolVersion;
  uint32_t capabilities = 0;
  uint32_t frame_payload_bytes_max = kFramePayloadBytesMax;  // what the sender accepts
  uint32_t requests_max = 1024;  // outstanding requests the sender accepts, >= 1
  uint64_t session_id = 0;       // HELLO: 0 new / previous id to resume; ACK: the session
};
void encode_hello(uint8_t out[kHelloBytes], const Hello& h) noexcept;
Result<Hello> parse_hello(std::span<const uint8_t> payload) noexcept;
// The server's answer to a client HELLO: Errc::unsupported when no common version.
Result<Hello> negotiate(const Hello& client, const Hello& server, uint64_t session_id) noexcept;

// VOLUME_INFO payload (24 bytes).
inline constexpr size_t kVolumeInfoBytes = 24;
inline constexpr uint32_t kVolumeAllocationKnown = 1u << 0;  // BLOCK_STATUS answers from the source
inline constexpr uint32_t kVolumeReadOnly = 1u << 1;
inline constexpr uint32_t kVolumeCanFlush = 1u << 2;
inline constexpr uint32_t kVolumeFlagsKnown = (1u << 3) - 1;
struct VolumeInfo {
  uint64_t size_bytes = 0;
  uint32_t block_bytes = 512;  // logical block size: power of two, 512 .. 64 KiB
  uint32_t flags = 0;
  uint32_t chunk_bytes = 65536;  // preferred data frame size: power of two, >= block_bytes
};
void encode_volume_info(uint8_t out[kVolumeInfoBytes], const VolumeInfo& v) noexcept;
Result<VolumeInfo> parse_volume_info(std::span<const uint8_t> payload) noexcept;

// EPOCH_COMMIT payload (24 bytes): the writer's epoch stream (its journal's nonce), the epoch id
// (increasing within a stream, never 0) and the sum of length_bytes of the epoch's WRITE frames:
// a receiver that logged another amount answers ERROR(io_error) and discards the open epoch (the
// writer ships it again). An id not above the last committed one of the same stream is already
// contained in the image: its writes are dropped and the commit acknowledged.
inline constexpr size_t kEpochCommitBytes = 24;
struct EpochCommitBody {
  uint64_t stream = 0;
  uint64_t epoch_id = 0;
  uint64_t data_bytes = 0;
};
void encode_epoch_commit(uint8_t out[kEpochCommitBytes], const EpochCommitBody& b) noexcept;
Result<EpochCommitBody> parse_epoch_commit(std::span<const uint8_t> payload) noexcept;

// OPEN_VOLUME payload: the name, 1..255 bytes of printable ASCII (0x21..0x7e).
Result<std::string_view> parse_volume_name(std::span<const uint8_t> payload) noexcept;

// BLOCK_STATUS_REPLY payload: 1..N extents of 8 bytes (length_bytes, flags), contiguous from the
// header's offset; their sum <= the requested length.
inline constexpr size_t kExtentBytes = 8;
inline constexpr uint32_t kExtentHole = 1u << 0;  // not allocated in the source
inline constexpr uint32_t kExtentZero = 1u << 1;  // reads as zeroes
struct Extent {
  uint32_t length_bytes = 0;
  uint32_t flags = 0;
};
void encode_extent(uint8_t out[kExtentBytes], Extent e) noexcept;
// i < payload.size() / kExtentBytes of a validated reply.
Extent extent_at(std::span<const uint8_t> payload, size_t i) noexcept;

// ERROR payload: code (u16), message length (u16), message (<= 256 bytes, printable ASCII).
// The codes are stable wire numbers; Errc maps to them in one table.
enum class WireError : uint16_t {
  io_error = 1,
  invalid_argument = 2,
  out_of_range = 3,
  not_found = 4,    // unknown volume
  unsupported = 5,  // unknown frame type / capability not negotiated / no common version
  busy = 6,         // too many outstanding requests: retry later
  no_space = 7,
  write_protected = 8,
  protocol_error = 9,  // a rejected frame
  auth_failed = 10,
  timed_out = 11,
  dedup_miss = 12,  // a DEDUP_REF the receiver cannot resolve: resend with kFlagNoDedup
  shutting_down = 13,
  medium_error = 14,
  lease_held = 15,  // OPEN_VOLUME: another cloud edge holds the volume; I/O: lease lost
};
WireError to_wire_error(Errc e) noexcept;
Errc from_wire_error(uint16_t code) noexcept;  // unknown codes → Errc::io_error

inline constexpr size_t kErrorHeadBytes = 4;
inline constexpr size_t kErrorBytesMax = kErrorHeadBytes + kErrorMessageBytesMax;
struct ErrorBody {
  uint16_t code = 0;
  std::string_view message;  // borrowed
};
// Returns the payload size (message truncated to 256 bytes; non-printable bytes become '?').
size_t encode_error(uint8_t out[kErrorBytesMax], WireError code, std::string_view message) noexcept;
Result<ErrorBody> parse_error(std::span<const uint8_t> payload) noexcept;

const char* to_string(FrameType t) noexcept;

}  // namespace ferry::wan
