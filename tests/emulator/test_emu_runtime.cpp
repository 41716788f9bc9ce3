// The emulator's runtime and cuBLAS: each host-side bug it claims to catch (a read without a
// sync, a missing stream wait, a staging buffer reused too early, a wrong copy kind, a host
// dereference of device memory, an illegal call during capture, a wrong leading dimension) is
// made here on purpose, and must show.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "core/cuda/launch.h"
#include "elbo_emu/emulator.h"

namespace {

__global__ void fill(float* v, size_t n, float value) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    v[i] = value;
}

__global__ void twice(const float* x, float* y, size_t n) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    y[i] = 2.0f * x[i];
}

__global__ void divergent_barrier(float* v) {
  if (threadIdx.x < 16) __syncthreads();
  v[threadIdx.x] = 1.0f;
}

constexpr size_t N = 1000;

struct Buffers {
  float* x = nullptr;     // (N) device
  float* y = nullptr;     // (N) device
  float* host = nullptr;  // (N) pinned
  cudaStream_t a = nullptr, b = nullptr;
  explicit Buffers(unsigned flags = cudaStreamNonBlocking) {
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&x), N * sizeof(float)), cudaSuccess);
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&y), N * sizeof(float)), cudaSuccess);
    EXPECT_EQ(cudaMallocHost(reinterpret_cast<void**>(&host), N * sizeof(float)), cudaSuccess);
    EXPECT_EQ(cudaStreamCreateWithFlags(&a, flags), cudaSuccess);
    EXPECT_EQ(cudaStreamCreateWithFlags(&b, flags), cudaSuccess);
  }
  ~Buffers() {
    cudaStreamDestroy(a);
    cudaStreamDestroy(b);
    cudaFreeHost(host);
    cudaFree(y);
    cudaFree(x);
  }
  float download_y(cudaStream_t s) {
    EXPECT_EQ(cudaMemcpyAsync(host, y, N * sizeof(float), cudaMemcpyDeviceToHost, s), cudaSuccess);
    EXPECT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    return host[N - 1];
  }
};

TEST(EmuRuntime, FreshDeviceMemoryIsNaN) {
  Buffers buf;
  EXPECT_TRUE(std::isnan(buf.download_y(buf.a)));
}

TEST(EmuRuntime, HostReadWithoutSyncSeesNothingYet) {
  Buffers buf;
  buf.host[N - 1] = -1.0f;
  ELBO_LAUNCH(fill, 4, 256, 0, buf.a)(buf.y, N, 7.0f);
  ASSERT_EQ(cudaMemcpyAsync(buf.host, buf.y, N * sizeof(float), cudaMemcpyDeviceToHost, buf.a),
            cudaSuccess);
  EXPECT_EQ(buf.host[N - 1], -1.0f) << "the copy ran before any synchronisation";
  ASSERT_EQ(cudaStreamSynchronize(buf.a), cudaSuccess);
  EXPECT_EQ(buf.host[N - 1], 7.0f);
}

TEST(EmuRuntime, MissingStreamWaitGivesAWrongResult) {
  Buffers buf;
  ELBO_LAUNCH(fill, 4, 256, 0, buf.a)(buf.x, N, 5.0f);
  ELBO_LAUNCH(twice, 4, 256, 0, buf.b)(buf.x, buf.y, N);  // no wait for stream a: a bug
  EXPECT_TRUE(std::isnan(buf.download_y(buf.b))) << "stream b saw stream a's unordered work";

  cudaEvent_t done;
  ASSERT_EQ(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), cudaSuccess);
  ELBO_LAUNCH(fill, 4, 256, 0, buf.a)(buf.x, N, 5.0f);
  ASSERT_EQ(cudaEventRecord(done, buf.a), cudaSuccess);
  ASSERT_EQ(cudaStreamWaitEvent(buf.b, done, 0), cudaSuccess);
  ELBO_LAUNCH(twice, 4, 256, 0, buf.b)(buf.x, buf.y, N);
  EXPECT_EQ(buf.download_y(buf.b), 10.0f);
  cudaEventDestroy(done);
}

