// The kernel side of the CUDA emulator: threadIdx and friends, __syncthreads, static shared memory
// and kernel launches, for device code compiled by the C++ compiler (via core/cuda/launch.h).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "elbo_emu/emulator.h"

namespace elbo_emu::detail {

// The running CUDA thread's built-in variables, set by the executor before it resumes a thread.
// constinit spares every access a TLS wrapper call; a barrier is an opaque call, so the compiler
// reloads them after each __syncthreads rather than keeping another thread's values.
struct Builtins {
  uint3 thread_idx{0, 0, 0};
  uint3 block_idx{0, 0, 0};
  dim3 block_dim{1, 1, 1};
  dim3 grid_dim{1, 1, 1};
};
extern constinit thread_local Builtins builtins;

// __syncthreads at a barrier site (file:line); kernel.cpp.
void sync_threads(const char* file, int line);
// This block's array for the declaration site `tag`, 0xFF-filled at its first use in each block.
void* static_shared(const void* tag, size_t bytes, size_t align, const char* file, int line);

template <typename T>
dim3 to_dim3(const T& v) {
  if constexpr (std::is_integral_v<T>) {
    return dim3(static_cast<unsigned>(v));  // a negative count becomes huge: rejected at launch
  } else {
    return dim3(v);
  }
}

// One CUDA thread of `kernel` on `args`, frozen by value now; each call gets fresh copies of the
// parameters, as each CUDA thread may change its own. The arguments convert as in a call.
template <typename... P>
std::function<void()> thread_body(void (*kernel)(P...), std::type_identity_t<P>... args) {
  return [kernel, frozen = std::tuple<P...>(std::move(args)...)] { std::apply(kernel, frozen); };
}

// What ELBO_LAUNCH(...) returns; calling it is the <<<...>>>(args) of the launch.
template <typename... P>
class Launcher {
 public:
  Launcher(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t shared_bytes,
           cudaStream_t stream)
      : name_(name),
        kernel_(kernel),
        grid_(grid),
        block_(block),
        shared_(shared_bytes),
        stream_(stream) {}

  void operator()(P... args) const {
    KernelLaunch launch;
    launch.name = name_;
    launch.grid = grid_;
    launch.block = block_;
    launch.dynamic_shared = shared_;
    int index = 0;
    const auto check = [&](const auto& arg) {
      if constexpr (std::is_pointer_v<std::decay_t<decltype(arg)>>)
        if (launch.host_pointer_argument.empty() && !reachable_from_device(arg))
          launch.host_pointer_argument = "argument " + std::to_string(index) + " (" +
                                         std::to_string(reinterpret_cast<uintptr_t>(arg)) + ")";
      ++index;
    };
    (check(args), ...);
    launch.thread_body = thread_body(kernel_, std::move(args)...);
    launch_kernel(std::move(launch), stream_);
  }

 private:
  const char* name_;
  void (*kernel_)(P...);
  dim3 grid_, block_;
  size_t shared_;
  cudaStream_t stream_;
};

}  // namespace elbo_emu::detail

namespace elbo_emu {

template <typename... P, typename Grid, typename Block>
detail::Launcher<P...> launcher(const char* name, void (*kernel)(P...), const Grid& grid,
                                const Block& block, size_t shared_bytes, cudaStream_t stream) {
  return {name, kernel, detail::to_dim3(grid), detail::to_dim3(block), shared_bytes, stream};
}

}  // namespace elbo_emu

// The CUDA headers declare these as extern variables for the host compiler; in the emulator they
// are the running fiber's, and read-only as on the device.
#define threadIdx (static_cast<const ::uint3&>(::elbo_emu::detail::builtins.thread_idx))
#define blockIdx (static_cast<const ::uint3&>(::elbo_emu::detail::builtins.block_idx))
#define blockDim (static_cast<const ::dim3&>(::elbo_emu::detail::builtins.block_dim))
#define gridDim (static_cast<const ::dim3&>(::elbo_emu::detail::builtins.grid_dim))

#define __syncthreads() ::elbo_emu::detail::sync_threads(__FILE__, __LINE__)

// The static tag's address names the declaration site: one per function and template instance.
#define ELBO_EMU_SHARED(type, name, count)                                                       \
  static char name##_elbo_emu_site;                                                              \
  type* const name = static_cast<type*>(::elbo_emu::detail::static_shared(                       \
      &name##_elbo_emu_site, sizeof(type) * static_cast<size_t>(count), alignof(type), __FILE__, \
      __LINE__))

// Device code calls these unqualified, as nvcc provides them globally.
using std::isfinite;
using std::isinf;
using std::isnan;
