// `ferry dc-edge` / `ferry cloud-edge` (see edge_commands.h).
#include "mgmt/edge_commands.h"

#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "datapath/reactor.h"
#include "datapath/tls/tls_engine.h"
#include "gateway/iscsi/server.h"
#include "gateway/nbd/client_device.h"
#include "gateway/nbd/server.h"
#include "gateway/scsi/logical_unit.h"
#include "gateway/volume.h"
#include "gateway/wan/wan_client.h"
#include "gateway/wan/wan_server.h"
#include "mgmt/cli_util.h"
#include "mgmt/config_file.h"
#include "mgmt/control.h"
#include "mgmt/gateway_metrics.h"
#include "mgmt/mgmt_flags.h"
#include "mgmt/service_notify.h"
#include "mgmt/target_auth.h"

namespace ferry::mgmt {

namespace {

bool parse_compression(const std::string& text, wan::Compression& c) {
  const auto colon = text.find(':');
  const std::string algo = text.substr(0, colon);
  int level = 1;
  if (colon != std::string::npos) {
    try {
      level = std::stoi(text.substr(colon + 1));
    } catch (...) {
      return false;
    }
  }
  if (algo == "none")
    c = {wan::CompressAlgo::none, 0};
  else if (algo == "lz4")
    c = {wan::CompressAlgo::lz4, level};
  else if (algo == "zstd")
    c = {wan::CompressAlgo::zstd, level};
  else if (algo == "igzip")
    c = {wan::CompressAlgo::igzip, level};
  else
    return false;
  return true;
}

struct TlsFlags {
  std::string cert, key, ca, peer_name;
};

void add_tls_flags(CLI::App& app, TlsFlags& t, bool client) {
  app.add_option("--tls-cert", t.cert, "PEM certificate of this edge")->required();
  app.add_option("--tls-key", t.key, "PEM private key of this edge")->required();
  app.add_option("--tls-ca", t.ca, "PEM CA the other edge's certificate must come from")
      ->required();
  if (client)
    app.add_option(
        "--dc-name", t.peer_name,
        "edge name the datacenter edge's certificate must carry (urn:ferry:dc-edge:NAME; default: "
        "any dc-edge from the CA)");
}

// This edge's own certificate must be valid now and carry this edge's role: an expired or
// not-yet-valid one, or one for the other role, is refused at start (before, an edge started with
// it silently and every handshake failed later); one that expires within 30 days is logged with
// the date. False on refusal (message printed).
bool check_own_certificate(const std::string& path, const std::string& role) {
  FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) return true;  // TlsContext::create reports the unreadable file
  X509* cert = PEM_read_X509(f, nullptr, nullptr, nullptr);
  std::fclose(f);
  if (cert == nullptr) return true;
  bool ok = true;
  int days = 0, secs = 0;
  const ASN1_TIME* not_after = X509_get0_notAfter(cert);
  // Printed as ASN1_TIME_print would ("Dec  3 11:22:58 2026 GMT"), without a memory BIO.
  char when[64] = "?";
  std::tm tm{};
  if (ASN1_TIME_to_tm(not_after, &tm) == 1)
    std::strftime(when, sizeof when, "%b %e %T %Y GMT", &tm);
  if (X509_cmp_current_time(X509_get0_notBefore(cert)) > 0) {
    std::fprintf(stderr, "ferry: TLS: certificate %s is not valid yet\n", path.c_str());
    ok = false;
  } else if (X509_cmp_current_time(not_after) <= 0) {
    std::fprintf(stderr, "ferry: TLS: certificate %s expired on %s\n", path.c_str(), when);
    ok = false;
  } else if (ASN1_TIME_diff(&days, &secs, nullptr, not_after) == 1 && days < 30) {
    std::fprintf(stderr, "ferry: TLS: WARNING: certificate %s expires on %s (in %d days)\n",
                 path.c_str(), when, days);
  }
  std::string name;
  const std::string why = tls::check_edge_role(tls::edge_identity_of(cert), role, "", name);
  if (ok && !why.empty()) {
    std::fprintf(stderr,
                 "ferry: TLS: certificate %s cannot serve as this %s: %s (see \"Certificates\" in "
                 "gateway/wan/DESIGN.md; scripts/make-test-pki.sh makes such certificates)\n",
                 path.c_str(), role.c_str(), why.c_str());
    ok = false;
  } else if (ok) {
    std::fprintf(stderr, "ferry: TLS: this is %s '%s' (%s)\n", role.c_str(), name.c_str(),
                 path.c_str());
  }
  X509_free(cert);
  return ok;
}

std::unique_ptr<tls::TlsContext> make_tls(const TlsFlags& t, bool server) {
  if (!t.cert.empty() && !check_own_certificate(t.cert, server ? "dc-edge" : "cloud-edge"))
    return nullptr;
  tls::TlsConfig c;
  c.cert_path = t.cert;
  c.key_path = t.key;
  c.ca_path = t.ca;
  c.server = server;
  c.expected_peer_role = server ? "cloud-edge" : "dc-edge";
  c.expected_peer_name = t.peer_name;
  std::string error;
  auto ctx = tls::TlsContext::create(c, error);
  if (!ctx) std::fprintf(stderr, "ferry: TLS: %s\n", error.c_str());
  return ctx;
}

// dc-edge stop: how long device I/O in flight to the NBD sources may take before it is failed.
constexpr uint32_t kSourceDrainMs = 500;

// Blocks SIGINT/SIGTERM/SIGPIPE/SIGUSR1 for every thread; returns the set for wait_for_stop.
sigset_t block_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGPIPE);
  sigaddset(&set, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

// Waits for SIGINT/SIGTERM or the duration; SIGUSR1 calls on_usr1.
template <typename F>
void wait_for_stop(sigset_t set, double duration_s, F on_usr1) {
  const int64_t deadline =
      duration_s > 0 ? int64_t(Reactor::now_ns_fresh()) + int64_t(duration_s * 1e9) : 0;
  for (;;) {
    int sig;
    if (deadline != 0) {
      const int64_t left = deadline - int64_t(Reactor::now_ns_fresh());
      if (left <= 0) return;
      timespec ts{time_t(left / 1000000000), long(left % 1000000000)};
      sig = sigtimedwait(&set, nullptr, &ts);
      if (sig < 0) continue;
    } else if (sigwait(&set, &sig) != 0) {
      return;
    }
    if (sig == SIGINT || sig == SIGTERM) return;
    if (sig == SIGUSR1) on_usr1();
  }
}

}  // namespace

// ---------------------------------------------------------------- dc-edge

