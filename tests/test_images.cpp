// Pictures: the PNG writer against libpng's decoder and the file's own header, grid layout for
// grey and RGB samples, the intensity mappings against their closed forms, the drawer's decoder
// against a plain host evaluation of the MLP, interpolation ends against reconstructions, and the
// report's page (self-contained, well-formed, its images byte for byte).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <regex>

#include "core/error.h"
#include "core/model.h"
#include "io/png.h"
#include "launch/images.h"
#include "launch/report.h"

namespace fs = std::filesystem;
using namespace elbo;

namespace {

uint32_t big_endian(const std::string& b, size_t at) {
  return static_cast<uint32_t>(static_cast<unsigned char>(b[at])) << 24 |
         static_cast<uint32_t>(static_cast<unsigned char>(b[at + 1])) << 16 |
         static_cast<uint32_t>(static_cast<unsigned char>(b[at + 2])) << 8 |
         static_cast<uint32_t>(static_cast<unsigned char>(b[at + 3]));
}

Image random_image(int w, int h, int c, unsigned seed) {
  std::mt19937 rng(seed);
  Image img{w, h, c, std::vector<uint8_t>(static_cast<size_t>(w) * h * c)};
  for (uint8_t& p : img.pixels) p = static_cast<uint8_t>(rng() & 255);
  return img;
}

TEST(Png, RoundTripsGreyAndRgbThroughLibpng) {
  for (int c : {1, 3}) {
    const Image img = random_image(37, 11, c, 7u + static_cast<unsigned>(c));
    const std::string bytes = png_bytes(img);
    // The signature and IHDR as the PNG specification lays them out.
    ASSERT_GT(bytes.size(), 33u);
    EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
    EXPECT_EQ(bytes.substr(12, 4), "IHDR");
    EXPECT_EQ(big_endian(bytes, 16), 37u);
    EXPECT_EQ(big_endian(bytes, 20), 11u);
    EXPECT_EQ(static_cast<int>(bytes[24]), 8);               // bit depth
    EXPECT_EQ(static_cast<int>(bytes[25]), c == 3 ? 2 : 0);  // colour type: RGB or grey
    const Image back = decode_png(bytes, c, "test");
    EXPECT_EQ(back.width, 37);
    EXPECT_EQ(back.height, 11);
    EXPECT_EQ(back.pixels, img.pixels);
  }
}

TEST(Png, DamagedBytesAreBadInput) {
  std::string bytes = png_bytes(random_image(8, 8, 1, 1));
  try {
    decode_png(bytes.substr(0, 20), 1, "cut.png");
    ADD_FAILURE() << "a cut PNG decoded";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::BadInput);
    EXPECT_NE(std::string(e.what()).find("(cut.png)"), std::string::npos) << e.what();
  }
}

TEST(ImageShapes, GreyRgbAndRefused) {
  std::string why;
  auto s = image_shape({28, 28}, &why);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->channels, 1);
  EXPECT_EQ(s->height, 28);
  s = image_shape({3, 4, 5}, &why);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->channels, 3);
  EXPECT_EQ(s->height, 4);
  EXPECT_EQ(s->width, 5);
  EXPECT_TRUE(image_shape({1, 4, 5}, &why));
  for (const std::vector<int64_t>& bad :
       std::vector<std::vector<int64_t>>{{784}, {2, 4, 5}, {4, 5, 3}, {1, 2, 3, 4}}) {
    why.clear();
    EXPECT_FALSE(image_shape(bad, &why));
    EXPECT_NE(why.find("[H, W] or [C, H, W]"), std::string::npos) << why;
  }
}

