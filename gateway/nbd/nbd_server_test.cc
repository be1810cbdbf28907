// NbdServer end to end: a Reactor thread serving RamDevices over 127.0.0.1 (ephemeral port)
// and a Unix socket, driven by libnbd's synchronous C API from the test thread.
#include <gtest/gtest.h>
#include <libnbd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "datapath/ram_device.h"
#include "datapath/reactor.h"
#include "gateway/nbd/codec.h"
#include "gateway/nbd/server.h"

namespace ferry::nbd {
namespace {

constexpr uint64_t kSize = 64ull << 20;

// Counts the requests of each kind that reach `next`; its geometry can claim that block
// status is remote (a WAN round trip), as RemoteDevice's does.
class CountingDevice final : public BlockDevice {
 public:
  CountingDevice(BlockDevice& next, bool status_remote) : next_(next), remote_(status_remote) {}
  Geometry geometry() const noexcept override {
    Geometry g = next_.geometry();
    g.block_status_remote = remote_;
    return g;
  }
  void submit(IoRequest& r) noexcept override {
    (r.op == IoOp::block_status ? status : r.op == IoOp::read ? reads : others)++;
    next_.submit(r);
  }
  std::string_view describe() const noexcept override { return "counting"; }
  std::atomic<int> reads{0}, status{0}, others{0};

 private:
  BlockDevice& next_;
  bool remote_;
};

class NbdServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dev0_ = std::move(RamDevice::create(kSize).value());
    dev1_ = std::move(RamDevice::create(kSize / 2).value());
    local_ = std::make_unique<CountingDevice>(*dev1_, false);
    remote_ = std::make_unique<CountingDevice>(*dev1_, true);
    NbdOptions o;
    o.port = 0;
    o.unix_path = "/tmp/ferry-nbd-test-" + std::to_string(getpid()) + ".sock";
    unix_path_ = o.unix_path;
    server_ = std::make_unique<NbdServer>(
        o, std::vector<NbdExport>{{"lun0", dev0_.get(), "ram 0", false},
                                  {"lun1", dev1_.get(), "", false},
                                  {"local", local_.get(), "", false},
                                  {"remote", remote_.get(), "", false}});
    reactor_ = std::make_unique<Reactor>(0, 256ull << 20);
    std::atomic<int> ready{0};
    thread_ = std::thread([&] {
      if (!reactor_->init()) {
        ready = -1;
        return;
      }
      if (!server_->start_listening(*reactor_)) {
        ready = -1;
        return;
      }
      ready = 1;
      reactor_->run();
      server_->stop_listening(*reactor_);
      // Let the connections drain for a moment, then stop for good.
      Timer t;
      reactor_->arm(
          t, 100'000'000, [](void* r) noexcept { static_cast<Reactor*>(r)->stop(); },
          reactor_.get());
      reactor_->run();
    });
    while (ready == 0) std::this_thread::yield();
    ASSERT_EQ(ready, 1);
    port_ = std::to_string(server_->bound_port());
  }
  void TearDown() override {
    reactor_->stop();
    thread_.join();
  }
  nbd_handle* connect(const char* name = "lun0", bool structured = true) {
    nbd_handle* h = nbd_create();
    EXPECT_NE(h, nullptr);
    nbd_set_export_name(h, name);
    nbd_set_request_structured_replies(h, structured);
    nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION);
    if (nbd_connect_tcp(h, "127.0.0.1", port_.c_str()) == -1) {
      ADD_FAILURE() << nbd_get_error();
      nbd_close(h);
      return nullptr;
    }
    return h;
  }

  std::unique_ptr<RamDevice> dev0_, dev1_;
  std::unique_ptr<CountingDevice> local_, remote_;
  std::unique_ptr<NbdServer> server_;
  std::unique_ptr<Reactor> reactor_;
  std::thread thread_;
  std::string port_, unix_path_;
};

