// Checks a browser's screenshot of report.html (tests/report_test.sh): each curve colour of the
// charts is drawn, and inside the coloured frame of each image grid there is a picture (many grey
// levels, most of it not the page or the grid's background). Prints ok/FAIL lines; exit 1 on a
// failure.
//   report_render_check SCREENSHOT.png
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <set>
#include <string>

#include "io/png.h"

namespace {

struct Rgb {
  int r, g, b;
};

bool near(const uint8_t* p, Rgb c, int tol) {
  return std::abs(p[0] - c.r) <= tol && std::abs(p[1] - c.g) <= tol && std::abs(p[2] - c.b) <= tol;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: report_render_check SCREENSHOT.png\n");
    return 2;
  }
  std::ifstream in(argv[1], std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const elbo::Image img = elbo::decode_png(bytes, 3, argv[1]);
  const auto px = [&](int x, int y) {
    return img.pixels.data() + (static_cast<size_t>(y) * img.width + x) * 3;
  };
  int failed = 0;
  const auto check = [&failed](bool ok, const std::string& what) {
    std::printf("%s - %s\n", ok ? "ok" : "FAIL", what.c_str());
    failed += ok ? 0 : 1;
  };
  // The series colours of launch/report.cpp: loss and train loss, recon, kl, test -ELBO.
  const struct {
    const char* name;
    Rgb c;
  } curves[] = {{"loss", {0x1f, 0x77, 0xb4}},
                {"recon", {0xff, 0x7f, 0x0e}},
                {"kl", {0x2c, 0xa0, 0x2c}},
                {"test -ELBO", {0xd6, 0x27, 0x28}}};
  for (const auto& [name, c] : curves) {
    long n = 0;
    for (int y = 0; y < img.height; ++y)
      for (int x = 0; x < img.width; ++x) n += near(px(x, y), c, 6);
    check(n >= 200,
          std::string("curve ") + name + ": " + std::to_string(n) + " pixels of its colour");
  }
  // The frames of the two grids (#9467bd, #17becf): their bounding box, and what lies inside.
  const struct {
    const char* name;
    Rgb c;
  } frames[] = {{"reconstructions", {0x94, 0x67, 0xbd}}, {"samples", {0x17, 0xbe, 0xcf}}};
  for (const auto& [name, c] : frames) {
    int x0 = img.width, y0 = img.height, x1 = -1, y1 = -1;
    for (int y = 0; y < img.height; ++y)
      for (int x = 0; x < img.width; ++x)
        if (near(px(x, y), c, 6)) {
          x0 = std::min(x0, x), y0 = std::min(y0, y), x1 = std::max(x1, x), y1 = std::max(y1, y);
        }
    if (x1 - x0 < 40 || y1 - y0 < 40) {
      check(false, std::string("image ") + name + ": no frame of its colour on the page");
      continue;
    }
    long grey = 0, busy = 0, total = 0;
    std::set<int> levels;
    for (int y = y0 + 4; y <= y1 - 4; ++y)
      for (int x = x0 + 4; x <= x1 - 4; ++x) {
        const uint8_t* p = px(x, y);
        ++total;
        if (p[0] == p[1] && p[1] == p[2]) {
          ++grey;
          levels.insert(p[0]);
          busy += p[0] != 128 && p[0] != 255;
        }
      }
    const double grey_share = static_cast<double>(grey) / static_cast<double>(total);
    const double busy_share = static_cast<double>(busy) / static_cast<double>(total);
    check(grey_share > 0.95 && busy_share > 0.5 && levels.size() > 32,
          std::string("image ") + name + ": " + std::to_string(x1 - x0 + 1) + "x" +
              std::to_string(y1 - y0 + 1) + " frame, " + std::to_string(levels.size()) +
              " grey levels, " + std::to_string(static_cast<int>(100 * busy_share)) +
              "% neither background nor page");
  }
  return failed ? 1 : 0;
}
