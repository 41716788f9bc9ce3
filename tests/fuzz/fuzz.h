// Shared by the fuzz targets: the one outcome malformed input may have besides success (a one-line
// BadInput error of the form `<what> (<where>)`, which elbo turns into its error line and exit
// code 2), and a file holding the input for readers that take a path.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <string>

#include "core/error.h"

namespace elbo::fuzz {

// Ends the process, so that the fuzzer keeps the input that got here.
[[noreturn]] inline void bug(const std::string& what) {
  std::fprintf(stderr, "fuzz: BUG: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

inline void check(bool ok, const std::string& what) {
  if (!ok) bug(what);
}

// The form of every BadInput message: one line, `<what> (<where>)`, without control characters
// (but tabs) that would break the line or cut it short when printed.
inline bool is_error_line(const std::string& m) {
  for (char c : m)
    if (static_cast<unsigned char>(c) < 0x20 && c != '\t') return false;
  if (m.empty() || m.back() != ')') return false;
  const size_t open = m.find(" (");
  return open != std::string::npos && open > 0 && open + 3 < m.size();
}

// How many times accepts() has returned false in this process (replay_main.cpp checks that the
// seed corpus's valid inputs are accepted all the way).
inline long refusals = 0;

// Runs `read`: true when it returned, false when it refused the input with a well-formed BadInput
// error. Anything else (an Internal error, another exception, a malformed message) is a bug.
template <class F>
bool accepts(F&& read) {
  try {
    read();
    return true;
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::BadInput) bug(std::string("internal error: ") + e.what());
    if (!is_error_line(e.what())) bug(std::string("not a '<what> (<where>)' line: ") + e.what());
    ++refusals;
    return false;
  } catch (const std::exception& e) {
    bug(std::string("exception other than elbo::Error: ") + e.what());
  } catch (...) {
    bug("exception of unknown type");
  }
}

// The bytes as a file, for readers that take a path: a new file in /dev/shm (memory; a temporary
// directory where there is none) each time, since HDF5 remembers open files by inode, removed
// afterwards. (HDF5 cannot open a memfd by its /proc/self/fd path.)
class BytesFile {
 public:
  BytesFile(const uint8_t* data, size_t size) {
    std::error_code ec;
    const std::filesystem::path dir = std::filesystem::is_directory("/dev/shm", ec)
                                          ? std::filesystem::path("/dev/shm")
                                          : std::filesystem::temp_directory_path();
    std::string name = (dir / "elbo-fuzz-XXXXXX").string();
    const int fd = mkstemp(name.data());
    check(fd >= 0, "cannot create a file in " + dir.string());
    for (size_t done = 0; done < size;) {
      const ssize_t n = ::write(fd, data + done, size - done);
      check(n > 0, "cannot write " + name);
      done += static_cast<size_t>(n);
    }
    ::close(fd);
    path_ = name;
  }
  BytesFile(const BytesFile&) = delete;
  BytesFile& operator=(const BytesFile&) = delete;
  ~BytesFile() { ::unlink(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace elbo::fuzz
