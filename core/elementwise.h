// The elementwise math of section 2 of DESIGN.md, written once for the CPU loops and the CUDA
// kernels. Every function is per element (or per latent unit); the backends only loop.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/hd.h"

namespace elbo {

enum class Activation { None, Relu, Tanh };
// GaussianLearned: the decoder outputs means then log-variances ([B, 2D]; along channels for conv).
enum class Likelihood { Bernoulli, Gaussian, GaussianLearned };

ELBO_HD float activate(float pre, Activation a) {
  switch (a) {
    case Activation::Relu: return pre > 0.0f ? pre : 0.0f;
    case Activation::Tanh: return tanhf(pre);
    default: return pre;
  }
}

// Derivative of the activation expressed through its output y = act(pre), so only y is stored.
ELBO_HD float activation_grad_from_output(float y, Activation a) {
  switch (a) {
    case Activation::Relu: return y > 0.0f ? 1.0f : 0.0f;
    case Activation::Tanh: return 1.0f - y * y;
    default: return 1.0f;
  }
}

// exp(-a) for 0 <= a < 87 and log(1 + e) for 0 <= e <= 1, in plain arithmetic (no libm calls) so
// that the CPU loops vectorise; both within 2e-7 relative of the exact values (tested). exp: a =
// n ln2 - r with |r| <= ln2/2, exp(-a) = 2^-n exp(r), exp(r) by its degree-7 Taylor polynomial.
// The bits of a float and back, and selects made of them: for floats >= 0 the int32 bit patterns
// order as the values do, and integer compares and masks never trap, so a loop of them vectorises
// where the compiler keeps float comparisons (which may raise on NaN) as branches.
ELBO_HD int32_t bits_of(float f) {
  int32_t i;
  memcpy(&i, &f, sizeof i);
  return i;
}
ELBO_HD float float_of(int32_t i) {
  float f;
  memcpy(&f, &i, sizeof f);
  return f;
}
// bfloat16 (the upper half of a float's bits) for compressed gradients: rounded to nearest, ties
// to even, as PyTorch and CUDA's __float2bfloat16_rn round; a NaN stays a (quiet) NaN and
// infinities stay infinite; a value beyond bfloat16's largest finite one rounds to infinity.
ELBO_HD uint16_t bfloat16_bits(float f) {
  const uint32_t u = static_cast<uint32_t>(bits_of(f));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
ELBO_HD float from_bfloat16_bits(uint16_t b) {
  return float_of(static_cast<int32_t>(static_cast<uint32_t>(b) << 16));
}
// The sum of two bfloat16 values, computed in float and rounded once (a reduction's step).
ELBO_HD uint16_t bfloat16_sum(uint16_t a, uint16_t b) {
  return bfloat16_bits(from_bfloat16_bits(a) + from_bfloat16_bits(b));
}

// mask: all ones (-1) or all zeros; the bits of `yes` where set, of `no` elsewhere.
ELBO_HD int32_t select_bits(int32_t mask, int32_t yes, int32_t no) {
  return (yes & mask) | (no & ~mask);
}

ELBO_HD float exp_neg(float a) {
  const int32_t ni = static_cast<int32_t>(a * 1.44269504088896341f + 0.5f);  // round, a >= 0
  const float n = static_cast<float>(ni);
  const float r = n * 0.693145751953125f - a + n * 1.428606765330187e-06f;  // ln2 in two parts
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * float_of((127 - ni) << 23);  // 2^-n
}

// log(1 + e) for e in [0, 1]: y = 1 + e, halved when above sqrt(2) so that f = y' - 1 lies in
// [-0.293, 0.415], then the Cephes logf polynomial. Rounding 1 + e costs at most 6e-8 absolute,
// far below what a sum over a sample's features can resolve.
ELBO_HD float log1p_unit(float e) {
  const float y = 1.0f + e;
  // 1 when y > sqrt(2), else 0, as a factor rather than a branch (see bits_of).
  const int32_t above = -static_cast<int32_t>(bits_of(y) > bits_of(1.41421356237f));
  const float high = float_of(above & bits_of(1.0f));
  const float f = y * (1.0f - 0.5f * high) - 1.0f;
  const float z = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  return f + (f * z * p - 0.5f * z) + high * 0.69314718056f;
}

// Binary cross-entropy from a logit l against target x in [0, 1], and its derivative sigmoid(l) - x.
// max(l,0) - l*x + log1p(exp(-|l|)) never overflows; exp(-|l|) is shared by value and gradient.
// Beyond |l| = 40, exp(-|l|) < 5e-18 changes neither the float value nor the float gradient; it is
// taken as 0 so that no denormal numbers (very slow on CPUs) flow into the backward GEMMs.
struct ValueGrad {
  float value, grad;
};
// Written with bit selects (see bits_of) so that a loop over a row vectorises.
ELBO_HD ValueGrad bce_with_logits(float l, float x) {
  const int32_t lb = bits_of(l);
  const int32_t negative = lb >> 31;  // all ones when the sign bit is set
  const int32_t ab = lb & 0x7fffffff;  // |l|
  const int32_t far = -static_cast<int32_t>(ab >= bits_of(40.0f));
  const float e = float_of(~far & bits_of(exp_neg(float_of(select_bits(far, bits_of(40.0f), ab)))));
  // sigmoid(l) = 1 / (1 + e) for l >= 0 and e / (1 + e) below (l = -0 gives e = 1 either way).
  const float sigmoid = float_of(select_bits(negative, bits_of(e), bits_of(1.0f))) / (1.0f + e);
  const float relu = float_of(lb & ~negative);  // max(l, 0)
  return ValueGrad{relu - l * x + log1p_unit(e), sigmoid - x};
}

// Unit-variance Gaussian: 0.5 (x - m)^2 per element; the 0.5 log(2 pi) per element is added per sample.
ELBO_HD ValueGrad gaussian_sq_error(float mean, float x) {
  const float d = mean - x;
  return ValueGrad{0.5f * d * d, d};
}
constexpr float kHalfLog2Pi = 0.91893853320467274178f;

// Learned variance: 0.5 (logvar + (x - m)^2 exp(-logvar)) per element (the 0.5 log(2 pi) is added
// per sample), with its derivatives by the mean and by the log-variance. The log-variance is not
// bounded to a range, so this uses the library exp.
struct ValueGrad2 {
  float value, dmean, dlogvar;
};
ELBO_HD ValueGrad2 gaussian_learned(float mean, float logvar, float x) {
  const float d = mean - x;
  const float w = expf(-logvar) * d;  // (m - x) / sigma^2
  return ValueGrad2{0.5f * (logvar + d * w), w, 0.5f * (1.0f - d * w)};
}

// One latent unit: z = mu + exp(logvar/2) eps, and its KL term -0.5 (1 + logvar - exp(logvar) - mu^2).
struct LatentForward {
  float z, kl;
};
ELBO_HD LatentForward reparameterize(float mu, float logvar, float eps) {
  const float sigma = expf(0.5f * logvar);
  return LatentForward{mu + sigma * eps, -0.5f * (1.0f + logvar - sigma * sigma - mu * mu)};
}

// dL/dmu = dz + w mu, dL/dlogvar = dz 0.5 sigma eps + w 0.5 (sigma^2 - 1), with w the KL weight
// (beta times the objective's scale).
struct LatentGrad {
  float dmu, dlogvar;
};
ELBO_HD LatentGrad reparameterize_backward(float mu, float logvar, float eps, float dz, float w) {
  const float sigma = expf(0.5f * logvar);
  return LatentGrad{dz + w * mu, dz * 0.5f * sigma * eps + w * 0.5f * (sigma * sigma - 1.0f)};
}

// Adam/AdamW as PyTorch defines them. The hyper-parameters are fixed for a run; the constants
// of update t (from 1) follow from them, computed in double as PyTorch does on the host, by the
// same function on the CPU and on a device (where it runs inside the step, so that a captured
// step replays correctly). AdamW decays the weights (decay = 1 - lr wd, l2 = 0); Adam with L2
// weight decay adds wd p to the gradient (decay = 1, l2 = wd).
struct AdamHyper {
  float lr, beta1, beta2, eps, weight_decay;
  bool decoupled;
};
struct AdamConstants {
  float beta1, beta2, eps;
  float step_size;                  // lr / (1 - beta1^t)
  float inv_bias_correction2_sqrt;  // 1 / sqrt(1 - beta2^t)
  float decay, l2;
};
ELBO_HD AdamConstants adam_constants(const AdamHyper& h, int32_t t) {
  const double bc1 = 1.0 - pow(static_cast<double>(h.beta1), static_cast<double>(t));
  const double bc2 = 1.0 - pow(static_cast<double>(h.beta2), static_cast<double>(t));
  AdamConstants c;
  c.beta1 = h.beta1;
  c.beta2 = h.beta2;
  c.eps = h.eps;
  c.step_size = static_cast<float>(static_cast<double>(h.lr) / bc1);
  c.inv_bias_correction2_sqrt = static_cast<float>(1.0 / sqrt(bc2));
  c.decay = h.decoupled ? 1.0f - h.lr * h.weight_decay : 1.0f;
  c.l2 = h.decoupled ? 0.0f : h.weight_decay;
  return c;
}

// The optimizer's step counter lives in backend memory as an int32 in a float's bits.
ELBO_HD int32_t counter_value(float stored) { return bits_of(stored); }
ELBO_HD float counter_storage(int32_t v) { return float_of(v); }

// One element of the update, branch-free so that it vectorises.
ELBO_HD void adam_update(float& p, float g, float& m, float& v, const AdamConstants& c) {
  g += c.l2 * p;
  p *= c.decay;
  m = c.beta1 * m + (1.0f - c.beta1) * g;
  v = c.beta2 * v + (1.0f - c.beta2) * g * g;
  p -= c.step_size * m / (sqrtf(v) * c.inv_bias_correction2_sqrt + c.eps);
}

}  // namespace elbo
