// The one line and exit code an exception that ends a command becomes (main and every rank).
#pragma once

#include <exception>
#include <string>

namespace elbo {

struct ErrorReport {
  std::string message;  // `<what> (<where>)`, printed after "elbo: error: "
  int exit_code = 1;    // 2 for bad input, 1 otherwise
};

// An elbo::Error as it is. std::bad_alloc and std::filesystem::filesystem_error should be caught
// where they happen and given context; those that are not still become `<what> (<where>)` lines
// with exit code 2 (an allocation too large for the machine, a path that cannot be used). Anything
// else is an internal error.
ErrorReport report_of(const std::exception_ptr& e);

}  // namespace elbo
