// WAN link payload codec (see codec.h). Contexts are allocated in init() and reused; the
// per-chunk paths allocate nothing. Decoders treat every input byte as hostile.
#include "datapath/wan/codec.h"

#include <isa-l.h>
#include <lz4.h>
#include <lz4hc.h>
#define OPENSSL_SUPPRESS_DEPRECATED  // SHA256_Init/Update/Final: see content_hash()
#include <openssl/sha.h>
#include <zstd.h>
#include <zstd_errors.h>

#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include "datapath/assert.h"

namespace ferry::wan {
namespace {

constexpr size_t kAlign = 64;

void* alloc_aligned(size_t bytes) noexcept {
  const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  return std::aligned_alloc(kAlign, rounded);
}

constexpr uint32_t igzip_level_buf_bytes() noexcept {
  uint32_t n = ISAL_DEF_LVL1_DEFAULT;
  if (ISAL_DEF_LVL2_DEFAULT > n) n = ISAL_DEF_LVL2_DEFAULT;
  if (ISAL_DEF_LVL3_DEFAULT > n) n = ISAL_DEF_LVL3_DEFAULT;
  return n;
}

uint32_t igzip_level_buf_for(int level) noexcept {
  switch (level) {
    case 1:
      return ISAL_DEF_LVL1_DEFAULT;
    case 2:
      return ISAL_DEF_LVL2_DEFAULT;
    case 3:
      return ISAL_DEF_LVL3_DEFAULT;
    default:
      return 0;
  }
}

}  // namespace

bool is_zero(std::span<const uint8_t> data) noexcept {
  if (data.empty()) return true;
  return isal_zero_detect(const_cast<uint8_t*>(data.data()), data.size()) == 0;
}

// ---------------------------------------------------------------- encoder

ChunkEncoder::~ChunkEncoder() { release(); }

ChunkEncoder::ChunkEncoder(ChunkEncoder&& o) noexcept { *this = std::move(o); }

ChunkEncoder& ChunkEncoder::operator=(ChunkEncoder&& o) noexcept {
  if (this != &o) {
    release();
    lz4_state_ = std::exchange(o.lz4_state_, nullptr);
    lz4hc_state_ = std::exchange(o.lz4hc_state_, nullptr);
    zstd_ = std::exchange(o.zstd_, nullptr);
    igzip_ = std::exchange(o.igzip_, nullptr);
    igzip_level_buf_ = std::exchange(o.igzip_level_buf_, nullptr);
  }
  return *this;
}

void ChunkEncoder::release() noexcept {
  std::free(lz4_state_);
  std::free(lz4hc_state_);
  ZSTD_freeCCtx(zstd_);
  std::free(igzip_);
  std::free(igzip_level_buf_);
  lz4_state_ = lz4hc_state_ = nullptr;
  zstd_ = nullptr;
  igzip_ = nullptr;
  igzip_level_buf_ = nullptr;
}

Result<void> ChunkEncoder::init() noexcept {
  release();
  lz4_state_ = alloc_aligned(static_cast<size_t>(LZ4_sizeofState()));
  lz4hc_state_ = alloc_aligned(static_cast<size_t>(LZ4_sizeofStateHC()));
  zstd_ = ZSTD_createCCtx();
  igzip_ = static_cast<isal_zstream*>(alloc_aligned(sizeof(isal_zstream)));
  igzip_level_buf_ = static_cast<uint8_t*>(alloc_aligned(igzip_level_buf_bytes()));
  if (!lz4_state_ || !lz4hc_state_ || !zstd_ || !igzip_ || !igzip_level_buf_) {
    release();
    return Errc::no_memory;
  }
  return {};
}

Result<size_t> ChunkEncoder::compress(std::span<const uint8_t> in, std::span<uint8_t> out,
                                      Compression c) noexcept {
  FERRY_ASSERT(zstd_ != nullptr);  // init() succeeded
  if (in.empty() || in.size() > kChunkBytesMax) return Errc::invalid_argument;
  if (out.empty()) return Errc::no_space;
  const int src_bytes = static_cast<int>(in.size());
  const size_t cap = out.size() < (size_t{1} << 30) ? out.size() : (size_t{1} << 30);
  const auto* src = reinterpret_cast<const char*>(in.data());
  auto* dst = reinterpret_cast<char*>(out.data());
  switch (c.algo) {
    case CompressAlgo::none:
      return Errc::invalid_argument;
    case CompressAlgo::lz4: {
      int n = 0;
      if (c.level <= 1) {
        const int accel = c.level < 0 ? -c.level : 1;
        n = LZ4_compress_fast_extState(lz4_state_, src, dst, src_bytes, static_cast<int>(cap),
                                       accel);
      } else if (c.level <= LZ4HC_CLEVEL_MAX) {
        n = LZ4_compress_HC_extStateHC(lz4hc_state_, src, dst, src_bytes, static_cast<int>(cap),
                                       c.level);
      } else {
        return Errc::invalid_argument;
      }
      if (n <= 0) return Errc::no_space;
      return static_cast<size_t>(n);
    }
    case CompressAlgo::zstd: {
      if (c.level < ZSTD_minCLevel() || c.level > ZSTD_maxCLevel()) return Errc::invalid_argument;
      const size_t n = ZSTD_compressCCtx(zstd_, out.data(), cap, in.data(), in.size(), c.level);
      if (ZSTD_isError(n)) {
        return ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall ? Errc::no_space
                                                                   : Errc::invalid_argument;
      }
      return n;
    }
    case CompressAlgo::igzip: {
      if (c.level < 0 || c.level > ISAL_DEF_MAX_LEVEL) return Errc::invalid_argument;
      isal_zstream* s = igzip_;
      isal_deflate_stateless_init(s);
      s->next_in = const_cast<uint8_t*>(in.data());
      s->avail_in = static_cast<uint32_t>(in.size());
      s->next_out = out.data();
      s->avail_out = static_cast<uint32_t>(cap);
      s->level = static_cast<uint32_t>(c.level);
      s->level_buf = c.level > 0 ? igzip_level_buf_ : nullptr;
      s->level_buf_size = igzip_level_buf_for(c.level);
      s->end_of_stream = 1;
      s->flush = NO_FLUSH;
      s->gzip_flag = 0;  // raw deflate: the frame CRC already covers the payload
      const int rc = isal_deflate_stateless(s);
      if (rc == STATELESS_OVERFLOW) return Errc::no_space;
      if (rc != COMP_OK || s->avail_in != 0) return Errc::invalid_argument;
      return size_t{s->total_out};
    }
  }
  return Errc::invalid_argument;
}

EncodedChunk ChunkEncoder::encode(std::span<const uint8_t> in, std::span<uint8_t> out,
                                  Compression c) noexcept {
  FERRY_ASSERT(!in.empty() && in.size() <= kChunkBytesMax);
  EncodedChunk e;
  if (is_zero(in)) {
    e.kind = ChunkKind::zero;
    return e;
  }
  e.kind = ChunkKind::raw;
  e.payload = in;
  const size_t keep_max = compressed_keep_bytes_max(in.size());
  if (c.algo == CompressAlgo::none || in.size() < kKeepMarginDiv) return e;
  FERRY_ASSERT(out.size() >= keep_max);
  // Bounding the output makes the compressor give up as soon as the result cannot pay.
  Result<size_t> n = compress(in, out.first(keep_max), c);
  if (!n) {
    FERRY_ASSERT(n.error() == Errc::no_space);  // a bad Compression is a caller bug
    return e;
  }
  e.kind = ChunkKind::compressed;
  e.algo = c.algo;
  e.payload = out.first(*n);
  return e;
}

// ---------------------------------------------------------------- decoder

ChunkDecoder::~ChunkDecoder() { release(); }

ChunkDecoder::ChunkDecoder(ChunkDecoder&& o) noexcept { *this = std::move(o); }

ChunkDecoder& ChunkDecoder::operator=(ChunkDecoder&& o) noexcept {
  if (this != &o) {
    release();
    zstd_ = std::exchange(o.zstd_, nullptr);
    inflate_ = std::exchange(o.inflate_, nullptr);
  }
  return *this;
}

void ChunkDecoder::release() noexcept {
  ZSTD_freeDCtx(zstd_);
  std::free(inflate_);
  zstd_ = nullptr;
  inflate_ = nullptr;
}

Result<void> ChunkDecoder::init() noexcept {
  release();
  zstd_ = ZSTD_createDCtx();
  inflate_ = static_cast<inflate_state*>(alloc_aligned(sizeof(inflate_state)));
  if (!zstd_ || !inflate_) {
    release();
    return Errc::no_memory;
  }
  // One-shot decoding uses the output as its window and allocates nothing; the cap is a second
  // fence should a later change switch to streaming.
  if (ZSTD_isError(ZSTD_DCtx_setParameter(zstd_, ZSTD_d_windowLogMax, 18))) {
    release();
    return Errc::no_memory;
  }
  return {};
}

Result<void> ChunkDecoder::decompress(CompressAlgo algo, std::span<const uint8_t> in,
                                      std::span<uint8_t> out) noexcept {
  FERRY_ASSERT(zstd_ != nullptr);  // init() succeeded
  if (out.empty() || out.size() > kChunkBytesMax) return Errc::invalid_argument;
  if (in.empty() || in.size() > kFramePayloadBytesMax) return Errc::protocol_error;
  switch (algo) {
    case CompressAlgo::none:
      return Errc::invalid_argument;
    case CompressAlgo::lz4: {
      // Safe decoder: bounds-checked against both buffers; the block must end exactly at
      // in.size().
      const int n = LZ4_decompress_safe(reinterpret_cast<const char*>(in.data()),
                                        reinterpret_cast<char*>(out.data()),
                                        static_cast<int>(in.size()), static_cast<int>(out.size()));
      if (n < 0 || static_cast<size_t>(n) != out.size()) return Errc::protocol_error;
      return {};
    }
    case CompressAlgo::zstd: {
      // Exactly one frame, declaring exactly out.size() bytes, nothing after it.
      if (ZSTD_findFrameCompressedSize(in.data(), in.size()) != in.size())
        return Errc::protocol_error;
      if (ZSTD_getFrameContentSize(in.data(), in.size()) != out.size()) return Errc::protocol_error;
      const size_t n = ZSTD_decompressDCtx(zstd_, out.data(), out.size(), in.data(), in.size());
      if (ZSTD_isError(n) || n != out.size()) return Errc::protocol_error;
      return {};
    }
    case CompressAlgo::igzip: {
      inflate_state* s = inflate_;
      isal_inflate_init(s);
      s->next_in = const_cast<uint8_t*>(in.data());
      s->avail_in = static_cast<uint32_t>(in.size());
      s->next_out = out.data();
      s->avail_out = static_cast<uint32_t>(out.size());
      s->crc_flag = ISAL_DEFLATE;
      s->hist_bits = 0;
      const int rc = isal_inflate_stateless(s);
      if (rc != ISAL_DECOMP_OK || s->block_state != ISAL_BLOCK_FINISH) return Errc::protocol_error;
      if (s->total_out != out.size() || s->avail_in != 0) return Errc::protocol_error;
      return {};
    }
  }
  return Errc::invalid_argument;
}

Result<void> ChunkDecoder::decode(const FrameHeader& h, std::span<const uint8_t> payload,
                                  std::span<uint8_t> out) noexcept {
  if (out.size() != h.length_bytes || payload.size() != h.payload_bytes)
    return Errc::invalid_argument;
  switch (h.flags & kDataEncodingFlags) {
    case 0:
      if (payload.size() != out.size()) return Errc::protocol_error;
      std::memcpy(out.data(), payload.data(), out.size());
      return {};
    case kFlagZero:
      std::memset(out.data(), 0, out.size());
      return {};
    case kFlagCompressed:
      return decompress(h.algo, payload, out);
    default:
      return Errc::invalid_argument;
  }
}

// ---------------------------------------------------------------- choosing a level

Compression choose_compression(double link_bytes_per_s, double cpu_budget_cores,
                               uint32_t capabilities,
                               std::span<const LevelEstimate> ladder) noexcept {
  if (!(link_bytes_per_s > 0)) link_bytes_per_s = kAssumedLinkBytesPerS;
  auto throughput = [&](const LevelEstimate& e) {
    const double cpu = cpu_budget_cores * e.compress_bytes_per_s;
    const double link = e.ratio * link_bytes_per_s;
    return cpu < link ? cpu : link;
  };
  auto usable = [&](const LevelEstimate& e) {
    const uint32_t cap = capability_for(e.compression.algo);
    return cap != 0 && (capabilities & cap) && e.ratio > 1 && e.compress_bytes_per_s > 0;
  };
  double best = link_bytes_per_s;  // sending raw
  for (const LevelEstimate& e : ladder) {
    if (usable(e) && throughput(e) > best) best = throughput(e);
  }
  // Within 5 % of the best, the cheapest wins; raw is the cheapest of all.
  const double good_enough = 0.95 * best;
  if (link_bytes_per_s >= good_enough) return Compression{};
  Compression pick{};
  double pick_speed = 0;
  for (const LevelEstimate& e : ladder) {
    if (usable(e) && throughput(e) >= good_enough && e.compress_bytes_per_s > pick_speed) {
      pick = e.compression;
      pick_speed = e.compress_bytes_per_s;
    }
  }
  return pick;
}

// ---------------------------------------------------------------- content hash

ContentHash content_hash(std::span<const uint8_t> data) noexcept {
  // The one-call low-level API: SHA-NI, no context allocation. OpenSSL 3.0's EVP path costs a
  // heap allocation per digest (the provider context is freed and re-made on every init) and
  // measured 15 % slower on 4 KiB chunks; switch here if the low-level API goes away.
  SHA256_CTX c;
  ContentHash h;
  const bool ok = SHA256_Init(&c) == 1 && SHA256_Update(&c, data.data(), data.size()) == 1 &&
                  SHA256_Final(h.data(), &c) == 1;
  FERRY_ASSERT(ok);
  return h;
}

}  // namespace ferry::wan