struct Extent {
  uint64_t length;
  uint32_t flags;
};
int collect(void* user, const char*, uint64_t, uint32_t* entries, size_t n, int*) {
  auto* v = static_cast<std::vector<Extent>*>(user);
  for (size_t i = 0; i + 1 < n; i += 2) v->push_back({entries[i], entries[i + 1]});
  return 0;
}
std::vector<Extent> block_status(nbd_handle* h, uint64_t len, uint64_t off, uint32_t flags = 0) {
  std::vector<Extent> v;
  EXPECT_EQ(nbd_block_status(h, len, off, (nbd_extent_callback){collect, &v, nullptr}, flags), 0)
      << nbd_get_error();
  return v;
}

TEST_F(NbdServerTest, NegotiatesAndAdvertises) {
  nbd_handle* h = connect();
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(nbd_get_size(h), int64_t(kSize));
  EXPECT_EQ(nbd_get_structured_replies_negotiated(h), 1);
  EXPECT_EQ(nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION), 1);
  EXPECT_EQ(nbd_can_multi_conn(h), 1);
  EXPECT_EQ(nbd_can_flush(h), 1);
  EXPECT_EQ(nbd_can_fua(h), 1);
  EXPECT_EQ(nbd_can_trim(h), 1);
  EXPECT_EQ(nbd_can_zero(h), 1);
  EXPECT_EQ(nbd_can_fast_zero(h), 1);
  EXPECT_EQ(nbd_can_cache(h), 1);
  EXPECT_EQ(nbd_can_df(h), 1);
  EXPECT_EQ(nbd_is_read_only(h), 0);
  EXPECT_EQ(nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM), 512);
  EXPECT_EQ(nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED), 4096);
  EXPECT_EQ(nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM), 32 << 20);
  EXPECT_EQ(nbd_shutdown(h, 0), 0);
  nbd_close(h);
}

TEST_F(NbdServerTest, DefaultExportIsLun0AndLun1Exists) {
  nbd_handle* h = connect("");
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(nbd_get_size(h), int64_t(kSize));
  nbd_close(h);
  h = connect("lun1");
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(nbd_get_size(h), int64_t(kSize / 2));
  nbd_close(h);
  nbd_handle* bad = nbd_create();
  nbd_set_export_name(bad, "nope");
  EXPECT_EQ(nbd_connect_tcp(bad, "127.0.0.1", port_.c_str()), -1);
  nbd_close(bad);
}

TEST_F(NbdServerTest, WriteReadRoundTripBothReplyKinds) {
  for (bool structured : {true, false}) {
    nbd_handle* h = connect("lun0", structured);
    ASSERT_NE(h, nullptr);
    std::vector<char> out(1 << 20), in(1 << 20);
    for (size_t i = 0; i < out.size(); ++i) out[i] = char(i * 7 + structured);
    ASSERT_EQ(nbd_pwrite(h, out.data(), out.size(), 4 << 20, 0), 0) << nbd_get_error();
    ASSERT_EQ(nbd_pwrite(h, out.data(), 4096, 8 << 20, LIBNBD_CMD_FLAG_FUA), 0);
    ASSERT_EQ(nbd_pread(h, in.data(), in.size(), 4 << 20, 0), 0) << nbd_get_error();
    EXPECT_EQ(std::memcmp(in.data(), out.data(), out.size()), 0);
    // A read spanning data and a hole: structured replies carry an OFFSET_HOLE chunk.
    std::vector<char> mixed(256 << 10, 'x');
    ASSERT_EQ(nbd_pread(h, mixed.data(), mixed.size(), (5 << 20) - (64 << 10), 0), 0);
    EXPECT_EQ(std::memcmp(mixed.data(), out.data() + out.size() - (64 << 10), 64 << 10), 0);
    for (size_t i = 64 << 10; i < mixed.size(); ++i) ASSERT_EQ(mixed[i], 0) << i;
    EXPECT_EQ(nbd_flush(h, 0), 0);
    EXPECT_EQ(nbd_cache(h, 65536, 0, 0), 0);
    nbd_close(h);
  }
}

