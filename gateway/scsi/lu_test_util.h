// Test fixture helpers for LogicalUnit / Target tests: runs one CDB through a target over a
// MemDevice and returns status, sense and data. Single-threaded.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "datapath/endian.h"
#include "gateway/scsi/logical_unit.h"
#include "gateway/scsi/mem_device_test_util.h"

namespace ferry::scsi::testing {

struct Reply {
  Status status = Status::good;
  uint8_t key = 0, asc = 0, ascq = 0;
  std::vector<uint8_t> sense;
  std::vector<uint8_t> data;
  uint32_t command_transfer_bytes = 0;
  bool completed = false;
  bool good() const { return completed && status == Status::good; }
  bool check(uint8_t k, uint8_t a, uint8_t q) const {
    return status == Status::check_condition && key == k && asc == a && ascq == q;
  }
};

inline std::vector<uint8_t> cdb(std::initializer_list<int> bytes) {
  std::vector<uint8_t> v;
  for (int b : bytes) v.push_back(static_cast<uint8_t>(b));
  return v;
}

inline std::vector<uint8_t> rw10(uint8_t op, uint32_t lba, uint16_t blocks, uint8_t flags = 0) {
  std::vector<uint8_t> c(10, 0);
  c[0] = op;
  c[1] = flags;
  store_be32(c.data() + 2, lba);
  store_be16(c.data() + 7, blocks);
  return c;
}
inline std::vector<uint8_t> rw16(uint8_t op, uint64_t lba, uint32_t blocks, uint8_t flags = 0) {
  std::vector<uint8_t> c(16, 0);
  c[0] = op;
  c[1] = flags;
  store_be64(c.data() + 2, lba);
  store_be32(c.data() + 10, blocks);
  return c;
}

class LuTest : public ::testing::Test {
 protected:
  explicit LuTest(uint64_t blocks = 2048, uint32_t bs = 512) : dev_(blocks, bs) {}
  void SetUp() override { make_lu(); }
  void make_lu() {
    LuIdentity id;
    id.serial = "SN0001";
    id.uuid = *Uuid::parse("00000000-0000-4000-8000-00000000002a");
    lu_ = std::make_unique<LogicalUnit>(dev_, id);
    target_ = std::make_unique<Target>();
    target_->add_lun(0, lu_.get());
    for (int i = 0; i < 2; ++i) {
      names_[i] = "iqn.test:init" + std::to_string(i) + ",i,0x00023d00000" + std::to_string(i);
      nexus_[i].id = 100 + i;
      nexus_[i].initiator_port_name = names_[i];
      nexus_[i].initiator_name = "iqn.test:init";
      nexus_[i].target_name = "iqn.test:target";
      nexus_[i].target_port_name = "iqn.test:target,t,0x0001";
    }
  }
  // Registers both nexuses and clears their power-on unit attention.
  void login_both() {
    for (auto& n : nexus_) {
      target_->nexus_new(n);
      Reply r = run(cdb({0, 0, 0, 0, 0, 0}), {}, 0, &n);
      EXPECT_TRUE(r.check(6, 0x29, 0x00));
    }
  }

  Reply run(const std::vector<uint8_t>& c, const std::vector<uint8_t>& out, uint32_t edtl,
            const Nexus* nexus = nullptr, uint64_t lun_raw = 0) {
    ScsiTask t;
    std::memcpy(t.cdb, c.data(), std::min<size_t>(16, c.size()));
    t.lun_raw = lun_raw;
    t.expected_transfer_bytes = edtl;
    t.nexus = nexus;
    t.pool = &pool_;
    if (edtl > 0) {
      t.data = pool_.allocate(edtl);
      std::memset(t.data.data(), 0xee, t.data.capacity());
      if (!out.empty()) std::memcpy(t.data.data(), out.data(), std::min<size_t>(out.size(), edtl));
    }
    Reply r;
    t.owner = &r;
    t.on_complete = [](ScsiTask& task) noexcept {
      Reply& rr = *static_cast<Reply*>(task.owner);
      rr.completed = true;
      rr.status = task.status;
      rr.sense.assign(task.sense, task.sense + task.sense_bytes);
      if (task.sense_bytes >= 14) {
        rr.key = task.sense[2] & 0x0f;
        rr.asc = task.sense[12];
        rr.ascq = task.sense[13];
      }
      rr.command_transfer_bytes = task.command_transfer_bytes;
      if (task.data_in && task.status == Status::good) {
        const size_t n =
            std::min<size_t>(task.command_transfer_bytes, task.expected_transfer_bytes);
        const auto* p = reinterpret_cast<const uint8_t*>(task.data.data());
        rr.data.assign(p, p + n);
      }
    };
    target_->execute(t);
    if (dev_.defer) dev_.run_pending();
    EXPECT_TRUE(r.completed);
    return r;
  }

  Reply read(uint64_t lba, uint32_t blocks, const Nexus* n = nullptr) {
    return run(rw16(0x88, lba, blocks), {}, blocks * bs(), n);
  }
  Reply write(uint64_t lba, const std::vector<uint8_t>& data, const Nexus* n = nullptr) {
    return run(rw16(0x8a, lba, static_cast<uint32_t>(data.size() / bs())), data,
               static_cast<uint32_t>(data.size()), n);
  }
  uint32_t bs() const { return dev_.geometry().block_size_bytes; }
  std::vector<uint8_t> pattern(uint32_t blocks, uint8_t v) const {
    return std::vector<uint8_t>(blocks * bs(), v);
  }

  MemDevice dev_;
  BufferPool pool_{64u << 20};
  std::unique_ptr<LogicalUnit> lu_;
  std::unique_ptr<Target> target_;
  std::string names_[2];
  Nexus nexus_[2];
};

}  // namespace ferry::scsi::testing
