// Adam/AdamW over the flat buffers: one backend call per step; the step count lives in backend
// memory beside the moments.
#include "core/optimizer.h"

#include <cmath>
#include <cstdint>

#include "core/error.h"

namespace elbo {

Adam::Adam(Backend& backend, size_t n, const AdamConfig& config)
    : backend_(backend), config_(config), m_(backend, n), v_(backend, n), counter_(backend, 1) {
  backend_.fill_zero(m_.data(), n);
  backend_.fill_zero(v_.data(), n);
  set_steps_taken(0);
}

void Adam::step(float* params, const float* grads, float* nonfinite) {
  backend_.adam_step(params, grads, m_.data(), v_.data(), m_.size(), hyper(), counter_.data(),
                     nonfinite);
}

void Adam::step_summed(float* params, const float* const* grads, int k, float* nonfinite) {
  backend_.adam_step_summed(params, grads, k, m_.data(), v_.data(), m_.size(), hyper(),
                            counter_.data(), nonfinite);
}

AdamHyper Adam::hyper() const {
  return AdamHyper{config_.lr, config_.beta1, config_.beta2, config_.eps, config_.weight_decay,
                   config_.decoupled_weight_decay};
}

void Adam::set_steps_taken(int64_t s) {
  ELBO_CHECK(s >= 0 && s <= INT32_MAX, "optimizer step count out of range");
  const float stored = counter_storage(static_cast<int32_t>(s));
  backend_.upload(counter_.data(), &stored, 1);
}

int64_t Adam::steps_taken() const {
  float stored = 0.0f;
  backend_.download(&stored, counter_.data(), 1);
  return counter_value(stored);
}

double clip_grad_norm(Backend& backend, float* grads, size_t n, double max_norm) {
  const double norm = std::sqrt(backend.sum_of_squares(grads, n));
  clip_to_norm(backend, grads, n, norm, max_norm);
  return norm;
}

void clip_to_norm(Backend& backend, float* grads, size_t n, double norm, double max_norm) {
  const double coef = max_norm / (norm + 1e-6);  // as PyTorch: the 1e-6 guards a zero norm
  if (max_norm > 0.0 && coef < 1.0) backend.scale(grads, n, static_cast<float>(coef));
}

}  // namespace elbo
