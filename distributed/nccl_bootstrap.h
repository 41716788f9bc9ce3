// The NCCL bootstrap, kept apart from NCCL so it is tested on the CPU: rank 0 makes the unique id
// and the control plane (MPI) carries its bytes to every rank.
#pragma once

#include <functional>
#include <vector>

#include "distributed/communicator.h"

namespace elbo {

// Rank 0 calls make_id() exactly once; every rank returns its bytes. The length travels first, so
// ranks agree on it without knowing it in advance. A collective: every rank of `control` calls it.
std::vector<unsigned char> share_unique_id(
    Communicator& control, const std::function<std::vector<unsigned char>()>& make_id);

}  // namespace elbo
