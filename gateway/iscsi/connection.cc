// iSCSI connection state machine and I/O (see connection.h). Reactor thread only.
#include "gateway/iscsi/connection.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "gateway/iscsi/server.h"
#include "gateway/scsi/logical_unit.h"
#include "gateway/scsi/sense.h"

namespace ferry::iscsi {

namespace {
constexpr uint32_t kReservedTag = 0xffffffffu;
constexpr size_t kLoginRxBytes = 64 * 1024;
constexpr size_t kTxBatchPdusMax = 256;  // PDUs per sendmsg (3 iovecs each, < IOV_MAX)
constexpr uint64_t kMs = 1000000ull;

void store_le32(uint8_t* p, uint32_t v) noexcept {
  p[0] = uint8_t(v);
  p[1] = uint8_t(v >> 8);
  p[2] = uint8_t(v >> 16);
  p[3] = uint8_t(v >> 24);
}
}  // namespace

// One PDU waiting to be sent: header (+digest) inline, data borrowed from a task or owned.
struct TxPdu {
  TxPdu* next = nullptr;
  Bhs bhs;
  uint8_t header_digest[4];
  bool has_header_digest = false;
  const std::byte* data = nullptr;
  uint32_t data_bytes = 0;
  uint8_t trailer[8];  // padding + data digest
  uint32_t trailer_bytes = 0;
  bool advances_stat_sn = false;   // response PDU: takes the next StatSN
  bool carries_sn = true;          // StatSN/ExpCmdSN/MaxCmdSN fields present
  IscsiTask* task_done = nullptr;  // task to free once this PDU is on the wire
  uint8_t inline_data[64];         // small payloads (sense data)
  Buffer owned;                    // larger payloads this PDU owns (NOP-In echo, text)
};

// A SCSI command as the iSCSI layer tracks it.
struct IscsiTask {
  scsi::ScsiTask scsi;
  Connection* conn = nullptr;
  uint32_t itt = 0;
  uint32_t cmd_sn = 0;
  uint32_t ttt = kReservedTag;
  uint32_t edtl = 0;
  uint32_t received_bytes = 0;   // data-out received so far (in order)
  uint32_t unsolicited_end = 0;  // bytes the initiator may send without R2T
  bool unsolicited_done = true;  // the unsolicited sequence has ended (F bit seen)
  uint32_t next_r2t_offset = 0;  // next byte to solicit
  uint32_t r2t_outstanding = 0;
  uint32_t r2t_sn = 0;
  uint32_t data_sn = 0;       // next DataSN for Data-In
  uint32_t data_out_sn = 0;   // next DataSN expected in the current Data-Out sequence
  bool executing = false;     // inside the SCSI layer
  bool aborted = false;       // response must not be sent
  bool discard_data = false;  // no buffer: swallow data-out, answer BUSY
  bool data_error = false;    // Data-Out sequence error: fail with DATA PHASE ERROR
};

Connection::Connection(Server& server, Reactor& reactor, int fd, uint64_t id) noexcept
    : HubConnection(id),
      server_(server),
      reactor_(reactor),
      channel_(reactor, *this, kTxBatchPdusMax * 4),
      queue_depth_max_(server.options().queue_depth_max),
      tx_batch_pdus_max_(
          std::clamp<size_t>(server.options().tx_batch_pdus_max, 1, kTxBatchPdusMax)) {
  channel_.attach(fd);
  peer_ = peer_endpoint(fd);
  tx_batch_.reserve(kTxBatchPdusMax);
}

Connection::~Connection() {
  for (IscsiTask* t : free_tasks_) delete t;
  for (TxPdu* p : free_pdus_) delete p;
}

void Connection::start() noexcept {
  server_.hub().opened(this);  // before any close(): closing counts it out again
  connected_ns_ = reactor_.now_ns();
  last_rx_ns_ = connected_ns_;
  rx_ = reactor_.pool().allocate(kLoginRxBytes);
  if (!rx_) return close("no receive buffer");
  login_ = std::make_unique<LoginNegotiator>(server_.portal(), &server_.auth_backoff(),
                                             peer_address(channel_.fd()));
  arm_timer();
  post_recv();
}

// ---------------------------------------------------------------- lifetime

void Connection::close(const char* why) noexcept {
  if (phase_ == Phase::closing) return;
  if (why != nullptr && phase_ != Phase::logout_sent)
    std::fprintf(stderr, "ferry: iscsi %s: closing connection: %s\n", peer_.c_str(), why);
  phase_ = Phase::closing;
  reactor_.cancel(timer_);
  channel_.shutdown();  // wakes the in-flight receive and send
  for (IscsiTask* t : active_) t->aborted = true;
  // Tasks not inside the SCSI layer can go now; the others are freed when they complete, and
  // those whose response PDU is queued or being sent when that PDU is released (release_pdu
  // frees task_done: freeing them here too put them twice on free_tasks_, a double delete).
  std::vector<IscsiTask*> keep;
  for (IscsiTask* t : active_) {
    if (t->executing || response_queued(t))
      keep.push_back(t);
    else
      free_task(t);
  }
  active_.swap(keep);
  server_.hub().unpublish(this);
  if (tsih_ != 0) {
    server_.unregister_session(tsih_, id());
    if (target_ != nullptr) target_->nexus_gone(nexus_);
    tsih_ = 0;
  }
  maybe_free();
}

void Connection::maybe_free() noexcept {
  if (phase_ != Phase::closing || !channel_.idle() || tx_active_ || device_io_in_flight_ > 0)
    return;
  // Drop queued PDUs (their tasks are already aborted).
  while (tx_head_ != nullptr) {
    TxPdu* p = tx_head_;
    tx_head_ = p->next;
    release_pdu(p);
  }
  server_.hub().closed(this);
  Connection* self = this;
  reactor_.defer([self] { delete self; });
}

// ---------------------------------------------------------------- timers

void Connection::arm_timer() noexcept {
  reactor_.arm(timer_, 1000 * kMs, &Connection::on_timer, this);
}

void Connection::on_timer(void* ctx) noexcept {
  auto* c = static_cast<Connection*>(ctx);
  const auto& o = c->server_.options();
  const uint64_t now = c->reactor_.now_ns();
  if (c->phase_ == Phase::login) {
    if (now - c->connected_ns_ > o.login_timeout_ms * kMs) return c->close("login timeout");
  } else if (c->phase_ == Phase::full_feature) {
    if (c->nop_ping_ttt_ != 0 && now - c->nop_ping_sent_ns_ > o.nop_timeout_ms * kMs)
      return c->close("initiator did not answer NOP-In (dead peer)");
    if (c->nop_ping_ttt_ == 0 && o.nop_interval_ms > 0 &&
        now - c->last_rx_ns_ > o.nop_interval_ms * kMs) {
      // Target keepalive: NOP-In with a TTT the initiator must echo in a NOP-Out.
      TxPdu* p = c->new_pdu();
      if (p != nullptr) {
        c->nop_ping_ttt_ = 0x80000000u | (c->next_ttt_++ & 0x7fffffffu);
        c->nop_ping_sent_ns_ = now;
        p->bhs.set_opcode(Opcode::nop_in);
        p->bhs.b[1] = 0x80;
        p->bhs.set_lun(0);
        p->bhs.set_itt(kReservedTag);
        p->bhs.set_ttt(c->nop_ping_ttt_);
        c->queue_pdu(p);
      }
    }
  }
  if (c->phase_ != Phase::closing) c->arm_timer();
}

// ---------------------------------------------------------------- receive

void Connection::post_recv() noexcept {
  if (phase_ == Phase::closing || channel_.receiving()) return;
  if (rx_len_ == rx_.capacity()) return;  // full: process_rx must make room first
  channel_.receive(rx_.data() + rx_len_, rx_.capacity() - rx_len_);
}

void Connection::on_received(int32_t res) noexcept {
  if (phase_ == Phase::closing) return maybe_free();
  if (res <= 0) {
    if (phase_ == Phase::logout_sent || res == 0)
      return close(res == 0 ? nullptr : "receive error");
    return close("receive error");
  }
  rx_len_ += size_t(res);
  last_rx_ns_ = reactor_.now_ns();
  if (process_rx()) post_recv();
}

bool Connection::process_rx() noexcept {
  size_t pos = 0;
  const auto* base = reinterpret_cast<const uint8_t*>(rx_.data());
  while (phase_ != Phase::closing) {
    std::span<const uint8_t> avail(base + pos, rx_len_ - pos);
    PduFrame f = frame_pdu(avail, limits_);
    if (f.status == ParseStatus::fatal) {
      close(f.why);
      return false;
    }
    if (f.status == ParseStatus::need_more) {
      if (f.total_bytes > rx_.capacity()) {
        // Grow the receive buffer for a PDU larger than it (bounded by framing limits).
        Buffer bigger = reactor_.pool().allocate(f.total_bytes);
        if (!bigger) {
          close("no memory for receive buffer");
          return false;
        }
        std::memcpy(bigger.data(), base + pos, rx_len_ - pos);
        rx_len_ -= pos;
        rx_ = std::move(bigger);
        return true;
      }
      break;
    }
    const Bhs& h = *reinterpret_cast<const Bhs*>(avail.data());
    std::span<const uint8_t> pdu = avail.first(f.total_bytes);
    pos += f.total_bytes;
    if (f.status == ParseStatus::reject) {
      if (phase_ == Phase::login) {
        close(f.why);
        return false;
      }
      send_reject(h, f.reject_reason);
      continue;
    }
    if (limits_.data_digest && !data_digest_ok(pdu, f)) {
      // ERL 0: a data digest error on a command or data PDU is reported with a Reject; the
      // initiator then fails or retries the task (Data-Out data is not trusted).
      send_reject(h, RejectReason::data_digest_error);
      if (h.opcode() == Opcode::data_out || h.opcode() == Opcode::scsi_command) {
        // The task's data is lost: ERL 0 recovers the session. Let the Reject go out first.
        std::fprintf(stderr, "ferry: iscsi %s: data digest error, closing after the Reject\n",
                     peer_.c_str());
        close_after_send_ = true;
        phase_ = Phase::logout_sent;
        return false;
      }
      continue;
    }
    if (!handle_pdu(h, pdu, f)) return false;
    // The final login PDU moves rx_ to a bigger buffer (enter_full_feature, same offsets) and
    // the old one goes back to the pool: PDUs pipelined behind it must be read from the new one.
    base = reinterpret_cast<const uint8_t*>(rx_.data());
  }
  if (phase_ == Phase::closing) return false;
  // Compact: move the partial PDU to the front.
  if (pos > 0) {
    std::memmove(rx_.data(), rx_.data() + pos, rx_len_ - pos);
    rx_len_ -= pos;
  }
  return true;
}

bool Connection::handle_pdu(const Bhs& h, std::span<const uint8_t> pdu,
                            const PduFrame& f) noexcept {
  std::span<const uint8_t> data = pdu.subspan(f.data_offset, f.data_bytes);
  if (phase_ == Phase::login) {
    if (h.opcode() != Opcode::login_request) {
      close("non-login PDU during login");
      return false;
    }
    return handle_login(h, data);
  }
  if (phase_ == Phase::logout_sent) return true;  // ignore anything after logout
  switch (h.opcode()) {
    case Opcode::scsi_command:
      if (discovery_) {
        send_reject(h, RejectReason::protocol_error);
        return true;
      }
      return handle_scsi_command(h, data);
    case Opcode::data_out:
      return handle_data_out(h, data);
    case Opcode::nop_out:
      return handle_nop_out(h, data);
    case Opcode::task_mgmt_request:
      if (discovery_) {
        send_reject(h, RejectReason::protocol_error);
        return true;
      }
      return handle_task_mgmt(h);
    case Opcode::text_request:
      return handle_text(h, data);
    case Opcode::logout_request:
      return handle_logout(h);
    case Opcode::login_request:
      send_reject(h, RejectReason::protocol_error);
      close("login request in full feature phase");
      return false;
    case Opcode::snack_request:
      send_reject(h, RejectReason::command_not_supported);  // ErrorRecoveryLevel 0
      return true;
    default:
      send_reject(h, RejectReason::command_not_supported);
      return true;
  }
}

// ---------------------------------------------------------------- login

bool Connection::handle_login(const Bhs& h, std::span<const uint8_t> data) noexcept {
  LoginReply reply;
  const LoginStep step = login_->on_request(h, data, reply);
  // Initial StatSN comes from the first login request's ExpStatSN.
  if (stat_sn_ == 0 && exp_cmd_sn_ == 0) stat_sn_ = h.exp_stat_sn();
  exp_cmd_sn_ = h.cmd_sn();
  std::memcpy(isid_, h.b + 8, 6);

  if (step == LoginStep::login_complete) {
    params_ = login_->params();
    discovery_ = params_.session_type == SessionType::discovery;
    initiator_name_ = params_.initiator_name;
    target_name_ = params_.target_name;
    if (!discovery_) {
      target_ = server_.find_target(target_name_);
      if (target_ == nullptr) {
        close("login completed for an unknown target");
        return false;
      }
    }
    char isid_hex[16];
    std::snprintf(isid_hex, sizeof isid_hex, "%02x%02x%02x%02x%02x%02x", isid_[0], isid_[1],
                  isid_[2], isid_[3], isid_[4], isid_[5]);
    initiator_port_name_ = initiator_name_ + ",i,0x" + isid_hex;
    target_port_name_ = target_name_ + ",t,0x0001";
    tsih_ = server_.register_session(initiator_name_, isid_, target_name_, reactor_, id());
    store_be16(reply.bhs.b + 14, tsih_);
  }
  TxPdu* p = new_pdu();
  if (p == nullptr) {
    close("no memory for login response");
    return false;
  }
  p->bhs = reply.bhs;
  p->bhs.set_opcode(Opcode::login_response);
  if (reply.data_length > 0) {
    p->owned = reactor_.pool().allocate(reply.data_length);
    if (!p->owned) {
      release_pdu(p);
      close("no memory for login response");
      return false;
    }
    std::memcpy(p->owned.data(), reply.data.data(), reply.data_length);
    p->data = p->owned.data();
    p->data_bytes = uint32_t(reply.data_length);
  }
  p->advances_stat_sn = true;
  queue_pdu(p);

  if (step == LoginStep::failed) {
    std::fprintf(stderr, "ferry: iscsi %s: login refused (status 0x%04x): %s\n", peer_.c_str(),
                 unsigned(login_->failure_status()), login_->failure_reason());
    close_after_send_ = true;
    phase_ = Phase::logout_sent;  // accept nothing more; close once the reply is out
    return false;
  }
  if (step == LoginStep::login_complete) enter_full_feature();
  return true;
}

void Connection::enter_full_feature() noexcept {
  phase_ = Phase::full_feature;
  server_.hub().authenticated(this);
  login_.reset();
  limits_.header_digest = params_.header_digest;
  limits_.data_digest = params_.data_digest;
  limits_.max_data_segment_bytes = params_.target_max_recv_data_segment_length;
  if (!discovery_) {
    nexus_.id = id();
    nexus_.initiator_port_name = initiator_port_name_;
    nexus_.initiator_name = initiator_name_;
    nexus_.target_name = target_name_;
    nexus_.target_port_name = target_port_name_;
    nexus_.relative_target_port_id = 1;
    nexus_.target_portal_group_tag = 1;
    target_->nexus_new(nexus_);
    SessionInfo info;
    info.protocol = "iscsi";
    info.client = initiator_name_;
    info.peer = peer_;
    info.target = target_name_;
    // initiator_port_name_ is "NAME,i,0xISID" (SPC-4 iSCSI initiator port identifier).
    info.detail = "isid=" + initiator_port_name_.substr(initiator_port_name_.rfind(",i,0x") + 5) +
                  ", tsih=" + std::to_string(tsih_);
    server_.hub().publish(this, std::move(info), &session_counters_);
  }
  // Receive buffer for full-size PDUs plus room to batch several small ones.
  const size_t want = kBhsBytes + 1024 + 8 + pad4(limits_.max_data_segment_bytes) + 64 * 1024;
  if (rx_.capacity() < want) {
    Buffer bigger = reactor_.pool().allocate(want);
    if (!bigger) return close("no memory for receive buffer");
    std::memcpy(bigger.data(), rx_.data(), rx_len_);
    rx_ = std::move(bigger);
  }
}

// ---------------------------------------------------------------- sequence numbers

uint32_t Connection::max_cmd_sn() const noexcept {
  const uint32_t used = uint32_t(active_.size());
  const uint32_t window = used >= queue_depth_max_ ? 0 : queue_depth_max_ - used;
  return exp_cmd_sn_ + window - 1;  // window 0 → MaxCmdSN = ExpCmdSN - 1 (closed)
}

bool Connection::check_cmd_sn(const Bhs& h) noexcept {
  const uint32_t sn = h.cmd_sn();
  if (h.immediate()) return true;  // immediate PDUs do not advance CmdSN
  // The window's upper edge is the MaxCmdSN the initiator has been told, not what we could
  // accept now (the window may have opened since the last PDU we sent).
  if (sn_lt(sn, exp_cmd_sn_) || sn_lt(advertised_max_cmd_sn_, sn)) {
    // RFC 7143 §4.2.2.1: silently ignore commands outside the window.
    std::fprintf(stderr, "ferry: iscsi %s: CmdSN %u outside window [%u, %u], ignored\n",
                 peer_.c_str(), sn, exp_cmd_sn_, advertised_max_cmd_sn_);
    return false;
  }
  exp_cmd_sn_ = sn + 1;
  return true;
}

void Connection::fill_sn(Bhs& h, bool advance_stat_sn) noexcept {
  h.set_stat_sn(stat_sn_);
  if (advance_stat_sn) ++stat_sn_;
  h.set_exp_cmd_sn(exp_cmd_sn_);
  const uint32_t max_sn = max_cmd_sn();
  if (sn_lt(advertised_max_cmd_sn_, max_sn) || !max_cmd_sn_advertised_) {
    advertised_max_cmd_sn_ = max_sn;
    max_cmd_sn_advertised_ = true;
  }
  h.set_max_cmd_sn(advertised_max_cmd_sn_);
}

// ---------------------------------------------------------------- tasks

IscsiTask* Connection::new_task() noexcept {
  IscsiTask* t;
  if (free_tasks_.empty()) {
    t = new (std::nothrow) IscsiTask();
    if (t == nullptr) return nullptr;
  } else {
    t = free_tasks_.back();
    free_tasks_.pop_back();
    scsi::ScsiTask fresh;
    t->scsi.data.release();
    t->scsi.lu_buffer.release();
    *t = IscsiTask();
  }
  t->conn = this;
  return t;
}

void Connection::free_task(IscsiTask* t) noexcept {
  t->scsi.data.release();
  t->scsi.lu_buffer.release();
  free_tasks_.push_back(t);
}

IscsiTask* Connection::find_task_by_itt(uint32_t itt) noexcept {
  for (IscsiTask* t : active_)
    if (t->itt == itt && !t->aborted) return t;
  return nullptr;
}

IscsiTask* Connection::find_task_by_ttt(uint32_t ttt) noexcept {
  for (IscsiTask* t : active_)
    if (t->ttt == ttt && !t->aborted) return t;
  return nullptr;
}

bool Connection::handle_scsi_command(const Bhs& h, std::span<const uint8_t> data) noexcept {
  if (!check_cmd_sn(h)) return true;
  ScsiCommandView cmd{h};
  const uint32_t edtl = cmd.expected_data_transfer_length();
  ++stats_.commands;
  SessionCounters::add(session_counters_.commands, 1);

  IscsiTask* t = new_task();
  if (t == nullptr) {
    close("no memory for task");
    return false;
  }
  t->itt = h.itt();
  t->cmd_sn = h.cmd_sn();
  t->edtl = edtl;
  std::memcpy(t->scsi.cdb, cmd.cdb(), 16);
  t->scsi.lun_raw = h.lun();
  t->scsi.expected_transfer_bytes = edtl;
  t->scsi.transport_read = cmd.read();
  t->scsi.transport_write = cmd.write();
  t->scsi.nexus = &nexus_;
  t->scsi.pool = &reactor_.pool();
  t->scsi.owner = t;
  t->scsi.on_complete = &Connection::on_scsi_done;
  active_.push_back(t);

  if (edtl > 0) {
    t->scsi.data = reactor_.pool().allocate(edtl);
    if (!t->scsi.data) {
      ++stats_.waits_for_buffer;
      t->discard_data = true;  // answer BUSY after swallowing any data-out
    }
  }

  if (!cmd.write() || edtl == 0) {
    if (!data.empty()) {
      // Immediate data on a command without W bit: protocol error.
      active_.pop_back();
      free_task(t);
      send_reject(h, RejectReason::protocol_error);
      return true;
    }
    execute(t);
    return true;
  }

  // Write: immediate data, then unsolicited Data-Out, then R2T-solicited data.
  if (data.size() > edtl || (!data.empty() && !params_.immediate_data) ||
      data.size() > params_.first_burst_length) {
    active_.pop_back();
    free_task(t);
    send_reject(h, RejectReason::protocol_error);
    return true;
  }
  if (!data.empty() && !t->discard_data) std::memcpy(t->scsi.data.data(), data.data(), data.size());
  t->received_bytes = uint32_t(data.size());
  const bool more_unsolicited = !h.final_bit() && !params_.initial_r2t;
  t->unsolicited_end =
      params_.initial_r2t ? t->received_bytes : std::min(params_.first_burst_length, edtl);
  t->unsolicited_done = !more_unsolicited;
  if (t->unsolicited_done) t->unsolicited_end = t->received_bytes;
  t->next_r2t_offset = t->unsolicited_end;
  t->ttt = 0x40000000u | (next_ttt_++ & 0x3fffffffu);
  if (t->received_bytes == edtl) {
    execute(t);
    return true;
  }
  maybe_send_r2ts(t);
  return true;
}

void Connection::maybe_send_r2ts(IscsiTask* t) noexcept {
  if (!t->unsolicited_done) return;
  while (t->next_r2t_offset < t->edtl && t->r2t_outstanding < params_.max_outstanding_r2t) {
    const uint32_t len = std::min(params_.max_burst_length, t->edtl - t->next_r2t_offset);
    TxPdu* p = new_pdu();
    if (p == nullptr) return close("no memory for R2T");
    p->bhs.set_opcode(Opcode::r2t);
    p->bhs.b[1] = 0x80;
    p->bhs.set_lun(t->scsi.lun_raw);
    p->bhs.set_itt(t->itt);
    p->bhs.set_ttt(t->ttt);
    p->bhs.set_u32(36, t->r2t_sn++);
    p->bhs.set_u32(40, t->next_r2t_offset);
    p->bhs.set_u32(44, len);
    queue_pdu(p);
    ++stats_.r2ts;
    t->next_r2t_offset += len;
    ++t->r2t_outstanding;
  }
}

bool Connection::handle_data_out(const Bhs& h, std::span<const uint8_t> data) noexcept {
  IscsiTask* t = h.ttt() == kReservedTag ? find_task_by_itt(h.itt()) : find_task_by_ttt(h.ttt());
  if (t == nullptr || t->executing || t->received_bytes >= t->edtl) {
    // Data for an aborted or unknown task: ignored (RFC 7143 §4.2.3.3 after TMF).
    for (IscsiTask* a : active_)
      if (a->itt == h.itt()) return true;
    send_reject(h, RejectReason::invalid_pdu_field);
    return true;
  }
  DataOutView d{h};
  const uint32_t offset = d.buffer_offset();
  if (offset != t->received_bytes || data.size() > t->edtl - offset) {
    send_reject(h, RejectReason::protocol_error);
    close("Data-Out offset/length outside the expected transfer");
    return false;
  }
  if (h.ttt() == kReservedTag &&
      (t->unsolicited_done || offset + data.size() > t->unsolicited_end)) {
    send_reject(h, RejectReason::protocol_error);
    close("unsolicited Data-Out beyond FirstBurstLength");
    return false;
  }
  if (d.data_sn() != t->data_out_sn) {
    // DataSN restarts at 0 for each sequence (unsolicited burst or R2T). A gap or reorder means
    // the data cannot be trusted: keep the transfer going but fail the command (ABORTED COMMAND,
    // DATA PHASE ERROR) instead of writing it.
    std::fprintf(stderr, "ferry: iscsi %s: Data-Out DataSN %u, expected %u: command failed\n",
                 peer_.c_str(), d.data_sn(), t->data_out_sn);
    t->data_error = true;
    t->data_out_sn = d.data_sn();
  }
  ++t->data_out_sn;
  if (h.final_bit()) t->data_out_sn = 0;
  if (!t->discard_data && !t->data_error && !data.empty())
    std::memcpy(t->scsi.data.data() + offset, data.data(), data.size());
  t->received_bytes += uint32_t(data.size());
  if (h.final_bit()) {
    if (h.ttt() == kReservedTag) {
      t->unsolicited_done = true;
      t->unsolicited_end = t->received_bytes;
      if (t->next_r2t_offset < t->unsolicited_end) t->next_r2t_offset = t->unsolicited_end;
    } else if (t->r2t_outstanding > 0) {
      --t->r2t_outstanding;
    }
  }
  if (t->received_bytes == t->edtl) {
    execute(t);
  } else {
    maybe_send_r2ts(t);
  }
  return true;
}

void Connection::execute(IscsiTask* t) noexcept {
  if (t->edtl > BufferPool::kMaxBytes) {
    // Larger than any single command we can buffer: refuse it for good (BUSY would make the
    // initiator retry forever). Block Limits VPD advertises a far smaller maximum.
    scsi::set_check_condition(t->scsi, scsi::invalid_field_in_cdb(0));
    complete_task(t);
    return;
  }
  if (t->data_error) {
    scsi::Sense sense;
    sense.key = scsi::SenseKey::aborted_command;
    sense.asc = scsi::Asc{0x4b, 0x00};  // DATA PHASE ERROR
    scsi::set_check_condition(t->scsi, sense);
    complete_task(t);
    return;
  }
  if (t->discard_data || (t->edtl > 0 && !t->scsi.data)) {
    t->scsi.status = scsi::Status::busy;
    complete_task(t);
    return;
  }
  t->executing = true;
  ++device_io_in_flight_;
  target_->execute(t->scsi);
}

void Connection::on_scsi_done(scsi::ScsiTask& st) noexcept {
  auto* t = static_cast<IscsiTask*>(st.owner);
  Connection* c = t->conn;
  t->executing = false;
  --c->device_io_in_flight_;
  if (t->aborted) {
    auto it = std::find(c->active_.begin(), c->active_.end(), t);
    if (it != c->active_.end()) c->active_.erase(it);
    c->free_task(t);
    if (c->tmf_pending_ && c->tmf_waiting_on_ > 0 && --c->tmf_waiting_on_ == 0)
      c->finish_pending_tmf();
    if (c->phase_ == Phase::closing) c->maybe_free();
    return;
  }
  if (c->phase_ == Phase::closing) {
    auto it = std::find(c->active_.begin(), c->active_.end(), t);
    if (it != c->active_.end()) c->active_.erase(it);
    c->free_task(t);
    c->maybe_free();
    return;
  }
  c->complete_task(t);
}

// Queues Data-In (with phase-collapsed status when possible) or a SCSI Response.
void Connection::complete_task(IscsiTask* t) noexcept {
  const scsi::ScsiTask& s = t->scsi;
  const bool good = s.status == scsi::Status::good && s.sense_bytes == 0;
  uint8_t residual_flags = 0;
  uint32_t residual = 0;
  if (s.command_transfer_bytes < t->edtl) {
    residual_flags = 0x02;  // U
    residual = t->edtl - s.command_transfer_bytes;
  } else if (s.command_transfer_bytes > t->edtl) {
    residual_flags = 0x04;  // O
    residual = s.command_transfer_bytes - t->edtl;
  }
  if (s.status != scsi::Status::good && !s.data_in && s.command_transfer_bytes == 0) {
    residual_flags = 0;
    residual = 0;
  }
  const uint32_t in_bytes = s.data_in ? std::min(s.command_transfer_bytes, t->edtl) : 0;
  if (good && in_bytes > 0) SessionCounters::add(session_counters_.bytes_read, in_bytes);
  if (good && s.transport_write)
    SessionCounters::add(session_counters_.bytes_written,
                         std::min(s.command_transfer_bytes, t->edtl));

  if (in_bytes > 0 && s.status == scsi::Status::good) {
    const uint32_t seg_max =
        std::min(params_.initiator_max_recv_data_segment_length, params_.max_burst_length);
    uint32_t off = 0;
    while (off < in_bytes) {
      const uint32_t len = std::min(seg_max, in_bytes - off);
      const bool last = off + len == in_bytes;
      TxPdu* p = new_pdu();
      if (p == nullptr) return close("no memory for Data-In");
      p->bhs.set_opcode(Opcode::data_in);
      uint8_t flags = 0;
      if (last || (off + len) % params_.max_burst_length == 0) flags |= 0x80;  // F
      if (last && good) flags |= 0x01 | residual_flags;                        // S + U/O
      p->bhs.b[1] = flags;
      p->bhs.b[3] = last && good ? uint8_t(s.status) : 0;
      p->bhs.set_lun((flags & 0x01) ? 0 : s.lun_raw);
      p->bhs.set_itt(t->itt);
      p->bhs.set_ttt(kReservedTag);
      p->bhs.set_u32(36, t->data_sn++);
      p->bhs.set_u32(40, off);
      if (flags & 0x01) p->bhs.set_u32(44, residual);
      p->data = s.data.data() + off;
      p->data_bytes = len;
      p->advances_stat_sn = (flags & 0x01) != 0;
      p->carries_sn = true;
      if (last && good) p->task_done = t;
      ++stats_.data_in_pdus;
      queue_pdu(p);
      off += len;
    }
    if (good) return;
  }

  TxPdu* p = new_pdu();
  if (p == nullptr) return close("no memory for SCSI Response");
  p->bhs.set_opcode(Opcode::scsi_response);
  p->bhs.b[1] = uint8_t(0x80 | residual_flags);
  p->bhs.b[2] = 0x00;  // command completed at target
  p->bhs.b[3] = uint8_t(s.status);
  p->bhs.set_itt(t->itt);
  p->bhs.set_u32(36, t->data_sn + t->r2t_sn);
  p->bhs.set_u32(44, residual);
  if (s.sense_bytes > 0) {
    store_be16(p->inline_data, s.sense_bytes);
    std::memcpy(p->inline_data + 2, s.sense, s.sense_bytes);
    p->data = reinterpret_cast<const std::byte*>(p->inline_data);
    p->data_bytes = 2u + s.sense_bytes;
  }
  p->advances_stat_sn = true;
  p->task_done = t;
  queue_pdu(p);
}

// ---------------------------------------------------------------- NOP, TMF, text, logout

bool Connection::handle_nop_out(const Bhs& h, std::span<const uint8_t> data) noexcept {
  if (h.ttt() != kReservedTag) {
    // Answer to our NOP-In ping.
    if (h.ttt() == nop_ping_ttt_) nop_ping_ttt_ = 0;
    return true;
  }
  if (h.itt() != kReservedTag && !check_cmd_sn(h)) return true;
  if (h.itt() == kReservedTag) {
    if (!h.immediate()) (void)check_cmd_sn(h);
    return true;  // one-way ping: no answer
  }
  TxPdu* p = new_pdu();
  if (p == nullptr) {
    close("no memory for NOP-In");
    return false;
  }
  p->bhs.set_opcode(Opcode::nop_in);
  p->bhs.b[1] = 0x80;
  p->bhs.set_lun(h.lun());
  p->bhs.set_itt(h.itt());
  p->bhs.set_ttt(kReservedTag);
  if (!data.empty()) {
    const size_t len =
        std::min<size_t>(data.size(), params_.initiator_max_recv_data_segment_length);
    p->owned = reactor_.pool().allocate(len);
    if (p->owned) {
      std::memcpy(p->owned.data(), data.data(), len);
      p->data = p->owned.data();
      p->data_bytes = uint32_t(len);
    }
  }
  p->advances_stat_sn = true;
  queue_pdu(p);
  return true;
}

bool Connection::response_queued(const IscsiTask* t) const noexcept {
  for (TxPdu* p = tx_head_; p != nullptr; p = p->next)
    if (p->task_done == t) return true;
  for (TxPdu* p : tx_batch_)
    if (p->task_done == t) return true;
  return false;
}

void Connection::abort_task(IscsiTask* t) noexcept {
  if (t->executing) {
    t->aborted = true;
    ++tmf_waiting_on_;  // freed by on_scsi_done; the TMF answer waits for it
    return;
  }
  // Its status is already on its way: it completes normally (and is not aborted).
  if (response_queued(t)) return;
  t->aborted = true;
  auto it = std::find(active_.begin(), active_.end(), t);
  if (it != active_.end()) active_.erase(it);
  free_task(t);
}

void Connection::finish_pending_tmf() noexcept {
  tmf_pending_ = false;
  TxPdu* p = new_pdu();
  if (p == nullptr) return close("no memory for TMF response");
  p->bhs.set_opcode(Opcode::task_mgmt_response);
  p->bhs.b[1] = 0x80;
  p->bhs.b[2] = tmf_response_code_;
  p->bhs.set_itt(tmf_request_.itt());
  p->advances_stat_sn = true;
  queue_pdu(p);
}

bool Connection::handle_task_mgmt(const Bhs& h) noexcept {
  if (!check_cmd_sn(h)) return true;
  if (tmf_pending_) {
    send_reject(h, RejectReason::task_in_progress);
    return true;
  }
  const uint8_t function = h.b[1] & 0x7f;
  const uint32_t referenced_itt = h.u32(20);
  uint8_t response = 0;  // function complete
  tmf_request_ = h;
  tmf_waiting_on_ = 0;
  std::vector<IscsiTask*> victims;
  switch (function) {
    case 1: {  // ABORT TASK
      IscsiTask* t = nullptr;
      for (IscsiTask* a : active_)
        if (a->itt == referenced_itt && !a->aborted) t = a;
      if (t == nullptr) {
        // RFC 7143 §11.5.1: a task not (yet) received whose RefCmdSN is inside the window and
        // before the TMF itself counts as aborted ("function complete"); a task that already
        // completed (RefCmdSN below ExpCmdSN) or anything else: "task does not exist".
        const uint32_t ref_sn = h.u32(32);
        const bool in_window = sn_le(exp_cmd_sn_, ref_sn) && sn_le(ref_sn, advertised_max_cmd_sn_);
        response = in_window && sn_lt(ref_sn, h.cmd_sn()) ? 0 : 1;
      } else if (t->scsi.lun_raw != h.lun() || (!t->executing && response_queued(t))) {
        response = 1;  // another LUN, or already completed (status queued before this TMF)
      } else {
        victims.push_back(t);
      }
      break;
    }
    case 2:  // ABORT TASK SET
    case 4:  // CLEAR TASK SET
    case 5:  // LOGICAL UNIT RESET
      for (IscsiTask* a : active_)
        if (!a->aborted && a->scsi.lun_raw == h.lun() && a->itt != h.itt()) victims.push_back(a);
      if (target_->find(h.lun()) == nullptr) response = 2;  // LUN does not exist
      break;
    case 6:  // TARGET WARM RESET
    case 7:  // TARGET COLD RESET
      for (IscsiTask* a : active_)
        if (!a->aborted) victims.push_back(a);
      break;
    case 3:  // CLEAR ACA: ACA is not supported (NACA=0 only)
      response = 5;
      break;
    case 8:  // TASK REASSIGN: needs ErrorRecoveryLevel 2
      response = 4;
      break;
    default:
      response = 255;  // function rejected
      break;
  }
  if (response == 0) {
    for (IscsiTask* v : victims) abort_task(v);
    if (function == 5) target_->reset_lun(h.lun(), &nexus_);
    if (function == 6 || function == 7) target_->reset_target(&nexus_);
  }
  tmf_response_code_ = response;
  tmf_pending_ = true;
  if (tmf_waiting_on_ == 0) finish_pending_tmf();
  if (response == 0 && function == 7) close_after_send_ = true;  // cold reset drops the connection
  return true;
}

bool Connection::handle_text(const Bhs& h, std::span<const uint8_t> data) noexcept {
  if (!check_cmd_sn(h)) return true;
  if (h.ttt() == kReservedTag) text_.reset();  // a new text exchange
  if (!text_) text_ = std::make_unique<TextResponder>();
  if (text_->collecting()) {
    const Errc e = text_->feed(server_.portal(), discovery_ ? std::string_view{} : target_name_,
                               data, !h.final_bit());
    if (e != Errc::ok) {
      text_.reset();
      send_reject(h, RejectReason::protocol_error);
      return true;
    }
  }
  TextChunk chunk = text_->next_chunk(params_.initiator_max_recv_data_segment_length);
  TxPdu* p = new_pdu();
  if (p == nullptr) {
    close("no memory for text response");
    return false;
  }
  p->bhs.set_opcode(Opcode::text_response);
  p->bhs.b[1] = chunk.final ? 0x80 : 0x40;  // F or C
  p->bhs.set_lun(h.lun());
  p->bhs.set_itt(h.itt());
  p->bhs.set_ttt(chunk.final ? kReservedTag : (0x20000000u | (next_ttt_++ & 0x1fffffffu)));
  if (!chunk.bytes.empty()) {
    p->owned = reactor_.pool().allocate(chunk.bytes.size());
    if (!p->owned) {
      release_pdu(p);
      close("no memory for text response");
      return false;
    }
    std::memcpy(p->owned.data(), chunk.bytes.data(), chunk.bytes.size());
    p->data = p->owned.data();
    p->data_bytes = uint32_t(chunk.bytes.size());
  }
  if (chunk.final) text_.reset();
  p->advances_stat_sn = true;
  queue_pdu(p);
  return true;
}

bool Connection::handle_logout(const Bhs& h) noexcept {
  (void)check_cmd_sn(h);
  const uint8_t reason = h.b[1] & 0x7f;
  TxPdu* p = new_pdu();
  if (p == nullptr) {
    close("no memory for logout response");
    return false;
  }
  p->bhs.set_opcode(Opcode::logout_response);
  p->bhs.b[1] = 0x80;
  // 0 close session, 1 close connection: done. 2 remove for recovery: needs ERL 2.
  p->bhs.b[2] = reason == 2 ? 2 : 0;
  p->bhs.set_itt(h.itt());
  store_be16(p->bhs.b + 40, uint16_t(params_.default_time2wait));
  store_be16(p->bhs.b + 42, uint16_t(params_.default_time2retain));
  p->advances_stat_sn = true;
  queue_pdu(p);
  if (reason != 2) {
    phase_ = Phase::logout_sent;
    close_after_send_ = true;
  }
  return reason == 2;
}

void Connection::send_reject(const Bhs& offending, RejectReason reason) noexcept {
  ++stats_.rejects;
  TxPdu* p = new_pdu();
  if (p == nullptr) return close("no memory for Reject");
  p->bhs.set_opcode(Opcode::reject);
  p->bhs.b[1] = 0x80;
  p->bhs.b[2] = uint8_t(reason);
  p->bhs.set_itt(kReservedTag);
  static_assert(sizeof(p->inline_data) >= kBhsBytes);
  std::memcpy(p->inline_data, offending.b, kBhsBytes);
  p->data = reinterpret_cast<const std::byte*>(p->inline_data);
  p->data_bytes = kBhsBytes;
  p->advances_stat_sn = true;
  queue_pdu(p);
}

// ---------------------------------------------------------------- transmit

TxPdu* Connection::new_pdu() noexcept {
  TxPdu* p;
  if (free_pdus_.empty()) {
    p = new (std::nothrow) TxPdu();
    if (p == nullptr) return nullptr;
    ++pdus_allocated_;
  } else {
    p = free_pdus_.back();
    free_pdus_.pop_back();
  }
  p->next = nullptr;
  p->bhs.clear();
  p->data = nullptr;
  p->data_bytes = 0;
  p->trailer_bytes = 0;
  p->advances_stat_sn = false;
  p->carries_sn = true;
  p->task_done = nullptr;
  return p;
}

void Connection::release_pdu(TxPdu* p) noexcept {
  p->owned.release();
  if (p->task_done != nullptr) {
    IscsiTask* t = p->task_done;
    p->task_done = nullptr;
    auto it = std::find(active_.begin(), active_.end(), t);
    if (it != active_.end()) active_.erase(it);
    free_task(t);
  }
  free_pdus_.push_back(p);
}

void Connection::queue_pdu(TxPdu* p) noexcept {
  if (phase_ == Phase::closing) {
    release_pdu(p);
    return;
  }
  if (p->carries_sn) fill_sn(p->bhs, p->advances_stat_sn);
  // Data-In without status carries no StatSN.
  if (p->bhs.opcode() == Opcode::data_in && !(p->bhs.b[1] & 0x01)) p->bhs.set_stat_sn(0);
  p->bhs.set_data_segment_length(p->data_bytes);
  p->has_header_digest = limits_.header_digest && phase_ != Phase::login;
  if (p->has_header_digest) store_le32(p->header_digest, crc32c({p->bhs.b, kBhsBytes}));
  const uint32_t pad = uint32_t(pad4(p->data_bytes) - p->data_bytes);
  std::memset(p->trailer, 0, sizeof p->trailer);
  p->trailer_bytes = pad;
  if (p->data_bytes > 0 && limits_.data_digest && phase_ != Phase::login) {
    uint32_t crc = ~crc32c({reinterpret_cast<const uint8_t*>(p->data), p->data_bytes});
    if (pad > 0) crc = ~crc32c({p->trailer, pad}, crc);
    store_le32(p->trailer + pad, ~crc);
    p->trailer_bytes += 4;
  }
  if (tx_tail_ == nullptr) {
    tx_head_ = tx_tail_ = p;
  } else {
    tx_tail_->next = p;
    tx_tail_ = p;
  }
  if (!tx_active_) reactor_.defer([this] { flush_tx(); });
  tx_active_ = true;  // a flush is scheduled or running
}

void Connection::flush_tx() noexcept {
  // Called once per batch: gathers queued PDUs into one sendmsg.
  if (phase_ == Phase::closing) {
    tx_active_ = false;
    return maybe_free();
  }
  tx_batch_.clear();
  std::vector<iovec>& iov = channel_.gather();
  while (tx_head_ != nullptr && tx_batch_.size() < tx_batch_pdus_max_) {
    TxPdu* p = tx_head_;
    tx_head_ = p->next;
    if (tx_head_ == nullptr) tx_tail_ = nullptr;
    tx_batch_.push_back(p);
    iov.push_back({p->bhs.b, kBhsBytes});
    if (p->has_header_digest) iov.push_back({p->header_digest, 4});
    if (p->data_bytes > 0) iov.push_back({const_cast<std::byte*>(p->data), p->data_bytes});
    if (p->trailer_bytes > 0) iov.push_back({p->trailer, p->trailer_bytes});
  }
  if (tx_batch_.empty()) {
    tx_active_ = false;
    return;
  }
  channel_.send();
}

void Connection::on_sent(int32_t res) noexcept {
  for (TxPdu* p : tx_batch_) release_pdu(p);
  tx_batch_.clear();
  if (phase_ == Phase::closing || res < 0) {
    tx_active_ = false;
    if (phase_ != Phase::closing)
      close(res == -EPIPE || res == -ECONNRESET ? nullptr : "send error");
    return maybe_free();
  }
  if (tx_head_ != nullptr) return flush_tx();
  tx_active_ = false;
  if (close_after_send_) close(nullptr);
}

}  // namespace ferry::iscsi
