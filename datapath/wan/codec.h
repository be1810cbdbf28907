// WAN link payload codec: what one chunk of volume data becomes on the wire. Zero detection
// (ISA-L), compression (lz4 / lz4hc, zstd, ISA-L igzip raw deflate) into a caller buffer with
// a bound, raw fallback when compression does not pay, exact-size decoding that a hostile peer
// cannot push past the output buffer, and the SHA-256 content hash used for dedup.
// No I/O. ChunkEncoder and ChunkDecoder each own their library contexts,
// allocated once by init(); one of each per reactor thread (they are not thread-safe), no
// allocation per chunk afterwards. Why these algorithms and levels: datapath/wan/DESIGN.md.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "datapath/result.h"
#include "datapath/wan/frame.h"

struct ZSTD_CCtx_s;
struct ZSTD_DCtx_s;
struct isal_zstream;
struct inflate_state;

namespace ferry::wan {

// Algorithm and level. Levels: lz4: <= 1 fast (negative = acceleration -level), 2..12 lz4hc
// (same lz4 block format on the wire); zstd: its levels (negative = fast modes); igzip: 0..3.
struct Compression {
  CompressAlgo algo = CompressAlgo::none;
  int level = 0;
};

// Compressed output is kept only when it saves at least 1/kKeepMarginDiv of the chunk (6.25 %):
// below that the receiver's decompression costs more than the bytes saved.
inline constexpr size_t kKeepMarginDiv = 16;
inline size_t compressed_keep_bytes_max(size_t raw_bytes) noexcept {
  return raw_bytes - raw_bytes / kKeepMarginDiv - 1;
}

// True when every byte is zero (ISA-L's vectorised check). Empty is zero.
bool is_zero(std::span<const uint8_t> data) noexcept;

enum class ChunkKind : uint8_t { zero, raw, compressed };

struct EncodedChunk {
  ChunkKind kind = ChunkKind::raw;
  CompressAlgo algo = CompressAlgo::none;  // when compressed
  std::span<const uint8_t> payload;        // empty (zero), the input (raw) or the caller's out
  uint8_t frame_flags() const noexcept {
    return kind == ChunkKind::zero         ? kFlagZero
           : kind == ChunkKind::compressed ? kFlagCompressed
                                           : 0;
  }
};

class ChunkEncoder {
 public:
  ChunkEncoder() noexcept = default;
  ~ChunkEncoder();
  ChunkEncoder(ChunkEncoder&& o) noexcept;
  ChunkEncoder& operator=(ChunkEncoder&& o) noexcept;
  ChunkEncoder(const ChunkEncoder&) = delete;
  ChunkEncoder& operator=(const ChunkEncoder&) = delete;

  // Allocates every context once (~0.7 MiB: lz4, lz4hc and igzip level-3 state); zstd's
  // workspace is sized on first use and grows once to the largest level used (0.3 MiB at
  // level 1, 0.65 MiB at 3, 1 MiB at 6).
  Result<void> init() noexcept;

  // One chunk (1 .. kChunkBytesMax bytes): zero → zero run; else compressed into `out` when that
  // saves the margin, else raw (payload = `in`, nothing copied). `out` needs at least
  // compressed_keep_bytes_max(in.size()) bytes. Compression::none skips compression.
  EncodedChunk encode(std::span<const uint8_t> in, std::span<uint8_t> out, Compression c) noexcept;

  // Compresses `in` into `out`, whole or not at all: the compressed size, or Errc::no_space
  // when it does not fit `out`, Errc::invalid_argument for a bad algorithm or level.
  Result<size_t> compress(std::span<const uint8_t> in, std::span<uint8_t> out,
                          Compression c) noexcept;

 private:
  void release() noexcept;
  void* lz4_state_ = nullptr;
  void* lz4hc_state_ = nullptr;
  ZSTD_CCtx_s* zstd_ = nullptr;
  isal_zstream* igzip_ = nullptr;
  uint8_t* igzip_level_buf_ = nullptr;
};

class ChunkDecoder {
 public:
  ChunkDecoder() noexcept = default;
  ~ChunkDecoder();
  ChunkDecoder(ChunkDecoder&& o) noexcept;
  ChunkDecoder& operator=(ChunkDecoder&& o) noexcept;
  ChunkDecoder(const ChunkDecoder&) = delete;
  ChunkDecoder& operator=(const ChunkDecoder&) = delete;

