// The training loop of one rank, behind a small interface: set-up (launch/train.cpp) builds it,
// restores it from a checkpoint, and runs it.
#pragma once

#include <memory>

#include "core/backend.h"
#include "core/model.h"
#include "distributed/communicator.h"
#include "io/checkpoint.h"
#include "io/config.h"
#include "io/metrics.h"
#include "io/shards.h"
#include "launch/run_directory.h"

namespace elbo {

class Trainer {
 public:
  virtual ~Trainer() = default;
  virtual size_t num_params() const = 0;
  virtual const ParameterLayout& layout() const = 0;
  // Continues from a checkpoint that rank 0 read; other ranks pass nullptr and receive it.
  virtual void restore(const CheckpointData* ck) = 0;
  // Trains to train.epochs (or train.max_steps, or a stop signal), writing metrics and
  // checkpoints on rank 0.
  virtual void run(const CheckpointDirectory& checkpoints, MetricsWriter& metrics) = 0;
};

// `comm` carries the gradients (device memory for NCCL) and the control messages.
std::unique_ptr<Trainer> make_trainer(const Config& cfg, Communicator& comm, Backend& backend,
                                      const ShardedDataset& train, const ShardedDataset* test);

}  // namespace elbo
