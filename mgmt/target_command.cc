// `ferry target` / `ferry demo` implementation (see target_command.h).
#include "mgmt/target_command.h"

#include <pthread.h>
#include <signal.h>
#include <time.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <latch>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "datapath/reactor.h"
#include "gateway/iscsi/server.h"
#include "gateway/nbd/server.h"
#include "gateway/scsi/logical_unit.h"
#include "gateway/volume.h"
#include "mgmt/cli_util.h"
#include "mgmt/config_file.h"
#include "mgmt/control.h"
#include "mgmt/gateway_metrics.h"
#include "mgmt/lun_spec.h"
#include "mgmt/mgmt_flags.h"
#include "mgmt/service_notify.h"
#include "mgmt/target_auth.h"

namespace ferry::mgmt {

namespace {

constexpr uint64_t kPoolBytesPerReactor = 2ull << 30;

struct TargetFlags {
  std::string listen = "127.0.0.1:3260";
  std::vector<std::string> luns;
  std::vector<std::string> extra_target_luns;  // IQN=SPEC
  std::string iqn = "iqn.2026-11.io.ferry:target";
  ChapFlags chap;
  std::vector<std::string> allowed_initiators;
  unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  uint32_t queue_depth = 128;
  uint32_t nop_interval_ms = 5000;
  uint32_t nop_timeout_ms = 15000;
  uint32_t login_timeout_ms = 15000;
  PreAuthLimits pre_auth;
  uint32_t tx_batch_pdus = 256;
  uint32_t spin_us = uint32_t(Reactor::kSpinNsDefault / 1000);
  std::string tcp_congestion;  // "": the system's
  std::string nbd;             // HOST:PORT
  std::string nbd_unix;
  std::string layers;
  NbdTlsFlags nbd_tls;
  double duration_s = 0;  // 0: until a signal
  MgmtFlags mgmt;
  bool check_only = false;
  const CLI::App* app = nullptr;  // names an option in messages (file line when from --config)  //
                                  // --check-config: validate, then exit before opening anything
};

void add_target_flags(CLI::App& app, TargetFlags& f, bool luns_required) {
  app.add_option("--listen", f.listen, "HOST:PORT of the iSCSI portal")->capture_default_str();
  auto* lun = app.add_option("--lun", f.luns,
                             "LUN, numbered from 0 in order: ram:SIZE[:512|4096] or "
                             "file:PATH[,bs=512|4096][,direct][,ro]");
  if (luns_required) lun->required();
  app.add_option("--iqn", f.iqn, "target name")->capture_default_str();
  app.add_option("--target", f.extra_target_luns,
                 "IQN=SPEC: one more LUN (same SPEC forms as --lun) on another target, numbered "
                 "from 0 per target in order; repeatable (no CHAP on these targets)");
  add_chap_flags(app, f.chap, /*discovery=*/true);
  app.add_option("--allow-initiator", f.allowed_initiators,
                 "repeatable: only these initiator names may log in to the --iqn target (ACL)");
  app.add_option("--threads", f.threads, "reactor threads (default: one per core)")
      ->check(CLI::Range(1u, 256u));
  app.add_option("--spin-us", f.spin_us,
                 "busy-poll for completions up to this long before sleeping, while they keep "
                 "coming that fast (0 = never, the default; 20 helped on a loaded machine; see "
                 "perf/README.md)")
      ->check(CLI::Range(0u, 1000u))
      ->capture_default_str();
  app.add_option("--tcp-congestion", f.tcp_congestion,
                 "TCP congestion control for the iSCSI and NBD listeners, e.g. cubic (default: the "
                 "system's; see perf/README.md for bbr without fq)");
  app.add_option("--queue-depth", f.queue_depth, "commands outstanding per session (CmdSN window)")
      ->check(CLI::Range(1u, 1024u))
      ->capture_default_str();
  app.add_option("--nop-interval-ms", f.nop_interval_ms,
                 "idle time before a NOP-In keepalive (0 = off)")
      ->check(CLI::Range(0u, 3600000u))
      ->capture_default_str();
  app.add_option("--nop-timeout-ms", f.nop_timeout_ms,
                 "an initiator that does not answer a NOP-In within this is dropped")
      ->check(CLI::Range(100u, 600000u))
      ->capture_default_str();
  app.add_option("--login-timeout-ms", f.login_timeout_ms,
                 "connect → full-feature phase deadline; silent peers are dropped after it")
      ->check(CLI::Range(100u, 600000u))
      ->capture_default_str();
  add_pre_auth_flags(app, f.pre_auth, "logged in (iSCSI) or past the handshake (NBD), per server");
  app.add_option("--tx-batch-pdus", f.tx_batch_pdus,
                 "iSCSI PDUs gathered into one sendmsg (1 = no batching; for benchmarks)")
      ->check(CLI::Range(1u, 256u))
      ->capture_default_str();
  app.add_option(
      "--layers", f.layers,
      "each LUN's stack above its device, top first (e.g. 'delay:2ms > fault:write@0+4096'; "
      "caches need --threads 1; see gateway/volume.h)");
  app.add_option("--nbd", f.nbd, "also export every LUN over NBD on HOST:PORT (lun0, lun1, ...)");
  app.add_option("--nbd-unix", f.nbd_unix, "also export over NBD on this Unix socket path");
  add_nbd_tls_flags(app, f.nbd_tls);
  add_mgmt_flags(app, f.mgmt);
  app.add_option("--duration", f.duration_s,
                 "stop after this many seconds (default: until SIGTERM)")
      ->check(CLI::Range(0.0, 31536000.0));
}

int run_target(TargetFlags& f, const char* banner) {
  auto flag = [&](const char* key) {
    return f.app ? option_origin(*f.app, key) : "--" + std::string(key);
  };
  iscsi::ServerOptions options;
  if (!split_host_port(f.listen, options.listen_address, options.port)) {
    std::fprintf(stderr, "ferry: --listen wants HOST:PORT, got '%s'\n", f.listen.c_str());
    return 2;
  }
  options.queue_depth_max = f.queue_depth;
  options.nop_interval_ms = f.nop_interval_ms;
  options.nop_timeout_ms = f.nop_timeout_ms;
  options.login_timeout_ms = f.login_timeout_ms;
  options.pre_auth = f.pre_auth;
  options.tx_batch_pdus_max = f.tx_batch_pdus;
  options.tcp_congestion = f.tcp_congestion;

  iscsi::PortalConfig portal;
  portal.portal_address = options.listen_address + ":" + std::to_string(options.port) + ",1";
  // --check-config reads no file but the config: secret files are read at start.
  if (std::string e = f.check_only ? std::string() : load_chap_secrets(f.chap); !e.empty()) {
    std::fprintf(stderr, "ferry: %s\n", e.c_str());
    return 2;
  }
  iscsi::TargetAuthConfig target_cfg;
  if (std::string e = make_target_auth(f.iqn, f.chap.chap, f.chap.mutual_chap, f.allowed_initiators,
                                       target_cfg);
      !e.empty()) {
    std::fprintf(stderr, "ferry: %s\n", e.c_str());
    return 2;
  }
  portal.targets.push_back(target_cfg);
  if (!f.chap.discovery_chap.empty() &&
      !split_user_secret(f.chap.discovery_chap, portal.discovery_chap_user,
                         portal.discovery_chap_secret)) {
    std::fprintf(stderr, "ferry: --discovery-chap wants USER:SECRET\n");
    return 2;
  }
  if (!f.chap.discovery_mutual_chap.empty()) {
    if (f.chap.discovery_chap.empty() ||
        !split_user_secret(f.chap.discovery_mutual_chap, portal.discovery_mutual_chap_user,
                           portal.discovery_mutual_chap_secret)) {
      std::fprintf(stderr,
                   "ferry: --discovery-mutual-chap wants USER:SECRET and --discovery-chap\n");
      return 2;
    }
  }
  nbd::NbdOptions nbd_options;
  const bool nbd_tcp = !f.nbd.empty();
  const bool nbd_on = nbd_tcp || !f.nbd_unix.empty();
  if (nbd_tcp && !split_host_port(f.nbd, nbd_options.listen_address, nbd_options.port)) {
    std::fprintf(stderr, "ferry: --nbd wants HOST:PORT, got '%s'\n", f.nbd.c_str());
    return 2;
  }
  nbd_options.listen_tcp = nbd_tcp;
  nbd_options.pre_auth = f.pre_auth;
  nbd_options.tcp_congestion = f.tcp_congestion;
  nbd_options.unix_path = f.nbd_unix;
  const bool chap_protected = !f.chap.chap.empty();
  bool chap_exports_tls = false;
  if (std::string e = apply_nbd_tls(f.nbd_tls, nbd_on, chap_protected, "LUNs of " + f.iqn,
                                    nbd_options, chap_exports_tls);
      !e.empty()) {
    std::fprintf(stderr, "ferry: %s\n", e.c_str());
    return 2;
  }

  // Devices and logical units: the --lun LUNs on the main target, then --target IQN=SPEC ones.
  struct LunPlan {
    std::string iqn;
    std::string spec;
    std::string flag;
  };
  std::vector<LunPlan> plan;
  for (const auto& l : f.luns) plan.push_back({f.iqn, l, flag("lun") + " " + l});
  for (const auto& t : f.extra_target_luns) {
    const auto eq = t.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == t.size()) {
      std::fprintf(stderr, "ferry: %s wants IQN=SPEC, got '%s'\n", flag("target").c_str(),
                   t.c_str());
      return 2;
    }
    plan.push_back({t.substr(0, eq), t.substr(eq + 1), flag("target") + " " + t});
  }
  if (plan.size() > 16384) {
    std::fprintf(stderr, "ferry: at most 16384 LUNs\n");
    return 2;
  }
  std::vector<LayerSpec> stack;
  if (std::string e = parse_stack(f.layers, stack); !e.empty()) {
    std::fprintf(stderr, "ferry: %s: %s\n", flag("layers").c_str(), e.c_str());
    return 2;
  }
  if (f.app != nullptr) {
    if (std::string e = check_mgmt_flags(*f.app, f.mgmt); !e.empty()) {
      std::fprintf(stderr, "ferry: %s\n", e.c_str());
      return 2;
    }
  }
  if (f.check_only) {
    for (const auto& p : plan) {
      LunSpec spec;
      if (std::string err = parse_lun_spec(p.spec, spec); !err.empty()) {
        std::fprintf(stderr, "ferry: %s: %s\n", p.flag.c_str(), err.c_str());
        return 2;
      }
    }
    return report_config_ok("ferry target");
  }
  std::vector<std::unique_ptr<BlockDevice>> devices;
  std::vector<std::unique_ptr<Volume>> volumes;  // above devices, below units: destroyed between
  std::vector<std::unique_ptr<scsi::LogicalUnit>> units;
  std::vector<nbd::NbdExport> exports;
  std::vector<std::string> api_names;  // per volume: its name in the management API (lun0, ...)
  std::vector<std::pair<std::string, std::unique_ptr<scsi::Target>>> targets;
  auto target_for = [&](const std::string& iqn) -> std::pair<scsi::Target*, uint16_t> {
    for (auto& [name, t] : targets)
      if (name == iqn) return {t.get(), uint16_t(t->lun_count())};
    targets.emplace_back(iqn, std::make_unique<scsi::Target>());
    return {targets.back().second.get(), 0};
  };
  target_for(f.iqn);  // the main target exists even without --lun (ferry demo adds one)
  for (size_t i = 0; i < plan.size(); ++i) {
    LunSpec spec;
    std::string err = parse_lun_spec(plan[i].spec, spec);
    if (!err.empty()) {
      std::fprintf(stderr, "ferry: %s: %s\n", plan[i].flag.c_str(), err.c_str());
      return 2;
    }
    auto base = open_lun(spec, err);
    if (!base) {
      std::fprintf(stderr, "ferry: %s: %s\n", plan[i].flag.c_str(), err.c_str());
      return 1;
    }
    auto vol = Volume::compose(plan[i].spec, *base, stack, f.threads > 1, err);
    if (!vol) {
      std::fprintf(stderr, "ferry: %s: %s\n", plan[i].flag.c_str(), err.c_str());
      return 2;
    }
    BlockDevice* dev = &vol->top();
    devices.push_back(std::move(base));
    volumes.push_back(std::move(vol));
    auto [target, lun] = target_for(plan[i].iqn);
    scsi::LuIdentity id;
    if (std::string uerr = lun_uuid(spec, id.uuid); !uerr.empty()) {
      std::fprintf(stderr, "ferry: %s: %s\n", plan[i].flag.c_str(), uerr.c_str());
      return 1;
    }
    id.serial = scsi::serial_of(id.uuid);
    id.product = spec.kind == LunSpec::Kind::ram ? "RAM DISK" : "FILE DISK";
    units.push_back(std::make_unique<scsi::LogicalUnit>(*dev, id));
    target->add_lun(lun, units.back().get());
    std::fprintf(stderr, "ferry: %s LUN %u: %s, uuid %s (%llu blocks of %u bytes)\n",
                 plan[i].iqn.c_str(), unsigned(lun), std::string(dev->describe()).c_str(),
                 id.uuid.to_string().c_str(),
                 static_cast<unsigned long long>(dev->geometry().block_count),
                 dev->geometry().block_size_bytes);
    const std::string export_name = plan[i].iqn == f.iqn ? "lun" + std::to_string(lun)
                                                         : plan[i].iqn + "/" + std::to_string(lun);
    // A CHAP-protected LUN's export requires TLS (with the client certificate the CA checks).
    const bool export_tls = chap_exports_tls && plan[i].iqn == f.iqn;
    exports.push_back(nbd::NbdExport{export_name, dev, std::string(dev->describe()), export_tls});
    api_names.push_back(plan[i].iqn == f.iqn ? export_name
                                             : plan[i].iqn + "-lun" + std::to_string(lun));
  }
  for (size_t i = 1; i < targets.size(); ++i) {
    iscsi::TargetAuthConfig extra;
    extra.iqn = targets[i].first;
    portal.targets.push_back(extra);
  }

