// `elbo bench`: the training step's steady-state throughput and where its time goes, the
// all-reduce sweep, and the machine's bound on the step, as one JSON object on rank 0's stdout.
// It writes nothing anywhere else.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "distributed/allreduce_sweep.h"

namespace elbo {

struct BenchOptions {
  std::string config_path;             // required but with --allreduce
  std::vector<std::string> overrides;  // "key.path=value", as for train
  int warmup_steps = 50;               // untimed steps first
  int windows = 5;                     // timed windows: samples/s is their median
  int window_steps = 400;              // steps per window
  int breakdown_steps = 200;           // then steps with each phase timed
  bool roofline = false;
  bool allreduce = false;
  SweepOptions sweep;
};

// Returns the process exit code; throws elbo::Error on bad input or failure.
int run_bench(const BenchOptions& options);

}  // namespace elbo