  Result<void> init() noexcept;

  // Decompresses `in` into exactly out.size() bytes (the frame's length_bytes, at most
  // kChunkBytesMax). Errc::protocol_error unless the input is one well-formed stream of `algo`
  // that decodes to exactly out.size() bytes with nothing left over. Never writes outside `out`
  // and never allocates, whatever `in` holds. Errc::invalid_argument for a bad algo or size.
  Result<void> decompress(CompressAlgo algo, std::span<const uint8_t> in,
                          std::span<uint8_t> out) noexcept;

  // A data frame's payload into `out` (out.size() == header length_bytes): raw is copied, zero
  // is filled, compressed is decompressed. DEDUP_REF frames are resolved by the caller (cache)
  // and give Errc::invalid_argument here.
  Result<void> decode(const FrameHeader& h, std::span<const uint8_t> payload,
                      std::span<uint8_t> out) noexcept;

 private:
  void release() noexcept;
  ZSTD_DCtx_s* zstd_ = nullptr;
  inflate_state* inflate_ = nullptr;
};

// ---------------------------------------------------------------- choosing a level
// The link compresses with whatever keeps the most data per second flowing: a level whose
// compressor (within the CPU budget) is slower than the link would starve it, one that is
// faster than needed wastes bytes. Effective raw throughput of a level is
//   T = min(cpu_budget_cores * compress_bytes_per_s, ratio * link_bytes_per_s)
// and of sending raw T = link_bytes_per_s. Among the choices within 5 % of the highest T the
// cheapest in CPU wins (raw being the cheapest): a level that only just keeps up leaves no
// headroom for TLS, NBD and the VM's I/O on the same cores, and a contended core would then
// starve the link. So a link-bound level is replaced by a stronger one only when that moves
// clearly more data, i.e. the best ratio the CPU budget sustains. The sender feeds in the link
// rate (bandwidth cap, or the measured drain rate of the socket) and, when it has them, its own
// running estimates of ratio and speed for the data being sent; until then kCompressionLadder.
struct LevelEstimate {
  Compression compression;
  double ratio = 1;                 // raw bytes / wire bytes for non-zero chunks
  double compress_bytes_per_s = 0;  // raw bytes per CPU second, one core
};

// Measured on the lib image (the slower, more compressible set): datapath/wan/DESIGN.md,
// "Compression: measured and chosen". igzip is negotiable but not on the ladder: at the same
// ratio as zstd it decompresses 1.5-2.5x slower on the receiving edge.
inline constexpr LevelEstimate kCompressionLadder[] = {
    {{CompressAlgo::zstd, 6}, 3.45, 80e6},
    {{CompressAlgo::zstd, 3}, 3.23, 235e6},
    {{CompressAlgo::zstd, -1}, 2.79, 338e6},
    {{CompressAlgo::lz4, 1}, 2.26, 468e6},
};
inline constexpr Compression kDefaultCompression{CompressAlgo::zstd, 3};
inline constexpr double kDefaultCompressCpuCores = 0.5;
inline constexpr double kAssumedLinkBytesPerS = 100e6 / 8;  // until the link rate is known

// `capabilities`: the negotiated HELLO bits; levels of algorithms the peer lacks are skipped.
// A link rate <= 0 (not known yet) counts as kAssumedLinkBytesPerS, which gives
// kDefaultCompression. Returns Compression::none when sending raw moves the most data.
Compression choose_compression(double link_bytes_per_s, double cpu_budget_cores,
                               uint32_t capabilities,
                               std::span<const LevelEstimate> ladder = kCompressionLadder) noexcept;

// SHA-256 of a chunk, for "you have seen this content" (kFlagDedupRef). Collision resistance
// matters: references cross volumes, so a forgeable hash would let one tenant's guest read
// another's data. With SHA-NI it is the fastest cryptographic hash OpenSSL offers here and
// allocates nothing (DESIGN.md, "Content hash").
using ContentHash = std::array<uint8_t, kContentHashBytes>;
ContentHash content_hash(std::span<const uint8_t> data) noexcept;

// Hash-table hasher for content hashes: SHA-256 bytes are already uniform, take the first word.
struct ContentHashHasher {
  size_t operator()(const ContentHash& h) const noexcept {
    size_t v;
    static_assert(sizeof v <= kContentHashBytes);
    std::memcpy(&v, h.data(), sizeof v);
    return v;
  }
};

}  // namespace ferry::wan