  iscsi::Server server(options, portal);
  for (auto& [name, t] : targets) server.add_target(name, t.get());
  std::unique_ptr<nbd::NbdServer> nbd_server;
  if (nbd_on) nbd_server = std::make_unique<nbd::NbdServer>(nbd_options, exports);

  // Signals are taken by the main thread only.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  std::vector<std::unique_ptr<Reactor>> reactors;
  std::vector<Reactor*> raw;
  for (unsigned i = 0; i < f.threads; ++i) {
    reactors.push_back(std::make_unique<Reactor>(i, kPoolBytesPerReactor));
    reactors.back()->set_spin_ns(uint64_t(f.spin_us) * 1000);
    raw.push_back(reactors.back().get());
  }
  server.set_reactors(raw);
  std::latch ready(f.threads);
  std::atomic<bool> failed{false};
  std::vector<char> running(f.threads, 0);  // reactor i runs its loop (written before `ready`)
  std::vector<std::thread> workers;
  for (unsigned i = 0; i < f.threads; ++i) {
    workers.emplace_back([&, i] {
      Reactor& r = *reactors[i];
      bool ok = r.init(1024).ok() && server.start_listening(r).ok();
      if (ok && nbd_server) {
        auto started = nbd_server->start_listening(r);
        if (!started.ok()) {
          std::fprintf(stderr, "ferry: NBD export failed to start: %s\n",
                       to_string(started.error()));
          ok = false;
        }
      }
      if (!ok) failed = true;
      running[i] = ok;
      ready.count_down();
      if (ok) r.run();
    });
  }
  ready.wait();
  // Stop accepting and close every connection, on each reactor; returns once all have done it.
  auto stop_listening_everywhere = [&] {
    std::latch stopped(ptrdiff_t(std::count(running.begin(), running.end(), 1)));
    for (size_t i = 0; i < reactors.size(); ++i) {
      if (!running[i]) continue;  // never started: nothing to stop, and no loop to post to
      Reactor* rp = reactors[i].get();
      rp->post([&, rp] {
        server.stop_listening(*rp);
        if (nbd_server) nbd_server->stop_listening(*rp);
        stopped.count_down();
      });
    }
    stopped.wait();
  };
  if (failed) {
    std::fprintf(stderr, "ferry: failed to start (see the messages above)\n");
    stop_listening_everywhere();
    for (auto& r : reactors) r->stop();
    for (auto& w : workers) w.join();
    return 1;
  }
  std::fprintf(stderr, "ferry: %zu target(s) (%s ...) with %zu LUN(s), %u thread(s)\n",
               targets.size(), f.iqn.c_str(), units.size(), f.threads);
  std::fprintf(stderr, "ferry: listening on %s:%u\n", options.listen_address.c_str(), options.port);
  if (nbd_tcp)
    std::fprintf(stderr, "ferry: nbd listening on %s:%u (%zu export(s), default %s)\n",
                 nbd_options.listen_address.c_str(), nbd_server->bound_port(), exports.size(),
                 exports.empty() ? "none" : exports.front().name.c_str());
  if (!f.nbd_unix.empty())
    std::fprintf(stderr, "ferry: nbd listening on unix:%s\n", f.nbd_unix.c_str());
  // Management endpoint: snapshots are collected on reactor 0 (with --threads > 1 the stacks
  // hold no single-reactor layers, and their meters are read lock-free from any thread).
  ControlInterface control(
      *reactors[0],
      [&](GatewaySnapshot& s) {
        s.daemon = "target";
        for (size_t i = 0; i < volumes.size(); ++i) {
          const auto& v = volumes[i];
          VolumeSnapshot vs;
          vs.name = api_names[i];
          vs.stack = v->describe();
          vs.size_bytes = v->top().geometry().size_bytes();
          vs.block_size_bytes = v->top().geometry().block_size_bytes;
          vs.stats = v->stats();
          s.volumes.push_back(std::move(vs));
        }
        s.iscsi_sessions = server.session_count();
        s.iscsi_connections = server.connection_count().load(std::memory_order_relaxed);
        s.nbd_connections = nbd_server ? nbd_server->connection_count() : 0;
        append_sessions(s, {&server.hub(), nbd_server ? &nbd_server->hub() : nullptr});
      },
      nullptr, disconnect_over({&server.hub(), nbd_server ? &nbd_server->hub() : nullptr}));
  MetricsRegistry registry;
  std::string mgmt_error;
  auto mgmt = start_mgmt(f.mgmt, control, registry, mgmt_error);
  if (!mgmt_error.empty())
    std::fprintf(stderr, "ferry: management endpoint: %s\n", mgmt_error.c_str());
  if (banner != nullptr) std::fprintf(stderr, "%s", banner);
  notify_ready("listening on " + options.listen_address + ":" + std::to_string(options.port) +
               ", " + std::to_string(units.size()) + " LUN(s)");

