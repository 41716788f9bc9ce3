// `elbo prepare`: turns source files (IDX today) into HDF5 shards.
#pragma once

#include <string>

namespace elbo {

struct PrepareOptions {
  std::string from = "idx";
  std::string images, labels, out;
  int shards = 1;
};

int run_prepare(const PrepareOptions& options);

}  // namespace elbo
