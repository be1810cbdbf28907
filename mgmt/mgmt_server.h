// MgmtServer: the management HTTP endpoint (cpp-httplib) on its own threads, never on a reactor:
// one listener thread and one worker thread. Every request needs `Authorization: Bearer TOKEN`
// (the token from --mgmt-token-file; 401 otherwise). Endpoints:
//   GET /metrics                 Prometheus text format, from the metrics registry
//   GET /api/v1/volumes          JSON list of the daemon's volumes
//   GET /api/v1/volumes/{name}   one volume (404 when unknown)
//   PUT /api/v1/volumes/{name}/policy   {"policy": "write-back|cloud-persist|test-clone"}: 200,
//                                400 malformed / unknown policy, 404 unknown volume, 409 refused
//   POST /api/v1/volumes/{name}/write-back/pause|resume|flush   404 unknown volume, 409 refused
// Every answer reads a fresh snapshot through the ControlInterface (a message to the reactor,
// bounded wait; 503 when the reactor does not answer). Described in mgmt/openapi.yaml.
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "mgmt/control.h"
#include "mgmt/metrics_registry.h"

namespace httplib {
class Server;
}

namespace ferry::mgmt {

class MgmtServer {
 public:
  MgmtServer(const ControlInterface& control, MetricsRegistry& registry, std::string token);
  ~MgmtServer();
  MgmtServer(const MgmtServer&) = delete;
  MgmtServer& operator=(const MgmtServer&) = delete;

  // Binds HOST:PORT (port 0: any) and starts serving. Empty string on success, else why not.
  std::string start(const std::string& host, uint16_t port);
  uint16_t bound_port() const noexcept { return port_; }
  void stop();

  // Reads the token file: one line, surrounding whitespace dropped, at least 16 characters, and
  // the file not readable by others (mode 0600 or 0400). Empty string on success, else why not.
  static std::string read_token_file(const std::string& path, std::string& token);

 private:
  const ControlInterface& control_;
  MetricsRegistry& registry_;
  std::string token_;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  uint16_t port_ = 0;
};

}  // namespace ferry::mgmt
