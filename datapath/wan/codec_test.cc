// Unit tests for the WAN payload codec: zero detection, compression round trips for every
// algorithm and level, the raw fallback margin, hostile compressed input (wrong sizes,
// truncation, trailing bytes, garbage) never writing past the output, and the content hash.
#include "datapath/wan/codec.h"

#include <gtest/gtest.h>
#include <zstd.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace ferry::wan {
namespace {

using Bytes = std::vector<uint8_t>;
constexpr size_t kGuardBytes = 64;
constexpr uint8_t kGuard = 0xA5;

// Text-like data: compresses well with every algorithm.
Bytes texty(size_t n, uint32_t seed = 1) {
  static const char* words[] = {"block ", "storage ",  "gateway ", "ferry ",      "volume ",
                                "cache ", "journal\n", "0x7f3a ",  "datacenter ", "cloud "};
  std::mt19937 rng(seed);
  Bytes b;
  b.reserve(n);
  while (b.size() < n) {
    const char* w = words[rng() % 10];
    for (const char* c = w; *c && b.size() < n; ++c) b.push_back(static_cast<uint8_t>(*c));
  }
  return b;
}

Bytes random_bytes(size_t n, uint32_t seed = 2) {
  std::mt19937 rng(seed);
  Bytes b(n);
  for (auto& c : b) c = static_cast<uint8_t>(rng());
  return b;
}

struct Codecs {
  ChunkEncoder enc;
  ChunkDecoder dec;
  Codecs() {
    EXPECT_TRUE(enc.init());
    EXPECT_TRUE(dec.init());
  }
};

const Compression kAll[] = {
    {CompressAlgo::lz4, 1},   {CompressAlgo::lz4, -8},  {CompressAlgo::lz4, 9},
    {CompressAlgo::zstd, 1},  {CompressAlgo::zstd, 3},  {CompressAlgo::zstd, -5},
    {CompressAlgo::zstd, 19}, {CompressAlgo::igzip, 0}, {CompressAlgo::igzip, 1},
    {CompressAlgo::igzip, 2}, {CompressAlgo::igzip, 3},
};

std::string name(Compression c) {
  static const char* n[] = {"none", "lz4", "zstd", "igzip"};
  return std::string(n[static_cast<int>(c.algo)]) + ":" + std::to_string(c.level);
}

// Decodes into a buffer with guard bytes after the output and checks they survive.
Result<void> guarded_decompress(ChunkDecoder& d, CompressAlgo a, std::span<const uint8_t> in,
                                size_t out_bytes, Bytes* out = nullptr) {
  Bytes buf(out_bytes + kGuardBytes, kGuard);
  Result<void> r = d.decompress(a, in, std::span<uint8_t>(buf.data(), out_bytes));
  for (size_t i = out_bytes; i < buf.size(); ++i) {
    if (buf[i] != kGuard) {
      ADD_FAILURE() << "decoder wrote past the output at +" << (i - out_bytes);
      break;
    }
  }
  if (out) out->assign(buf.begin(), buf.begin() + static_cast<ptrdiff_t>(out_bytes));
  return r;
}

Bytes compressed(ChunkEncoder& e, const Bytes& in, Compression c) {
  Bytes out(in.size() + 1024);
  Result<size_t> n = e.compress(in, out, c);
  EXPECT_TRUE(n) << name(c);
  out.resize(n ? *n : 0);
  return out;
}

TEST(WanCodec, ZeroDetection) {
  Bytes z(65536, 0);
  EXPECT_TRUE(is_zero(z));
  EXPECT_TRUE(is_zero({}));
  for (size_t pos : {size_t{0}, size_t{1}, size_t{31}, size_t{32}, size_t{4095}, size_t{65535}}) {
    Bytes b = z;
    b[pos] = 1;
    EXPECT_FALSE(is_zero(b)) << pos;
  }
  for (size_t n : {size_t{1}, size_t{3}, size_t{17}, size_t{100}}) {
    Bytes b(n, 0);
    EXPECT_TRUE(is_zero(b));
    b[n - 1] = 0x80;
    EXPECT_FALSE(is_zero(b)) << n;
  }
}

TEST(WanCodec, ZeroChunkBecomesZeroRun) {
  Codecs c;
  Bytes in(65536, 0), out(65536);
  const EncodedChunk e = c.enc.encode(in, out, {CompressAlgo::zstd, 1});
  EXPECT_EQ(e.kind, ChunkKind::zero);
  EXPECT_TRUE(e.payload.empty());
  EXPECT_EQ(e.frame_flags(), kFlagZero);
}

TEST(WanCodec, EveryAlgorithmAndLevelRoundTrips) {
  Codecs c;
  for (size_t size : {size_t{4096}, size_t{65536}, size_t{kChunkBytesMax}, size_t{777}}) {
    const Bytes in = texty(size, static_cast<uint32_t>(size));
    for (Compression k : kAll) {
      Bytes out(compressed_keep_bytes_max(in.size()));
      const EncodedChunk e = c.enc.encode(in, out, k);
      ASSERT_EQ(e.kind, ChunkKind::compressed) << name(k) << " size " << size;
      EXPECT_EQ(e.algo, k.algo);
      EXPECT_EQ(e.frame_flags(), kFlagCompressed);
      EXPECT_EQ(e.payload.data(), out.data());
      EXPECT_LE(e.payload.size(), compressed_keep_bytes_max(in.size()));
      Bytes back;
      ASSERT_TRUE(guarded_decompress(c.dec, k.algo, e.payload, in.size(), &back)) << name(k);
      EXPECT_EQ(back, in) << name(k);
    }
  }
}

TEST(WanCodec, IncompressibleChunkTravelsRawWithoutCopy) {
  Codecs c;
  const Bytes in = random_bytes(65536);
  for (Compression k : kAll) {
    Bytes out(compressed_keep_bytes_max(in.size()));
    const EncodedChunk e = c.enc.encode(in, out, k);
    EXPECT_EQ(e.kind, ChunkKind::raw) << name(k);
    EXPECT_EQ(e.payload.data(), in.data());
    EXPECT_EQ(e.payload.size(), in.size());
    EXPECT_EQ(e.frame_flags(), 0);
  }
  Bytes out(65536);
  EXPECT_EQ(c.enc.encode(texty(65536), out, {}).kind, ChunkKind::raw);  // Compression::none
}

TEST(WanCodec, SmallSavingsBelowTheMarginTravelRaw) {
  Codecs c;
  // 97 % random, 3 % zero: compresses by ~3 %, under the 6.25 % margin.
  Bytes in = random_bytes(65536);
  std::memset(in.data(), 0, 2000);
  Bytes big(in.size() + 1024);
  Result<size_t> n = c.enc.compress(in, big, {CompressAlgo::zstd, 3});
  ASSERT_TRUE(n);
  EXPECT_LT(*n, in.size());
  EXPECT_GT(*n, compressed_keep_bytes_max(in.size()));
  Bytes out(compressed_keep_bytes_max(in.size()));
  EXPECT_EQ(c.enc.encode(in, out, {CompressAlgo::zstd, 3}).kind, ChunkKind::raw);
  // 25 % zero compresses well past the margin.
  std::memset(in.data(), 0, 16384);
  EXPECT_EQ(c.enc.encode(in, out, {CompressAlgo::zstd, 3}).kind, ChunkKind::compressed);
}

TEST(WanCodec, CompressRefusesBadArguments) {
  Codecs c;
  const Bytes in = texty(4096);
  Bytes out(8192);
  EXPECT_EQ(c.enc.compress(in, out, {CompressAlgo::none, 0}).error(), Errc::invalid_argument);
  EXPECT_EQ(c.enc.compress(in, out, {CompressAlgo::lz4, 13}).error(), Errc::invalid_argument);
  EXPECT_EQ(c.enc.compress(in, out, {CompressAlgo::zstd, 99}).error(), Errc::invalid_argument);
  EXPECT_EQ(c.enc.compress(in, out, {CompressAlgo::igzip, 4}).error(), Errc::invalid_argument);
  EXPECT_EQ(c.enc.compress(in, out, {CompressAlgo::igzip, -1}).error(), Errc::invalid_argument);
  EXPECT_EQ(c.enc.compress({}, out, {CompressAlgo::lz4, 1}).error(), Errc::invalid_argument);
  for (Compression k : kAll) {
    Bytes tiny(8);
    EXPECT_EQ(c.enc.compress(in, tiny, k).error(), Errc::no_space) << name(k);
  }
}

TEST(WanCodec, WrongDeclaredSizeIsRefused) {
  Codecs c;
  const Bytes in = texty(65536);
  for (Compression k : kAll) {
    const Bytes z = compressed(c.enc, in, k);
    EXPECT_TRUE(guarded_decompress(c.dec, k.algo, z, in.size())) << name(k);
    // A frame claiming less data than the stream holds must not write past the smaller output;
    // one claiming more must not be accepted short.
    for (size_t claim :
         {in.size() - 1, in.size() - 4096, size_t{1}, in.size() + 1, size_t{kChunkBytesMax}}) {
      EXPECT_EQ(guarded_decompress(c.dec, k.algo, z, claim).error(), Errc::protocol_error)
          << name(k) << " claim " << claim;
    }
  }
}

TEST(WanCodec, TruncatedAndTrailingInputIsRefused) {
  Codecs c;
  const Bytes in = texty(65536);
  for (Compression k : kAll) {
    const Bytes z = compressed(c.enc, in, k);
    for (size_t cut : {size_t{1}, size_t{2}, size_t{7}, z.size() / 2}) {
      const Bytes t(z.begin(), z.end() - static_cast<ptrdiff_t>(cut));
      EXPECT_EQ(guarded_decompress(c.dec, k.algo, t, in.size()).error(), Errc::protocol_error)
          << name(k) << " cut " << cut;
    }
    Bytes trailing = z;
    trailing.push_back(0);
    EXPECT_EQ(guarded_decompress(c.dec, k.algo, trailing, in.size()).error(), Errc::protocol_error)
        << name(k);
    EXPECT_EQ(guarded_decompress(c.dec, k.algo, {}, in.size()).error(), Errc::protocol_error);
  }
}

TEST(WanCodec, GarbageAndCorruptedStreamsNeverOverrunTheOutput) {
  Codecs c;
  const Bytes in = texty(65536);
  std::mt19937 rng(7);
  for (Compression k : kAll) {
    const Bytes z = compressed(c.enc, in, k);
    for (int trial = 0; trial < 200; ++trial) {
      Bytes bad = z;
      const int flips = 1 + trial % 8;
      for (int i = 0; i < flips; ++i)
        bad[rng() % bad.size()] ^= static_cast<uint8_t>(1 + rng() % 255);
      Bytes out;
      Result<void> r = guarded_decompress(c.dec, k.algo, bad, in.size(), &out);
      // Either refused, or (rarely, a flip in literal bytes of lz4/deflate) a full-size output.
      if (r) {
        EXPECT_EQ(out.size(), in.size());
      }
    }
    for (int trial = 0; trial < 50; ++trial) {
      const Bytes junk = random_bytes(1 + rng() % 5000, static_cast<uint32_t>(trial));
      (void)guarded_decompress(c.dec, k.algo, junk, 65536);
    }
  }
}

TEST(WanCodec, ZstdFramesThatAreNotOursAreRefused) {
  Codecs c;
  const Bytes in = texty(8192);
  // Two frames back to back, each half: the sizes add up but it is not one stream.
  const Bytes a = compressed(c.enc, Bytes(in.begin(), in.begin() + 4096), {CompressAlgo::zstd, 1});
  const Bytes b = compressed(c.enc, Bytes(in.begin() + 4096, in.end()), {CompressAlgo::zstd, 1});
  Bytes two = a;
  two.insert(two.end(), b.begin(), b.end());
  EXPECT_EQ(guarded_decompress(c.dec, CompressAlgo::zstd, two, 8192).error(), Errc::protocol_error);
  // A frame without a content size (streaming API) is refused: the size must be declared.
  ZSTD_CCtx* cc = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, 0);
  Bytes nosize(ZSTD_compressBound(in.size()));
  const size_t n = ZSTD_compress2(cc, nosize.data(), nosize.size(), in.data(), in.size());
  ZSTD_freeCCtx(cc);
  ASSERT_FALSE(ZSTD_isError(n));
  nosize.resize(n);
  EXPECT_EQ(guarded_decompress(c.dec, CompressAlgo::zstd, nosize, in.size()).error(),
            Errc::protocol_error);
  // A skippable frame decodes to nothing.
  Bytes skip = {0x50, 0x2A, 0x4D, 0x18, 4, 0, 0, 0, 1, 2, 3, 4};
  EXPECT_EQ(guarded_decompress(c.dec, CompressAlgo::zstd, skip, 1).error(), Errc::protocol_error);
}

