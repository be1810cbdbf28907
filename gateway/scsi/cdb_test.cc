// Unit tests for CDB decoding/validation and sense building. Single-threaded.
#include "gateway/scsi/cdb.h"

#include <gtest/gtest.h>

#include "datapath/endian.h"
#include "gateway/scsi/sense.h"

namespace ferry::scsi {
namespace {

TEST(Cdb, LengthFollowsGroupCode) {
  EXPECT_EQ(cdb_length(0x08), 6u);
  EXPECT_EQ(cdb_length(0x28), 10u);
  EXPECT_EQ(cdb_length(0x55), 10u);
  EXPECT_EQ(cdb_length(0xa8), 12u);
  EXPECT_EQ(cdb_length(0x88), 16u);
  EXPECT_EQ(cdb_length(0x7f), 0u);
}

TEST(Cdb, EveryTableEntryMatchesItsGroupLength) {
  for (const CommandSpec& c : supported_commands()) {
    EXPECT_EQ(cdb_length(c.opcode), c.cdb_bytes) << int(c.opcode);
    EXPECT_EQ(c.usage[0], 0xff);
    EXPECT_EQ(c.has_service_action, opcode_has_service_action(c.opcode));
  }
}

TEST(Cdb, Read6ZeroLengthMeans256Blocks) {
  uint8_t c[16] = {0x08, 0x01, 0x02, 0x03, 0x00, 0};
  BlockCdb b = decode_block_cdb(c);
  EXPECT_EQ(b.lba, 0x010203u);
  EXPECT_EQ(b.transfer_length, 256u);
}

TEST(Cdb, Read16FieldsAndFlags) {
  uint8_t c[16] = {0x88, 0x18};
  store_be64(c + 2, 0x123456789aull);
  store_be32(c + 10, 77);
  BlockCdb b = decode_block_cdb(c);
  EXPECT_EQ(b.lba, 0x123456789aull);
  EXPECT_EQ(b.transfer_length, 77u);
  EXPECT_TRUE(b.fua);
  EXPECT_TRUE(b.dpo);
  EXPECT_TRUE(check_cdb(c).ok());
}

TEST(Cdb, WriteSame16UnmapNdobAndVerifyBytchk) {
  uint8_t ws[16] = {0x93, 0x09};
  BlockCdb b = decode_block_cdb(ws);
  EXPECT_TRUE(b.unmap);
  EXPECT_TRUE(b.ndob);
  uint8_t v[16] = {0x2f, 0x06};
  EXPECT_EQ(decode_block_cdb(v).bytchk, 3);
  uint8_t caw[16] = {0x89, 0x08};
  caw[13] = 5;
  EXPECT_EQ(decode_block_cdb(caw).transfer_length, 5u);
  EXPECT_TRUE(decode_block_cdb(caw).fua);
}

TEST(Cdb, UnknownOpcodeIsInvalidOpcode) {
  uint8_t c[16] = {0xc0};
  CdbCheck r = check_cdb(c);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.sense.asc, kInvalidOpcode);
}

TEST(Cdb, SanitizeAndOrwriteAreInvalidOpcodes) {
  uint8_t s[16] = {0x48};
  EXPECT_EQ(check_cdb(s).sense.asc, kInvalidOpcode);
  uint8_t o[16] = {0x8b};
  EXPECT_EQ(check_cdb(o).sense.asc, kInvalidOpcode);
}

TEST(Cdb, UnknownServiceActionIsInvalidField) {
  uint8_t c[16] = {0x9e, 0x11};
  CdbCheck r = check_cdb(c);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.sense.asc, kInvalidFieldInCdb);
  EXPECT_EQ(r.sense.field_pointer, 1);
}

TEST(Cdb, ReservedBitGivesFieldPointer) {
  uint8_t c[16] = {0x28, 0x01};  // READ(10) reserved bit 0 of byte 1
  CdbCheck r = check_cdb(c);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.sense.asc, kInvalidFieldInCdb);
  EXPECT_EQ(r.sense.field_pointer, 1);
  EXPECT_EQ(r.sense.bit_pointer, 0);
  uint8_t p[16] = {0x28, 0x20};  // RDPROTECT without protection information
  EXPECT_FALSE(check_cdb(p).ok());
  uint8_t ctl[16] = {0x00, 0, 0, 0, 0, 0x04};  // NACA
  EXPECT_EQ(check_cdb(ctl).sense.field_pointer, 5);
}

TEST(Cdb, AllocationLengths) {
  uint8_t inq[16] = {0x12, 0, 0, 0x01, 0x02};
  EXPECT_EQ(cdb_allocation_length(inq), 0x102u);
  uint8_t rl[16] = {0xa0};
  store_be32(rl + 6, 4096);
  EXPECT_EQ(cdb_allocation_length(rl), 4096u);
}

TEST(Sense, FixedFormatWithFieldPointer) {
  uint8_t b[kFixedSenseBytes];
  ASSERT_EQ(build_sense(invalid_field_in_cdb(7, 3), b), 18u);
  EXPECT_EQ(b[0], 0x70);
  EXPECT_EQ(b[2], 0x05);
  EXPECT_EQ(b[7], 10);
  EXPECT_EQ(b[12], 0x24);
  EXPECT_EQ(b[15], 0x80 | 0x40 | 0x08 | 3);
  EXPECT_EQ(load_be16(b + 16), 7);
}

TEST(Sense, InformationFieldSetsValid) {
  Sense s;
  s.key = SenseKey::miscompare;
  s.asc = kMiscompareDuringVerify;
  s.info_valid = true;
  s.information = 0x1234;
  uint8_t b[kFixedSenseBytes];
  build_sense(s, b);
  EXPECT_EQ(b[0], 0xf0);
  EXPECT_EQ(load_be32(b + 3), 0x1234u);
}

TEST(Sense, ErrcTable) {
  EXPECT_EQ(to_sense(Errc::medium_error).sense.key, SenseKey::medium_error);
  EXPECT_EQ(to_sense(Errc::medium_error).sense.asc, kUnrecoveredReadError);
  EXPECT_EQ(to_sense(Errc::out_of_range).sense.asc, kLbaOutOfRange);
  EXPECT_EQ(to_sense(Errc::write_protected).sense.key, SenseKey::data_protect);
  EXPECT_EQ(to_sense(Errc::miscompare).sense.key, SenseKey::miscompare);
  EXPECT_EQ(to_sense(Errc::would_block).status, Status::busy);
  EXPECT_EQ(to_sense(Errc::cancelled).status, Status::task_aborted);
}

}  // namespace
}  // namespace ferry::scsi
