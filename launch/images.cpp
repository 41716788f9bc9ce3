// Image tiles, grids and the model's drawings (launch/images.h).
#include "launch/images.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "io/shards.h"

namespace elbo {

std::optional<ImageShape> image_shape(const std::vector<int64_t>& s, std::string* why) {
  const auto fits = [](int64_t v) { return v > 0 && v <= (1 << 15); };
  if (s.size() == 2 && fits(s[0]) && fits(s[1]))
    return ImageShape{1, static_cast<int>(s[0]), static_cast<int>(s[1])};
  if (s.size() == 3 && (s[0] == 1 || s[0] == 3) && fits(s[1]) && fits(s[2]))
    return ImageShape{static_cast<int>(s[0]), static_cast<int>(s[1]), static_cast<int>(s[2])};
  if (why)
    *why = "samples of shape " + shape_str(s) +
           " are not images: drawing needs [H, W] or [C, H, W] with C = 1 or 3";
  return std::nullopt;
}

void to_intensities(std::span<float> v, Likelihood likelihood) {
  if (likelihood == Likelihood::Bernoulli)
    for (float& x : v) x = 1.0f / (1.0f + std::exp(-x));
  else
    for (float& x : v) x = std::clamp(x, 0.0f, 1.0f);
}

Image tile_grid(std::span<const float> intensities, int n, int cols, const ImageShape& s) {
  ELBO_CHECK(n > 0 && cols > 0, "a grid needs tiles");
  ELBO_CHECK(intensities.size() >= static_cast<size_t>(n) * static_cast<size_t>(s.features()),
             "fewer intensities than tiles");
  const int rows = (n + cols - 1) / cols, C = s.channels, H = s.height, W = s.width;
  Image img;
  img.channels = C;
  img.width = cols * W + (cols + 1) * kGap;
  img.height = rows * H + (rows + 1) * kGap;
  img.pixels.assign(static_cast<size_t>(img.width) * img.height * C, kBackground);
  for (int t = 0; t < n; ++t) {
    const float* tile = intensities.data() + static_cast<size_t>(t) * s.features();
    const int x0 = kGap + (t % cols) * (W + kGap), y0 = kGap + (t / cols) * (H + kGap);
    for (int c = 0; c < C; ++c)
      for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x) {
          // The data stores planes [C, H, W]; PNG interleaves [H, W, C].
          const float v = tile[(static_cast<size_t>(c) * H + y) * W + x];
          const size_t at = ((static_cast<size_t>(y0 + y) * img.width) + x0 + x) * C + c;
          img.pixels[at] = static_cast<uint8_t>(std::lround(std::clamp(v, 0.0f, 1.0f) * 255.0f));
        }
  }
  return img;
}

std::vector<float> inputs_over_reconstructions(std::span<const float> x, std::span<const float> r,
                                               int n, int cols, int D, int* count) {
  const size_t d = static_cast<size_t>(D);
  const std::vector<float> blank(d, static_cast<float>(kBackground) / 255.0f);
  std::vector<float> tiles;
  *count = 0;
  for (int first = 0; first < n; first += cols)
    for (std::span<const float> v : {x, r})
      for (int i = first; i < first + cols; ++i, ++*count) {
        const float* t = i < n ? v.data() + static_cast<size_t>(i) * d : blank.data();
        tiles.insert(tiles.end(), t, t + d);
      }
  return tiles;
}

Drawer::Drawer(Backend& backend, Vae& vae, const ModelSpec& spec, int max_rows)
    : be_(backend),
      vae_(vae),
      spec_(spec),
      max_rows_(max_rows),
      x_(backend, static_cast<size_t>(max_rows) * spec.input_dim),
      z_(backend, static_cast<size_t>(max_rows) * spec.latent) {}

std::vector<float> Drawer::decoded(int n) {
  // Rows of output_dim(): the D means or logits first (then, for gaussian_learned, D
  // log-variances, which a picture does not show).
  const size_t D = static_cast<size_t>(spec_.input_dim);
  const size_t W = static_cast<size_t>(vae_.output_dim());
  std::vector<float> rows(static_cast<size_t>(n) * W);
  be_.download(rows.data(), vae_.output(), rows.size());
  std::vector<float> out(static_cast<size_t>(n) * D);
  for (size_t r = 0; r < static_cast<size_t>(n); ++r)
    std::copy_n(rows.data() + r * W, D, out.data() + r * D);
  to_intensities(out, spec_.likelihood);
  return out;
}

std::vector<float> Drawer::reconstructions(std::span<const float> x, int n) {
  ELBO_CHECK(n > 0 && n <= max_rows_, "more rows than the drawer holds");
  be_.upload(x_.data(), x.data(), static_cast<size_t>(n) * spec_.input_dim);
  be_.fill_zero(z_.data(), static_cast<size_t>(n) * spec_.latent);  // zero noise: z = mu
  vae_.forward(x_.data(), z_.data(), n);
  return decoded(n);
}

std::vector<float> Drawer::prior_samples(int n, RngKey key, uint32_t c2, RngStream stream) {
  ELBO_CHECK(n > 0 && n <= max_rows_, "more rows than the drawer holds");
  std::vector<uint32_t> ids(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = static_cast<uint32_t>(i);
  be_.fill_noise(z_.data(), ids, spec_.latent, key, c2, stream);
  vae_.decode(z_.data(), n);
  return decoded(n);
}

std::vector<float> Drawer::interpolation(std::span<const float> a, std::span<const float> b,
                                         int steps) {
  ELBO_CHECK(steps >= 2 && steps <= max_rows_ && max_rows_ >= 2, "path points out of range");
  const size_t D = static_cast<size_t>(spec_.input_dim), L = static_cast<size_t>(spec_.latent);
  std::vector<float> x(2 * D);
  std::copy(a.begin(), a.begin() + static_cast<std::ptrdiff_t>(D), x.begin());
  std::copy(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(D),
            x.begin() + static_cast<std::ptrdiff_t>(D));
  be_.upload(x_.data(), x.data(), x.size());
  be_.fill_zero(z_.data(), 2 * L);
  vae_.forward(x_.data(), z_.data(), 2);
  std::vector<float> head(2 * 2 * L);  // [2, 2L]: [mu | logvar] of a, then of b
  be_.download(head.data(), vae_.posterior(), head.size());
  std::vector<float> path(static_cast<size_t>(steps) * L);
  for (int k = 0; k < steps; ++k) {
    const float t = static_cast<float>(k) / static_cast<float>(steps - 1);
    for (size_t j = 0; j < L; ++j)
      path[static_cast<size_t>(k) * L + j] = (1.0f - t) * head[j] + t * head[2 * L + j];
  }
  be_.upload(z_.data(), path.data(), path.size());
  vae_.decode(z_.data(), steps);
  return decoded(steps);
}

}  // namespace elbo
