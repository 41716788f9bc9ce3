// Backend: the handful of primitives the model needs. The model is written once against this
// interface; core/cpu implements it with BLAS and loops, core/cuda with cuBLAS and kernels.
// All matrices are row-major; pointers are in the backend's memory (host or device).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>

#include "core/elementwise.h"
#include "core/error.h"
#include "core/hd.h"
#include "core/philox.h"

namespace elbo {

enum class Trans { No, Yes };

// The geometry of one convolution: an image [C, H, W] per sample and the grid [out_h, out_w] of
// k x k windows (stride, zero padding) over it. A Conv2d maps the image to the grid; a
// ConvTranspose2d maps the grid back to the image, so one geometry serves both.
struct ConvShape {
  int channels = 0, height = 0, width = 0;
  int kernel = 1, stride = 1, padding = 0;
  int out_h = 0, out_w = 0;
  ELBO_HD int col_rows() const { return channels * kernel * kernel; }  // C k k
  ELBO_HD int grid() const { return out_h * out_w; }
  ELBO_HD int image() const { return height * width; }
};

// Backend work recorded once and replayed as a whole (a CUDA graph): one launch per step instead
// of dozens, with no per-launch host cost.
class CapturedWork {
 public:
  virtual ~CapturedWork() = default;
  virtual void replay() = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // Records the backend work that `work` enqueues, without running it, for replay. Returns
  // nullptr when this backend cannot (the CPU) or the work cannot be recorded (it synchronises,
  // or a library refuses); the caller then runs `work` itself. Everything `work` passes to the
  // backend must stay valid, and its host-side arguments fixed, for as long as it is replayed.
  virtual std::unique_ptr<CapturedWork> capture(const std::function<void()>& work) {
    (void)work;
    return nullptr;
  }
  // True when the backend's memory is host memory and reading it back costs nothing.
  virtual bool is_host() const { return false; }
  // How large (in floats) a convolution's col should be at most: the model then runs each conv
  // layer over groups of samples whose col fits, so that col, and the transposes around the
  // GEMMs, stay in cache. 0: the whole batch at once (a device, where one launch is best).
  virtual size_t conv_col_floats() const { return 0; }
  // Waits until all work enqueued so far has run. Training never calls it (it would stall the
  // device between steps); `elbo bench` does, to time the phases of a step on a device.
  virtual void synchronize() {}

  // Memory.
  virtual float* allocate(size_t n) = 0;
  virtual void deallocate(float* p) noexcept = 0;
  virtual void upload(float* dst, const float* host_src, size_t n) = 0;
  virtual void download(float* host_dst, const float* src, size_t n) = 0;
  // A training batch to the device, without waiting: on a device it overlaps the previous step's
  // compute. Contract: the caller alternates dst between two buffers, so that the one written
  // was last read by work enqueued before the previous call. host_src may be reused on return.
  virtual void upload_input(float* dst, const float* host_src, size_t n) = 0;
  virtual void fill_zero(float* p, size_t n) = 0;

  // C[M,N] = alpha op(A)[M,K] op(B)[K,N] + beta C.
  virtual void gemm(Trans ta, Trans tb, int M, int N, int K, float alpha, const float* A, int lda,
                    const float* B, int ldb, float beta, float* C, int ldc) = 0;

  // y[B,N] = act(y + bias) in place.
  virtual void bias_activation(float* y, const float* bias, int B, int N, Activation act) = 0;
  // dy[B,N] *= act'(y) in place, then dbias[N] = column sums of dy (overwritten).
  virtual void activation_backward(float* dy, const float* y, float* dbias, int B, int N,
                                   Activation act) = 0;

