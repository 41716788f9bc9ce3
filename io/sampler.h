// Which samples each step sees: a permutation of all sample indices per epoch, drawn from
// (seed, epoch) with Philox, so every rank computes the same order without talking.
#pragma once

#include <cstdint>
#include <vector>

namespace elbo {

// Fisher-Yates shuffle of 0..n-1 driven by Philox counters (i, epoch) in the Shuffle stream.
std::vector<int64_t> epoch_permutation(uint64_t seed, int64_t epoch, int64_t n);

}  // namespace elbo
