// One writer per directory: an exclusive flock(2) on `<dir>/.elbo.lock`, held for as long as the
// object lives and released by the kernel when the process ends, however it ends, so a crash
// never leaves a stale lock. The file holds the holder's pid and host, for the error the next
// writer sees. The file itself is never removed: unlinking a lock file while another process
// waits on it would let two processes hold "the" lock at once.
#pragma once

#include <filesystem>
#include <string>

namespace elbo {

class DirectoryLock {
 public:
  // Creates `dir` (and its parents) when missing, then takes the lock, or throws BadInput
  // "<what> is in use by another elbo process (pid N on host H) (<dir>)". `what` names the
  // directory for the user ("output.dir", "--out").
  static DirectoryLock acquire(const std::filesystem::path& dir, const std::string& what);

  DirectoryLock(DirectoryLock&& o) noexcept
      : fd_(o.fd_), created_(o.created_), created_file_(o.created_file_), file_(std::move(o.file_)) {
    o.fd_ = -1;
  }
  DirectoryLock& operator=(DirectoryLock&& o) noexcept;
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;
  ~DirectoryLock();

  static constexpr const char* kFileName = ".elbo.lock";
  // Releases the lock early, removing the lock file when acquire created it: for a directory
  // that turned out not to be one elbo may write into, which must be left as it was found.
  void release_leaving_no_trace();
  // Whether the directory was created by acquire (so an error before anything else was written
  // may remove it again).
  bool created_directory() const { return created_; }

 private:
  DirectoryLock(int fd, bool created, bool created_file, std::filesystem::path file)
      : fd_(fd), created_(created), created_file_(created_file), file_(std::move(file)) {}
  int fd_ = -1;
  bool created_ = false, created_file_ = false;
  std::filesystem::path file_;
};

}  // namespace elbo