// n = 3 tiles of 2 x 3, two columns: the third tile starts the second row, the fourth slot is
// background.
TEST(Grid, GreyTilesAtTheirPlaces) {
  const ImageShape s{1, 2, 3};
  std::vector<float> v(18);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i) / 17.0f;
  const Image img = tile_grid(v, 3, 2, s);
  EXPECT_EQ(img.width, 2 * 3 + 3 * kGap);
  EXPECT_EQ(img.height, 2 * 2 + 3 * kGap);
  EXPECT_EQ(img.channels, 1);
  std::vector<int> want(static_cast<size_t>(img.width) * img.height, kBackground);
  for (int t = 0; t < 3; ++t)
    for (int y = 0; y < 2; ++y)
      for (int x = 0; x < 3; ++x) {
        const int X = kGap + (t % 2) * (3 + kGap) + x, Y = kGap + (t / 2) * (2 + kGap) + y;
        want[static_cast<size_t>(Y * img.width + X)] =
            static_cast<int>(std::lround(v[static_cast<size_t>(t * 6 + y * 3 + x)] * 255.0f));
      }
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(img.pixels[i], want[i]) << "pixel " << i;
}

// [3, H, W] planes become interleaved RGB pixels.
TEST(Grid, RgbPlanesInterleave) {
  const ImageShape s{3, 2, 2};
  std::vector<float> v(24);  // two tiles
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i) / 23.0f;
  const Image img = tile_grid(v, 2, 2, s);
  ASSERT_EQ(img.channels, 3);
  EXPECT_EQ(img.width, 2 * 2 + 3 * kGap);
  EXPECT_EQ(img.height, 2 + 2 * kGap);
  for (int t = 0; t < 2; ++t)
    for (int c = 0; c < 3; ++c)
      for (int y = 0; y < 2; ++y)
        for (int x = 0; x < 2; ++x) {
          const int X = kGap + t * (2 + kGap) + x, Y = kGap + y;
          const float want = v[static_cast<size_t>(t * 12 + c * 4 + y * 2 + x)];
          EXPECT_EQ(img.pixels[static_cast<size_t>((Y * img.width + X) * 3 + c)],
                    std::lround(want * 255.0f));
        }
  EXPECT_EQ(img.pixels[0], kBackground);  // the border
}

TEST(Grid, InputsAboveReconstructions) {
  const int D = 1;
  const std::vector<float> x{0.1f, 0.2f, 0.3f}, r{0.6f, 0.7f, 0.8f};
  int count = 0;
  const std::vector<float> t = inputs_over_reconstructions(x, r, 3, 2, D, &count);
  const float bg = static_cast<float>(kBackground) / 255.0f;
  EXPECT_EQ(count, 8);
  EXPECT_EQ(t, (std::vector<float>{0.1f, 0.2f, 0.6f, 0.7f, 0.3f, bg, 0.8f, bg}));
}

TEST(Intensities, BernoulliIsSigmoidGaussianIsClipped) {
  std::vector<float> logits{0.0f, std::log(3.0f), -std::log(3.0f), 40.0f, -40.0f};
  to_intensities(logits, Likelihood::Bernoulli);
  EXPECT_FLOAT_EQ(logits[0], 0.5f);
  EXPECT_FLOAT_EQ(logits[1], 0.75f);
  EXPECT_FLOAT_EQ(logits[2], 0.25f);
  EXPECT_FLOAT_EQ(logits[3], 1.0f);
  EXPECT_NEAR(logits[4], 0.0f, 1e-12);
  std::vector<float> means{-0.5f, 0.0f, 0.3f, 1.0f, 1.7f};
  to_intensities(means, Likelihood::Gaussian);
  EXPECT_EQ(means, (std::vector<float>{0.0f, 0.0f, 0.3f, 1.0f, 1.0f}));
}

struct SmallModel {
  ModelSpec spec = [] {
    ModelSpec s;
    s.input_dim = 12;
    s.encoder = {7};
    s.latent = 3;
    s.decoder = {5, 6};
    s.activation = Activation::Tanh;
    return s;
  }();
  std::unique_ptr<Backend> be = make_cpu_backend();
  Vae vae{*be, spec, 8, 11};
};

