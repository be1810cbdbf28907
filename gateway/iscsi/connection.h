// iSCSI connection: one TCP connection pinned to one reactor thread, from accept to close.
// Drives the login phase (LoginNegotiator) and the full-feature phase: SCSI commands with
// immediate/unsolicited/solicited (R2T) data, Data-In with phase-collapsed status, NOP-In/Out
// both ways, task management, text (SendTargets), logout. One session per connection
// (MaxConnections=1, ErrorRecoveryLevel=0).
//
//   accept ─▶ LOGIN ──login ok──▶ FULL_FEATURE ──logout / error / timeout──▶ CLOSING ─▶ freed
//               └──── login failed / timeout / bad PDU ─────────────────────────▲
//
// Threading: everything runs on the owning reactor thread. The Connection frees itself once
// closing and no receive, send or device I/O is in flight.
// Bounds: at most queue_depth_max commands per session (the CmdSN window shrinks as tasks are
// outstanding), receive buffer <= MaxRecvDataSegmentLength + headers, transmit queue bounded by
// the tasks' own PDUs.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "datapath/connection_hub.h"
#include "datapath/reactor.h"
#include "datapath/socket_channel.h"
#include "gateway/iscsi/login.h"
#include "gateway/iscsi/pdu.h"
#include "gateway/iscsi/text.h"
#include "gateway/scsi/task.h"

namespace ferry::iscsi {

class Server;
struct IscsiTask;
struct TxPdu;
}  // namespace ferry::iscsi
namespace ferry::scsi {
class Target;
}  // namespace ferry::scsi
namespace ferry::iscsi {

// Life: login (the hub counts it as authenticating) → full feature phase → logout or close;
// close() aborts the tasks the SCSI layer does not hold and the connection deletes itself once
// the channel is idle and no task is inside the device.
class Connection final : public HubConnection, private SocketChannelOwner {
 public:
  Connection(Server& server, Reactor& reactor, int fd, uint64_t id) noexcept;
  ~Connection();
  void start() noexcept;  // login phase: the first receive and the login timer
  void close(const char* why) noexcept override;
  bool logging_in() const noexcept { return phase_ == Phase::login; }
  bool authenticating() const noexcept override { return logging_in(); }

  struct Counters {
    uint64_t commands = 0;
    uint64_t data_in_pdus = 0;
    uint64_t r2ts = 0;
    uint64_t rejects = 0;
    uint64_t waits_for_buffer = 0;
  };
  const Counters& counters() const noexcept { return stats_; }

 private:
  enum class Phase : uint8_t { login, full_feature, logout_sent, closing };

  // receive side
  void post_recv() noexcept;
  void on_received(int32_t res) noexcept override;
  bool process_rx() noexcept;  // false when the connection must stop reading
  bool handle_pdu(const Bhs& h, std::span<const uint8_t> pdu, const PduFrame& f) noexcept;
  bool handle_login(const Bhs& h, std::span<const uint8_t> data) noexcept;
  bool handle_scsi_command(const Bhs& h, std::span<const uint8_t> data) noexcept;
  bool handle_data_out(const Bhs& h, std::span<const uint8_t> data) noexcept;
  bool handle_nop_out(const Bhs& h, std::span<const uint8_t> data) noexcept;
  bool handle_task_mgmt(const Bhs& h) noexcept;
  bool handle_text(const Bhs& h, std::span<const uint8_t> data) noexcept;
  bool handle_logout(const Bhs& h) noexcept;
  bool check_cmd_sn(const Bhs& h) noexcept;  // false: ignore the PDU (out of window)
  void send_reject(const Bhs& offending, RejectReason reason) noexcept;

  // tasks
  IscsiTask* new_task() noexcept;
  void free_task(IscsiTask* t) noexcept;
  IscsiTask* find_task_by_itt(uint32_t itt) noexcept;
  IscsiTask* find_task_by_ttt(uint32_t ttt) noexcept;
  void maybe_send_r2ts(IscsiTask* t) noexcept;
  void execute(IscsiTask* t) noexcept;
  static void on_scsi_done(scsi::ScsiTask& st) noexcept;
  void complete_task(IscsiTask* t) noexcept;
  void abort_task(IscsiTask* t) noexcept;
  bool response_queued(const IscsiTask* t) const noexcept;
  void finish_pending_tmf() noexcept;

  // transmit side
  TxPdu* new_pdu() noexcept;
  void queue_pdu(TxPdu* p) noexcept;  // assigns StatSN/ExpCmdSN/MaxCmdSN where needed
  void fill_sn(Bhs& h, bool advance_stat_sn) noexcept;
  void flush_tx() noexcept;
  void on_sent(int32_t res) noexcept override;
  void release_pdu(TxPdu* p) noexcept;

  // timers
  static void on_timer(void* ctx) noexcept;
  void arm_timer() noexcept;

  void maybe_free() noexcept;
  void enter_full_feature() noexcept;
  uint32_t max_cmd_sn() const noexcept;

  Server& server_;
  Reactor& reactor_;
  SocketChannel channel_;  // the socket: one receive and one gathered send in flight
  Phase phase_ = Phase::login;
  std::string peer_;

  bool tx_active_ = false;  // a flush is scheduled or a send is in flight
  Buffer rx_;
  size_t rx_len_ = 0;
  FramingLimits limits_;

  std::unique_ptr<LoginNegotiator> login_;
  SessionParams params_;
  uint16_t tsih_ = 0;
  uint8_t isid_[6] = {};
  std::string initiator_port_name_;
  std::string initiator_name_;
  std::string target_name_;
  std::string target_port_name_;
  scsi::Nexus nexus_;
  scsi::Target* target_ = nullptr;
  bool discovery_ = false;

  // sequence numbers
  uint32_t stat_sn_ = 0;
  uint32_t exp_cmd_sn_ = 0;
  uint32_t advertised_max_cmd_sn_ = 0;  // highest MaxCmdSN sent (never decreases)
  bool max_cmd_sn_advertised_ = false;
  uint32_t queue_depth_max_;
  size_t tx_batch_pdus_max_;  // PDUs gathered into one sendmsg

  // tasks
  std::vector<IscsiTask*> active_;  // tasks the initiator knows about (unordered)
  std::vector<IscsiTask*> free_tasks_;
  uint32_t next_ttt_ = 1;
  uint32_t device_io_in_flight_ = 0;  // tasks inside the SCSI layer
  // a TMF waiting for aborted tasks to leave the device
  bool tmf_pending_ = false;
  uint32_t tmf_waiting_on_ = 0;
  Bhs tmf_request_{};
  uint8_t tmf_response_code_ = 0;

  // transmit queue (intrusive FIFO) and the batch being sent
  TxPdu* tx_head_ = nullptr;
  TxPdu* tx_tail_ = nullptr;
  std::vector<TxPdu*> tx_batch_;
  std::vector<TxPdu*> free_pdus_;
  size_t pdus_allocated_ = 0;

  // text continuation (SendTargets larger than one PDU)
  std::unique_ptr<TextResponder> text_;

  // keepalive / login timeout
  Timer timer_;
  uint64_t last_rx_ns_ = 0;
  uint64_t connected_ns_ = 0;
  uint32_t nop_ping_ttt_ = 0;  // outstanding target NOP-In ping, 0 = none
  uint64_t nop_ping_sent_ns_ = 0;
  bool close_after_send_ = false;

  Counters stats_;
  SessionCounters session_counters_;  // what the management API lists (published at login)
};

}  // namespace ferry::iscsi
