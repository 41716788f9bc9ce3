// The importance-weighted log-likelihood estimate: log weights and their log-mean-exp in double.
#include "core/iwae.h"

#include <cmath>
#include <vector>

#include "core/error.h"

namespace elbo {

double iw_log_weight(double recon, const float* mu, const float* logvar, const float* eps, int L) {
  double w = -recon;
  for (int j = 0; j < L; ++j) {
    const double lv = logvar[j], e = eps[j];
    const double z = static_cast<double>(mu[j]) + std::exp(0.5 * lv) * e;
    w += 0.5 * (lv + e * e - z * z);
  }
  return w;
}

void LogMeanExp::add(double w) {
  ++count_;
  if (w == -std::numeric_limits<double>::infinity()) return;  // adds exp(-inf) = 0
  if (w > max_) {
    sum_ = sum_ * std::exp(max_ - w) + 1.0;  // exp(-inf) = 0 for the first value
    max_ = w;
  } else {
    sum_ += std::exp(w - max_);
  }
}

double LogMeanExp::value() const {
  if (count_ == 0 || sum_ == 0.0) return -std::numeric_limits<double>::infinity();
  return max_ + std::log(sum_) - std::log(static_cast<double>(count_));
}

void importance_weighted_log_px(Vae& vae, Backend& backend, const float* x, int n, int K,
                                const std::function<const float*(int k)>& noise, double* log_px) {
  ELBO_CHECK(n > 0 && K > 0, "importance sampling needs samples and a positive K");
  const int L = vae.layout().layers()[vae.layout().num_encoder_layers() - 1].out / 2;
  const size_t rows = static_cast<size_t>(n), lat = static_cast<size_t>(L);
  std::vector<float> head(rows * 2 * lat), eps(rows * lat), recon(rows);
  std::vector<LogMeanExp> acc(rows);
  for (int k = 0; k < K; ++k) {
    const float* eps_k = noise(k);
    // The encoder runs once; every later sample only decodes a new z.
    if (k == 0) vae.forward(x, eps_k, n);
    else vae.resample(x, eps_k, n);
    // [mu | logvar] does not depend on the noise: read once.
    if (k == 0) backend.download(head.data(), vae.posterior(), head.size());
    backend.download(eps.data(), eps_k, eps.size());
    backend.download(recon.data(), vae.recon_per_sample(), rows);
    for (size_t i = 0; i < rows; ++i) {
      const float* mu = head.data() + i * 2 * lat;
      acc[i].add(iw_log_weight(recon[i], mu, mu + lat, eps.data() + i * lat, L));
    }
  }
  for (size_t i = 0; i < rows; ++i) log_px[i] = acc[i].value();
}

}  // namespace elbo
