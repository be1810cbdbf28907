// LogicalUnit dispatch, SPC-4 primary commands (INQUIRY, MODE SENSE/SELECT, REQUEST SENSE,
// REPORT SUPPORTED OPERATION CODES, READ CAPACITY, RESERVE/RELEASE), unit attentions and the
// Target LUN table. Threading: see logical_unit.h.
#include "gateway/scsi/logical_unit.h"

#include <openssl/sha.h>

#include <algorithm>
#include <cstring>

#include "datapath/endian.h"

namespace ferry::scsi {

std::string serial_of(const Uuid& uuid) {
  std::string s = uuid.to_string();
  std::erase(s, '-');
  return s;
}

std::string it_key_of(const Nexus* n) {
  if (n == nullptr) return std::string();
  std::string k(n->initiator_port_name);
  k += '|';
  k += std::to_string(n->relative_target_port_id);
  return k;
}

namespace {

void put_ascii(uint8_t* dst, std::string_view s, size_t n) noexcept {
  std::memset(dst, ' ', n);
  std::memcpy(dst, s.data(), std::min(n, s.size()));
}

uint64_t nexus_id(const ScsiTask& t) noexcept { return t.nexus ? t.nexus->id : 0; }

}  // namespace

LogicalUnit::LogicalUnit(BlockDevice& device, LuIdentity identity)
    : device_(device),
      identity_(std::move(identity)),
      geometry_(device.geometry()),
      max_transfer_blocks_(
          std::max<uint32_t>(1, geometry_.max_transfer_bytes / geometry_.block_size_bytes)) {
  FERRY_ASSERT(geometry_.block_size_bytes >= 512 && geometry_.block_size_bytes <= 65536);
  wce_.store(geometry_.volatile_cache);
}

void LogicalUnit::reply(ScsiTask& t, const uint8_t* src, size_t bytes,
                        uint32_t alloc_len) noexcept {
  const size_t n = std::min<size_t>(bytes, alloc_len);
  t.data_in = true;
  t.command_transfer_bytes = static_cast<uint32_t>(n);
  const size_t copy = std::min({n, size_t{t.expected_transfer_bytes}, t.data.capacity()});
  if (copy > 0) std::memcpy(t.data.data(), src, copy);
  t.status = Status::good;
  complete(t);
}

void LogicalUnit::execute(ScsiTask& t) noexcept {
  t.status = Status::good;
  t.sense_bytes = 0;
  t.command_transfer_bytes = 0;
  t.data_in = false;
  t.lu = this;
  set_progress(t, std::monostate{});

  const CdbCheck c = check_cdb(t.cdb);
  if (!c.ok()) return fail(t, c.sense);
  const CommandSpec& spec = *c.spec;
  if (ua_pending_.load(std::memory_order_acquire) || reserved_.load(std::memory_order_acquire)) {
    if (!gate(t, spec)) return;
  }

  switch (spec.cmd) {
    case Cmd::read6:
    case Cmd::read10:
    case Cmd::read12:
    case Cmd::read16:
    case Cmd::write6:
    case Cmd::write10:
    case Cmd::write12:
    case Cmd::write16:
    case Cmd::write_verify10:
    case Cmd::write_verify12:
    case Cmd::write_verify16:
      return read_write(t, spec);
    case Cmd::start_stop_unit:
      // Fixed medium: LOEJ (load/eject) is refused, START/STOP and power conditions are no-ops.
      if (t.cdb[4] & 0x02) return fail(t, invalid_field_in_cdb(4, 1));
      return complete(t);
    case Cmd::test_unit_ready:
    case Cmd::prevent_allow:
      return complete(t);
    case Cmd::request_sense:
      return request_sense(t);
    case Cmd::inquiry:
      return inquiry(t);
    case Cmd::mode_select6:
    case Cmd::mode_select10:
      return mode_select(t);
    case Cmd::mode_sense6:
    case Cmd::mode_sense10:
      return mode_sense(t);
    case Cmd::reserve6:
    case Cmd::reserve10:
      return reserve(t, true);
    case Cmd::release6:
    case Cmd::release10:
      return reserve(t, false);
    case Cmd::read_capacity10:
      return read_capacity10(t);
    case Cmd::read_capacity16:
      return read_capacity16(t);
    case Cmd::verify10:
    case Cmd::verify12:
    case Cmd::verify16:
      return verify(t, spec);
    case Cmd::prefetch10:
    case Cmd::prefetch16:
      return prefetch(t, spec);
    case Cmd::sync_cache10:
    case Cmd::sync_cache16:
      return sync_cache(t, spec);
    case Cmd::write_same10:
    case Cmd::write_same16:
      return write_same(t, spec);
    case Cmd::unmap:
      return unmap(t);
    case Cmd::get_lba_status:
      return get_lba_status(t);
    case Cmd::compare_and_write:
      return compare_and_write(t);
    case Cmd::pr_in:
      return pr_in(t);
    case Cmd::pr_out:
      return pr_out(t);
    case Cmd::report_opcodes:
      return report_opcodes(t);
    case Cmd::report_luns: {
      // Normally answered by Target; an LU alone reports itself as LUN 0.
      uint8_t b[16] = {};
      store_be32(b, 8);
      return reply(t, b, sizeof(b), load_be32(t.cdb + 6));
    }
  }
  fail(t, illegal_request(kInvalidOpcode));
}

// ---- unit attention and reservation gate ----

LogicalUnit::NexusState* LogicalUnit::nexus_locked(uint64_t id) noexcept {
  for (NexusState& n : nexuses_) {
    if (n.id == id) return &n;
  }
  return nullptr;
}

void LogicalUnit::push_ua_locked(NexusState& n, Asc asc) noexcept {
  if (std::find(n.ua.begin(), n.ua.end(), asc) != n.ua.end()) return;
  if (n.ua.size() >= 8) n.ua.erase(n.ua.begin());  // bounded: oldest lost
  n.ua.push_back(asc);
}

void LogicalUnit::ua_all_but_locked(uint64_t except_id, Asc asc) noexcept {
  for (NexusState& n : nexuses_) {
    if (n.id != except_id) push_ua_locked(n, asc);
  }
  update_flags_locked();
}

void LogicalUnit::update_flags_locked() noexcept {
  bool any = false;
  for (const NexusState& n : nexuses_) any = any || !n.ua.empty();
  ua_pending_.store(any, std::memory_order_release);
  reserved_.store(spc2_reserved_ || pr_reserved_, std::memory_order_release);
}

bool LogicalUnit::gate(ScsiTask& t, const CommandSpec& spec) noexcept {
  std::unique_lock lock(mu_);
  if (!spec.ua_exempt) {
    NexusState* n = nexus_locked(nexus_id(t));
    if (n != nullptr && !n->ua.empty()) {
      const Asc asc = n->ua.front();
      n->ua.erase(n->ua.begin());
      update_flags_locked();
      lock.unlock();
      Sense s;
      s.key = SenseKey::unit_attention;
      s.asc = asc;
      fail(t, s);
      return false;
    }
  }
  if (conflicts_locked(t, spec)) {
    lock.unlock();
    t.status = Status::reservation_conflict;
    complete(t);
    return false;
  }
  return true;
}

bool LogicalUnit::conflicts_locked(const ScsiTask& t, const CommandSpec& spec) const noexcept {
  if (spc2_reserved_ && spc2_holder_ != nexus_id(t) && !spec.spc2_allowed) return true;
  if (!pr_reserved_ || spec.access == Access::always) return false;
  const std::string it = it_key_of(t.nexus);
  if (pr_holder_locked(it)) return false;
  bool registered = false;
  for (const Registration& r : registrations_) registered = registered || r.it_key == it;
  switch (pr_type_) {
    case 1:  // write exclusive
      return spec.access == Access::write;
    case 3:  // exclusive access
      return true;
    case 5:
    case 7:  // write exclusive, registrants only / all registrants
      return !registered && spec.access == Access::write;
    case 6:
    case 8:  // exclusive access, registrants only / all registrants
      return !registered;
    default:
      return false;
  }
}

void LogicalUnit::nexus_new(const Nexus& nexus) noexcept {
  std::lock_guard lock(mu_);
  NexusState* n = nexus_locked(nexus.id);
  if (n == nullptr) {
    nexuses_.push_back(NexusState{nexus.id, it_key_of(&nexus), {}});
    n = &nexuses_.back();
  }
  n->ua.clear();
  push_ua_locked(*n, kPowerOnResetOccurred);
  update_flags_locked();
}

void LogicalUnit::nexus_gone(const Nexus& nexus) noexcept {
  std::lock_guard lock(mu_);
  if (spc2_reserved_ && spc2_holder_ == nexus.id) spc2_reserved_ = false;
  std::erase_if(nexuses_, [&](const NexusState& n) { return n.id == nexus.id; });
  update_flags_locked();
}

void LogicalUnit::reset(const Nexus* by) noexcept {
  std::lock_guard lock(mu_);
  spc2_reserved_ = false;
  // SAM-5 §7.8: a LOGICAL UNIT RESET leaves a unit attention on every I_T nexus, the
  // issuer's included (multipath initiators rely on seeing it on each path).
  (void)by;
  ua_all_but_locked(~uint64_t{0}, kBusDeviceResetOccurred);
}

// ---- SPC commands ----

void LogicalUnit::request_sense(ScsiTask& t) noexcept {
  Sense s;
  {
    std::lock_guard lock(mu_);
    NexusState* n = nexus_locked(nexus_id(t));
    if (n != nullptr && !n->ua.empty()) {
      s.key = SenseKey::unit_attention;
      s.asc = n->ua.front();
      n->ua.erase(n->ua.begin());
      update_flags_locked();
    }
  }
  uint8_t b[kFixedSenseBytes];
  build_sense(s, b);
  reply(t, b, sizeof(b), t.cdb[4]);
}

void LogicalUnit::execute_missing_lun(ScsiTask& t) noexcept {
  t.status = Status::good;
  t.sense_bytes = 0;
  t.command_transfer_bytes = 0;
  t.data_in = false;
  const CdbCheck c = check_cdb(t.cdb);
  if (c.ok() && c.spec->cmd == Cmd::inquiry) {
    uint8_t b[36] = {};
    b[0] = 0x7f;  // peripheral qualifier 011b, device type 1Fh: no LU here
    if (t.cdb[1] & 0x01) {
      b[1] = t.cdb[2];
      return reply(t, b, 4, load_be16(t.cdb + 3));
    }
    b[2] = 0x06;
    b[3] = 0x12;
    b[4] = sizeof(b) - 5;
    put_ascii(b + 8, "FERRY", 8);
    put_ascii(b + 16, "NO LUN", 16);
    put_ascii(b + 32, "0001", 4);
    return reply(t, b, sizeof(b), load_be16(t.cdb + 3));
  }
  if (c.ok() && c.spec->cmd == Cmd::request_sense) {
    uint8_t b[kFixedSenseBytes];
    build_sense(illegal_request(kLunNotSupported), b);
    return reply(t, b, sizeof(b), t.cdb[4]);
  }
  fail(t, illegal_request(kLunNotSupported));
}

void LogicalUnit::inquiry(ScsiTask& t) noexcept {
  const bool evpd = t.cdb[1] & 0x01;
  const uint8_t page = t.cdb[2];
  const uint32_t alloc = load_be16(t.cdb + 3);
  uint8_t b[1024] = {};
  const Geometry& g = geometry_;
  const uint32_t bs = g.block_size_bytes;
  if (!evpd) {
    if (page != 0) return fail(t, invalid_field_in_cdb(2));
    b[0] = 0x00;  // connected, direct access block device
    b[2] = 0x06;  // SPC-4
    b[3] = 0x12;  // HISUP, response data format 2
    b[4] = 96 - 5;
    b[7] = 0x02;  // CMDQUE
    put_ascii(b + 8, identity_.vendor, 8);
    put_ascii(b + 16, identity_.product, 16);
    put_ascii(b + 32, identity_.revision, 4);
    store_be16(b + 58, 0x00a0);  // SAM-5
    store_be16(b + 60, 0x0960);  // iSCSI
    store_be16(b + 62, 0x0460);  // SPC-4
    store_be16(b + 64, 0x04c0);  // SBC-3
    return reply(t, b, 96, alloc);
  }
  b[1] = page;
  size_t n = 4;
  switch (page) {
    case 0x00:
      for (uint8_t p : {0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2}) b[n++] = p;
      break;
    case 0x80: {
      std::string_view sn = identity_.serial;
      const size_t len = std::min<size_t>(sn.size(), 252);
      std::memcpy(b + 4, sn.data(), len);
      n += len;
      break;
    }
    case 0x83: {
      // NAA IEEE Registered Extended (6h): a fixed company id, then 100 bits of the SHA-256 of
      // the volume's UUID (stable across builds and restarts, distinct between volumes; before
      // it came from std::hash of IQN/LUN and collided between two targets with one IQN).
      uint8_t digest[SHA256_DIGEST_LENGTH];
      SHA256(identity_.uuid.bytes.data(), identity_.uuid.bytes.size(), digest);
      uint8_t* d = b + n;
      d[0] = 0x01;
      d[1] = 0x03;
      d[3] = 16;
      constexpr uint32_t kOui = 0x5ffe00;  // locally chosen company id
      d[4] = static_cast<uint8_t>(0x60 | ((kOui >> 20) & 0x0f));
      d[5] = static_cast<uint8_t>(kOui >> 12);
      d[6] = static_cast<uint8_t>(kOui >> 4);
      d[7] = static_cast<uint8_t>(((kOui & 0x0f) << 4) | (digest[0] & 0x0f));
      std::memcpy(d + 8, digest + 1, 12);
      n += 20;
      // T10 vendor id: vendor + serial.
      d = b + n;
      d[0] = 0x02;
      d[1] = 0x01;
      put_ascii(d + 4, identity_.vendor, 8);
      const size_t sl = std::min<size_t>(identity_.serial.size(), 64);
      std::memcpy(d + 12, identity_.serial.data(), sl);
      d[3] = static_cast<uint8_t>(8 + sl);
      n += 4 + d[3];
      auto name_desc = [&](uint8_t assoc_type, std::string_view name) {
        if (name.empty()) return;
        uint8_t* e = b + n;
        const size_t len = std::min<size_t>(name.size(), 220);
        const size_t padded = (len + 1 + 3) & ~size_t{3};
        e[0] = 0x53;  // iSCSI, UTF-8
        e[1] = assoc_type;
        e[3] = static_cast<uint8_t>(padded);
        std::memcpy(e + 4, name.data(), len);
        n += 4 + padded;
      };
      name_desc(0x08, identity_.lu_name);  // LU name (association: logical unit)
      if (t.nexus != nullptr) {
        d = b + n;  // relative target port
        d[0] = 0x51;
        d[1] = 0x94;
        d[3] = 4;
        store_be16(d + 6, t.nexus->relative_target_port_id);
        n += 8;
        d = b + n;  // target port group
        d[0] = 0x51;
        d[1] = 0x95;
        d[3] = 4;
        store_be16(d + 6, t.nexus->target_portal_group_tag);
        n += 8;
        name_desc(0x98, t.nexus->target_port_name);  // target port name
        name_desc(0xa8, t.nexus->target_name);       // target device name
      }
      break;
    }
    case 0xb0: {
      n = 64;
      b[4] = 0x01;  // WSNZ
      b[5] = static_cast<uint8_t>(std::min<uint32_t>(kMaxCawBlocks, max_transfer_blocks_));
      store_be16(b + 6, static_cast<uint16_t>(std::max<uint32_t>(1, 4096 / bs)));
      store_be32(b + 8, max_transfer_blocks_);
      store_be32(b + 12, max_transfer_blocks_);
      store_be32(b + 16, max_transfer_blocks_);
      if (g.can_discard) {
        store_be32(b + 20, kMaxUnmapLbaCount);
        store_be32(b + 24, kMaxUnmapDescriptors);
        store_be32(b + 28, 1);
      }
      store_be64(b + 36, kMaxWriteSameBlocks);
      break;
    }
    case 0xb1:
      n = 64;
      store_be16(b + 4, 0x0001);  // non-rotating medium
      break;
    case 0xb2:
      n = 8;
      if (g.can_discard) b[5] = 0x80 | 0x40 | 0x20;         // LBPU, LBPWS, LBPWS10
      if (g.can_discard && g.discard_zeroes) b[5] |= 0x04;  // LBPRZ
      b[6] = g.can_discard ? 0x02 : 0x00;                   // thin provisioned
      break;
    default:
      return fail(t, invalid_field_in_cdb(2));
  }
  store_be16(b + 2, static_cast<uint16_t>(n - 4));
  reply(t, b, n, alloc);
}

void LogicalUnit::read_capacity10(ScsiTask& t) noexcept {
  if (!(t.cdb[8] & 0x01) && load_be32(t.cdb + 2) != 0) return fail(t, invalid_field_in_cdb(2));
  uint8_t b[8];
  const uint64_t last = geometry_.block_count - 1;
  store_be32(b, last > 0xffffffffull ? 0xffffffffu : static_cast<uint32_t>(last));
  store_be32(b + 4, geometry_.block_size_bytes);
  reply(t, b, sizeof(b), sizeof(b));
}

void LogicalUnit::read_capacity16(ScsiTask& t) noexcept {
  if (!(t.cdb[14] & 0x01) && load_be64(t.cdb + 2) != 0) return fail(t, invalid_field_in_cdb(2));
  uint8_t b[32] = {};
  store_be64(b, geometry_.block_count - 1);
  store_be32(b + 8, geometry_.block_size_bytes);
  if (geometry_.can_discard) {
    b[14] = 0x80;                                 // LBPME
    if (geometry_.discard_zeroes) b[14] |= 0x40;  // LBPRZ
  }
  reply(t, b, sizeof(b), load_be32(t.cdb + 10));
}

// ---- mode pages ----

size_t LogicalUnit::mode_page(uint8_t page, uint8_t pc, uint8_t* out) const noexcept {
  // pc: 0 current, 1 changeable, 2 default.
  switch (page) {
    case 0x08: {  // caching
      std::memset(out, 0, 20);
      out[0] = 0x08;
      out[1] = 0x12;
      const bool vc = geometry_.volatile_cache;
      if (pc == 0) out[2] = (vc && wce_.load(std::memory_order_relaxed)) ? 0x04 : 0x00;
      if (pc == 1) out[2] = vc ? 0x04 : 0x00;
      if (pc == 2) out[2] = vc ? 0x04 : 0x00;
      return 20;
    }
    case 0x0a: {  // control
      std::memset(out, 0, 12);
      out[0] = 0x0a;
      out[1] = 0x0a;
      if (pc != 1) {
        out[3] = 0x10;                           // unrestricted reordering allowed
        if (geometry_.read_only) out[4] = 0x08;  // SWP
        store_be16(out + 8, 0xffff);             // busy timeout: unlimited
      }
      return 12;
    }
    case 0x1c: {  // informational exceptions control
      std::memset(out, 0, 12);
      out[0] = 0x1c;
      out[1] = 0x0a;
      return 12;
    }
    default:
      return 0;
  }
}

void LogicalUnit::mode_sense(ScsiTask& t) noexcept {
  const bool six = t.cdb[0] == 0x1a;
  const bool dbd = t.cdb[1] & 0x08;
  const bool llbaa = !six && (t.cdb[1] & 0x10);
  const uint8_t pc = t.cdb[2] >> 6;
  const uint8_t page = t.cdb[2] & 0x3f;
  const uint8_t sub = t.cdb[3];
  const uint32_t alloc = six ? t.cdb[4] : load_be16(t.cdb + 7);
  if (pc == 3) return fail(t, illegal_request(kSavingParametersNotSupported));
  if (sub != 0 && sub != 0xff) return fail(t, invalid_field_in_cdb(3));
  static constexpr uint8_t kPages[] = {0x08, 0x0a, 0x1c};
  if (page != 0x3f && std::find(std::begin(kPages), std::end(kPages), page) == std::end(kPages)) {
    return fail(t, invalid_field_in_cdb(2, 5));
  }
  uint8_t b[256] = {};
  const size_t hdr = six ? 4 : 8;
  size_t n = hdr;
  const uint8_t dev_specific = (geometry_.read_only ? 0x80 : 0x00) | 0x10;  // WP, DPOFUA
  size_t bd = 0;
  if (!dbd) {
    if (llbaa) {
      bd = 16;
      store_be64(b + n, geometry_.block_count);
      store_be32(b + n + 12, geometry_.block_size_bytes);
    } else {
      bd = 8;
      store_be32(b + n, geometry_.block_count > 0xffffffffull
                            ? 0xffffffffu
                            : static_cast<uint32_t>(geometry_.block_count));
      store_be24(b + n + 5, geometry_.block_size_bytes);
    }
    n += bd;
  }
  for (uint8_t p : kPages) {
    if (page == 0x3f || page == p) n += mode_page(p, pc, b + n);
  }
  if (six) {
    b[0] = static_cast<uint8_t>(n - 1);
    b[2] = dev_specific;
    b[3] = static_cast<uint8_t>(bd);
  } else {
    store_be16(b, static_cast<uint16_t>(n - 2));
    b[3] = dev_specific;
    b[4] = llbaa && bd == 16 ? 0x01 : 0x00;
    store_be16(b + 6, static_cast<uint16_t>(bd));
  }
  reply(t, b, n, alloc);
}

void LogicalUnit::mode_select(ScsiTask& t) noexcept {
  const bool six = t.cdb[0] == 0x15;
  const bool pf = t.cdb[1] & 0x10;
  const bool sp = t.cdb[1] & 0x01;
  const uint32_t len = six ? t.cdb[4] : load_be16(t.cdb + 7);
  t.command_transfer_bytes = len;
  if (sp) return fail(t, invalid_field_in_cdb(1, 0));
  if (len == 0) return complete(t);
  if (!pf) return fail(t, invalid_field_in_cdb(1, 4));
  const size_t avail = std::min<size_t>({len, t.expected_transfer_bytes, t.data.capacity()});
  const uint8_t* p = reinterpret_cast<const uint8_t*>(t.data.data());
  const size_t hdr = six ? 4 : 8;
  Sense len_err = illegal_request(kParameterListLengthError);
  if (avail < hdr) return fail(t, len_err);
  const size_t bd = six ? p[3] : load_be16(p + 6);
  const bool longlba = !six && (p[4] & 0x01);
  if (bd != 0 && bd != (longlba ? 16u : 8u)) {
    return fail(t, invalid_field_in_parameters(six ? 3 : 6));
  }
  if (hdr + bd > avail) return fail(t, len_err);
  if (bd != 0) {
    const uint32_t blen = bd == 16 ? load_be32(p + hdr + 12) : load_be24(p + hdr + 5);
    if (blen != geometry_.block_size_bytes) {
      return fail(t, invalid_field_in_parameters(static_cast<uint16_t>(hdr + (bd == 16 ? 12 : 5))));
    }
  }
  bool wce = wce_.load();
  size_t pos = hdr + bd;
  while (pos < avail) {
    if (pos + 2 > avail) return fail(t, len_err);
    const uint8_t code = p[pos] & 0x3f;
    if (p[pos] & 0x40) return fail(t, invalid_field_in_parameters(static_cast<uint16_t>(pos), 6));
    const size_t plen = p[pos + 1];
    if (pos + 2 + plen > avail) return fail(t, len_err);
    uint8_t cur[64], chg[64];
    const size_t n = mode_page(code, 0, cur);
    if (n == 0) return fail(t, invalid_field_in_parameters(static_cast<uint16_t>(pos), 5));
    mode_page(code, 1, chg);
    if (plen + 2 != n) return fail(t, invalid_field_in_parameters(static_cast<uint16_t>(pos + 1)));
    for (size_t i = 2; i < n; ++i) {
      const uint8_t bad = static_cast<uint8_t>((p[pos + i] ^ cur[i]) & ~chg[i]);
      if (bad != 0) return fail(t, invalid_field_in_parameters(static_cast<uint16_t>(pos + i)));
    }
    if (code == 0x08) wce = p[pos + 2] & 0x04;
    pos += n;
  }
  if (wce != wce_.load()) {
    wce_.store(wce);
    std::lock_guard lock(mu_);
    ua_all_but_locked(nexus_id(t), kModeParametersChanged);
  }
  complete(t);
}

// ---- REPORT SUPPORTED OPERATION CODES ----

void LogicalUnit::report_opcodes(ScsiTask& t) noexcept {
  const bool rctd = t.cdb[2] & 0x80;
  const uint8_t options = t.cdb[2] & 0x07;
  const uint8_t req_op = t.cdb[3];
  const uint16_t req_sa = load_be16(t.cdb + 4);
  const uint32_t alloc = load_be32(t.cdb + 6);
  auto timeouts = [](uint8_t* d) {
    store_be16(d, 0x0a);
    store_be32(d + 4, 0);   // nominal: not specified
    store_be32(d + 8, 30);  // recommended: 30 s
    return size_t{12};
  };
  uint8_t b[2048] = {};
  size_t n = 0;
  if (options == 0) {
    n = 4;
    for (const CommandSpec& c : supported_commands()) {
      uint8_t* d = b + n;
      d[0] = c.opcode;
      store_be16(d + 2, c.service_action);
      d[5] = static_cast<uint8_t>((rctd ? 0x02 : 0x00) | (c.has_service_action ? 0x01 : 0x00));
      store_be16(d + 6, c.cdb_bytes);
      n += 8;
      if (rctd) n += timeouts(b + n);
    }
    store_be32(b, static_cast<uint32_t>(n - 4));
    return reply(t, b, n, alloc);
  }
  if (options != 1 && options != 2) return fail(t, invalid_field_in_cdb(2, 2));
  const bool has_sa = opcode_has_service_action(req_op);
  if (options == 1 && has_sa) return fail(t, invalid_field_in_cdb(3));
  if (options == 2 && !has_sa) return fail(t, invalid_field_in_cdb(3));
  const CommandSpec* found = nullptr;
  for (const CommandSpec& c : supported_commands()) {
    if (c.opcode == req_op && (options == 1 || c.service_action == req_sa)) {
      found = &c;
      break;
    }
  }
  b[1] = static_cast<uint8_t>((rctd ? 0x80 : 0x00) | (found ? 0x03 : 0x01));
  n = 4;
  if (found != nullptr) {
    store_be16(b + 2, found->cdb_bytes);
    std::memcpy(b + 4, found->usage, found->cdb_bytes);
    b[4] = found->opcode;  // usage data starts with the opcode, then the service action value
    if (found->has_service_action) {
      b[5] = static_cast<uint8_t>((b[5] & ~0x1f) | found->service_action);
    }
    n += found->cdb_bytes;
    if (rctd) n += timeouts(b + n);
  }
  reply(t, b, n, alloc);
}

// ---- RESERVE / RELEASE (SPC-2) ----

void LogicalUnit::reserve(ScsiTask& t, bool take) noexcept {
  std::unique_lock lock(mu_);
  const uint64_t id = nexus_id(t);
  if (pr_reserved_) {
    lock.unlock();
    t.status = Status::reservation_conflict;
    return complete(t);
  }
  if (take) {
    if (spc2_reserved_ && spc2_holder_ != id) {
      lock.unlock();
      t.status = Status::reservation_conflict;
      return complete(t);
    }
    spc2_reserved_ = true;
    spc2_holder_ = id;
  } else if (spc2_reserved_ && spc2_holder_ == id) {
    spc2_reserved_ = false;
  }
  update_flags_locked();
  lock.unlock();
  complete(t);
}

// ---- Target ----

void Target::add_lun(uint16_t lun, LogicalUnit* lu) {
  FERRY_ASSERT(lun < 16384 && lu != nullptr);
  auto it = std::lower_bound(luns_.begin(), luns_.end(), lun,
                             [](const auto& e, uint16_t l) { return e.first < l; });
  FERRY_ASSERT(it == luns_.end() || it->first != lun);
  luns_.insert(it, {lun, lu});
}

uint64_t Target::encode_lun(uint16_t lun) noexcept {
  if (lun < 256) return uint64_t{lun} << 48;
  return uint64_t{0x4000u | (lun & 0x3fffu)} << 48;
}

int32_t Target::decode_lun(uint64_t lun_raw) noexcept {
  if ((lun_raw & 0x0000ffffffffffffull) != 0) return -1;
  const uint16_t first = static_cast<uint16_t>(lun_raw >> 48);
  switch (first >> 14) {
    case 0:  // peripheral device addressing, bus 0
      if ((first >> 8) != 0) return -1;
      return first & 0xff;
    case 1:  // flat space addressing
      return first & 0x3fff;
    default:
      return -1;
  }
}

LogicalUnit* Target::find(uint64_t lun_raw) const noexcept {
  const int32_t lun = decode_lun(lun_raw);
  if (lun < 0) return nullptr;
  auto it = std::lower_bound(luns_.begin(), luns_.end(), static_cast<uint16_t>(lun),
                             [](const auto& e, uint16_t l) { return e.first < l; });
  return it != luns_.end() && it->first == lun ? it->second : nullptr;
}

void Target::execute(ScsiTask& t) noexcept {
  if (t.cdb[0] == 0xa0) return report_luns(t);
  LogicalUnit* lu = find(t.lun_raw);
  if (lu != nullptr) return lu->execute(t);
  LogicalUnit::execute_missing_lun(t);
}

void Target::report_luns(ScsiTask& t) noexcept {
  t.status = Status::good;
  t.sense_bytes = 0;
  t.command_transfer_bytes = 0;
  t.data_in = true;
  const CdbCheck c = check_cdb(t.cdb);
  auto finish = [&](const Sense* s) {
    if (s != nullptr) set_check_condition(t, *s);
    t.on_complete(t);
  };
  if (!c.ok()) return finish(&c.sense);
  const uint8_t select = t.cdb[2];
  if (select > 2) {
    Sense s = invalid_field_in_cdb(2);
    return finish(&s);
  }
  const uint32_t alloc = load_be32(t.cdb + 6);
  const size_t count = select == 1 ? 0 : luns_.size();
  const size_t total = 8 + 8 * count;
  const size_t n = std::min<size_t>(total, alloc);
  t.command_transfer_bytes = static_cast<uint32_t>(n);
  const size_t copy = std::min({n, size_t{t.expected_transfer_bytes}, t.data.capacity()});
  uint8_t* out = reinterpret_cast<uint8_t*>(t.data.data());
  uint8_t entry[8];
  for (size_t off = 0; off < copy; off += 8) {
    if (off == 0) {
      std::memset(entry, 0, 8);
      store_be32(entry, static_cast<uint32_t>(8 * count));
    } else {
      store_be64(entry, encode_lun(luns_[off / 8 - 1].first));
    }
    std::memcpy(out + off, entry, std::min<size_t>(8, copy - off));
  }
  finish(nullptr);
}

void Target::reset_lun(uint64_t lun_raw, const Nexus* by) noexcept {
  if (LogicalUnit* lu = find(lun_raw)) lu->reset(by);
}

void Target::reset_target(const Nexus* by) noexcept {
  for (auto& e : luns_) e.second->reset(by);
}

void Target::nexus_new(const Nexus& nexus) noexcept {
  for (auto& e : luns_) e.second->nexus_new(nexus);
}

void Target::nexus_gone(const Nexus& nexus) noexcept {
  for (auto& e : luns_) e.second->nexus_gone(nexus);
}

}  // namespace ferry::scsi
