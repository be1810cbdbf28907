// Names for Errc values, for logs and error messages (not the hot path).
#include "datapath/result.h"

namespace ferry {

const char* to_string(Errc e) noexcept {
  switch (e) {
    case Errc::ok:
      return "ok";
    case Errc::invalid_argument:
      return "invalid argument";
    case Errc::out_of_range:
      return "out of range";
    case Errc::io_error:
      return "I/O error";
    case Errc::no_space:
      return "no space";
    case Errc::no_memory:
      return "no memory";
    case Errc::unsupported:
      return "unsupported";
    case Errc::would_block:
      return "would block";
    case Errc::timed_out:
      return "timed out";
    case Errc::cancelled:
      return "cancelled";
    case Errc::busy:
      return "busy";
    case Errc::closed:
      return "closed";
    case Errc::protocol_error:
      return "protocol error";
    case Errc::auth_failed:
      return "authentication failed";
    case Errc::miscompare:
      return "miscompare";
    case Errc::not_found:
      return "not found";
    case Errc::exists:
      return "exists";
    case Errc::write_protected:
      return "write protected";
    case Errc::medium_error:
      return "medium error";
  }
  return "unknown";
}

}  // namespace ferry
