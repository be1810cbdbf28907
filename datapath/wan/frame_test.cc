// Unit tests for the WAN frame codec: round trips of every frame type, the byte layout pinned
// against DESIGN.md, every need_more / reject / fatal path, CRC corruption, limits.
#include "datapath/wan/frame.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "datapath/endian.h"

namespace ferry::wan {
namespace {

using Bytes = std::vector<uint8_t>;

std::span<const uint8_t> as_span(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// Writes a frame by hand, straight from the layout in DESIGN.md and with correct CRCs, without
// the encoder's assertions: how a hostile or buggy peer would.
Bytes raw_frame(uint8_t type, uint8_t flags, uint8_t priority, uint8_t algo, uint16_t volume,
                uint64_t request, uint64_t offset, uint32_t length, const Bytes& payload,
                uint16_t magic = kFrameMagic) {
  Bytes f(kFrameHeaderBytes + payload.size());
  uint8_t* p = f.data();
  store_be16(p + 0, magic);
  p[2] = type;
  p[3] = flags;
  p[4] = priority;
  p[5] = algo;
  store_be16(p + 6, volume);
  store_be64(p + 8, request);
  store_be64(p + 16, offset);
  store_be32(p + 24, length);
  store_be32(p + 28, static_cast<uint32_t>(payload.size()));
  store_be32(p + 32, crc32c(payload));
  store_be32(p + 36, crc32c({p, 36}));
  if (!payload.empty()) std::memcpy(p + kFrameHeaderBytes, payload.data(), payload.size());
  return f;
}

Bytes frame(FrameHeader h, const Bytes& payload = {}) {
  Bytes f(kFrameHeaderBytes + payload.size());
  encode_header(f.data(), h, payload);
  if (!payload.empty()) std::memcpy(f.data() + kFrameHeaderBytes, payload.data(), payload.size());
  return f;
}

FrameHeader data_header(FrameType t, uint32_t length, uint8_t flags = 0) {
  FrameHeader h;
  h.type = t;
  h.flags = flags;
  h.priority = Priority::prefetch;
  h.volume_id = 7;
  h.request_id = 0x0102030405060708ull;
  h.offset_bytes = 1ull << 40;
  h.length_bytes = length;
  return h;
}

Bytes hello_payload(const Hello& h) {
  Bytes b(kHelloBytes);
  encode_hello(b.data(), h);
  return b;
}

FrameParse parse(const Bytes& b, uint32_t max = kFramePayloadBytesMax) {
  return parse_frame(b, max);
}

TEST(WanCrc, StandardCrc32cCheckValue) {
  EXPECT_EQ(crc32c(as_span("123456789")), 0xE3069283u);
  EXPECT_EQ(crc32c({}), 0u);
  // Chaining equals one pass.
  EXPECT_EQ(crc32c(as_span("56789"), crc32c(as_span("1234"))), 0xE3069283u);
}

TEST(WanFrame, GoldenBytesMatchDesignDoc) {
  FrameHeader h = data_header(FrameType::read_data, 4, kFlagCompressed);
  h.algo = CompressAlgo::zstd;
  h.priority = Priority::write_back;
  h.length_bytes = 8;
  const Bytes payload = {0xde, 0xad, 0xbe, 0xef};
  const Bytes f = frame(h, payload);
  const Bytes want_head = {0xFE, 0x77, 0x11, 0x02, 0x01, 0x02, 0x00, 0x07,  // magic..volume
                           0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,  // request id
                           0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,  // offset 2^40
                           0x00, 0x00, 0x00, 0x08,                          // length
                           0x00, 0x00, 0x00, 0x04};                         // payload bytes
  ASSERT_EQ(f.size(), kFrameHeaderBytes + 4);
  EXPECT_EQ(Bytes(f.begin(), f.begin() + 32), want_head);
  EXPECT_EQ(load_be32(f.data() + 32), crc32c(payload));
  EXPECT_EQ(load_be32(f.data() + 36), crc32c({f.data(), 36}));
  EXPECT_EQ(Bytes(f.begin() + 40, f.end()), payload);
  // The hand-written layout and the encoder agree byte for byte.
  EXPECT_EQ(raw_frame(0x11, 0x02, 1, 2, 7, 0x0102030405060708ull, 1ull << 40, 8, payload), f);
}

TEST(WanFrame, DataFrameRoundTrip) {
  const Bytes payload(4096, 0x5a);
  for (FrameType t : {FrameType::read_data, FrameType::write}) {
    FrameHeader h = data_header(t, 4096, t == FrameType::write ? kFlagFinal | kFlagFua : 0);
    const Bytes f = frame(h, payload);
    const FrameParse p = parse(f);
    ASSERT_EQ(p.status, ParseStatus::ok) << p.why;
    EXPECT_EQ(p.frame_bytes, f.size());
    EXPECT_EQ(p.header.type, t);
    EXPECT_EQ(p.header.flags, h.flags);
    EXPECT_EQ(p.header.priority, Priority::prefetch);
    EXPECT_EQ(p.header.volume_id, 7);
    EXPECT_EQ(p.header.request_id, h.request_id);
    EXPECT_EQ(p.header.offset_bytes, h.offset_bytes);
    EXPECT_EQ(p.header.length_bytes, 4096u);
    EXPECT_EQ(p.header.payload_bytes, 4096u);
    EXPECT_EQ(p.payload.data(), f.data() + kFrameHeaderBytes);  // borrowed, not copied
    EXPECT_EQ(p.payload.size(), 4096u);
  }
}

TEST(WanFrame, ZeroCompressedAndDedupFramesRoundTrip) {
  // A zero run may be far longer than a frame: it has no payload.
  FrameParse p = parse(frame(data_header(FrameType::read_data, kRequestBytesMax, kFlagZero)));
  ASSERT_EQ(p.status, ParseStatus::ok) << p.why;
  EXPECT_EQ(p.header.length_bytes, kRequestBytesMax);
  EXPECT_TRUE(p.payload.empty());

  for (CompressAlgo a : {CompressAlgo::lz4, CompressAlgo::zstd, CompressAlgo::igzip}) {
    FrameHeader h = data_header(FrameType::write, 65536, kFlagCompressed);
    h.algo = a;
    p = parse(frame(h, Bytes(1000, 1)));
    ASSERT_EQ(p.status, ParseStatus::ok) << p.why;
    EXPECT_EQ(p.header.algo, a);
  }

  const Bytes dedup = frame(data_header(FrameType::read_data, 65536, kFlagDedupRef),
                            Bytes(kContentHashBytes, 0xab));
  p = parse(dedup);
  ASSERT_EQ(p.status, ParseStatus::ok) << p.why;
  EXPECT_EQ(p.payload.size(), kContentHashBytes);
}

TEST(WanFrame, ControlFramesRoundTrip) {
  FrameHeader h;
  for (FrameType t : {FrameType::read_done, FrameType::write_ack, FrameType::flush,
                      FrameType::flush_ack, FrameType::close_volume, FrameType::volume_closed}) {
    h = FrameHeader{};
    h.type = t;
    h.volume_id = 3;
    h.request_id = 99;
    FrameParse p = parse(frame(h));
    ASSERT_EQ(p.status, ParseStatus::ok) << to_string(t) << ": " << p.why;
    EXPECT_EQ(p.header.type, t);
    EXPECT_EQ(p.frame_bytes, kFrameHeaderBytes);
  }
  for (FrameType t : {FrameType::ping, FrameType::pong}) {
    h = FrameHeader{};
    h.type = t;
    h.request_id = 12345;
    FrameParse p = parse(frame(h));
    ASSERT_EQ(p.status, ParseStatus::ok) << p.why;
    EXPECT_EQ(p.header.request_id, 12345u);
  }
  h = data_header(FrameType::read, 1 << 20, kFlagNoDedup);
  EXPECT_EQ(parse(frame(h)).status, ParseStatus::ok);
  h = data_header(FrameType::block_status, kRequestBytesMax);
  EXPECT_EQ(parse(frame(h)).status, ParseStatus::ok);
}

TEST(WanFrame, HelloNegotiation) {
  Hello c;
  c.version_min = 1;
  c.version_max = 3;
  c.capabilities = kCapLz4 | kCapZstd | kCapDedupSha256 | (1u << 30);  // unknown bit: ignored
  c.frame_payload_bytes_max = 128 * 1024;
  c.requests_max = 4096;
  FrameHeader h;
  h.type = FrameType::hello;
  const Bytes f = frame(h, hello_payload(c));
  const FrameParse p = parse(f);
  ASSERT_EQ(p.status, ParseStatus::ok) << p.why;
  Result<Hello> got = parse_hello(p.payload);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->version_max, 3);
  EXPECT_EQ(got->capabilities, c.capabilities);

  Hello s;
  s.capabilities = kCapZstd | kCapIgzip | kCapDedupSha256 | kCapWrite;
  s.requests_max = 256;
  Result<Hello> a = negotiate(*got, s, 42);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->version_min, kProtocolVersion);
  EXPECT_EQ(a->version_max, kProtocolVersion);
  EXPECT_EQ(a->capabilities, kCapZstd | kCapDedupSha256);
  EXPECT_EQ(a->frame_payload_bytes_max, 128u * 1024);
  EXPECT_EQ(a->requests_max, 256u);
  EXPECT_EQ(a->session_id, 42u);

