// The experiment config: a strict YAML file (unknown keys, wrong types, missing required keys and
// out-of-range values are errors naming the key and line) mapped onto typed structs, with
// `key.path=value` overrides applied before validation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/model.h"
#include "core/optimizer.h"

namespace elbo {

enum class Binarize { None, Dynamic };
// Whether each rank holds the whole data set in memory; `auto` does when it fits comfortably.
enum class DataCache { Auto, Always, Never };
enum class DeviceChoice { Auto, Cpu, Cuda };
enum class CommBackend { Auto, Nccl, Mpi, None };
enum class GradCompression { None, Bf16 };

struct DataConfig {
  std::string train;  // required: a directory or glob of HDF5 shards
  std::string test;   // optional: empty means no evaluation
  Binarize binarize = Binarize::None;
  DataCache cache = DataCache::Auto;
};

struct ModelConfig {
  ModelType type = ModelType::Mlp;
  ConvSpec conv;           // model.conv: read for type conv only
  std::string conv_where;  // where model.conv came from, for sizes found unusable with the data
  std::vector<int> encoder{400};
  int latent = 20;
  std::vector<int> decoder{400};
  Activation activation = Activation::Relu;
  Likelihood likelihood = Likelihood::Bernoulli;
};

struct OptimizerConfig {
  std::string name = "adam";  // adam | adamw
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

struct TrainConfig {
  int epochs = 10;
  int batch_size = 128;  // global batch
  OptimizerConfig optimizer;
  double grad_clip = 0.0;  // 0 = off
  double beta = 1.0;
  int64_t kl_warmup_steps = 0;
  int threads = 0;            // BLAS threads per process; 0 = the library's default
  int64_t max_steps = 0;      // 0 = no limit; otherwise stop after this many steps in total
  bool cuda_graphs = false;   // replay the steady-state step as a CUDA graph (device: cuda)
};

struct DistributedConfig {
  CommBackend backend = CommBackend::Auto;
  double timeout_s = 300;
  // ZeRO stage 1: each rank keeps Adam's moments for its slice of the parameters only
  // (slice_of), reduce-scatters the gradients, updates its slice and all-gathers the parameters.
  bool shard_optimizer = false;
  // bf16: gradients cross the network as bfloat16 (half the bytes), summed in float and rounded
  // at each addition, then widened to float for clipping and Adam (as DDP's bf16 compress hook).
  GradCompression grad_compression = GradCompression::None;
  // Gradients are all-reduced in buckets of about this many megabytes, each started as soon as the
  // backward pass has finished it (the decoder's first), under the rest of the pass; 0: one
  // all-reduce after the pass. Not with shard_optimizer, whose reduce-scatter follows the pass.
  double bucket_mb = 0;
  // CPU ranks that all run on one node keep one copy of the parameters in memory they share, and
  // their gradients there too: each rank sums its slice of everyone's gradients straight from
  // their memory, updates that slice of the parameters with its own Adam moments (as ZeRO-1), and
  // the others read the result where it is. No gradient or parameter is copied between ranks.
  // Where that cannot be (a GPU, ranks on several nodes, no room for MPI's shared windows),
  // training goes on without it, with a note.
  bool shared_memory = false;
};

struct CheckpointConfig {
  int64_t every_steps = 0;
  int keep = 3;
};

struct OutputConfig {
  std::string dir;  // default: runs/<name>
  int log_every = 50;
};

struct Config {
  std::string name = "vae";
  uint64_t seed = 1;
  DataConfig data;
  ModelConfig model;
  TrainConfig train;
  DeviceChoice device = DeviceChoice::Auto;
  DistributedConfig distributed;
  CheckpointConfig checkpoint;
  OutputConfig output;
};

// Parses `path`, applies overrides ("train.epochs=3"; the value is parsed as YAML), validates.
// Throws Error(BadInput) with one-line messages naming the key and where it came from, e.g.
// "key 'train.epochs' must be an integer, got 'ten' (cfg.yaml:5)" or "... (override 'train.epochs=ten')".
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// Same, from YAML text (`origin` names it in messages).
Config parse_config(const std::string& yaml_text, const std::string& origin,
                    const std::vector<std::string>& overrides = {});

// The fully resolved config as YAML (every key, defaults filled in); parse_config of it round-trips.
std::string to_yaml(const Config& c);
// One value of the resolved config as to_yaml writes it ("tanh", "[512, 256]"), for messages that
// compare two configs; `key_path` is a known key ("model.activation").
std::string config_value_text(const Config& c, const std::string& key_path);

// The model and optimizer parts, in core's terms.
ModelSpec model_spec(const Config& c, int input_dim);
// Same, from the shape of one sample of /x ([D]; [H, W] or [C, H, W] for conv). A shape that does
// not fit the model type, or conv sizes that cannot be built on it, are BadInput errors naming
// the key; `data` names the file the shape came from.
ModelSpec model_spec(const Config& c, const std::vector<int64_t>& sample_shape,
                     const std::string& data);
AdamConfig adam_config(const Config& c);

}  // namespace elbo
