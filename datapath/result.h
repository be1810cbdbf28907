// Error values for every layer: a small Errc enum and an expected-like Result<T>.
// Header-only, usable from any thread. Operating errors travel as values; bugs assert.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <new>
#include <type_traits>
#include <utility>

#include "datapath/assert.h"

namespace ferry {

enum class Errc : uint8_t {
  ok = 0,
  invalid_argument,  // caller passed something malformed
  out_of_range,      // LBA / offset beyond the device
  io_error,          // the medium or a lower layer failed
  no_space,          // device or pool full
  no_memory,         // bounded pool exhausted
  unsupported,       // operation not implemented by this device
  would_block,       // try again later (back-pressure)
  timed_out,
  cancelled,       // aborted by task management or shutdown
  busy,            // resource held (reservation conflict, ...)
  closed,          // peer or device gone
  protocol_error,  // peer broke the protocol
  auth_failed,
  miscompare,  // COMPARE AND WRITE / VERIFY mismatch
  not_found,
  exists,
  write_protected,
  medium_error,  // unrecoverable read/write error on the medium
};

const char* to_string(Errc e) noexcept;

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) noexcept(std::is_nothrow_move_constructible_v<T>)  // NOLINT: implicit by design
      : errc_(Errc::ok) {
    new (&storage_) T(std::move(value));
  }
  Result(Errc e) noexcept : errc_(e) { FERRY_ASSERT(e != Errc::ok); }  // NOLINT
  Result(Result&& o) noexcept(std::is_nothrow_move_constructible_v<T>) : errc_(o.errc_) {
    if (ok()) new (&storage_) T(std::move(*o.ptr()));
  }
  Result& operator=(Result&& o) noexcept(std::is_nothrow_move_constructible_v<T>) {
    if (this != &o) {
      reset();
      errc_ = o.errc_;
      if (ok()) new (&storage_) T(std::move(*o.ptr()));
    }
    return *this;
  }
  Result(const Result&) = delete;
  Result& operator=(const Result&) = delete;
  ~Result() { reset(); }

  bool ok() const noexcept { return errc_ == Errc::ok; }
  explicit operator bool() const noexcept { return ok(); }
  Errc error() const noexcept { return errc_; }
  T& value() & noexcept {
    FERRY_ASSERT(ok());
    return *ptr();
  }
  const T& value() const& noexcept {
    FERRY_ASSERT(ok());
    return *ptr();
  }
  T&& value() && noexcept {
    FERRY_ASSERT(ok());
    return std::move(*ptr());
  }
  T* operator->() noexcept { return &value(); }
  T& operator*() noexcept { return value(); }

 private:
  T* ptr() noexcept { return std::launder(reinterpret_cast<T*>(&storage_)); }
  const T* ptr() const noexcept { return std::launder(reinterpret_cast<const T*>(&storage_)); }
  void reset() noexcept {
    if (ok()) ptr()->~T();
    errc_ = Errc::cancelled;
  }
  alignas(T) unsigned char storage_[sizeof(T)];
  Errc errc_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() noexcept = default;
  Result(Errc e) noexcept : errc_(e) {}  // NOLINT
  bool ok() const noexcept { return errc_ == Errc::ok; }
  explicit operator bool() const noexcept { return ok(); }
  Errc error() const noexcept { return errc_; }

 private:
  Errc errc_ = Errc::ok;
};

}  // namespace ferry