  Hello future;
  future.version_min = 2;
  future.version_max = 5;
  EXPECT_EQ(negotiate(future, s, 1).error(), Errc::unsupported);
}

TEST(WanFrame, HelloFromLaterVersionWithLongerBodyIsReadable) {
  Bytes body = hello_payload(Hello{});
  body.resize(100, 0xee);  // later versions append fields; reserved bytes ignored
  const Bytes f = raw_frame(0x01, 0, 0, 0, 0, 0, 0, 0, body);
  const FrameParse p = parse(f);
  ASSERT_EQ(p.status, ParseStatus::ok) << p.why;
  EXPECT_TRUE(parse_hello(p.payload));
}

TEST(WanFrame, BadHelloBodiesReject) {
  auto with = [](auto mutate) {
    Hello h;
    mutate(h);
    return parse(raw_frame(0x01, 0, 0, 0, 0, 0, 0, 0, hello_payload(h))).status;
  };
  EXPECT_EQ(with([](Hello& h) { h.version_min = 0; }), ParseStatus::reject);
  EXPECT_EQ(with([](Hello& h) { h.version_min = 3, h.version_max = 2; }), ParseStatus::reject);
  EXPECT_EQ(with([](Hello& h) { h.frame_payload_bytes_max = 4095; }), ParseStatus::reject);
  EXPECT_EQ(with([](Hello& h) { h.frame_payload_bytes_max = kFramePayloadBytesMax + 1; }),
            ParseStatus::reject);
  EXPECT_EQ(with([](Hello& h) { h.requests_max = 0; }), ParseStatus::reject);
  EXPECT_EQ(parse(raw_frame(0x01, 0, 0, 0, 0, 0, 0, 0, Bytes(31))).status, ParseStatus::reject);
  EXPECT_EQ(parse(raw_frame(0x01, 0, 0, 0, 0, 0, 0, 0, Bytes(257))).status, ParseStatus::reject);
}

TEST(WanFrame, OpenVolumeAndVolumeInfo) {
  const std::string name = "vmdk/prod-db-01.vmdk";
  FrameHeader h;
  h.type = FrameType::open_volume;
  h.request_id = 5;
  const Bytes nb(name.begin(), name.end());
  const Bytes open_frame = frame(h, nb);
  FrameParse p = parse(open_frame);
  ASSERT_EQ(p.status, ParseStatus::ok) << p.why;
  Result<std::string_view> n = parse_volume_name(p.payload);
  ASSERT_TRUE(n);
  EXPECT_EQ(*n, name);

  VolumeInfo v;
  v.size_bytes = 40ull << 30;
  v.block_bytes = 4096;
  v.flags = kVolumeAllocationKnown | kVolumeCanFlush;
  v.chunk_bytes = 65536;
  Bytes vb(kVolumeInfoBytes);
  encode_volume_info(vb.data(), v);
  h = FrameHeader{};
  h.type = FrameType::volume_info;
  h.volume_id = 1;
  h.request_id = 5;
  const Bytes info_frame = frame(h, vb);
  p = parse(info_frame);
  ASSERT_EQ(p.status, ParseStatus::ok) << p.why;
  Result<VolumeInfo> got = parse_volume_info(p.payload);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->size_bytes, v.size_bytes);
  EXPECT_EQ(got->block_bytes, 4096u);
  EXPECT_EQ(got->flags, v.flags);
  EXPECT_EQ(got->chunk_bytes, 65536u);
}

