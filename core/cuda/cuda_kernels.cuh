// The CUDA kernels: loops over the shared ELBO_HD math of core/elementwise.h and core/philox.h,
// each the device twin of a loop in core/cpu/cpu_backend.cpp (tests/test_cuda.cpp compares them).
// Every kernel loops grid-stride, so any grid size from launch_blocks() covers the whole range.
// The kernels are defined here, so only cuda_backend.cu includes this file.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/backend.h"
#include "core/cuda/grid.h"
#include "core/cuda/launch.h"
#include "core/elementwise.h"
#include "core/philox.h"

namespace elbo::kernels {

__device__ __forceinline__ size_t grid_start() {
  return static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ size_t grid_step() {
  return static_cast<size_t>(gridDim.x) * blockDim.x;
}

// Sum of v over the block, returned to every thread; shared holds blockDim.x values, and
// blockDim.x must be a power of two (kThreadsPerBlock). A fixed tree, so results repeat exactly.
template <typename T>
__device__ T block_sum(T v, T* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  const T total = shared[0];
  __syncthreads();  // before the caller writes shared again
  return total;
}

// y[B,N] = act(y + bias), over total = B*N elements.
__global__ void bias_activation(float* y, const float* bias, size_t total, int N, Activation act) {
  const size_t n = static_cast<size_t>(N);
  for (size_t i = grid_start(); i < total; i += grid_step())
    y[i] = activate(y[i] + bias[i % n], act);
}

// dy[B,N] *= act'(y), dbias[j] = column sum. One thread per column: neighbouring threads read
// neighbouring columns (coalesced), and each column is summed over rows in the CPU's order.
__global__ void activation_backward(float* dy, const float* y, float* dbias, int B, int N,
                                    Activation act) {
  const size_t n = static_cast<size_t>(N);
  for (size_t j = grid_start(); j < n; j += grid_step()) {
    float column = 0.0f;
    for (int b = 0; b < B; ++b) {
      const size_t k = static_cast<size_t>(b) * n + j;
      float d = dy[k];
      if (act != Activation::None) {
        d *= activation_grad_from_output(y[k], act);
        dy[k] = d;
      }
      column += d;
    }
    dbias[j] = column;
  }
}

// col[C k k, B grid] from image [B, C, H, W]: one thread per col element (see Backend::im2col).
__global__ void im2col(const float* image, float* col, int B, ConvShape g) {
  const size_t grid = static_cast<size_t>(g.grid()), cols = static_cast<size_t>(B) * grid;
  const size_t total = static_cast<size_t>(g.col_rows()) * cols;
  for (size_t i = grid_start(); i < total; i += grid_step()) {
    const int r = static_cast<int>(i / cols), j = r % g.kernel, ki = (r / g.kernel) % g.kernel;
    const int c = r / (g.kernel * g.kernel);
    const size_t col_i = i % cols, b = col_i / grid;
    const int o = static_cast<int>(col_i % grid), oy = o / g.out_w, ox = o % g.out_w;
    const int y = oy * g.stride - g.padding + ki, x = ox * g.stride - g.padding + j;
    const bool inside = y >= 0 && y < g.height && x >= 0 && x < g.width;
    col[i] = inside ? image[((b * g.channels + c) * g.height + y) * g.width + x] : 0.0f;
  }
}

// image[B, C, H, W] = the sum of the col entries read from each pixel: one thread per pixel,
// gathering its windows (no atomics, so the order, and the result, repeat exactly).
__global__ void col2im(const float* col, float* image, int B, ConvShape g) {
  const size_t grid = static_cast<size_t>(g.grid()), cols = static_cast<size_t>(B) * grid;
  const size_t total = static_cast<size_t>(B) * g.channels * g.image();
  for (size_t i = grid_start(); i < total; i += grid_step()) {
    const int x = static_cast<int>(i % g.width), y = static_cast<int>((i / g.width) % g.height);
    const size_t bc = i / g.image();
    const int c = static_cast<int>(bc % g.channels);
    const size_t b = bc / g.channels;
    float sum = 0.0f;
    for (int ki = 0; ki < g.kernel; ++ki) {
      const int ty = y + g.padding - ki;  // = oy * stride
      if (ty < 0 || ty % g.stride != 0 || ty / g.stride >= g.out_h) continue;
      for (int kj = 0; kj < g.kernel; ++kj) {
        const int tx = x + g.padding - kj;
        if (tx < 0 || tx % g.stride != 0 || tx / g.stride >= g.out_w) continue;
        const size_t r = static_cast<size_t>((c * g.kernel + ki) * g.kernel + kj);
        sum +=
            col[r * cols + b * grid + static_cast<size_t>(ty / g.stride) * g.out_w + tx / g.stride];
      }
    }
    image[i] = sum;
  }
}

// dst[J, I, N] = src[I, J, N], one thread per element, reading coalesced.
__global__ void transpose_outer(const float* src, float* dst, int I, int J, int N) {
  const size_t n = static_cast<size_t>(N), total = static_cast<size_t>(I) * J * n;
  for (size_t k = grid_start(); k < total; k += grid_step()) {
    const size_t row = k / n, i = row / J, j = row % J;
    dst[(j * I + i) * n + k % n] = src[k];
  }
}

// y[B, C, N] = act(y + bias[c]).
__global__ void channel_bias_activation(float* y, const float* bias, size_t total, int C, int N,
                                        Activation act) {
  for (size_t i = grid_start(); i < total; i += grid_step())
    y[i] = activate(y[i] + bias[(i / N) % C], act);
}

// dy[B, C, N] *= act'(y), dbias[c] = sum over b and n. One block per channel.
__global__ void channel_activation_backward(float* dy, const float* y, float* dbias, int B, int C,
                                            int N, Activation act) {
  ELBO_SHARED(float, shared, kThreadsPerBlock);
  const size_t per = static_cast<size_t>(B) * N;
  for (int c = static_cast<int>(blockIdx.x); c < C; c += static_cast<int>(gridDim.x)) {
    float total = 0.0f;
    for (size_t k = threadIdx.x; k < per; k += blockDim.x) {
      const size_t i = ((k / N) * C + c) * N + k % N;
      float d = dy[i];
      if (act != Activation::None) {
        d *= activation_grad_from_output(y[i], act);
        dy[i] = d;
      }
      total += d;
    }
    total = block_sum(total, shared);
    if (threadIdx.x == 0) dbias[c] = total;
  }
}

// head[B,2L] = [mu | logvar] -> z[B,L], kl[B]. One thread per sample; L is small.
__global__ void reparameterize(const float* head, const float* eps, float* z, float* kl, int B,
                               int L) {
  const size_t l = static_cast<size_t>(L);
  for (size_t b = grid_start(); b < static_cast<size_t>(B); b += grid_step()) {
    const float* mu = head + b * 2 * l;
    const float* logvar = mu + l;
    float kl_sum = 0.0f;
    for (size_t j = 0; j < l; ++j) {
      const LatentForward f = elbo::reparameterize(mu[j], logvar[j], eps[b * l + j]);
      z[b * l + j] = f.z;
      kl_sum += f.kl;
    }
    kl[b] = kl_sum;
  }
}

// dhead[B,2L] from dz[B,L], over total = B*L latent units.
__global__ void reparameterize_backward(const float* head, const float* eps, const float* dz,
                                        float* dhead, size_t total, int L, float kl_weight) {
  const size_t l = static_cast<size_t>(L);
  for (size_t i = grid_start(); i < total; i += grid_step()) {
    const size_t row = (i / l) * 2 * l, j = i % l;
    const LatentGrad g =
        elbo::reparameterize_backward(head[row + j], head[row + l + j], eps[i], dz[i], kl_weight);
    dhead[row + j] = g.dmu;
    dhead[row + l + j] = g.dlogvar;
  }
}

// recon[b] = the sum over j < D of term(b, j) + D per_feature, one block per row (launch with
// kThreadsPerBlock threads); term also writes the row's gradient when one is asked for. Shared by
// the likelihoods, which differ only in the term.
template <typename Term>
__device__ void row_sums(float* recon, int B, int D, float per_feature, Term term) {
  ELBO_SHARED(float, shared, kThreadsPerBlock);
  const size_t d = static_cast<size_t>(D);
  for (int b = static_cast<int>(blockIdx.x); b < B; b += static_cast<int>(gridDim.x)) {
    float total = 0.0f;
    for (size_t j = threadIdx.x; j < d; j += blockDim.x) total += term(static_cast<size_t>(b), j);
    total = block_sum(total, shared);
    if (threadIdx.x == 0) recon[b] = total + static_cast<float>(D) * per_feature;
  }
}

// recon[B] and, when dout is not null, dout[B,D] = grad_scale * d(recon)/d(out), in one pass.
template <Likelihood lik>
__global__ void reconstruction_loss(const float* out, const float* x, float* dout, float* recon,
                                    int B, int D, float grad_scale) {
  const size_t d = static_cast<size_t>(D);
  row_sums(recon, B, D, lik == Likelihood::Gaussian ? kHalfLog2Pi : 0.0f,
           [=](size_t b, size_t j) {
             const size_t i = b * d + j;
             const ValueGrad vg = lik == Likelihood::Bernoulli ? bce_with_logits(out[i], x[i])
                                                               : gaussian_sq_error(out[i], x[i]);
             if (dout) dout[i] = grad_scale * vg.grad;
             return vg.value;
           });
}

// The learned-variance Gaussian: rows of out and dout are [means | log-variances], 2D wide.
__global__ void learned_gaussian_loss(const float* out, const float* x, float* dout, float* recon,
                                      int B, int D, float grad_scale) {
  const size_t d = static_cast<size_t>(D);
  row_sums(recon, B, D, kHalfLog2Pi, [=](size_t b, size_t j) {
    const size_t mean = 2 * b * d + j;
    const ValueGrad2 vg = gaussian_learned(out[mean], out[mean + d], x[b * d + j]);
    if (dout) {
      dout[mean] = grad_scale * vg.dmean;
      dout[mean + d] = grad_scale * vg.dlogvar;
    }
    return vg.value;
  });
}

// eps[B,L] for the samples ids[B]. One thread per (sample, group of 4 latents): one Philox draw
// gives four normals, with the CPU's counters (group, sample id, c2, stream).
__global__ void fill_noise(float* eps, const uint32_t* ids, size_t B, int L, RngKey key,
                           uint32_t c2, RngStream stream) {
  const size_t l = static_cast<size_t>(L), groups = (l + 3) / 4;
  for (size_t i = grid_start(); i < B * groups; i += grid_step()) {
    const size_t b = i / groups, j0 = (i % groups) * 4;
    const Philox4 draw = philox_draw(key, static_cast<uint32_t>(j0 >> 2), ids[b], c2, stream);
    float* row = eps + b * l;
    for (size_t k = 0; k < 4 && j0 + k < l; ++k)
      row[j0 + k] = normal_from_draw(draw, static_cast<int>(k));
  }
}

// Reductions in two passes, both in double: per-block partials, then one block sums them. The
// grid depends only on n, so the summation order (and the result) repeats exactly.
template <bool squares>
__global__ void reduce_partials(const float* v, size_t n, double* partials) {
  ELBO_SHARED(double, shared, kThreadsPerBlock);
  double s = 0.0;
  for (size_t i = grid_start(); i < n; i += grid_step()) {
    const double x = v[i];
    s += squares ? x * x : x;
  }
  s = block_sum(s, shared);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

__global__ void reduce_final(const double* partials, int count, double* result) {
  ELBO_SHARED(double, shared, kThreadsPerBlock);
  double s = 0.0;
  for (int i = static_cast<int>(threadIdx.x); i < count; i += static_cast<int>(blockDim.x))
    s += partials[i];
  s = block_sum(s, shared);
  if (threadIdx.x == 0) *result = s;
}

// *flag = 1 when any element is NaN or infinite (the caller clears it first).
__global__ void find_nonfinite(const float* v, size_t n, int* flag) {
  for (size_t i = grid_start(); i < n; i += grid_step())
    if (!isfinite(v[i])) *flag = 1;
}

__global__ void scale(float* v, size_t n, float s) {
  for (size_t i = grid_start(); i < n; i += grid_step()) v[i] *= s;
}

__global__ void to_bfloat16(const float* x, uint16_t* y, size_t n) {
  for (size_t i = grid_start(); i < n; i += grid_step()) y[i] = bfloat16_bits(x[i]);
}

__global__ void from_bfloat16(const uint16_t* y, float* x, size_t n) {
  for (size_t i = grid_start(); i < n; i += grid_step()) x[i] = from_bfloat16_bits(y[i]);
}

// One Adam/AdamW update over the flat buffers; *nonfinite = 1 when a gradient is NaN or infinite.
// Advances the step counter and computes that step's constants, once, for adam_step to read.
__global__ void adam_advance(AdamHyper h, float* counter, AdamConstants* constants) {
  const int32_t t = counter_value(*counter) + 1;
  *counter = counter_storage(t);
  *constants = adam_constants(h, t);
}

__global__ void adam_step(float* params, const float* grads, float* m, float* v, size_t n,
                          const AdamConstants* constants, float* nonfinite) {
  const AdamConstants c = *constants;
  for (size_t i = grid_start(); i < n; i += grid_step()) {
    const float g = grads[i];
    if (!isfinite(g)) *nonfinite = 1.0f;
    adam_update(params[i], g, m[i], v[i], c);
  }
}

// acc[0..3] += (sum recon, sum kl, sum recon + beta kl, B); one block, so no atomics and a fixed
// summation order.
__global__ void accumulate_losses(const float* recon, const float* kl, int B, float beta,
                                  float* acc) {
  ELBO_SHARED(float, shared, kThreadsPerBlock);
  float r = 0.0f, k = 0.0f;
  for (int b = static_cast<int>(threadIdx.x); b < B; b += blockDim.x) {
    r += recon[b];
    k += kl[b];
  }
  r = block_sum(r, shared);
  k = block_sum(k, shared);
  if (threadIdx.x == 0) {
    acc[0] += r;
    acc[1] += k;
    acc[2] += r + beta * k;
    acc[3] += static_cast<float>(B);
  }
}

}  // namespace elbo::kernels
