// The latents file of `elbo encode`: per sample, in input order, the posterior mean and
// log-variance and the per-sample scores, written chunk by chunk so that memory does not grow with
// the number of rows, under a temporary name renamed into place when complete.
//
// Layout:
//   /mu [N, L] float32, /logvar [N, L] float32   the encoder's q(z|x) = N(mu, exp(logvar))
//   /neg_elbo [N] float64                         per-sample negative ELBO (nats; anomaly score)
//   /iw_nll [N] float64                           -log p(x) by K importance samples (optional)
//   /y [N] int64                                  the data's labels (when it has them)
//   /                                             attrs: checkpoint, checkpoint_step, data,
//                                                 samples, latent, iw_samples (0: none), seed,
//                                                 created
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace elbo {

namespace h5 {
class File;
}

struct LatentsShape {
  int64_t rows = 0;
  int latent = 0;
  bool iw_nll = false;
  bool labels = false;
};

class LatentsWriter {
 public:
  // Creates temporary_name_for(path) with every dataset allocated for shape.rows rows.
  LatentsWriter(const std::string& path, const LatentsShape& shape);
  // Removes the temporary unless commit() ran: a failure leaves no partial file behind.
  ~LatentsWriter();
  LatentsWriter(const LatentsWriter&) = delete;
  LatentsWriter& operator=(const LatentsWriter&) = delete;

  void attribute(const std::string& name, const std::string& value);
  void attribute(const std::string& name, int64_t value);
  // Rows [first, first + n): mu, logvar [n, L]; neg_elbo [n]; iw_nll [n] and y [n] when the
  // shape has them (else ignored, may be null).
  void write_rows(int64_t first, int64_t n, const float* mu, const float* logvar,
                  const double* neg_elbo, const double* iw_nll, const int64_t* y);
  // Closes the file, syncs it and renames it over `path`.
  void commit();

 private:
  std::string path_, temporary_;
  LatentsShape shape_;
  std::unique_ptr<h5::File> file_;
  bool committed_ = false;
};

}  // namespace elbo