TEST(WanFrame, BadVolumeNamesAndInfoReject) {
  for (const std::string& bad : {std::string("has space"), std::string("nul\0x", 5),
                                 std::string("\x7f"), std::string(256, 'a')}) {
    const Bytes b(bad.begin(), bad.end());
    EXPECT_FALSE(parse_volume_name(b)) << bad;
    EXPECT_EQ(parse(raw_frame(0x03, 0, 0, 0, 0, 1, 0, 0, b)).status, ParseStatus::reject);
  }
  EXPECT_EQ(parse(raw_frame(0x03, 0, 0, 0, 0, 1, 0, 0, {})).status, ParseStatus::reject);

  auto info = [](auto mutate) {
    VolumeInfo v;
    v.size_bytes = 1 << 20;
    mutate(v);
    Bytes b(kVolumeInfoBytes);
    encode_volume_info(b.data(), v);
    return b;
  };
  const Bytes good = info([](VolumeInfo&) {});
  EXPECT_TRUE(parse_volume_info(good));
  EXPECT_FALSE(parse_volume_info(info([](VolumeInfo& v) { v.block_bytes = 256; })));
  EXPECT_FALSE(parse_volume_info(info([](VolumeInfo& v) { v.block_bytes = 1000; })));
  EXPECT_FALSE(parse_volume_info(info([](VolumeInfo& v) { v.block_bytes = 1 << 17; })));
  EXPECT_FALSE(parse_volume_info(info([](VolumeInfo& v) { v.size_bytes = 1000; })));
  EXPECT_FALSE(parse_volume_info(info([](VolumeInfo& v) { v.flags = 1u << 31; })));
  EXPECT_FALSE(parse_volume_info(info([](VolumeInfo& v) { v.chunk_bytes = 256; })));
  EXPECT_FALSE(parse_volume_info(info([](VolumeInfo& v) { v.chunk_bytes = 1u << 19; })));
  Bytes reserved = good;
  reserved[23] = 1;
  EXPECT_FALSE(parse_volume_info(reserved));
  // VOLUME_INFO must name the assigned volume.
  EXPECT_EQ(parse(raw_frame(0x04, 0, 0, 0, 0, 1, 0, 0, good)).status, ParseStatus::reject);
  EXPECT_EQ(parse(raw_frame(0x04, 0, 0, 0, 1, 1, 0, 0, good)).status, ParseStatus::ok);
}

