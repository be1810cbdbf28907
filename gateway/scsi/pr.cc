// SPC-4 persistent reservations of LogicalUnit: PERSISTENT RESERVE IN (READ KEYS, READ
// RESERVATION, REPORT CAPABILITIES, READ FULL STATUS) and OUT (REGISTER, REGISTER AND IGNORE
// EXISTING KEY, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT AND ABORT). Registrations are keyed
// by I_T nexus (initiator port name + relative target port); APTPL is not supported, so the
// state lives as long as the process. Threading: everything under mu_ (see logical_unit.h).
#include <algorithm>
#include <cstring>
#include <vector>

#include "datapath/endian.h"
#include "gateway/scsi/logical_unit.h"

namespace ferry::scsi {
namespace {

bool all_registrants(uint8_t type) noexcept { return type == 7 || type == 8; }
bool valid_type(uint8_t type) noexcept {
  return type == 1 || type == 3 || type == 5 || type == 6 || type == 7 || type == 8;
}

enum : uint8_t {
  kRegister = 0,
  kReserve = 1,
  kRelease = 2,
  kClear = 3,
  kPreempt = 4,
  kPreemptAbort = 5,
  kRegisterIgnore = 6,
};

}  // namespace

LogicalUnit::Registration* LogicalUnit::find_registration_locked(std::string_view it) noexcept {
  for (Registration& r : registrations_) {
    if (r.it_key == it) return &r;
  }
  return nullptr;
}

bool LogicalUnit::pr_holder_locked(std::string_view it) const noexcept {
  if (!pr_reserved_) return false;
  if (all_registrants(pr_type_)) {
    return std::any_of(registrations_.begin(), registrations_.end(),
                       [&](const Registration& r) { return r.it_key == it; });
  }
  return pr_holder_ == it;
}

void LogicalUnit::ua_for_it_locked(std::string_view it, Asc asc) noexcept {
  for (NexusState& n : nexuses_) {
    if (n.it_key == it) push_ua_locked(n, asc);
  }
}

void LogicalUnit::pr_in(ScsiTask& t) noexcept {
  const uint8_t sa = t.cdb[1] & 0x1f;
  const uint32_t alloc = load_be16(t.cdb + 7);
  std::vector<uint8_t> b;
  {
    std::lock_guard lock(mu_);
    b.resize(8);
    store_be32(b.data(), pr_generation_);
    switch (sa) {
      case 0: {  // READ KEYS
        for (const Registration& r : registrations_) {
          uint8_t k[8];
          store_be64(k, r.key);
          b.insert(b.end(), k, k + 8);
        }
        store_be32(b.data() + 4, static_cast<uint32_t>(b.size() - 8));
        break;
      }
      case 1: {  // READ RESERVATION
        if (pr_reserved_) {
          uint8_t d[16] = {};
          if (!all_registrants(pr_type_)) {
            for (const Registration& r : registrations_) {
              if (r.it_key == pr_holder_) store_be64(d, r.key);
            }
          }
          d[13] = pr_type_;  // scope 0: logical unit
          b.insert(b.end(), d, d + 16);
        }
        store_be32(b.data() + 4, static_cast<uint32_t>(b.size() - 8));
        break;
      }
      case 2: {  // REPORT CAPABILITIES
        std::fill(b.begin(), b.end(), 0);
        store_be16(b.data(), 8);
        b[2] = 0x10;  // CRH: RESERVE/RELEASE handled as SPC-4 says while PR exist
        b[3] = 0x80;  // TMV: the type mask is valid
        b[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02;  // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
        b[5] = 0x01;                              // EX_AC_AR
        break;
      }
      case 3: {  // READ FULL STATUS
        for (const Registration& r : registrations_) {
          const std::string_view name = r.initiator_port_name;
          const size_t tid_len = std::max<size_t>(24, (4 + name.size() + 1 + 3) & ~size_t{3});
          std::vector<uint8_t> d(24 + tid_len, 0);
          store_be64(d.data(), r.key);
          const bool holder = pr_holder_locked(r.it_key);
          if (holder) {
            d[12] = 0x01;  // R_HOLDER
            d[13] = pr_type_;
          }
          store_be16(d.data() + 18, r.relative_target_port_id);
          store_be32(d.data() + 20, static_cast<uint32_t>(tid_len));
          uint8_t* tid = d.data() + 24;
          tid[0] = 0x40 | 0x05;  // iSCSI, format 01b (name + ISID)
          store_be16(tid + 2, static_cast<uint16_t>(tid_len - 4));
          std::memcpy(tid + 4, name.data(), name.size());
          b.insert(b.end(), d.begin(), d.end());
        }
        store_be32(b.data() + 4, static_cast<uint32_t>(b.size() - 8));
        break;
      }
      default:
        break;  // check_cdb accepts SA 0-3 only
    }
  }
  reply(t, b.data(), b.size(), alloc);
}

void LogicalUnit::pr_out(ScsiTask& t) noexcept {
  const uint8_t sa = t.cdb[1] & 0x1f;
  const uint8_t scope = t.cdb[2] >> 4;
  const uint8_t type = t.cdb[2] & 0x0f;
  const uint32_t len = load_be32(t.cdb + 5);
  t.command_transfer_bytes = len;
  if (len != 24) return fail(t, illegal_request(kParameterListLengthError));
  if (t.expected_transfer_bytes < 24 || t.data.capacity() < 24) {
    return fail(t, illegal_request(kParameterListLengthError));
  }
  const auto* p = reinterpret_cast<const uint8_t*>(t.data.data());
  const uint64_t key = load_be64(p);
  const uint64_t sa_key = load_be64(p + 8);
  const uint8_t flags = p[20];
  if (flags & 0x08) return fail(t, invalid_field_in_parameters(20, 3));  // SPEC_I_PT
  if (flags & 0x04) return fail(t, invalid_field_in_parameters(20, 2));  // ALL_TG_PT
  if (flags & 0x01) return fail(t, invalid_field_in_parameters(20, 0));  // APTPL
  const bool needs_type = sa == kReserve || sa == kRelease || sa == kPreempt || sa == kPreemptAbort;
  if (needs_type && scope != 0) return fail(t, invalid_field_in_cdb(2, 7));
  if (needs_type && !valid_type(type) && !(sa == kPreempt && false)) {
    return fail(t, invalid_field_in_cdb(2, 3));
  }

  std::unique_lock lock(mu_);
  const std::string it = it_key_of(t.nexus);
  Registration* reg = find_registration_locked(it);
  auto conflict = [&]() {
    lock.unlock();
    t.status = Status::reservation_conflict;
    complete(t);
  };
  auto done = [&]() {
    update_flags_locked();
    lock.unlock();
    complete(t);
  };

  switch (sa) {
    case kRegister:
    case kRegisterIgnore: {
      if (sa == kRegister) {
        if (reg == nullptr && key != 0) return conflict();
        if (reg != nullptr && reg->key != key) return conflict();
      }
      if (reg == nullptr) {
        if (sa_key == 0) return done();
        Registration r;
        r.it_key = it;
        if (t.nexus != nullptr) {
          r.initiator_port_name = std::string(t.nexus->initiator_port_name);
          r.relative_target_port_id = t.nexus->relative_target_port_id;
        }
        r.key = sa_key;
        registrations_.push_back(std::move(r));
        ++pr_generation_;
        return done();
      }
      if (sa_key != 0) {
        reg->key = sa_key;
        ++pr_generation_;
        return done();
      }
      // Unregister; the holder's reservation goes with it (all-registrants: with the last).
      const bool was_holder = pr_holder_locked(it);
      std::erase_if(registrations_, [&](const Registration& r) { return r.it_key == it; });
      ++pr_generation_;
      if (was_holder) {
        const bool release = !all_registrants(pr_type_) || registrations_.empty();
        if (release) {
          const bool notify = pr_type_ == 5 || pr_type_ == 6;
          pr_reserved_ = false;
          pr_holder_.clear();
          if (notify) {
            for (const Registration& r : registrations_) {
              ua_for_it_locked(r.it_key, kReservationsReleased);
            }
          }
        }
      }
      return done();
    }
    case kReserve: {
      if (reg == nullptr || reg->key != key) return conflict();
      if (pr_reserved_) {
        if (pr_holder_locked(it) && pr_type_ == type) return done();
        return conflict();
      }
      pr_reserved_ = true;
      pr_type_ = type;
      pr_holder_ = it;
      return done();
    }
    case kRelease: {
      if (reg == nullptr || reg->key != key) return conflict();
      if (!pr_reserved_ || !pr_holder_locked(it)) return done();
      if (pr_type_ != type) {
        lock.unlock();
        return fail(t, illegal_request(kInvalidReleaseOfPr));
      }
      const uint8_t old_type = pr_type_;
      pr_reserved_ = false;
      pr_holder_.clear();
      if (old_type != 1 && old_type != 3) {
        for (const Registration& r : registrations_) {
          if (r.it_key != it) ua_for_it_locked(r.it_key, kReservationsReleased);
        }
      }
      return done();
    }
    case kClear: {
      if (reg == nullptr || reg->key != key) return conflict();
      for (const Registration& r : registrations_) {
        if (r.it_key != it) ua_for_it_locked(r.it_key, kReservationsPreempted);
      }
      registrations_.clear();
      pr_reserved_ = false;
      pr_holder_.clear();
      ++pr_generation_;
      return done();
    }
    case kPreempt:
    case kPreemptAbort: {
      if (reg == nullptr || reg->key != key) return conflict();
      auto remove_key = [&](uint64_t victim_key) {
        bool any = false;
        for (const Registration& r : registrations_) {
          if (r.key == victim_key && r.it_key != it) {
            ua_for_it_locked(r.it_key, kRegistrationsPreempted);
            any = true;
          }
        }
        std::erase_if(registrations_,
                      [&](const Registration& r) { return r.key == victim_key && r.it_key != it; });
        return any;
      };
      if (!pr_reserved_) {
        if (sa_key == 0) {
          lock.unlock();
          return fail(t, invalid_field_in_parameters(8));
        }
        if (!remove_key(sa_key)) return conflict();
        ++pr_generation_;
        return done();
      }
      if (all_registrants(pr_type_)) {
        if (sa_key == 0) {
          // Preempt every other registrant and take the reservation.
          for (const Registration& r : registrations_) {
            if (r.it_key != it) ua_for_it_locked(r.it_key, kRegistrationsPreempted);
          }
          std::erase_if(registrations_, [&](const Registration& r) { return r.it_key != it; });
          pr_type_ = type;
          pr_holder_ = it;
          ++pr_generation_;
          return done();
        }
        if (!remove_key(sa_key)) return conflict();
        ++pr_generation_;
        return done();
      }
      uint64_t holder_key = 0;
      for (const Registration& r : registrations_) {
        if (r.it_key == pr_holder_) holder_key = r.key;
      }
      if (sa_key == 0) {
        lock.unlock();
        return fail(t, invalid_field_in_parameters(8));
      }
      if (sa_key == holder_key) {
        const uint8_t old_type = pr_type_;
        remove_key(sa_key);
        pr_holder_ = it;
        pr_type_ = type;
        if (old_type != type) {
          for (const Registration& r : registrations_) {
            if (r.it_key != it) ua_for_it_locked(r.it_key, kReservationsReleased);
          }
        }
        ++pr_generation_;
        return done();
      }
      if (!remove_key(sa_key)) return conflict();
      ++pr_generation_;
      return done();
    }
    default:
      lock.unlock();
      return fail(t, invalid_field_in_cdb(1, 4));
  }
}

}  // namespace ferry::scsi
