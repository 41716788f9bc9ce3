// The CUDA backend: GEMMs through cuBLAS, everything else through the kernels of cuda_kernels.cuh.
// All work is queued on one non-blocking stream; only downloads and reductions wait for it.
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <functional>

#include "core/cuda/cuda_backend.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/cuda_kernels.cuh"
#include "core/cuda/cuda_raii.h"
#include "core/cuda/launch.h"

namespace elbo {
namespace {

// ---- RAII for the CUDA handles -----------------------------------------------------------------

class CublasHandle {
 public:
  explicit CublasHandle(cudaStream_t stream) {
    ELBO_CUBLAS_CHECK(cublasCreate(&handle_));
    try {
      ELBO_CUBLAS_CHECK(cublasSetStream(handle_, stream));
      // Plain float32 (no TF32 tensor-core rounding), so GEMMs match the CPU backend's.
      ELBO_CUBLAS_CHECK(cublasSetMathMode(handle_, CUBLAS_DEFAULT_MATH));
    } catch (...) {
      cublasDestroy(handle_);
      throw;
    }
  }
  ~CublasHandle() { cublasDestroy(handle_); }
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
  cublasHandle_t get() const { return handle_; }

 private:
  cublasHandle_t handle_ = nullptr;
};

struct DeviceFree {
  void operator()(void* p) const noexcept { cudaFree(p); }
};
struct PinnedFree {
  void operator()(void* p) const noexcept { cudaFreeHost(p); }
};
template <typename T>
using DeviceBuffer = std::unique_ptr<T[], DeviceFree>;

template <typename T>
DeviceBuffer<T> device_buffer(size_t n) {
  void* p = nullptr;
  ELBO_CUDA_CHECK(cudaMalloc(&p, n * sizeof(T)));
  return DeviceBuffer<T>(static_cast<T*>(p));
}

// Two pinned host buffers used in turn for host-to-device copies, each guarded by an event: a
// buffer is refilled only once the copy that last read it has finished, so the host may run one
// copy ahead of the device and never further, and never waits for the whole stream.
class PinnedRing {
 public:
  // A pinned buffer of at least `bytes`, free to write.
  void* acquire(size_t bytes) {
    Slot& slot = slots_[next_];
    ELBO_CUDA_CHECK(cudaEventSynchronize(slot.copied.get()));
    if (bytes > slot.capacity) {
      void* p = nullptr;
      ELBO_CUDA_CHECK(cudaMallocHost(&p, bytes));
      slot.memory.reset(p);
      slot.capacity = bytes;
    }
    return slot.memory.get();
  }
  // The copy out of the buffer last acquired is now enqueued on `stream`.
  cudaEvent_t release(cudaStream_t stream) {
    Slot& slot = slots_[next_];
    next_ = 1 - next_;
    ELBO_CUDA_CHECK(cudaEventRecord(slot.copied.get(), stream));
    return slot.copied.get();
  }

 private:
  struct Slot {
    std::unique_ptr<void, PinnedFree> memory;
    size_t capacity = 0;
    Event copied;
  };
  Slot slots_[2];
  int next_ = 0;
};

// A captured stream section, instantiated; replays on the stream it was captured from.
class CudaGraph final : public CapturedWork {
 public:
  CudaGraph(cudaGraphExec_t exec, cudaStream_t stream) : exec_(exec), stream_(stream) {}
  ~CudaGraph() override { cudaGraphExecDestroy(exec_); }
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;
  void replay() override { ELBO_CUDA_CHECK(cudaGraphLaunch(exec_, stream_)); }

 private:
  cudaGraphExec_t exec_;
  cudaStream_t stream_;
};

// Makes the device current for the calling thread and returns it (used before any member is built).
int select_device(int device) {
  const int count = cuda_device_count();
  if (device < 0 || device >= count)
    throw_bad_input("CUDA device " + std::to_string(device) + " requested, but " +
                    std::to_string(count) + " available");
  ELBO_CUDA_CHECK(cudaSetDevice(device));
  return device;
}

cublasOperation_t to_cublas(Trans t) { return t == Trans::Yes ? CUBLAS_OP_T : CUBLAS_OP_N; }

// Pass-1 blocks of a reduction: enough to fill a large GPU, few enough for one block to finish.
constexpr int kMaxReduceBlocks = 1024;

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device)
      : device_(select_device(device)),
        cublas_workspace_(device_buffer<char>(kCublasWorkspaceBytes)),
        cublas_(stream_.get()),
        partials_(device_buffer<double>(kMaxReduceBlocks + 1)),
        flag_(device_buffer<int>(1)),
        adam_constants_(device_buffer<AdamConstants>(1)) {
    ELBO_CUBLAS_CHECK(
        cublasSetWorkspace(cublas_.get(), cublas_workspace_.get(), kCublasWorkspaceBytes));
    void* host = nullptr;
    ELBO_CUDA_CHECK(cudaMallocHost(&host, sizeof(HostScratch)));
    host_.reset(static_cast<HostScratch*>(host));
  }