  // Convolution as GEMMs. im2col: image [B, C, H, W] (NCHW) to col [C k k, B out_h out_w], row
  // (c k + i) k + j, column (b out_h + oy) out_w + ox, zero where the window leaves the image.
  virtual void im2col(const float* image, float* col, int B, const ConvShape& g) = 0;
  // col2im: the adjoint, image[b, c, y, x] = sum of the col entries that im2col would read from
  // it (every element overwritten).
  virtual void col2im(const float* col, float* image, int B, const ConvShape& g) = 0;
  // dst[j, i, n] = src[i, j, n] for src [I, J, N]: NCHW <-> CNHW, where the batch joins the GEMMs'
  // columns.
  virtual void transpose_outer(const float* src, float* dst, int I, int J, int N) = 0;
  // y[B, C, N] = act(y + bias[c]) in place, and its backward: dy *= act'(y), dbias[C] = sums of
  // dy over b and n (overwritten).
  virtual void channel_bias_activation(float* y, const float* bias, int B, int C, int N,
                                       Activation act) = 0;
  virtual void channel_activation_backward(float* dy, const float* y, float* dbias, int B, int C,
                                           int N, Activation act) = 0;

  // head[B, 2L] = [mu | logvar]; writes z[B,L] and kl[B] (per-sample KL).
  virtual void reparameterize(const float* head, const float* eps, float* z, float* kl, int B,
                              int L) = 0;
  // dhead[B, 2L] from dz[B,L]; kl_weight = beta times the objective's scale.
  virtual void reparameterize_backward(const float* head, const float* eps, const float* dz,
                                       float* dhead, int B, int L, float kl_weight) = 0;

  // Reconstruction term per sample (recon[B]) and, when dout is not null, its gradient w.r.t. the
  // decoder output times grad_scale, in the same pass. x is [B, D]; out and dout are [B, D], or
  // [B, 2D] (means, then log-variances) for GaussianLearned.
  virtual void reconstruction_loss(const float* out, const float* x, float* dout, float* recon,
                                   int B, int D, Likelihood lik, float grad_scale) = 0;

  // eps[B,L]: noise for samples with the given ids (host array) at counter word c2 (the epoch).
  virtual void fill_noise(float* eps, std::span<const uint32_t> sample_ids, int L, RngKey key,
                          uint32_t c2, RngStream stream) = 0;

  // Reductions return to the host (a synchronisation point on devices).
  virtual double sum(const float* v, size_t n) = 0;
  virtual double sum_of_squares(const float* v, size_t n) = 0;
  // False when any element is NaN or infinite.
  virtual bool all_finite(const float* v, size_t n) = 0;
  virtual void scale(float* v, size_t n, float s) = 0;
  // Gradient compression (distributed.grad_compression: bf16): x[n] to bfloat16 bits in y[n]
  // (backend memory, e.g. a DeviceArray of (n + 1) / 2 floats) and back (bfloat16_bits).
  virtual void to_bfloat16(const float* x, uint16_t* y, size_t n) = 0;
  virtual void from_bfloat16(const uint16_t* y, float* x, size_t n) = 0;

  // One Adam/AdamW update over n elements: advances the step counter (*counter, an int32 in a
  // float's bits, see counter_value), computes that step's constants (adam_constants) and updates
  // every element. Sets *nonfinite to 1 when a gradient is NaN or infinite, checked in the same
  // pass; never clears it. All state is in backend memory and nothing is read back, so a device
  // neither synchronises nor depends on host arguments that change per step (graph replay).
  virtual void adam_step(float* params, const float* grads, float* m, float* v, size_t n,
                         const AdamHyper& h, float* counter, float* nonfinite) = 0;
  // adam_step with gradients that are the sum of k buffers, added in their order, in one pass
  // (distributed.shared_memory: each rank's gradients where that rank wrote them). Host backends
  // only; the default refuses.
  virtual void adam_step_summed(float* params, const float* const* grads, int k, float* m,
                                float* v, size_t n, const AdamHyper& h, float* counter,
                                float* nonfinite) {
    (void)params, (void)grads, (void)k, (void)m, (void)v, (void)n, (void)h, (void)counter,
        (void)nonfinite;
    throw_internal("adam_step_summed needs a host backend", __FILE__, __LINE__);
  }
  // out[i] = x[0][i] + ... + x[k - 1][i], added in that order; out may be one of the x. Host
  // backends only, as adam_step_summed.
  virtual void sum_buffers(const float* const* x, int k, size_t n, float* out) {
    (void)x, (void)k, (void)n, (void)out;
    throw_internal("sum_buffers needs a host backend", __FILE__, __LINE__);
  }