TEST(WanCodec, DecodeFollowsTheFrameHeader) {
  Codecs c;
  const Bytes in = texty(65536);
  FrameHeader h;
  h.type = FrameType::read_data;
  h.volume_id = 1;
  h.length_bytes = 65536;
  Bytes out(65536, 0xff);

  h.flags = 0;  // raw
  h.payload_bytes = 65536;
  ASSERT_TRUE(c.dec.decode(h, in, out));
  EXPECT_EQ(out, in);

  h.flags = kFlagZero;
  h.payload_bytes = 0;
  ASSERT_TRUE(c.dec.decode(h, {}, out));
  EXPECT_TRUE(is_zero(out));

  const Bytes z = compressed(c.enc, in, {CompressAlgo::lz4, 1});
  h.flags = kFlagCompressed;
  h.algo = CompressAlgo::lz4;
  h.payload_bytes = static_cast<uint32_t>(z.size());
  ASSERT_TRUE(c.dec.decode(h, z, out));
  EXPECT_EQ(out, in);

  // The output must be exactly the frame's length; dedup is the cache's job.
  Bytes small(4096);
  EXPECT_EQ(c.dec.decode(h, z, small).error(), Errc::invalid_argument);
  h.flags = kFlagDedupRef;
  h.algo = CompressAlgo::none;
  h.payload_bytes = kContentHashBytes;
  EXPECT_EQ(c.dec.decode(h, Bytes(kContentHashBytes), out).error(), Errc::invalid_argument);
  EXPECT_EQ(c.dec.decompress(CompressAlgo::none, z, out).error(), Errc::invalid_argument);
  EXPECT_EQ(c.dec.decompress(static_cast<CompressAlgo>(9), z, out).error(), Errc::invalid_argument);
}