// Regression: a structured READ asked the device for block status first; on the cloud edge that
// device is the WAN remote, so every cold read cost two WAN round trips instead of one.
TEST_F(NbdServerTest, StructuredReadOfRemoteDeviceAsksNoBlockStatus) {
  for (const char* name : {"local", "remote"}) {
    nbd_handle* h = connect(name, true);
    ASSERT_NE(h, nullptr);
    CountingDevice& d = std::string(name) == "remote" ? *remote_ : *local_;
    std::vector<char> in(4096);
    for (int i = 0; i < 8; ++i)
      ASSERT_EQ(nbd_pread(h, in.data(), in.size(), uint64_t(i) << 20, 0), 0) << nbd_get_error();
    EXPECT_EQ(d.reads.load() + d.status.load() > 0, true);
    if (std::string(name) == "remote") {
      EXPECT_EQ(d.status.load(), 0) << "a BLOCK_STATUS per READ is a second WAN round trip";
      EXPECT_EQ(d.reads.load(), 8);  // one device request per NBD READ
    } else {
      EXPECT_GE(d.status.load(), 8);  // local device: holes still go out as holes
    }
    nbd_close(h);
  }
}

TEST_F(NbdServerTest, BlockStatusAfterTrimAndWriteZeroes) {
  nbd_handle* h = connect();
  ASSERT_NE(h, nullptr);
  std::vector<char> data(1 << 20, 'a');
  ASSERT_EQ(nbd_pwrite(h, data.data(), data.size(), 0, 0), 0);
  auto e = block_status(h, 2 << 20, 0);
  ASSERT_GE(e.size(), 2u);
  EXPECT_EQ(e[0].length, 1u << 20);
  EXPECT_EQ(e[0].flags, 0u);
  EXPECT_EQ(e[1].flags, LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO);

  ASSERT_EQ(nbd_trim(h, 256 << 10, 0, 0), 0);
  e = block_status(h, 1 << 20, 0);
  ASSERT_GE(e.size(), 2u);
  EXPECT_EQ(e[0].length, 256u << 10);
  EXPECT_EQ(e[0].flags, LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO);
  EXPECT_EQ(e[1].flags, 0u);

  // WRITE_ZEROES without NO_HOLE punches; with NO_HOLE stays allocated but reads zero.
  ASSERT_EQ(nbd_zero(h, 128 << 10, 512 << 10, 0), 0);
  ASSERT_EQ(nbd_zero(h, 128 << 10, 768 << 10, LIBNBD_CMD_FLAG_NO_HOLE), 0);
  e = block_status(h, 1 << 20, 0);
  uint64_t off = 0;
  for (const Extent& x : e) {
    if (off >= (512u << 10) && off < (640u << 10)) {
      EXPECT_EQ(x.flags, LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO);
    }
    if (off >= (768u << 10) && off < (896u << 10)) {
      EXPECT_EQ(x.flags, 0u);
    }
    off += x.length;
  }
  EXPECT_EQ(off, 1u << 20);
  std::vector<char> in(1 << 20);
  ASSERT_EQ(nbd_pread(h, in.data(), in.size(), 0, 0), 0);
  for (size_t i = 0; i < in.size(); ++i) {
    const bool zero = i < (256u << 10) || (i >= (512u << 10) && i < (640u << 10)) ||
                      (i >= (768u << 10) && i < (896u << 10));
    ASSERT_EQ(in[i], zero ? 0 : 'a') << i;
  }
  // REQ_ONE: exactly one extent.
  e = block_status(h, 1 << 20, 0, LIBNBD_CMD_FLAG_REQ_ONE);
  EXPECT_EQ(e.size(), 1u);
  // FAST_ZERO with NO_HOLE is not fast on RAM: ENOTSUP.
  EXPECT_EQ(nbd_zero(h, 4096, 0, LIBNBD_CMD_FLAG_NO_HOLE | LIBNBD_CMD_FLAG_FAST_ZERO), -1);
  EXPECT_EQ(nbd_get_errno(), ENOTSUP);
  EXPECT_EQ(nbd_zero(h, 4096, 0, LIBNBD_CMD_FLAG_FAST_ZERO), 0);
  nbd_close(h);
}

