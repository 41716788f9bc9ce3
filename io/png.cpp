// PNG through libpng's simplified API, which reports errors in its result instead of by longjmp,
// so no C++ frame is ever jumped over.
#include "io/png.h"

#include <png.h>

#include "core/error.h"
#include "io/location.h"

namespace elbo {
namespace {

png_uint_32 format_of(int channels) { return channels == 3 ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY; }

}  // namespace

std::string png_bytes(const Image& image) {
  ELBO_CHECK(image.channels == 1 || image.channels == 3, "PNG images are grey or RGB");
  ELBO_CHECK(image.width > 0 && image.height > 0 &&
                 image.pixels.size() == static_cast<size_t>(image.width) * image.height *
                                            static_cast<size_t>(image.channels),
             "image size does not match its pixels");
  png_image png{};
  png.version = PNG_IMAGE_VERSION;
  png.width = static_cast<png_uint_32>(image.width);
  png.height = static_cast<png_uint_32>(image.height);
  png.format = format_of(image.channels);
  // The first call measures, the second writes.
  png_alloc_size_t size = 0;
  if (!png_image_write_to_memory(&png, nullptr, &size, 0, image.pixels.data(), 0, nullptr))
    throw_internal(std::string("libpng cannot encode the image: ") + png.message, __FILE__,
                   __LINE__);
  std::string bytes(size, '\0');
  if (!png_image_write_to_memory(&png, bytes.data(), &size, 0, image.pixels.data(), 0, nullptr))
    throw_internal(std::string("libpng cannot encode the image: ") + png.message, __FILE__,
                   __LINE__);
  bytes.resize(size);
  return bytes;
}

Image decode_png(std::string_view bytes, int channels, const std::string& where) {
  ELBO_CHECK(channels == 1 || channels == 3, "PNG images are read as grey or RGB");
  png_image png{};
  png.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&png, bytes.data(), bytes.size()))
    throw_bad_input(std::string("not a PNG image libpng can read: ") + png.message + at(where));
  png.format = format_of(channels);
  Image image;
  image.width = static_cast<int>(png.width);
  image.height = static_cast<int>(png.height);
  image.channels = channels;
  image.pixels.resize(PNG_IMAGE_SIZE(png));
  if (!png_image_finish_read(&png, nullptr, image.pixels.data(), 0, nullptr)) {
    png_image_free(&png);
    throw_bad_input(std::string("damaged PNG image: ") + png.message + at(where));
  }
  return image;
}

}  // namespace elbo
