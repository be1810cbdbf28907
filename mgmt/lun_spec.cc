// LUN specification parsing and device opening (see lun_spec.h). Start-up only.
#include "mgmt/lun_spec.h"

#include <sys/xattr.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "datapath/file_device.h"
#include "datapath/ram_device.h"

namespace ferry::mgmt {

static bool parse_block_size(const std::string& s, uint32_t& out) {
  if (s == "512")
    out = 512;
  else if (s == "4096" || s == "4KiB" || s == "4K")
    out = 4096;
  else
    return false;
  return true;
}

std::string parse_lun_spec(const std::string& text, LunSpec& out) {
  out = LunSpec{};
  if (text.rfind("ram:", 0) == 0) {
    out.kind = LunSpec::Kind::ram;
    std::string rest = text.substr(4);
    std::string size = rest, bs;
    if (auto colon = rest.find_first_of(":,"); colon != std::string::npos) {
      size = rest.substr(0, colon);
      bs = rest.substr(colon + 1);
      if (bs.rfind("bs=", 0) == 0) bs = bs.substr(3);
    }
    auto r = parse_size_bytes(size);
    if (!r.ok() || r.value() == 0) return "bad RAM LUN size '" + size + "' (e.g. ram:1GiB)";
    out.size_bytes = r.value();
    if (!bs.empty() && !parse_block_size(bs, out.block_size_bytes))
      return "bad block size '" + bs + "' (512 or 4096)";
    return {};
  }
  if (text.rfind("file:", 0) == 0) {
    out.kind = LunSpec::Kind::file;
    std::string rest = text.substr(5);
    size_t comma = rest.find(',');
    out.path = rest.substr(0, comma);
    if (out.path.empty()) return "file LUN needs a path (file:/path/to/image)";
    while (comma != std::string::npos) {
      size_t next = rest.find(',', comma + 1);
      std::string opt =
          rest.substr(comma + 1, next == std::string::npos ? std::string::npos : next - comma - 1);
      if (opt.rfind("uuid=", 0) == 0) {
        out.uuid = Uuid::parse(opt.substr(5));
        if (!out.uuid)
          return "bad uuid '" + opt.substr(5) + "' (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)";
      } else if (opt == "direct")
        out.direct_io = true;
      else if (opt == "ro")
        out.read_only = true;
      else if (opt.rfind("bs=", 0) == 0) {
        if (!parse_block_size(opt.substr(3), out.block_size_bytes))
          return "bad block size '" + opt.substr(3) + "' (512 or 4096)";
      } else {
        return "unknown file LUN option '" + opt + "' (bs=512|4096, direct, ro, uuid=UUID)";
      }
      comma = next;
    }
    return {};
  }
  return "unknown LUN kind in '" + text + "' (ram:SIZE or file:PATH)";
}

std::unique_ptr<BlockDevice> open_lun(const LunSpec& spec, std::string& error) {
  if (spec.kind == LunSpec::Kind::ram) {
    auto r = RamDevice::create(spec.size_bytes, spec.block_size_bytes);
    if (!r.ok()) {
      error = std::string("cannot create RAM LUN: ") + to_string(r.error());
      return nullptr;
    }
    return std::move(r).value();
  }
  FileDeviceOptions o;
  o.direct_io = spec.direct_io;
  o.read_only = spec.read_only;
  o.block_size_bytes = spec.block_size_bytes;
  auto r = FileDevice::open(spec.path, o);
  if (!r.ok()) {
    error = "cannot open " + spec.path + ": " + to_string(r.error());
    return nullptr;
  }
  return std::move(r).value();
}

std::string lun_uuid(const LunSpec& spec, Uuid& out) {
  if (spec.uuid) {
    out = *spec.uuid;
    return {};
  }
  if (spec.kind == LunSpec::Kind::ram) {
    out = Uuid::random();
    return {};
  }
  static constexpr const char* kXattr = "user.ferry.uuid";
  char text[64] = {};
  const ssize_t n = ::getxattr(spec.path.c_str(), kXattr, text, sizeof text - 1);
  if (n > 0) {
    auto u = Uuid::parse(std::string_view(text, size_t(n)));
    if (!u)
      return "extended attribute " + std::string(kXattr) + " of " + spec.path + " is not a UUID";
    out = *u;
    return {};
  }
  const bool no_xattrs = n < 0 && (errno == ENOTSUP || errno == EPERM);
  const std::string sidecar = spec.path + ".ferry-uuid";
  if (std::ifstream in(sidecar); in) {
    std::string line;
    std::getline(in, line);
    auto u = Uuid::parse(line);
    if (!u) return sidecar + " does not hold a UUID";
    out = *u;
    return {};
  }
  out = Uuid::random();
  const std::string t = out.to_string();
  if (!no_xattrs && ::setxattr(spec.path.c_str(), kXattr, t.data(), t.size(), XATTR_CREATE) == 0)
    return {};
  std::ofstream o(sidecar);
  o << t << "\n";
  if (!o.flush()) return "cannot keep the LUN's UUID: " + sidecar + ": " + std::strerror(errno);
  return {};
}

}  // namespace ferry::mgmt
