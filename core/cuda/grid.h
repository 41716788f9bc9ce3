// Launch geometry for the CUDA kernels, in plain C++ (no CUDA headers) so that it is compiled and
// tested on machines without the toolkit or a GPU.
#pragma once

#include <cstddef>

namespace elbo {

// Threads per block for every kernel; a power of two, as the block reductions require.
inline constexpr int kThreadsPerBlock = 256;
// Every kernel loops grid-stride, so capping the grid loses no work: 65535 blocks of 256 threads
// are many times what an A100 or H100 keeps resident, and within every device's grid limit.
inline constexpr int kMaxBlocks = 65535;

// Blocks for n work items: ceil(n / threads), clamped to [1, kMaxBlocks]. An empty range still gets
// one block (whose threads do nothing), since a launch with zero blocks is an error.
constexpr int launch_blocks(size_t n, int threads) {
  const size_t t = threads > 0 ? static_cast<size_t>(threads) : 1;
  const size_t blocks = n / t + (n % t != 0 ? 1 : 0);  // no overflow near SIZE_MAX
  if (blocks < 1) return 1;
  if (blocks > static_cast<size_t>(kMaxBlocks)) return kMaxBlocks;
  return static_cast<int>(blocks);
}

}  // namespace elbo
