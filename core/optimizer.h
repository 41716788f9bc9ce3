// Adam and AdamW (PyTorch's update rules) over the flat parameter buffer, and global-norm clipping.
#pragma once

#include <cstdint>

#include "core/backend.h"

namespace elbo {

struct AdamConfig {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.0f;
  bool decoupled_weight_decay = false;  // true: AdamW
};

class Adam {
 public:
  Adam(Backend& backend, size_t n, const AdamConfig& config);
  // One update of params from grads; increments the step count first, as PyTorch does. Sets
  // *nonfinite (backend memory) to 1 when a gradient was not finite.
  void step(float* params, const float* grads, float* nonfinite);
  // The same with the sum of k gradient buffers, added in their order (Backend::adam_step_summed).
  void step_summed(float* params, const float* const* grads, int k, float* nonfinite);
  int64_t steps_taken() const;  // reads the backend's counter (replayed steps count too)
  void set_steps_taken(int64_t s);  // e.g. when resuming; also sets the backend's counter
  float* exp_avg() { return m_.data(); }
  float* exp_avg_sq() { return v_.data(); }

 private:
  AdamHyper hyper() const;
  Backend& backend_;
  AdamConfig config_;
  DeviceArray m_, v_;
  DeviceArray counter_;  // (1): the step count in backend memory, advanced by adam_step
};

// PyTorch's clip_grad_norm_: when the global L2 norm exceeds max_norm, scale every gradient by
// max_norm / (norm + 1e-6). Returns the norm before clipping.
double clip_grad_norm(Backend& backend, float* grads, size_t n, double max_norm);
// The same scaling, given the norm (ZeRO-1: a rank's slice, with the norm summed over ranks).
void clip_to_norm(Backend& backend, float* grads, size_t n, double norm, double max_norm);

}  // namespace elbo
