// The journal's and the redo log's backing file: opened, or created with its space reserved
// when missing or empty (one place for both logs). The caller opens it for I/O afterwards.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>

#include "datapath/result.h"

namespace ferry::journal {

// True when the file was created (or was empty) and `size_bytes` were reserved; false when it
// already held a log. `what` names the log in messages ("journal", "redo log").
inline Result<bool> create_or_open_log_file(const char* what, const std::string& path,
                                            uint64_t size_bytes, uint64_t min_bytes) noexcept {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    std::fprintf(stderr, "ferry: %s %s: %s\n", what, path.c_str(), std::strerror(errno));
    return Errc::io_error;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    return Errc::io_error;
  }
  bool fresh = false;
  if (S_ISREG(st.st_mode) && st.st_size == 0) {
    if (size_bytes < min_bytes) {
      ::close(fd);
      std::fprintf(stderr, "ferry: %s %s: size %" PRIu64 " is below %" PRIu64 " bytes\n", what,
                   path.c_str(), size_bytes, min_bytes);
      return Errc::invalid_argument;
    }
    const int e = posix_fallocate(fd, 0, off_t(size_bytes));
    if (e != 0) {
      ::close(fd);
      std::fprintf(stderr, "ferry: %s %s: cannot reserve %" PRIu64 " bytes: %s\n", what,
                   path.c_str(), size_bytes, std::strerror(e));
      return e == ENOSPC ? Errc::no_space : Errc::io_error;
    }
    fresh = true;
  }
  ::close(fd);
  return fresh;
}

}  // namespace ferry::journal
