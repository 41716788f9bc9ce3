// `elbo sample`: pictures of a trained model as a PNG grid: draws from the prior, inputs above
// their reconstructions (--data), or the decoded path between two samples' latents (--interpolate).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace elbo {

struct SampleOptions {
  std::string checkpoint;
  std::string out;                   // the PNG file
  int n = 64;                        // tiles (prior samples, or data samples with --data)
  uint64_t seed = 0;                 // the prior noise
  std::string data;                  // shards whose first n samples are reconstructed
  std::vector<int64_t> interpolate;  // two sample indices of --data, or none
  int steps = 10;                    // points on the interpolation path, ends included
  std::string device = "auto";       // auto | cpu | cuda
  bool force = false;                // replace an existing --out
};

// Returns the process exit code; throws elbo::Error on bad input or failure.
int run_sample(const SampleOptions& options);

}  // namespace elbo
