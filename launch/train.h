// `elbo train`: the training loop, wiring io (data, config, checkpoints, metrics), core (model,
// optimizer) and distributed (collectives).
#pragma once

#include <string>
#include <vector>

namespace elbo {

struct TrainOptions {
  std::string config_path;
  std::vector<std::string> overrides;  // "key.path=value"
  std::string resume;                  // "", "auto" or a checkpoint path
  bool discard_newer = false;          // with a path: delete the run's checkpoints past it
};

// Returns the process exit code; throws elbo::Error on bad input or failure.
int run_train(const TrainOptions& options);

}  // namespace elbo
