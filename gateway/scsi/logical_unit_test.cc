// Unit tests for LogicalUnit / Target: SPC and SBC commands over a MemDevice, with their error
// sense. Single-threaded.
#include "gateway/scsi/logical_unit.h"

#include <gtest/gtest.h>

#include "gateway/scsi/lu_test_util.h"

namespace ferry::scsi::testing {
namespace {

TEST_F(LuTest, TestUnitReadyIsGood) { EXPECT_TRUE(run(cdb({0, 0, 0, 0, 0, 0}), {}, 0).good()); }

TEST_F(LuTest, UnknownOpcodeIsInvalidCommandOperationCode) {
  EXPECT_TRUE(run(cdb({0x48, 0, 0, 0, 0, 0, 0, 0, 0, 0}), {}, 0).check(5, 0x20, 0));
}

TEST_F(LuTest, InquiryStandard) {
  Reply r = run(cdb({0x12, 0, 0, 0, 96, 0}), {}, 96);
  ASSERT_TRUE(r.good());
  ASSERT_EQ(r.data.size(), 96u);
  EXPECT_EQ(r.data[0], 0x00);
  EXPECT_EQ(r.data[2], 0x06);
  EXPECT_EQ(r.data[3] & 0x0f, 2);
  EXPECT_EQ(std::string(r.data.begin() + 8, r.data.begin() + 16), "FERRY   ");
}

TEST_F(LuTest, InquiryTruncatedToAllocationLength) {
  Reply r = run(cdb({0x12, 0, 0, 0, 5, 0}), {}, 5);
  ASSERT_TRUE(r.good());
  EXPECT_EQ(r.command_transfer_bytes, 5u);
}

TEST_F(LuTest, InquiryPageCodeWithoutEvpdIsInvalidField) {
  EXPECT_TRUE(run(cdb({0x12, 0, 0x80, 0, 96, 0}), {}, 96).check(5, 0x24, 0));
}

TEST_F(LuTest, InquiryVpdPages) {
  Reply r = run(cdb({0x12, 1, 0x00, 0, 255, 0}), {}, 255);
  ASSERT_TRUE(r.good());
  EXPECT_EQ(r.data[3], 6);
  r = run(cdb({0x12, 1, 0x80, 0, 255, 0}), {}, 255);
  ASSERT_TRUE(r.good());
  EXPECT_EQ(std::string(r.data.begin() + 4, r.data.end()), "SN0001");
  r = run(cdb({0x12, 1, 0x83, 1, 0, 0}), {}, 256, &nexus_[0]);
  ASSERT_TRUE(r.good());
  EXPECT_EQ(r.data[4 + 1] & 0x0f, 3);  // first designator: NAA
  EXPECT_EQ(r.data[4 + 4] >> 4, 6);    // NAA 6
  r = run(cdb({0x12, 1, 0xb0, 0, 255, 0}), {}, 255);
  ASSERT_TRUE(r.good());
  EXPECT_EQ(load_be32(r.data.data() + 8), (1u << 20) / 512);
  EXPECT_EQ(load_be32(r.data.data() + 24), LogicalUnit::kMaxUnmapDescriptors);
  r = run(cdb({0x12, 1, 0xb1, 0, 255, 0}), {}, 255);
  EXPECT_EQ(load_be16(r.data.data() + 4), 1);
  r = run(cdb({0x12, 1, 0xb2, 0, 255, 0}), {}, 255);
  EXPECT_EQ(r.data[5], 0x80 | 0x40 | 0x20 | 0x04);
  EXPECT_TRUE(run(cdb({0x12, 1, 0xc7, 0, 255, 0}), {}, 255).check(5, 0x24, 0));
}

TEST_F(LuTest, ReadCapacity10And16) {
  Reply r = run(cdb({0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}), {}, 8);
  ASSERT_TRUE(r.good());
  EXPECT_EQ(load_be32(r.data.data()), 2047u);
  EXPECT_EQ(load_be32(r.data.data() + 4), 512u);
  std::vector<uint8_t> c(16, 0);
  c[0] = 0x9e;
  c[1] = 0x10;
  store_be32(c.data() + 10, 32);
  r = run(c, {}, 32);
  ASSERT_TRUE(r.good());
  EXPECT_EQ(load_be64(r.data.data()), 2047u);
  EXPECT_EQ(r.data[14], 0xc0);  // LBPME, LBPRZ
}

TEST_F(LuTest, ReadCapacity10WithLbaButNoPmiIsInvalidField) {
  EXPECT_TRUE(run(cdb({0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0}), {}, 8).check(5, 0x24, 0));
}

TEST_F(LuTest, WriteThenReadRoundTrip) {
  EXPECT_TRUE(write(10, pattern(4, 0xab)).good());
  Reply r = read(10, 4);
  ASSERT_TRUE(r.good());
  EXPECT_EQ(r.data, pattern(4, 0xab));
}

TEST_F(LuTest, ReadWriteAllCdbSizes) {
  EXPECT_TRUE(run(cdb({0x0a, 0, 0, 1, 1, 0}), pattern(1, 1), 512).good());
  EXPECT_TRUE(run(rw10(0x2a, 2, 1), pattern(1, 2), 512).good());
  std::vector<uint8_t> w12(12, 0);
  w12[0] = 0xaa;
  store_be32(w12.data() + 2, 3);
  store_be32(w12.data() + 6, 1);
  EXPECT_TRUE(run(w12, pattern(1, 3), 512).good());
  Reply r = run(cdb({0x08, 0, 0, 1, 3, 0}), {}, 3 * 512);
  ASSERT_TRUE(r.good());
  EXPECT_EQ(r.data[0], 1);
  EXPECT_EQ(r.data[512], 2);
  EXPECT_EQ(r.data[1024], 3);
  w12[0] = 0xa8;
  r = run(w12, {}, 512);
  EXPECT_EQ(r.data[0], 3);
}

TEST_F(LuTest, Read6ZeroLengthReads256Blocks) {
  Reply r = run(cdb({0x08, 0, 0, 0, 0, 0}), {}, 256 * 512);
  ASSERT_TRUE(r.good());
  EXPECT_EQ(r.command_transfer_bytes, 256u * 512);
}

TEST_F(LuTest, ZeroLengthWriteAndReadAreGood) {
  EXPECT_TRUE(run(rw10(0x2a, 0, 0), {}, 0).good());
  EXPECT_TRUE(run(rw10(0x28, 0, 0), {}, 0).good());
  EXPECT_TRUE(dev_.ops.empty());
}

TEST_F(LuTest, LbaOutOfRange) {
  EXPECT_TRUE(read(2047, 2).check(5, 0x21, 0));
  EXPECT_TRUE(read(2048, 1).check(5, 0x21, 0));
  EXPECT_TRUE(run(rw16(0x88, ~0ull, 2), {}, 1024).check(5, 0x21, 0));  // LBA + length overflow
  EXPECT_TRUE(run(rw16(0x8a, 2048, 1), pattern(1, 0), 512).check(5, 0x21, 0));
}

TEST_F(LuTest, TransferLengthAboveMaximumIsInvalidField) {
  dev_.mutable_geometry().max_transfer_bytes = 64 * 512;
  make_lu();
  EXPECT_TRUE(run(rw16(0x88, 0, 65), {}, 65 * 512).check(5, 0x24, 0));
  EXPECT_TRUE(run(rw16(0x88, 0, 64), {}, 64 * 512).good());
}

TEST_F(LuTest, WriteWithShortEdtlWritesOnlyWhatArrived) {
  EXPECT_TRUE(write(0, pattern(2, 'a')).good());
  Reply r = run(rw10(0x2a, 0, 2), pattern(1, 'b'), 512);
  ASSERT_TRUE(r.good());
  EXPECT_EQ(r.command_transfer_bytes, 1024u);
  r = read(0, 2);
  EXPECT_EQ(r.data[0], 'b');
  EXPECT_EQ(r.data[512], 'a');
  EXPECT_TRUE(run(rw10(0x2a, 0, 1), {}, 0).good());  // EDTL 0: nothing written, GOOD
}

TEST_F(LuTest, FuaReachesTheDevice) {
  EXPECT_TRUE(run(rw10(0x2a, 0, 1, 0x08), pattern(1, 1), 512).good());
  EXPECT_EQ(dev_.fua_writes, 1);
}

TEST_F(LuTest, MediumErrorOnRead) {
  dev_.fail_next = Errc::medium_error;
  EXPECT_TRUE(read(0, 1).check(3, 0x11, 0));
}

TEST_F(LuTest, ReadOnlyDeviceRejectsWritesAsWriteProtected) {
  dev_.mutable_geometry().read_only = true;
  make_lu();
  EXPECT_TRUE(write(0, pattern(1, 1)).check(7, 0x27, 0));
  Reply r = run(cdb({0x1a, 0, 0x3f, 0, 255, 0}), {}, 255);
  EXPECT_EQ(r.data[2] & 0x80, 0x80);
}

TEST_F(LuTest, AsyncDeviceCompletesLater) {
  dev_.defer = true;
  EXPECT_TRUE(write(5, pattern(1, 9)).good());
  Reply r = read(5, 1);
  ASSERT_TRUE(r.good());
  EXPECT_EQ(r.data[0], 9);
}

TEST_F(LuTest, VerifyBytchk) {
  EXPECT_TRUE(write(0, pattern(2, 7)).good());
  EXPECT_TRUE(run(rw10(0x2f, 0, 2, 0x00), {}, 0).good());
  EXPECT_TRUE(run(rw10(0x2f, 0, 2, 0x02), pattern(2, 7), 1024).good());
  std::vector<uint8_t> bad = pattern(2, 7);
  bad[700] = 8;
  Reply r = run(rw10(0x2f, 0, 2, 0x02), bad, 1024);
  ASSERT_TRUE(r.check(0x0e, 0x1d, 0));
  EXPECT_EQ(r.sense[0] & 0x80, 0x80);
  EXPECT_EQ(load_be32(r.sense.data() + 3), 700u);
  EXPECT_TRUE(run(rw10(0x2f, 0, 2, 0x06), pattern(1, 7), 512).good());  // BYTCHK 3
  EXPECT_TRUE(run(rw10(0x2f, 0, 2, 0x04), {}, 0).check(5, 0x24, 0));    // BYTCHK 2
}

TEST_F(LuTest, WriteAndVerifyWritesWithFua) {
  EXPECT_TRUE(run(rw10(0x2e, 3, 1, 0x02), pattern(1, 4), 512).good());
  EXPECT_EQ(dev_.fua_writes, 1);
  EXPECT_EQ(read(3, 1).data[0], 4);
}

TEST_F(LuTest, WriteSamePattern) {
  std::vector<uint8_t> blk = pattern(1, 0x5a);
  blk[0] = 1;
  EXPECT_TRUE(run(rw16(0x93, 100, 300), blk, 512).good());
  Reply r = read(100, 300);
  for (int i = 0; i < 300; ++i) ASSERT_EQ(r.data[i * 512], 1);
  EXPECT_EQ(r.data[1], 0x5a);
  EXPECT_EQ(read(400, 1).data[0], 0);
}

TEST_F(LuTest, WriteSameUnmapOfZeroBlockDeallocates) {
  EXPECT_TRUE(write(0, pattern(4, 3)).good());
  EXPECT_TRUE(run(rw10(0x41, 0, 4, 0x08), pattern(1, 0), 512).good());
  EXPECT_EQ(dev_.deallocating_zeroes, 1);
  EXPECT_EQ(read(0, 4).data, pattern(4, 0));
  EXPECT_TRUE(run(rw16(0x93, 0, 4, 0x09), {}, 0).good());  // NDOB
  EXPECT_EQ(dev_.deallocating_zeroes, 2);
}

TEST_F(LuTest, WriteSameErrors) {
  EXPECT_TRUE(run(rw10(0x41, 0, 0), pattern(1, 1), 512).check(5, 0x24, 0));  // WSNZ
  EXPECT_TRUE(run(rw10(0x41, 2047, 2), pattern(1, 1), 512).check(5, 0x21, 0));
  EXPECT_TRUE(run(rw10(0x41, 0, 1, 0x10), pattern(1, 1), 512).check(5, 0x24, 0));  // ANCHOR
}

std::vector<uint8_t> unmap_list(std::initializer_list<std::pair<uint64_t, uint32_t>> d) {
  std::vector<uint8_t> p(8 + 16 * d.size(), 0);
  store_be16(p.data(), static_cast<uint16_t>(p.size() - 2));
  store_be16(p.data() + 2, static_cast<uint16_t>(16 * d.size()));
  size_t i = 0;
  for (auto [lba, n] : d) {
    store_be64(p.data() + 8 + 16 * i, lba);
    store_be32(p.data() + 16 + 16 * i, n);
    ++i;
  }
  return p;
}
std::vector<uint8_t> unmap_cdb(uint16_t len) {
  std::vector<uint8_t> c(10, 0);
  c[0] = 0x42;
  store_be16(c.data() + 7, len);
  return c;
}

TEST_F(LuTest, UnmapDescriptors) {
  EXPECT_TRUE(write(0, pattern(8, 1)).good());
  auto p = unmap_list({{0, 2}, {4, 2}, {6, 0}});
  EXPECT_TRUE(run(unmap_cdb(uint16_t(p.size())), p, uint32_t(p.size())).good());
  Reply r = read(0, 8);
  EXPECT_EQ(r.data[0], 0);
  EXPECT_EQ(r.data[2 * 512], 1);
  EXPECT_EQ(r.data[4 * 512], 0);
  EXPECT_EQ(r.data[7 * 512], 1);
}

TEST_F(LuTest, UnmapErrors) {
  auto p = unmap_list({{2047, 2}});
  EXPECT_TRUE(run(unmap_cdb(uint16_t(p.size())), p, uint32_t(p.size())).check(5, 0x21, 0));
  EXPECT_TRUE(run(unmap_cdb(4), p, 4).check(5, 0x1a, 0));
  EXPECT_TRUE(run(unmap_cdb(0), {}, 0).good());
  std::vector<std::pair<uint64_t, uint32_t>> many;
  std::vector<uint8_t> big(8 + 16 * 65, 0);
  store_be16(big.data() + 2, 16 * 65);
  EXPECT_TRUE(run(unmap_cdb(uint16_t(big.size())), big, uint32_t(big.size())).check(5, 0x26, 0));
  auto huge = unmap_list({{0, LogicalUnit::kMaxUnmapLbaCount + 1}});
  dev_.mutable_geometry().block_count = 1ull << 30;
  dev_.bytes_.resize(0);
  make_lu();
  EXPECT_TRUE(run(unmap_cdb(uint16_t(huge.size())), huge, uint32_t(huge.size())).check(5, 0x26, 0));
}

TEST_F(LuTest, GetLbaStatusReportsMapped) {
  std::vector<uint8_t> c(16, 0);
  c[0] = 0x9e;
  c[1] = 0x12;
  store_be64(c.data() + 2, 100);
  store_be32(c.data() + 10, 24);
  Reply r = run(c, {}, 24);
  ASSERT_TRUE(r.good());
  EXPECT_EQ(load_be32(r.data.data()), 20u);
  EXPECT_EQ(load_be64(r.data.data() + 8), 100u);
  EXPECT_EQ(load_be32(r.data.data() + 16), 2048u - 100);
  EXPECT_EQ(r.data[20], 0);
  store_be64(c.data() + 2, 2048);
  EXPECT_TRUE(run(c, {}, 24).check(5, 0x21, 0));
}

std::vector<uint8_t> caw_cdb(uint64_t lba, uint8_t n) {
  std::vector<uint8_t> c(16, 0);
  c[0] = 0x89;
  store_be64(c.data() + 2, lba);
  c[13] = n;
  return c;
}

TEST_F(LuTest, CompareAndWriteMatchWrites) {
  EXPECT_TRUE(write(8, pattern(1, 'x')).good());
  std::vector<uint8_t> d = pattern(1, 'x');
  auto nw = pattern(1, 'y');
  d.insert(d.end(), nw.begin(), nw.end());
  EXPECT_TRUE(run(caw_cdb(8, 1), d, 1024).good());
  EXPECT_EQ(read(8, 1).data[0], 'y');
}

TEST_F(LuTest, CompareAndWriteMiscompareReportsOffset) {
  EXPECT_TRUE(write(8, pattern(2, 'x')).good());
  std::vector<uint8_t> d = pattern(2, 'x');
  d[600] = 'q';
  auto nw = pattern(2, 'y');
  d.insert(d.end(), nw.begin(), nw.end());
  Reply r = run(caw_cdb(8, 2), d, 2048);
  ASSERT_TRUE(r.check(0x0e, 0x1d, 0));
  EXPECT_EQ(load_be32(r.sense.data() + 3), 600u);
  EXPECT_EQ(read(8, 1).data[0], 'x');
}

TEST_F(LuTest, CompareAndWriteErrors) {
  EXPECT_TRUE(run(caw_cdb(2047, 2), pattern(4, 0), 2048).check(5, 0x21, 0));
  EXPECT_TRUE(run(caw_cdb(0, 1), pattern(4, 0), 2048).check(5, 0x24, 0));  // data-out size
  EXPECT_TRUE(run(caw_cdb(0, 0), {}, 0).good());
}

TEST_F(LuTest, CompareAndWriteAsync) {
  dev_.defer = true;
  std::vector<uint8_t> d = pattern(2, 0);
  std::fill(d.begin() + 512, d.end(), 'z');
  EXPECT_TRUE(run(caw_cdb(1, 1), d, 1024).good());
  EXPECT_EQ(read(1, 1).data[0], 'z');
}

TEST_F(LuTest, SynchronizeCacheFlushes) {
  EXPECT_TRUE(run(rw10(0x35, 0, 0), {}, 0).good());
  EXPECT_EQ(dev_.ops.back(), IoOp::flush);
  EXPECT_TRUE(run(rw16(0x91, 2048, 1), {}, 0).check(5, 0x21, 0));
}

TEST_F(LuTest, StartStopUnitRefusesEjectOfFixedMedium) {
  EXPECT_TRUE(run(cdb({0x1b, 1, 0, 0, 0x02, 0}), {}, 0).check(5, 0x24, 0));
  EXPECT_TRUE(run(cdb({0x1b, 1, 0, 0, 0x01, 0}), {}, 0).good());
}

TEST_F(LuTest, WriteSameZeroBlocksBeyondEndIsLbaOutOfRange) {
  EXPECT_TRUE(run(rw10(0x41, 2049, 0), pattern(1, 1), 512).check(5, 0x21, 0));
  EXPECT_TRUE(run(rw10(0x41, 0xffffffff, 0), pattern(1, 1), 512).check(5, 0x21, 0));
}

TEST_F(LuTest, PrefetchChecksRange) {
  EXPECT_TRUE(run(rw10(0x34, 0, 10), {}, 0).good());
  EXPECT_TRUE(run(rw16(0x90, 2040, 10), {}, 0).check(5, 0x21, 0));
}

TEST_F(LuTest, ModeSenseAllPagesAndCachingWce) {
  Reply r = run(cdb({0x1a, 0, 0x3f, 0, 255, 0}), {}, 255);
  ASSERT_TRUE(r.good());
  EXPECT_EQ(r.data[0] + 1u, r.data.size());
  EXPECT_EQ(r.data[3], 8);  // block descriptor
  EXPECT_EQ(load_be24(r.data.data() + 4 + 5), 512u);
  const uint8_t* caching = r.data.data() + 12;
  EXPECT_EQ(caching[0], 0x08);
  EXPECT_EQ(caching[2] & 0x04, 0x04);
  r = run(cdb({0x1a, 0x08, 0x48, 0, 255, 0}), {}, 255);  // changeable caching, DBD
  ASSERT_TRUE(r.good());
  EXPECT_EQ(r.data[3], 0);
  EXPECT_EQ(r.data[4 + 2], 0x04);
}

TEST_F(LuTest, ModeSenseErrors) {
  EXPECT_TRUE(run(cdb({0x1a, 0, 0xc8, 0, 255, 0}), {}, 255).check(5, 0x39, 0));  // saved
  EXPECT_TRUE(run(cdb({0x1a, 0, 0x19, 0, 255, 0}), {}, 255).check(5, 0x24, 0));
  EXPECT_TRUE(run(cdb({0x1a, 0, 0x08, 1, 255, 0}), {}, 255).check(5, 0x24, 0));
}

TEST_F(LuTest, ModeSense10LongLba) {
  Reply r = run(cdb({0x5a, 0x10, 0x0a, 0, 0, 0, 0, 0, 255, 0}), {}, 255);
  ASSERT_TRUE(r.good());
  EXPECT_EQ(r.data[4] & 1, 1);
  EXPECT_EQ(load_be16(r.data.data() + 6), 16);
  EXPECT_EQ(load_be64(r.data.data() + 8), 2048u);
  EXPECT_EQ(r.data[24], 0x0a);
}

TEST_F(LuTest, ModeSelectClearsWceAndRaisesUnitAttention) {
  login_both();
  std::vector<uint8_t> p(4 + 20, 0);
  p[4] = 0x08;
  p[5] = 0x12;  // WCE = 0
  EXPECT_TRUE(run(cdb({0x15, 0x10, 0, 0, 24, 0}), p, 24, &nexus_[0]).good());
  Reply r = run(cdb({0x1a, 0x08, 0x08, 0, 255, 0}), {}, 255, &nexus_[0]);
  EXPECT_EQ(r.data[4 + 2] & 0x04, 0);
  EXPECT_TRUE(run(cdb({0, 0, 0, 0, 0, 0}), {}, 0, &nexus_[1]).check(6, 0x2a, 0x01));
  EXPECT_TRUE(write(0, pattern(1, 1), &nexus_[0]).good());
  EXPECT_EQ(dev_.fua_writes, 1);  // write cache disabled: every write is FUA
}

TEST_F(LuTest, ModeSelectRejectsUnchangeableBitsAndBadLengths) {
  std::vector<uint8_t> p(4 + 12, 0);
  p[4] = 0x0a;
  p[5] = 0x0a;
  p[6] = 0x04;  // D_SENSE: not changeable
  EXPECT_TRUE(run(cdb({0x15, 0x10, 0, 0, 16, 0}), p, 16).check(5, 0x26, 0));
  EXPECT_TRUE(run(cdb({0x15, 0x10, 0, 0, 10, 0}), p, 10).check(5, 0x1a, 0));
  EXPECT_TRUE(run(cdb({0x15, 0x11, 0, 0, 16, 0}), p, 16).check(5, 0x24, 0));  // SP
}

TEST_F(LuTest, ReportSupportedOpcodesAll) {
  std::vector<uint8_t> c(12, 0);
  c[0] = 0xa3;
  c[1] = 0x0c;
  store_be32(c.data() + 6, 4096);
  Reply r = run(c, {}, 4096);
  ASSERT_TRUE(r.good());
  const uint32_t len = load_be32(r.data.data());
  EXPECT_EQ(len, supported_commands().size() * 8);
  c[2] = 0x80;  // RCTD
  r = run(c, {}, 4096);
  EXPECT_EQ(load_be32(r.data.data()), supported_commands().size() * 20);
  EXPECT_EQ(r.data[4 + 5] & 0x02, 0x02);
}

TEST_F(LuTest, ReportSupportedOpcodesOneCommand) {
  std::vector<uint8_t> c(12, 0);
  c[0] = 0xa3;
  c[1] = 0x0c;
  c[2] = 1;
  c[3] = 0x28;
  store_be32(c.data() + 6, 512);
  Reply r = run(c, {}, 512);
  ASSERT_TRUE(r.good());
  EXPECT_EQ(r.data[1] & 7, 3);
  EXPECT_EQ(load_be16(r.data.data() + 2), 10);
  EXPECT_EQ(r.data[4], 0x28);
  c[2] = 2;
  c[3] = 0x9e;
  store_be16(c.data() + 4, 0x10);
  r = run(c, {}, 512);
  ASSERT_TRUE(r.good());
  EXPECT_EQ(r.data[4], 0x9e);
  EXPECT_EQ(load_be16(r.data.data() + 2), 16);
  c[2] = 1;  // service action opcode in the no-SA form
  EXPECT_TRUE(run(c, {}, 512).check(5, 0x24, 0));
  c[3] = 0xc1;
  r = run(c, {}, 512);
  EXPECT_EQ(r.data[1] & 7, 1);  // not supported
}

TEST_F(LuTest, RequestSenseReturnsUnitAttentionThenNoSense) {
  target_->nexus_new(nexus_[0]);
  Reply r = run(cdb({0x03, 0, 0, 0, 18, 0}), {}, 18, &nexus_[0]);
  ASSERT_TRUE(r.good());
  EXPECT_EQ(r.data[2], 0x06);
  EXPECT_EQ(r.data[12], 0x29);
  r = run(cdb({0x03, 0, 0, 0, 18, 0}), {}, 18, &nexus_[0]);
  EXPECT_EQ(r.data[2], 0x00);
  EXPECT_TRUE(run(cdb({0, 0, 0, 0, 0, 0}), {}, 0, &nexus_[0]).good());
}

TEST_F(LuTest, InquiryDoesNotConsumeUnitAttention) {
  target_->nexus_new(nexus_[0]);
  EXPECT_TRUE(run(cdb({0x12, 0, 0, 0, 36, 0}), {}, 36, &nexus_[0]).good());
  EXPECT_TRUE(read(0, 1, &nexus_[0]).check(6, 0x29, 0));
  EXPECT_TRUE(read(0, 1, &nexus_[0]).good());
}

TEST_F(LuTest, LunResetRaisesUnitAttentionForEveryNexusAndDropsReserve) {
  login_both();
  EXPECT_TRUE(run(cdb({0x16, 0, 0, 0, 0, 0}), {}, 0, &nexus_[0]).good());
  EXPECT_EQ(run(cdb({0, 0, 0, 0, 0, 0}), {}, 0, &nexus_[1]).status, Status::reservation_conflict);
  target_->reset_lun(Target::encode_lun(0), &nexus_[0]);
  EXPECT_TRUE(run(cdb({0, 0, 0, 0, 0, 0}), {}, 0, &nexus_[1]).check(6, 0x29, 0x03));
  EXPECT_TRUE(run(cdb({0, 0, 0, 0, 0, 0}), {}, 0, &nexus_[1]).good());
  EXPECT_TRUE(run(cdb({0, 0, 0, 0, 0, 0}), {}, 0, &nexus_[0]).check(6, 0x29, 0x03));  // issuer too
  EXPECT_TRUE(run(cdb({0, 0, 0, 0, 0, 0}), {}, 0, &nexus_[0]).good());
}

TEST_F(LuTest, Reserve6ConflictsAndReleases) {
  login_both();
  EXPECT_TRUE(run(cdb({0x16, 0, 0, 0, 0, 0}), {}, 0, &nexus_[0]).good());
  EXPECT_TRUE(run(cdb({0x16, 0, 0, 0, 0, 0}), {}, 0, &nexus_[0]).good());
  EXPECT_EQ(run(cdb({0x16, 0, 0, 0, 0, 0}), {}, 0, &nexus_[1]).status,
            Status::reservation_conflict);
  EXPECT_EQ(read(0, 1, &nexus_[1]).status, Status::reservation_conflict);
  EXPECT_TRUE(run(cdb({0x12, 0, 0, 0, 36, 0}), {}, 36, &nexus_[1]).good());
  EXPECT_TRUE(run(cdb({0x17, 0, 0, 0, 0, 0}), {}, 0, &nexus_[1]).good());  // no effect
  EXPECT_EQ(read(0, 1, &nexus_[1]).status, Status::reservation_conflict);
  EXPECT_TRUE(run(cdb({0x17, 0, 0, 0, 0, 0}), {}, 0, &nexus_[0]).good());
  EXPECT_TRUE(read(0, 1, &nexus_[1]).good());
}

TEST_F(LuTest, NexusGoneReleasesReserve) {
  login_both();
  EXPECT_TRUE(run(cdb({0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0}), {}, 0, &nexus_[0]).good());
  EXPECT_EQ(read(0, 1, &nexus_[1]).status, Status::reservation_conflict);
  target_->nexus_gone(nexus_[0]);
  EXPECT_TRUE(read(0, 1, &nexus_[1]).good());
}

TEST_F(LuTest, ReportLunsAndMissingLun) {
  std::vector<uint8_t> c(12, 0);
  c[0] = 0xa0;
  store_be32(c.data() + 6, 64);
  Reply r = run(c, {}, 64);
  ASSERT_TRUE(r.good());
  EXPECT_EQ(load_be32(r.data.data()), 8u);
  EXPECT_EQ(r.data.size(), 16u);
  c[2] = 1;
  r = run(c, {}, 64);
  EXPECT_EQ(load_be32(r.data.data()), 0u);
  c[2] = 3;
  EXPECT_TRUE(run(c, {}, 64).check(5, 0x24, 0));
  const uint64_t lun5 = Target::encode_lun(5);
  r = run(cdb({0x12, 0, 0, 0, 36, 0}), {}, 36, nullptr, lun5);
  ASSERT_TRUE(r.good());
  EXPECT_EQ(r.data[0], 0x7f);
  EXPECT_TRUE(run(cdb({0, 0, 0, 0, 0, 0}), {}, 0, nullptr, lun5).check(5, 0x25, 0));
  r = run(cdb({0x03, 0, 0, 0, 18, 0}), {}, 18, nullptr, lun5);
  ASSERT_TRUE(r.good());
  EXPECT_EQ(r.data[12], 0x25);
}

TEST(TargetLun, EncodeDecode) {
  EXPECT_EQ(Target::encode_lun(3), 0x0003000000000000ull);
  EXPECT_EQ(Target::decode_lun(0x0003000000000000ull), 3);
  EXPECT_EQ(Target::encode_lun(300), 0x412c000000000000ull);
  EXPECT_EQ(Target::decode_lun(0x412c000000000000ull), 300);
  EXPECT_EQ(Target::decode_lun(0x0100000000000000ull), -1);  // bus 1
  EXPECT_EQ(Target::decode_lun(0x0000000000000001ull), -1);  // second level
}

class Lu4kTest : public LuTest {
 protected:
  Lu4kTest() : LuTest(256, 4096) {}
};

TEST_F(Lu4kTest, FourKiBBlocks) {
  Reply r = run(cdb({0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}), {}, 8);
  EXPECT_EQ(load_be32(r.data.data() + 4), 4096u);
  EXPECT_TRUE(write(255, pattern(1, 6)).good());
  EXPECT_EQ(read(255, 1).data, pattern(1, 6));
  EXPECT_TRUE(read(255, 2).check(5, 0x21, 0));
  std::vector<uint8_t> blk = pattern(1, 2);
  EXPECT_TRUE(run(rw10(0x41, 10, 3), blk, 4096).good());
  EXPECT_EQ(read(12, 1).data, blk);
}

}  // namespace
}  // namespace ferry::scsi::testing
