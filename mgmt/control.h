// The one narrow control interface between the management endpoint (its own HTTP thread) and a
// daemon's reactor: the HTTP thread asks for a GatewaySnapshot; the daemon's collect function
// runs on the reactor thread (posted as a message), copies what the stacks, links and servers
// count into the snapshot, and hands it back. Nothing on the HTTP thread touches reactor state.
// A reactor that does not answer within the timeout yields no snapshot (HTTP 503), never a wait
// without end. Changes (a volume's journal policy, write-back, cache budget) go the same way: the
// daemon's handler runs on the reactor thread and answers with a ControlAnswer.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "datapath/connection_hub.h"
#include "gateway/volume.h"

namespace ferry {
class Reactor;
}

namespace ferry::mgmt {

struct VolumeSnapshot {
  std::string name;
  std::string stack;  // Volume::describe()
  uint64_t size_bytes = 0;
  uint32_t block_size_bytes = 0;
  VolumeStats stats;
  bool has_wan = false;  // the edges: WAN bytes raw (what the volume asked / was asked for) vs sent
  uint64_t wan_raw_bytes_in = 0, wan_sent_bytes_in = 0;    // toward the cloud edge
  uint64_t wan_raw_bytes_out = 0, wan_sent_bytes_out = 0;  // toward the datacenter edge
  bool wan_sent_out_known =
      true;  // false on the dc-edge: it sees writes decoded, not their wire size
  std::vector<VolumeStats::LayerCounter> wan_counters;  // the WAN counters struct's fields ("wan")
};

struct GatewaySnapshot {
  std::string daemon;  // "target", "dc-edge", "cloud-edge"
  std::vector<VolumeSnapshot> volumes;
  std::vector<SessionInfo> sessions;  // iSCSI sessions and NBD clients (ConnectionHub::sessions)
  uint64_t iscsi_sessions = 0, iscsi_connections = 0;
  uint64_t nbd_connections = 0;
  uint64_t wan_connections = 0;  // dc-edge: cloud edges attached; cloud-edge: 1 when the link is up
  uint64_t wan_wire_bytes_in = 0, wan_wire_bytes_out = 0, wan_reconnects = 0;
  // The WAN link as GET /api/v1/wan shows it (edges only).
  bool has_wan = false;
  std::string wan_peer;                                  // cloud-edge: the datacenter edge it dials
  uint64_t wan_down_for_ms = 0;                          // cloud-edge: 0 while up
  int64_t wan_tcp_rtt_us = -1, wan_tcp_rtt_var_us = -1;  // cloud-edge: TCP_INFO (-1: down)
  int64_t wan_ping_rtt_us = -1;      // cloud-edge: keepalive PING -> PONG, smoothed (-1: none yet)
  uint64_t wan_cap_bytes_per_s = 0;  // dc-edge: the link's rate cap (0: none)
};

// What a change request came to.
struct ControlAnswer {
  enum class Status : uint8_t {
    ok,
    not_found,    // no such volume
    conflict,     // refused in the volume's state (message says why)
    unsupported,  // this daemon (or volume) has no such control
    no_answer,    // the reactor did not answer within the timeout
  } status = Status::ok;
  std::string message;
  uint64_t value = 0;  // what an ok change came to: the RAM tier's new budget, chunks dropped
};

// A change asked of one volume: its journal, or its cache.
struct ControlAction {
  enum class Kind : uint8_t {
    set_policy,
    pause_write_back,
    resume_write_back,
    flush_write_back,
    resize_ram_cache,       // the RAM tier's budget to `bytes`
    drop_clean_cache,       // drop what the RAM tier holds (all clean)
    set_write_back_limits,  // rate cap (`bytes` per second) and / or RPO target (`rpo_ms`)
    set_wan_cap,            // the WAN link's rate cap (`bytes` per second, 0: none); no volume
  } kind = Kind::set_policy;
  journal::Policy policy = journal::Policy::write_back;  // set_policy
  uint64_t bytes = 0;     // resize_ram_cache; set_write_back_limits: bytes/s (0: no cap)
  bool set_rate = false;  // set_write_back_limits: change the rate cap
  bool set_rpo = false;   // set_write_back_limits: change the RPO target
  uint32_t rpo_ms = 0;    // set_write_back_limits (0: no target)
};

class ControlInterface {
 public:
  // Runs on the reactor thread; fills the snapshot.
  using Collect = std::function<void(GatewaySnapshot&)>;
  // Runs on the reactor thread; applies the action to the named volume's journal.
  using Act = std::function<ControlAnswer(const std::string& volume, const ControlAction&)>;
  // Any thread: asks the servers to close the session with that id (ConnectionHub::disconnect,
  // which posts the close to the session's own reactor); false when no server lists it.
  using Disconnect = std::function<bool(uint64_t session_id)>;
  ControlInterface(Reactor& reactor, Collect collect, Act act = nullptr,
                   Disconnect disconnect = nullptr)
      : reactor_(reactor),
        collect_(std::move(collect)),
        act_(std::move(act)),
        disconnect_(std::move(disconnect)) {}
  // Any thread but the reactor's. False when the reactor did not answer within `timeout`.
  bool snapshot(GatewaySnapshot& out, std::chrono::milliseconds timeout) const;
  // Any thread but the reactor's.
  ControlAnswer act(const std::string& volume, const ControlAction& action,
                    std::chrono::milliseconds timeout) const;
  // Any thread. not_found when no session has that id.
  ControlAnswer disconnect(uint64_t session_id) const;

 private:
  Reactor& reactor_;
  Collect collect_;
  Act act_;
  Disconnect disconnect_;
};

// For a daemon's Collect: appends the sessions every hub publishes (null hubs skipped).
void append_sessions(GatewaySnapshot& s, const std::vector<const ConnectionHub*>& hubs);
// A Disconnect over these hubs (null hubs skipped); the hubs must outlive the interface.
ControlInterface::Disconnect disconnect_over(std::vector<ConnectionHub*> hubs);

}  // namespace ferry::mgmt