int run_dc_edge_command(int argc, char** argv) {
  CLI::App app{"Datacenter edge: serve NBD volumes to cloud edges over the WAN link",
               "ferry dc-edge"};
  std::string listen = "127.0.0.1:9111";
  std::vector<std::string> volume_specs;
  TlsFlags tls_flags;
  std::string compression = "zstd:3";
  double rate_mbit = 0;
  std::string rate_file;
  unsigned nbd_connections = 4;
  std::string layers_text;
  double source_give_up_s = 60;
  unsigned source_replay_mib = 32;
  uint32_t sndbuf_kib = 0;
  double duration_s = 0;
  bool check_config = false;
  add_config_flags(app, check_config);
  app.add_option("--listen", listen, "HOST:PORT of the WAN link (port 0: any)")
      ->capture_default_str();
  app.add_option("--volume", volume_specs,
                 "NAME=URI: a volume and the NBD server holding it (nbd://, nbds://, nbd+unix://)")
      ->required();
  add_tls_flags(app, tls_flags, false);
  app.add_option("--compression", compression, "none | lz4[:L] | zstd[:L] | igzip[:L]")
      ->capture_default_str();
  app.add_option("--rate-limit-mbit", rate_mbit, "cap on data sent (Mbit/s, 0 = none)")
      ->check(CLI::Range(0.0, 1000000.0));
  bool rate_limit_all = false;
  app.add_flag("--rate-limit-all", rate_limit_all,
               "the cap holds every data frame, demand reads included (default: only prefetch and "
               "background streaming wait for it; demand reads use it up but never wait)");
  app.add_option("--rate-limit-file", rate_file,
                 "file holding a new cap in Mbit/s, re-read on SIGUSR1 (runtime change)");
  app.add_option("--wan-sndbuf-kib", sndbuf_kib,
                 "kernel send buffer of WAN sockets in KiB (0: autotuning); about rate x RTT keeps "
                 "the link full without queueing background data ahead of demand reads")
      ->check(CLI::Range(0u, 1048576u));
  app.add_option("--layers", layers_text,
                 "each volume's stack above its NBD source, top first (e.g. 'delay:2ms' in tests; "
                 "see gateway/volume.h)");
  app.add_option("--nbd-connections", nbd_connections, "NBD connections per volume when multi-conn")
      ->check(CLI::Range(1u, 64u))
      ->capture_default_str();
  app.add_option("--source-give-up-s", source_give_up_s,
                 "when an NBD source is lost, I/O waits this long for the reconnect (with "
                 "back-off), then fails; shorter outages (a qemu-nbd restart) are invisible")
      ->check(CLI::Range(0.1, 86400.0))
      ->capture_default_str();
  app.add_option("--source-replay-mib", source_replay_mib,
                 "per volume: copies of writes acknowledged but not yet flushed, re-sent to a "
                 "restarted NBD source (an internal FLUSH frees them at half full; 0 = off: the "
                 "next FLUSH after such a restart fails instead)")
      ->check(CLI::Range(0u, 4096u))
      ->capture_default_str();
  wan::WanServerOptions options;
  app.add_option("--connections-max", options.connections_max,
                 "authenticated cloud-edge connections (past HELLO)")
      ->check(CLI::Range(1u, 100000u))
      ->capture_default_str();
  add_pre_auth_flags(app, options.pre_auth, "past TLS + HELLO");
  MgmtFlags mgmt_flags;
  add_mgmt_flags(app, mgmt_flags);
  app.add_option("--handshake-timeout-ms", options.handshake_timeout_ms,
                 "TLS + HELLO must be done within this after the connect")
      ->check(CLI::Range(100u, 600000u))
      ->capture_default_str();
  app.add_option("--lease-ms", options.lease_ms,
                 "a volume's lease outlives its cloud edge's lost connection by this much (no "
                 "other cloud edge may attach it meanwhile)")
      ->check(CLI::Range(100u, 3600000u))
      ->capture_default_str();
  app.add_option(
      "--access-map-dir", options.access_map_dir,
      "keep each volume's learned access map (first-read order of its chunks, replayed "
      "to cloud edges at attach) in DIR/<volume>.map across restarts (default: memory only)");
  std::string redo_dir;
  unsigned redo_mib = 256;
  app.add_option(
      "--redo-dir", redo_dir,
      "redo log per volume in DIR/<volume>.redo: write-back epochs from cloud edges are logged "
      "there, committed, then applied to the NBD source, so the on-prem image is always at an "
      "epoch boundary, even after kill -9 (offers epochs to cloud edges; without it, a cloud edge "
      "with a journal refuses this datacenter edge)");
  app.add_option("--redo-mib", redo_mib,
                 "size of a new redo log in MiB (must hold one epoch: up to 32 MiB of data, 8 KiB "
                 "of log per 4 KiB write)")
      ->check(CLI::Range(4u, 1u << 20))
      ->capture_default_str();
  app.add_option(
         "--idle-timeout-ms", options.idle_timeout_ms,
         "close a cloud edge connection that sends nothing for this long (they ping every second)")
      ->check(CLI::Range(2000u, 3600000u))
      ->capture_default_str();
  app.add_option("--duration", duration_s, "stop after this many seconds (0: until SIGTERM)")
      ->check(CLI::Range(0.0, 31536000.0));
  if (int status = parse_command_line(app, argc, argv); status >= 0) return status;
  if (!split_host_port(listen, options.listen_address, options.port, true)) {
    std::fprintf(stderr, "ferry: --listen wants HOST:PORT\n");
    return 2;
  }
  if (!parse_compression(compression, options.compression)) {
    std::fprintf(stderr, "ferry: %s: unknown '%s'\n", option_origin(app, "compression").c_str(),
                 compression.c_str());
    return 2;
  }
  options.rate_limit_bytes_per_s = uint64_t(rate_mbit * 1e6 / 8);
  options.socket_send_bytes = sndbuf_kib * 1024;
  options.rate_limit_all = rate_limit_all;
  std::vector<LayerSpec> stack;
  if (std::string e = parse_stack(layers_text, stack); !e.empty()) {
    std::fprintf(stderr, "ferry: %s: %s\n", option_origin(app, "layers").c_str(), e.c_str());
    return 2;
  }
  for (const auto& spec : volume_specs) {
    const auto eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size()) {
      std::fprintf(stderr, "ferry: %s wants NAME=URI, got '%s'\n",
                   option_origin(app, "volume").c_str(), spec.c_str());
      return 2;
    }
  }
  if (std::string e = check_mgmt_flags(app, mgmt_flags); !e.empty()) {
    std::fprintf(stderr, "ferry: %s\n", e.c_str());
    return 2;
  }
  if (check_config) return report_config_ok("ferry dc-edge");
  if (!redo_dir.empty() && !ensure_state_dir(redo_dir, "--redo-dir")) return 1;
  auto tls = make_tls(tls_flags, true);
  if (!tls) return 2;

  std::vector<std::unique_ptr<nbd::NbdClientDevice>> devices;
  std::vector<std::unique_ptr<Volume>> stacks;  // over devices; destroyed before them
  std::vector<wan::WanVolume> volumes;
  for (const auto& spec : volume_specs) {
    const auto eq = spec.find('=');  // checked above
    const std::string name = spec.substr(0, eq), uri = spec.substr(eq + 1);
    nbd::NbdClientOptions nopt;
    nopt.connections = nbd_connections;
    nopt.source_give_up_ms = uint32_t(source_give_up_s * 1000);
    nopt.replay_bytes_max = size_t(source_replay_mib) << 20;
    nopt.skip_unallocated_reads = true;  // only in-use blocks are read (and cross the WAN)
    auto dev = nbd::NbdClientDevice::open(uri, nopt);
    if (!dev.ok()) {
      std::fprintf(stderr, "ferry: volume %s: cannot open %s: %s\n", name.c_str(), uri.c_str(),
                   to_string(dev.error()));
      return 1;
    }
    std::fprintf(stderr, "ferry: volume %s: %s (%llu bytes)\n", name.c_str(), uri.c_str(),
                 static_cast<unsigned long long>(dev.value()->geometry().size_bytes()));
    std::string error;
    std::vector<LayerSpec> vstack = stack;
    if (!redo_dir.empty()) {
      std::vector<LayerSpec> redo;
      const std::string r =
          "redo:" + redo_dir + "/" + name + ".redo:" + std::to_string(redo_mib) + "MiB";
      if (std::string e = parse_stack(r, redo); !e.empty()) {
        std::fprintf(stderr, "ferry: --redo-dir: %s\n", e.c_str());
        return 2;
      }
      vstack.insert(vstack.begin(), redo.begin(), redo.end());
    }
    auto vol = Volume::compose(name, *dev.value(), vstack, false, error);
    if (!vol) {
      std::fprintf(stderr, "ferry: %s\n", error.c_str());
      return 2;
    }
    if (!vstack.empty())
      std::fprintf(stderr, "ferry: volume %s: %s\n", name.c_str(), vol->describe().c_str());
    volumes.push_back({name, &vol->top()});
    devices.push_back(std::move(dev.value()));
    stacks.push_back(std::move(vol));
  }

  options.epochs = !redo_dir.empty();
  sigset_t set = block_signals();
  Reactor reactor(0, 2ull << 30);
  wan::WanServer server(options, *tls, volumes);
  std::promise<std::string> started;
  std::thread worker([&] {
    if (!reactor.init(1024).ok()) {
      started.set_value("io_uring init failed");
      return;
    }
    // Redo logs first: an epoch committed before a crash is on the source before anyone may
    // read it (or write over it); then listen.
    reactor.post([&] {
      auto left = std::make_shared<size_t>(1);
      auto listen = [&, left] {
        if (--*left != 0) return;
        std::string error;
        if (!server.start(reactor, error).ok() && error.empty()) error = "cannot listen";
        started.set_value(error);
        if (!error.empty()) reactor.stop();
      };
      for (auto& v : stacks)
        for (journal::RedoLogDevice* r : v->redo_logs()) {
          ++*left;
          r->start(listen);
        }
      listen();
    });
    reactor.run();
  });
  const std::string error = started.get_future().get();
  if (!error.empty()) {
    std::fprintf(stderr, "ferry: dc-edge: %s\n", error.c_str());
    worker.join();
    return 1;
  }
  std::fprintf(stderr, "ferry: dc-edge listening on %s:%u (%zu volume(s))\n",
               options.listen_address.c_str(), server.bound_port(), volumes.size());
  ControlInterface control(
      reactor,
      [&](GatewaySnapshot& s) {
        s.daemon = "dc-edge";
        for (size_t i = 0; i < stacks.size(); ++i) {
          VolumeSnapshot vs;
          vs.name = stacks[i]->name();
          vs.stack = stacks[i]->describe();
          vs.size_bytes = stacks[i]->top().geometry().size_bytes();
          vs.block_size_bytes = stacks[i]->top().geometry().block_size_bytes;
          vs.stats = stacks[i]->stats();
          const wan::WanVolumeCounters& c = server.counters(i);
          vs.has_wan = true;
          vs.wan_raw_bytes_in = c.bytes_requested;
          vs.wan_sent_bytes_in = c.payload_bytes_sent;
          vs.wan_raw_bytes_out = c.bytes_written;
          vs.wan_sent_out_known = false;  // the cloud edge counts what its writes cost on the link
          vs.wan_counters = {{"wan", "bytes_zero", c.bytes_zero},
                             {"wan", "bytes_dedup", c.bytes_dedup},
                             {"wan", "bytes_raw", c.bytes_raw},
                             {"wan", "bytes_compressed_in", c.bytes_compressed_in},
                             {"wan", "bytes_compressed_out", c.bytes_compressed_out},
                             {"wan", "frames_sent", c.frames_sent},
                             {"wan", "access_map_entries", server.access_map_entries(i)}};
          s.volumes.push_back(std::move(vs));
        }
        s.wan_connections = server.connection_count();
        s.has_wan = true;
        s.wan_cap_bytes_per_s = server.rate_limit();
      },
      [&](const std::string&, const ControlAction& action) {
        if (action.kind != ControlAction::Kind::set_wan_cap)
          return ControlAnswer{
              ControlAnswer::Status::unsupported,
              "the datacenter edge has no runtime controls for volumes (their journals "
              "and caches are the cloud edge's)"};
        server.set_rate_limit(action.bytes);
        std::fprintf(stderr,
                     "ferry: dc-edge: WAN rate cap %.1f Mbit/s (0: none), set over the API\n",
                     double(action.bytes) * 8 / 1e6);
        return ControlAnswer{ControlAnswer::Status::ok, {}, action.bytes};
      });
  MetricsRegistry registry;
  std::string mgmt_error;
  auto mgmt = start_mgmt(mgmt_flags, control, registry, mgmt_error);
  if (!mgmt_error.empty())
    std::fprintf(stderr, "ferry: management endpoint: %s\n", mgmt_error.c_str());
  notify_ready("dc-edge listening on " + options.listen_address + ":" +
               std::to_string(server.bound_port()) + ", " + std::to_string(volumes.size()) +
               " volume(s)");
  wait_for_stop(set, duration_s, [&] {
    std::ifstream in(rate_file);
    double mbit = -1;
    if (!rate_file.empty() && (in >> mbit) && mbit >= 0) {
      server.set_rate_limit(uint64_t(mbit * 1e6 / 8));
      std::fprintf(stderr, "ferry: dc-edge: rate limit now %.1f Mbit/s\n", mbit);
    } else {
      std::fprintf(stderr, "ferry: dc-edge: SIGUSR1 but no readable rate in --rate-limit-file\n");
    }
  });
  std::fprintf(stderr, "ferry: dc-edge stopping\n");
  notify_stopping("stopping: closing WAN sessions, draining source I/O");
  if (mgmt) mgmt->stop();
  std::promise<void> stopped;
  reactor.post([&] {
    server.stop();
    stopped.set_value();
  });
  stopped.get_future().wait();
  // Sessions go once their device I/O has completed. A healthy source answers in milliseconds;
  // what a hung one still holds after kSourceDrainMs is failed by the devices' shutdown()
  // (closed), which lets those sessions go too, and their pool buffers with them.
  const uint64_t busy = server.wait_sessions_closed(kSourceDrainMs);
  if (busy != 0)
    std::fprintf(stderr,
                 "ferry: dc-edge: %llu session(s) still wait for their NBD source after %u ms; "
                 "their requests fail with 'closed'\n",
                 static_cast<unsigned long long>(busy), kSourceDrainMs);
  // Redo logs: committed epochs are applied first (bounded), then the logs stop; what is still
  // committed and not applied stays in the log for the next start, an open epoch is discarded.
  {
    auto applied = std::make_shared<std::promise<void>>();  // outlives a timed-out wait
    reactor.post([&, applied] {
      auto left = std::make_shared<size_t>(1);
      auto one = [left, applied] {
        if (--*left == 0) applied->set_value();
      };
      for (auto& v : stacks)
        for (journal::RedoLogDevice* r : v->redo_logs()) {
          ++*left;
          r->drain(one);
        }
      one();
    });
    if (applied->get_future().wait_for(std::chrono::seconds(30)) != std::future_status::ready)
      std::fprintf(stderr,
                   "ferry: dc-edge: committed epochs not applied within 30 s; they are applied at "
                   "the next start\n");
  }
  std::promise<void> shut;
  reactor.post([&] {
    for (auto& d : devices) d->shutdown();
    shut.set_value();
  });
  shut.get_future().wait();
  log_drain("dc-edge", "WAN session(s)", server.wait_sessions_closed(kStopDrainTimeoutMs));
  std::promise<std::string> stats;
  reactor.post([&] {
    server.save_access_maps();  // at shutdown: the reactor serves nothing any more
    std::string text = server.stats_text();
    for (auto& v : stacks) text += v->stats_text();
    stats.set_value(text);
  });
  std::fprintf(stderr, "%s", stats.get_future().get().c_str());
  if (GatewaySnapshot final_snapshot; control.snapshot(final_snapshot, std::chrono::seconds(2)))
    std::fprintf(stderr, "%s", final_report(final_snapshot).c_str());
  {
    auto quiet = std::make_shared<std::promise<void>>();  // outlives a timed-out wait
    reactor.post([&, quiet] {
      auto left = std::make_shared<size_t>(1);
      auto one = [left, quiet] {
        if (--*left == 0) quiet->set_value();
      };
      for (auto& v : stacks)
        for (journal::RedoLogDevice* r : v->redo_logs()) {
          ++*left;
          r->shutdown(one);
        }
      one();
    });
    if (quiet->get_future().wait_for(std::chrono::seconds(10)) != std::future_status::ready)
      std::fprintf(stderr, "ferry: dc-edge: redo log I/O still in flight after 10 s\n");
  }
  // NBD devices close on their home reactor (their polls are cancelled through its ring); one
  // more round trip through the loop lets the cancellations complete before it stops.
  std::promise<void> closed;
  reactor.post([&] {
    devices.clear();
    reactor.defer([&] { reactor.post([&] { closed.set_value(); }); });
  });
  closed.get_future().wait();
  reactor.stop();
  worker.join();
  return 0;
}

