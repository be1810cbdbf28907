// NBD connection: one client socket (TCP or Unix) pinned to one reactor thread, from accept to
// close. Runs the fixed-newstyle handshake (options, optional STARTTLS), then the transmission
// phase: requests are parsed from a pooled receive buffer, executed on the export's BlockDevice
// and answered (simple or structured replies, out of order) through a bounded send queue that
// is gathered into one sendmsg per batch.
//
//   accept ─▶ GREETING ─flags─▶ OPTIONS ─GO/EXPORT_NAME─▶ TRANSMISSION ─DISC/error─▶ CLOSING ─▶
//   freed
//                                  │  ▲
//                          STARTTLS│  │handshake done
//                                  ▼  │
//                              TLS_HANDSHAKE
//
// TLS: the one engine of datapath/tls (tls::TlsEngine, OpenSSL over memory BIOs), so socket I/O
// stays on io_uring: after the STARTTLS reply is sent the connection creates its engine (server
// side, the server's TlsContext) and feeds it what followed STARTTLS; raw bytes received are fed
// to it and decrypted one record at a time into the receive buffer or straight into a WRITE's
// payload buffer; replies are encrypted from their own iovecs (16 KiB per record) and the
// ciphertext drained into a pooled buffer and sent. A handshake that fails on the client's
// certificate (TlsEngine::peer_certificate_refused: none, or not from the CA) counts against the
// server's failed-authentication back-off for the peer's address; while it is backed off,
// STARTTLS is answered NBD_REP_ERR_POLICY (no handshake is attempted).
//
// Threading: everything runs on the owning reactor thread. The connection frees itself once
// closing and no receive, send or device I/O is in flight.
// Bounds: at most requests_in_flight_max tasks (parsed, not yet sent) — reading stops at the
// limit; receive buffer 128 KiB (option data ≤ 64 KiB); WRITE payload received straight into a
// pooled buffer of its size (≤ the advertised maximum block size); tasks come from a free list.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "datapath/block_device.h"
#include "datapath/connection_hub.h"
#include "datapath/reactor.h"
#include "datapath/socket_channel.h"
#include "gateway/nbd/codec.h"

namespace ferry::tls {
class TlsEngine;
}  // namespace ferry::tls

namespace ferry::nbd {

class NbdServer;
struct NbdExport;
struct NbdTask;

// Life: greeting → options (STARTTLS, INFO/GO) → transmission → disconnect or close; the hub
// counts it as authenticating until transmission. Deletes itself once closed, the channel idle
// and no request inside the device.
class Connection final : public HubConnection, private SocketChannelOwner {
 public:
  Connection(NbdServer& server, Reactor& reactor, int fd, uint64_t id) noexcept;
  ~Connection();
  void start() noexcept;  // sends the greeting, arms the handshake deadline
  void close(const char* why) noexcept override;
  struct Counters {
    uint64_t requests = 0;
    uint64_t paused_at_limit = 0;
    uint64_t waits_for_buffer = 0;
  };
  const Counters& counters() const noexcept { return stats_; }
  bool authenticating() const noexcept override { return in_handshake(); }
  bool in_handshake() const noexcept {
    return phase_ != Phase::transmission && phase_ != Phase::closing;
  }

 private:
  enum class Phase : uint8_t {
    greeting,
    options,
    tls_starting,
    tls_handshake,
    transmission,
    closing
  };

  // receive side
  void post_recv() noexcept;
  void on_received(int32_t res) noexcept override;
  void on_plain_bytes(size_t n) noexcept;  // n bytes landed at the current receive target
  bool tls_pump_rx() noexcept;             // decrypt what the engine holds; false: closed
  void process_rx() noexcept;              // parse what rx_ holds
  void resume() noexcept;                  // re-enter the receive loop after a pause
  bool rx_paused() const noexcept;
  bool handle_option(uint32_t option, std::span<const uint8_t> data) noexcept;
  bool handle_info_or_go(uint32_t option, std::span<const uint8_t> data) noexcept;
  bool handle_meta_context(uint32_t option, std::span<const uint8_t> data) noexcept;
  bool handle_export_name(std::span<const uint8_t> data) noexcept;
  void enter_transmission(const NbdExport& e) noexcept;
  uint16_t transmission_flags(const NbdExport& e) const noexcept;
  bool handle_request(const RequestParse& p) noexcept;  // false: stop parsing (wait)

