// What a CUDA thread costs the emulator's kernel executor (tests/emulator): an empty kernel and
// one with a __syncthreads, 1000 blocks of 256 threads, the best of five runs. Built in the
// EMULATED configuration only.
#include <algorithm>
#include <chrono>
#include <cstdio>

#include "elbo_emu/device.h"

namespace {

void empty_kernel() {}
void one_barrier() { __syncthreads(); }

double ns_per_thread(const char* name, void (*kernel)(), unsigned blocks, unsigned threads) {
  elbo_emu::KernelLaunch launch;
  launch.name = name;
  launch.grid = dim3(blocks);
  launch.block = dim3(threads);
  launch.thread_body = elbo_emu::detail::thread_body(kernel);
  if (elbo_emu::execute_kernel(launch) != cudaSuccess) return -1.0;  // also warms the fiber pool
  double best = 1e300;
  for (int run = 0; run < 5; ++run) {
    const auto start = std::chrono::steady_clock::now();
    if (elbo_emu::execute_kernel(launch) != cudaSuccess) return -1.0;
    best = std::min(
        best,
        std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count());
  }
  return best / (static_cast<double>(blocks) * threads);
}

}  // namespace

int main() {
  constexpr unsigned kBlocks = 1000, kThreads = 256;
  const double empty = ns_per_thread("empty_kernel", &empty_kernel, kBlocks, kThreads);
  const double barrier = ns_per_thread("one_barrier", &one_barrier, kBlocks, kThreads);
  if (empty < 0 || barrier < 0) {
    std::fprintf(stderr, "emu_kernel_bench: a kernel failed: %s\n", elbo_emu::last_fault().c_str());
    return 1;
  }
  std::printf(
      "{\"blocks\": %u, \"threads\": %u, \"empty_ns_per_thread\": %.1f, "
      "\"one_barrier_ns_per_thread\": %.1f}\n",
      kBlocks, kThreads, empty, barrier);
  return 0;
}
