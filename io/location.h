// Where a bad input is: the tail of every BadInput message, which reads `<what> (<where>)`.
#pragma once

#include <string>

namespace elbo {

// " (where)", to append to what is wrong: throw_bad_input("shard has 0 rows" + at(path)).
inline std::string at(const std::string& where) { return " (" + where + ")"; }

// " (path:object)", for a dataset, tensor or attribute's object inside an HDF5 file.
inline std::string at(const std::string& path, const std::string& object) {
  return at(path + ":" + object);
}

}  // namespace elbo
