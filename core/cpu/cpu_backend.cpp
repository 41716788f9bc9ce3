// The CPU backend: GEMMs through CBLAS, everything else as plain loops over the shared
// elementwise functions of core/elementwise.h.
#include <cblas.h>

#include <strings.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif
#include <new>
#include <string>

#include "core/backend.h"
#include "core/cpu/im2col.h"
#include "core/error.h"

extern "C" void openblas_set_num_threads(int) __attribute__((weak));
extern "C" int openblas_get_num_threads() __attribute__((weak));
extern "C" char* openblas_get_config() __attribute__((weak));
extern "C" char* openblas_get_corename(void) __attribute__((weak));

namespace elbo {
namespace {

CBLAS_TRANSPOSE to_cblas(Trans t) { return t == Trans::Yes ? CblasTrans : CblasNoTrans; }

// The hot loops are compiled twice, for baseline x86-64 and for AVX2+FMA (x86-64-v3), and the
// loader picks the one the CPU supports: twice the vector width without giving up portability.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ELBO_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define ELBO_CPU_CLONES
#endif

template <Likelihood lik, bool with_grad>
ELBO_CPU_CLONES void loss_rows(const float* out, const float* x, float* dout, float* recon, int B, int D,
                      float grad_scale) {
  for (int b = 0; b < B; ++b) {
    const size_t row = static_cast<size_t>(b) * D;
    float total = 0.0f;
#pragma omp simd reduction(+ : total)
    for (int j = 0; j < D; ++j) {
      ValueGrad vg;
      if constexpr (lik == Likelihood::Bernoulli) vg = bce_with_logits(out[row + j], x[row + j]);
      else vg = gaussian_sq_error(out[row + j], x[row + j]);
      total += vg.value;
      if constexpr (with_grad) dout[row + j] = grad_scale * vg.grad;
    }
    recon[b] = lik == Likelihood::Gaussian ? total + static_cast<float>(D) * kHalfLog2Pi : total;
  }
}

// Rows of [means | log-variances], 2D wide.
template <bool with_grad>
ELBO_CPU_CLONES void learned_gaussian_rows(const float* out, const float* x, float* dout,
                                           float* recon, int B, int D, float grad_scale) {
  for (int b = 0; b < B; ++b) {
    const float* mean = out + static_cast<size_t>(b) * 2 * D;
    const float* xr = x + static_cast<size_t>(b) * D;
    float total = 0.0f;
    for (int j = 0; j < D; ++j) {
      const ValueGrad2 vg = gaussian_learned(mean[j], mean[D + j], xr[j]);
      total += vg.value;
      if constexpr (with_grad) {
        float* drow = dout + static_cast<size_t>(b) * 2 * D;
        drow[j] = grad_scale * vg.dmean;
        drow[D + j] = grad_scale * vg.dlogvar;
      }
    }
    recon[b] = total + static_cast<float>(D) * kHalfLog2Pi;
  }
}

// Entry (i, j) of every k x k window over one channel plane: a row of col, out_h x out_w, zero
// where the window lies in the padding. read_window fills the col row, add_window is its adjoint.
// The grid columns whose pixel lies inside the image are [lo, hi), computed once per (i, j), so the
// inner loops are plain strided copies.
struct Inside {
  int lo, hi;
};
Inside inside_range(int n_out, int size, int stride, int offset) {  // pixel = o stride + offset
  int lo = 0, hi = n_out;
  while (lo < hi && lo * stride + offset < 0) ++lo;
  while (hi > lo && (hi - 1) * stride + offset >= size) --hi;
  return {lo, hi};
}

void read_window(const float* plane, float* col_row, const ConvShape& g, int i, int j) {
  const int off = j - g.padding;
  const Inside xs = inside_range(g.out_w, g.width, g.stride, off);
  for (int oy = 0; oy < g.out_h; ++oy) {
    const int y = oy * g.stride - g.padding + i;
    float* c = col_row + static_cast<size_t>(oy) * g.out_w;
    if (y < 0 || y >= g.height) {
      std::memset(c, 0, static_cast<size_t>(g.out_w) * sizeof(float));
      continue;
    }
    const float* row = plane + static_cast<size_t>(y) * g.width;
    for (int ox = 0; ox < xs.lo; ++ox) c[ox] = 0.0f;
    for (int ox = xs.lo; ox < xs.hi; ++ox) c[ox] = row[ox * g.stride + off];
    for (int ox = xs.hi; ox < g.out_w; ++ox) c[ox] = 0.0f;
  }
}

void add_window(const float* col_row, float* plane, const ConvShape& g, int i, int j) {
  const int off = j - g.padding;
  const Inside xs = inside_range(g.out_w, g.width, g.stride, off);
  for (int oy = 0; oy < g.out_h; ++oy) {
    const int y = oy * g.stride - g.padding + i;
    if (y < 0 || y >= g.height) continue;
    const float* c = col_row + static_cast<size_t>(oy) * g.out_w;
    float* row = plane + static_cast<size_t>(y) * g.width;
    for (int ox = xs.lo; ox < xs.hi; ++ox) row[ox * g.stride + off] += c[ox];
  }
}

// dy *= act'(y) over [B, C, N] and dbias[c] = the sum over b and n, in one pass per plane.
template <Activation act>
ELBO_CPU_CLONES void channel_backward_rows(float* dy, const float* y, float* dbias, int B, int C,
                                           int N) {
  std::memset(dbias, 0, static_cast<size_t>(C) * sizeof(float));
  for (int b = 0; b < B; ++b)
    for (int c = 0; c < C; ++c) {
      const size_t row = (static_cast<size_t>(b) * C + c) * N;
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int n = 0; n < N; ++n) {
        if constexpr (act != Activation::None)
          dy[row + n] *= activation_grad_from_output(y[row + n], act);
        s += dy[row + n];
      }
      dbias[c] += s;
    }
}

// out[i] = grads[0][at + i] + grads[1][at + i] + ... + grads[k - 1][at + i], added in that order;
// out is none of the grads. The sums go block by block through an L1-sized buffer of kSumBlock.
constexpr size_t kSumBlock = 2048;
ELBO_CPU_CLONES void sum_in_order(const float* const* grads, int k, size_t at, size_t n,
                                  float* out) {
  const float* a = grads[0] + at;
  for (size_t i = 0; i < n; ++i) out[i] = a[i];
  for (int r = 1; r < k; ++r) {
    const float* b = grads[r] + at;
    for (size_t i = 0; i < n; ++i) out[i] += b[i];
  }
}

// g * 0 is 0 for finite g and NaN for NaN or infinite g, so one sum tells whether all were finite.
ELBO_CPU_CLONES bool adam_loop(float* params, const float* grads, float* m, float* v, size_t n,
                               const AdamConstants& c) {
  float probe = 0.0f;
#pragma omp simd reduction(+ : probe)
  for (size_t i = 0; i < n; ++i) {
    probe += grads[i] * 0.0f;
    adam_update(params[i], grads[i], m[i], v[i], c);
  }
  return probe == 0.0f;
}

// adam_loop on the sum a[i] + b[i], in one pass (a loop over any number of sources does not
// vectorise: 4x slower).
ELBO_CPU_CLONES bool adam_loop_of_sum(float* params, const float* a, const float* b, float* m,
                                      float* v, size_t n, const AdamConstants& c) {
  float probe = 0.0f;
#pragma omp simd reduction(+ : probe)
  for (size_t i = 0; i < n; ++i) {
    const float g = a[i] + b[i];
    probe += g * 0.0f;
    adam_update(params[i], g, m[i], v[i], c);
  }
  return probe == 0.0f;
}


class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  bool is_host() const override { return true; }
  explicit CpuBackend(size_t conv_col_floats) : conv_col_floats_(conv_col_floats) {}
  size_t conv_col_floats() const override { return conv_col_floats_; }