TEST(EmuRuntime, StagingBufferReusedBeforeItsCopyRanGivesTheNewData) {
  Buffers buf;
  for (size_t i = 0; i < N; ++i) buf.host[i] = 1.0f;
  ASSERT_EQ(cudaMemcpyAsync(buf.y, buf.host, N * sizeof(float), cudaMemcpyHostToDevice, buf.a),
            cudaSuccess);
  for (size_t i = 0; i < N; ++i) buf.host[i] = 2.0f;  // too early: the copy has not run
  EXPECT_EQ(buf.download_y(buf.a), 2.0f);
}

TEST(EmuRuntime, LegacyStreamOrdersBlockingStreamsOnly) {
  for (const unsigned flags : {0u, static_cast<unsigned>(cudaStreamNonBlocking)}) {
    Buffers buf(flags);
    ASSERT_EQ(cudaMemsetAsync(buf.x, 0, N * sizeof(float), nullptr), cudaSuccess);  // legacy
    ELBO_LAUNCH(twice, 4, 256, 0, buf.a)(buf.x, buf.y, N);
    const float y = buf.download_y(buf.a);
    if (flags == 0)
      EXPECT_EQ(y, 0.0f) << "a blocking stream waits for earlier legacy work";
    else
      EXPECT_TRUE(std::isnan(y)) << "a non-blocking stream does not wait for legacy work";
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }
}

TEST(EmuRuntime, PageableMemcpyMayLandAfterItReturns) {
  Buffers buf;
  std::vector<float> pageable(N, 3.0f);
  ASSERT_EQ(cudaMemcpy(buf.x, pageable.data(), N * sizeof(float), cudaMemcpyHostToDevice),
            cudaSuccess);
  pageable.assign(N, 4.0f);  // staged at the call: the copy still delivers 3
  ELBO_LAUNCH(twice, 4, 256, 0, buf.a)(buf.x, buf.y, N);  // unordered with the legacy stream
  EXPECT_TRUE(std::isnan(buf.download_y(buf.a)));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ELBO_LAUNCH(twice, 4, 256, 0, buf.a)(buf.x, buf.y, N);
  EXPECT_EQ(buf.download_y(buf.a), 6.0f);
}

TEST(EmuRuntime, EventQueryIsNotReadyUntilSynchronisedAndSetsNoError) {
  Buffers buf;
  cudaEvent_t e;
  ASSERT_EQ(cudaEventCreate(&e), cudaSuccess);
  ELBO_LAUNCH(fill, 1, 32, 0, buf.a)(buf.y, N, 1.0f);
  ASSERT_EQ(cudaEventRecord(e, buf.a), cudaSuccess);
  EXPECT_EQ(cudaEventQuery(e), cudaErrorNotReady);
  EXPECT_EQ(cudaStreamQuery(buf.a), cudaErrorNotReady);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  ASSERT_EQ(cudaEventSynchronize(e), cudaSuccess);
  EXPECT_EQ(cudaEventQuery(e), cudaSuccess);
  cudaEventDestroy(e);
}

TEST(EmuRuntime, CopyKindsAndRangesAreValidated) {
  Buffers buf;
  float local[4] = {};
  EXPECT_EQ(cudaMemcpy(local, buf.host, sizeof local, cudaMemcpyHostToDevice),
            cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpy(buf.x, buf.y, sizeof local, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpyAsync(buf.x, local, sizeof local, cudaMemcpyDeviceToDevice, buf.a),
            cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpyAsync(buf.x + N - 2, local, sizeof local, cudaMemcpyHostToDevice, buf.a),
            cudaErrorInvalidValue)
      << "4 floats from 2 before the end of an allocation";
  EXPECT_EQ(cudaMemsetAsync(buf.x, 0, (N + 1) * sizeof(float), buf.a), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess) << "not sticky";
  EXPECT_EQ(cudaMemcpy(buf.x, local, sizeof local, cudaMemcpyDefault), cudaSuccess);
}

TEST(EmuRuntime, LaunchConfigurationErrorsAreReportedAndNotSticky) {
  Buffers buf;
  ELBO_LAUNCH(fill, 1, 1025, 0, buf.a)(buf.y, N, 1.0f);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(cudaStreamSynchronize(buf.a), cudaSuccess);
}

TEST(EmuRuntime, DeviceFaultIsStickyAndNamesTheKernel) {
  float* v = nullptr;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&v), 64 * sizeof(float)), cudaSuccess);
  ELBO_LAUNCH(divergent_barrier, 1, 64, 0, nullptr)(v);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess) << "the launch itself is fine";
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
  EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&v), 4), cudaErrorLaunchFailure) << "sticky";
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure) << "still sticky";
  EXPECT_NE(elbo_emu::last_fault().find("divergent_barrier"), std::string::npos)
      << elbo_emu::last_fault();
  elbo_emu::reset_faults();
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

