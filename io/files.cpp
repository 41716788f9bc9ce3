// Whole-file writes: temporary name, write, fsync, rename, fsync of the directory.
#include "io/files.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "core/error.h"
#include "io/location.h"

namespace elbo {
namespace fs = std::filesystem;

std::string temporary_name_for(const std::string& path) {
  return path + ".tmp." + std::to_string(::getpid());
}

bool is_temporary_name_of(const std::string& file_name, const std::string& base_name) {
  const std::string prefix = base_name + ".tmp.";
  if (file_name.size() <= prefix.size() || !file_name.starts_with(prefix)) return false;
  return file_name.find_first_not_of("0123456789", prefix.size()) == std::string::npos;
}

void throw_file_error(const std::string& action, const std::string& what, const std::string& path,
                      int err) {
  const std::string message = "cannot " + action + " " + what + ": " + std::strerror(err) + at(path);
  switch (err) {
    case EACCES: case EPERM: case EROFS: case ENAMETOOLONG: case ENOTDIR: case EISDIR:
    case ELOOP: case EEXIST:
      throw_bad_input(message);
    default:  // ENOSPC, EDQUOT, EIO, ...: the machine's, not the input's
      throw Error(ErrorKind::Internal, message);
  }
}

namespace {

// Errors name `shown` (the file the user knows) rather than `path` (its temporary).
void write_synced(const std::string& path, std::string_view bytes, const std::string& what,
                  const std::string& shown) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) throw_file_error("create", what, shown, errno);
  int err = 0;
  for (size_t done = 0; done < bytes.size() && err == 0;) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n > 0) done += static_cast<size_t>(n);
    else if (n < 0 && errno != EINTR) err = errno;
    else if (n == 0) err = EIO;
  }
  // Delayed allocation reports a full disk as late as fsync or close.
  if (err == 0 && ::fsync(fd) != 0) err = errno;
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err != 0) {
    ::unlink(path.c_str());
    throw_file_error("write", what, shown, err);
  }
}

}  // namespace

void write_new_file_synced(const std::string& path, std::string_view bytes, const std::string& what) {
  write_synced(path, bytes, what, path);
}

std::string iso8601_utc_now() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char s[32];
  std::strftime(s, sizeof s, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return s;
}

void fsync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | (directory ? O_DIRECTORY : 0));
  if (fd < 0) throw_file_error("open", directory ? "the directory" : "the file", path, errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  // Some file systems cannot sync a directory (EINVAL); the renames in it have still happened.
  if (rc != 0 && !(directory && err == EINVAL))
    throw_file_error("sync", directory ? "the directory" : "the file", path, err);
}

void rename_into_place(const std::string& from, const std::string& to, const std::string& what) {
  if (std::rename(from.c_str(), to.c_str()) != 0) {
    const int err = errno;
    ::unlink(from.c_str());
    throw_file_error("rename into place", what, to, err);
  }
  const std::string dir = fs::path(to).parent_path().string();
  fsync_path(dir.empty() ? "." : dir, true);
}

void write_file_atomically(const std::string& path, std::string_view bytes, const std::string& what) {
  const std::string tmp = temporary_name_for(path);
  ::unlink(tmp.c_str());  // a leftover of a crashed process that had our pid: ours by name
  write_synced(tmp, bytes, what, path);
  rename_into_place(tmp, path, what);
}

}  // namespace elbo