  float* allocate(size_t n) override {
    // 64-byte alignment keeps rows friendly to vector loads and BLAS packing. Arrays of 1 MiB or
    // more (activations, col, parameters, gradients, moments) take whole 2 MiB pages and ask for
    // transparent huge pages: the conv layers stream through them, and with 4 KiB pages the
    // TLB misses cost about 2% of a conv step (paired runs of conv_step_bench).
    constexpr size_t kHuge = size_t{2} << 20;
    size_t bytes = std::max<size_t>(n * sizeof(float), 64);
    const size_t align = bytes >= kHuge / 2 ? kHuge : 64;
    bytes = (bytes + align - 1) / align * align;  // aligned_alloc's size is a multiple of align
    void* p = std::aligned_alloc(align, bytes);
    if (!p) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    if (align == kHuge) madvise(p, bytes, MADV_HUGEPAGE);  // advice only: no huge pages is fine
#endif
    return static_cast<float*>(p);
  }
  void deallocate(float* p) noexcept override { std::free(p); }
  void upload(float* dst, const float* src, size_t n) override { copy(dst, src, n); }
  void upload_input(float* dst, const float* src, size_t n) override { copy(dst, src, n); }
  void download(float* dst, const float* src, size_t n) override { copy(dst, src, n); }
  void fill_zero(float* p, size_t n) override { std::memset(p, 0, n * sizeof(float)); }

