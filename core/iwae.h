// The importance-weighted estimate of log p(x) (Burda et al. 2015; DESIGN.md section 2):
//   log p(x) ~ logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K,
// z_k = mu + exp(logvar/2) eps_k. The model gives log p(x|z_k) (minus its reconstruction term)
// and [mu | logvar]; the rest is computed on the host in double, the same for every backend.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>

#include "core/backend.h"
#include "core/model.h"

namespace elbo {

// log p(x|z) + log N(z; 0, I) - log N(z; mu, exp(logvar)) for z = mu + exp(logvar/2) eps, from
// recon = -log p(x|z). The two Gaussians' log(2 pi) terms cancel, and (z - mu)^2 / exp(logvar)
// is eps^2, so the weight is -recon + sum_j 0.5 (logvar_j + eps_j^2 - z_j^2).
double iw_log_weight(double recon, const float* mu, const float* logvar, const float* eps, int L);

// log(mean of exp(w)) over values added one at a time, in double: a running maximum and the sum
// of exp(w - max), rescaled when the maximum grows, so K = 5000 weights need no storage and no
// term overflows.
class LogMeanExp {
 public:
  void add(double w);
  double value() const;  // -inf before any add
  int64_t count() const { return count_; }

 private:
  double max_ = -std::numeric_limits<double>::infinity();
  double sum_ = 0.0;  // of exp(w - max_)
  int64_t count_ = 0;
};

// For n samples at x (backend memory, [n, D]): log_px[i], the estimate of log p(x_i) from K
// importance samples. noise(k) returns the noise [n, L] of importance sample k (backend memory,
// valid until the next call). The encoder runs once; each sample k is one decoder pass over the n
// rows (Vae::resample); only recon, the noise and [mu | logvar] come back to the host, so memory
// is that of one pass whatever K is.
void importance_weighted_log_px(Vae& vae, Backend& backend, const float* x, int n, int K,
                                const std::function<const float*(int k)>& noise, double* log_px);

}  // namespace elbo
