// `elbo eval CHECKPOINT`: the negative ELBO and the importance-weighted estimate of -log p(x) of a
// checkpoint's model on a data set, in nats per sample; `elbo encode`: the same per sample, with
// the posterior of every sample, into an HDF5 file (io/latents.h).
#pragma once

#include <string>

#include "launch/scoring.h"

namespace elbo {

// Prints the figures on rank 0 (one JSON object with `json`). Returns the exit code.
int run_eval(const ScoringOptions& options, bool json);

struct EncodeOptions {
  ScoringOptions scoring;
  std::string out;     // the latents file
  bool force = false;  // replace an existing `out`
};
int run_encode(const EncodeOptions& options);

}  // namespace elbo
