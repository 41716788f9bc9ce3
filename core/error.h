// Errors for the whole project: one exception type that says whether the user's input was at
// fault (exit code 2) or something else failed (exit code 1), and the check macro that throws it.
#pragma once

#include <stdexcept>
#include <string>

namespace elbo {

enum class ErrorKind { BadInput, Internal };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& what) : std::runtime_error(what), kind_(kind) {}
  ErrorKind kind() const { return kind_; }
  int exit_code() const { return kind_ == ErrorKind::BadInput ? 2 : 1; }

 private:
  ErrorKind kind_;
};

// A problem with something the user gave us (config, data file, checkpoint, argument). The
// message becomes one line of output, so control characters that the input brought into it (a
// line break in an override or a YAML key) are written as escapes: \n, \r, \xNN.
[[noreturn]] inline void throw_bad_input(const std::string& what) {
  std::string line;
  for (char c : what) {
    if (c == '\n') {
      line += "\\n";
    } else if (c == '\r') {
      line += "\\r";
    } else if (static_cast<unsigned char>(c) < 0x20 && c != '\t') {
      const char* hex = "0123456789ABCDEF";
      line += {'\\', 'x', hex[(c >> 4) & 0xF], hex[c & 0xF]};
    } else {
      line += c;
    }
  }
  throw Error(ErrorKind::BadInput, line);
}

[[noreturn]] inline void throw_internal(const std::string& what, const char* file, int line) {
  throw Error(ErrorKind::Internal, what + " [" + file + ":" + std::to_string(line) + "]");
}

}  // namespace elbo

// Internal invariant: throws with the failing expression and file:line.
#define ELBO_CHECK(cond, msg)                                                               \
  do {                                                                                      \
    if (!(cond)) ::elbo::throw_internal(std::string(msg) + " (check failed: " #cond ")",   \
                                        __FILE__, __LINE__);                                \
  } while (0)
