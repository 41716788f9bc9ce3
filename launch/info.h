// `elbo info CHECKPOINT`: what a checkpoint holds, as one JSON line (optionally every parameter).
#pragma once

#include <string>

namespace elbo {

int run_info(const std::string& checkpoint, bool print_params);

}  // namespace elbo
