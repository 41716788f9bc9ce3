// What `elbo eval` and `elbo encode` share: the model of a checkpoint on this rank's device, the
// data it is scored on, and the scores of a chunk of consecutive samples. Chunks are assigned to
// ranks whole, so every chunk (and every figure computed from it) is the same at any world size.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/model.h"
#include "distributed/communicator.h"
#include "io/checkpoint.h"
#include "io/config.h"
#include "io/shards.h"

namespace elbo {

struct ScoringOptions {
  std::string checkpoint;
  std::string data;    // empty: the checkpoint's data.test
  std::string device;  // empty: the checkpoint's device
  int iw_samples = 0;  // K; 0: no importance-weighted estimate
  int batch = 256;     // samples per forward pass
  int threads = 1;     // BLAS threads per rank on the CPU
  int64_t seed = -1;   // negative: the checkpoint's seed
};

// Rows [first, first + n) of the data and their scores.
struct ScoredChunk {
  int64_t first = 0, n = 0;
  std::vector<float> mu, logvar;      // [n, L]
  std::vector<double> recon, kl;      // [n]: the negative ELBO is their sum
  std::vector<double> iw_log_px;      // [n] with iw_samples > 0
};

// Chunks of `batch` consecutive rows; rank r scores chunks [C r / W, C (r + 1) / W).
struct ChunkPlan {
  int64_t rows = 0, batch = 1;
  int64_t chunks() const { return (rows + batch - 1) / batch; }
  int64_t first_chunk(int rank, int world) const { return chunks() * rank / world; }
  int64_t rows_of(int64_t chunk) const { return std::min(batch, rows - chunk * batch); }
};

class ScoringJob {
 public:
  // Checks the options and reads the checkpoint's header (before any communicator exists, so that
  // the device is chosen before MPI starts, as `elbo train` does).
  explicit ScoringJob(const ScoringOptions& options);
  ~ScoringJob();

  // Runs `body` on every rank of the job (mpirun, or this process alone). An error on one rank
  // ends all of them with its one line; exit code as elbo::Error says.
  int run(const std::function<void(ScoringJob&, Communicator&)>& body);

  const ScoringOptions& options() const { return options_; }
  const Config& config() const { return cfg_; }
  const CheckpointData& checkpoint() const { return ck_; }
  const ShardedDataset& data() const { return *data_; }
  const std::string& data_path() const { return data_path_; }
  uint64_t seed() const { return seed_; }
  int latent() const { return cfg_.model.latent; }
  const std::string& device_name() const { return device_name_; }

  // Scores rows [first, first + n), n <= options().batch.
  void score(int64_t first, int64_t n, ScoredChunk& out);

 private:
  void open(Communicator& comm);  // data, device, model: on every rank
  ScoringOptions options_;
  Config cfg_;
  CheckpointHeader header_;
  CheckpointData ck_;
  std::string data_path_;
  std::unique_ptr<ShardedDataset> data_;
  uint64_t seed_ = 0;
  int cuda_devices_ = 0;
  std::string cuda_problem_, device_name_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Vae> vae_;
  DeviceArray x_, eps_;
  std::vector<float> host_x_, host_head_, host_recon_, host_kl_;
  std::vector<int64_t> rows_;
  std::vector<uint32_t> ids_;
};

}  // namespace elbo