  // tasks
  NbdTask* new_task() noexcept;
  void release_task(NbdTask* t) noexcept;
  void execute(NbdTask* t) noexcept;
  void submit_io(NbdTask* t) noexcept;
  static void on_io_done(IoRequest& io) noexcept;
  void io_done(NbdTask* t) noexcept;
  void finish_read(NbdTask* t) noexcept;
  void finish_block_status(NbdTask* t) noexcept;
  void reply(NbdTask* t, uint32_t error) noexcept;  // builds and queues the reply

  // transmit side
  void queue_option_reply(uint32_t option, uint32_t type, std::span<const uint8_t> a,
                          std::span<const uint8_t> b = {}) noexcept;
  void queue_task(NbdTask* t) noexcept;
  void kick_tx() noexcept;
  void flush_tx() noexcept;
  bool tls_fill_tx() noexcept;  // encrypt queued plaintext into tls_tx_; false on error
  void on_sent(int32_t res) noexcept override;
  void after_task_sent(NbdTask* t) noexcept;
  void start_tls() noexcept;
  void tls_handshake_step(Errc fed) noexcept;  // after ciphertext was fed to the engine

  static void on_timer(void* ctx) noexcept;
  static void on_retry(void* ctx) noexcept;
  void maybe_free() noexcept;

  NbdServer& server_;
  Reactor& reactor_;
  SocketChannel channel_;             // the socket: one receive and one gathered send in flight
  std::string source_;                // peer address without the port ("" for a Unix socket)
  SessionCounters session_counters_;  // what the management API lists (published at GO)
  Phase phase_ = Phase::greeting;
  uint32_t in_flight_max_;

  bool flush_scheduled_ = false;  // flush_tx deferred
  Buffer rx_;
  size_t rx_len_ = 0;
  NbdTask* payload_task_ = nullptr;  // WRITE whose payload is being received
  bool waiting_buffer_ = false;      // pool exhausted: retry timer armed
  bool disc_ = false;                // NBD_CMD_DISC received / ABORT: close once drained
  bool close_after_send_ = false;

  // negotiated state
  bool no_zeroes_ = false;
  bool structured_ = false;
  const NbdExport* meta_export_ = nullptr;  // SET_META_CONTEXT selected base:allocation here
  const NbdExport* export_ = nullptr;
  BlockDevice* device_ = nullptr;
  Geometry geometry_;
  ExportLimits limits_;

  // tasks
  uint32_t tasks_live_ = 0;  // parsed and not yet sent (and handshake replies)
  uint32_t device_in_flight_ = 0;
  std::vector<NbdTask*> free_tasks_;
  NbdTask* tx_head_ = nullptr;
  NbdTask* tx_tail_ = nullptr;
  std::vector<NbdTask*> tx_batch_;

  // TLS
  std::unique_ptr<tls::TlsEngine> tls_engine_;  // from STARTTLS on (records both ways)
  bool tls_ = false;                            // TLS established
  Buffer tls_rx_;                               // raw bytes from the socket
  Buffer tls_tx_;                               // encrypted bytes being sent
  size_t tls_tx_len_ = 0;
  NbdTask* tls_task_ = nullptr;  // task being encrypted (popped from the queue)
  uint32_t tls_iov_ = 0;
  size_t tls_iov_off_ = 0;

  Timer timer_;        // handshake deadline
  Timer retry_timer_;  // pool exhausted: retry
  Counters stats_;
};

}  // namespace ferry::nbd
