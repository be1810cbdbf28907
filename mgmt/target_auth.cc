// Front-end access rules from the command line (see target_auth.h).
#include "mgmt/target_auth.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "mgmt/cli_util.h"

namespace ferry::mgmt {

namespace {

constexpr size_t kSecretFileBytesMax = 4096;

// One secret: `value` from argv or the contents of `file`.
std::string load_one(const char* flag, std::string& value, const std::string& file) {
  const std::string file_flag = std::string(flag) + "-file";
  if (!value.empty() && !file.empty())
    return std::string(flag) + " and " + file_flag + ": give one of them";
  if (!file.empty()) return read_secret_file(file_flag, file, value);
  if (!value.empty())
    std::fprintf(stderr,
                 "ferry: WARNING: %s: the secret is visible in the process list (ps, "
                 "/proc/PID/cmdline); use %s PATH\n",
                 flag, file_flag.c_str());
  return {};
}

}  // namespace

void add_chap_flags(CLI::App& app, ChapFlags& f, bool discovery) {
  app.add_option("--chap", f.chap,
                 "require CHAP: USER:SECRET the initiator must present (visible in ps: prefer "
                 "--chap-file)");
  app.add_option("--chap-file", f.chap_file,
                 "file holding --chap's USER:SECRET on one line (mode 0600 or stricter)");
  app.add_option("--mutual-chap", f.mutual_chap,
                 "with --chap: USER:SECRET the target answers the initiator's challenge with");
  app.add_option("--mutual-chap-file", f.mutual_chap_file,
                 "file holding --mutual-chap's USER:SECRET (mode 0600 or stricter)");
  if (!discovery) return;
  app.add_option("--discovery-chap", f.discovery_chap, "require CHAP for discovery: USER:SECRET");
  app.add_option("--discovery-chap-file", f.discovery_chap_file,
                 "file holding --discovery-chap's USER:SECRET (mode 0600 or stricter)");
  app.add_option("--discovery-mutual-chap", f.discovery_mutual_chap,
                 "mutual CHAP for discovery sessions: USER:SECRET");
  app.add_option("--discovery-mutual-chap-file", f.discovery_mutual_chap_file,
                 "file holding --discovery-mutual-chap's USER:SECRET (mode 0600 or stricter)");
}

std::string read_secret_file(const std::string& flag, const std::string& path,
                             std::string& user_secret) {
  const std::string where = flag + " " + path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return where + ": " + std::strerror(errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return where + ": not a regular file";
  }
  if ((st.st_mode & (S_IRGRP | S_IROTH)) != 0) {
    ::close(fd);
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", unsigned(st.st_mode & 07777));
    return where + ": readable by group or others (mode " + mode + "): chmod 600 it";
  }
  std::string text(kSecretFileBytesMax + 1, '\0');
  size_t got = 0;
  while (got < text.size()) {
    const ssize_t n = ::read(fd, text.data() + got, text.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int e = errno;
      ::close(fd);
      return where + ": " + std::strerror(e);
    }
    if (n == 0) break;
    got += size_t(n);
  }
  ::close(fd);
  if (got > kSecretFileBytesMax) return where + ": larger than 4 KiB";
  text.resize(got);
  if (!text.empty() && text.back() == '\n') text.pop_back();
  if (!text.empty() && text.back() == '\r') text.pop_back();
  std::string user, secret;
  if (text.find('\n') != std::string::npos || !split_user_secret(text, user, secret))
    return where + ": wants USER:SECRET on one line";
  user_secret = std::move(text);
  return {};
}

std::string load_chap_secrets(ChapFlags& f) {
  if (std::string e = load_one("--chap", f.chap, f.chap_file); !e.empty()) return e;
  if (std::string e = load_one("--mutual-chap", f.mutual_chap, f.mutual_chap_file); !e.empty())
    return e;
  if (std::string e = load_one("--discovery-chap", f.discovery_chap, f.discovery_chap_file);
      !e.empty())
    return e;
  return load_one("--discovery-mutual-chap", f.discovery_mutual_chap, f.discovery_mutual_chap_file);
}

std::string make_target_auth(const std::string& iqn, const std::string& chap,
                             const std::string& mutual_chap,
                             const std::vector<std::string>& allowed_initiators,
                             iscsi::TargetAuthConfig& out) {
  out = iscsi::TargetAuthConfig{};
  out.iqn = iqn;
  if (!chap.empty() && !split_user_secret(chap, out.chap_user, out.chap_secret))
    return "--chap wants USER:SECRET";
  if (!mutual_chap.empty()) {
    if (chap.empty()) return "--mutual-chap needs --chap as well";
    if (!split_user_secret(mutual_chap, out.mutual_chap_user, out.mutual_chap_secret))
      return "--mutual-chap wants USER:SECRET";
  }
  for (const std::string& name : allowed_initiators) {
    if (name.empty()) return "--allow-initiator wants an initiator name (iqn.... or eui....)";
    out.allowed_initiators.push_back(name);
  }
  return {};
}

void add_nbd_tls_flags(CLI::App& app, NbdTlsFlags& f) {
  app.add_option("--nbd-tls-cert", f.cert, "PEM certificate for NBD STARTTLS");
  app.add_option("--nbd-tls-key", f.key, "PEM private key for NBD STARTTLS");
  app.add_option("--nbd-tls-ca", f.ca, "PEM CA: NBD clients must present a certificate from it");
  app.add_flag("--nbd-tls-required", f.required, "refuse NBD clients that do not STARTTLS");
  app.add_flag("--nbd-insecure", f.insecure,
               "with --chap: export the CHAP-protected volumes over NBD without client "
               "certificates (logged: anyone who reaches the NBD port can read and write them)");
}

std::string apply_nbd_tls(const NbdTlsFlags& f, bool nbd_on, bool chap_protected,
                          const std::string& what, nbd::NbdOptions& options,
                          bool& chap_exports_need_tls) {
  chap_exports_need_tls = false;
  if (f.cert.empty() != f.key.empty()) return "--nbd-tls-cert and --nbd-tls-key go together";
  if (f.required && f.cert.empty()) return "--nbd-tls-required needs --nbd-tls-cert/--nbd-tls-key";
  if (!f.ca.empty() && f.cert.empty()) return "--nbd-tls-ca needs --nbd-tls-cert/--nbd-tls-key";
  options.tls_cert_path = f.cert;
  options.tls_key_path = f.key;
  options.tls_ca_path = f.ca;
  options.tls_required = f.required;
  // One access model for both front ends: volumes that iSCSI protects with CHAP are exported
  // over NBD only to clients with a certificate from --nbd-tls-ca (NBD has no CHAP), or with an
  // explicit, logged opt-out. Before, the NBD export took unauthenticated writes.
  const bool client_certs = !f.cert.empty() && !f.ca.empty();
  if (nbd_on && chap_protected && !client_certs) {
    if (!f.insecure)
      return "the " + what +
             " are CHAP-protected: their NBD export needs TLS client certificates "
             "(--nbd-tls-cert, --nbd-tls-key, --nbd-tls-ca) or --nbd-insecure";
    std::fprintf(stderr,
                 "ferry: WARNING: --nbd-insecure: the CHAP-protected %s are exported over NBD "
                 "without authentication\n",
                 what.c_str());
  }
  chap_exports_need_tls = chap_protected && client_certs;
  return {};
}

}  // namespace ferry::mgmt
