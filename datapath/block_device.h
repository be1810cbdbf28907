// BlockDevice: the one stackable interface below the protocol front ends (SPDK bdev / nbdkit
// filter style). Backends (RAM, file, later NBD client and WAN remote), cache tiers, the journal
// and test devices (fault, delay) all implement it, usually over a `next` device.
//
// Threading: a device may be shared by several reactor threads. submit() is called on a reactor
// thread; the completion callback runs on that same thread, either inside submit() (synchronous
// devices such as RAM) or later from that thread's reactor loop. Callers must therefore be ready
// for the callback to run before submit() returns.
//
// Ownership: the submitter owns the IoRequest and the data buffer it points to; both must stay
// valid until on_complete has been called. Devices never allocate per I/O on the hot path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "datapath/result.h"

namespace ferry {

struct Geometry {
  uint64_t block_count = 0;
  uint32_t block_size_bytes = 512;  // logical block size: 512 or 4096
  uint32_t max_transfer_bytes = 32u << 20;
  bool read_only = false;
  bool can_discard = false;     // deallocation (UNMAP / TRIM) frees space
  bool discard_zeroes = false;  // reads of discarded blocks return zeroes (LBPRZ)
  bool volatile_cache = false;  // acknowledged writes need FLUSH (or FUA) to be durable
  // IoOp::block_status costs a round trip to another host (the WAN remote): front ends must not
  // ask it before every READ just to send holes as holes, or each read miss pays twice.
  bool block_status_remote = false;
  uint64_t size_bytes() const noexcept { return block_count * block_size_bytes; }
};

enum class IoOp : uint8_t {
  read,          // fill data[0, length_bytes)
  write,         // store data[0, length_bytes)
  flush,         // make every completed write durable; offset/length ignored
  discard,       // deallocate; contents afterwards are zero if discard_zeroes, else undefined
  write_zeroes,  // make the range read as zeroes; may deallocate if may_deallocate
  block_status,  // describe the extent starting at offset_bytes (see status_* fields)
  // The device's learned access map (the order in which its volume's chunks were first read,
  // e.g. while a VM booted; the WAN remote fetches it from the datacenter edge): `data`
  // receives up to length_bytes / 8 big-endian u64 byte offsets, status_length_bytes says how
  // many bytes were filled. Devices without one answer unsupported; layers pass it down.
  access_map,
};

// Flags reported by IoOp::block_status.
inline constexpr uint32_t kStatusHole = 1u << 0;  // not allocated
inline constexpr uint32_t kStatusZero = 1u << 1;  // reads as zeroes

// How urgent a request is, for layers that schedule (the WAN link has one class per value, same
// order: datapath/wan/frame.h Priority). A cache passes its caller's priority to the fetch it
// starts; a prefetcher marks its own reads `prefetch`, a full-disk streamer `background`.
enum class IoPriority : uint8_t { demand = 0, write_back = 1, prefetch = 2, background = 3 };

struct IoRequest;
using IoCallback = void (*)(IoRequest&) noexcept;

struct IoRequest {
  IoOp op = IoOp::read;
  bool fua = false;             // write / write_zeroes: durable before completion
  bool may_deallocate = false;  // write_zeroes: the device may punch a hole
  IoPriority priority = IoPriority::demand;
  uint64_t offset_bytes = 0;
  uint64_t length_bytes = 0;
  std::byte* data = nullptr;  // read destination / write source, length_bytes long
  // read: the submitter also accepts the device's own copy of the bytes. A device that holds the
  // data in memory may then set `lent` instead of filling `data` (which it leaves untouched).
  // `lent` stays readable for the device's lifetime, but later writes may change the bytes, so
  // the submitter must be done with them (e.g. copied into a socket) before it reports the read
  // complete to anyone who could then issue an overlapping write and expect the old data.
  // A device that forwards a copy of the request must hand `lent` back with the result.
  bool may_lend = false;
  const std::byte* lent = nullptr;

  // Filled by the device for IoOp::block_status: the first extent at offset_bytes that shares
  // one status, at most length_bytes long (never 0 on success).
  uint64_t status_length_bytes = 0;
  uint32_t status_flags = 0;

  // Write-back epochs (journal/DESIGN.md "Epochs"). A write / write_zeroes with `epoch_write`
  // belongs to its writer's open epoch: a device that keeps epochs (the datacenter edge's redo
  // log) holds it aside until the epoch commits; every other device treats it as a plain write
  // and layers pass the flag on. A flush with `epoch_id` != 0 commits that epoch: all its writes
  // become durable on the image together, or none do; `epoch_stream` names the writer (its
  // journal's nonce), `length_bytes` is the sum of the epoch's write lengths. A device without
  // epochs treats it as a plain flush.
  bool epoch_write = false;
  uint64_t epoch_id = 0;
  uint64_t epoch_stream = 0;

  Errc result = Errc::ok;
  IoCallback on_complete = nullptr;
  void* owner = nullptr;  // free for the submitter (e.g. the task that embeds this request)

  void complete(Errc e) noexcept {
    result = e;
    on_complete(*this);
  }
};

class BlockDevice {
 public:
  virtual ~BlockDevice() = default;
  virtual Geometry geometry() const noexcept = 0;
  // Starts the I/O; completion through req.on_complete (see the threading note above).
  virtual void submit(IoRequest& req) noexcept = 0;
  // Short description for logs and `ferry` listings, e.g. "ram:1GiB".
  virtual std::string_view describe() const noexcept = 0;
};

// Range check shared by devices: offset/length inside the device and block aligned.
inline Errc check_range(const Geometry& g, uint64_t offset_bytes, uint64_t length_bytes) noexcept {
  const uint64_t size = g.size_bytes();
  if (offset_bytes > size || length_bytes > size - offset_bytes) return Errc::out_of_range;
  if ((offset_bytes | length_bytes) % g.block_size_bytes != 0) return Errc::invalid_argument;
  return Errc::ok;
}

}  // namespace ferry
