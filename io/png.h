// PNG images through libpng: 8-bit grey or RGB pixels to PNG bytes (what `elbo sample` and the
// training run's image grids write) and back (what the tests and the report's checks read).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace elbo {

struct Image {
  int width = 0, height = 0;
  int channels = 1;             // 1 (grey) or 3 (RGB)
  std::vector<uint8_t> pixels;  // [height, width, channels], rows top to bottom
};

// The PNG file of `image`.
std::string png_bytes(const Image& image);
// Decodes PNG bytes into 8-bit grey (channels 1) or RGB (3), as `channels` asks; `where` names
// the file in the BadInput error a damaged file gives.
Image decode_png(std::string_view bytes, int channels, const std::string& where);

}  // namespace elbo