  int sig = 0;
  if (f.duration_s > 0) {
    const int64_t deadline = int64_t(Reactor::now_ns_fresh()) + int64_t(f.duration_s * 1e9);
    for (;;) {
      const int64_t left = deadline - int64_t(Reactor::now_ns_fresh());
      if (left <= 0) break;
      timespec ts{time_t(left / 1000000000), long(left % 1000000000)};
      sig = sigtimedwait(&set, nullptr, &ts);
      if (sig == SIGINT || sig == SIGTERM) break;
    }
  } else {
    while (sigwait(&set, &sig) == 0 && sig == SIGPIPE) {
    }
  }
  std::fprintf(stderr, "ferry: stopping\n");
  notify_stopping("stopping: draining in-flight I/O");
  if (mgmt) mgmt->stop();  // no snapshot request may reach the reactors once they stop
  stop_listening_everywhere();
  // Every connection goes once the device I/O of its tasks has completed: count them to zero.
  log_drain("target", "iSCSI connection(s)", server.wait_connections_closed(kStopDrainTimeoutMs));
  if (nbd_server)
    log_drain("target", "NBD connection(s)",
              nbd_server->wait_connections_closed(kStopDrainTimeoutMs));
  if (GatewaySnapshot final_snapshot; control.snapshot(final_snapshot, std::chrono::seconds(2)))
    std::fprintf(stderr, "%s", final_report(final_snapshot).c_str());
  std::fprintf(stderr, "ferry: stopped\n");
  for (auto& r : reactors) r->stop();
  for (auto& w : workers) w.join();
  for (const auto& v : volumes) std::fputs(v->stats_text().c_str(), stderr);  // cache counters
  return 0;
}

}  // namespace

int run_target_command(int argc, char** argv) {
  CLI::App app{"Serve RAM or file LUNs over iSCSI (and NBD): the standalone target",
               "ferry target"};
  TargetFlags flags;
  bool check_config = false;
  add_config_flags(app, check_config);
  add_target_flags(app, flags, true);
  if (int status = parse_command_line(app, argc, argv); status >= 0) return status;
  flags.check_only = check_config;
  flags.app = &app;
  return run_target(flags, nullptr);
}

}  // namespace ferry::mgmt