TEST(EmuRuntime, AKernelGivenHostMemoryFaults) {
  std::vector<float> host(N);
  ELBO_LAUNCH(fill, 1, 32, 0, nullptr)(host.data(), N, 1.0f);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorIllegalAddress);
  EXPECT_NE(elbo_emu::last_fault().find("kernel fill: argument 0"), std::string::npos)
      << elbo_emu::last_fault();
  EXPECT_EQ(host[0], 0.0f) << "the kernel ran";
  elbo_emu::reset_faults();
  Buffers buf;  // device and pinned memory, and one past the end, are fine
  ELBO_LAUNCH(fill, 1, 32, 0, buf.a)(buf.host, N, 1.0f);
  ELBO_LAUNCH(fill, 1, 32, 0, buf.a)(buf.x + N, 0, 1.0f);
  EXPECT_EQ(cudaStreamSynchronize(buf.a), cudaSuccess);
  EXPECT_EQ(buf.host[N - 1], 1.0f);
}

TEST(EmuRuntime, QueuedWorkRunsEventuallyAsOnAGpu) {
  Buffers buf;
  cudaEvent_t e;
  ASSERT_EQ(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), cudaSuccess);
  ELBO_LAUNCH(fill, 1, 32, 0, buf.a)(buf.y, N, 1.0f);
  ASSERT_EQ(cudaEventRecord(e, buf.a), cudaSuccess);
  EXPECT_EQ(cudaEventQuery(e), cudaErrorNotReady);
  cudaError_t rc = cudaErrorNotReady;
  for (int i = 0; i < 400 && rc == cudaErrorNotReady; ++i) {  // 20 s; ctest sets 5 s as the bound
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    rc = cudaEventQuery(e);
  }
  EXPECT_EQ(rc, cudaSuccess) << "a host that only polls waits for ever";
  cudaEventDestroy(e);
}

TEST(EmuRuntime, OverlappingCopiesAndUnrecordedEventTimesAreErrors) {
  Buffers buf;
  EXPECT_EQ(cudaMemcpyAsync(buf.x + 1, buf.x, 16, cudaMemcpyDeviceToDevice, buf.a),
            cudaErrorInvalidValue);
  cudaEvent_t a, b;
  ASSERT_EQ(cudaEventCreate(&a), cudaSuccess);
  ASSERT_EQ(cudaEventCreate(&b), cudaSuccess);
  float ms = 0;
  EXPECT_EQ(cudaEventElapsedTime(&ms, a, b), cudaErrorInvalidResourceHandle);
  ASSERT_EQ(cudaEventRecord(a, buf.a), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(b, buf.a), cudaSuccess);
  ASSERT_EQ(cudaEventSynchronize(b), cudaSuccess);
  EXPECT_EQ(cudaEventElapsedTime(&ms, a, b), cudaSuccess);
  EXPECT_GE(ms, 0.0f);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  (void)cudaGetLastError();
}

TEST(EmuRuntimeDeathTest, HostDereferenceOfDeviceMemoryFailsAtThatLine) {
#if !defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "needs AddressSanitizer (the emulated configuration builds with it)";
#else
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        float* p = nullptr;
        if (cudaMalloc(reinterpret_cast<void**>(&p), 16) == cudaSuccess) p[1] = 1.0f;
      },
      "use-after-poison");