TEST(WanFrame, ErrorFrames) {
  Bytes b(kErrorBytesMax);
  b.resize(encode_error(b.data(), WireError::not_found, "no volume \"x\"\n"));
  FrameHeader h;
  h.type = FrameType::error;
  h.request_id = 77;
  const Bytes f = frame(h, b);
  const FrameParse p = parse(f);
  ASSERT_EQ(p.status, ParseStatus::ok) << p.why;
  Result<ErrorBody> e = parse_error(p.payload);
  ASSERT_TRUE(e);
  EXPECT_EQ(from_wire_error(e->code), Errc::not_found);
  EXPECT_EQ(e->message, "no volume \"x\"?");  // control bytes are not sent

  // Long messages are cut at 256 bytes.
  b.assign(kErrorBytesMax, 0);
  EXPECT_EQ(encode_error(b.data(), WireError::io_error, std::string(1000, 'x')), kErrorBytesMax);
  EXPECT_TRUE(parse_error(b));

  Bytes bad = {0, 1, 0, 3, 'a', 'b'};  // length says 3, 2 present
  EXPECT_FALSE(parse_error(bad));
  bad = {0, 0, 0, 0};  // code 0
  EXPECT_FALSE(parse_error(bad));
  bad = {0, 1, 0, 1, 0x07};  // control byte
  EXPECT_FALSE(parse_error(bad));
  EXPECT_EQ(parse(raw_frame(0x30, 0, 0, 0, 0, 1, 0, 0, bad)).status, ParseStatus::reject);
}

TEST(WanFrame, WireErrorTableRoundTrips) {
  for (Errc e : {Errc::io_error, Errc::invalid_argument, Errc::out_of_range, Errc::not_found,
                 Errc::unsupported, Errc::busy, Errc::no_space, Errc::write_protected,
                 Errc::protocol_error, Errc::auth_failed, Errc::timed_out, Errc::medium_error}) {
    EXPECT_EQ(from_wire_error(static_cast<uint16_t>(to_wire_error(e))), e) << to_string(e);
  }
  EXPECT_EQ(from_wire_error(0), Errc::io_error);
  EXPECT_EQ(from_wire_error(999), Errc::io_error);
  EXPECT_EQ(from_wire_error(static_cast<uint16_t>(WireError::dedup_miss)), Errc::not_found);
}

