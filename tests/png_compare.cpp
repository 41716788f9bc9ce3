// Compares two PNG images pixel by pixel (tests/images_test.sh cuda): equal sizes, no value apart
// by more than 1, and at most one value in 1000 apart at all. A GPU's sums round differently from
// the CPU's in the last bits, which can move a value that lies near a half to the next level.
//   png_compare A.png B.png
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>

#include "io/png.h"

namespace {

elbo::Image read(const char* path) {
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return elbo::decode_png(bytes, 3, path);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: png_compare A.png B.png\n");
    return 2;
  }
  const elbo::Image a = read(argv[1]), b = read(argv[2]);
  if (a.width != b.width || a.height != b.height) {
    std::printf("sizes differ: %dx%d and %dx%d\n", a.width, a.height, b.width, b.height);
    return 1;
  }
  int worst = 0;
  size_t apart = 0;
  for (size_t i = 0; i < a.pixels.size(); ++i) {
    const int d = std::abs(a.pixels[i] - b.pixels[i]);
    worst = d > worst ? d : worst;
    apart += d != 0;
  }
  std::printf("%zu of %zu values apart, by at most %d\n", apart, a.pixels.size(), worst);
  return worst <= 1 && apart * 1000 <= a.pixels.size() ? 0 : 1;
}
