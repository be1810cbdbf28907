// --mgmt-listen / --mgmt-token-file, shared by the three daemons, and starting the management
// endpoint (mgmt/mgmt_server.h) from them. Main thread, at start-up.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "mgmt/mgmt_server.h"

namespace ferry::mgmt {

struct MgmtFlags {
  std::string listen;  // HOST:PORT; empty: no management endpoint (the default)
  std::string token_file;
};

void add_mgmt_flags(CLI::App& app, MgmtFlags& flags);
// The checks --check-config makes too: the address parses, a token file is named. "" when fine.
std::string check_mgmt_flags(const CLI::App& app, const MgmtFlags& flags);
// Starts the endpoint when --mgmt-listen is set (nullptr and `error` empty when it is not).
std::unique_ptr<MgmtServer> start_mgmt(const MgmtFlags& flags, const ControlInterface& control,
                                       MetricsRegistry& registry, std::string& error);

}  // namespace ferry::mgmt