#endif
}

// ---- graphs ---------------------------------------------------------------------------------

TEST(EmuGraphs, ReplaysRunTheWorkWithArgumentsFrozenAtCapture) {
  Buffers buf;
  float value = 3.0f;
  ASSERT_EQ(cudaStreamBeginCapture(buf.a, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  ELBO_LAUNCH(fill, 4, 256, 0, buf.a)(buf.x, N, value);
  ELBO_LAUNCH(twice, 4, 256, 0, buf.a)(buf.x, buf.y, N);
  cudaStreamCaptureStatus status;
  ASSERT_EQ(cudaStreamIsCapturing(buf.a, &status), cudaSuccess);
  EXPECT_EQ(status, cudaStreamCaptureStatusActive);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(buf.a, &graph), cudaSuccess);
  EXPECT_TRUE(std::isnan(buf.download_y(buf.a))) << "captured work ran during capture";
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiateWithFlags(&exec, graph, 0), cudaSuccess);
  value = 100.0f;  // changes nothing: the arguments were frozen
  for (int replay = 0; replay < 2; ++replay) {
    ASSERT_EQ(cudaGraphLaunch(exec, buf.a), cudaSuccess);
    EXPECT_EQ(buf.download_y(buf.a), 6.0f);
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

TEST(EmuGraphs, CaptureOfTheLegacyStreamIsRejected) {
  EXPECT_EQ(cudaStreamBeginCapture(nullptr, cudaStreamCaptureModeGlobal),
            cudaErrorStreamCaptureUnsupported);
  (void)cudaGetLastError();
}

TEST(EmuGraphs, IllegalCallsDuringCaptureFailAndInvalidateIt) {
  Buffers buf;
  for (int which = 0; which < 3; ++which) {
    ASSERT_EQ(cudaStreamBeginCapture(buf.a, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    ELBO_LAUNCH(fill, 1, 32, 0, buf.a)(buf.x, N, 1.0f);
    void* p = nullptr;
    float h = 0;
    const cudaError_t rc = which == 0   ? cudaMalloc(&p, 16)
                           : which == 1 ? cudaStreamSynchronize(buf.a)
                                        : cudaMemcpy(&h, buf.x, sizeof h, cudaMemcpyDeviceToHost);
    EXPECT_EQ(rc, cudaErrorStreamCaptureUnsupported) << "call " << which;
    cudaStreamCaptureStatus status;
    ASSERT_EQ(cudaStreamIsCapturing(buf.a, &status), cudaSuccess);
    EXPECT_EQ(status, cudaStreamCaptureStatusInvalidated) << "call " << which;
    ELBO_LAUNCH(fill, 1, 32, 0, buf.a)(buf.x, N, 1.0f);
    EXPECT_EQ(cudaGetLastError(), cudaErrorStreamCaptureInvalidated) << "call " << which;
    cudaGraph_t graph = reinterpret_cast<cudaGraph_t>(&h);
    EXPECT_EQ(cudaStreamEndCapture(buf.a, &graph), cudaErrorStreamCaptureInvalidated);
    EXPECT_EQ(graph, nullptr);
    (void)cudaGetLastError();
  }
}

TEST(EmuGraphs, ThreadLocalCaptureLetsOtherThreadsAllocateGlobalDoesNot) {
  Buffers buf;
  for (const auto mode : {cudaStreamCaptureModeThreadLocal, cudaStreamCaptureModeGlobal}) {
    ASSERT_EQ(cudaStreamBeginCapture(buf.a, mode), cudaSuccess);
    cudaError_t other = cudaSuccess;
    void* p = nullptr;
    std::thread([&] { other = cudaMalloc(&p, 16); }).join();
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(buf.a, &graph);
    if (mode == cudaStreamCaptureModeThreadLocal) {
      EXPECT_EQ(other, cudaSuccess);
      EXPECT_EQ(ended, cudaSuccess);
    } else {
      EXPECT_EQ(other, cudaErrorStreamCaptureUnsupported);
      EXPECT_EQ(ended, cudaErrorStreamCaptureInvalidated);
    }
    if (graph) cudaGraphDestroy(graph);
    if (p) cudaFree(p);
    (void)cudaGetLastError();
  }
}

TEST(EmuGraphs, ForkedStreamsMustJoin) {
  Buffers buf;
  cudaEvent_t fork_point, joined;
  ASSERT_EQ(cudaEventCreateWithFlags(&fork_point, cudaEventDisableTiming), cudaSuccess);
  ASSERT_EQ(cudaEventCreateWithFlags(&joined, cudaEventDisableTiming), cudaSuccess);
  for (const bool join : {false, true}) {
    ASSERT_EQ(cudaStreamBeginCapture(buf.a, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    ELBO_LAUNCH(fill, 4, 256, 0, buf.a)(buf.x, N, 1.5f);
    ASSERT_EQ(cudaEventRecord(fork_point, buf.a), cudaSuccess);
    ASSERT_EQ(cudaStreamWaitEvent(buf.b, fork_point, 0), cudaSuccess);  // b joins the capture
    ELBO_LAUNCH(twice, 4, 256, 0, buf.b)(buf.x, buf.y, N);
    if (join) {
      ASSERT_EQ(cudaEventRecord(joined, buf.b), cudaSuccess);
      ASSERT_EQ(cudaStreamWaitEvent(buf.a, joined, 0), cudaSuccess);
    }
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(buf.a, &graph);
    if (!join) {
      EXPECT_EQ(ended, cudaErrorStreamCaptureUnjoined);
      EXPECT_EQ(graph, nullptr);
      (void)cudaGetLastError();
      continue;
    }
    ASSERT_EQ(ended, cudaSuccess);
    cudaGraphExec_t exec = nullptr;
    ASSERT_EQ(cudaGraphInstantiateWithFlags(&exec, graph, 0), cudaSuccess);
    ASSERT_EQ(cudaGraphLaunch(exec, buf.a), cudaSuccess);
    EXPECT_EQ(buf.download_y(buf.a), 3.0f);
    EXPECT_EQ(cudaEventQuery(joined), cudaErrorCapturedEvent) << "last recorded in a capture";
    EXPECT_EQ(cudaEventSynchronize(joined), cudaErrorCapturedEvent);
    (void)cudaGetLastError();
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
  }
  cudaEventDestroy(fork_point);
  cudaEventDestroy(joined);
}

// ---- cuBLAS ---------------------------------------------------------------------------------

struct Gemm {
  static constexpr int M = 5, K = 3, Nc = 4;
  float *A = nullptr, *B = nullptr, *C = nullptr;  // column-major (M,K), (K,Nc), (M,Nc)
  cublasHandle_t handle = nullptr;
  cudaStream_t stream = nullptr;
  Gemm() {
    cudaMalloc(reinterpret_cast<void**>(&A), M * K * sizeof(float));
    cudaMalloc(reinterpret_cast<void**>(&B), K * Nc * sizeof(float));
    cudaMalloc(reinterpret_cast<void**>(&C), M * Nc * sizeof(float));
    cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
    cublasCreate(&handle);
    cublasSetStream(handle, stream);
  }
  ~Gemm() {
    cublasDestroy(handle);
    cudaStreamDestroy(stream);
    cudaFree(A);
    cudaFree(B);
    cudaFree(C);
  }
};

TEST(EmuCublas, SgemmIsColumnMajorOnTheHandlesStream) {
  Gemm g;
  std::vector<float> a(Gemm::M * Gemm::K), b(Gemm::K * Gemm::Nc), c(Gemm::M * Gemm::Nc);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i) - 4.0f;
  for (size_t i = 0; i < b.size(); ++i) b[i] = 0.5f * static_cast<float>(i);
  ASSERT_EQ(cudaMemcpyAsync(g.A, a.data(), a.size() * 4, cudaMemcpyHostToDevice, g.stream),
            cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(g.B, b.data(), b.size() * 4, cudaMemcpyHostToDevice, g.stream),
            cudaSuccess);
  const float one = 1.0f, zero = 0.0f;
  ASSERT_EQ(cublasSgemm(g.handle, CUBLAS_OP_N, CUBLAS_OP_N, Gemm::M, Gemm::Nc, Gemm::K, &one, g.A,
                        Gemm::M, g.B, Gemm::K, &zero, g.C, Gemm::M),
            CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cudaMemcpyAsync(c.data(), g.C, c.size() * 4, cudaMemcpyDeviceToHost, g.stream),
            cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(g.stream), cudaSuccess);
  for (int i = 0; i < Gemm::M; ++i)
    for (int j = 0; j < Gemm::Nc; ++j) {
      float want = 0;
      for (int k = 0; k < Gemm::K; ++k) want += a[i + k * Gemm::M] * b[k + j * Gemm::K];
      EXPECT_FLOAT_EQ(c[i + j * Gemm::M], want) << i << "," << j;
    }
  EXPECT_EQ(elbo_emu::last_gemm_math_mode(), static_cast<int>(CUBLAS_DEFAULT_MATH));
  ASSERT_EQ(cublasSetMathMode(g.handle, CUBLAS_TF32_TENSOR_OP_MATH), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasSgemm(g.handle, CUBLAS_OP_N, CUBLAS_OP_N, Gemm::M, Gemm::Nc, Gemm::K, &one, g.A,
                        Gemm::M, g.B, Gemm::K, &zero, g.C, Gemm::M),
            CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cudaStreamSynchronize(g.stream), cudaSuccess);
  EXPECT_EQ(elbo_emu::last_gemm_math_mode(), static_cast<int>(CUBLAS_TF32_TENSOR_OP_MATH));
}

TEST(EmuCublas, CaptureNeedsAWorkspaceSetAfterTheStream) {
  Gemm g;
  void* workspace = nullptr;
  ASSERT_EQ(cudaMalloc(&workspace, 1 << 20), cudaSuccess);
  const float one = 1.0f, zero = 0.0f;
  for (const bool set_after_stream : {false, true}) {
    ASSERT_EQ(cublasSetWorkspace(g.handle, workspace, 1 << 20), CUBLAS_STATUS_SUCCESS);
    ASSERT_EQ(cublasSetStream(g.handle, g.stream), CUBLAS_STATUS_SUCCESS);  // forgets it
    if (set_after_stream) {
      ASSERT_EQ(cublasSetWorkspace(g.handle, workspace, 1 << 20), CUBLAS_STATUS_SUCCESS);
    }
    ASSERT_EQ(cudaStreamBeginCapture(g.stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    const cublasStatus_t rc =
        cublasSgemm(g.handle, CUBLAS_OP_N, CUBLAS_OP_N, Gemm::M, Gemm::Nc, Gemm::K, &one, g.A,
                    Gemm::M, g.B, Gemm::K, &zero, g.C, Gemm::M);
    EXPECT_EQ(rc, set_after_stream ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED);
    cudaGraph_t graph = nullptr;
    ASSERT_EQ(cudaStreamEndCapture(g.stream, &graph), cudaSuccess);
    cudaGraphDestroy(graph);
  }
  cudaFree(workspace);
}

TEST(EmuCublas, WrongLeadingDimensionsAndExtentsAreRejected) {
  Gemm g;
  const float one = 1.0f, zero = 0.0f;
  // lda must be >= M for an untransposed A.
  EXPECT_EQ(cublasSgemm(g.handle, CUBLAS_OP_N, CUBLAS_OP_N, Gemm::M, Gemm::Nc, Gemm::K, &one, g.A,
                        Gemm::M - 1, g.B, Gemm::K, &zero, g.C, Gemm::M),
            CUBLAS_STATUS_INVALID_VALUE);
  // ... and >= K when transposed; ldc >= M always.
  EXPECT_EQ(cublasSgemm(g.handle, CUBLAS_OP_T, CUBLAS_OP_N, Gemm::M, Gemm::Nc, Gemm::K, &one, g.A,
                        Gemm::K - 1, g.B, Gemm::K, &zero, g.C, Gemm::M),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(cublasSgemm(g.handle, CUBLAS_OP_N, CUBLAS_OP_N, Gemm::M, Gemm::Nc, Gemm::K, &one, g.A,
                        Gemm::M, g.B, Gemm::K, &zero, g.C, 1),
            CUBLAS_STATUS_INVALID_VALUE);
  // A legal lda that makes A run past its allocation.
  EXPECT_EQ(cublasSgemm(g.handle, CUBLAS_OP_N, CUBLAS_OP_N, Gemm::M, Gemm::Nc, Gemm::K, &one, g.A,
                        Gemm::M + 1, g.B, Gemm::K, &zero, g.C, Gemm::M),
            CUBLAS_STATUS_INVALID_VALUE);
  // C on top of A.
  EXPECT_EQ(cublasSgemm(g.handle, CUBLAS_OP_N, CUBLAS_OP_N, Gemm::M, Gemm::K, Gemm::K, &one, g.A,
                        Gemm::M, g.B, Gemm::K, &zero, g.A, Gemm::M),
            CUBLAS_STATUS_INVALID_VALUE);
  // A host matrix.
  std::vector<float> host(Gemm::M * Gemm::K);
  EXPECT_EQ(cublasSgemm(g.handle, CUBLAS_OP_N, CUBLAS_OP_N, Gemm::M, Gemm::Nc, Gemm::K, &one,
                        host.data(), Gemm::M, g.B, Gemm::K, &zero, g.C, Gemm::M),
            CUBLAS_STATUS_INVALID_VALUE);
}

// ---- devices (in a child process: the device table is read from the environment once) ----------

// Runs this test again in a child process with `env` set; the child sees ELBO_EMU_CHILD.
int run_child(const std::string& env) {
  const std::string test = ::testing::UnitTest::GetInstance()->current_test_info()->name();
  const std::string cmd = "ELBO_EMU_CHILD=1 " + env + " /proc/" + std::to_string(getpid()) +
                          "/exe --gtest_filter=EmuDevices." + test + " >/dev/null 2>&1";
  return std::system(cmd.c_str());
}
bool in_child() { return std::getenv("ELBO_EMU_CHILD") != nullptr; }

TEST(EmuDevices, CountPropertiesAndBusIdsFollowTheEnvironment) {
  if (!in_child()) {
    EXPECT_EQ(run_child("ELBO_EMU_DEVICES=3 CUDA_VISIBLE_DEVICES=2,0"), 0);
    return;
  }
  int n = 0;
  ASSERT_EQ(cudaGetDeviceCount(&n), cudaSuccess);
  ASSERT_EQ(n, 2);
  char id[32];
  ASSERT_EQ(cudaDeviceGetPCIBusId(id, sizeof id, 0), cudaSuccess);
  EXPECT_STREQ(id, "0000:03:00.0");  // physical device 2
  ASSERT_EQ(cudaDeviceGetPCIBusId(id, sizeof id, 1), cudaSuccess);
  EXPECT_STREQ(id, "0000:01:00.0");
  cudaDeviceProp prop;
  ASSERT_EQ(cudaGetDeviceProperties(&prop, 1), cudaSuccess);
  EXPECT_EQ(prop.major, 9);
  EXPECT_EQ(prop.maxThreadsPerBlock, 1024);
  EXPECT_EQ(cudaSetDevice(2), cudaErrorInvalidDevice);
}

TEST(EmuDevices, AnOldDriverModeFailsEveryCall) {
  if (!in_child()) {
    EXPECT_EQ(run_child("ELBO_EMU_DRIVER=old"), 0);
    return;
  }
  int n = 5;
  EXPECT_EQ(cudaGetDeviceCount(&n), cudaErrorInsufficientDriver);
  EXPECT_EQ(n, 0);
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, 4), cudaErrorInsufficientDriver);
}

}  // namespace
