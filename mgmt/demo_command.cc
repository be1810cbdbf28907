// `ferry demo` (see demo_command.h).
#include "mgmt/demo_command.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "mgmt/config_file.h"
#include "mgmt/pki_script.h"

extern char** environ;

namespace ferry::mgmt {

namespace {

struct Child {
  std::string name;
  pid_t pid = -1;
  std::string log;
  bool ours = true;  // our child (reaped with waitpid); false: a daemon that forked itself
};

std::vector<Child> g_children;

pid_t spawn(const std::vector<std::string>& args, const std::string& log_path) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  // Children get the default signal mask so SIGTERM stops them.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  const int rc = posix_spawnp(&pid, argv[0], &fa, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  return rc == 0 ? pid : -1;
}

// Runs a command to completion; returns its exit status (-1 if it could not start).
int run(const std::vector<std::string>& args, const std::string& log_path) {
  const pid_t pid = spawn(args, log_path);
  if (pid < 0) return -1;
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

double now_s() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) / 1e9;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A file descriptor that polls readable when the process exits (any process, not only ours).
int open_pidfd(pid_t pid) { return int(::syscall(SYS_pidfd_open, pid, 0)); }

// Waits, without sleeping, until `ready()` holds or the process exits or timeout_ms passes: wakes
// on every change of the log file (inotify) and on the exit (pidfd). 1: ready, 0: exited,
// -1: timed out.
template <typename Ready>
int wait_ready_or_exit(pid_t pid, const std::string& log, int timeout_ms, Ready ready) {
  const int pidfd = open_pidfd(pid);
  const int in = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  if (in >= 0) inotify_add_watch(in, log.c_str(), IN_MODIFY | IN_CLOSE_WRITE);
  const double deadline = now_s() + timeout_ms / 1000.0;
  int result = -1;
  for (;;) {
    if (ready()) {
      result = 1;
      break;
    }
    pollfd fds[2] = {{pidfd, POLLIN, 0}, {in, POLLIN, 0}};
    const int left_ms = int((deadline - now_s()) * 1000);
    if (left_ms <= 0) break;
    if (::poll(fds, 2, left_ms) < 0 && errno != EINTR) break;
    if (fds[0].revents & POLLIN) {
      result = ready() ? 1 : 0;
      break;
    }
    if (fds[1].revents & POLLIN) {
      char drain[4096];
      while (::read(in, drain, sizeof drain) > 0) {
      }
    }
  }
  if (in >= 0) ::close(in);
  if (pidfd >= 0) ::close(pidfd);
  return result;
}

bool start(const std::string& name, const std::vector<std::string>& args, const std::string& dir,
           const std::string& ready_text) {
  Child c{name, -1, dir + "/" + name + ".log"};
  c.pid = spawn(args, c.log);
  if (c.pid < 0) {
    std::fprintf(stderr, "ferry demo: cannot start %s (is it installed? scripts/install-deps.sh)\n",
                 args[0].c_str());
    return false;
  }
  g_children.push_back(c);
  const int r = wait_ready_or_exit(
      c.pid, c.log, 20000, [&] { return read_file(c.log).find(ready_text) != std::string::npos; });
  if (r == 1) return true;
  if (r == 0) {
    waitpid(c.pid, nullptr, 0);
    std::fprintf(stderr, "ferry demo: %s exited early:\n%s\n", name.c_str(),
                 read_file(c.log).c_str());
    g_children.pop_back();
    return false;
  }
  std::fprintf(stderr, "ferry demo: %s did not become ready within 20 s\n", name.c_str());
  return false;
}

// SIGTERM, then at most 5 s for the process to exit (pidfd, no polling loop), then SIGKILL.
void stop_child(Child& c) {
  if (c.pid < 0) return;
  const int pidfd = open_pidfd(c.pid);
  kill(c.pid, SIGTERM);
  pollfd p{pidfd, POLLIN, 0};
  if (pidfd < 0 || ::poll(&p, 1, 5000) <= 0) {
    std::fprintf(stderr, "ferry demo: %s did not stop within 5 s, killing it\n", c.name.c_str());
    kill(c.pid, SIGKILL);
    if (pidfd >= 0) (void)::poll(&p, 1, 5000);
  }
  if (c.ours) waitpid(c.pid, nullptr, 0);
  if (pidfd >= 0) ::close(pidfd);
  c.pid = -1;
}

void stop_all() {
  for (auto it = g_children.rbegin(); it != g_children.rend(); ++it) stop_child(*it);
}

std::string lines_with(const std::string& text, const std::string& needle) {
  std::string out, line;
  std::istringstream in(text);
  while (std::getline(in, line))
    if (line.find(needle) != std::string::npos) out += "  " + line + "\n";
  return out;
}

bool same_files(const std::string& a, const std::string& b) {
  std::ifstream fa(a, std::ios::binary), fb(b, std::ios::binary);
  std::vector<char> ba(1 << 20), bb(1 << 20);
  for (;;) {
    fa.read(ba.data(), std::streamsize(ba.size()));
    fb.read(bb.data(), std::streamsize(bb.size()));
    if (fa.gcount() != fb.gcount()) return false;
    if (fa.gcount() == 0) return true;
    if (std::memcmp(ba.data(), bb.data(), size_t(fa.gcount())) != 0) return false;
  }
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

}  // namespace

int run_demo_command(int argc, char** argv) {
  CLI::App app{
      "The whole Ferry pipeline on one machine: VMDK → qemu-nbd → dc-edge → emulated "
      "WAN → cloud-edge → iSCSI",
      "ferry demo"};
  std::string listen = "127.0.0.1:3260";
  std::string nbd = "127.0.0.1:10809";
  double rate_mbit = 100, rtt_ms = 40, duration_s = 0;
  unsigned size_mib = 256;
  app.add_option("--listen", listen, "iSCSI portal of the cloud edge")->capture_default_str();
  app.add_option("--nbd", nbd, "NBD export of the cloud edge")->capture_default_str();
  app.add_option("--rate-mbit", rate_mbit, "emulated WAN rate")
      ->check(CLI::Range(0.1, 100000.0))
      ->capture_default_str();
  app.add_option("--rtt-ms", rtt_ms, "emulated WAN round-trip time")
      ->check(CLI::Range(0.0, 10000.0))
      ->capture_default_str();
  app.add_option("--size-mib", size_mib, "sample disk size")
      ->check(CLI::Range(16u, 65536u))
      ->capture_default_str();
  app.add_option("--duration", duration_s,
                 "stop this many seconds after the walkthrough (default: Ctrl-C)")
      ->check(CLI::Range(0.0, 31536000.0));
  app.set_version_flag("--version", std::string("ferry ") + FERRY_VERSION);
  if (int status = parse_command_line(app, argc, argv); status >= 0) return status;
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return 1;
  self[n] = 0;
  const std::string ferry = self;
  const std::string emu = ferry.substr(0, ferry.rfind('/')) + "/ferry-wan-emu";
  char dir_template[] = "/tmp/ferry-demo.XXXXXX";
  if (mkdtemp(dir_template) == nullptr) return 1;
  const std::string dir = dir_template;
  const std::string iqn = "iqn.2026-11.io.ferry:cloud";
  const std::string url = "iscsi://" + listen + "/" + iqn + "/0";

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  auto fail = [&](const char* what) {
    std::fprintf(stderr, "ferry demo: %s; logs in %s\n", what, dir.c_str());
    stop_all();
    return 1;
  };

  std::printf("== ferry demo: working in %s\n", dir.c_str());
  // 1. A sample disk: 1/8 random, 1/8 log-like text, the rest zero; then a VMDK of it.
  {
    std::ofstream raw(dir + "/sample.raw", std::ios::binary);
    const uint64_t size = uint64_t(size_mib) << 20;
    std::mt19937_64 rng(42);
    std::vector<char> buf(1 << 20);
    for (uint64_t off = 0; off < size; off += buf.size()) {
      if (off < size / 8) {
        for (size_t i = 0; i < buf.size(); i += 8) {
          const uint64_t v = rng();
          std::memcpy(buf.data() + i, &v, 8);
        }
      } else if (off >= size / 2 && off < size / 2 + size / 8) {
        std::string text;
        while (text.size() < buf.size())
          text += "2026-11-26 host kernel: block " + std::to_string(rng() % 100000) +
                  " ferry demo sample line\n";
        std::memcpy(buf.data(), text.data(), buf.size());
      } else {
        std::memset(buf.data(), 0, buf.size());
      }
      raw.write(buf.data(), std::streamsize(buf.size()));
    }
  }
  if (run({"qemu-img", "convert", "-f", "raw", "-O", "vmdk", dir + "/sample.raw",
           dir + "/sample.vmdk"},
          dir + "/qemu-img.log") != 0)
    return fail("qemu-img convert to VMDK failed (apt-get install qemu-utils)");
  std::printf("   sample disk: %u MiB virtual, VMDK %s\n", size_mib,
              (dir + "/sample.vmdk").c_str());
  if (run({"bash", "-c", kPkiScript, "pki", dir}, dir + "/pki.log") != 0)
    return fail("making the test certificates failed (openssl)");

  // 2. The chain.
  const std::string p_nbd = std::to_string(free_port()), p_wan = std::to_string(free_port()),
                    p_emu = std::to_string(free_port());
  {
    // --fork: qemu-nbd's parent exits once the server listens (readiness without polling); the
    // server's pid comes from its pid file.
    Child c{"qemu-nbd", -1, dir + "/qemu-nbd.log", false};
    const std::string pid_file = dir + "/qemu-nbd.pid";
    if (run({"qemu-nbd", "--fork", "--pid-file", pid_file, "-f", "vmdk", "-b", "127.0.0.1", "-p",
             p_nbd, "-t", "-x", "sample", dir + "/sample.vmdk"},
            c.log) != 0)
      return fail("qemu-nbd did not start (apt-get install qemu-utils; see qemu-nbd.log)");
    c.pid = pid_t(std::atol(read_file(pid_file).c_str()));
    if (c.pid <= 0) return fail("qemu-nbd wrote no pid file");
    g_children.push_back(c);
  }
  if (!start(
          "dc-edge",
          {ferry, "dc-edge", "--listen", "127.0.0.1:" + p_wan, "--volume",
           "sample=nbd://127.0.0.1:" + p_nbd + "/sample", "--tls-cert", dir + "/dc-edge-cert.pem",
           "--tls-key", dir + "/dc-edge-key.pem", "--tls-ca", dir + "/ca-cert.pem",
           "--rate-limit-mbit", std::to_string(rate_mbit * 0.95), "--wan-sndbuf-kib", "256"},
          dir, "dc-edge listening"))
    return fail("dc-edge did not start");
  if (!start("wan-emu",
             {emu, "--listen", "127.0.0.1:" + p_emu, "--connect", "127.0.0.1:" + p_wan, "--rtt-ms",
              std::to_string(rtt_ms), "--rate-mbit", std::to_string(rate_mbit), "--stats-file",
              dir + "/wan.json"},
             dir, "listening"))
    return fail("the WAN emulator did not start");
  if (!start(
          "cloud-edge",
          {ferry, "cloud-edge", "--listen", listen, "--nbd", nbd, "--dc", "127.0.0.1:" + p_emu,
           "--volume", "sample", "--tls-cert", dir + "/cloud-edge-cert.pem", "--tls-key",
           dir + "/cloud-edge-key.pem", "--tls-ca", dir + "/ca-cert.pem", "--dc-name", "dc-edge"},
          dir, "ferry: listening on"))
    return fail("cloud-edge did not start (is port 3260 in use?)");
  std::printf(
      "== pipeline up: qemu-nbd (VMDK) → ferry dc-edge :%s → WAN emulator (%.0f Mbit/s, "
      "%.0f ms RTT) :%s → ferry cloud-edge → iSCSI %s\n",
      p_wan.c_str(), rate_mbit, rtt_ms, p_emu.c_str(), listen.c_str());

  // 3. A real client reads the whole disk, then writes and reads back 4 MiB.
  double t0 = now_s();
  if (run({"qemu-img", "convert", "-f", "raw", "-O", "raw", url, dir + "/copy.raw"},
          dir + "/read.log") != 0)
    return fail("qemu-img read through iSCSI failed");
  const double read_s = now_s() - t0;
  const bool same = same_files(dir + "/copy.raw", dir + "/sample.raw");
  std::printf("== read the whole disk through iSCSI with qemu-img in %.1f s: %s\n", read_s,
              same ? "byte-identical to the source image" : "DIFFERENT (bug!)");
  std::remove((dir + "/copy.raw").c_str());
  t0 = now_s();
  const int w =
      run({"qemu-io", "-f", "raw", "-c", "write -P 0x5a 8M 4M", "-c", "read -P 0x5a 8M 4M", url},
          dir + "/write.log");
  std::printf(
      "== wrote 4 MiB (pattern 0x5a) at 8 MiB through iSCSI and read it back: %s (%.1f s)\n",
      w == 0 ? "ok" : "FAILED", now_s() - t0);
  std::printf("   the write went back over the WAN into the VMDK in the datacenter.\n");

  std::printf(
      "\nferry demo keeps serving. Try, from another terminal:\n"
      "  iscsi-ls -s iscsi://%s\n"
      "  qemu-img convert -p -O raw %s copy.img\n"
      "  nbdinfo nbd://%s/sample\n"
      "Stop with Ctrl-C (then it prints what crossed the WAN).\n",
      listen.c_str(), url.c_str(), nbd.c_str());
  std::fflush(stdout);
  if (duration_s > 0) {
    timespec ts{time_t(duration_s), long((duration_s - double(time_t(duration_s))) * 1e9)};
    sigtimedwait(&set, nullptr, &ts);
  } else {
    int sig;
    sigwait(&set, &sig);
  }
  stop_all();
  const std::string cloud_log = read_file(dir + "/cloud-edge.log");
  const std::string dc_log = read_file(dir + "/dc-edge.log");
  const std::string wan = read_file(dir + "/wan.json");
  std::printf("\n== what crossed the WAN\n%s%s", lines_with(cloud_log, "volume sample:").c_str(),
              lines_with(cloud_log, "link:").c_str());
  std::printf("%s", lines_with(dc_log, "volume sample: requested").c_str());
  const auto pos = wan.find("\"target_to_client\"");
  if (pos != std::string::npos) {
    const auto b = wan.find("\"bytes_delivered\":", pos);
    if (b != std::string::npos)
      std::printf(
          "  emulated link, datacenter → cloud: %lld bytes for a %u MiB disk (%.1f %%)\n",
          std::atoll(wan.c_str() + b + 18), size_mib,
          100.0 * double(std::atoll(wan.c_str() + b + 18)) / double(uint64_t(size_mib) << 20));
  }
  std::remove((dir + "/sample.raw").c_str());
  std::printf("logs and the sample VMDK are in %s\n", dir.c_str());
  return same && w == 0 ? 0 : 1;
}

}  // namespace ferry::mgmt
