// Per-epoch permutations from counter-based random numbers.
#include "io/sampler.h"

#include <numeric>
#include <utility>

#include "core/error.h"
#include "core/philox.h"

namespace elbo {

std::vector<int64_t> epoch_permutation(uint64_t seed, int64_t epoch, int64_t n) {
  ELBO_CHECK(n >= 0 && n <= int64_t{0xffffffff}, "data sets are limited to 2^32 - 1 samples");
  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), int64_t{0});
  const RngKey key = rng_key(seed);
  for (int64_t i = n - 1; i > 0; --i) {
    const Philox4 d = philox_draw(key, static_cast<uint32_t>(i), static_cast<uint32_t>(epoch), 0,
                                  RngStream::Shuffle);
    const uint32_t j = uniform_below(d.v[0], static_cast<uint32_t>(i + 1));
    std::swap(perm[static_cast<size_t>(i)], perm[j]);
  }
  return perm;
}

}  // namespace elbo
