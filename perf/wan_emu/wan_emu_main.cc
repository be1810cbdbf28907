// ferry-wan-emu: command line for the WAN emulator (wan_emulator.h). Parses flags, blocks the
// stop signals outside ppoll(), runs the loop on the main thread, prints the byte counts and
// writes --stats-file on SIGTERM/SIGINT (or after --duration-s). Exit 0 on a clean stop.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/time.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "datapath/net_address.h"
#include "perf/wan_emu/wan_emulator.h"

namespace {

volatile sig_atomic_t g_stop = 0;

void on_stop_signal(int) { g_stop = 1; }

uint64_t ms_to_ns(double ms) { return uint64_t(std::llround(ms * 1e6)); }
uint64_t s_to_ns(double s) { return uint64_t(std::llround(s * 1e9)); }

}  // namespace

int main(int argc, char** argv) {  // NOLINT(bugprone-exception-escape): a tool; bad_alloc ends it
  CLI::App app{
      "ferry-wan-emu: userspace TCP proxy emulating one WAN link (delay, jitter, rate, bottleneck "
      "queue, scheduled cuts) between its clients and one target. See perf/wan_emu/README.md."};
  std::string listen = "127.0.0.1:0", target;
  double rtt_ms = 0, jitter_ms = 0, rate_mbit = 0, duration_s = 0;
  std::vector<double> cut_at_s, cut_for_s;
  std::string cut_mode = "hold";
  uint64_t buffer_kib = 0, conn_buffer_kib = 0, seed = 1;
  uint32_t max_conns = 64;
  std::string stats_file;
  bool verbose = false;

  app.add_option("--listen", listen, "HOST:PORT to accept clients on (port 0: any, printed)")
      ->capture_default_str();
  app.add_option("--connect", target, "HOST:PORT of the target; one connection per client")
      ->required();
  app.add_option("--rtt-ms", rtt_ms, "round-trip time; each direction adds rtt/2")
      ->check(CLI::Range(0.0, 600000.0))
      ->capture_default_str();
  app.add_option("--jitter-ms", jitter_ms,
                 "one-way delay varies smoothly within ±this (byte order kept)")
      ->check(CLI::Range(0.0, 60000.0))
      ->capture_default_str();
  app.add_option("--rate-mbit", rate_mbit, "link rate per direction in Mbit/s (0: unlimited)")
      ->check(CLI::Range(0.0, 1000000.0))
      ->capture_default_str();
  app.add_option("--cut-at-s", cut_at_s,
                 "start of a link cut, seconds after startup (repeatable or a comma list)")
      ->delimiter(',')
      ->check(CLI::NonNegativeNumber);
  app.add_option("--cut-for-s", cut_for_s,
                 "length of each cut in seconds: one value for all cuts or one per --cut-at-s")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  app.add_option("--cut-mode", cut_mode,
                 "hold: bytes are held during a cut and delivered after it (TCP survives); "
                 "reset: connections are closed with RST when a cut starts")
      ->check(CLI::IsMember({"hold", "reset"}))
      ->capture_default_str();
  app.add_option("--buffer-kib", buffer_kib,
                 "bottleneck queue per direction in KiB, shared by all connections; sources are "
                 "not read while it is full (default: 5 ms of the rate, at least 64 KiB)");
  app.add_option("--conn-buffer-kib", conn_buffer_kib,
                 "per connection and direction: most bytes held (queued, propagating, or not yet "
                 "taken by the receiver); default: enough for one connection to fill the link");
  app.add_option("--max-conns", max_conns, "connections relayed at once (more wait in the backlog)")
      ->check(CLI::Range(1u, 65536u))
      ->capture_default_str();
  app.add_option("--seed", seed, "seed of the jitter process")->capture_default_str();
  app.add_option("--stats-file", stats_file, "write byte counts per direction as JSON at exit");
  app.add_option("--duration-s", duration_s, "stop after this many seconds (default: SIGTERM)")
      ->check(CLI::Range(0.0, 1e7));
  app.add_flag("-v,--verbose", verbose, "log every connection");
  CLI11_PARSE(app, argc, argv);

  ferry::wan::WanConfig config;
  std::string error;
  auto listen_at = ferry::parse_host_port(listen, error, /*allow_zero_port=*/true);
  if (!listen_at.ok()) {
    std::fprintf(stderr, "wan-emu: --listen: %s\n", error.c_str());
    return 2;
  }
  config.listen_host = listen_at.value().host;
  config.listen_port = listen_at.value().port;
  auto connect_to = ferry::parse_host_port(target, error);
  if (!connect_to.ok()) {
    std::fprintf(stderr, "wan-emu: --connect: %s\n", error.c_str());
    return 2;
  }
  config.connect_host = connect_to.value().host;
  config.connect_port = connect_to.value().port;
  if (cut_for_s.empty() && !cut_at_s.empty()) {
    std::fprintf(stderr, "wan-emu: --cut-at-s needs --cut-for-s\n");
    return 2;
  }
  if (cut_for_s.size() != 1 && cut_for_s.size() != cut_at_s.size()) {
    std::fprintf(stderr, "wan-emu: give one --cut-for-s, or one per --cut-at-s (%zu vs %zu)\n",
                 cut_for_s.size(), cut_at_s.size());
    return 2;
  }
  for (size_t i = 0; i < cut_at_s.size(); ++i)
    config.cuts.push_back(
        {s_to_ns(cut_at_s[i]), s_to_ns(cut_for_s.size() == 1 ? cut_for_s[0] : cut_for_s[i])});
  config.rtt_ns = ms_to_ns(rtt_ms);
  config.jitter_ns = ms_to_ns(jitter_ms);
  config.rate_bits_per_s = uint64_t(std::llround(rate_mbit * 1e6));
  config.cut_mode = cut_mode == "reset" ? ferry::wan::CutMode::reset : ferry::wan::CutMode::hold;
  config.queue_bytes_max = buffer_kib * 1024;
  config.conn_buffer_bytes = conn_buffer_kib * 1024;
  config.connections_max = max_conns;
  config.seed = seed;
  config.stats_file = stats_file;
  config.verbose = verbose;

  // Stop signals are blocked except inside ppoll(), so a signal never races the wait.
  sigset_t stop_set, wait_mask;
  sigemptyset(&stop_set);
  sigaddset(&stop_set, SIGTERM);
  sigaddset(&stop_set, SIGINT);
  sigaddset(&stop_set, SIGALRM);
  sigprocmask(SIG_BLOCK, &stop_set, &wait_mask);
  sigdelset(&wait_mask, SIGTERM);
  sigdelset(&wait_mask, SIGINT);
  sigdelset(&wait_mask, SIGALRM);
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGALRM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // Wake-ups on time: the default 50 µs timer slack would blur the pacing.
  (void)prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);

  ferry::wan::WanEmulator emulator(config);
  if (!emulator.start()) return 1;
  if (duration_s > 0) {
    itimerval it{};
    it.it_value.tv_sec = time_t(duration_s);
    it.it_value.tv_usec = suseconds_t((duration_s - std::floor(duration_s)) * 1e6);
    if (it.it_value.tv_sec == 0 && it.it_value.tv_usec == 0) it.it_value.tv_usec = 1;
    setitimer(ITIMER_REAL, &it, nullptr);
  }
  const bool clean = emulator.run(&g_stop, &wait_mask).ok();
  std::fprintf(stderr, "wan-emu: stopped: %s\n", emulator.stats_line().c_str());
  emulator.write_stats_file();
  return clean ? 0 : 1;
}