// ---------------------------------------------------------------- cloud-edge

// A WAN volume's identity, named after the datacenter edge (its certificate name, else its
// address) and the volume: the same disk keeps the same NAA ID and serial on every cloud edge
// and across restarts; two datacenters' volumes of one name differ. (Name-based, SHA-256,
// RFC 9562 version 8 bits.)
static Uuid wan_volume_uuid(const std::string& dc_identity, const std::string& volume) {
  const std::string name = "ferry-wan-volume/" + dc_identity + "/" + volume;
  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const uint8_t*>(name.data()), name.size(), digest);
  Uuid u;
  std::memcpy(u.bytes.data(), digest, u.bytes.size());
  u.bytes[6] = uint8_t((u.bytes[6] & 0x0f) | 0x80);
  u.bytes[8] = uint8_t((u.bytes[8] & 0x3f) | 0x80);
  return u;
}

// Clean stop with journals: write back what they hold (progress every second, at most timeout_s),
// then shut them down. What is left stays in the journal files and goes at the next start.
// True when every journal reached the datacenter edge (or there are none). A journal whose policy
// does not write back is not drained: a cloud-persist one keeps its data (false when it holds
// any), a test clone's writes are discarded at the next open.
static bool drain_journals(Reactor& reactor, std::vector<std::unique_ptr<Volume>>& volumes,
                           double timeout_s) {
  std::vector<journal::JournalDevice*> js;
  for (const auto& v : volumes)
    for (journal::JournalDevice* j : v->journals()) js.push_back(j);
  if (js.empty()) return true;
  bool all_drained = false;
  auto left = std::make_shared<size_t>(js.size());  // reactor thread
  auto drained = std::make_shared<std::promise<void>>();
  auto drained_future = drained->get_future();
  auto kept = std::make_shared<std::atomic<bool>>(false);  // a cloud-persist journal holds data
  reactor.post([js, left, drained, kept] {
    for (journal::JournalDevice* j : js) {
      auto done = [left, drained] {
        if (--*left == 0) drained->set_value();
      };
      if (j->policy() == journal::Policy::write_back && !j->write_back_paused()) {
        j->drain(done);
        continue;
      }
      // cloud-persist, or write-back paused: what it holds stays (a paused one ships at the next
      // start).
      if (j->policy() != journal::Policy::test_clone && j->state().dirty_bytes > 0) *kept = true;
      done();
    }
  });
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  for (;;) {
    std::promise<std::string> p;
    reactor.post([&] {
      uint64_t dirty = 0, used = 0, lag = 0;
      for (journal::JournalDevice* j : js) {
        const journal::JournalState s = j->state();
        dirty += s.dirty_bytes;
        used += s.journal_bytes_used;
        lag = std::max(lag, s.write_back_lag_ms);
      }
      char line[160];
      std::snprintf(line, sizeof line, "%llu B dirty, %llu B of journal in use, lag %llu ms",
                    static_cast<unsigned long long>(dirty), static_cast<unsigned long long>(used),
                    static_cast<unsigned long long>(lag));
      p.set_value(line);
    });
    const std::string progress = p.get_future().get();
    if (drained_future.wait_for(std::chrono::seconds(0)) == std::future_status::ready) {
      all_drained = !*kept;
      std::fprintf(stderr, all_drained
                               ? "ferry: cloud-edge: journals drained to the datacenter edge\n"
                               : "ferry: cloud-edge: write-back journals drained; cloud-persist "
                                 "journals keep their data\n");
      break;
    }
    if (std::chrono::steady_clock::now() >= until) {
      std::fprintf(stderr,
                   "ferry: cloud-edge: journals not drained within %.0f s (%s); the rest is "
                   "written back at the next start\n",
                   timeout_s, progress.c_str());
      break;
    }
    std::fprintf(stderr, "ferry: cloud-edge: draining journals: %s\n", progress.c_str());
    notify_status("stopping: draining journals: " + progress);
    (void)drained_future.wait_for(std::chrono::seconds(1));
  }
  auto down = std::make_shared<std::atomic<size_t>>(js.size());
  auto all_down = std::make_shared<std::promise<void>>();
  reactor.post([js, down, all_down] {
    for (journal::JournalDevice* j : js)
      j->shutdown([down, all_down] {
        if (--*down == 0) all_down->set_value();
      });
  });
  if (all_down->get_future().wait_for(std::chrono::seconds(10)) != std::future_status::ready)
    std::fprintf(stderr, "ferry: cloud-edge: journal I/O still in flight after 10 s\n");
  return all_drained;
}

