// The CUDA and cuBLAS members of the project's check-macro family: a failing call throws
// elbo::Error (internal, exit code 1) naming the call, the library's message, and file:line.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "core/cuda/grid.h"
#include "core/error.h"

#define ELBO_CUDA_CHECK(expr)                                                                   \
  do {                                                                                          \
    const cudaError_t elbo_cuda_status_ = (expr);                                               \
    if (elbo_cuda_status_ != cudaSuccess)                                                       \
      ::elbo::throw_internal(                                                                   \
          std::string("CUDA call failed: " #expr ": ") + cudaGetErrorString(elbo_cuda_status_), \
          __FILE__, __LINE__);                                                                  \
  } while (0)

#define ELBO_CUBLAS_CHECK(expr)                                               \
  do {                                                                        \
    const cublasStatus_t elbo_cublas_status_ = (expr);                        \
    if (elbo_cublas_status_ != CUBLAS_STATUS_SUCCESS)                         \
      ::elbo::throw_internal(std::string("cuBLAS call failed: " #expr ": ") + \
                                 cublasGetStatusString(elbo_cublas_status_),  \
                             __FILE__, __LINE__);                             \
  } while (0)

// After every kernel launch: reports a bad launch configuration at once. Faults inside a kernel
// surface at the next synchronising call (a download or a reduction), through ELBO_CUDA_CHECK.
#define ELBO_CUDA_CHECK_LAUNCH() ELBO_CUDA_CHECK(cudaGetLastError())
