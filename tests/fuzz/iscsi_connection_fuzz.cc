// libFuzzer target: a whole iSCSI connection (login, full-feature phase, SCSI commands over a RAM
// LUN, text, TMF, logout) fed over a socketpair, nbdkit-style. Runs on the fuzzing thread, which
// owns the one Reactor for the whole process.
//
// Per input: a fresh Server + scsi::Target + LogicalUnit (so reservations, unit attentions and
// sessions never carry over from one input to the next; only the RAM device's contents do), a
// socketpair whose one end the Server adopts as a Connection, and the input written to the other
// end followed by shutdown(SHUT_WR). The reactor then runs in bounded steps (a zero-delay timer,
// then 1 ms ticks) that also drain whatever the target sends, until the connection is gone.
// A connection still alive kHangNs after the peer's EOF is a bug: the fuzzer traps.
//
// Input: byte 0 = prefix mode (bits 0-2) | bit 3 "leave digests alone":
//   0 raw: the rest is the whole stream, login included
//   1 normal session, operational stage only: ImmediateData=Yes InitialR2T=No, large bursts
//   2 normal session: InitialR2T=Yes ImmediateData=No, small bursts, initiator MRDSL 512,
//     MaxOutstandingR2T=4
//   3 normal session with HeaderDigest=CRC32C DataDigest=CRC32C
//   4 discovery session
//   5 normal session through the security stage (AuthMethod=None) then operational
//   6 normal session, ImmediateData=Yes InitialR2T=No, FirstBurstLength=4096, MRDSL 512
//   7 normal session with DataDigest=CRC32C only
// In modes 3 and 7 the rest is written without digests and the harness inserts correct ones
// (unless bit 3 is set), so the fuzzer reaches command handling behind the CRCs.
// FERRY_FUZZ_VERBOSE=1 lists the PDUs the target answered with (handy with a single input).
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "datapath/ram_device.h"
#include "datapath/reactor.h"
#include "gateway/iscsi/pdu.h"
#include "gateway/iscsi/portal_config.h"
#include "gateway/iscsi/server.h"
#include "gateway/scsi/logical_unit.h"

using namespace ferry;