// The decoder of a plain host loop over the layout's layers: a second implementation.
std::vector<float> host_decode(Vae& vae, const ModelSpec& spec, const std::vector<float>& z,
                               int n) {
  const auto& layers = vae.layout().layers();
  std::vector<float> out;
  for (int b = 0; b < n; ++b) {
    std::vector<double> h(z.begin() + b * spec.latent, z.begin() + (b + 1) * spec.latent);
    for (size_t i = vae.layout().num_encoder_layers(); i < layers.size(); ++i) {
      const LinearLayer& l = layers[i];
      std::vector<double> y(static_cast<size_t>(l.out));
      for (int o = 0; o < l.out; ++o) {
        double acc = vae.params()[l.b_offset + static_cast<size_t>(o)];
        for (int k = 0; k < l.in; ++k)
          acc += vae.params()[l.w_offset + static_cast<size_t>(o * l.in + k)] *
                 h[static_cast<size_t>(k)];
        y[static_cast<size_t>(o)] = l.activation == Activation::Tanh ? std::tanh(acc) : acc;
      }
      h = y;
    }
    for (double v : h) out.push_back(static_cast<float>(1.0 / (1.0 + std::exp(-v))));
  }
  return out;
}

TEST(Drawer, PriorSamplesAreTheDecoderOfThePriorNoise) {
  SmallModel m;
  Drawer draw(*m.be, m.vae, m.spec, 8);
  const RngKey key = rng_key(5);
  const std::vector<float> got = draw.prior_samples(4, key, 0, RngStream::Noise);
  std::vector<float> z(4 * 3);
  const std::vector<uint32_t> ids{0, 1, 2, 3};
  m.be->fill_noise(z.data(), ids, 3, key, 0, RngStream::Noise);  // host memory on the CPU
  const std::vector<float> want = host_decode(m.vae, m.spec, z, 4);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-5) << i;
  // Same arguments, same pictures; another seed, others.
  EXPECT_EQ(draw.prior_samples(4, key, 0, RngStream::Noise), got);
  EXPECT_NE(draw.prior_samples(4, rng_key(6), 0, RngStream::Noise), got);
}

TEST(Drawer, InterpolationEndsAreTheReconstructionsOfBothSamples) {
  SmallModel m;
  Drawer draw(*m.be, m.vae, m.spec, 8);
  std::mt19937 rng(3);
  std::vector<float> x(2 * 12);
  for (float& v : x) v = static_cast<float>(rng() % 1000) / 999.0f;
  const std::vector<float> rec = draw.reconstructions(x, 2);
  const std::vector<float> path = draw.interpolation({x.data(), 12}, {x.data() + 12, 12}, 5);
  ASSERT_EQ(path.size(), 5u * 12u);
  for (size_t j = 0; j < 12; ++j) {
    EXPECT_NEAR(path[j], rec[j], 1e-6) << j;
    EXPECT_NEAR(path[4 * 12 + j], rec[12 + j], 1e-6) << j;
  }
  // The middle point is the decoder of the mean of the two posterior means (from the head).
  std::vector<float> eps(2 * 3, 0.0f);
  m.vae.forward(x.data(), eps.data(), 2);
  std::vector<float> mid(3);
  for (int j = 0; j < 3; ++j)
    mid[static_cast<size_t>(j)] = 0.5f * m.vae.posterior()[j] + 0.5f * m.vae.posterior()[6 + j];
  const std::vector<float> want = host_decode(m.vae, m.spec, mid, 1);
  for (size_t j = 0; j < 12; ++j) EXPECT_NEAR(path[2 * 12 + j], want[j], 1e-5) << j;
}

TEST(Report, Base64KnownAnswers) {
  EXPECT_EQ(base64(""), "");
  EXPECT_EQ(base64("f"), "Zg==");
  EXPECT_EQ(base64("fo"), "Zm8=");
  EXPECT_EQ(base64("foo"), "Zm9v");
  EXPECT_EQ(base64("foobar"), "Zm9vYmFy");
  EXPECT_EQ(base64(std::string("\xff\x00\x10", 3)), "/wAQ");
}

