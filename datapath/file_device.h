// FileDevice: a volume backed by a regular file or block device, I/O through the calling
// thread's io_uring reactor (reads, writes with RWF_DSYNC for FUA, fdatasync for FLUSH,
// fallocate for DISCARD / WRITE ZEROES). Shared by reactor threads: each request runs on the
// ring of the thread that submitted it and completes there. Without a reactor on the calling
// thread (unit tests, tools) it falls back to synchronous syscalls.
// O_DIRECT when asked: buffers must then be 4 KiB aligned (BufferPool buffers are).
// Block status uses lseek(SEEK_DATA/SEEK_HOLE), a metadata-only call answered from the inode:
// the one synchronous syscall this device makes on a reactor thread.
#pragma once

#include <memory>
#include <string>

#include "datapath/block_device.h"

namespace ferry {

struct FileDeviceOptions {
  bool direct_io = false;  // O_DIRECT
  bool read_only = false;
  uint32_t block_size_bytes = 512;
};

class FileDevice final : public BlockDevice {
 public:
  static Result<std::unique_ptr<FileDevice>> open(const std::string& path,
                                                  const FileDeviceOptions& options) noexcept;
  ~FileDevice() override;

  Geometry geometry() const noexcept override { return geometry_; }
  void submit(IoRequest& req) noexcept override;
  std::string_view describe() const noexcept override { return description_; }
  int fd() const noexcept { return fd_; }

 private:
  FileDevice() noexcept = default;
  void submit_sync(IoRequest& req) noexcept;
  void block_status(IoRequest& req) noexcept;

  int fd_ = -1;
  Geometry geometry_;
  std::string description_;
};

}  // namespace ferry
