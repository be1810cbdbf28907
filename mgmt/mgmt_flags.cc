// Management endpoint flags (see mgmt_flags.h).
#include "mgmt/mgmt_flags.h"

#include <cstdio>

#include "mgmt/cli_util.h"
#include "mgmt/config_file.h"

namespace ferry::mgmt {

void add_mgmt_flags(CLI::App& app, MgmtFlags& flags) {
  app.add_option("--mgmt-listen", flags.listen,
                 "serve the management endpoint (GET /metrics in the Prometheus text format, "
                 "/api/v1/volumes) on ADDRESS:PORT, e.g. 127.0.0.1:9180 (default: off)");
  app.add_option("--mgmt-token-file", flags.token_file,
                 "file holding the bearer token every management request must carry (one line, "
                 ">= 16 characters, mode 0600); required with --mgmt-listen");
}

std::string check_mgmt_flags(const CLI::App& app, const MgmtFlags& flags) {
  if (flags.listen.empty()) return {};
  std::string host;
  uint16_t port = 0;
  if (!split_host_port(flags.listen, host, port, true))
    return option_origin(app, "mgmt-listen") + " wants ADDRESS:PORT";
  if (flags.token_file.empty())
    return option_origin(app, "mgmt-listen") + " needs --mgmt-token-file (bearer token)";
  return {};
}

std::unique_ptr<MgmtServer> start_mgmt(const MgmtFlags& flags, const ControlInterface& control,
                                       MetricsRegistry& registry, std::string& error) {
  error.clear();
  if (flags.listen.empty()) return nullptr;
  std::string host, token;
  uint16_t port = 0;
  if (!split_host_port(flags.listen, host, port, true)) {
    error = "--mgmt-listen wants ADDRESS:PORT";
    return nullptr;
  }
  if (error = MgmtServer::read_token_file(flags.token_file, token); !error.empty()) return nullptr;
  auto server = std::make_unique<MgmtServer>(control, registry, token);
  if (error = server->start(host, port); !error.empty()) return nullptr;
  std::fprintf(stderr, "ferry: management endpoint on http://%s:%u (/metrics, /api/v1/volumes)\n",
               host.c_str(), server->bound_port());
  return server;
}

}  // namespace ferry::mgmt
