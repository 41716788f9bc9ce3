// The training loop of one rank, behind a small interface: set-up (launch/train.cpp) builds it,
// restores it from a checkpoint, and runs it.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/backend.h"
#include "core/model.h"
#include "distributed/communicator.h"
#include "io/checkpoint.h"
#include "io/config.h"
#include "io/metrics.h"
#include "io/shards.h"
#include "launch/run_directory.h"
#include "launch/step_timer.h"

namespace elbo {

class Trainer {
 public:
  virtual ~Trainer() = default;
  virtual size_t num_params() const = 0;
  // The parameters this rank's optimizer updates: its ZeRO-1 slice (slice_of), or all of them.
  virtual Slice optimizer_slice() const = 0;
  virtual const ParameterLayout& layout() const = 0;
  // How the ranks' gradients meet: "single" (one rank), "allreduce", "buckets" (under the backward
  // pass), "zero1" (reduce-scatter, all-gather) or "shared_memory".
  virtual const char* gradient_path() const = 0;
  // Continues from a checkpoint that rank 0 read; other ranks pass nullptr and receive it.
  virtual void restore(const CheckpointData* ck) = 0;
  // Trains to train.epochs (or train.max_steps, or a stop signal), writing metrics and
  // checkpoints on rank 0.
  virtual void run(const CheckpointDirectory& checkpoints, MetricsWriter& metrics) = 0;
  // `elbo bench`: `steps` more steps as training takes them (each epoch's shuffle, the loader
  // thread, the same step), on from the last call and across epochs, writing nothing; with a
  // timer, each step's phases are timed (and on a device, graphs stay off). Returns this rank's
  // seconds for the steps, its device work included.
  virtual double run_steps(int64_t steps, StepTimer* timer) = 0;
};

// Whether the ranks agree on the stop flag (one blocking control-plane all-reduce) before the
// step that follows `steps_done`: every step on a host backend, where a step costs far more than
// the all-reduce; on a device only every kStopCheckEvery steps and after log points, where the
// host waits for the device anyway, since a blocking all-reduce per step would dominate a
// sub-millisecond GPU step. It depends on nothing but its arguments, the same on every rank, so
// all ranks agree at the same steps and stop together.
inline constexpr int64_t kStopCheckEvery = 16;
bool stop_check_due(bool host_backend, int64_t steps_done, int log_every);

// After every rank tried to capture a step as a CUDA graph (`captured`: whether this one did):
// how many ranks failed, through one control-plane sum (over MPI even when the data plane is
// NCCL, whose collectives must then be made the same way on every rank).
int ranks_that_failed_capture(Communicator& comm, bool captured);

// The buckets of the gradient buffer for an all-reduce under the backward pass, in the order the
// pass finishes them: from the end of the buffer (the decoder's output layer) towards offset 0,
// each cut at a tensor's start once it holds at least bucket_mb megabytes (10^6 bytes), the
// last one whatever is left. Together they cover [0, num_params) once. bucket_mb <= 0: none.
std::vector<Slice> gradient_buckets(const ParameterLayout& layout, double bucket_mb);

// `comm` carries the gradients (device memory for NCCL) and the control messages.
std::unique_ptr<Trainer> make_trainer(const Config& cfg, Communicator& comm, Backend& backend,
                                      const ShardedDataset& train, const ShardedDataset* test);

}  // namespace elbo