std::string base64_decode(const std::string& s) {
  const std::string digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  uint32_t v = 0;
  int bits = 0;
  for (char c : s) {
    if (c == '=') break;
    v = v << 6 | static_cast<uint32_t>(digits.find(c));
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((v >> bits) & 255);
    }
  }
  return out;
}

TEST(Report, SelfContainedWithCurvesImagesAndConfig) {
  const fs::path dir = fs::temp_directory_path() / ("elbo_test_report_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "images");
  {
    std::ofstream m(dir / "metrics.jsonl");
    for (int s = 1; s <= 4; ++s)
      m << "{\"type\": \"step\", \"epoch\": " << (s + 1) / 2 << ", \"step\": " << s
        << ", \"loss\": " << 300 - 10 * s << ", \"recon\": " << 280 - 10 * s
        << ", \"kl\": 20, \"data_wait_s_max\": 0.25}\n";
    for (int e = 1; e <= 2; ++e)
      m << "{\"type\": \"epoch\", \"epoch\": " << e << ", \"step\": " << 2 * e
        << ", \"train_loss\": " << 290 - 20 * e << ", \"test_neg_elbo\": " << 285 - 20 * e
        << ", \"test_recon\": 260, \"test_kl\": 21, \"samples_per_s\": 1234.6, \"epoch_s\": 2}\n";
  }
  const std::string old_png = png_bytes(random_image(4, 4, 1, 1));
  const std::string new_png = png_bytes(random_image(4, 4, 1, 2));
  const std::string samples_png = png_bytes(random_image(4, 4, 1, 3));
  std::ofstream(dir / "images/epoch-001-reconstructions.png") << old_png;
  std::ofstream(dir / "images/epoch-002-reconstructions.png") << new_png;
  std::ofstream(dir / "images/epoch-002-samples.png") << samples_png;
  write_report(dir, "name: <b>&x</b>\n");
  std::ifstream in(dir / "report.html");
  const std::string html((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  fs::remove_all(dir);

  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_NE(html.find("</html>"), std::string::npos);
  EXPECT_EQ(html.find("http:"), std::string::npos);
  EXPECT_EQ(html.find("https:"), std::string::npos);
  // Every src is a data: URI; the newest epoch's images, byte for byte.
  const std::regex src("src=\"([^\"]*)\"");
  std::vector<std::string> srcs;
  for (auto it = std::sregex_iterator(html.begin(), html.end(), src); it != std::sregex_iterator();
       ++it)
    srcs.push_back((*it)[1]);
  ASSERT_EQ(srcs.size(), 2u);
  const std::string prefix = "data:image/png;base64,";
  for (const std::string& s : srcs) ASSERT_EQ(s.rfind(prefix, 0), 0u) << s.substr(0, 40);
  EXPECT_EQ(base64_decode(srcs[0].substr(prefix.size())), new_png);
  EXPECT_EQ(base64_decode(srcs[1].substr(prefix.size())), samples_png);
  // Two charts, with a curve per series (3 step series, 4 epoch series), points as the records.
  size_t svgs = 0, polylines = 0;
  for (size_t at = 0; (at = html.find("<svg", at)) != std::string::npos; ++at) ++svgs;
  for (size_t at = 0; (at = html.find("<polyline", at)) != std::string::npos; ++at) ++polylines;
  EXPECT_EQ(svgs, 2u);
  EXPECT_EQ(polylines, 7u);
  // The config, escaped; the throughput table with the epoch's data wait (two records of 0.25).
  EXPECT_NE(html.find("name: &lt;b&gt;&amp;x&lt;/b&gt;"), std::string::npos);
  EXPECT_NE(html.find("<td>1235</td>"), std::string::npos);  // samples/s, rounded
  EXPECT_NE(html.find("<td>0.500</td>"), std::string::npos);
}

}  // namespace