  std::string name() const override { return "cuda:" + std::to_string(device_); }
  void synchronize() override { ELBO_CUDA_CHECK(cudaStreamSynchronize(s())); }

  // Thread-local capture: only this thread's work on the stream is recorded. Anything that
  // cannot be captured (a synchronisation, a read-back) makes the capture fail; then the capture
  // is ended and discarded, the error state cleared, and the caller runs the work eagerly.
  std::unique_ptr<CapturedWork> capture(const std::function<void()>& work) override {
    if (cudaStreamBeginCapture(s(), cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
      (void)cudaGetLastError();
      return nullptr;
    }
    bool recorded = true;
    try {
      work();
    } catch (const Error&) {
      recorded = false;  // e.g. a check that saw cudaErrorStreamCaptureUnsupported
    } catch (...) {      // anything else is not about capture: end it, then let it through
      cudaGraph_t partial = nullptr;
      cudaStreamEndCapture(s(), &partial);
      if (partial) cudaGraphDestroy(partial);
      (void)cudaGetLastError();
      throw;
    }
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(s(), &graph);
    cudaGraphExec_t exec = nullptr;
    if (recorded && ended == cudaSuccess && graph &&
        cudaGraphInstantiateWithFlags(&exec, graph, 0) == cudaSuccess) {
      cudaGraphDestroy(graph);
      return std::make_unique<CudaGraph>(exec, s());
    }
    if (graph) cudaGraphDestroy(graph);
    (void)cudaGetLastError();
    return nullptr;
  }
  cudaStream_t stream() const { return stream_.get(); }

  float* allocate(size_t n) override {
    void* p = nullptr;
    ELBO_CUDA_CHECK(cudaMalloc(&p, n * sizeof(float)));
    return static_cast<float*>(p);
  }
  void deallocate(float* p) noexcept override { cudaFree(p); }
  void upload(float* dst, const float* host_src, size_t n) override {
    copy_from_host(dst, host_src, n * sizeof(float));
  }

  // The batch goes through pinned staging on the copy stream, so it crosses the bus while the
  // compute stream still works on the previous step. dst alternates between two buffers (the
  // contract in backend.h): the copy into it waits for the work enqueued before the previous call,
  // the last that read it; the compute stream waits for the copy.
  void upload_input(float* dst, const float* host_src, size_t n) override {
    if (n == 0) return;
    const size_t bytes = n * sizeof(float);
    void* staged = input_staging_.acquire(bytes);
    std::memcpy(staged, host_src, bytes);
    ELBO_CUDA_CHECK(cudaStreamWaitEvent(copy_stream_.get(), compute_marker_.get(), 0));
    ELBO_CUDA_CHECK(
        cudaMemcpyAsync(dst, staged, bytes, cudaMemcpyHostToDevice, copy_stream_.get()));
    const cudaEvent_t copied = input_staging_.release(copy_stream_.get());
    ELBO_CUDA_CHECK(cudaEventRecord(compute_marker_.get(), s()));
    ELBO_CUDA_CHECK(cudaStreamWaitEvent(s(), copied, 0));
  }
  void download(float* host_dst, const float* src, size_t n) override {
    if (n == 0) return;
    ELBO_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, n * sizeof(float), cudaMemcpyDeviceToHost, s()));
    ELBO_CUDA_CHECK(cudaStreamSynchronize(s()));  // the caller reads host_dst next
  }
  void fill_zero(float* p, size_t n) override {
    if (n) ELBO_CUDA_CHECK(cudaMemsetAsync(p, 0, n * sizeof(float), s()));
  }

  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: a row-major matrix with
  // leading dimension ld is its transpose in column-major with the same ld, so cuBLAS gets the
  // operands swapped, M and N swapped, and the same transpose flags and leading dimensions.
  void gemm(Trans ta, Trans tb, int M, int N, int K, float alpha, const float* A, int lda,
            const float* B, int ldb, float beta, float* C, int ldc) override {
    ELBO_CUBLAS_CHECK(cublasSgemm(cublas_.get(), to_cublas(tb), to_cublas(ta), N, M, K, &alpha, B,
                                  ldb, A, lda, &beta, C, ldc));
  }

  void bias_activation(float* y, const float* bias, int B, int N, Activation act) override {
    const size_t total = static_cast<size_t>(B) * static_cast<size_t>(N);
    if (total == 0) return;
    ELBO_LAUNCH(kernels::bias_activation, blocks(total), kThreadsPerBlock, 0, s())
    (y, bias, total, N, act);
    ELBO_CUDA_CHECK_LAUNCH();
  }

  void activation_backward(float* dy, const float* y, float* dbias, int B, int N,
                           Activation act) override {
    if (N <= 0) return;
    ELBO_LAUNCH(kernels::activation_backward, blocks(static_cast<size_t>(N)), kThreadsPerBlock, 0,
                s())
    (dy, y, dbias, B, N, act);
    ELBO_CUDA_CHECK_LAUNCH();
  }

  void im2col(const float* image, float* col, int B, const ConvShape& g) override {
    const size_t total = static_cast<size_t>(g.col_rows()) * B * g.grid();
    if (total == 0) return;
    ELBO_LAUNCH(kernels::im2col, blocks(total), kThreadsPerBlock, 0, s())(image, col, B, g);
    ELBO_CUDA_CHECK_LAUNCH();
  }

  void col2im(const float* col, float* image, int B, const ConvShape& g) override {
    const size_t total = static_cast<size_t>(B) * g.channels * g.image();
    if (total == 0) return;
    ELBO_LAUNCH(kernels::col2im, blocks(total), kThreadsPerBlock, 0, s())(col, image, B, g);
    ELBO_CUDA_CHECK_LAUNCH();
  }

  void transpose_outer(const float* src, float* dst, int I, int J, int N) override {
    const size_t total = static_cast<size_t>(I) * J * N;
    if (total == 0) return;
    ELBO_LAUNCH(kernels::transpose_outer, blocks(total), kThreadsPerBlock, 0, s())
    (src, dst, I, J, N);
    ELBO_CUDA_CHECK_LAUNCH();
  }

  void channel_bias_activation(float* y, const float* bias, int B, int C, int N,
                               Activation act) override {
    const size_t total = static_cast<size_t>(B) * C * N;
    if (total == 0) return;
    ELBO_LAUNCH(kernels::channel_bias_activation, blocks(total), kThreadsPerBlock, 0, s())
    (y, bias, total, C, N, act);
    ELBO_CUDA_CHECK_LAUNCH();
  }

  void channel_activation_backward(float* dy, const float* y, float* dbias, int B, int C, int N,
                                   Activation act) override {
    if (C <= 0) return;
    ELBO_LAUNCH(kernels::channel_activation_backward, std::min(C, kMaxBlocks), kThreadsPerBlock, 0,
                s())
    (dy, y, dbias, B, C, N, act);
    ELBO_CUDA_CHECK_LAUNCH();
  }

  void reparameterize(const float* head, const float* eps, float* z, float* kl, int B,
                      int L) override {
    if (B <= 0) return;
    ELBO_LAUNCH(kernels::reparameterize, blocks(static_cast<size_t>(B)), kThreadsPerBlock, 0, s())
    (head, eps, z, kl, B, L);
    ELBO_CUDA_CHECK_LAUNCH();
  }

  void reparameterize_backward(const float* head, const float* eps, const float* dz, float* dhead,
                               int B, int L, float kl_weight) override {
    const size_t total = static_cast<size_t>(B) * static_cast<size_t>(L);
    if (total == 0) return;
    ELBO_LAUNCH(kernels::reparameterize_backward, blocks(total), kThreadsPerBlock, 0, s())
    (head, eps, dz, dhead, total, L, kl_weight);
    ELBO_CUDA_CHECK_LAUNCH();
  }

  void reconstruction_loss(const float* out, const float* x, float* dout, float* recon, int B,
                           int D, Likelihood lik, float grad_scale) override {
    if (B <= 0) return;
    const int rows = std::min(B, kMaxBlocks);  // one block per row, grid-stride beyond
    if (lik == Likelihood::GaussianLearned)
      ELBO_LAUNCH(kernels::learned_gaussian_loss, rows, kThreadsPerBlock, 0, s())
    (out, x, dout, recon, B, D, grad_scale);
    else if (lik == Likelihood::Bernoulli)
        ELBO_LAUNCH(kernels::reconstruction_loss<Likelihood::Bernoulli>, rows, kThreadsPerBlock, 0,
                    s())(out, x, dout, recon, B, D, grad_scale);
    else
      ELBO_LAUNCH(kernels::reconstruction_loss<Likelihood::Gaussian>, rows, kThreadsPerBlock, 0,
                  s())
      (out, x, dout, recon, B, D, grad_scale);
    ELBO_CUDA_CHECK_LAUNCH();
  }

  void fill_noise(float* eps, std::span<const uint32_t> sample_ids, int L, RngKey key, uint32_t c2,
                  RngStream stream) override {
    const size_t B = sample_ids.size();
    if (B == 0 || L <= 0) return;
    if (B > ids_capacity_) {  // grows rarely: the batch size is fixed
      ids_ = device_buffer<uint32_t>(B);
      ids_capacity_ = B;
    }
    // Through pinned staging, on the compute stream: no wait for the stream, and ordered before
    // the kernel that reads the ids.
    const size_t bytes = B * sizeof(uint32_t);
    void* staged = ids_staging_.acquire(bytes);
    std::memcpy(staged, sample_ids.data(), bytes);
    ELBO_CUDA_CHECK(cudaMemcpyAsync(ids_.get(), staged, bytes, cudaMemcpyHostToDevice, s()));
    ids_staging_.release(s());
    const size_t groups = (static_cast<size_t>(L) + 3) / 4;
    ELBO_LAUNCH(kernels::fill_noise, blocks(B * groups), kThreadsPerBlock, 0, s())
    (eps, ids_.get(), B, L, key, c2, stream);
    ELBO_CUDA_CHECK_LAUNCH();
  }

  double sum(const float* v, size_t n) override { return reduce<false>(v, n); }
  double sum_of_squares(const float* v, size_t n) override { return reduce<true>(v, n); }

  bool all_finite(const float* v, size_t n) override {
    if (n == 0) return true;
    clear_flag();
    ELBO_LAUNCH(kernels::find_nonfinite, blocks(n), kThreadsPerBlock, 0, s())(v, n, flag_.get());
    ELBO_CUDA_CHECK_LAUNCH();
    return read_flag() == 0;
  }

  void scale(float* v, size_t n, float factor) override {
    if (n == 0) return;
    ELBO_LAUNCH(kernels::scale, blocks(n), kThreadsPerBlock, 0, s())(v, n, factor);
    ELBO_CUDA_CHECK_LAUNCH();
  }

  void to_bfloat16(const float* x, uint16_t* y, size_t n) override {
    if (n == 0) return;
    ELBO_LAUNCH(kernels::to_bfloat16, blocks(n), kThreadsPerBlock, 0, s())(x, y, n);
    ELBO_CUDA_CHECK_LAUNCH();
  }
  void from_bfloat16(const uint16_t* y, float* x, size_t n) override {
    if (n == 0) return;
    ELBO_LAUNCH(kernels::from_bfloat16, blocks(n), kThreadsPerBlock, 0, s())(y, x, n);
    ELBO_CUDA_CHECK_LAUNCH();
  }

  // Reading the flag back is a host synchronisation once per step; it goes when the finiteness
  // check (and the step count) move to the device.
  void adam_step(float* params, const float* grads, float* m, float* v, size_t n,
                 const AdamHyper& h, float* counter, float* nonfinite) override {
    ELBO_LAUNCH(kernels::adam_advance, 1, 1, 0, s())(h, counter, adam_constants_.get());
    ELBO_CUDA_CHECK_LAUNCH();
    if (n == 0) return;
    ELBO_LAUNCH(kernels::adam_step, blocks(n), kThreadsPerBlock, 0, s())
    (params, grads, m, v, n, adam_constants_.get(), nonfinite);
    ELBO_CUDA_CHECK_LAUNCH();
  }

  void accumulate_losses(const float* recon, const float* kl, int B, float beta,
                         float* acc) override {
    if (B <= 0) return;
    ELBO_LAUNCH(kernels::accumulate_losses, 1, kThreadsPerBlock, 0, s())(recon, kl, B, beta, acc);
    ELBO_CUDA_CHECK_LAUNCH();
  }

 private:
  // Pinned, so that the one-value read-backs are plain DMA.
  struct HostScratch {
    double value;
    int flag;
  };

  cudaStream_t s() const { return stream_.get(); }
  static int blocks(size_t n) { return launch_blocks(n, kThreadsPerBlock); }

  // The caller may reuse or free its buffer once this returns, and CUDA does not promise that an
  // asynchronous copy has read a pageable source by then: wait for the copy. upload() is for
  // parameters and evaluation batches; training batches take upload_input()'s pinned path.
  void copy_from_host(void* dst, const void* src, size_t bytes) {
    if (bytes == 0) return;
    ELBO_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s()));
    ELBO_CUDA_CHECK(cudaStreamSynchronize(s()));
  }

  template <bool squares>
  double reduce(const float* v, size_t n) {
    if (n == 0) return 0.0;
    const int grid = std::min(blocks(n), kMaxReduceBlocks);
    double* result = partials_.get() + kMaxReduceBlocks;
    ELBO_LAUNCH(kernels::reduce_partials<squares>, grid, kThreadsPerBlock, 0, s())
    (v, n, partials_.get());
    ELBO_CUDA_CHECK_LAUNCH();
    ELBO_LAUNCH(kernels::reduce_final, 1, kThreadsPerBlock, 0, s())(partials_.get(), grid, result);
    ELBO_CUDA_CHECK_LAUNCH();
    ELBO_CUDA_CHECK(
        cudaMemcpyAsync(&host_->value, result, sizeof(double), cudaMemcpyDeviceToHost, s()));
    ELBO_CUDA_CHECK(cudaStreamSynchronize(s()));
    return host_->value;
  }

  void clear_flag() { ELBO_CUDA_CHECK(cudaMemsetAsync(flag_.get(), 0, sizeof(int), s())); }
  int read_flag() {
    ELBO_CUDA_CHECK(
        cudaMemcpyAsync(&host_->flag, flag_.get(), sizeof(int), cudaMemcpyDeviceToHost, s()));
    ELBO_CUDA_CHECK(cudaStreamSynchronize(s()));
    return host_->flag;
  }

  // Declaration order is construction order: the device is current before anything is created.
  int device_;
  Stream stream_;
  // cuBLAS's scratch, given up front so that it never allocates inside a captured graph; declared
  // before the handle so that it outlives it.
  static constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;
  DeviceBuffer<char> cublas_workspace_;
  CublasHandle cublas_;
  DeviceBuffer<double> partials_;  // (kMaxReduceBlocks + 1): pass-1 partials, then the result
  DeviceBuffer<int> flag_;         // (1): set by kernels that find a non-finite value
  DeviceBuffer<AdamConstants> adam_constants_;  // (1): this step's, from adam_advance
  std::unique_ptr<HostScratch, PinnedFree> host_;
  DeviceBuffer<uint32_t> ids_;  // (ids_capacity_): fill_noise's sample ids
  size_t ids_capacity_ = 0;
  Stream copy_stream_;        // input batches, overlapping the compute stream
  Event compute_marker_;      // the compute stream's work as of the previous upload_input
  PinnedRing input_staging_;  // batches on their way to the device
  PinnedRing ids_staging_;    // sample ids for fill_noise
};

}  // namespace

