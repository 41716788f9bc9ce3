// The step's bound on this machine (launch/roofline.h): what the step issues, recorded through a
// Backend wrapper, and the rates this machine reaches on exactly that work.
#include "launch/roofline.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <limits>
#include <numeric>
#include <vector>

#include "io/metrics.h"

namespace elbo {
namespace {

constexpr double kF = sizeof(float);

// Forwards every call to the inner backend; notes each GEMM's shape and each other call's bytes.
class RecordingBackend final : public ForwardingBackend {
 public:
  explicit RecordingBackend(Backend& inner) : ForwardingBackend(inner) {}
  StepWork work;
  bool optimizer = false;  // the calls that follow belong to the optimizer

  void fill_zero(float* p, size_t n) override {
    note(static_cast<double>(n));
    inner().fill_zero(p, n);
  }
  void gemm(Trans ta, Trans tb, int M, int N, int K, float alpha, const float* A, int lda,
            const float* B, int ldb, float beta, float* C, int ldc) override {
    work.gemms.push_back(GemmShape{ta, tb, M, N, K});
    inner().gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
  void bias_activation(float* y, const float* bias, int B, int N, Activation act) override {
    note(2.0 * B * N + N);
    inner().bias_activation(y, bias, B, N, act);
  }
  void activation_backward(float* dy, const float* y, float* dbias, int B, int N,
                           Activation act) override {
    note(3.0 * B * N + N);
    inner().activation_backward(dy, y, dbias, B, N, act);
  }
  void im2col(const float* image, float* col, int B, const ConvShape& g) override {
    note(double(B) * g.channels * g.image() + double(B) * g.col_rows() * g.grid());
    inner().im2col(image, col, B, g);
  }
  void col2im(const float* col, float* image, int B, const ConvShape& g) override {
    note(double(B) * g.channels * g.image() + double(B) * g.col_rows() * g.grid());
    inner().col2im(col, image, B, g);
  }
  void transpose_outer(const float* src, float* dst, int I, int J, int N) override {
    note(2.0 * I * J * N);
    inner().transpose_outer(src, dst, I, J, N);
  }
  void channel_bias_activation(float* y, const float* bias, int B, int C, int N,
                               Activation act) override {
    note(2.0 * B * C * N + C);
    inner().channel_bias_activation(y, bias, B, C, N, act);
  }
  void channel_activation_backward(float* dy, const float* y, float* dbias, int B, int C, int N,
                                   Activation act) override {
    note(3.0 * B * C * N + C);
    inner().channel_activation_backward(dy, y, dbias, B, C, N, act);
  }
  void reparameterize(const float* head, const float* eps, float* z, float* kl, int B,
                      int L) override {
    note(4.0 * B * L + B);  // head [B, 2L] and eps in, z and kl out
    inner().reparameterize(head, eps, z, kl, B, L);
  }
  void reparameterize_backward(const float* head, const float* eps, const float* dz, float* dhead,
                               int B, int L, float kl_weight) override {
    note(6.0 * B * L);  // head, eps and dz in, dhead [B, 2L] out
    inner().reparameterize_backward(head, eps, dz, dhead, B, L, kl_weight);
  }
  void reconstruction_loss(const float* out, const float* x, float* dout, float* recon, int B,
                           int D, Likelihood lik, float grad_scale) override {
    const double W = lik == Likelihood::GaussianLearned ? 2.0 * D : D;
    note(double(B) * W + double(B) * D + (dout ? double(B) * W : 0.0) + B);
    inner().reconstruction_loss(out, x, dout, recon, B, D, lik, grad_scale);
  }
  void fill_noise(float* eps, std::span<const uint32_t> ids, int L, RngKey key, uint32_t c2,
                  RngStream stream) override {
    note(double(ids.size()) * L);
    inner().fill_noise(eps, ids, L, key, c2, stream);
  }
  double sum(const float* v, size_t n) override {
    note(static_cast<double>(n));
    return inner().sum(v, n);
  }
  double sum_of_squares(const float* v, size_t n) override {
    note(static_cast<double>(n));
    return inner().sum_of_squares(v, n);
  }
  bool all_finite(const float* v, size_t n) override {
    note(static_cast<double>(n));
    return inner().all_finite(v, n);
  }
  void scale(float* v, size_t n, float s) override {
    note(2.0 * static_cast<double>(n));
    inner().scale(v, n, s);
  }
  void adam_step(float* params, const float* grads, float* m, float* v, size_t n,
                 const AdamHyper& h, float* counter, float* nonfinite) override {
    note(7.0 * static_cast<double>(n));  // params, grads, m, v in; params, m, v out
    inner().adam_step(params, grads, m, v, n, h, counter, nonfinite);
  }
  void adam_step_summed(float* params, const float* const* grads, int k, float* m, float* v,
                        size_t n, const AdamHyper& h, float* counter, float* nonfinite) override {
    note((6.0 + k) * static_cast<double>(n));  // as adam_step, with k gradients in
    inner().adam_step_summed(params, grads, k, m, v, n, h, counter, nonfinite);
  }
  void sum_buffers(const float* const* x, int k, size_t n, float* out) override {
    note((1.0 + k) * static_cast<double>(n));
    inner().sum_buffers(x, k, n, out);
  }
  void accumulate_losses(const float* recon, const float* kl, int B, float beta,
                         float* acc) override {
    note(2.0 * B + 8);
    inner().accumulate_losses(recon, kl, B, beta, acc);
  }

 private:
  void note(double floats) { (optimizer ? work.optimizer_bytes : work.elementwise_bytes) += kF * floats; }
};

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// The best time per call of `f` over several rounds of about 20 ms each (after one call to warm
// caches and libraries), the backend's work finished.
template <class F>
double best_seconds(Backend& be, F&& f) {
  f();
  be.synchronize();
  auto t0 = Clock::now();
  f();
  be.synchronize();
  const double once = std::max(seconds_since(t0), 1e-9);
  const int reps = static_cast<int>(std::clamp(0.02 / once, 1.0, 10000.0));
  double best = std::numeric_limits<double>::infinity();
  for (int round = 0; round < 5; ++round) {
    t0 = Clock::now();
    for (int i = 0; i < reps; ++i) f();
    be.synchronize();
    best = std::min(best, seconds_since(t0) / reps);
  }
  return best;
}

GemmRate time_gemm(Backend& be, const GemmShape& s) {
  const int M = s.M, N = s.N, K = s.K;
  const size_t a = size_t(M) * K, b = size_t(K) * N, c = size_t(M) * N;
  DeviceArray A(be, a), B(be, b), C(be, c);
  std::vector<float> host(std::max(a, b));
  for (size_t i = 0; i < host.size(); ++i) host[i] = 0.01f * static_cast<float>(i % 7) - 0.03f;
  be.upload(A.data(), host.data(), a);
  be.upload(B.data(), host.data(), b);
  const int lda = s.ta == Trans::No ? K : M, ldb = s.tb == Trans::No ? N : K;
  GemmRate r;
  r.shape = s;
  r.seconds = best_seconds(be, [&] {
    be.gemm(s.ta, s.tb, M, N, K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f, C.data(), N);
  });
  return r;
}

// STREAM's copy and triad on host arrays well beyond the caches, one thread (as the CPU
// backend's passes run), best of several rounds.
void host_stream(Roofline& r) {
  const size_t n = size_t{1} << 24;  // 64 MiB per array
  std::vector<float> a(n, 1.0f), b(n, 2.0f), c(n, 0.0f);
  const float s = 3.0f;
  double copy = 1e300, triad = 1e300;
  for (int round = 0; round < 5; ++round) {
    auto t0 = Clock::now();
    for (size_t i = 0; i < n; ++i) c[i] = a[i];
    copy = std::min(copy, seconds_since(t0));
    t0 = Clock::now();
    for (size_t i = 0; i < n; ++i) a[i] = b[i] + s * c[i];
    triad = std::min(triad, seconds_since(t0));
  }
  volatile float keep = a[n / 2] + c[n / 3];  // the loops' results are used
  (void)keep;
  r.copy_GBps = 2 * kF * static_cast<double>(n) / copy / 1e9;
  r.triad_GBps = 3 * kF * static_cast<double>(n) / triad / 1e9;
}

std::string trans(Trans t) { return t == Trans::Yes ? "T" : "N"; }

}  // namespace

StepWork record_step_work(Backend& inner, const ModelSpec& spec, int rows, const AdamConfig& adam,
                          double grad_clip, std::optional<Slice> optimizer_share,
                          int gradient_sources) {
  RecordingBackend rec(inner);
  Vae vae(rec, spec, rows, 1);
  const Slice s = optimizer_share.value_or(Slice{0, vae.num_params()});
  Adam opt(rec, s.count, adam);
  const size_t B = static_cast<size_t>(rows);
  DeviceArray x(rec, B * static_cast<size_t>(spec.input_dim)), eps(rec, B * spec.latent),
      health(rec, 5);
  rec.fill_zero(x.data(), x.size());
  rec.fill_zero(health.data(), 5);
  std::vector<uint32_t> ids(B);
  std::iota(ids.begin(), ids.end(), 0u);
  rec.work = StepWork{};  // the step from here on, as the trainer takes it
  rec.fill_noise(eps.data(), ids, spec.latent, rng_key(1), 0, RngStream::Noise);
  vae.forward_backward(x.data(), eps.data(), rows, 1.0f, 1.0f / static_cast<float>(rows));
  rec.accumulate_losses(vae.recon_per_sample(), vae.kl_per_sample(), rows, 1.0f, health.data());
  rec.optimizer = true;
  float* g = vae.grads() + s.offset;
  // The other ranks' gradients stand in as this rank's, k times: summed in Adam's pass, or first
  // on their own when clipping needs the sum's norm (the trainer's shared_update).
  const std::vector<const float*> sources(static_cast<size_t>(gradient_sources), g);
  if (gradient_sources > 1 && grad_clip == 0) {
    opt.step_summed(vae.params() + s.offset, sources.data(), gradient_sources, health.data() + 4);
    return rec.work;
  }
  if (gradient_sources > 1) rec.sum_buffers(sources.data(), gradient_sources, s.count, g);
  if (grad_clip > 0) clip_grad_norm(rec, g, s.count, grad_clip);
  opt.step(vae.params() + s.offset, g, health.data() + 4);
  return rec.work;
}

double Roofline::bound_seconds() const {
  return gemm_seconds + (work.optimizer_bytes + work.elementwise_bytes) / (bandwidth_GBps * 1e9);
}

Roofline measure_roofline(Backend& backend, bool host, const StepWork& work) {
  Roofline r;
  r.work = work;
  for (const GemmShape& s : work.gemms) {
    const auto seen = std::find_if(r.gemms.begin(), r.gemms.end(),
                                   [&](const GemmRate& g) { return g.shape == s; });
    if (seen != r.gemms.end()) {
      ++seen->calls;
      continue;
    }
    r.gemms.push_back(time_gemm(backend, s));
    r.gemms.back().calls = 1;
  }
  for (const GemmRate& g : r.gemms) {
    r.gemm_seconds += g.calls * g.seconds;
    r.gemm_flops += g.calls * g.shape.flops();
  }
  host_stream(r);
  const size_t n = size_t{1} << (host ? 24 : 26);
  DeviceArray v(backend, n);
  backend.fill_zero(v.data(), n);
  const double scale_s = best_seconds(backend, [&] { backend.scale(v.data(), n, 1.0f); });
  r.backend_scale_GBps = 2 * kF * static_cast<double>(n) / scale_s / 1e9;
  r.bandwidth_GBps = host ? r.triad_GBps : r.backend_scale_GBps;
  r.bandwidth_source = host ? "stream_triad" : "backend_scale";
  return r;
}

std::string roofline_json(const Roofline& r, double measured_step_s, int rows) {
  std::string gemms = "[";
  for (const GemmRate& g : r.gemms) {
    if (gemms.size() > 1) gemms += ", ";
    gemms += JsonLine()
                 .add("ta", trans(g.shape.ta)).add("tb", trans(g.shape.tb))
                 .add("M", g.shape.M).add("N", g.shape.N).add("K", g.shape.K)
                 .add("calls_per_step", g.calls).add("us_per_call", g.seconds * 1e6)
                 .add("GFLOPps", g.gflops_per_s())
                 .str();
  }
  gemms += "]";
  const double bw = r.bandwidth_GBps * 1e9;
  const double bound = r.bound_seconds();
  return JsonLine()
      .add("rows_per_rank", rows)
      .add_json("gemms", gemms)
      .add("gemm_flops_per_step", r.gemm_flops)
      .add("gemm_GFLOPps", r.gemm_flops / r.gemm_seconds / 1e9)
      .add("stream_copy_GBps", r.copy_GBps)
      .add("stream_triad_GBps", r.triad_GBps)
      .add("backend_scale_GBps", r.backend_scale_GBps)
      .add("bandwidth_GBps", r.bandwidth_GBps)
      .add("bandwidth_source", r.bandwidth_source)
      .add("optimizer_bytes_per_step", r.work.optimizer_bytes)
      .add("elementwise_bytes_per_step", r.work.elementwise_bytes)
      .add("bound_gemm_ms", r.gemm_seconds * 1e3)
      .add("bound_optimizer_ms", r.work.optimizer_bytes / bw * 1e3)
      .add("bound_elementwise_ms", r.work.elementwise_bytes / bw * 1e3)
      .add("bound_step_ms", bound * 1e3)
      .add("measured_step_ms", measured_step_s * 1e3)
      .add("bound_over_measured", bound / measured_step_s)
      .str();
}

}  // namespace elbo
