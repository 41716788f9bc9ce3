// Pictures of a model: how samples of the data's shape become image tiles, tiles a grid, and the
// three things drawn (reconstructions, prior samples, a path between two latents), shared by
// `elbo sample` and the image grids a training run writes at each epoch end.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/model.h"
#include "io/png.h"

namespace elbo {

struct ImageShape {
  int channels = 1, height = 0, width = 0;
  int features() const { return channels * height * width; }
};

// [H, W] is grey, [C, H, W] with C = 1 (grey) or 3 (RGB, planes as the data stores them).
// nullopt for any other sample shape, with the reason in *why.
std::optional<ImageShape> image_shape(const std::vector<int64_t>& sample_shape, std::string* why);

// Decoder outputs to intensities in [0, 1], in place: Bernoulli logits become probabilities
// (sigmoid), Gaussian means are clipped.
void to_intensities(std::span<float> outputs, Likelihood likelihood);

// Intensities [n, C*H*W] as a grid of `cols` tiles a row (row-major order; a short last row is
// padded with the background), each tile kGap pixels from its neighbours and the border.
inline constexpr int kGap = 2;
inline constexpr uint8_t kBackground = 128;
Image tile_grid(std::span<const float> intensities, int n, int cols, const ImageShape& shape);

// Tiles for a grid of `cols` columns in which each row of inputs x [n, D] lies above the row of
// their reconstructions r [n, D]; a short last pair of rows is padded with background tiles.
// Returns the tiles; *count receives their number.
std::vector<float> inputs_over_reconstructions(std::span<const float> x, std::span<const float> r,
                                               int n, int cols, int D, int* count);

// Draws with a trained model on its backend; every result is intensities [rows, D] on the host.
class Drawer {
 public:
  // `max_rows` bounds every call's rows.
  Drawer(Backend& backend, Vae& vae, const ModelSpec& spec, int max_rows);
  // Decoded posterior means of x [n, D] (host): the model's reconstructions, free of noise.
  std::vector<float> reconstructions(std::span<const float> x, int n);
  // Decoded draws from the prior N(0, I): noise for ids 0..n-1 of (key, c2, stream), so that
  // the same arguments give the same pictures.
  std::vector<float> prior_samples(int n, RngKey key, uint32_t c2, RngStream stream);
  // The decoded straight path from a's posterior mean to b's (x rows [D], host), `steps` >= 2
  // points with both ends included.
  std::vector<float> interpolation(std::span<const float> a, std::span<const float> b, int steps);

 private:
  std::vector<float> decoded(int n);
  Backend& be_;
  Vae& vae_;
  ModelSpec spec_;
  int max_rows_;
  DeviceArray x_, z_;  // [max_rows, D], [max_rows, L]
};

}  // namespace elbo
