// Checkpoints: HDF5 files holding the parameters under their PyTorch names ([out, in] weights), the
// Adam state, the training position and the resolved config. Written atomically (temporary name,
// flush, fsync, rename) so a crash at any moment leaves the previous checkpoint intact.
//
// Layout (format_version 1):
//   /                       attrs: format_version, world_size, created (ISO 8601 UTC), config
//   (YAML),
//                           run_id (the run it belongs to; see launch/run_directory.h)
//   /params/<name>          float32, true shapes ([out, in] or [out])
//   /optimizer              attrs: name ("adam" | "adamw"), steps
//   /optimizer/exp_avg/<name>, /optimizer/exp_avg_sq/<name>   float32, same shapes
//   /state                  attrs: epoch, step, samples_seen, seed
//   /sample_shape           int64 [D] or [C, H, W]: the shape of one sample (absent in checkpoints
//                           written before conv models; those are MLPs of decoder.out.bias's size)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/model.h"

namespace elbo {

struct TrainingState {
  int64_t epoch = 0;         // epochs completed
  int64_t step = 0;          // optimizer steps taken
  int64_t samples_seen = 0;
  uint64_t seed = 0;
  int64_t world_size = 1;
};

// Host copies of the flat buffers, laid out as `layout`.
struct CheckpointData {
  TrainingState state;
  std::string config_yaml;
  std::string run_id;  // empty in checkpoints written before runs had ids
  std::string optimizer_name = "adam";
  int64_t optimizer_steps = 0;
  std::vector<float> params, exp_avg, exp_avg_sq;  // each layout.total_size() long
};

void write_checkpoint_atomically(const std::string& path, const ParameterLayout& layout,
                                 const CheckpointData& data);

// The config a checkpoint was written with and the sample size of its data: what a tool needs to
// rebuild the model before reading the tensors (elbo info).
struct CheckpointHeader {
  std::string config_yaml;
  int64_t input_dim = 0;
  std::vector<int64_t> sample_shape;  // [input_dim], or the images' [C, H, W] of a conv model
};
CheckpointHeader read_checkpoint_header(const std::string& path);

// Reads a checkpoint written for `layout`. A missing, truncated or foreign file, or one whose
// tensors do not match the layout, is a BadInput error naming the file and the tensor.
CheckpointData read_checkpoint(const std::string& path, const ParameterLayout& layout);

}  // namespace elbo