  // acc[0..3] += (sum of recon, sum of kl, sum of recon + beta kl, B) over a batch's per-sample
  // terms: running loss sums kept in backend memory until the caller downloads them.
  virtual void accumulate_losses(const float* recon, const float* kl, int B, float beta,
                                 float* acc) = 0;
};

// Passes every call to an inner backend. Wrappers that observe a backend (the roofline's
// recorder, the tests' counters, a CPU that pretends to capture) derive from it and override only
// what they watch, so that a primitive added to Backend reaches them all.
class ForwardingBackend : public Backend {
 public:
  explicit ForwardingBackend(Backend& inner) : in_(inner) {}
  std::string name() const override { return in_.name(); }
  std::unique_ptr<CapturedWork> capture(const std::function<void()>& work) override {
    return in_.capture(work);
  }
  bool is_host() const override { return in_.is_host(); }
  size_t conv_col_floats() const override { return in_.conv_col_floats(); }
  void synchronize() override { in_.synchronize(); }
  float* allocate(size_t n) override { return in_.allocate(n); }
  void deallocate(float* p) noexcept override { in_.deallocate(p); }
  void upload(float* d, const float* s, size_t n) override { in_.upload(d, s, n); }
  void download(float* d, const float* s, size_t n) override { in_.download(d, s, n); }
  void upload_input(float* d, const float* s, size_t n) override { in_.upload_input(d, s, n); }
  void fill_zero(float* p, size_t n) override { in_.fill_zero(p, n); }
  void gemm(Trans ta, Trans tb, int M, int N, int K, float alpha, const float* A, int lda,
            const float* B, int ldb, float beta, float* C, int ldc) override {
    in_.gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
  void bias_activation(float* y, const float* bias, int B, int N, Activation act) override {
    in_.bias_activation(y, bias, B, N, act);
  }
  void activation_backward(float* dy, const float* y, float* dbias, int B, int N,
                           Activation act) override {
    in_.activation_backward(dy, y, dbias, B, N, act);
  }
  void im2col(const float* image, float* col, int B, const ConvShape& g) override {
    in_.im2col(image, col, B, g);
  }
  void col2im(const float* col, float* image, int B, const ConvShape& g) override {
    in_.col2im(col, image, B, g);
  }
  void transpose_outer(const float* src, float* dst, int I, int J, int N) override {
    in_.transpose_outer(src, dst, I, J, N);
  }
  void channel_bias_activation(float* y, const float* bias, int B, int C, int N,
                               Activation act) override {
    in_.channel_bias_activation(y, bias, B, C, N, act);
  }
  void channel_activation_backward(float* dy, const float* y, float* dbias, int B, int C, int N,
                                   Activation act) override {
    in_.channel_activation_backward(dy, y, dbias, B, C, N, act);
  }
  void reparameterize(const float* head, const float* eps, float* z, float* kl, int B,
                      int L) override {
    in_.reparameterize(head, eps, z, kl, B, L);
  }
  void reparameterize_backward(const float* head, const float* eps, const float* dz, float* dhead,
                               int B, int L, float kl_weight) override {
    in_.reparameterize_backward(head, eps, dz, dhead, B, L, kl_weight);
  }
  void reconstruction_loss(const float* out, const float* x, float* dout, float* recon, int B,
                           int D, Likelihood lik, float grad_scale) override {
    in_.reconstruction_loss(out, x, dout, recon, B, D, lik, grad_scale);
  }
  void fill_noise(float* eps, std::span<const uint32_t> ids, int L, RngKey key, uint32_t c2,
                  RngStream stream) override {
    in_.fill_noise(eps, ids, L, key, c2, stream);
  }
  double sum(const float* v, size_t n) override { return in_.sum(v, n); }
  double sum_of_squares(const float* v, size_t n) override { return in_.sum_of_squares(v, n); }
  bool all_finite(const float* v, size_t n) override { return in_.all_finite(v, n); }
  void scale(float* v, size_t n, float s) override { in_.scale(v, n, s); }
  void to_bfloat16(const float* x, uint16_t* y, size_t n) override { in_.to_bfloat16(x, y, n); }
  void from_bfloat16(const uint16_t* y, float* x, size_t n) override {
    in_.from_bfloat16(y, x, n);
  }
  void adam_step(float* params, const float* grads, float* m, float* v, size_t n,
                 const AdamHyper& h, float* counter, float* nonfinite) override {
    in_.adam_step(params, grads, m, v, n, h, counter, nonfinite);
  }
  void adam_step_summed(float* params, const float* const* grads, int k, float* m, float* v,
                        size_t n, const AdamHyper& h, float* counter, float* nonfinite) override {
    in_.adam_step_summed(params, grads, k, m, v, n, h, counter, nonfinite);
  }
  void sum_buffers(const float* const* x, int k, size_t n, float* out) override {
    in_.sum_buffers(x, k, n, out);
  }
  void accumulate_losses(const float* recon, const float* kl, int B, float beta,
                         float* acc) override {
    in_.accumulate_losses(recon, kl, B, beta, acc);
  }

 protected:
  Backend& inner() { return in_; }

 private:
  Backend& in_;
};

// Owning array in a backend's memory, or a view of n floats that someone else owns (view()).
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(Backend& b, size_t n) : backend_(&b), data_(n ? b.allocate(n) : nullptr), size_(n) {}
  static DeviceArray view(float* data, size_t n) {
    DeviceArray a;
    a.data_ = data;
    a.size_ = n;
    return a;
  }
  DeviceArray(DeviceArray&& o) noexcept { swap(o); }
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    DeviceArray tmp(std::move(o));
    swap(tmp);
    return *this;
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() {
    if (data_ && backend_) backend_->deallocate(data_);
  }
  float* data() { return data_; }
  const float* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  void swap(DeviceArray& o) noexcept {
    std::swap(backend_, o.backend_);
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
  }
  Backend* backend_ = nullptr;
  float* data_ = nullptr;
  size_t size_ = 0;
};

// The CPU backend; always available. conv_col_floats: its answer to Backend::conv_col_floats; the
// default, 1 MiB of col with the rows around it, stays inside a core's L2.
std::unique_ptr<Backend> make_cpu_backend(size_t conv_col_floats = size_t{1} << 18);
// Prepares the calling thread for CPU training: BLAS threads (0 leaves the library's default, for
// OpenBLAS its environment variables, else every core) and flush-to-zero for denormal floats.
void configure_cpu_thread(int blas_threads);
// The BLAS library that the CPU backend calls, as it describes itself ("OpenBLAS 0.3.21 ..."), and
// the threads it uses now; "cblas" and 0 for a library that does not say.
std::string blas_description();
int blas_threads();
// OpenBLAS chooses its kernels once, when it loads, from the CPU's model number, and a CPU newer
// than the library gets the generic Prescott (SSE3) kernels: OpenBLAS 0.3.21 (Debian 12) does
// not know Emerald Rapids (family 6, model 207), and its sgemm there runs about 2.6x slower than
// with the AVX-512 kernels the CPU supports. Returns the core type to ask for with
// OPENBLAS_CORETYPE ("SkylakeX" for AVX-512, "Haswell" for AVX2 and FMA) when the library fell
// back to Prescott on a CPU that can do better, else empty (another BLAS, a known CPU, an old one).
std::string blas_core_to_request();

}  // namespace elbo
