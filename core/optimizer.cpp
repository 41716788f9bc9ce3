// Adam/AdamW over the flat buffers: one backend call per step, constants computed on the host.
#include "core/optimizer.h"

#include <cmath>

namespace elbo {

Adam::Adam(Backend& backend, size_t n, const AdamConfig& config)
    : backend_(backend), config_(config), m_(backend, n), v_(backend, n) {
  backend_.fill_zero(m_.data(), n);
  backend_.fill_zero(v_.data(), n);
}

void Adam::step(float* params, const float* grads, float* nonfinite) {
  ++steps_;
  const double t = static_cast<double>(steps_);
  // Computed in double, as PyTorch does on the host, then rounded once.
  const double bc1 = 1.0 - std::pow(static_cast<double>(config_.beta1), t);
  const double bc2 = 1.0 - std::pow(static_cast<double>(config_.beta2), t);
  const bool decoupled = config_.decoupled_weight_decay;
  AdamConstants c{};
  c.beta1 = config_.beta1;
  c.beta2 = config_.beta2;
  c.eps = config_.eps;
  c.step_size = static_cast<float>(config_.lr / bc1);
  c.inv_bias_correction2_sqrt = static_cast<float>(1.0 / std::sqrt(bc2));
  c.decay = decoupled ? 1.0f - config_.lr * config_.weight_decay : 1.0f;
  c.l2 = decoupled ? 0.0f : config_.weight_decay;
  backend_.adam_step(params, grads, m_.data(), v_.data(), m_.size(), c, nonfinite);
}

double clip_grad_norm(Backend& backend, float* grads, size_t n, double max_norm) {
  const double norm = std::sqrt(backend.sum_of_squares(grads, n));
  const double coef = max_norm / (norm + 1e-6);  // as PyTorch: the 1e-6 guards a zero norm
  if (max_norm > 0.0 && coef < 1.0) backend.scale(grads, n, static_cast<float>(coef));
  return norm;
}

}  // namespace elbo
