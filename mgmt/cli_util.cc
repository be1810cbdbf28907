// Command-line parsing helpers (see cli_util.h).
#include "mgmt/cli_util.h"

#include <cstdio>
#include <filesystem>
#include <system_error>
#include <utility>

#include "datapath/net_address.h"

namespace ferry::mgmt {

bool split_host_port(const std::string& text, std::string& host, uint16_t& port, bool allow_zero) {
  std::string error;
  auto parsed = parse_host_port(text, error, allow_zero);
  if (!parsed.ok()) {
    std::fprintf(stderr, "ferry: %s\n", error.c_str());
    return false;
  }
  host = std::move(parsed.value().host);
  port = parsed.value().port;
  return true;
}

void log_drain(const char* daemon, const char* what, uint64_t left) {
  if (left == 0) return;
  std::fprintf(stderr,
               "ferry: %s: %llu %s still open after %u ms (their device I/O did not complete); "
               "exiting anyway\n",
               daemon, static_cast<unsigned long long>(left), what, kStopDrainTimeoutMs);
}

bool split_user_secret(const std::string& text, std::string& user, std::string& secret) {
  const auto colon = text.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size()) return false;
  user = text.substr(0, colon);
  secret = text.substr(colon + 1);
  return true;
}

void add_pre_auth_flags(CLI::App& app, PreAuthLimits& limits, const char* what) {
  app.add_option("--pre-auth-max", limits.pending_max,
                 std::string("connections not yet ") + what +
                     "; when full the oldest is dropped for the newcomer")
      ->check(CLI::Range(1u, 100000u))
      ->capture_default_str();
  app.add_option("--pre-auth-per-source", limits.per_source_max,
                 "of those, from one source address; more are refused at once")
      ->check(CLI::Range(1u, 100000u))
      ->capture_default_str();
}

bool ensure_state_dir(const std::string& path, const char* flag) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    if (!fs::create_directories(path, ec) && ec) {
      std::fprintf(stderr, "ferry: %s %s: cannot create it: %s\n", flag, path.c_str(),
                   ec.message().c_str());
      return false;
    }
    fs::permissions(path, fs::perms::owner_all, fs::perm_options::replace, ec);
  }
  if (!fs::is_directory(path, ec)) {
    std::fprintf(stderr, "ferry: %s %s: not a directory\n", flag, path.c_str());
    return false;
  }
  return true;
}

}  // namespace ferry::mgmt