TEST(WanFrame, BlockStatusReply) {
  Bytes b(3 * kExtentBytes);
  encode_extent(b.data(), {4096, 0});
  encode_extent(b.data() + 8, {1 << 20, kExtentHole | kExtentZero});
  encode_extent(b.data() + 16, {8192, kExtentZero});
  const uint32_t total = 4096 + (1 << 20) + 8192;
  const Bytes f = raw_frame(0x18, 0, 0, 0, 2, 9, 0, total, b);
  FrameParse p = parse(f);
  ASSERT_EQ(p.status, ParseStatus::ok) << p.why;
  EXPECT_EQ(extent_at(p.payload, 1).length_bytes, 1u << 20);
  EXPECT_EQ(extent_at(p.payload, 2).flags, kExtentZero);

  EXPECT_EQ(parse(raw_frame(0x18, 0, 0, 0, 2, 9, 0, total + 1, b)).status, ParseStatus::reject);
  Bytes odd = b;
  odd.pop_back();
  EXPECT_EQ(parse(raw_frame(0x18, 0, 0, 0, 2, 9, 0, total, odd)).status, ParseStatus::reject);
  Bytes empty_extent = b;
  encode_extent(empty_extent.data(), {0, 0});
  EXPECT_EQ(parse(raw_frame(0x18, 0, 0, 0, 2, 9, 0, total - 4096, empty_extent)).status,
            ParseStatus::reject);
  Bytes unknown_flag = b;
  encode_extent(unknown_flag.data(), {4096, 4});
  EXPECT_EQ(parse(raw_frame(0x18, 0, 0, 0, 2, 9, 0, total, unknown_flag)).status,
            ParseStatus::reject);
}

TEST(WanFrame, TruncatedInputIsNeedMore) {
  FrameHeader h = data_header(FrameType::read_data, 3000);
  const Bytes f = frame(h, Bytes(3000, 9));
  for (size_t n = 0; n < f.size(); ++n) {
    const FrameParse p = parse_frame(std::span<const uint8_t>(f.data(), n), kFramePayloadBytesMax);
    ASSERT_EQ(p.status, ParseStatus::need_more) << n;
    EXPECT_EQ(p.bytes_needed, n < kFrameHeaderBytes ? kFrameHeaderBytes : f.size()) << n;
  }
  EXPECT_EQ(parse(f).status, ParseStatus::ok);
  EXPECT_EQ(parse_header(std::span<const uint8_t>(f.data(), 39), kFramePayloadBytesMax).status,
            ParseStatus::need_more);
  const HeaderParse hp =
      parse_header(std::span<const uint8_t>(f.data(), 40), kFramePayloadBytesMax);
  ASSERT_EQ(hp.status, ParseStatus::ok);
  EXPECT_EQ(hp.header.payload_bytes, 3000u);
}

TEST(WanFrame, BadMagicIsFatal) {
  const Bytes f = raw_frame(0x20, 0, 0, 0, 0, 1, 0, 0, {}, 0x4e42);
  const FrameParse p = parse(f);
  EXPECT_EQ(p.status, ParseStatus::fatal);
  EXPECT_STREQ(p.why, "bad frame magic");
}

TEST(WanFrame, HeaderCorruptionIsFatalBeforeThePayloadArrives) {
  const Bytes f = frame(data_header(FrameType::write, 65536, kFlagFinal), Bytes(65536, 3));
  for (size_t i = 2; i < kFrameHeaderBytes; ++i) {
    for (uint8_t bit : {0x01, 0x80}) {
      Bytes c(f.begin(), f.begin() + kFrameHeaderBytes);  // the payload has not arrived yet
      c[i] ^= bit;
      const FrameParse p = parse(c);
      EXPECT_EQ(p.status, ParseStatus::fatal) << "byte " << i;
      EXPECT_STREQ(p.why, "header CRC mismatch");
    }
  }
}

TEST(WanFrame, PayloadCorruptionIsFatal) {
  const Bytes f = frame(data_header(FrameType::read_data, 4096), Bytes(4096, 3));
  for (size_t i : {size_t{0}, size_t{1000}, size_t{4095}}) {
    Bytes c = f;
    c[kFrameHeaderBytes + i] ^= 0x10;
    const FrameParse p = parse(c);
    EXPECT_EQ(p.status, ParseStatus::fatal);
    EXPECT_STREQ(p.why, "payload CRC mismatch");
  }
  // Corrupted payload on a frame that would otherwise be rejected is still fatal.
  Bytes c = raw_frame(0x7f, 0, 0, 0, 0, 1, 0, 0, Bytes(10, 1));
  c.back() ^= 1;
  EXPECT_EQ(parse(c).status, ParseStatus::fatal);
}