int run_cloud_edge_command(int argc, char** argv) {
  CLI::App app{"Cloud edge: serve datacenter volumes as iSCSI LUNs, fetched over the WAN link",
               "ferry cloud-edge"};
  std::string listen = "127.0.0.1:3260";
  std::string dc = "127.0.0.1:9111";
  std::vector<std::string> volume_names;
  std::string iqn = "iqn.2026-11.io.ferry:cloud";
  std::string nbd_listen;
  TlsFlags tls_flags;
  double give_up_s = 60;
  double duration_s = 0;
  std::string compression = "zstd:3";
  bool stream = false;
  unsigned stream_mbit = 0;
  size_t content_store_mib = 256;
  size_t ram_cache_mib = 256;
  std::string layers_text;
  std::string ssd_cache_path, ssd_cache_key;
  size_t ssd_cache_mib = 1024;
  std::string journal_dir;
  size_t journal_mib = 1024;
  double journal_drain_s = 60;
  double write_back_mbit = 0;  // 0: no cap
  double rpo_s = 30;
  std::vector<std::string> policy_flags;
  bool check_config = false;
  add_config_flags(app, check_config);
  app.add_option("--listen", listen, "iSCSI portal HOST:PORT")->capture_default_str();
  app.add_flag("--stream", stream,
               "stream every volume in the background (lowest priority) through its cache so later "
               "reads are local: puts 'stream' on top of the stack (progress logged every 10 %)");
  app.add_option("--stream-mbit", stream_mbit,
                 "cap for that background stream in Mbit/s (0 = none)")
      ->check(CLI::Range(0u, 100000u));
  app.add_option("--content-store-mib", content_store_mib,
                 "memory for content already received (dedup by SHA-256; acts as the read cache)")
      ->check(CLI::Range(size_t(0), size_t(1) << 20))
      ->capture_default_str();
  app.add_option("--dc", dc, "datacenter edge HOST:PORT")->capture_default_str();
  app.add_option("--volume", volume_names, "volume name on the datacenter edge; LUNs in order")
      ->required();
  app.add_option("--iqn", iqn, "target name")->capture_default_str();
  app.add_option("--nbd", nbd_listen, "also export the volumes over NBD on HOST:PORT");
  ChapFlags chap;
  std::vector<std::string> allowed_initiators;
  NbdTlsFlags nbd_tls;
  add_chap_flags(app, chap, /*discovery=*/false);
  app.add_option("--allow-initiator", allowed_initiators,
                 "repeatable: only these initiator names may log in (ACL)");
  add_nbd_tls_flags(app, nbd_tls);
  app.add_option("--ram-cache-mib", ram_cache_mib,
                 "RAM cache per volume in MiB (64 KiB chunks, S3-FIFO) under adaptive read-ahead: "
                 "the default stack 'readahead > ram-cache:NMiB'; 0 = neither")
      ->check(CLI::Range(size_t(0), size_t(1) << 20))
      ->capture_default_str();
  app.add_option("--layers", layers_text,
                 "each volume's stack above the WAN remote, top first, instead of the default "
                 "(e.g. 'readahead > ram-cache:1GiB'; see gateway/volume.h)");
  app.add_option("--ssd-cache", ssd_cache_path,
                 "SSD cache file or block device (created if missing; PATH.VOLUME when several "
                 "volumes), under the RAM cache; survives restarts");
  app.add_option("--ssd-cache-mib", ssd_cache_mib, "size of the SSD cache file in MiB")
      ->check(CLI::Range(size_t(1), size_t(1) << 26))
      ->capture_default_str();
  app.add_option("--ssd-cache-key", ssd_cache_key,
                 "AES-256-XTS key file for the SSD cache (64 bytes, mode 0600; none = plaintext)");
  app.add_option(
      "--journal-dir", journal_dir,
      "write-back journal per volume in DIR/<volume>.journal on top of the stack: writes are "
      "acknowledged once durable there and shipped to the datacenter edge in the background");
  app.add_option("--journal-mib", journal_mib, "size of a new journal file in MiB")
      ->check(CLI::Range(size_t(1), size_t(1) << 20))
      ->capture_default_str();
  app.add_option(
      "--policy", policy_flags,
      "repeatable, VOLUME=POLICY: what becomes of the volume's journaled writes: "
      "write-back (default), cloud-persist (never written back; the journal holds the "
      "data) or test-clone (never written back, discarded when the clone ends); needs "
      "--journal-dir; write-back <-> cloud-persist also at runtime (ferry ctl set-policy)");
  app.add_option("--write-back-mbit", write_back_mbit,
                 "cap on the write-back rate per volume in Mbit/s (0: none); lifted while the "
                 "write-back lag is past --rpo-s; also at runtime (ferry ctl write-back-limits)")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
  app.add_option("--rpo-s", rpo_s,
                 "RPO target: the write-back lag (age of the oldest write not yet on-prem) a "
                 "volume should stay within; past it the rate cap is lifted and it is counted "
                 "(0: none)")
      ->check(CLI::Range(0.0, 86400.0))
      ->capture_default_str();
  app.add_option("--journal-drain-s", journal_drain_s,
                 "at a clean stop, wait this long for the journals to reach the datacenter edge")
      ->check(CLI::Range(0.0, 86400.0))
      ->capture_default_str();
  add_tls_flags(app, tls_flags, true);
  MgmtFlags mgmt_flags;
  add_mgmt_flags(app, mgmt_flags);
  app.add_option("--give-up-s", give_up_s,
                 "fail I/O when the WAN link stays down this long (shorter than the initiator's "
                 "SCSI timeout keeps errors clear)")
      ->check(CLI::Range(0.1, 86400.0))
      ->capture_default_str();
  app.add_option("--compression", compression, "for writes: none | lz4[:L] | zstd[:L] | igzip[:L]")
      ->capture_default_str();
  app.add_option("--duration", duration_s, "stop after this many seconds (0: until SIGTERM)")
      ->check(CLI::Range(0.0, 31536000.0));
  if (int status = parse_command_line(app, argc, argv); status >= 0) return status;
  wan::WanClientOptions copt;
  if (!split_host_port(dc, copt.server_address, copt.server_port)) {
    std::fprintf(stderr, "ferry: --dc wants HOST:PORT\n");
    return 2;
  }
  if (!parse_compression(compression, copt.compression)) {
    std::fprintf(stderr, "ferry: %s: unknown '%s'\n", option_origin(app, "compression").c_str(),
                 compression.c_str());
    return 2;
  }
  copt.give_up_ms = uint32_t(give_up_s * 1000);
  copt.content_store_bytes_max = content_store_mib << 20;
  iscsi::ServerOptions ioptions;
  if (!split_host_port(listen, ioptions.listen_address, ioptions.port)) {
    std::fprintf(stderr, "ferry: --listen wants HOST:PORT\n");
    return 2;
  }
  nbd::NbdOptions noptions;
  if (!nbd_listen.empty() && !split_host_port(nbd_listen, noptions.listen_address, noptions.port)) {
    std::fprintf(stderr, "ferry: --nbd wants HOST:PORT\n");
    return 2;
  }
  // The portal's and the NBD export's access rules: the same model, flags and checks as
  // `ferry target` (CHAP-protected volumes go to NBD clients with certificates only, or with
  // --nbd-insecure).
  // --check-config reads no file but the config: secret files are read at start.
  if (std::string e = check_config ? std::string() : load_chap_secrets(chap); !e.empty()) {
    std::fprintf(stderr, "ferry: %s\n", e.c_str());
    return 2;
  }
  iscsi::TargetAuthConfig target_cfg;
  if (std::string e =
          make_target_auth(iqn, chap.chap, chap.mutual_chap, allowed_initiators, target_cfg);
      !e.empty()) {
    std::fprintf(stderr, "ferry: %s\n", e.c_str());
    return 2;
  }
  bool chap_exports_tls = false;
  if (std::string e = apply_nbd_tls(nbd_tls, !nbd_listen.empty(), !chap.chap.empty(),
                                    "volumes of " + iqn, noptions, chap_exports_tls);
      !e.empty()) {
    std::fprintf(stderr, "ferry: %s\n", e.c_str());
    return 2;
  }
  std::vector<LayerSpec> stack;
  std::string ssd_layer;
  if (!ssd_cache_path.empty()) {
    ssd_layer = " > ssd-cache:" +
                (volume_names.size() == 1 ? ssd_cache_path : ssd_cache_path + ".{volume}") +
                ",size=" + std::to_string(ssd_cache_mib) + "MiB" +
                (ssd_cache_key.empty() ? "" : ",key=" + ssd_cache_key);
    if (!layers_text.empty()) {
      std::fprintf(stderr,
                   "ferry: --ssd-cache and --layers: put the ssd-cache layer into --layers\n");
      return 2;
    }
  }
  const std::string stack_text =
      !layers_text.empty() ? layers_text
      : ram_cache_mib != 0
          ? "prefetch-map:" + std::to_string(ram_cache_mib) +
                "MiB > readahead > ram-cache:" + std::to_string(ram_cache_mib) + "MiB" + ssd_layer
      : !ssd_layer.empty() ? "readahead" + ssd_layer
                           : std::string();
  const std::string stream_layer =
      stream
          ? (stream_mbit ? "stream:" + std::to_string(stream_mbit) + "Mbit" : std::string("stream"))
          : "";
  const std::string base_text = stream_layer.empty() ? stack_text
                                : stack_text.empty() ? stream_layer
                                                     : stream_layer + " > " + stack_text;
  if (std::string e = parse_stack(base_text, stack); !e.empty()) {
    std::fprintf(stderr, "ferry: %s: %s\n",
                 option_origin(app, layers_text.empty() ? "ram-cache-mib" : "layers").c_str(),
                 e.c_str());
    return 2;
  }
  // --journal-dir: each volume's stack gets its own journal on top.
  std::map<std::string, std::string> volume_policy;
  for (const std::string& f : policy_flags) {
    const size_t eq = f.find('=');
    journal::Policy p;
    const std::string name = f.substr(0, eq);
    if (eq == std::string::npos || !journal::parse_policy(f.substr(eq + 1), p)) {
      std::fprintf(
          stderr,
          "ferry: %s: '%s': want VOLUME=POLICY, POLICY write-back | cloud-persist | test-clone\n",
          option_origin(app, "policy").c_str(), f.c_str());
      return 2;
    }
    if (std::find(volume_names.begin(), volume_names.end(), name) == volume_names.end()) {
      std::fprintf(stderr, "ferry: %s: no --volume '%s'\n", option_origin(app, "policy").c_str(),
                   name.c_str());
      return 2;
    }
    if (journal_dir.empty()) {
      std::fprintf(stderr, "ferry: %s: a policy needs a journal (--journal-dir)\n",
                   option_origin(app, "policy").c_str());
      return 2;
    }
    volume_policy[name] = f.substr(eq + 1);
  }
  auto volume_stack = [&](const std::string& volume, std::vector<LayerSpec>& out) {
    if (journal_dir.empty()) return parse_stack(base_text, out);
    const auto pol = volume_policy.find(volume);
    const std::string j = "journal:" + journal_dir + "/" + volume +
                          ".journal:" + std::to_string(journal_mib) + "MiB" +
                          (pol == volume_policy.end() ? std::string() : ":" + pol->second);
    return parse_stack(base_text.empty() ? j : j + " > " + base_text, out);
  };
  if (!journal_dir.empty()) {
    std::vector<LayerSpec> probe;
    if (std::string e = volume_stack("probe", probe); !e.empty()) {
      std::fprintf(stderr, "ferry: --journal-dir/--journal-mib: %s\n", e.c_str());
      return 2;
    }
  }
  if (std::string e = check_mgmt_flags(app, mgmt_flags); !e.empty()) {
    std::fprintf(stderr, "ferry: %s\n", e.c_str());
    return 2;
  }
  if (check_config) return report_config_ok("ferry cloud-edge");
  if (!journal_dir.empty() && !ensure_state_dir(journal_dir, "--journal-dir")) return 1;
  auto tls = make_tls(tls_flags, false);
  if (!tls) return 2;

  sigset_t set = block_signals();
  Reactor reactor(0, 2ull << 30);
  wan::WanClient client(reactor, copt, *tls, volume_names);
  std::promise<std::string> ready;
  std::thread worker([&] {
    if (!reactor.init(1024).ok()) {
      ready.set_value("io_uring init failed");
      return;
    }
    client.start([&](Errc e, const std::string& why) {
      ready.set_value(e == Errc::ok ? std::string() : why.empty() ? to_string(e) : why);
    });
    reactor.run();
  });
  // Wait for the link, but let SIGINT/SIGTERM stop the edge meanwhile (it ignored them while a
  // refused certificate kept it retrying).
  // Stops the link and the reactor thread (after the stop ran on it); exit status 1.
  auto stop_early = [&] {
    std::promise<void> stopped;
    reactor.post([&] {
      client.stop();
      stopped.set_value();
    });
    stopped.get_future().wait();
    reactor.stop();
    worker.join();
    return 1;
  };
  auto ready_future = ready.get_future();
  while (ready_future.wait_for(std::chrono::milliseconds(50)) != std::future_status::ready) {
    timespec poll{0, 0};
    const int sig = sigtimedwait(&set, nullptr, &poll);
    if (sig == SIGINT || sig == SIGTERM) {
      std::fprintf(stderr, "ferry: cloud-edge: stopped before the link to %s came up\n",
                   dc.c_str());
      std::promise<void> stopped;
      reactor.post([&] {
        client.stop();
        stopped.set_value();
      });
      stopped.get_future().wait_for(std::chrono::seconds(2));
      reactor.stop();
      worker.join();
      return 1;
    }
  }
  const std::string error = ready_future.get();
  if (!error.empty()) {
    std::fprintf(stderr, "ferry: cloud-edge: %s\n", error.c_str());
    return stop_early();
  }
  if ((!journal_dir.empty() || layers_text.find("journal:") != std::string::npos) &&
      !(client.capabilities() & wan::kCapEpochs)) {
    // Write-back would land on the on-prem image write by write: not crash-consistent there.
    std::fprintf(
        stderr,
        "ferry: cloud-edge: the datacenter edge %s does not offer write-back epochs (an older "
        "version, or no --redo-dir): a journal's write-back would not be crash-consistent "
        "on-prem; refusing it (give the dc-edge --redo-dir, or drop --journal-dir)\n",
        dc.c_str());
    return stop_early();
  }

  iscsi::PortalConfig portal;
  portal.portal_address = ioptions.listen_address + ":" + std::to_string(ioptions.port) + ",1";
  portal.targets.push_back(target_cfg);
  scsi::Target target;
  std::vector<std::unique_ptr<Volume>> volumes;  // outlive the units and exports above them
  std::vector<std::unique_ptr<scsi::LogicalUnit>> units;
  std::vector<nbd::NbdExport> exports;
  for (size_t i = 0; i < volume_names.size(); ++i) {
    std::string error;
    const Uuid volume_uuid =
        wan_volume_uuid(tls_flags.peer_name.empty() ? dc : tls_flags.peer_name, volume_names[i]);
    std::vector<LayerSpec> vstack;
    (void)volume_stack(volume_names[i], vstack);  // checked above
    auto vol =
        Volume::compose(volume_names[i], client.device(i), vstack, false, error, volume_uuid);
    if (!vol) {
      std::fprintf(stderr, "ferry: %s\n", error.c_str());
      return stop_early();
    }
    BlockDevice* dev = &vol->top();
    std::fprintf(stderr, "ferry: volume %s: %s\n", volume_names[i].c_str(),
                 vol->describe().c_str());
    volumes.push_back(std::move(vol));
    scsi::LuIdentity id;
    id.uuid = volume_uuid;
    id.serial = scsi::serial_of(id.uuid);
    id.product = "WAN DISK";
    units.push_back(std::make_unique<scsi::LogicalUnit>(*dev, id));
    target.add_lun(uint16_t(i), units.back().get());
    exports.push_back({volume_names[i], dev, "wan volume " + volume_names[i], chap_exports_tls});
    std::fprintf(stderr, "ferry: LUN %zu: volume %s (%llu bytes)\n", i, volume_names[i].c_str(),
                 static_cast<unsigned long long>(client.device(i).geometry().size_bytes()));
  }
  iscsi::Server server(ioptions, portal);
  server.add_target(iqn, &target);
  server.set_reactors({&reactor});
  std::unique_ptr<nbd::NbdServer> nbd_server;
  if (!nbd_listen.empty()) nbd_server = std::make_unique<nbd::NbdServer>(noptions, exports);
  std::promise<bool> listening;
  reactor.post([&] {
    bool ok = server.start_listening(reactor).ok();
    if (ok && nbd_server) ok = nbd_server->start_listening(reactor).ok();
    listening.set_value(ok);
  });
  if (!listening.get_future().get()) {
    std::fprintf(stderr, "ferry: cloud-edge: cannot listen (port in use?)\n");
    return stop_early();
  }
  reactor.post([&] {
    for (const auto& v : volumes)
      for (journal::JournalDevice* j : v->journals()) j->start();  // resumes replayed write-back
  });
  std::fprintf(stderr, "ferry: cloud-edge connected to %s; target %s\n", dc.c_str(), iqn.c_str());
  reactor.post([&] {
    for (auto& v : volumes)
      for (journal::JournalDevice* j : v->journals())
        j->set_write_back_limits(uint64_t(write_back_mbit * 1e6 / 8), uint32_t(rpo_s * 1000));
    for (auto& v : volumes) v->start(reactor);
  });
  ControlInterface control(
      reactor,
      [&](GatewaySnapshot& s) {
        s.daemon = "cloud-edge";
        for (size_t i = 0; i < volumes.size(); ++i) {
          VolumeSnapshot vs;
          vs.name = volumes[i]->name();
          vs.stack = volumes[i]->describe();
          vs.size_bytes = client.device(i).geometry().size_bytes();
          vs.block_size_bytes = client.device(i).geometry().block_size_bytes;
          vs.stats = volumes[i]->stats();
          const wan::WanClientVolumeCounters& c = client.counters(i);
          vs.has_wan = true;
          vs.wan_raw_bytes_in = c.bytes_read;
          vs.wan_sent_bytes_in = c.payload_bytes_in;
          vs.wan_raw_bytes_out = c.bytes_written;
          vs.wan_sent_bytes_out = c.payload_bytes_out;
          vs.wan_counters = {{"wan", "bytes_zero", c.bytes_zero},
                             {"wan", "bytes_dedup", c.bytes_dedup},
                             {"wan", "bytes_compressed", c.bytes_compressed},
                             {"wan", "retries", c.retries}};
          s.volumes.push_back(std::move(vs));
        }
        s.iscsi_sessions = server.session_count();
        s.iscsi_connections = server.connection_count().load(std::memory_order_relaxed);
        s.nbd_connections = nbd_server ? nbd_server->connection_count() : 0;
        s.wan_connections = client.connected() ? 1 : 0;
        const wan::WanStreamCounters link = client.link_counters();
        s.wan_wire_bytes_in = link.wire_bytes_in;
        s.wan_wire_bytes_out = link.wire_bytes_out;
        s.wan_reconnects = client.reconnects();
        s.has_wan = true;
        s.wan_peer = client.server_address() + ":" + std::to_string(client.server_port());
        s.wan_down_for_ms = client.down_for_ms();
        if (uint32_t rtt = 0, var = 0; client.tcp_rtt(rtt, var)) {
          s.wan_tcp_rtt_us = rtt;
          s.wan_tcp_rtt_var_us = var;
        }
        if (const uint64_t rtt = client.ping_rtt_us(); rtt != 0) s.wan_ping_rtt_us = int64_t(rtt);
        append_sessions(s, {&server.hub(), nbd_server ? &nbd_server->hub() : nullptr});
      },
      [&](const std::string& name, const ControlAction& action) {
        if (action.kind == ControlAction::Kind::set_wan_cap)
          return ControlAnswer{ControlAnswer::Status::conflict,
                               "the WAN rate cap is the datacenter edge's (it sends the reads and "
                               "paces the link): PUT /api/v1/wan on the dc-edge"};
        // The reactor thread: the volume's top journal (the one that acknowledges its writes).
        for (const auto& v : volumes) {
          if (v->name() != name) continue;
          if (action.kind == ControlAction::Kind::resize_ram_cache) {
            uint64_t now = 0;
            if (std::string why = v->set_ram_cache_capacity(action.bytes, now); !why.empty())
              return ControlAnswer{ControlAnswer::Status::conflict, why};
            std::fprintf(stderr, "ferry: cloud-edge: volume %s: RAM cache budget %" PRIu64 " MiB\n",
                         name.c_str(), now >> 20);
            return ControlAnswer{ControlAnswer::Status::ok, {}, now};
          }
          if (action.kind == ControlAction::Kind::drop_clean_cache) {
            const int64_t n = v->drop_clean_cache();
            if (n < 0)
              return ControlAnswer{ControlAnswer::Status::conflict,
                                   "volume '" + name + "' has no RAM cache tier"};
            std::fprintf(stderr,
                         "ferry: cloud-edge: volume %s: dropped %" PRId64 " clean chunk(s)\n",
                         name.c_str(), n);
            return ControlAnswer{ControlAnswer::Status::ok, {}, uint64_t(n)};
          }
          if (v->journals().empty())
            return ControlAnswer{ControlAnswer::Status::conflict,
                                 "volume '" + name + "' has no journal (--journal-dir)"};
          journal::JournalDevice& j = *v->journals().front();
          std::string why;
          switch (action.kind) {
            case ControlAction::Kind::set_policy:
              if (j.set_policy(action.policy, why) != Errc::ok)
                return ControlAnswer{ControlAnswer::Status::conflict,
                                     std::string("from ") + journal::to_string(j.policy()) +
                                         " to " + journal::to_string(action.policy) + ": " + why};
              std::fprintf(stderr, "ferry: cloud-edge: volume %s: policy %s\n", name.c_str(),
                           journal::to_string(action.policy));
              return ControlAnswer{};
            case ControlAction::Kind::pause_write_back:
            case ControlAction::Kind::resume_write_back:
              j.pause_write_back(action.kind == ControlAction::Kind::pause_write_back);
              std::fprintf(stderr, "ferry: cloud-edge: volume %s: write-back %s\n", name.c_str(),
                           j.write_back_paused() ? "paused" : "resumed");
              return ControlAnswer{};
            case ControlAction::Kind::flush_write_back:
              if (j.flush_write_back(why) != Errc::ok)
                return ControlAnswer{ControlAnswer::Status::conflict, why};
              return ControlAnswer{};
            case ControlAction::Kind::set_write_back_limits: {
              const uint64_t rate =
                  action.set_rate ? action.bytes : j.write_back_rate_bytes_per_s();
              const uint32_t rpo = action.set_rpo ? action.rpo_ms : j.rpo_target_ms();
              j.set_write_back_limits(rate, rpo);
              std::fprintf(stderr,
                           "ferry: cloud-edge: volume %s: write-back rate cap %.1f Mbit/s (0: "
                           "none), RPO target %.1f s (0: none)\n",
                           name.c_str(), double(rate) * 8 / 1e6, double(rpo) / 1000);
              return ControlAnswer{ControlAnswer::Status::ok, {}, rate};
            }
            case ControlAction::Kind::resize_ram_cache:
            case ControlAction::Kind::drop_clean_cache:
            case ControlAction::Kind::set_wan_cap:
              break;  // answered above
          }
          return ControlAnswer{};
        }
        return ControlAnswer{ControlAnswer::Status::not_found, "no volume '" + name + "'"};
      },
      disconnect_over({&server.hub(), nbd_server ? &nbd_server->hub() : nullptr}));
  MetricsRegistry registry;
  std::string mgmt_error;
  auto mgmt = start_mgmt(mgmt_flags, control, registry, mgmt_error);
  if (!mgmt_error.empty())
    std::fprintf(stderr, "ferry: management endpoint: %s\n", mgmt_error.c_str());
  std::fprintf(stderr, "ferry: listening on %s:%u\n", ioptions.listen_address.c_str(),
               ioptions.port);
  notify_ready("listening on " + ioptions.listen_address + ":" + std::to_string(ioptions.port) +
               ", " + std::to_string(volumes.size()) + " volume(s)");
  wait_for_stop(set, duration_s, [] {});
  std::fprintf(stderr, "ferry: cloud-edge stopping\n");
  notify_stopping("stopping: draining in-flight I/O, then the journals");
  if (mgmt) mgmt->stop();
  std::promise<void> stopped;
  reactor.post([&] {
    server.stop_listening(reactor);
    if (nbd_server) nbd_server->stop_listening(reactor);
    for (auto& v : volumes) v->stop();
    stopped.set_value();
  });
  stopped.get_future().wait();
  // Every front-end connection goes once its requests' I/O has completed: count them to zero.
  log_drain("cloud-edge", "iSCSI connection(s)",
            server.wait_connections_closed(kStopDrainTimeoutMs));
  if (nbd_server)
    log_drain("cloud-edge", "NBD connection(s)",
              nbd_server->wait_connections_closed(kStopDrainTimeoutMs));
  const bool drained = drain_journals(reactor, volumes, journal_drain_s);
  std::promise<std::string> stats;
  reactor.post([&] {
    std::string s = client.stats_text();
    for (const auto& v : volumes) s += v->stats_text();
    stats.set_value(s);
  });
  std::fprintf(stderr, "%s", stats.get_future().get().c_str());
  if (GatewaySnapshot final_snapshot; control.snapshot(final_snapshot, std::chrono::seconds(2)))
    std::fprintf(stderr, "%s", final_report(final_snapshot).c_str());
  // Release the volumes' leases (CLOSE_VOLUME) so another cloud edge may attach at once; a
  // link that is down or a datacenter edge that does not answer leaves them to expire there.
  // Not while a journal still holds writes the datacenter edge lacks: another cloud edge must
  // not attach before this one comes back (same certificate) and finishes the write-back.
  auto released = std::make_shared<std::promise<void>>();
  if (!drained)
    std::fprintf(stderr,
                 "ferry: cloud-edge: leases kept (journals not drained): restart this edge "
                 "to finish the write-back; other edges are refused until the lease expires\n");
  else
    reactor.post([&client, released] { client.release([released] { released->set_value(); }); });
  if (drained &&
      released->get_future().wait_for(std::chrono::seconds(3)) != std::future_status::ready)
    std::fprintf(stderr,
                 "ferry: cloud-edge: leases not released within 3 s (they expire on the "
                 "datacenter edge)\n");
  std::promise<void> client_stopped;
  reactor.post([&] {
    client.stop();
    client_stopped.set_value();
  });
  client_stopped.get_future().wait();
  reactor.stop();
  worker.join();
  return 0;
}

}  // namespace ferry::mgmt