bool cuda_backend_built() { return true; }

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // clear it, so that no later check reports it
    return 0;
  }
  return count;
}

CudaProbe cuda_probe() {
  CudaProbe probe;
  const cudaError_t rc = cudaGetDeviceCount(&probe.devices);
  if (rc == cudaSuccess) return probe;
  (void)cudaGetLastError();
  probe.devices = 0;
  // Without an NVIDIA kernel driver the runtime says "insufficient driver" too: that is no GPU.
  // With one, the driver is older than this build's toolkit, which the user must hear about.
  std::error_code ec;
  if (rc == cudaErrorInsufficientDriver &&
      std::filesystem::exists("/proc/driver/nvidia/version", ec))
    probe.problem = std::string("the NVIDIA driver is too old for this build's CUDA runtime (") +
                    cudaGetErrorString(rc) + ")";
  return probe;
}

std::string cuda_pci_bus_id(int device) {
  char id[32] = {};
  ELBO_CUDA_CHECK(cudaDeviceGetPCIBusId(id, static_cast<int>(sizeof(id)), device));
  return id;
}

void cuda_use_device(int device) { ELBO_CUDA_CHECK(cudaSetDevice(device)); }

std::string cuda_device_name(int device) {
  cudaDeviceProp prop{};
  ELBO_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

std::unique_ptr<Backend> make_cuda_backend(int device) {
  return std::make_unique<CudaBackend>(device);
}

void* cuda_stream(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  ELBO_CHECK(cuda != nullptr, "backend " + backend.name() + " has no CUDA stream");
  return cuda->stream();
}

}  // namespace elbo
