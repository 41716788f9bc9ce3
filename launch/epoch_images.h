// The image grids a training run draws on rank 0 at each epoch end,
// <run dir>/images/epoch-NNN-{reconstructions,samples}.png: always the same test samples (the
// training data's when there is no test set) and the same prior noise, so that epochs compare.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "io/shards.h"
#include "launch/images.h"

namespace elbo {

class EpochImages {
 public:
  // Draws the first samples of `data`, at most `max_rows` (the model's workspace). nullptr, and
  // the reason in *why, when the data's samples are not images.
  static std::unique_ptr<EpochImages> make(Backend& backend, Vae& vae, const ModelSpec& spec,
                                           int max_rows, const ShardedDataset& data, uint64_t seed,
                                           std::string* why);
  // Writes both grids of `epoch` into `images_dir` (created when missing), atomically.
  void write(const std::filesystem::path& images_dir, int64_t epoch);

  static constexpr int kTiles = 16, kCols = 8;

 private:
  EpochImages(Backend& backend, Vae& vae, const ModelSpec& spec, ImageShape shape, int n);
  Drawer draw_;
  ModelSpec spec_;
  ImageShape shape_;
  int n_;
  std::vector<float> x_;  // [n, D]: the fixed samples
  RngKey key_{};
};

}  // namespace elbo