  void gemm(Trans ta, Trans tb, int M, int N, int K, float alpha, const float* A, int lda,
            const float* B, int ldb, float beta, float* C, int ldc) override {
    // OpenBLAS clears C for beta = 0 in a pass of its own that is slower than memset: 10-30% of
    // the conv layers' products with K <= 64, whose C is large (col) or whose product is small.
    // C = 0 + alpha AB is the same sum.
    if (beta == 0.0f && M > 0 && N > 0) {
      if (ldc == N) {
        std::memset(C, 0, static_cast<size_t>(M) * N * sizeof(float));
      } else {
        for (int i = 0; i < M; ++i)
          std::memset(C + static_cast<size_t>(i) * ldc, 0, static_cast<size_t>(N) * sizeof(float));
      }
      beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, to_cblas(ta), to_cblas(tb), M, N, K, alpha, A, lda, B, ldb, beta, C,
                ldc);
  }

  void bias_activation(float* y, const float* bias, int B, int N, Activation act) override {
    for (int b = 0; b < B; ++b) {
      float* row = y + static_cast<size_t>(b) * N;
      switch (act) {  // one loop per activation so each vectorises
        case Activation::Relu:
          for (int j = 0; j < N; ++j) row[j] = activate(row[j] + bias[j], Activation::Relu);
          break;
        case Activation::Tanh:
          for (int j = 0; j < N; ++j) row[j] = activate(row[j] + bias[j], Activation::Tanh);
          break;
        case Activation::None:
          for (int j = 0; j < N; ++j) row[j] += bias[j];
          break;
      }
    }
  }

  void activation_backward(float* dy, const float* y, float* dbias, int B, int N,
                           Activation act) override {
    std::memset(dbias, 0, static_cast<size_t>(N) * sizeof(float));
    for (int b = 0; b < B; ++b) {
      float* drow = dy + static_cast<size_t>(b) * N;
      const float* yrow = y + static_cast<size_t>(b) * N;
      if (act != Activation::None)
        for (int j = 0; j < N; ++j) drow[j] *= activation_grad_from_output(yrow[j], act);
      for (int j = 0; j < N; ++j) dbias[j] += drow[j];
    }
  }

  void im2col(const float* image, float* col, int B, const ConvShape& g) override {
    if (narrow_conv_available(g)) return narrow_im2col(image, col, B, g);
    if (strided_conv_available(g)) return strided_im2col(image, col, B, g);
    const size_t cols = static_cast<size_t>(B) * g.grid();
    for (int c = 0; c < g.channels; ++c)
      for (int i = 0; i < g.kernel; ++i)
        for (int j = 0; j < g.kernel; ++j) {
          float* row = col + static_cast<size_t>((c * g.kernel + i) * g.kernel + j) * cols;
          for (int b = 0; b < B; ++b)
            read_window(image + plane_offset(b, c, g), row + static_cast<size_t>(b) * g.grid(), g,
                        i, j);
        }
  }

  void col2im(const float* col, float* image, int B, const ConvShape& g) override {
    if (narrow_conv_available(g)) return narrow_col2im(col, image, B, g);
    if (strided_conv_available(g)) return strided_col2im(col, image, B, g);
    std::memset(image, 0, static_cast<size_t>(B) * g.channels * g.image() * sizeof(float));
    const size_t cols = static_cast<size_t>(B) * g.grid();
    for (int c = 0; c < g.channels; ++c)
      for (int i = 0; i < g.kernel; ++i)
        for (int j = 0; j < g.kernel; ++j) {
          const float* row = col + static_cast<size_t>((c * g.kernel + i) * g.kernel + j) * cols;
          for (int b = 0; b < B; ++b)
            add_window(row + static_cast<size_t>(b) * g.grid(), image + plane_offset(b, c, g), g, i,
                       j);
        }
  }

  void transpose_outer(const float* src, float* dst, int I, int J, int N) override {
    for (int i = 0; i < I; ++i)
      for (int j = 0; j < J; ++j)
        copy(dst + (static_cast<size_t>(j) * I + i) * N, src + (static_cast<size_t>(i) * J + j) * N,
             static_cast<size_t>(N));
  }

