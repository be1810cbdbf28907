// The access rules of a volume's front ends from command-line values, shared by `ferry target`
// and `ferry cloud-edge` (one access model for every portal and export): CHAP, mutual CHAP and
// discovery CHAP secrets (from argv or, better, from files only the owner can read), the
// initiator ACL, and the NBD export's TLS (with the rule that a CHAP-protected volume is exported
// over NBD only to clients with a certificate, or with a logged opt-out). Flag registration and
// checks live here once. Start-up only, main thread.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "gateway/iscsi/portal_config.h"
#include "gateway/nbd/server.h"

namespace ferry::mgmt {

// CHAP secrets as given on the command line: each as USER:SECRET in argv or as a file holding
// USER:SECRET on one line.
struct ChapFlags {
  std::string chap, chap_file;
  std::string mutual_chap, mutual_chap_file;
  std::string discovery_chap, discovery_chap_file;  // with discovery flags only
  std::string discovery_mutual_chap, discovery_mutual_chap_file;
};

// Registers --chap/--chap-file and --mutual-chap/--mutual-chap-file, and with `discovery` also
// --discovery-chap[-file] and --discovery-mutual-chap[-file].
void add_chap_flags(CLI::App& app, ChapFlags& f, bool discovery);

// Reads the --*-file secrets into the USER:SECRET fields. A file must be a regular file not
// readable by group or others, holding USER:SECRET on one line (one trailing newline is
// stripped). Giving both forms of one secret is an error; a secret in argv is accepted with a
// WARNING on stderr (it is visible in the process list). Returns "" or what is wrong, naming the
// flag and the file (and its mode); the command exits 2 on it.
std::string load_chap_secrets(ChapFlags& f);

// One secret file as load_chap_secrets reads it: "" and `user_secret` filled, or the error.
std::string read_secret_file(const std::string& flag, const std::string& path,
                             std::string& user_secret);

// Fills `out` for target `iqn` from --chap USER:SECRET, --mutual-chap USER:SECRET and the
// --allow-initiator IQNs. Returns "" or what is wrong, naming the flag.
std::string make_target_auth(const std::string& iqn, const std::string& chap,
                             const std::string& mutual_chap,
                             const std::vector<std::string>& allowed_initiators,
                             iscsi::TargetAuthConfig& out);

// The NBD export's TLS: --nbd-tls-cert/--nbd-tls-key (STARTTLS), --nbd-tls-ca (client
// certificates required, from it), --nbd-tls-required (no plaintext), --nbd-insecure (the
// opt-out for CHAP-protected volumes).
struct NbdTlsFlags {
  std::string cert, key, ca;
  bool required = false;
  bool insecure = false;
};
void add_nbd_tls_flags(CLI::App& app, NbdTlsFlags& f);

// Checks the NBD TLS flags and fills `options`' TLS fields. With `chap_protected` (the volumes
// behind the export need CHAP on iSCSI) and an NBD export on, the export needs client
// certificates (cert, key and CA) unless --nbd-insecure, which is logged as a WARNING; `what`
// names those volumes in the messages ("LUNs of IQN"). `chap_exports_need_tls` says whether the
// CHAP-protected exports must be marked NbdExport::tls_required. Returns "" or the error.
std::string apply_nbd_tls(const NbdTlsFlags& f, bool nbd_on, bool chap_protected,
                          const std::string& what, nbd::NbdOptions& options,
                          bool& chap_exports_need_tls);

}  // namespace ferry::mgmt
