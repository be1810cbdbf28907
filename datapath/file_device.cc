// FileDevice implementation (see file_device.h). Per-thread free list of in-flight operation
// records (grows to the high-water mark of in-flight I/O, then never allocates again).
#include "datapath/file_device.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "datapath/reactor.h"

namespace ferry {

namespace {

Errc errno_to_errc(int err) noexcept {
  switch (err) {
    case ENOSPC:
      return Errc::no_space;
    case EROFS:
    case EPERM:
    case EACCES:
      return Errc::write_protected;
    case EOPNOTSUPP:
      return Errc::unsupported;
    case ECANCELED:
      return Errc::cancelled;
    case EINVAL:
      return Errc::invalid_argument;
    default:
      return Errc::io_error;
  }
}

// One in-flight file operation; restarts itself on short reads/writes.
class FileOp final : public Operation {
 public:
  void start(int fd, IoRequest* req) noexcept {
    fd_ = fd;
    req_ = req;
    done_bytes_ = 0;
    issue();
  }
  void on_cqe(int32_t res, uint32_t) noexcept override;

 private:
  void issue() noexcept;
  void finish(Errc e) noexcept;

  int fd_ = -1;
  IoRequest* req_ = nullptr;
  uint64_t done_bytes_ = 0;
};

// Per-thread free list of operations (grows to the thread's high-water mark, freed at exit).
struct FreeFileOps {
  std::vector<FileOp*> ops;
  ~FreeFileOps() {
    for (FileOp* op : ops) delete op;
  }
};
thread_local FreeFileOps t_free_ops;

FileOp* take_op() noexcept {
  if (t_free_ops.ops.empty()) return new (std::nothrow) FileOp();
  FileOp* op = t_free_ops.ops.back();
  t_free_ops.ops.pop_back();
  return op;
}

void FileOp::issue() noexcept {
  Reactor* r = Reactor::current();
  io_uring_sqe* sqe = r->get_sqe();
  IoRequest& q = *req_;
  const uint64_t off = q.offset_bytes + done_bytes_;
  const uint64_t left = q.length_bytes - done_bytes_;
  const unsigned len = static_cast<unsigned>(std::min<uint64_t>(left, 1u << 30));
  switch (q.op) {
    case IoOp::access_map:  // answered in submit()
      break;
    case IoOp::read:
      io_uring_prep_read(sqe, fd_, q.data + done_bytes_, len, off);
      break;
    case IoOp::write:
      io_uring_prep_write(sqe, fd_, q.data + done_bytes_, len, off);
      if (q.fua) sqe->rw_flags = RWF_DSYNC;
      break;
    case IoOp::flush:
      io_uring_prep_fsync(sqe, fd_, IORING_FSYNC_DATASYNC);
      break;
    case IoOp::discard:
      io_uring_prep_fallocate(sqe, fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, left);
      break;
    case IoOp::write_zeroes:
      io_uring_prep_fallocate(
          sqe, fd_,
          (q.may_deallocate ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE) | FALLOC_FL_KEEP_SIZE,
          off, left);
      break;
    case IoOp::block_status:
      FERRY_ASSERT(false);
  }
  Reactor::prepare(sqe, this);
}

void FileOp::finish(Errc e) noexcept {
  IoRequest* req = req_;
  req_ = nullptr;
  t_free_ops.ops.push_back(this);
  req->complete(e);
}

void FileOp::on_cqe(int32_t res, uint32_t) noexcept {
  IoRequest& q = *req_;
  if (res < 0) {
    if (res == -EINTR || res == -EAGAIN) return issue();
    return finish(errno_to_errc(-res));
  }
  if (q.op == IoOp::read || q.op == IoOp::write) {
    if (res == 0) {
      // Read past EOF of a file shorter than the device: zero fill. Writes cannot return 0.
      if (q.op == IoOp::read) {
        std::memset(q.data + done_bytes_, 0, q.length_bytes - done_bytes_);
        return finish(Errc::ok);
      }
      return finish(Errc::io_error);
    }
    done_bytes_ += uint64_t(res);
    if (done_bytes_ < q.length_bytes) return issue();
  }
  if (q.op == IoOp::write_zeroes && q.fua) {
    // Make the zeroing durable: chain a datasync.
    q.fua = false;
    q.op = IoOp::flush;
    issue();
    q.op = IoOp::write_zeroes;
    return;
  }
  finish(Errc::ok);
}

}  // namespace

Result<std::unique_ptr<FileDevice>> FileDevice::open(const std::string& path,
                                                     const FileDeviceOptions& options) noexcept {
  if (options.block_size_bytes != 512 && options.block_size_bytes != 4096)
    return Errc::invalid_argument;
  int flags = (options.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  if (options.direct_io) flags |= O_DIRECT;
  int fd = ::open(path.c_str(), flags);
  if (fd < 0) {
    std::fprintf(stderr, "ferry: cannot open %s: %s\n", path.c_str(), std::strerror(errno));
    return errno == ENOENT ? Errc::not_found : errno_to_errc(errno);
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    return Errc::io_error;
  }
  uint64_t size = uint64_t(st.st_size);
  if (S_ISBLK(st.st_mode)) {
    if (ioctl(fd, BLKGETSIZE64, &size) != 0) {
      ::close(fd);
      return Errc::io_error;
    }
  }
  size -= size % options.block_size_bytes;
  if (size == 0) {
    std::fprintf(stderr, "ferry: %s is smaller than one block\n", path.c_str());
    ::close(fd);
    return Errc::invalid_argument;
  }
  std::unique_ptr<FileDevice> dev(new (std::nothrow) FileDevice());
  if (!dev) {
    ::close(fd);
    return Errc::no_memory;
  }
  dev->fd_ = fd;
  dev->geometry_.block_count = size / options.block_size_bytes;
  dev->geometry_.block_size_bytes = options.block_size_bytes;
  dev->geometry_.read_only = options.read_only;
  dev->geometry_.can_discard = S_ISREG(st.st_mode);
  dev->geometry_.discard_zeroes = S_ISREG(st.st_mode);
  dev->geometry_.volatile_cache = true;
  dev->description_ = "file:" + path;
  return dev;
}

FileDevice::~FileDevice() {
  if (fd_ >= 0) ::close(fd_);
}

void FileDevice::block_status(IoRequest& req) noexcept {
  const off_t start = off_t(req.offset_bytes);
  const uint64_t end = req.offset_bytes + req.length_bytes;
  off_t data = lseek(fd_, start, SEEK_DATA);
  if (data < 0 && errno != ENXIO) {
    // No SEEK_DATA support: report everything allocated.
    req.status_length_bytes = req.length_bytes;
    req.status_flags = 0;
    return;
  }
  if (data < 0 || data > start) {
    // A hole at start, up to the next data (or the end of the file).
    uint64_t hole_end = data < 0 ? end : std::min<uint64_t>(end, uint64_t(data));
    req.status_length_bytes = hole_end - req.offset_bytes;
    req.status_flags = kStatusHole | kStatusZero;
  } else {
    off_t hole = lseek(fd_, start, SEEK_HOLE);
    uint64_t data_end = hole < 0 ? end : std::min<uint64_t>(end, uint64_t(hole));
    req.status_length_bytes = data_end - req.offset_bytes;
    req.status_flags = 0;
  }
  // Keep extents block aligned (file systems report in their own block size).
  const uint32_t bs = geometry_.block_size_bytes;
  uint64_t aligned = req.status_length_bytes - req.status_length_bytes % bs;
  if (aligned == 0) {
    aligned = std::min<uint64_t>(bs, req.length_bytes);
    req.status_flags = 0;  // mixed block: call it data
  }
  req.status_length_bytes = aligned;
}

void FileDevice::submit_sync(IoRequest& req) noexcept {
  uint64_t done = 0;
  int rc = 0;
  switch (req.op) {
    case IoOp::access_map:  // answered in submit()
      break;
    case IoOp::read:
    case IoOp::write:
      while (done < req.length_bytes) {
        ssize_t n = req.op == IoOp::read ? pread(fd_, req.data + done, req.length_bytes - done,
                                                 off_t(req.offset_bytes + done))
                                         : pwrite(fd_, req.data + done, req.length_bytes - done,
                                                  off_t(req.offset_bytes + done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return req.complete(errno_to_errc(errno));
        if (n == 0) {
          if (req.op == IoOp::write) return req.complete(Errc::io_error);
          std::memset(req.data + done, 0, req.length_bytes - done);
          break;
        }
        done += uint64_t(n);
      }
      if (req.op == IoOp::write && req.fua) rc = fdatasync(fd_);
      break;
    case IoOp::flush:
      rc = fdatasync(fd_);
      break;
    case IoOp::discard:
    case IoOp::write_zeroes:
      rc = fallocate(fd_,
                     ((req.op == IoOp::discard || req.may_deallocate) ? FALLOC_FL_PUNCH_HOLE
                                                                      : FALLOC_FL_ZERO_RANGE) |
                         FALLOC_FL_KEEP_SIZE,
                     off_t(req.offset_bytes), off_t(req.length_bytes));
      break;
    case IoOp::block_status:
      break;
  }
  req.complete(rc == 0 ? Errc::ok : errno_to_errc(errno));
}

void FileDevice::submit(IoRequest& req) noexcept {
  if (req.op == IoOp::access_map) return req.complete(Errc::unsupported);  // learns nothing
  if (req.op != IoOp::flush) {
    Errc e = check_range(geometry_, req.offset_bytes, req.length_bytes);
    if (e != Errc::ok) return req.complete(e);
  }
  if (geometry_.read_only && req.op != IoOp::read && req.op != IoOp::block_status &&
      req.op != IoOp::flush)
    return req.complete(Errc::write_protected);
  if (req.op == IoOp::block_status) {
    if (req.length_bytes == 0) return req.complete(Errc::invalid_argument);
    block_status(req);
    return req.complete(Errc::ok);
  }
  if ((req.op == IoOp::read || req.op == IoOp::write || req.op == IoOp::discard ||
       req.op == IoOp::write_zeroes) &&
      req.length_bytes == 0)
    return req.complete(Errc::ok);
  if (Reactor::current() == nullptr) return submit_sync(req);
  FileOp* op = take_op();
  if (op == nullptr) return req.complete(Errc::no_memory);
  op->start(fd_, &req);
}

}  // namespace ferry