TEST(WanFrame, PayloadOverLimitIsFatal) {
  // The negotiated limit, then the hard one.
  const Bytes f = frame(data_header(FrameType::read_data, 65536), Bytes(65536, 1));
  EXPECT_EQ(parse(f, 65536).status, ParseStatus::ok);
  const FrameParse p = parse(f, 65535);
  EXPECT_EQ(p.status, ParseStatus::fatal);
  EXPECT_STREQ(p.why, "payload over the frame limit");
  // A header claiming more than the hard limit is fatal from the header alone.
  Bytes h(kFrameHeaderBytes);
  store_be16(h.data(), kFrameMagic);
  h[2] = 0x11;
  store_be16(h.data() + 6, 1);
  store_be32(h.data() + 24, kFramePayloadBytesMax + 1);
  store_be32(h.data() + 28, kFramePayloadBytesMax + 1);
  store_be32(h.data() + 36, crc32c({h.data(), 36}));
  EXPECT_EQ(parse(h, UINT32_MAX).status, ParseStatus::fatal);
  store_be32(h.data() + 28, UINT32_MAX);
  store_be32(h.data() + 36, crc32c({h.data(), 36}));
  EXPECT_EQ(parse(h, UINT32_MAX).status, ParseStatus::fatal);
}

struct RejectCase {
  const char* name;
  Bytes frame;
};

