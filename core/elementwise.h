// The elementwise math of section 2 of DESIGN.md, written once for the CPU loops and the CUDA
// kernels. Every function is per element (or per latent unit); the backends only loop.
#pragma once

#include <cmath>

#include "core/hd.h"

namespace elbo {

enum class Activation { None, Relu, Tanh };
enum class Likelihood { Bernoulli, Gaussian };

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

// Binary cross-entropy from a logit l against target x in [0, 1], and its derivative sigmoid(l) - x.
// max(l,0) - l*x + log1p(exp(-|l|)) never overflows; exp(-|l|) is shared by value and gradient.
struct ValueGrad {
  float value, grad;
};
// Beyond |l| = 40, exp(-|l|) < 5e-18 changes neither the float value nor the float gradient; it is
// taken as 0 so that no denormal numbers (very slow on CPUs) flow into the backward GEMMs.
ELBO_HD ValueGrad bce_with_logits(float l, float x) {
  const float a = fabsf(l);
  const float e = a < 40.0f ? expf(-a) : 0.0f;
  const float sigmoid = l >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
  return ValueGrad{fmaxf(l, 0.0f) - l * x + log1pf(e), sigmoid - x};
}

// Unit-variance Gaussian: 0.5 (x - m)^2 per element; the 0.5 log(2 pi) per element is added per sample.
ELBO_HD ValueGrad gaussian_sq_error(float mean, float x) {
  const float d = mean - x;
  return ValueGrad{0.5f * d * d, d};
}
constexpr float kHalfLog2Pi = 0.91893853320467274178f;

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

// PyTorch's Adam/AdamW update for one element. `c` holds the per-step constants.
struct AdamConstants {
  float lr, beta1, beta2, eps, weight_decay;
  float bias_correction1, bias_correction2_sqrt;
  bool decoupled;  // AdamW: decay the weights; Adam: add weight_decay*p to the gradient
};
ELBO_HD void adam_update(float& p, float g, float& m, float& v, const AdamConstants& c) {
  if (c.weight_decay != 0.0f) {
    if (c.decoupled) p *= 1.0f - c.lr * c.weight_decay;
    else g += c.weight_decay * p;
  }
  m = c.beta1 * m + (1.0f - c.beta1) * g;
  v = c.beta2 * v + (1.0f - c.beta2) * g * g;
  const float denom = sqrtf(v) / c.bias_correction2_sqrt + c.eps;
  p -= (c.lr / c.bias_correction1) * m / denom;
}

}  // namespace elbo
