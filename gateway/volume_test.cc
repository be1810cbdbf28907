// Volume: stack descriptions parse (and bad ones are refused with the layer named), compose in
// the order written, refuse single-reactor layers on a shared stack, and the composed stack
// serves I/O (a fault layer fires where it says, data passes through the caches).
#include "gateway/volume.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "datapath/ram_device.h"

namespace ferry {
namespace {

Errc io(BlockDevice& dev, IoOp op, uint64_t off, std::vector<std::byte>& buf) {
  IoRequest r;
  bool done = false;
  r.op = op;
  r.offset_bytes = off;
  r.length_bytes = buf.size();
  r.data = buf.data();
  r.owner = &done;
  r.on_complete = [](IoRequest& q) noexcept { *static_cast<bool*>(q.owner) = true; };
  dev.submit(r);
  EXPECT_TRUE(done);
  return r.result;
}

TEST(VolumeStack, ParsesTopFirstAndNamesTheBadLayer) {
  std::vector<LayerSpec> s;
  ASSERT_EQ(
      parse_stack(
          " readahead:4MiB > ram-cache:64MiB>delay:2ms > fault:write@1MiB+4096=medium_error*2", s),
      "");
  ASSERT_EQ(s.size(), 4u);
  EXPECT_EQ(s[0].kind, LayerSpec::Kind::readahead);
  EXPECT_EQ(s[0].size_bytes, 4u << 20);
  EXPECT_EQ(s[1].size_bytes, 64u << 20);
  EXPECT_EQ(s[2].delay_us, 2000u);
  EXPECT_EQ(s[3].fault.op, IoOp::write);
  EXPECT_EQ(s[3].fault.offset_bytes, 1u << 20);
  EXPECT_EQ(s[3].fault.length_bytes, 4096u);
  EXPECT_EQ(s[3].fault.error, Errc::medium_error);
  EXPECT_EQ(s[3].fault.remaining, 2);
  EXPECT_EQ(parse_stack("", s), "");
  EXPECT_TRUE(s.empty());
  EXPECT_NE(parse_stack("ram-cache", s).find("ram-cache"), std::string::npos);
  EXPECT_NE(parse_stack("readahead > > ram-cache:1MiB", s).find("empty layer"), std::string::npos);
  EXPECT_NE(parse_stack("cache:64MiB", s).find("unknown layer 'cache'"), std::string::npos);
  EXPECT_NE(parse_stack("delay:5 minutes", s).find("delay"), std::string::npos);
  EXPECT_NE(parse_stack("fault:scribble", s).find("unknown operation"), std::string::npos);
  EXPECT_NE(parse_stack("fault:read=oops", s).find("unknown error"), std::string::npos);
}

TEST(VolumeStack, ParsesAJournalLayerWithPathAndSize) {
  std::vector<LayerSpec> st;
  ASSERT_EQ(
      parse_stack("journal:/var/lib/ferry/vm1.journal:1GiB > readahead > ram-cache:256MiB", st),
      "");
  ASSERT_EQ(st.size(), 3u);
  EXPECT_EQ(st[0].kind, LayerSpec::Kind::journal);
  EXPECT_EQ(st[0].path, "/var/lib/ferry/vm1.journal");
  EXPECT_EQ(st[0].size_bytes, 1ull << 30);
  EXPECT_TRUE(st[0].single_reactor());
  ASSERT_EQ(parse_stack("journal:/tmp/x.journal", st), "");
  EXPECT_EQ(st[0].path, "/tmp/x.journal");
  EXPECT_NE(parse_stack("journal:", st), "");
  EXPECT_NE(parse_stack("journal:/tmp/x:12", st), "");  // a size below 1MiB
}

TEST(VolumeStack, JournalPolicyIsParsedAndAMisspelledOneIsRefused) {
  std::vector<LayerSpec> st;
  ASSERT_EQ(parse_stack("journal:/tmp/x.journal:64MiB:cloud-persist", st), "");
  EXPECT_EQ(st[0].path, "/tmp/x.journal");
  EXPECT_EQ(st[0].size_bytes, 64ull << 20);
  EXPECT_EQ(st[0].policy, journal::Policy::cloud_persist);
  ASSERT_EQ(parse_stack("journal:/tmp/x.journal:test-clone", st), "");
  EXPECT_EQ(st[0].path, "/tmp/x.journal");
  EXPECT_EQ(st[0].policy, journal::Policy::test_clone);
  ASSERT_EQ(parse_stack("journal:/tmp/x.journal:1GiB", st), "");
  EXPECT_EQ(st[0].policy, journal::Policy::write_back);
  EXPECT_NE(parse_stack("journal:/tmp/x.journal:64MiB:cloud-persistent", st), "");
}

TEST(VolumeStack, ComposesInTheOrderWrittenAndServesIo) {
  auto base = RamDevice::create(8u << 20, 512);
  ASSERT_TRUE(base.ok());
  std::vector<LayerSpec> s;
  ASSERT_EQ(parse_stack("readahead > ram-cache:2MiB > fault:read@1MiB+4096=medium_error*1", s), "");
  std::string error;
  auto v = Volume::compose("vm1", *base.value(), s, false, error);
  ASSERT_NE(v, nullptr) << error;
  const std::string d = v->describe();
  EXPECT_LT(d.find("readahead"), d.find("ram-cache"));
  EXPECT_LT(d.find("ram-cache"), d.find("fault"));
  std::vector<std::byte> w(4096, std::byte{0x5a}), r(4096);
  ASSERT_EQ(io(v->top(), IoOp::write, 0, w), Errc::ok);
  ASSERT_EQ(io(v->top(), IoOp::read, 0, r), Errc::ok);
  EXPECT_EQ(r, w);
  EXPECT_EQ(io(v->top(), IoOp::read, 1u << 20, r), Errc::medium_error);  // the fault, once
  EXPECT_EQ(io(v->top(), IoOp::read, 1u << 20, r), Errc::ok);
  EXPECT_NE(v->stats_text().find("ram cache vm1"), std::string::npos);
}

TEST(VolumeStack, SharedStackRefusesSingleReactorLayers) {
  auto base = RamDevice::create(8u << 20, 512);
  ASSERT_TRUE(base.ok());
  std::vector<LayerSpec> s;
  ASSERT_EQ(parse_stack("ram-cache:2MiB", s), "");
  std::string error;
  EXPECT_EQ(Volume::compose("lun0", *base.value(), s, true, error), nullptr);
  EXPECT_NE(error.find("--threads 1"), std::string::npos) << error;
  ASSERT_EQ(parse_stack("delay:1ms > fault:flush", s), "");
  EXPECT_NE(Volume::compose("lun0", *base.value(), s, true, error), nullptr) << error;
}

}  // namespace
}  // namespace ferry
