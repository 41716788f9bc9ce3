// The model against independent truth: a plain double-precision implementation of section 2 of
// DESIGN.md written here, finite differences of it for every parameter, and the PyTorch float64
// golden cases (loss, every gradient, 10 Adam/AdamW steps).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/model.h"
#include "core/optimizer.h"
#include "io/hdf5.h"
#include "tests/golden.h"

namespace elbo {
namespace {

// ---- a second implementation, in double, straight from the formulas ---------------------------

double act_ref(double v, Activation a) {
  if (a == Activation::Relu) return v > 0 ? v : 0;
  if (a == Activation::Tanh) return std::tanh(v);
  return v;
}

// A Conv2d or ConvTranspose2d as direct loops over PyTorch's definitions (no im2col): Conv2d
// out[o, y, x] = b[o] + sum w[o, c, i, j] in[c, y s - p + i, x s - p + j]; ConvTranspose2d
// scatters each input pixel: out[o, y s - p + i, x s - p + j] += w[c, o, i, j] in[c, y, x].
std::vector<double> conv_ref(const ConvLayer& l, const std::vector<double>& p,
                             const std::vector<double>& in) {
  const ConvShape& g = l.shape;
  const int k = g.kernel, C = g.channels, M = l.maps;
  auto w = [&](int m, int c, int i, int j) {
    return p[l.w_offset + ((static_cast<size_t>(m) * C + c) * k + i) * k + j];
  };
  std::vector<double> out;
  if (!l.transposed) {
    out.assign(static_cast<size_t>(M) * g.out_h * g.out_w, 0);
    for (int m = 0; m < M; ++m)
      for (int y = 0; y < g.out_h; ++y)
        for (int x = 0; x < g.out_w; ++x) {
          double s = p[l.b_offset + m];
          for (int c = 0; c < C; ++c)
            for (int i = 0; i < k; ++i)
              for (int j = 0; j < k; ++j) {
                const int iy = y * g.stride - g.padding + i, ix = x * g.stride - g.padding + j;
                if (iy >= 0 && iy < g.height && ix >= 0 && ix < g.width)
                  s += w(m, c, i, j) * in[(static_cast<size_t>(c) * g.height + iy) * g.width + ix];
              }
          out[(static_cast<size_t>(m) * g.out_h + y) * g.out_w + x] = act_ref(s, l.activation);
        }
    return out;
  }
  out.assign(static_cast<size_t>(C) * g.height * g.width, 0);
  for (int c = 0; c < C; ++c)
    for (size_t n = 0; n < static_cast<size_t>(g.height) * g.width; ++n)
      out[c * g.height * g.width + n] = p[l.b_offset + c];
  for (int m = 0; m < M; ++m)
    for (int y = 0; y < g.out_h; ++y)
      for (int x = 0; x < g.out_w; ++x)
        for (int c = 0; c < C; ++c)
          for (int i = 0; i < k; ++i)
            for (int j = 0; j < k; ++j) {
              const int oy = y * g.stride - g.padding + i, ox = x * g.stride - g.padding + j;
              if (oy >= 0 && oy < g.height && ox >= 0 && ox < g.width)
                out[(static_cast<size_t>(c) * g.height + oy) * g.width + ox] +=
                    w(m, c, i, j) * in[(static_cast<size_t>(m) * g.out_h + y) * g.out_w + x];
            }
  for (double& v : out) v = act_ref(v, l.activation);
  return out;
}

// Mean over the batch of recon + beta KL.
double reference_loss(const ModelSpec& spec, const ParameterLayout& layout,
                      const std::vector<double>& p, const std::vector<float>& x,
                      const std::vector<float>& eps, int B, double beta) {
  const int D = spec.input_dim, L = spec.latent;
  double total = 0;
  for (int b = 0; b < B; ++b) {
    std::vector<double> h(x.begin() + b * D, x.begin() + (b + 1) * D);
    for (const ConvLayer& l : layout.encoder_convs()) h = conv_ref(l, p, h);
    std::vector<double> mu, logvar;
    for (size_t i = 0; i < layout.layers().size(); ++i) {
      const LinearLayer& l = layout.layers()[i];
      std::vector<double> y(l.out);
      for (int o = 0; o < l.out; ++o) {
        double s = p[l.b_offset + o];
        for (int k = 0; k < l.in; ++k) s += p[l.w_offset + static_cast<size_t>(o) * l.in + k] * h[k];
        y[o] = act_ref(s, l.activation);
      }
      h = y;
      if (i + 1 == layout.num_encoder_layers()) {  // the head: sample z, add KL
        mu.assign(h.begin(), h.begin() + L);
        logvar.assign(h.begin() + L, h.end());
        h.assign(L, 0);
        for (int j = 0; j < L; ++j) {
          h[j] = mu[j] + std::exp(0.5 * logvar[j]) * eps[b * L + j];
          total += beta * -0.5 * (1 + logvar[j] - std::exp(logvar[j]) - mu[j] * mu[j]);
        }
      }
    }
    for (const ConvLayer& l : layout.decoder_convs()) h = conv_ref(l, p, h);
    for (int j = 0; j < D; ++j) {
      const double t = x[b * D + j], o = h[j];
      if (spec.likelihood == Likelihood::Bernoulli) {
        const double prob = 1 / (1 + std::exp(-o));
        total += -(t * std::log(prob) + (1 - t) * std::log(1 - prob));
      } else if (spec.likelihood == Likelihood::Gaussian) {
        total += 0.5 * (o - t) * (o - t) + 0.5 * std::log(2 * M_PI);
      } else {  // means, then log-variances
        const double lv = h[D + j];
        total += 0.5 * (lv + (o - t) * (o - t) * std::exp(-lv) + std::log(2 * M_PI));
      }
    }
  }
  return total / B;
}

// A batch of B samples for `spec`: pixels uniform in (0, 1) and standard normal noise, from
// Philox under `seed`.
struct Batch {
  std::vector<float> x, eps;
};
Batch random_batch(const ModelSpec& spec, int B, uint64_t seed) {
  Batch b{std::vector<float>(static_cast<size_t>(B) * spec.input_dim),
          std::vector<float>(static_cast<size_t>(B) * spec.latent)};
  const RngKey key = rng_key(seed);
  for (size_t i = 0; i < b.x.size(); ++i)
    b.x[i] = uniform_open01(philox_draw(key, static_cast<uint32_t>(i), 0, 0, RngStream::Init).v[0]);
  for (size_t i = 0; i < b.eps.size(); ++i)
    b.eps[i] = philox_normal(key, static_cast<uint32_t>(i), 0, RngStream::Noise, 0);
  return b;
}

std::vector<float> download(Backend& be, const float* p, size_t n) {
  std::vector<float> v(n);
  be.download(v.data(), p, n);
  return v;
}

struct FdCase {
  Activation act;
  Likelihood lik;
  ModelType type = ModelType::Mlp;
};

// MLP 12 -> [7, 5] -> 3 -> [5, 7] -> 12; conv: [2, 7, 6] images through 3x3 convs of stride 2 and
// padding 1 to [3, 4, 3] then [4, 2, 2] (odd sizes: the decoder needs output padding (0, 1) and
// (1, 0)), dense [5] -> 3 -> [5].
ModelSpec fd_spec(const FdCase& c) {
  ModelSpec spec;
  spec.type = c.type;
  spec.activation = c.act;
  spec.likelihood = c.lik;
  spec.latent = 3;
  if (c.type == ModelType::Conv) {
    spec.channels = 2, spec.height = 7, spec.width = 6;
    spec.input_dim = 2 * 7 * 6;
    spec.conv = ConvSpec{{3, 4}, 3, 2, 1};
    spec.encoder = {5};
    spec.decoder = {5};
  } else {
    spec.input_dim = 12;
    spec.encoder = {7, 5};
    spec.decoder = {5, 7};
  }
  return spec;
}

class FiniteDifferences : public ::testing::TestWithParam<FdCase> {};

TEST_P(FiniteDifferences, EveryParameterGradient) {
  const ModelSpec spec = fd_spec(GetParam());
  const int B = 4;
  const double beta = 0.7;
  auto be = make_cpu_backend();
  Vae vae(*be, spec, B, 42);

  const auto [x, eps] = random_batch(spec, B, 99);

  vae.forward_backward(x.data(), eps.data(), B, static_cast<float>(beta), 1.0f / B);
  const std::vector<float> params = download(*be, vae.params(), vae.num_params());
  const std::vector<float> grads = download(*be, vae.grads(), vae.num_params());
  std::vector<double> p(params.begin(), params.end());

  const LossSums sums = vae.loss_sums(B);
  const double ref = reference_loss(spec, vae.layout(), p, x, eps, B, beta);
  EXPECT_NEAR((sums.recon + beta * sums.kl) / B, ref, 1e-5 * std::fabs(ref));

  for (const TensorView& t : vae.layout().tensors()) {
    double max_err = 0, max_grad = 0;
    for (size_t i = t.offset; i < t.offset + t.size(); ++i) {
      const double h = 1e-6, saved = p[i];
      p[i] = saved + h;
      const double up = reference_loss(spec, vae.layout(), p, x, eps, B, beta);
      p[i] = saved - h;
      const double down = reference_loss(spec, vae.layout(), p, x, eps, B, beta);
      p[i] = saved;
      const double fd = (up - down) / (2 * h);
      max_err = std::max(max_err, std::fabs(fd - grads[i]));
      max_grad = std::max(max_grad, std::fabs(fd));
    }
    EXPECT_GT(max_grad, 0.0) << t.name << " has no gradient at all";
    EXPECT_LT(max_err, 1e-4 * std::max(1.0, max_grad)) << t.name;
  }
}

INSTANTIATE_TEST_SUITE_P(
    ActivationsAndLikelihoods, FiniteDifferences,
    ::testing::Values(FdCase{Activation::Relu, Likelihood::Bernoulli},
                      FdCase{Activation::Tanh, Likelihood::Bernoulli},
                      FdCase{Activation::Relu, Likelihood::Gaussian},
                      FdCase{Activation::Tanh, Likelihood::Gaussian},
                      FdCase{Activation::Tanh, Likelihood::GaussianLearned},
                      FdCase{Activation::Relu, Likelihood::Bernoulli, ModelType::Conv},
                      FdCase{Activation::Tanh, Likelihood::Bernoulli, ModelType::Conv},
                      FdCase{Activation::Tanh, Likelihood::Gaussian, ModelType::Conv},
                      FdCase{Activation::Tanh, Likelihood::GaussianLearned, ModelType::Conv}));

// The conv layers run over groups of samples when col would be larger than the backend asks
// (Backend::conv_col_floats): groups of 2, 2 and 1 samples give what the whole batch gives.
TEST(ConvGroups, SameLossAndGradientsAsTheWholeBatch) {
  const ModelSpec spec =
      fd_spec(FdCase{Activation::Tanh, Likelihood::GaussianLearned, ModelType::Conv});
  const int B = 5;
  // 2 samples of the largest col (the first conv: [2 3 3, 4 x 3] per sample)
  auto grouped = make_cpu_backend(2 * 18 * 12);
  auto whole = make_cpu_backend(0);
  Vae a(*grouped, spec, B, 42), b(*whole, spec, B, 42);
  const auto [x, eps] = random_batch(spec, B, 98);
  a.forward_backward(x.data(), eps.data(), B, 1.0f, 1.0f / B);
  b.forward_backward(x.data(), eps.data(), B, 1.0f, 1.0f / B);
  for (int s = 0; s < B; ++s) {
    EXPECT_NEAR(a.recon_per_sample()[s], b.recon_per_sample()[s],
                1e-6 * std::fabs(b.recon_per_sample()[s]));
    EXPECT_EQ(a.kl_per_sample()[s], b.kl_per_sample()[s]);
  }
  const std::vector<float> ga = download(*grouped, a.grads(), a.num_params());
  const std::vector<float> gb = download(*whole, b.grads(), b.num_params());
  for (const TensorView& t : a.layout().tensors()) {
    double err = 0, scale = 0;
    for (size_t i = t.offset; i < t.offset + t.size(); ++i) {
      err = std::max(err, std::fabs(static_cast<double>(ga[i]) - gb[i]));
      scale = std::max(scale, std::fabs(static_cast<double>(gb[i])));
    }
    EXPECT_GT(scale, 0.0) << t.name;
    EXPECT_LE(err, 1e-5 * scale) << t.name;
  }
}

// grads_ready (the bucketed all-reduce's signal): after each layer of the backward pass it names
// an offset from which the gradients already hold their final values. A copy of that range taken
// in the callback must equal the gradients at the end; the offsets fall, every layer reports, and
// the last call covers the whole buffer.
TEST(GradsReady, EveryReportedRangeIsFinal) {
  for (const ModelType type : {ModelType::Mlp, ModelType::Conv}) {
    const ModelSpec spec = fd_spec(FdCase{Activation::Relu, Likelihood::Bernoulli, type});
    const int B = 3;
    auto be = make_cpu_backend();
    Vae vae(*be, spec, B, 7);
    const auto [x, eps] = random_batch(spec, B, 5);
    const size_t P = vae.num_params();
    // Poison the buffer first: a range reported before it was written shows up as a mismatch.
    std::vector<float> poison(P, 1234.5f);
    be->upload(vae.grads(), poison.data(), P);
    std::vector<std::pair<size_t, std::vector<float>>> seen;
    vae.forward_backward(x.data(), eps.data(), B, 1.0f, 1.0f / B, {}, [&](size_t from) {
      ASSERT_LE(from, P);
      std::vector<float> copy(P - from);
      be->download(copy.data(), vae.grads() + from, P - from);
      seen.emplace_back(from, std::move(copy));
    });
    const std::vector<float> grads = download(*be, vae.grads(), P);
    const size_t layers =
        vae.layout().layers().size() + vae.layout().encoder_convs().size() +
        vae.layout().decoder_convs().size();
    ASSERT_EQ(seen.size(), layers) << "one report per layer";
    EXPECT_EQ(seen.back().first, 0u);
    for (size_t k = 0; k < seen.size(); ++k) {
      if (k > 0) {
        EXPECT_LT(seen[k].first, seen[k - 1].first) << "report " << k;
      }
      const auto& [from, copy] = seen[k];
      for (size_t i = from; i < P; ++i)
        ASSERT_EQ(copy[i - from], grads[i]) << "report " << k << " (from " << from << "), index " << i;
    }
  }
}

TEST(Init, UniformInPlusMinusOneOverSqrtFanIn) {
  ModelSpec spec;
  spec.input_dim = 784;
  spec.encoder = {400};
  spec.latent = 20;
  spec.decoder = {400};
  const ParameterLayout layout(spec);
  EXPECT_EQ(layout.total_size(), 784u * 400 + 400 + 400 * 40 + 40 + 20 * 400 + 400 + 400 * 784 + 784);
  const std::vector<float> v = initial_parameters(layout, 1);
  for (const TensorView& t : layout.tensors()) {
    const int fan_in = t.is_bias ? layout.find(t.name.substr(0, t.name.size() - 4) + "weight")->cols
                                 : t.cols;
    const double bound = 1 / std::sqrt(static_cast<double>(fan_in));
    double lo = 1e9, hi = -1e9, sum_sq = 0;
    for (size_t i = t.offset; i < t.offset + t.size(); ++i) {
      lo = std::min(lo, static_cast<double>(v[i]));
      hi = std::max(hi, static_cast<double>(v[i]));
      sum_sq += static_cast<double>(v[i]) * v[i];
    }
    EXPECT_GE(lo, -bound) << t.name;
    EXPECT_LE(hi, bound) << t.name;
    if (t.size() >= 1000) {  // variance of U(-a, a) is a^2 / 3
      EXPECT_NEAR(sum_sq / static_cast<double>(t.size()), bound * bound / 3, 0.05 * bound * bound / 3) << t.name;
      EXPECT_LT(lo, -0.95 * bound) << t.name;
      EXPECT_GT(hi, 0.95 * bound) << t.name;
    }
  }
  EXPECT_EQ(v, initial_parameters(layout, 1));
  EXPECT_NE(v, initial_parameters(layout, 2));
}

// The peer's conv VAE: names, shapes and init bounds as PyTorch's modules have them (Conv2d
// weight [out, in, k, k], ConvTranspose2d [in, out, k, k], fan_in = weight.size(1) k^2).
TEST(Init, ConvLayoutAsPyTorch) {
  ModelSpec spec;
  spec.type = ModelType::Conv;
  spec.channels = 1, spec.height = 28, spec.width = 28;
  spec.input_dim = 784;
  spec.conv = ConvSpec{{32, 64}, 4, 2, 1};
  spec.encoder = {256};
  spec.latent = 20;
  spec.decoder = {256};
  const ParameterLayout layout(spec);
  struct Expected {
    const char* name;
    std::vector<int64_t> shape;
    int fan_in;
  };
  const std::vector<Expected> expected = {{"encoder.conv.0.weight", {32, 1, 4, 4}, 16},
                                          {"encoder.conv.0.bias", {32}, 16},
                                          {"encoder.conv.1.weight", {64, 32, 4, 4}, 512},
                                          {"encoder.conv.1.bias", {64}, 512},
                                          {"encoder.0.weight", {256, 3136}, 3136},
                                          {"encoder.0.bias", {256}, 3136},
                                          {"encoder.head.weight", {40, 256}, 256},
                                          {"encoder.head.bias", {40}, 256},
                                          {"decoder.0.weight", {256, 20}, 20},
                                          {"decoder.0.bias", {256}, 20},
                                          {"decoder.1.weight", {3136, 256}, 256},
                                          {"decoder.1.bias", {3136}, 256},
                                          {"decoder.deconv.0.weight", {64, 32, 4, 4}, 512},
                                          {"decoder.deconv.0.bias", {32}, 512},
                                          {"decoder.out.weight", {32, 1, 4, 4}, 16},
                                          {"decoder.out.bias", {1}, 16}};
  ASSERT_EQ(layout.tensors().size(), expected.size());
  const std::vector<float> v = initial_parameters(layout, 3);
  for (size_t i = 0; i < expected.size(); ++i) {
    const TensorView& t = layout.tensors()[i];
    EXPECT_EQ(t.name, expected[i].name);
    EXPECT_EQ(t.shape(), expected[i].shape) << t.name;
    const double bound = 1 / std::sqrt(static_cast<double>(expected[i].fan_in));
    double lo = 1e9, hi = -1e9;
    for (size_t k = t.offset; k < t.offset + t.size(); ++k) {
      lo = std::min(lo, static_cast<double>(v[k]));
      hi = std::max(hi, static_cast<double>(v[k]));
    }
    EXPECT_GE(lo, -bound) << t.name;
    EXPECT_LE(hi, bound) << t.name;
    if (t.size() >= 512) {  // and fills the range
      EXPECT_LT(lo, -0.9 * bound) << t.name;
      EXPECT_GT(hi, 0.9 * bound) << t.name;
    }
  }
  // The decoder's ConvTranspose2d layers restore 7x7 -> 14x14 -> 28x28 exactly.
  ASSERT_EQ(layout.decoder_convs().size(), 2u);
  EXPECT_EQ(layout.decoder_convs()[0].shape.height, 14);
  EXPECT_EQ(layout.decoder_convs()[1].shape.height, 28);
}

TEST(Init, ConvSizesThatCannotBeBuilt) {
  ModelSpec spec;
  spec.type = ModelType::Conv;
  spec.channels = 1, spec.height = 5, spec.width = 5;
  spec.input_dim = 25;
  spec.conv = ConvSpec{{4, 4, 4}, 3, 2, 0};  // 5x5 -> 2x2, then a 3x3 kernel on 2x2
  spec.latent = 2;
  EXPECT_EQ(conv_geometry_error(spec),
            "encoder.conv.1: kernel 3 is larger than the padded input 2x2 (input 2x2, padding 0)");
  spec.conv.padding = 1;  // 5x5 -> 3x3 -> 2x2 -> 1x1
  EXPECT_EQ(conv_geometry_error(spec), "");
  EXPECT_EQ(ParameterLayout(spec).encoder_convs().back().shape.out_h, 1);
}

// ---- PyTorch golden cases ---------------------------------------------------------------------

struct GoldenCase {
  const char* file;
  const char* name;
};

class Golden : public ::testing::TestWithParam<GoldenCase> {};


TEST_P(Golden, LossGradientsAndOptimizerSteps) {
  const std::string g = std::string("/").append(GetParam().name).append("/");
  const h5::File f = h5::File::open_read(std::string(ELBO_TEST_DATA_DIR) + "/" + GetParam().file);
  const ModelSpec spec = golden_spec(f, g);
  const float beta = static_cast<float>(f.read_double_attribute(g, "beta"));
  const h5::FloatArray x = f.read_floats(g + "x");
  const h5::FloatArray eps = f.read_floats(g + "eps");
  const int B = static_cast<int>(x.shape[0]);
  const size_t eps_step = static_cast<size_t>(B) * spec.latent;

  auto be = make_cpu_backend();
  Vae vae(*be, spec, B, 0);
  const std::vector<float> p = golden_params(f, g, vae.layout());
  be->upload(vae.params(), p.data(), p.size());

  // Step-0 loss terms and every gradient of the mean loss.
  vae.forward_backward(x.data.data(), eps.data.data(), B, beta, 1.0f / static_cast<float>(B));
  const LossSums s = vae.loss_sums(B);
  EXPECT_NEAR(s.recon / B, f.read_double_attribute(g, "recon0"), 1e-5 * std::fabs(s.recon / B));
  EXPECT_NEAR(s.kl / B, f.read_double_attribute(g, "kl0"), 1e-5 * std::max(1.0, std::fabs(s.kl / B)));
  if (f.exists(g + "recon0_per_sample")) {
    const h5::FloatArray recon = f.read_floats(g + "recon0_per_sample");
    for (int b = 0; b < B; ++b)
      EXPECT_NEAR(vae.recon_per_sample()[b], recon.data[b], 1e-5 * std::fabs(recon.data[b]))
          << "sample " << b;
  }
  const std::vector<float> grads = download(*be, vae.grads(), vae.num_params());
  for (const TensorView& t : vae.layout().tensors()) {
    const h5::FloatArray ref = f.read_floats(g + "grads/" + t.name);
    double max_err = 0, max_ref = 0;
    for (size_t i = 0; i < t.size(); ++i) {
      max_err = std::max(max_err, std::fabs(static_cast<double>(grads[t.offset + i]) - ref.data[i]));
      max_ref = std::max(max_ref, std::fabs(static_cast<double>(ref.data[i])));
    }
    EXPECT_LE(max_err, 1e-5 * max_ref + 1e-7) << t.name;
  }

  // Ten optimizer steps, each with its own noise, as the reference ran them.
  AdamConfig cfg;
  cfg.lr = static_cast<float>(f.read_double_attribute(g, "lr"));
  const std::vector<double> betas = f.read_double_array_attribute(g, "betas");
  cfg.beta1 = static_cast<float>(betas[0]);
  cfg.beta2 = static_cast<float>(betas[1]);
  cfg.eps = static_cast<float>(f.read_double_attribute(g, "adam_eps"));
  cfg.weight_decay = static_cast<float>(f.read_double_attribute(g, "weight_decay"));
  cfg.decoupled_weight_decay = f.read_string_attribute(g, "optimizer") == "adamw";
  const double clip = f.read_double_attribute(g, "grad_clip");
  Adam adam(*be, vae.num_params(), cfg);
  if (f.has_attribute(g, "steps") && f.read_int_attribute(g, "steps") == 0)
    return;  // initial parameters only
  const h5::FloatArray losses = f.read_floats(g + "losses");
  ASSERT_EQ(losses.data.size(), 10u);
  for (size_t step = 0; step < losses.data.size(); ++step) {
    vae.forward_backward(x.data.data(), eps.data.data() + step * eps_step, B, beta, 1.0f / static_cast<float>(B));
    const LossSums ls = vae.loss_sums(B);
    const double loss = (ls.recon + beta * ls.kl) / B;
    EXPECT_NEAR(loss, losses.data[step], 1e-5 * std::fabs(losses.data[step])) << "step " << step;
    if (clip > 0) clip_grad_norm(*be, vae.grads(), vae.num_params(), clip);
    float nonfinite = 0.0f;
    adam.step(vae.params(), vae.grads(), &nonfinite);
    ASSERT_EQ(nonfinite, 0.0f) << "step " << step;
  }
  const std::vector<float> after = download(*be, vae.params(), vae.num_params());
  for (const TensorView& t : vae.layout().tensors()) {
    const h5::FloatArray ref = f.read_floats(g + "after/" + t.name);
    double max_err = 0;
    for (size_t i = 0; i < t.size(); ++i)
      max_err = std::max(max_err, std::fabs(static_cast<double>(after[t.offset + i]) - ref.data[i]));
    EXPECT_LE(max_err, 1e-4) << t.name;
  }
}

INSTANTIATE_TEST_SUITE_P(
    PyTorchFloat64, Golden,
    ::testing::Values(GoldenCase{"vae_golden.h5", "mlp_relu_bernoulli"},
                      GoldenCase{"vae_golden.h5", "tiny_tanh_gaussian"},
                      GoldenCase{"vae_golden_v2.h5", "conv_relu_bernoulli"},
                      GoldenCase{"vae_golden_v2.h5", "conv_tanh_gaussian_learned_odd"},
                      GoldenCase{"vae_golden_v2.h5", "mlp_tanh_gaussian_learned"},
                      GoldenCase{"vae_golden_v2.h5", "mlp_relu_bernoulli_iw"},
                      GoldenCase{"vae_golden_v2.h5", "conv_relu_bernoulli_iw"}),
    [](const ::testing::TestParamInfo<GoldenCase>& c) { return std::string(c.param.name); });

}  // namespace
}  // namespace elbo