namespace {

constexpr std::string_view kTargetIqn = "iqn.2024-01.io.ferry:fuzz";
constexpr std::string_view kInitiatorIqn = "iqn.2024-01.io.ferry:fuzz-initiator";
constexpr uint64_t kRamBytes = 8ull << 20;
constexpr uint64_t kPoolBytesMax = 256ull << 20;
constexpr uint64_t kFastSteps = 2000;         // zero-delay steps before ticking
constexpr uint64_t kTickNs = 1'000'000;       // 1 ms
constexpr uint64_t kHangNs = 10'000'000'000;  // 10 s

// ---------------------------------------------------------------- process-wide state

struct Globals {
  Reactor reactor{0, kPoolBytesMax};
  std::unique_ptr<RamDevice> device;
};

Globals& globals() {
  static Globals* g = [] {
    signal(SIGPIPE, SIG_IGN);
    auto* p = new Globals;
    if (!p->reactor.init(256).ok()) {
      std::fprintf(stderr, "iscsi_connection_fuzz: cannot set up io_uring\n");
      std::abort();
    }
    auto dev = RamDevice::create(kRamBytes);
    if (!dev.ok()) std::abort();
    p->device = std::move(*dev);
    return p;
  }();
  return *g;
}

// ---------------------------------------------------------------- building the stream

void store_le32(uint8_t* p, uint32_t v) {
  p[0] = uint8_t(v);
  p[1] = uint8_t(v >> 8);
  p[2] = uint8_t(v >> 16);
  p[3] = uint8_t(v >> 24);
}

void append_text(std::string& out, std::string_view key, std::string_view value) {
  out.append(key);
  out.push_back('=');
  out.append(value);
  out.push_back('\0');
}

// Appends one login request PDU (no digests: they are never on during login).
void append_login(std::vector<uint8_t>& out, uint8_t flags, uint32_t itt, const std::string& text) {
  iscsi::Bhs h;
  h.clear();
  h.b[0] = 0x40 | uint8_t(iscsi::Opcode::login_request);  // immediate
  h.b[1] = flags;
  static constexpr uint8_t kIsid[6] = {0x80, 0x00, 0x00, 0x01, 0x02, 0x03};
  std::memcpy(h.b + 8, kIsid, sizeof kIsid);
  h.set_itt(itt);
  h.set_data_segment_length(uint32_t(text.size()));
  h.set_u32(24, 0);  // CmdSN: the first command carries 0 too
  h.set_u32(28, 0);  // ExpStatSN
  out.insert(out.end(), h.b, h.b + iscsi::kBhsBytes);
  out.insert(out.end(), text.begin(), text.end());
  out.resize(out.size() + (iscsi::pad4(text.size()) - text.size()), 0);
}

std::string normal_keys() {
  std::string t;
  append_text(t, "InitiatorName", kInitiatorIqn);
  append_text(t, "InitiatorAlias", "fuzz");
  append_text(t, "SessionType", "Normal");
  append_text(t, "TargetName", kTargetIqn);
  return t;
}

struct Prefix {
  std::vector<uint8_t> bytes;
  bool header_digest = false;
  bool data_digest = false;
};

Prefix make_prefix(uint8_t mode) {
  constexpr uint8_t kOperationalToFull = 0x80 | (1 << 2) | 3;  // T=1 CSG=1 NSG=3
  constexpr uint8_t kSecurityToOperational = 0x80 | (0 << 2) | 1;
  Prefix p;
  std::string t;
  switch (mode & 7) {
    case 0:
      return p;
    case 1:
      t = normal_keys();
      append_text(t, "HeaderDigest", "None");
      append_text(t, "DataDigest", "None");
      append_text(t, "ImmediateData", "Yes");
      append_text(t, "InitialR2T", "No");
      append_text(t, "MaxRecvDataSegmentLength", "262144");
      append_text(t, "MaxBurstLength", "1048576");
      append_text(t, "FirstBurstLength", "262144");
      append_text(t, "MaxOutstandingR2T", "1");
      break;
    case 2:
      t = normal_keys();
      append_text(t, "ImmediateData", "No");
      append_text(t, "InitialR2T", "Yes");
      append_text(t, "MaxRecvDataSegmentLength", "512");
      append_text(t, "MaxBurstLength", "4096");
      append_text(t, "FirstBurstLength", "2048");
      append_text(t, "MaxOutstandingR2T", "4");
      break;
    case 3:
      t = normal_keys();
      append_text(t, "HeaderDigest", "CRC32C");
      append_text(t, "DataDigest", "CRC32C");
      append_text(t, "ImmediateData", "Yes");
      append_text(t, "InitialR2T", "No");
      p.header_digest = p.data_digest = true;
      break;
    case 4:
      append_text(t, "InitiatorName", kInitiatorIqn);
      append_text(t, "SessionType", "Discovery");
      append_text(t, "MaxRecvDataSegmentLength", "512");
      break;
    case 5: {
      std::string sec = normal_keys();
      append_text(sec, "AuthMethod", "None");
      append_login(p.bytes, kSecurityToOperational, 1, sec);
      append_text(t, "ImmediateData", "Yes");
      append_text(t, "InitialR2T", "Yes");
      append_text(t, "ErrorRecoveryLevel", "0");
      append_text(t, "MaxConnections", "1");
      break;
    }
    case 6:
      t = normal_keys();
      append_text(t, "ImmediateData", "Yes");
      append_text(t, "InitialR2T", "No");
      append_text(t, "FirstBurstLength", "4096");
      append_text(t, "MaxRecvDataSegmentLength", "512");
      break;
    case 7:
      t = normal_keys();
      append_text(t, "HeaderDigest", "None");
      append_text(t, "DataDigest", "CRC32C");
      p.data_digest = true;
      break;
  }
  append_login(p.bytes, kOperationalToFull, 2, t);
  return p;
}

// Copies a digest-less PDU stream into `out`, inserting correct header/data digests.
void insert_digests(std::span<const uint8_t> in, bool header, bool data,
                    std::vector<uint8_t>& out) {
  uint8_t crc[4];
  while (!in.empty()) {
    if (in.size() < iscsi::kBhsBytes) {
      out.insert(out.end(), in.begin(), in.end());
      return;
    }
    const size_t hdr = std::min(in.size(), iscsi::kBhsBytes + size_t{in[4]} * 4);
    const size_t dsl = load_be24(in.data() + 5);
    out.insert(out.end(), in.begin(), in.begin() + ptrdiff_t(hdr));
    if (header) {
      store_le32(crc, iscsi::crc32c(in.first(hdr)));
      out.insert(out.end(), crc, crc + 4);
    }
    in = in.subspan(hdr);
    const size_t padded = std::min(in.size(), iscsi::pad4(dsl));
    out.insert(out.end(), in.begin(), in.begin() + ptrdiff_t(padded));
    if (data && dsl > 0) {
      store_le32(crc, iscsi::crc32c(in.first(padded)));
      out.insert(out.end(), crc, crc + 4);
    }
    in = in.subspan(padded);
  }
}

// ---------------------------------------------------------------- the initiator's end

struct Peer {
  int fd = -1;
  std::vector<uint8_t> out;
  size_t sent = 0;
  bool shut = false;
  bool eof = false;
  uint64_t received_bytes = 0;
  std::vector<uint8_t>* transcript = nullptr;  // FERRY_FUZZ_VERBOSE: what the target sent

