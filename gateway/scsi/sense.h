// Sense data (SPC-4 fixed format, response code 0x70) and the one table mapping device errors
// (Errc) to SCSI status and sense. Pure functions, any thread.
#pragma once

#include <cstddef>
#include <cstdint>

#include "datapath/result.h"
#include "gateway/scsi/task.h"

namespace ferry::scsi {

enum class SenseKey : uint8_t {
  no_sense = 0x0,
  recovered_error = 0x1,
  not_ready = 0x2,
  medium_error = 0x3,
  hardware_error = 0x4,
  illegal_request = 0x5,
  unit_attention = 0x6,
  data_protect = 0x7,
  aborted_command = 0xb,
  miscompare = 0xe,
};

// Additional sense code + qualifier.
struct Asc {
  uint8_t asc = 0;
  uint8_t ascq = 0;
  friend bool operator==(Asc, Asc) = default;
};

inline constexpr Asc kNoAdditionalSense{0x00, 0x00};
inline constexpr Asc kNotReadyCauseNotReportable{0x04, 0x00};
inline constexpr Asc kWriteError{0x0c, 0x00};
inline constexpr Asc kUnrecoveredReadError{0x11, 0x00};
inline constexpr Asc kParameterListLengthError{0x1a, 0x00};
inline constexpr Asc kMiscompareDuringVerify{0x1d, 0x00};
inline constexpr Asc kInvalidOpcode{0x20, 0x00};
inline constexpr Asc kLbaOutOfRange{0x21, 0x00};
inline constexpr Asc kInvalidFieldInCdb{0x24, 0x00};
inline constexpr Asc kLunNotSupported{0x25, 0x00};
inline constexpr Asc kInvalidFieldInParameterList{0x26, 0x00};
inline constexpr Asc kParameterValueInvalid{0x26, 0x02};
inline constexpr Asc kInvalidReleaseOfPr{0x26, 0x04};
inline constexpr Asc kWriteProtected{0x27, 0x00};
inline constexpr Asc kSpaceAllocationFailedWriteProtect{0x27, 0x07};
inline constexpr Asc kPowerOnResetOccurred{0x29, 0x00};
inline constexpr Asc kBusDeviceResetOccurred{0x29, 0x03};
inline constexpr Asc kItNexusLossOccurred{0x29, 0x07};
inline constexpr Asc kModeParametersChanged{0x2a, 0x01};
inline constexpr Asc kReservationsPreempted{0x2a, 0x03};
inline constexpr Asc kReservationsReleased{0x2a, 0x04};
inline constexpr Asc kRegistrationsPreempted{0x2a, 0x05};
inline constexpr Asc kSavingParametersNotSupported{0x39, 0x00};
inline constexpr Asc kInternalTargetFailure{0x44, 0x00};
inline constexpr Asc kCommandTimeout{0x2e, 0x00};

struct Sense {
  SenseKey key = SenseKey::no_sense;
  Asc asc;
  bool info_valid = false;
  uint32_t information = 0;  // e.g. miscompare offset
  // Sense-key specific field pointer (ILLEGAL REQUEST): which byte/bit was wrong.
  bool sksv = false;
  bool in_cdb = true;          // C/D bit: 1 = CDB, 0 = parameter data
  uint16_t field_pointer = 0;  // byte
  int8_t bit_pointer = -1;     // -1: no BPV
};

inline constexpr size_t kFixedSenseBytes = 18;

// Writes fixed-format sense into out[0, 18). Returns 18.
size_t build_sense(const Sense& s, uint8_t* out) noexcept;

// Convenience constructors.
Sense illegal_request(Asc asc) noexcept;
Sense invalid_field_in_cdb(uint16_t byte, int8_t bit = -1) noexcept;
Sense invalid_field_in_parameters(uint16_t byte, int8_t bit = -1) noexcept;

// The one table from device errors to the wire. `status` is check_condition for errors that carry
// sense; busy/task_aborted otherwise.
struct ErrorReply {
  Status status = Status::check_condition;
  Sense sense;
};
ErrorReply to_sense(Errc e) noexcept;

// Sets CHECK CONDITION and the sense bytes on a task.
void set_check_condition(ScsiTask& task, const Sense& s) noexcept;
// Status + sense from a device error (never Errc::ok).
void set_error(ScsiTask& task, Errc e) noexcept;

}  // namespace ferry::scsi
