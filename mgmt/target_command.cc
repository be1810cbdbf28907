// `ferry target` implementation (see target_command.h).
#include "mgmt/target_command.h"

#include <CLI/CLI.hpp>
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "datapath/reactor.h"
#include "gateway/iscsi/server.h"
#include "gateway/scsi/logical_unit.h"
#include "mgmt/lun_spec.h"

namespace ferry::mgmt {

namespace {

bool split_host_port(const std::string& text, std::string& host, uint16_t& port) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos) return false;
  host = text.substr(0, colon);
  try {
    int p = std::stoi(text.substr(colon + 1));
    if (p <= 0 || p > 65535) return false;
    port = uint16_t(p);
  } catch (...) {
    return false;
  }
  return !host.empty();
}

bool split_user_secret(const std::string& text, std::string& user, std::string& secret) {
  auto colon = text.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size()) return false;
  user = text.substr(0, colon);
  secret = text.substr(colon + 1);
  return true;
}

}  // namespace

int run_target_command(int argc, char** argv) {
  CLI::App app{"Serve RAM or file LUNs over iSCSI (standalone target)", "ferry target"};
  std::string listen = "127.0.0.1:3260";
  std::vector<std::string> luns;
  std::string iqn = "iqn.2026-11.io.ferry:target";
  std::string chap, mutual_chap, discovery_chap;
  unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  uint32_t queue_depth = 128;
  uint32_t nop_interval_ms = 5000;
  app.add_option("--listen", listen, "address:port of the iSCSI portal")->capture_default_str();
  app.add_option("--lun", luns,
                 "LUN, numbered from 0 in order: ram:SIZE[:512|4096] or "
                 "file:PATH[,bs=512|4096][,direct][,ro]")
      ->required();
  app.add_option("--iqn", iqn, "target name")->capture_default_str();
  app.add_option("--chap", chap, "require CHAP: USER:SECRET the initiator must present");
  app.add_option("--mutual-chap", mutual_chap,
                 "mutual CHAP: USER:SECRET the target presents to the initiator");
  app.add_option("--discovery-chap", discovery_chap, "require CHAP for discovery: USER:SECRET");
  app.add_option("--threads", threads, "reactor threads (default: one per core)")
      ->check(CLI::Range(1u, 256u));
  app.add_option("--queue-depth", queue_depth, "commands outstanding per session (CmdSN window)")
      ->check(CLI::Range(1u, 1024u))
      ->capture_default_str();
  app.add_option("--nop-interval-ms", nop_interval_ms,
                 "idle time before a NOP-In keepalive (0 = off)")
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  iscsi::ServerOptions options;
  if (!split_host_port(listen, options.listen_address, options.port)) {
    std::fprintf(stderr, "ferry: --listen wants ADDRESS:PORT, got '%s'\n", listen.c_str());
    return 2;
  }
  options.queue_depth_max = queue_depth;
  options.nop_interval_ms = nop_interval_ms;

  iscsi::PortalConfig portal;
  portal.portal_address = options.listen_address + ":" + std::to_string(options.port) + ",1";
  iscsi::TargetAuthConfig target_cfg;
  target_cfg.iqn = iqn;
  if (!chap.empty() && !split_user_secret(chap, target_cfg.chap_user, target_cfg.chap_secret)) {
    std::fprintf(stderr, "ferry: --chap wants USER:SECRET\n");
    return 2;
  }
  if (!mutual_chap.empty()) {
    if (chap.empty()) {
      std::fprintf(stderr, "ferry: --mutual-chap needs --chap as well\n");
      return 2;
    }
    if (!split_user_secret(mutual_chap, target_cfg.mutual_chap_user, target_cfg.mutual_chap_secret)) {
      std::fprintf(stderr, "ferry: --mutual-chap wants USER:SECRET\n");
      return 2;
    }
  }
  portal.targets.push_back(target_cfg);
  if (!discovery_chap.empty() &&
      !split_user_secret(discovery_chap, portal.discovery_chap_user, portal.discovery_chap_secret)) {
    std::fprintf(stderr, "ferry: --discovery-chap wants USER:SECRET\n");
    return 2;
  }

  // Devices and logical units.
  std::vector<std::unique_ptr<BlockDevice>> devices;
  std::vector<std::unique_ptr<scsi::LogicalUnit>> units;
  auto target = std::make_unique<scsi::Target>();
  for (size_t i = 0; i < luns.size(); ++i) {
    LunSpec spec;
    std::string err = parse_lun_spec(luns[i], spec);
    if (!err.empty()) {
      std::fprintf(stderr, "ferry: --lun %s: %s\n", luns[i].c_str(), err.c_str());
      return 2;
    }
    auto dev = open_lun(spec, err);
    if (!dev) {
      std::fprintf(stderr, "ferry: --lun %s: %s\n", luns[i].c_str(), err.c_str());
      return 1;
    }
    scsi::LuIdentity id;
    id.serial = "FERRY" + std::to_string(1000 + i);
    id.product = spec.kind == LunSpec::Kind::ram ? "RAM DISK" : "FILE DISK";
    id.device_id_seed = std::hash<std::string>{}(iqn + "/" + std::to_string(i));
    units.push_back(std::make_unique<scsi::LogicalUnit>(*dev, id));
    target->add_lun(uint16_t(i), units.back().get());
    std::fprintf(stderr, "ferry: LUN %zu: %s (%llu blocks of %u bytes)\n", i,
                 std::string(dev->describe()).c_str(),
                 static_cast<unsigned long long>(dev->geometry().block_count),
                 dev->geometry().block_size_bytes);
    devices.push_back(std::move(dev));
  }

  iscsi::Server server(options, portal);
  server.add_target(iqn, target.get());

  // Signals are taken by the main thread only.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  std::vector<std::unique_ptr<Reactor>> reactors;
  std::vector<Reactor*> raw;
  for (unsigned i = 0; i < threads; ++i) {
    reactors.push_back(std::make_unique<Reactor>(i, 2ull << 30));
    raw.push_back(reactors.back().get());
  }
  server.set_reactors(raw);
  std::atomic<unsigned> ready{0};
  std::atomic<bool> failed{false};
  std::vector<std::thread> workers;
  for (unsigned i = 0; i < threads; ++i) {
    workers.emplace_back([&, i] {
      Reactor& r = *reactors[i];
      if (!r.init(1024).ok() || !server.start_listening(r).ok()) {
        failed = true;
        ready.fetch_add(1);
        return;
      }
      ready.fetch_add(1);
      r.run();
    });
  }
  while (ready.load() < threads) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (failed) {
    for (auto& r : reactors) r->stop();
    for (auto& w : workers) w.join();
    return 1;
  }
  std::fprintf(stderr, "ferry: target %s with %zu LUN(s), %u thread(s)\n", iqn.c_str(),
               units.size(), threads);
  std::fprintf(stderr, "ferry: listening on %s:%u\n", options.listen_address.c_str(),
               options.port);

  int sig = 0;
  while (sigwait(&set, &sig) == 0 && sig == SIGPIPE) {
  }
  std::fprintf(stderr, "ferry: signal %d, stopping\n", sig);
  for (auto& r : reactors) {
    Reactor* rp = r.get();
    rp->post([&server, rp] { server.stop_listening(*rp); });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  for (auto& r : reactors) r->stop();
  for (auto& w : workers) w.join();
  return 0;
}

}  // namespace ferry::mgmt
