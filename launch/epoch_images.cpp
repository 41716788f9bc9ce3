// Epoch-end image grids (launch/epoch_images.h).
#include "launch/epoch_images.h"

#include <algorithm>
#include <cstdio>

#include "io/files.h"

namespace elbo {
namespace fs = std::filesystem;

EpochImages::EpochImages(Backend& backend, Vae& vae, const ModelSpec& spec, ImageShape shape, int n)
    : draw_(backend, vae, spec, n), spec_(spec), shape_(shape), n_(n) {}

std::unique_ptr<EpochImages> EpochImages::make(Backend& backend, Vae& vae, const ModelSpec& spec,
                                               int max_rows, const ShardedDataset& data,
                                               uint64_t seed, std::string* why) {
  const std::optional<ImageShape> shape = image_shape(data.sample_shape(), why);
  if (!shape) return nullptr;
  // The model's workspace bounds the rows of one pass (a rank's share of the batch).
  const int n = static_cast<int>(std::min<int64_t>({kTiles, data.size(), max_rows}));
  std::unique_ptr<EpochImages> images(new EpochImages(backend, vae, spec, *shape, n));
  std::vector<int64_t> rows(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) rows[static_cast<size_t>(i)] = i;
  images->x_.resize(rows.size() * static_cast<size_t>(spec.input_dim));
  data.read_rows(rows, images->x_.data());
  images->key_ = rng_key(seed);
  return images;
}

void EpochImages::write(const fs::path& images_dir, int64_t epoch) {
  std::error_code ec;
  fs::create_directories(images_dir, ec);
  if (ec) throw_file_error("create", "the image directory", images_dir.string(), ec.value());
  char prefix[32];
  std::snprintf(prefix, sizeof prefix, "epoch-%03lld-", static_cast<long long>(epoch));
  const std::vector<float> r = draw_.reconstructions(x_, n_);
  const int cols = std::min(n_, kCols);
  int count = 0;
  const std::vector<float> tiles =
      inputs_over_reconstructions(x_, r, n_, cols, spec_.input_dim, &count);
  write_file_atomically((images_dir / (std::string(prefix) + "reconstructions.png")).string(),
                        png_bytes(tile_grid(tiles, count, cols, shape_)), "an image grid");
  // Noise apart from the training's and the evaluation's: its own stream word c2 = 1.
  const std::vector<float> s = draw_.prior_samples(n_, key_, 1, RngStream::EvalNoise);
  write_file_atomically((images_dir / (std::string(prefix) + "samples.png")).string(),
                        png_bytes(tile_grid(s, n_, cols, shape_)), "an image grid");
}

}  // namespace elbo