TEST(WanFrame, EveryRuleBreakIsRejectAndTheStreamStaysInSync) {
  const Bytes p4k(4096, 1);
  const Bytes hash(kContentHashBytes, 2);
  const std::vector<RejectCase> cases = {
      {"unknown type", raw_frame(0x7f, 0, 0, 0, 1, 1, 0, 0, Bytes(10, 1))},
      {"type 0", raw_frame(0x00, 0, 0, 0, 0, 1, 0, 0, {})},
      {"priority 4", raw_frame(0x11, 0, 4, 0, 1, 1, 0, 4096, p4k)},
      {"priority 255", raw_frame(0x20, 0, 255, 0, 0, 1, 0, 0, {})},
      {"algo without flag", raw_frame(0x11, 0, 0, 1, 1, 1, 0, 4096, p4k)},
      {"compressed algo 0", raw_frame(0x11, 0x02, 0, 0, 1, 1, 0, 8192, p4k)},
      {"compressed algo 4", raw_frame(0x11, 0x02, 0, 4, 1, 1, 0, 8192, p4k)},
      {"compressed not smaller", raw_frame(0x11, 0x02, 0, 1, 1, 1, 0, 4096, p4k)},
      {"compressed empty", raw_frame(0x11, 0x02, 0, 1, 1, 1, 0, 4096, {})},
      {"compressed over chunk max", raw_frame(0x11, 0x02, 0, 2, 1, 1, 0, kChunkBytesMax + 1, p4k)},
      {"zero with payload", raw_frame(0x11, 0x01, 0, 0, 1, 1, 0, 4096, p4k)},
      {"zero run over request max", raw_frame(0x11, 0x01, 0, 0, 1, 1, 0, kRequestBytesMax + 1, {})},
      {"zero length", raw_frame(0x11, 0x01, 0, 0, 1, 1, 0, 0, {})},
      {"raw length mismatch", raw_frame(0x11, 0, 0, 0, 1, 1, 0, 4097, p4k)},
      {"raw empty", raw_frame(0x11, 0, 0, 0, 1, 1, 0, 0, {})},
      {"two encodings", raw_frame(0x11, 0x03, 0, 1, 1, 1, 0, 4096, {})},
      {"dedup short hash", raw_frame(0x11, 0x04, 0, 0, 1, 1, 0, 4096, Bytes(16, 1))},
      {"dedup zero length", raw_frame(0x11, 0x04, 0, 0, 1, 1, 0, 0, hash)},
      {"data without volume", raw_frame(0x11, 0, 0, 0, 0, 1, 0, 4096, p4k)},
      {"final on read data", raw_frame(0x11, 0x08, 0, 0, 1, 1, 0, 4096, p4k)},
      {"unknown flag on write", raw_frame(0x13, 0x80, 0, 0, 1, 1, 0, 4096, p4k)},
      {"offset overflow", raw_frame(0x13, 0, 0, 0, 1, 1, UINT64_MAX - 100, 4096, p4k)},
      {"read with payload", raw_frame(0x10, 0, 0, 0, 1, 1, 0, 4096, p4k)},
      {"read zero length", raw_frame(0x10, 0, 0, 0, 1, 1, 0, 0, {})},
      {"read over max", raw_frame(0x10, 0, 0, 0, 1, 1, 0, kRequestBytesMax + 1, {})},
      {"read with zero flag", raw_frame(0x10, 0x01, 0, 0, 1, 1, 0, 4096, {})},
      {"read without volume", raw_frame(0x10, 0, 0, 0, 0, 1, 0, 4096, {})},
      {"read_done with length", raw_frame(0x12, 0, 0, 0, 1, 1, 0, 1, {})},
      {"write_ack with payload", raw_frame(0x14, 0, 0, 0, 1, 1, 0, 0, Bytes(1, 0))},
      {"flush with flags", raw_frame(0x15, 0x10, 0, 0, 1, 1, 0, 0, {})},
      {"flush_ack without volume", raw_frame(0x16, 0, 0, 0, 0, 1, 0, 0, {})},
      {"block status zero length", raw_frame(0x17, 0, 0, 0, 1, 1, 0, 0, {})},
      {"ping with volume", raw_frame(0x20, 0, 0, 0, 1, 1, 0, 0, {})},
      {"pong with offset", raw_frame(0x21, 0, 0, 0, 0, 1, 8, 0, {})},
      {"hello with volume", raw_frame(0x01, 0, 0, 0, 1, 0, 0, 0, hello_payload(Hello{}))},
      {"hello_ack with flags", raw_frame(0x02, 0x01, 0, 0, 0, 0, 0, 0, hello_payload(Hello{}))},
      {"open with volume", raw_frame(0x03, 0, 0, 0, 1, 0, 0, 0, Bytes(3, 'a'))},
      {"error too short", raw_frame(0x30, 0, 0, 0, 0, 1, 0, 0, Bytes(3, 0))},
      {"error too long", raw_frame(0x30, 0, 0, 0, 0, 1, 0, 0, Bytes(kErrorBytesMax + 1, 'a'))},
  };
  FrameHeader ping;
  ping.type = FrameType::ping;
  ping.request_id = 4242;
  const Bytes next = frame(ping);
  for (const RejectCase& c : cases) {
    Bytes stream = c.frame;
    stream.insert(stream.end(), next.begin(), next.end());
    const FrameParse p = parse(stream);
    EXPECT_EQ(p.status, ParseStatus::reject) << c.name;
    EXPECT_NE(p.why, nullptr) << c.name;
    EXPECT_EQ(p.frame_bytes, c.frame.size()) << c.name;
    EXPECT_EQ(p.header.request_id, c.frame.size() >= 16 ? load_be64(c.frame.data() + 8) : 0)
        << c.name;
    // Skipping the rejected frame lands on the next one.
    const FrameParse q =
        parse_frame(std::span<const uint8_t>(stream).subspan(p.frame_bytes), kFramePayloadBytesMax);
    EXPECT_EQ(q.status, ParseStatus::ok) << c.name;
    EXPECT_EQ(q.header.request_id, 4242u) << c.name;
  }
}

TEST(WanFrame, StreamOfInterleavedFramesParsesInOrder) {
  Bytes stream;
  std::vector<uint64_t> ids;
  for (uint64_t i = 1; i <= 50; ++i) {
    FrameHeader h = data_header(i % 3 ? FrameType::read_data : FrameType::write,
                                static_cast<uint32_t>(i * 100), i % 3 ? 0 : kFlagFinal);
    h.request_id = i * 1000 + (i % 7);  // out-of-order completion: ids in any order
    h.priority = static_cast<Priority>(i % 4);
    const Bytes f = frame(h, Bytes(i * 100, static_cast<uint8_t>(i)));
    stream.insert(stream.end(), f.begin(), f.end());
    ids.push_back(h.request_id);
  }
  std::span<const uint8_t> in(stream);
  for (uint64_t id : ids) {
    const FrameParse p = parse_frame(in, kFramePayloadBytesMax);
    ASSERT_EQ(p.status, ParseStatus::ok) << p.why;
    EXPECT_EQ(p.header.request_id, id);
    EXPECT_EQ(p.payload[0], static_cast<uint8_t>(id / 1000));
    in = in.subspan(p.frame_bytes);
  }
  EXPECT_TRUE(in.empty());
  EXPECT_EQ(parse_frame(in, kFramePayloadBytesMax).status, ParseStatus::need_more);
}