  // Non-blocking: writes what fits, then half-closes; reads and discards what the target sent.
  void pump() noexcept {
    while (sent < out.size()) {
      const ssize_t n =
          ::send(fd, out.data() + sent, out.size() - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0) {
        sent += size_t(n);
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else {
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) sent = out.size();  // target gone
        break;
      }
    }
    if (sent == out.size() && !shut) {
      ::shutdown(fd, SHUT_WR);
      shut = true;
    }
    static uint8_t sink[64 * 1024];
    for (int i = 0; i < 1024 && !eof; ++i) {
      const ssize_t n = ::recv(fd, sink, sizeof sink, MSG_DONTWAIT);
      if (n > 0) {
        received_bytes += uint64_t(n);
        if (transcript != nullptr) transcript->insert(transcript->end(), sink, sink + n);
      } else if (n == 0) {
        eof = true;
      } else if (errno != EINTR) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) eof = true;
        break;
      }
    }
  }
};

struct Run {
  Reactor* reactor = nullptr;
  iscsi::Server* server = nullptr;
  Peer peer;
  Timer timer;
  uint64_t steps = 0;
  uint64_t started_ns = 0;

  static void step(void* ctx) noexcept {
    auto* r = static_cast<Run*>(ctx);
    ++r->steps;
    r->peer.pump();
    if (r->server->connection_count().load() == 0) {
      r->reactor->stop();
      return;
    }
    if (Reactor::now_ns_fresh() - r->started_ns > kHangNs) {
      std::fprintf(stderr,
                   "iscsi_connection_fuzz: connection still open %llu s after the peer's EOF "
                   "(steps %llu, sent %zu/%zu, received %llu, peer eof %d)\n",
                   static_cast<unsigned long long>(kHangNs / 1'000'000'000),
                   static_cast<unsigned long long>(r->steps), r->peer.sent, r->peer.out.size(),
                   static_cast<unsigned long long>(r->peer.received_bytes), int(r->peer.eof));
      __builtin_trap();
    }
    r->reactor->arm(r->timer, r->steps < kFastSteps ? 0 : kTickNs, &Run::step, r);
  }
};

// FERRY_FUZZ_VERBOSE: lists the target's PDUs (opcode, flags, ITT, data length; framed
// without digests, so only the login replies are right in digest modes).
void print_transcript(const std::vector<uint8_t>& t, const Run& run) {
  std::fprintf(stderr, "iscsi_connection_fuzz: %llu steps, sent %zu/%zu bytes, received %zu\n",
               static_cast<unsigned long long>(run.steps), run.peer.sent, run.peer.out.size(),
               t.size());
  size_t pos = 0;
  while (t.size() - pos >= iscsi::kBhsBytes) {
    const uint8_t* b = t.data() + pos;
    const uint32_t dsl = load_be24(b + 5);
    std::fprintf(stderr, "  opcode %02x flags %02x b2 %02x b3 %02x itt %08x dsl %u\n", b[0] & 0x3f,
                 b[1], b[2], b[3], load_be32(b + 16), dsl);
    pos += iscsi::kBhsBytes + size_t{b[4]} * 4 + iscsi::pad4(dsl);
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)globals();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  Globals& g = globals();

  // Fresh SCSI target and iSCSI server per input (see the file comment).
  scsi::LuIdentity id;
  id.serial = "FUZZ0001";
  id.uuid = *Uuid::parse("00000000-0000-4000-8000-00000000002a");
  scsi::LogicalUnit lu(*g.device, id);
  scsi::Target target;
  target.add_lun(0, &lu);
  iscsi::ServerOptions options;
  options.queue_depth_max = 32;
  iscsi::PortalConfig portal;
  portal.portal_address = "127.0.0.1:3260,1";
  iscsi::TargetAuthConfig t;
  t.iqn = std::string(kTargetIqn);
  portal.targets.push_back(t);
  iscsi::Server server(options, portal);
  server.add_target(std::string(kTargetIqn), &target);

  Run run;
  run.reactor = &g.reactor;
  run.server = &server;
  Prefix prefix = make_prefix(data[0]);
  run.peer.out = std::move(prefix.bytes);
  std::span<const uint8_t> rest(data + 1, size - 1);
  if ((prefix.header_digest || prefix.data_digest) && (data[0] & 8) == 0)
    insert_digests(rest, prefix.header_digest, prefix.data_digest, run.peer.out);
  else
    run.peer.out.insert(run.peer.out.end(), rest.begin(), rest.end());

  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    std::perror("socketpair");
    std::abort();
  }
  run.peer.fd = sv[1];
  static const bool verbose = std::getenv("FERRY_FUZZ_VERBOSE") != nullptr;
  std::vector<uint8_t> transcript;
  if (verbose) run.peer.transcript = &transcript;
  server.adopt_connection(g.reactor, sv[0]);  // the Connection owns sv[0] from here on

  run.started_ns = Reactor::now_ns_fresh();
  g.reactor.arm(run.timer, 0, &Run::step, &run);
  g.reactor.run();
  if (run.timer.armed() || server.connection_count().load() != 0) __builtin_trap();
  if (verbose) print_transcript(transcript, run);
  ::close(sv[1]);
  return 0;
}
