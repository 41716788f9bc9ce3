// ELBO_HD marks functions compiled for both the host and the device, so that the CPU backend and the
// CUDA kernels run the same elementwise math (and the CPU tests cover the GPU math too).
#pragma once

#if defined(__CUDACC__)
#define ELBO_HD __host__ __device__ __forceinline__
#else
#define ELBO_HD inline
#endif