  void channel_bias_activation(float* y, const float* bias, int B, int C, int N,
                               Activation act) override {
    for (int b = 0; b < B; ++b)
      for (int c = 0; c < C; ++c) {
        // One channel plane is a row of N with a constant bias: the dense loop with a broadcast.
        float* row = y + (static_cast<size_t>(b) * C + c) * N;
        const float bc = bias[c];
        switch (act) {
          case Activation::Relu:
            for (int n = 0; n < N; ++n) row[n] = activate(row[n] + bc, Activation::Relu);
            break;
          case Activation::Tanh:
            for (int n = 0; n < N; ++n) row[n] = activate(row[n] + bc, Activation::Tanh);
            break;
          case Activation::None:
            for (int n = 0; n < N; ++n) row[n] += bc;
            break;
        }
      }
  }

  void channel_activation_backward(float* dy, const float* y, float* dbias, int B, int C, int N,
                                   Activation act) override {
    switch (act) {  // one instantiation per activation so that the loop vectorises
      case Activation::Relu:
        return channel_backward_rows<Activation::Relu>(dy, y, dbias, B, C, N);
      case Activation::Tanh:
        return channel_backward_rows<Activation::Tanh>(dy, y, dbias, B, C, N);
      case Activation::None:
        return channel_backward_rows<Activation::None>(dy, y, dbias, B, C, N);
    }
  }

  void reparameterize(const float* head, const float* eps, float* z, float* kl, int B,
                      int L) override {
    for (int b = 0; b < B; ++b) {
      const float* mu = head + static_cast<size_t>(b) * 2 * L;
      const float* logvar = mu + L;
      float kl_sum = 0.0f;
      for (int j = 0; j < L; ++j) {
        const size_t k = static_cast<size_t>(b) * L + j;
        const LatentForward f = elbo::reparameterize(mu[j], logvar[j], eps[k]);
        z[k] = f.z;
        kl_sum += f.kl;
      }
      kl[b] = kl_sum;
    }
  }

  void reparameterize_backward(const float* head, const float* eps, const float* dz, float* dhead,
                               int B, int L, float kl_weight) override {
    for (int b = 0; b < B; ++b) {
      const size_t row = static_cast<size_t>(b) * 2 * L;
      for (int j = 0; j < L; ++j) {
        const size_t k = static_cast<size_t>(b) * L + j;
        const LatentGrad g = elbo::reparameterize_backward(head[row + j], head[row + L + j], eps[k],
                                                           dz[k], kl_weight);
        dhead[row + j] = g.dmu;
        dhead[row + L + j] = g.dlogvar;
      }
    }
  }

  void reconstruction_loss(const float* out, const float* x, float* dout, float* recon, int B,
                           int D, Likelihood lik, float grad_scale) override {
    // One instantiation per case keeps the inner loops free of branches, so they vectorise.
    if (lik == Likelihood::Bernoulli) {
      if (dout) loss_rows<Likelihood::Bernoulli, true>(out, x, dout, recon, B, D, grad_scale);
      else loss_rows<Likelihood::Bernoulli, false>(out, x, dout, recon, B, D, grad_scale);
    } else if (lik == Likelihood::GaussianLearned) {
      if (dout)
        learned_gaussian_rows<true>(out, x, dout, recon, B, D, grad_scale);
      else
        learned_gaussian_rows<false>(out, x, dout, recon, B, D, grad_scale);
    } else {
      if (dout) loss_rows<Likelihood::Gaussian, true>(out, x, dout, recon, B, D, grad_scale);
      else loss_rows<Likelihood::Gaussian, false>(out, x, dout, recon, B, D, grad_scale);
    }
  }

  void fill_noise(float* eps, std::span<const uint32_t> sample_ids, int L, RngKey key, uint32_t c2,
                  RngStream stream) override {
    for (size_t b = 0; b < sample_ids.size(); ++b) {
      float* row = eps + b * static_cast<size_t>(L);
      for (int j0 = 0; j0 < L; j0 += 4) {  // one Philox draw gives four normals
        const Philox4 d = philox_draw(key, static_cast<uint32_t>(j0 >> 2), sample_ids[b], c2, stream);
        for (int k = 0; k < 4 && j0 + k < L; ++k) row[j0 + k] = normal_from_draw(d, k);
      }
    }
  }

  double sum(const float* v, size_t n) override {
    double s = 0.0;
    for (size_t i = 0; i < n; ++i) s += v[i];
    return s;
  }
  double sum_of_squares(const float* v, size_t n) override {
    double s = 0.0;
    for (size_t i = 0; i < n; ++i) s += static_cast<double>(v[i]) * v[i];
    return s;
  }
  bool all_finite(const float* v, size_t n) override {
    for (size_t i = 0; i < n; ++i)
      if (!std::isfinite(v[i])) return false;
    return true;
  }
  void scale(float* v, size_t n, float s) override {
    for (size_t i = 0; i < n; ++i) v[i] *= s;
  }
  void to_bfloat16(const float* x, uint16_t* y, size_t n) override {
    for (size_t i = 0; i < n; ++i) y[i] = bfloat16_bits(x[i]);
  }
  void from_bfloat16(const uint16_t* y, float* x, size_t n) override {
    for (size_t i = 0; i < n; ++i) x[i] = from_bfloat16_bits(y[i]);
  }

