// libFuzzer target: the WAN frame parser and the payload decoder over hostile bytes.
// The first input byte picks a mode:
//   0 stream as given (bad magic / CRC paths), 1 stream with every frame's magic and CRCs fixed
//   up first (so the fuzzer reaches the type rules, bodies and decompression), 2 one compressed
//   payload decoded straight (algo, claimed size, bytes), 3 encode → decode round trip.
// Every accepted frame must re-encode to the same header bytes, its body must parse, and its
// data must decode into exactly length_bytes: guard bytes after the output catch any write past
// it (the compression libraries are not instrumented). Single-threaded, no I/O.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "datapath/endian.h"
#include "datapath/wan/codec.h"
#include "datapath/wan/frame.h"

using namespace ferry;
using namespace ferry::wan;

namespace {

constexpr size_t kGuardBytes = 64;
constexpr uint8_t kGuard = 0xA5;

ChunkDecoder& decoder() {
  static ChunkDecoder* d = [] {
    auto* x = new ChunkDecoder;
    if (!x->init()) std::abort();
    return x;
  }();
  return *d;
}

ChunkEncoder& encoder() {
  static ChunkEncoder* e = [] {
    auto* x = new ChunkEncoder;
    if (!x->init()) std::abort();
    return x;
  }();
  return *e;
}

uint8_t* out_buffer() {
  static auto* b = new uint8_t[kChunkBytesMax + 1 + kGuardBytes];  // +1: the "one byte long" probe
  return b;
}

void check_guard(const uint8_t* out, size_t n) {
  for (size_t i = 0; i < kGuardBytes; ++i) {
    if (out[n + i] != kGuard) __builtin_trap();
  }
}

// Decompresses into exactly `n` bytes followed by guard bytes; traps on a write past them.
bool guarded_decompress(CompressAlgo a, std::span<const uint8_t> in, size_t n) {
  uint8_t* out = out_buffer();
  std::memset(out + n, kGuard, kGuardBytes);
  Result<void> r = decoder().decompress(a, in, {out, n});
  check_guard(out, n);
  return r.ok();
}

void check_frame(const FrameParse& p, std::span<const uint8_t> in) {
  const FrameHeader& h = p.header;
  if (p.frame_bytes != kFrameHeaderBytes + h.payload_bytes || p.frame_bytes > in.size())
    __builtin_trap();
  if (p.payload.data() != in.data() + kFrameHeaderBytes) __builtin_trap();
  if (validate_frame(h, p.payload) != nullptr) __builtin_trap();
  // Canonical: an accepted header re-encodes to the same bytes.
  uint8_t again[kFrameHeaderBytes];
  encode_header(again, h);
  if (std::memcmp(again, in.data(), kFrameHeaderBytes) != 0) __builtin_trap();
  switch (h.type) {
    case FrameType::hello:
    case FrameType::hello_ack: {
      Result<Hello> c = parse_hello(p.payload);
      if (!c) __builtin_trap();
      Result<Hello> a = negotiate(*c, Hello{}, 1);
      if (a && (a->frame_payload_bytes_max > kFramePayloadBytesMax ||
                a->frame_payload_bytes_max < kFramePayloadBytesMin))
        __builtin_trap();
      break;
    }
    case FrameType::open_volume:
      if (!parse_volume_name(p.payload)) __builtin_trap();
      break;
    case FrameType::volume_info:
      if (!parse_volume_info(p.payload)) __builtin_trap();
      break;
    case FrameType::error: {
      Result<ErrorBody> e = parse_error(p.payload);
      if (!e || e->message.size() > kErrorMessageBytesMax) __builtin_trap();
      (void)from_wire_error(e->code);
      break;
    }
    case FrameType::block_status_reply: {
      uint64_t sum = 0;
      for (size_t i = 0; i < p.payload.size() / kExtentBytes; ++i)
        sum += extent_at(p.payload, i).length_bytes;
      if (sum != h.length_bytes) __builtin_trap();
      break;
    }
    case FrameType::read_data:
    case FrameType::write: {
      if (h.length_bytes == 0 || h.length_bytes > kRequestBytesMax) __builtin_trap();
      const uint8_t enc = h.flags & kDataEncodingFlags;
      if (enc == kFlagZero) break;  // no payload, nothing to decode
      if (h.length_bytes > kChunkBytesMax) __builtin_trap();
      if (enc == kFlagDedupRef) {
        if (p.payload.size() != kContentHashBytes) __builtin_trap();
        break;
      }
      uint8_t* out = out_buffer();
      std::memset(out + h.length_bytes, kGuard, kGuardBytes);
      Result<void> r = decoder().decode(h, p.payload, {out, h.length_bytes});
      check_guard(out, h.length_bytes);
      if (enc == 0 && !r) __builtin_trap();  // raw always decodes
      break;
    }
    default:
      break;
  }
}

void parse_stream(std::span<const uint8_t> in, uint32_t limit) {
  while (true) {
    const FrameParse p = parse_frame(in, limit);
    const HeaderParse hp = parse_header(in, limit);
    if (p.status == ParseStatus::need_more) {
      if (p.bytes_needed <= in.size() || p.bytes_needed > kFrameHeaderBytes + limit)
        __builtin_trap();
      if (in.size() >= kFrameHeaderBytes && hp.status == ParseStatus::need_more) __builtin_trap();
      return;
    }
    if (p.status == ParseStatus::fatal) {
      if (p.why == nullptr) __builtin_trap();
      return;
    }
    // ok or reject: the header was sound and the whole frame is in the buffer.
    if (hp.status == ParseStatus::fatal || hp.status == ParseStatus::need_more) __builtin_trap();
    if (hp.status == ParseStatus::reject && p.status != ParseStatus::reject) __builtin_trap();
    if (p.status == ParseStatus::ok) {
      check_frame(p, in);
    } else if (p.why == nullptr || p.frame_bytes > in.size() || p.frame_bytes < kFrameHeaderBytes) {
      __builtin_trap();
    }
    in = in.subspan(p.frame_bytes);
  }
}

// Makes every frame's magic and CRCs right, so parsing gets past them.
void fix_up(std::vector<uint8_t>& b) {
  size_t pos = 0;
  while (pos + kFrameHeaderBytes <= b.size()) {
    uint8_t* p = b.data() + pos;
    store_be16(p, kFrameMagic);
    const uint32_t payload = load_be32(p + 28);
    const size_t avail = b.size() - pos - kFrameHeaderBytes;
    const bool whole = payload <= avail;
    if (whole) store_be32(p + 32, crc32c({p + kFrameHeaderBytes, payload}));
    store_be32(p + 36, crc32c({p, 36}));
    if (!whole) return;
    pos += kFrameHeaderBytes + payload;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t mode = data[0];
  std::span<const uint8_t> in(data + 1, size - 1);
  const uint32_t limit = (mode & 0x10) ? 65536 : kFramePayloadBytesMax;
  switch (mode & 3) {
    case 0:
      parse_stream(in, limit);
      break;
    case 1: {
      std::vector<uint8_t> b(in.begin(), in.end());
      fix_up(b);
      parse_stream(b, limit);
      break;
    }
    case 2: {
      if (in.size() < 4) return 0;
      const auto algo = static_cast<CompressAlgo>(in[0] % kCompressAlgoCount);
      const size_t n = 1 + load_be24(in.data() + 1) % kChunkBytesMax;
      if (algo == CompressAlgo::none) return 0;
      (void)guarded_decompress(algo, in.subspan(4), n);
      break;
    }
    case 3: {
      if (in.size() < 3 || in.size() - 2 > kChunkBytesMax) return 0;
      static const Compression kChoices[] = {{CompressAlgo::none, 0},  {CompressAlgo::lz4, 1},
                                             {CompressAlgo::lz4, 9},   {CompressAlgo::zstd, 1},
                                             {CompressAlgo::zstd, -3}, {CompressAlgo::igzip, 0},
                                             {CompressAlgo::igzip, 1}, {CompressAlgo::igzip, 3}};
      const Compression c = kChoices[in[0] % 8];
      const std::span<const uint8_t> chunk = in.subspan(2);
      static auto* out = new uint8_t[kChunkBytesMax];
      const EncodedChunk e =
          encoder().encode(chunk, {out, compressed_keep_bytes_max(chunk.size())}, c);
      switch (e.kind) {
        case ChunkKind::zero:
          if (!is_zero(chunk)) __builtin_trap();
          break;
        case ChunkKind::raw:
          if (e.payload.data() != chunk.data() || e.payload.size() != chunk.size())
            __builtin_trap();
          break;
        case ChunkKind::compressed: {
          if (e.payload.size() > compressed_keep_bytes_max(chunk.size())) __builtin_trap();
          if (!guarded_decompress(c.algo, e.payload, chunk.size())) __builtin_trap();
          if (std::memcmp(out_buffer(), chunk.data(), chunk.size()) != 0) __builtin_trap();
          // One byte short or long must be refused.
          if (chunk.size() > 1 && guarded_decompress(c.algo, e.payload, chunk.size() - 1))
            __builtin_trap();
          if (guarded_decompress(c.algo, e.payload, chunk.size() + 1)) __builtin_trap();
          break;
        }
      }
      (void)content_hash(chunk);
      break;
    }
  }
  return 0;
}