TEST(WanFrame, LimitsAtTheBoundary) {
  // A raw chunk of exactly the hard limit is fine; a compressed one may describe up to
  // kChunkBytesMax of data.
  FrameParse p = parse(
      frame(data_header(FrameType::write, kFramePayloadBytesMax), Bytes(kFramePayloadBytesMax, 1)));
  EXPECT_EQ(p.status, ParseStatus::ok) << p.why;
  FrameHeader h = data_header(FrameType::write, kChunkBytesMax, kFlagCompressed);
  h.algo = CompressAlgo::lz4;
  EXPECT_EQ(parse(frame(h, Bytes(100, 1))).status, ParseStatus::ok);
  // Largest offset that does not overflow.
  h = data_header(FrameType::read, 4096);
  h.offset_bytes = UINT64_MAX - 4096;
  EXPECT_EQ(parse(frame(h)).status, ParseStatus::ok);
  // Volume names: 255 bytes is the limit.
  h = FrameHeader{};
  h.type = FrameType::open_volume;
  EXPECT_EQ(parse(frame(h, Bytes(255, 'v'))).status, ParseStatus::ok);
  EXPECT_EQ(parse(raw_frame(0x03, 0, 0, 0, 0, 0, 0, 0, Bytes(256, 'v'))).status,
            ParseStatus::reject);
}

TEST(WanFrame, EncoderAssertsOnInvalidFrames) {
  uint8_t out[kFrameHeaderBytes];
  FrameHeader h = data_header(FrameType::read_data, 4096, kFlagZero | kFlagCompressed);
  EXPECT_DEATH(encode_header(out, h), "assertion failed");
  h = data_header(FrameType::read_data, 4096);
  h.payload_bytes = kFramePayloadBytesMax + 1;
  EXPECT_DEATH(encode_header(out, h), "assertion failed");
}

}  // namespace
}  // namespace ferry::wan

namespace ferry::wan {
namespace {

TEST(WanFrame, EpochCommitRoundTripsAndBadBodiesReject) {
  uint8_t body[kEpochCommitBytes];
  encode_epoch_commit(body, {0x1122334455667788ull, 42, 3 * 4096});
  const Bytes f = raw_frame(0x1B, 0, 1, 0, 3, 9, 0, 0, Bytes(body, body + sizeof body));
  FrameParse p = parse_frame(f, kFramePayloadBytesMax);
  ASSERT_EQ(p.status, ParseStatus::ok) << (p.why ? p.why : "");
  auto b = parse_epoch_commit(p.payload);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b.value().stream, 0x1122334455667788ull);
  EXPECT_EQ(b.value().epoch_id, 42u);
  EXPECT_EQ(b.value().data_bytes, 3u * 4096);
  // Epoch id 0 means "no epoch": refused; so are a short body and a commit without a volume.
  encode_epoch_commit(body, {1, 0, 0});
  EXPECT_EQ(parse_frame(raw_frame(0x1B, 0, 1, 0, 3, 9, 0, 0, Bytes(body, body + sizeof body)),
                        kFramePayloadBytesMax)
                .status,
            ParseStatus::reject);
  EXPECT_EQ(parse_frame(raw_frame(0x1B, 0, 1, 0, 3, 9, 0, 0, Bytes(body, body + 16)),
                        kFramePayloadBytesMax)
                .status,
            ParseStatus::reject);
  EXPECT_EQ(parse_frame(raw_frame(0x1B, 0, 1, 0, 0, 9, 0, 0, Bytes(body, body + sizeof body)),
                        kFramePayloadBytesMax)
                .status,
            ParseStatus::reject);
  EXPECT_EQ(parse_frame(raw_frame(0x1C, 0, 1, 0, 3, 9, 0, 0, {}), kFramePayloadBytesMax).status,
            ParseStatus::ok);
  // The EPOCH flag is valid on WRITE frames only.
  const Bytes p4k(4096, 7);
  EXPECT_EQ(parse_frame(raw_frame(0x13, kFlagEpoch | kFlagFinal, 1, 0, 1, 1, 0, 4096, p4k),
                        kFramePayloadBytesMax)
                .status,
            ParseStatus::ok);
  EXPECT_EQ(
      parse_frame(raw_frame(0x11, kFlagEpoch, 0, 0, 1, 1, 0, 4096, p4k), kFramePayloadBytesMax)
          .status,
      ParseStatus::reject);
}

}  // namespace
}  // namespace ferry::wan
