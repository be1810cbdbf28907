// Fixed-format sense building and the Errc -> sense table. Pure, any thread.
#include "gateway/scsi/sense.h"

#include <cstring>

#include "datapath/endian.h"

namespace ferry::scsi {

size_t build_sense(const Sense& s, uint8_t* out) noexcept {
  std::memset(out, 0, kFixedSenseBytes);
  out[0] = 0x70 | (s.info_valid ? 0x80 : 0x00);
  out[2] = static_cast<uint8_t>(s.key) & 0x0f;
  store_be32(out + 3, s.information);
  out[7] = kFixedSenseBytes - 8;  // additional sense length
  out[12] = s.asc.asc;
  out[13] = s.asc.ascq;
  if (s.sksv) {
    uint8_t b = 0x80;
    if (s.in_cdb) b |= 0x40;
    if (s.bit_pointer >= 0) b |= 0x08 | (static_cast<uint8_t>(s.bit_pointer) & 0x07);
    out[15] = b;
    store_be16(out + 16, s.field_pointer);
  }
  return kFixedSenseBytes;
}

Sense illegal_request(Asc asc) noexcept {
  Sense s;
  s.key = SenseKey::illegal_request;
  s.asc = asc;
  return s;
}

Sense invalid_field_in_cdb(uint16_t byte, int8_t bit) noexcept {
  Sense s = illegal_request(kInvalidFieldInCdb);
  s.sksv = true;
  s.in_cdb = true;
  s.field_pointer = byte;
  s.bit_pointer = bit;
  return s;
}

Sense invalid_field_in_parameters(uint16_t byte, int8_t bit) noexcept {
  Sense s = illegal_request(kInvalidFieldInParameterList);
  s.sksv = true;
  s.in_cdb = false;
  s.field_pointer = byte;
  s.bit_pointer = bit;
  return s;
}

namespace {
ErrorReply check(SenseKey key, Asc asc) noexcept {
  ErrorReply r;
  r.sense.key = key;
  r.sense.asc = asc;
  return r;
}
ErrorReply bare(Status st) noexcept {
  ErrorReply r;
  r.status = st;
  return r;
}
}  // namespace

ErrorReply to_sense(Errc e) noexcept {
  switch (e) {
    case Errc::ok:
      return bare(Status::good);
    case Errc::invalid_argument:
      return check(SenseKey::illegal_request, kInvalidFieldInCdb);
    case Errc::out_of_range:
      return check(SenseKey::illegal_request, kLbaOutOfRange);
    case Errc::io_error:
    case Errc::medium_error:
      return check(SenseKey::medium_error, kUnrecoveredReadError);
    case Errc::no_space:
      return check(SenseKey::data_protect, kSpaceAllocationFailedWriteProtect);
    case Errc::no_memory:
    case Errc::would_block:
    case Errc::busy:
      return bare(Status::busy);
    case Errc::unsupported:
      return check(SenseKey::illegal_request, kInvalidOpcode);
    case Errc::timed_out:
      return check(SenseKey::aborted_command, kCommandTimeout);
    case Errc::cancelled:
      return bare(Status::task_aborted);
    case Errc::closed:
      return check(SenseKey::not_ready, kNotReadyCauseNotReportable);
    case Errc::miscompare:
      return check(SenseKey::miscompare, kMiscompareDuringVerify);
    case Errc::write_protected:
      return check(SenseKey::data_protect, kWriteProtected);
    case Errc::protocol_error:
    case Errc::auth_failed:
    case Errc::not_found:
    case Errc::exists:
      break;
  }
  return check(SenseKey::hardware_error, kInternalTargetFailure);
}

void set_check_condition(ScsiTask& task, const Sense& s) noexcept {
  task.status = Status::check_condition;
  task.sense_bytes = static_cast<uint8_t>(build_sense(s, task.sense));
}

void set_error(ScsiTask& task, Errc e) noexcept {
  ErrorReply r = to_sense(e);
  if (r.status == Status::check_condition) {
    set_check_condition(task, r.sense);
  } else {
    task.status = r.status;
    task.sense_bytes = 0;
  }
}

}  // namespace ferry::scsi
