// Small parsing helpers shared by the ferry subcommands (command-line values only).
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

#include "datapath/pre_auth_gate.h"

namespace ferry::mgmt {

// "HOST:PORT" or "[IPv6]:PORT" (datapath/net_address.h parse_host_port; the host comes back
// without brackets); the reason for a refusal is printed. Port 0 allowed when allow_zero.
bool split_host_port(const std::string& text, std::string& host, uint16_t& port,
                     bool allow_zero = false);
// How long a stopping daemon waits for its connections' in-flight I/O to complete before it
// exits anyway (logging what is left): counted, not a guessed sleep.
inline constexpr uint32_t kStopDrainTimeoutMs = 10'000;
// Logs the outcome of a drain wait: `left` of `what` ("iSCSI connection(s)") still open.
void log_drain(const char* daemon, const char* what, uint64_t left);
// "USER:SECRET", both non-empty.
// Creates the state directory a flag names (and its parents, mode 0700) when it is missing;
// false, with the reason printed naming the flag, when it cannot be made or is not a directory.
bool ensure_state_dir(const std::string& path, const char* flag);

bool split_user_secret(const std::string& text, std::string& user, std::string& secret);
// --pre-auth-max and --pre-auth-per-source: the bounds on connections not yet authenticated
// (`what` says what authenticated means for this daemon, e.g. "past TLS + HELLO").
void add_pre_auth_flags(CLI::App& app, PreAuthLimits& limits, const char* what);

}  // namespace ferry::mgmt