  void adam_step(float* params, const float* grads, float* m, float* v, size_t n,
                 const AdamHyper& h, float* counter, float* nonfinite) override {
    const int32_t t = counter_value(*counter) + 1;
    *counter = counter_storage(t);
    if (!adam_loop(params, grads, m, v, n, adam_constants(h, t))) *nonfinite = 1.0f;
  }

  // One pass over memory, with adam_step's arithmetic: for two sources one loop; for more, blocks
  // of kSumBlock elements, the k gradients summed into an L1-sized buffer, then that block's
  // update.
  void adam_step_summed(float* params, const float* const* grads, int k, float* m, float* v,
                        size_t n, const AdamHyper& h, float* counter, float* nonfinite) override {
    const int32_t t = counter_value(*counter) + 1;
    *counter = counter_storage(t);
    const AdamConstants c = adam_constants(h, t);
    if (k == 2) {  // two ranks: one loop, 20% faster than through the block
      if (!adam_loop_of_sum(params, grads[0], grads[1], m, v, n, c)) *nonfinite = 1.0f;
      return;
    }
    alignas(64) float block[kSumBlock];
    bool finite = true;
    for (size_t i = 0; i < n; i += kSumBlock) {
      const size_t len = std::min(kSumBlock, n - i);
      sum_in_order(grads, k, i, len, block);
      finite &= adam_loop(params + i, block, m + i, v + i, len, c);
    }
    if (!finite) *nonfinite = 1.0f;
  }
  // Through a block, so that `out` may be any of the x.
  void sum_buffers(const float* const* x, int k, size_t n, float* out) override {
    alignas(64) float block[kSumBlock];
    for (size_t i = 0; i < n; i += kSumBlock) {
      const size_t len = std::min(kSumBlock, n - i);
      sum_in_order(x, k, i, len, block);
      std::memcpy(out + i, block, len * sizeof(float));
    }
  }

  void accumulate_losses(const float* recon, const float* kl, int B, float beta,
                         float* acc) override {
    float r = 0.0f, k = 0.0f;
    for (int b = 0; b < B; ++b) {
      r += recon[b];
      k += kl[b];
    }
    acc[0] += r;
    acc[1] += k;
    acc[2] += r + beta * k;
    acc[3] += static_cast<float>(B);
  }

 private:
  static size_t plane_offset(int b, int c, const ConvShape& g) {
    return (static_cast<size_t>(b) * g.channels + c) * g.image();
  }
  static void copy(float* dst, const float* src, size_t n) {
    if (dst != src) std::memcpy(dst, src, n * sizeof(float));
  }
  size_t conv_col_floats_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(size_t conv_col_floats) {
  return std::make_unique<CpuBackend>(conv_col_floats);
}

void configure_cpu_thread(int blas_threads) {
  // Weak, so that any CBLAS links; OpenBLAS provides it, other vendors read their own variables.
  if (blas_threads > 0 && openblas_set_num_threads) openblas_set_num_threads(blas_threads);
#if defined(__SSE__)
  // Flush denormals to zero: Adam's moments of gradients that stay zero decay into the denormal
  // range within a few hundred steps, and denormal arithmetic is many times slower. Training
  // figures are unaffected (denormals are below 1.2e-38).
  _mm_setcsr(_mm_getcsr() | 0x8040u);  // FTZ (bit 15) and DAZ (bit 6)
#endif
}

std::string blas_description() {
  if (!openblas_get_config) return "cblas";
  const std::string config = openblas_get_config();  // "OpenBLAS 0.3.21 DYNAMIC_ARCH ..."
  return config.rfind("OpenBLAS", 0) == 0 ? config : "OpenBLAS " + config;
}

int blas_threads() { return openblas_get_num_threads ? openblas_get_num_threads() : 0; }

std::string blas_core_to_request() {
#if defined(__x86_64__) && defined(__GNUC__)
  // Weak: absent unless the BLAS is OpenBLAS.
  if (!openblas_get_corename) return "";
  const char* core = openblas_get_corename();
  if (core == nullptr || strcasecmp(core, "prescott") != 0) return "";
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
  return "";
}

}  // namespace elbo
