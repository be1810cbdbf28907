// MemDevice: test-only BlockDevice over a std::vector. Completes synchronously inside submit()
// unless `defer` is set, in which case requests queue until run_pending() (to exercise the
// asynchronous paths). block_status reports everything allocated; discard zeroes. `fail_next`
// makes the next data request fail with that error. Single-threaded.
#pragma once

#include <cstring>
#include <string>
#include <vector>

#include "datapath/block_device.h"

namespace ferry::scsi::testing {

class MemDevice final : public BlockDevice {
 public:
  explicit MemDevice(uint64_t block_count, uint32_t block_size_bytes = 512) {
    geometry_.block_count = block_count;
    geometry_.block_size_bytes = block_size_bytes;
    geometry_.max_transfer_bytes = 1u << 20;
    geometry_.can_discard = true;
    geometry_.discard_zeroes = true;
    geometry_.volatile_cache = true;
    bytes_.resize(block_count * block_size_bytes);
  }
  Geometry& mutable_geometry() { return geometry_; }
  Geometry geometry() const noexcept override { return geometry_; }
  std::string_view describe() const noexcept override { return "mem"; }

  void submit(IoRequest& req) noexcept override {
    ops.push_back(req.op);
    if (defer) {
      pending_.push_back(&req);
      return;
    }
    run(req);
  }
  void run_pending() {
    while (!pending_.empty()) {
      IoRequest* r = pending_.front();
      pending_.erase(pending_.begin());
      run(*r);
    }
  }

  std::vector<uint8_t> bytes_;
  bool defer = false;
  Errc fail_next = Errc::ok;
  std::vector<IoOp> ops;
  int fua_writes = 0;
  int deallocating_zeroes = 0;

 private:
  void run(IoRequest& req) noexcept {
    if (fail_next != Errc::ok && req.op != IoOp::flush) {
      Errc e = fail_next;
      fail_next = Errc::ok;
      return req.complete(e);
    }
    if (req.op != IoOp::flush) {
      Errc e = check_range(geometry_, req.offset_bytes, req.length_bytes);
      if (e != Errc::ok) return req.complete(e);
    }
    uint8_t* p = bytes_.data() + req.offset_bytes;
    switch (req.op) {
      case IoOp::access_map:
        return req.complete(Errc::unsupported);
      case IoOp::read:
        std::memcpy(req.data, p, req.length_bytes);
        break;
      case IoOp::write:
        if (req.fua) ++fua_writes;
        std::memcpy(p, req.data, req.length_bytes);
        break;
      case IoOp::flush:
        break;
      case IoOp::discard:
        std::memset(p, 0, req.length_bytes);
        break;
      case IoOp::write_zeroes:
        if (req.may_deallocate) ++deallocating_zeroes;
        std::memset(p, 0, req.length_bytes);
        break;
      case IoOp::block_status:
        req.status_length_bytes = req.length_bytes;
        req.status_flags = 0;
        break;
    }
    req.complete(Errc::ok);
  }
  Geometry geometry_;
  std::vector<IoRequest*> pending_;
};

}  // namespace ferry::scsi::testing
