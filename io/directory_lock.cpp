// flock(2) on a lock file in the directory (see directory_lock.h).
#include "io/directory_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"
#include "io/files.h"
#include "io/location.h"

namespace elbo {
namespace fs = std::filesystem;

namespace {

std::string holder_of(int fd) {
  char text[256] = {};
  const ssize_t n = ::pread(fd, text, sizeof text - 1, 0);
  std::string s(text, n > 0 ? static_cast<size_t>(n) : 0);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\0')) s.pop_back();
  return s.empty() ? "pid unknown" : s;
}

}  // namespace

DirectoryLock DirectoryLock::acquire(const fs::path& dir, const std::string& what) {
  std::error_code ec;
  const bool existed = fs::exists(fs::symlink_status(dir, ec));
  if (existed && !fs::is_directory(dir, ec))
    throw_bad_input(what + " exists and is not a directory" + at(dir.string()));
  if (!existed) {
    fs::create_directories(dir, ec);
    if (ec) throw_file_error("create", what, dir.string(), ec.value());
  }
  const fs::path path = dir / kFileName;
  const bool file_existed = exists(fs::symlink_status(path, ec));
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) throw_file_error("open the lock file of", what, path.string(), errno);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    const std::string holder = holder_of(fd);
    ::close(fd);
    if (err == EWOULDBLOCK)
      throw_bad_input(what + " is in use by another elbo process (" + holder +
                      "); wait for it to end, or choose another directory" + at(dir.string()));
    throw_file_error("lock", what, path.string(), err);
  }
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "?");
  const std::string me = "pid " + std::to_string(::getpid()) + " on host " + host + "\n";
  // Only the holder writes, so a reader sees the last holder's line (or a moment's empty file).
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, me.data(), me.size(), 0) < 0) {
    const int err = errno;
    ::close(fd);
    throw_file_error("write the lock file of", what, path.string(), err);
  }
  return DirectoryLock(fd, !existed, !file_existed, path);
}

DirectoryLock& DirectoryLock::operator=(DirectoryLock&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    created_ = o.created_;
    created_file_ = o.created_file_;
    file_ = std::move(o.file_);
    o.fd_ = -1;
  }
  return *this;
}

void DirectoryLock::release_leaving_no_trace() {
  if (fd_ < 0) return;
  // Used only for a directory that no elbo process may write into: one that locks the unlinked
  // file after us refuses the directory just as this one did.
  if (created_file_) ::unlink(file_.c_str());
  ::close(fd_);
  fd_ = -1;
  if (created_) {
    std::error_code ec;
    fs::remove(file_.parent_path(), ec);  // only if empty
  }
}

DirectoryLock::~DirectoryLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the last descriptor releases the lock
}

}  // namespace elbo
