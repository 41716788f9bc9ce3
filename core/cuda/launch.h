// Kernel launches and static shared memory, the two places where CUDA syntax differs between
// nvcc and the CUDA emulator (tests/emulator), which builds the same sources with the C++ compiler.
//   ELBO_LAUNCH(kernel, grid, block, shared_bytes, stream)(args...)  is  kernel<<<...>>>(args...)
//   ELBO_SHARED(float, name, N);                                     is  __shared__ float name[N];
#pragma once

#if defined(ELBO_CUDA_EMULATED)
#include "elbo_emu/device.h"
#define ELBO_LAUNCH(kernel, grid, block, shared_bytes, stream) \
  ::elbo_emu::launcher(#kernel, kernel, grid, block, shared_bytes, stream)
#define ELBO_SHARED(type, name, count) ELBO_EMU_SHARED(type, name, count)
#else
#define ELBO_LAUNCH(kernel, grid, block, shared_bytes, stream) \
  kernel<<<grid, block, shared_bytes, stream>>>
#define ELBO_SHARED(type, name, count) __shared__ type name[count]
#endif