TEST(WanCodec, ContextsMoveAndReinit) {
  ChunkEncoder e;
  ASSERT_TRUE(e.init());
  ASSERT_TRUE(e.init());  // re-init frees the old contexts (LSan would see a leak)
  ChunkEncoder moved = std::move(e);
  const Bytes in = texty(4096);
  Bytes out(8192);
  EXPECT_TRUE(moved.compress(in, out, {CompressAlgo::zstd, 1}));
  ChunkDecoder d;
  ASSERT_TRUE(d.init());
  ChunkDecoder d2;
  d2 = std::move(d);
  const Bytes z = compressed(moved, in, {CompressAlgo::igzip, 1});
  EXPECT_TRUE(guarded_decompress(d2, CompressAlgo::igzip, z, in.size()));
}

constexpr double kMbit = 1e6 / 8;
constexpr uint32_t kAllCaps = kCapLz4 | kCapZstd | kCapIgzip;

TEST(WanCodec, ChooseCompressionFollowsTheLinkRate) {
  auto pick = [](double mbit, double cores, uint32_t caps = kAllCaps) {
    return choose_compression(mbit * kMbit, cores, caps);
  };
  auto is = [](Compression c, CompressAlgo a, int level) {
    return c.algo == a && (a == CompressAlgo::none || c.level == level);
  };
  // 100 Mbit/s, half a core: the best ratio the budget sustains (the default).
  EXPECT_TRUE(is(pick(100, 0.5), kDefaultCompression.algo, kDefaultCompression.level));
  EXPECT_TRUE(is(pick(100, kDefaultCompressCpuCores), CompressAlgo::zstd, 3));
  EXPECT_TRUE(is(pick(0, kDefaultCompressCpuCores), CompressAlgo::zstd, 3));  // rate not known
  // Slower links or a whole core afford zstd 6.
  EXPECT_TRUE(is(pick(50, 0.5), CompressAlgo::zstd, 6));
  EXPECT_TRUE(is(pick(90, 0.5), CompressAlgo::zstd, 6));
  EXPECT_TRUE(is(pick(100, 1.0), CompressAlgo::zstd, 6));
  // 1 Gbit/s: the compressor is the bottleneck: faster levels.
  EXPECT_TRUE(is(pick(1000, 0.5), CompressAlgo::lz4, 1));
  EXPECT_TRUE(is(pick(1000, 1.0), CompressAlgo::zstd, -1));
  // 10 Gbit/s: compressing would slow the link down.
  EXPECT_TRUE(is(pick(1500, 0.5), CompressAlgo::lz4, 1));
  EXPECT_TRUE(is(pick(2000, 0.5), CompressAlgo::none, 0));
  EXPECT_TRUE(is(pick(10000, 0.5), CompressAlgo::none, 0));
  // Only what the peer negotiated.
  EXPECT_TRUE(is(pick(100, 0.5, kCapLz4), CompressAlgo::lz4, 1));
  EXPECT_TRUE(is(pick(100, 0.5, kCapIgzip), CompressAlgo::none, 0));
  EXPECT_TRUE(is(pick(100, 0.5, 0), CompressAlgo::none, 0));
  // Running estimates replace the table: barely compressible data goes raw...
  const LevelEstimate random_data[] = {{{CompressAlgo::zstd, 3}, 1.0, 239e6},
                                       {{CompressAlgo::lz4, 1}, 1.03, 2000e6}};
  EXPECT_TRUE(
      is(choose_compression(100 * kMbit, 0.5, kAllCaps, random_data), CompressAlgo::none, 0));
  // ... and text compresses harder on the same link.
  const LevelEstimate text[] = {{{CompressAlgo::zstd, 6}, 6.0, 300e6},
                                {{CompressAlgo::zstd, 3}, 5.0, 600e6}};
  EXPECT_TRUE(is(choose_compression(100 * kMbit, 0.5, kAllCaps, text), CompressAlgo::zstd, 6));
  EXPECT_TRUE(is(choose_compression(1000 * kMbit, 0.5, kAllCaps, text), CompressAlgo::zstd, 3));
}

TEST(WanCodec, ContentHashIsSha256) {
  const std::string abc = "abc";
  const ContentHash h = content_hash({reinterpret_cast<const uint8_t*>(abc.data()), abc.size()});
  const uint8_t want[32] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
                            0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
                            0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
  EXPECT_EQ(std::memcmp(h.data(), want, 32), 0);
  const Bytes a = texty(65536, 1), b = texty(65536, 2);
  EXPECT_EQ(content_hash(a), content_hash(a));
  EXPECT_NE(content_hash(a), content_hash(b));
}

}  // namespace
}  // namespace ferry::wan