TEST_F(NbdServerTest, ErrorsForBadRequests) {
  nbd_handle* h = connect();
  ASSERT_NE(h, nullptr);
  nbd_set_strict_mode(h, 0);  // let bad requests reach the server
  std::vector<char> buf(8192);
  EXPECT_EQ(nbd_pread(h, buf.data(), 4096, kSize - 512, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EINVAL);
  EXPECT_EQ(nbd_pwrite(h, buf.data(), 4096, kSize, 0), -1);
  EXPECT_EQ(nbd_get_errno(), ENOSPC);
  EXPECT_EQ(nbd_pread(h, buf.data(), 100, 0, 0), -1);  // unaligned
  EXPECT_EQ(nbd_get_errno(), EINVAL);
  EXPECT_EQ(nbd_pwrite(h, buf.data(), 512, 3, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EINVAL);
  // The connection survives every rejected request (payload of the rejected write was skipped).
  ASSERT_EQ(nbd_pwrite(h, buf.data(), 4096, 0, 0), 0);
  ASSERT_EQ(nbd_pread(h, buf.data(), 4096, 0, 0), 0);
  nbd_close(h);
}

TEST_F(NbdServerTest, ManyInFlightAndLargeRequests) {
  nbd_handle* h = connect();
  ASSERT_NE(h, nullptr);
  constexpr int kN = 400;  // more than the 128 in-flight limit: reading pauses and resumes
  std::vector<std::vector<char>> bufs(kN, std::vector<char>(4096));
  for (int i = 0; i < kN; ++i) {
    std::memset(bufs[i].data(), i & 0xff, 4096);
    ASSERT_NE(nbd_aio_pwrite(h, bufs[i].data(), 4096, uint64_t(i) * 4096, NBD_NULL_COMPLETION, 0),
              -1);
  }
  while (nbd_aio_in_flight(h) > 0) ASSERT_NE(nbd_poll(h, -1), -1);
  std::vector<char> big(16 << 20);
  ASSERT_EQ(nbd_pwrite(h, big.data(), big.size(), 16 << 20, 0), 0) << nbd_get_error();
  ASSERT_EQ(nbd_pread(h, big.data(), big.size(), 0, 0), 0) << nbd_get_error();
  for (int i = 0; i < kN; ++i) ASSERT_EQ(big[size_t(i) * 4096 + 17], char(i & 0xff));
  nbd_close(h);
}

TEST_F(NbdServerTest, UnixSocketAndList) {
  nbd_handle* h = nbd_create();
  nbd_set_export_name(h, "lun1");
  ASSERT_EQ(nbd_connect_unix(h, unix_path_.c_str()), 0) << nbd_get_error();
  EXPECT_EQ(nbd_get_size(h), int64_t(kSize / 2));
  nbd_close(h);

  h = nbd_create();
  nbd_set_opt_mode(h, 1);
  ASSERT_EQ(nbd_connect_tcp(h, "127.0.0.1", port_.c_str()), 0) << nbd_get_error();
  std::vector<std::string> names;
  nbd_list_callback cb = {[](void* u, const char* name, const char*) {
                            static_cast<std::vector<std::string>*>(u)->push_back(name);
                            return 0;
                          },
                          &names, nullptr};
  EXPECT_EQ(nbd_opt_list(h, cb), 4);
  EXPECT_EQ(names, (std::vector<std::string>{"lun0", "lun1", "local", "remote"}));
  EXPECT_EQ(nbd_opt_abort(h), 0);
  nbd_close(h);
}

TEST(NbdCodec, RejectsBadInput) {
  uint8_t opt[16] = {};
  EXPECT_EQ(parse_option(opt).status, ParseStatus::fatal);
  uint8_t req[28] = {0x25, 0x60, 0x95, 0x13, 0, 0, 0, 1};
  req[24] = 0x7f;  // write of 2 GiB
  EXPECT_EQ(parse_request(req).status, ParseStatus::fatal);
  uint8_t info[6] = {0xff, 0xff, 0xff, 0xff, 0, 0};
  EXPECT_FALSE(parse_info_request(info).ok());
  Request r;
  r.type = kCmdRead;
  r.length_bytes = 512;
  r.offset_bytes = 1024;
  ExportLimits l;
  l.size_bytes = 1024;
  EXPECT_EQ(validate_request(r, l), kEinval);
  EXPECT_EQ(to_nbd_error(Errc::write_protected), kEperm);
}

// Two reactors: connections are spread evenly whichever listener the kernel hands them to, and
// a connection moved to the other reactor serves I/O like any other.
TEST(NbdServerReactors, ConnectionsAreSpreadOverReactors) {
  auto dev = std::move(RamDevice::create(kSize).value());
  NbdOptions o;
  o.port = 0;
  NbdServer server(o, std::vector<NbdExport>{{"lun0", dev.get(), "", false}});
  std::vector<std::unique_ptr<Reactor>> reactors;
  std::vector<std::thread> threads;
  std::atomic<int> ready{0}, failed{0};
  for (unsigned i = 0; i < 2; ++i) {
    reactors.push_back(std::make_unique<Reactor>(i, 64ull << 20));
    Reactor* r = reactors.back().get();
    threads.emplace_back([&server, r, &ready, &failed] {
      if (!r->init() || !server.start_listening(*r)) {
        ++failed;
        return;
      }
      ++ready;
      r->run();
      server.stop_listening(*r);
      Timer t;
      r->arm(
          t, 50'000'000, [](void* p) noexcept { static_cast<Reactor*>(p)->stop(); }, r);
      r->run();
    });
  }
  while (ready + failed < 2) std::this_thread::yield();
  ASSERT_EQ(failed, 0);
  const std::string port = std::to_string(server.bound_port());
  std::vector<nbd_handle*> handles;
  for (int i = 0; i < 6; ++i) {
    nbd_handle* h = nbd_create();
    ASSERT_NE(h, nullptr);
    nbd_set_export_name(h, "lun0");
    ASSERT_NE(nbd_connect_tcp(h, "127.0.0.1", port.c_str()), -1) << nbd_get_error();
    handles.push_back(h);
  }
  EXPECT_EQ(server.connections_on(*reactors[0]), 3u);
  EXPECT_EQ(server.connections_on(*reactors[1]), 3u);
  std::vector<char> buf(4096);
  for (size_t i = 0; i < handles.size(); ++i) {
    std::memset(buf.data(), 'a' + int(i), buf.size());
    ASSERT_EQ(nbd_pwrite(handles[i], buf.data(), buf.size(), i * 4096, 0), 0) << nbd_get_error();
  }
  for (size_t i = 0; i < handles.size(); ++i) {
    ASSERT_EQ(nbd_pread(handles[(i + 1) % handles.size()], buf.data(), buf.size(), i * 4096, 0), 0);
    EXPECT_EQ(buf[0], 'a' + int(i));
    EXPECT_EQ(buf[4095], 'a' + int(i));
  }
  for (nbd_handle* h : handles) {
    nbd_shutdown(h, 0);
    nbd_close(h);
  }
  for (int i = 0; i < 200 && server.connection_count() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(server.connections_on(*reactors[0]) + server.connections_on(*reactors[1]), 0u);
  for (auto& r : reactors) r->stop();
  for (auto& t : threads) t.join();
}

}  // namespace
}  // namespace ferry::nbd
