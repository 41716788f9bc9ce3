// The cuBLAS subset of the emulator: a handle with its stream, workspace and math mode, and SGEMM
// validated as cuBLAS validates it, queued on the handle's stream and computed by CBLAS in
// column-major order when the stream runs.
#include <cblas.h>
#include <cublas_v2.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "elbo_emu/emulator.h"

struct cublasContext {
  cudaStream_t stream = nullptr;
  void* workspace = nullptr;  // nullptr: cuBLAS's own pool
  size_t workspace_bytes = 0;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
};

namespace elbo_emu {
namespace {

std::atomic<int> g_last_math{-1};

cublasStatus_t invalid(const char* call, const std::string& why) {
  if (!std::getenv("ELBO_EMU_QUIET")) std::fprintf(stderr, "elbo-emu: %s: %s\n", call, why.c_str());
  return CUBLAS_STATUS_INVALID_VALUE;
}

// A column-major rows x cols matrix with leading dimension ld must lie inside one allocation.
bool matrix_inside(const float* p, int rows, int cols, int ld) {
  if (rows == 0 || cols == 0) return true;
  const size_t elements =
      static_cast<size_t>(ld) * static_cast<size_t>(cols - 1) + static_cast<size_t>(rows);
  return is_device_range(p, elements * sizeof(float));
}

}  // namespace

int last_gemm_math_mode() { return g_last_math.load(); }

}  // namespace elbo_emu

using namespace elbo_emu;

extern "C" {

cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    (void)cudaGetLastError();
    return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  *handle = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  cudaDeviceSynchronize();  // as cuBLAS does: queued GEMMs still hold the handle's settings
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

// As documented: setting the stream resets the workspace to cuBLAS's default pool, so a
// workspace must be set (again) after the stream.
cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  handle->workspace = nullptr;
  handle->workspace_bytes = 0;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream_v2(cublasHandle_t handle, cudaStream_t* stream) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!stream) return CUBLAS_STATUS_INVALID_VALUE;
  *stream = handle->stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void* workspace, size_t bytes) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (bytes > 0 && !is_device_range(workspace, bytes))
    return invalid("cublasSetWorkspace", "the workspace is not inside one device allocation");
  if (reinterpret_cast<uintptr_t>(workspace) % 256 != 0)
    return invalid("cublasSetWorkspace", "the workspace is not 256-byte aligned");
  handle->workspace = workspace;
  handle->workspace_bytes = bytes;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t* mode) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
  *mode = handle->math;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetPointerMode_v2(cublasHandle_t handle, cublasPointerMode_t mode) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (mode != CUBLAS_POINTER_MODE_HOST)
    return invalid("cublasSetPointerMode", "only CUBLAS_POINTER_MODE_HOST is emulated");
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "the operation completed successfully";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "the GPU program failed to execute";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "the functionality requested is not supported";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "an internal operation failed";
    default:
      return "unknown cuBLAS status";
  }
}

// C = alpha op(A) op(B) + beta C, column-major. alpha and beta are read now (host pointer mode),
// the matrices when the stream runs.
cublasStatus_t cublasSgemm_v2(cublasHandle_t handle, cublasOperation_t transa,
                              cublasOperation_t transb, int m, int n, int k, const float* alpha,
                              const float* A, int lda, const float* B, int ldb, const float* beta,
                              float* C, int ldc) {
  const char* call = "cublasSgemm";
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  const auto op_ok = [](cublasOperation_t t) { return t == CUBLAS_OP_N || t == CUBLAS_OP_T; };
  if (!op_ok(transa) || !op_ok(transb)) return invalid(call, "transa/transb must be N or T");
  if (m < 0 || n < 0 || k < 0)
    return invalid(call, "m, n, k = " + std::to_string(m) + ", " + std::to_string(n) + ", " +
                             std::to_string(k) + ": must not be negative");
  const int a_rows = transa == CUBLAS_OP_N ? m : k, a_cols = transa == CUBLAS_OP_N ? k : m;
  const int b_rows = transb == CUBLAS_OP_N ? k : n, b_cols = transb == CUBLAS_OP_N ? n : k;
  if (lda < std::max(1, a_rows))
    return invalid(call,
                   "lda " + std::to_string(lda) + " < max(1, " + std::to_string(a_rows) + ")");
  if (ldb < std::max(1, b_rows))
    return invalid(call,
                   "ldb " + std::to_string(ldb) + " < max(1, " + std::to_string(b_rows) + ")");
  if (ldc < std::max(1, m))
    return invalid(call, "ldc " + std::to_string(ldc) + " < max(1, " + std::to_string(m) + ")");
  if (!alpha || !beta) return invalid(call, "alpha and beta must be host pointers");
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  if (k > 0 && !matrix_inside(A, a_rows, a_cols, lda))
    return invalid(call, "A (" + std::to_string(a_rows) + " x " + std::to_string(a_cols) +
                             ", lda " + std::to_string(lda) +
                             ") is not inside one device allocation");
  if (k > 0 && !matrix_inside(B, b_rows, b_cols, ldb))
    return invalid(call, "B (" + std::to_string(b_rows) + " x " + std::to_string(b_cols) +
                             ", ldb " + std::to_string(ldb) +
                             ") is not inside one device allocation");
  if (!matrix_inside(C, m, n, ldc))
    return invalid(call, "C (" + std::to_string(m) + " x " + std::to_string(n) + ", ldc " +
                             std::to_string(ldc) + ") is not inside one device allocation");
  const auto overlaps = [&](const float* M, int rows, int cols, int ld) {
    if (rows == 0 || cols == 0) return false;
    const float* end = M + static_cast<size_t>(ld) * static_cast<size_t>(cols - 1) + rows;
    const float* c_end = C + static_cast<size_t>(ldc) * static_cast<size_t>(n - 1) + m;
    return M < c_end && C < end;
  };
  if (k > 0 && (overlaps(A, a_rows, a_cols, lda) || overlaps(B, b_rows, b_cols, ldb)))
    return invalid(call, "C overlaps A or B, which cuBLAS leaves undefined");
  // During capture cuBLAS must not allocate its own workspace: one must be set, after the
  // stream, since cublasSetStream forgets it.
  if (handle->workspace == nullptr &&
      capture_status(handle->stream) != cudaStreamCaptureStatusNone) {
    if (!std::getenv("ELBO_EMU_QUIET"))
      std::fprintf(stderr,
                   "elbo-emu: %s: captured without a workspace (call cublasSetWorkspace "
                   "after cublasSetStream)\n",
                   call);
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  const float a = *alpha, b = *beta;
  const cublasMath_t math = handle->math;
  const auto ta = transa == CUBLAS_OP_N ? CblasNoTrans : CblasTrans;
  const auto tb = transb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans;
  Op op;
  op.name = "cublasSgemm";
  op.run = [=] {
    g_last_math.store(static_cast<int>(math));
    cblas_sgemm(CblasColMajor, ta, tb, m, n, k, a, A, lda, B, ldb, b, C, ldc);
    return cudaSuccess;
  };
  const cudaError_t rc = enqueue(handle->stream, std::move(op));
  if (rc != cudaSuccess) return CUBLAS_STATUS_EXECUTION_FAILED;
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
