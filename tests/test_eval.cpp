// The importance-weighted estimate of log p(x) against independent truth: the PyTorch float64
// golden case (mlp_relu_bernoulli_iw, with its noise), a linear-Gaussian model whose log p(x) and
// ELBO have closed forms, and the log-mean-exp against direct summation.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "core/iwae.h"
#include "core/model.h"
#include "io/files.h"
#include "io/hdf5.h"
#include "io/latents.h"
#include "tests/golden.h"

namespace elbo {
namespace {

constexpr double kLog2Pi = 1.8378770664093454836;

TEST(LogMeanExp, MatchesDirectSumAndNeverOverflows) {
  const std::vector<double> w = {-3.0, 0.5, 2.0, -1.25, 0.0};
  LogMeanExp a;
  double direct = 0;
  for (double v : w) {
    a.add(v);
    direct += std::exp(v);
  }
  EXPECT_NEAR(a.value(), std::log(direct / 5), 1e-14);
  EXPECT_EQ(a.count(), 5);
  // Weights of a 784-pixel image are around -500: exp underflows, the shifted sum does not.
  LogMeanExp b;
  for (double v : w) b.add(v - 1000.0);
  EXPECT_NEAR(b.value(), std::log(direct / 5) - 1000.0, 1e-11);
  LogMeanExp c;
  for (double v : {-1e6, 1e6}) c.add(v);  // increasing, so the maximum is rescaled once
  EXPECT_NEAR(c.value(), 1e6 - std::log(2.0), 1e-9);
  LogMeanExp empty;
  EXPECT_EQ(empty.value(), -std::numeric_limits<double>::infinity());
}

TEST(IwLogWeight, IsLogPriorMinusLogPosteriorMinusRecon) {
  const float mu[2] = {0.3f, -1.1f}, logvar[2] = {-0.7f, 0.4f}, eps[2] = {1.5f, -0.25f};
  double expect = -7.5;  // -recon
  for (int j = 0; j < 2; ++j) {
    const double sd = std::exp(0.5 * logvar[j]), z = mu[j] + sd * eps[j];
    const double log_prior = -0.5 * kLog2Pi - 0.5 * z * z;
    const double log_q = -0.5 * kLog2Pi - std::log(sd) - 0.5 * std::pow((z - mu[j]) / sd, 2);
    expect += log_prior - log_q;
  }
  EXPECT_NEAR(iw_log_weight(7.5, mu, logvar, eps, 2), expect, 1e-12);
}

TEST(ImportanceWeighted, PyTorchGoldenCaseWithItsNoise) {
  const std::string g = "/mlp_relu_bernoulli_iw/";
  const h5::File f = h5::File::open_read(std::string(ELBO_TEST_DATA_DIR) + "/vae_golden_v2.h5");
  const ModelSpec spec = golden_spec(f, g);
  ASSERT_EQ(spec.activation, Activation::Relu);
  ASSERT_EQ(spec.likelihood, Likelihood::Bernoulli);
  const h5::FloatArray x = f.read_floats(g + "x");
  const h5::FloatArray iw_eps = f.read_floats(g + "iw_eps");  // [K, B, L]
  const h5::FloatArray eps = f.read_floats(g + "eps");        // [1, B, L]: the ELBO's noise
  const h5::FloatArray ref = f.read_floats(g + "iw_log_px");
  const int B = static_cast<int>(x.shape[0]), K = static_cast<int>(iw_eps.shape[0]);
  ASSERT_EQ(K, 64);

  auto be = make_cpu_backend();
  Vae vae(*be, spec, B, 0);
  const std::vector<float> p = golden_params(f, g, vae.layout());
  be->upload(vae.params(), p.data(), p.size());
  DeviceArray xd(*be, x.data.size()), eps_k(*be, static_cast<size_t>(B) * spec.latent);
  be->upload(xd.data(), x.data.data(), x.data.size());
  std::vector<double> log_px(static_cast<size_t>(B));
  importance_weighted_log_px(vae, *be, xd.data(), B, K, [&](int k) {
    be->upload(eps_k.data(), iw_eps.data.data() + static_cast<size_t>(k) * eps_k.size(), eps_k.size());
    return static_cast<const float*>(eps_k.data());
  }, log_px.data());
  double mean_iw = 0, mean_ref = 0;
  for (int b = 0; b < B; ++b) {
    // float32 sums over 784 pixels of terms near 0.7: about 1e-5 relative.
    EXPECT_NEAR(log_px[static_cast<size_t>(b)], ref.data[static_cast<size_t>(b)],
                2e-5 * std::fabs(ref.data[static_cast<size_t>(b)])) << "sample " << b;
    mean_iw += log_px[static_cast<size_t>(b)] / B;
    mean_ref += static_cast<double>(ref.data[static_cast<size_t>(b)]) / B;
  }
  EXPECT_NEAR(mean_iw, mean_ref, 1e-5 * std::fabs(mean_ref));
  // The bound is tighter than the ELBO, on average over samples.
  be->upload(eps_k.data(), eps.data.data(), eps_k.size());
  vae.forward(xd.data(), eps_k.data(), B);
  const LossSums s = vae.loss_sums(B);
  EXPECT_GT(mean_iw, -(s.recon + s.kl) / B);
}

// x | z ~ N(W z + b, I), z ~ N(0, I): the decoder is one linear layer and the unit-variance
// Gaussian likelihood, so x ~ N(b, I + W W^T). W's columns are orthogonal (W^T W = diag(s)), so
// the true posterior is diagonal: N(S W^T (x - b), S) with S = (I + W^T W)^-1, which a linear
// encoder with constant log-variance represents exactly.
struct LinearGaussian {
  static constexpr int D = 4, L = 2, N = 256;  // many samples: small Monte-Carlo error
  const float W[D][L] = {{1, 2}, {1, -2}, {0.5f, 1}, {0.5f, -1}};
  const float b[D] = {0.25f, -0.5f, 1.0f, 0.0f};
  const double s[L] = {2.5, 10.0};  // column norms squared
  float x[N][D];
  ModelSpec spec;
  LinearGaussian() {
    spec.input_dim = D;
    spec.latent = L;
    spec.activation = Activation::Tanh;  // no hidden layers: unused
    spec.likelihood = Likelihood::Gaussian;
    for (int i = 0; i < N; ++i)
      for (int d = 0; d < D; ++d) x[i][d] = static_cast<float>(std::sin(1.7 * i + 0.9 * d) * 2.0);
  }
  double log_px(int i) const {  // log N(x; b, I + W W^T), by Woodbury and the determinant lemma
    double r[D], wr[L] = {0, 0}, quad = 0;
    for (int d = 0; d < D; ++d) r[d] = x[i][d] - b[d];
    for (int d = 0; d < D; ++d) {
      quad += r[d] * r[d];
      for (int j = 0; j < L; ++j) wr[j] += W[d][j] * r[d];
    }
    double logdet = 0;
    for (int j = 0; j < L; ++j) {
      quad -= wr[j] * wr[j] / (1 + s[j]);
      logdet += std::log1p(s[j]);
    }
    return -0.5 * (D * kLog2Pi + logdet + quad);
  }
  // The ELBO of q = N(m, diag(v)): E_q log p(x|z) - KL(q || N(0, I)), in closed form.
  double elbo(int i, const double* m, const double* v) const {
    double e = -0.5 * D * kLog2Pi;
    for (int d = 0; d < D; ++d) {
      double mean = b[d];
      for (int j = 0; j < L; ++j) mean += W[d][j] * m[j];
      e -= 0.5 * (x[i][d] - mean) * (x[i][d] - mean);
    }
    for (int j = 0; j < L; ++j) e -= 0.5 * s[j] * v[j] + 0.5 * (v[j] + m[j] * m[j] - 1 - std::log(v[j]));
    return e;
  }
  // Parameters: the decoder as above; the encoder the true posterior with its means scaled by
  // mu_scale and its log-variances shifted by logvar_shift (1 and 0: exact).
  std::vector<float> params(const ParameterLayout& layout, double mu_scale, double logvar_shift,
                            double* m_out = nullptr, double* v_out = nullptr, int row = 0) const {
    std::vector<float> p(layout.total_size());
    const TensorView& ew = *layout.find("encoder.head.weight");
    const TensorView& eb = *layout.find("encoder.head.bias");
    const TensorView& dw = *layout.find("decoder.out.weight");
    const TensorView& db = *layout.find("decoder.out.bias");
    for (int d = 0; d < D; ++d) {
      for (int j = 0; j < L; ++j) p[dw.offset + static_cast<size_t>(d) * L + j] = W[d][j];
      p[db.offset + d] = b[d];
    }
    for (int j = 0; j < L; ++j) {
      const double S = 1 / (1 + s[j]);
      double bias = 0;
      for (int d = 0; d < D; ++d) {
        p[ew.offset + static_cast<size_t>(j) * D + d] = static_cast<float>(mu_scale * S * W[d][j]);
        bias -= mu_scale * S * W[d][j] * b[d];
      }
      p[eb.offset + j] = static_cast<float>(bias);
      p[eb.offset + L + j] = static_cast<float>(std::log(S) + logvar_shift);
    }
    if (m_out) {  // q's parameters for sample `row`, as the float model has them
      for (int j = 0; j < L; ++j) {
        double m = p[eb.offset + j];
        for (int d = 0; d < D; ++d) m += static_cast<double>(p[ew.offset + static_cast<size_t>(j) * D + d]) * x[row][d];
        m_out[j] = m;
        v_out[j] = std::exp(static_cast<double>(p[eb.offset + L + j]));
      }
    }
    return p;
  }
};

// Estimates for the N samples with K importance samples of Philox noise, as `elbo eval` draws it.
std::vector<double> estimate(const LinearGaussian& m, const std::vector<float>& p, int K) {
  auto be = make_cpu_backend();
  Vae vae(*be, m.spec, LinearGaussian::N, 0);
  be->upload(vae.params(), p.data(), p.size());
  DeviceArray x(*be, LinearGaussian::N * LinearGaussian::D), eps(*be, LinearGaussian::N * LinearGaussian::L);
  be->upload(x.data(), &m.x[0][0], x.size());
  std::vector<uint32_t> ids(LinearGaussian::N);
  for (uint32_t i = 0; i < ids.size(); ++i) ids[i] = i;
  std::vector<double> out(LinearGaussian::N);
  importance_weighted_log_px(vae, *be, x.data(), LinearGaussian::N, K, [&](int k) {
    be->fill_noise(eps.data(), ids, LinearGaussian::L, rng_key(7), static_cast<uint32_t>(k),
                   RngStream::ImportanceNoise);
    return static_cast<const float*>(eps.data());
  }, out.data());
  return out;
}

// resample() skips the encoder: the per-sample figures must be the bits of a full forward() with
// the same noise, for an MLP and for a conv model (whose encoder has convolutions to skip).
TEST(ImportanceWeighted, ResampleGivesTheFiguresOfAFullForward) {
  for (const bool conv : {false, true}) {
    ModelSpec spec;
    if (conv) {
      spec.type = ModelType::Conv;
      spec.channels = 1, spec.height = 7, spec.width = 6;
      spec.conv = ConvSpec{{3}, 3, 2, 1};
    }
    spec.input_dim = spec.channels * spec.height * spec.width;
    spec.encoder = {9};
    spec.latent = 3;
    spec.decoder = {8};
    spec.activation = Activation::Tanh;
    spec.likelihood = conv ? Likelihood::Bernoulli : Likelihood::GaussianLearned;
    const int B = 5, D = spec.input_dim, L = spec.latent;
    auto be = make_cpu_backend();
    Vae vae(*be, spec, B, 11);
    std::vector<float> x(static_cast<size_t>(B * D)), eps1(static_cast<size_t>(B * L)),
        eps2(eps1.size());
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i * 37 % 11) / 10.0f;
    for (size_t i = 0; i < eps1.size(); ++i) {
      eps1[i] = static_cast<float>(std::sin(1.0 + static_cast<double>(i)));
      eps2[i] = static_cast<float>(std::cos(2.0 * static_cast<double>(i)));
    }
    vae.forward(x.data(), eps2.data(), B);
    const std::vector<float> recon(vae.recon_per_sample(), vae.recon_per_sample() + B),
        kl(vae.kl_per_sample(), vae.kl_per_sample() + B);
    vae.forward(x.data(), eps1.data(), B);
    ASSERT_NE(vae.recon_per_sample()[0], recon[0]) << "the two noises must differ in effect";
    vae.resample(x.data(), eps2.data(), B);
    for (int b = 0; b < B; ++b) {
      EXPECT_EQ(vae.recon_per_sample()[b], recon[static_cast<size_t>(b)]) << conv << " " << b;
      EXPECT_EQ(vae.kl_per_sample()[b], kl[static_cast<size_t>(b)]) << conv << " " << b;
    }
  }
}

TEST(ImportanceWeighted, LinearGaussianWithTheTruePosteriorIsExactForAnyK) {
  const LinearGaussian m;
  const ParameterLayout layout(m.spec);
  const std::vector<float> p = m.params(layout, 1.0, 0.0);
  for (int K : {1, 7}) {
    const std::vector<double> est = estimate(m, p, K);
    for (int i = 0; i < LinearGaussian::N; ++i)
      EXPECT_NEAR(est[static_cast<size_t>(i)], m.log_px(i), 2e-5 * std::fabs(m.log_px(i)))
          << "K " << K << " sample " << i;
  }
}

TEST(ImportanceWeighted, LinearGaussianConvergesToLogPxAsKGrows) {
  const LinearGaussian m;
  const ParameterLayout layout(m.spec);
  // A poor encoder: means halved, variances e times too large.
  const std::vector<float> p = m.params(layout, 0.5, 1.0);
  double mean_elbo = 0, mean_log_px = 0;
  std::vector<double> elbo(LinearGaussian::N);
  for (int i = 0; i < LinearGaussian::N; ++i) {
    double q_m[LinearGaussian::L], q_v[LinearGaussian::L];
    m.params(layout, 0.5, 1.0, q_m, q_v, i);
    elbo[static_cast<size_t>(i)] = m.elbo(i, q_m, q_v);
    mean_elbo += elbo[static_cast<size_t>(i)] / LinearGaussian::N;
    mean_log_px += m.log_px(i) / LinearGaussian::N;
  }
  ASSERT_GT(mean_log_px - mean_elbo, 0.5);  // a loose bound, so that the test can see it close
  std::vector<double> gaps;
  for (int K : {1, 10, 100, 5000}) {
    const std::vector<double> est = estimate(m, p, K);
    double mean = 0;
    for (double e : est) mean += e / LinearGaussian::N;
    gaps.push_back(mean_log_px - mean);
    if (K == 1) {  // one log weight per sample: its mean is the ELBO, within 4 standard errors
      double sq = 0;
      for (int i = 0; i < LinearGaussian::N; ++i)
        sq += std::pow(est[static_cast<size_t>(i)] - elbo[static_cast<size_t>(i)], 2);
      EXPECT_NEAR(mean, mean_elbo, 4 * std::sqrt(sq / LinearGaussian::N / LinearGaussian::N));
    }
    // A lower bound in expectation at least as tight as the ELBO, whose expectation at K = 1 is
    // the ELBO itself.
    if (K > 1) {
      EXPECT_GT(mean, mean_elbo) << "K " << K;
    }
  }
  const double elbo_gap = mean_log_px - mean_elbo;
  EXPECT_LT(gaps[1], 0.5 * elbo_gap);
  EXPECT_LT(std::fabs(gaps[2]), 0.05);
  EXPECT_LT(std::fabs(gaps[3]), 0.01);
  EXPECT_LT(std::fabs(gaps[3]), std::fabs(gaps[1]));
}

// The latents file: rows land where they belong whatever order they come in (ranks' chunks arrive
// round by round), and a writer that never commits leaves nothing behind.
TEST(LatentsWriter, RowsInAnyOrderAndNoFileWithoutCommit) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("elbo_test_latents_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string path = (dir / "latents.h5").string();
  constexpr int N = 10, L = 3;
  std::vector<float> mu(N * L), logvar(N * L);
  std::vector<double> neg_elbo(N), iw(N);
  std::vector<int64_t> y(N);
  for (int i = 0; i < N; ++i) {
    for (int j = 0; j < L; ++j) {
      mu[static_cast<size_t>(i * L + j)] = static_cast<float>(i) + 0.1f * static_cast<float>(j);
      logvar[static_cast<size_t>(i * L + j)] = -static_cast<float>(i);
    }
    neg_elbo[static_cast<size_t>(i)] = 100.0 + i;
    iw[static_cast<size_t>(i)] = 90.0 + i;
    y[static_cast<size_t>(i)] = i % 4;
  }
  {
    LatentsWriter w(path, LatentsShape{N, L, true, true});
    w.write_rows(7, 3, &mu[21], &logvar[21], &neg_elbo[7], &iw[7], &y[7]);  // the last chunk first
    w.write_rows(0, 7, &mu[0], &logvar[0], &neg_elbo[0], &iw[0], &y[0]);
    EXPECT_FALSE(fs::exists(path));  // only the temporary until commit
  }
  EXPECT_TRUE(fs::is_empty(dir)) << "an uncommitted writer left a file";
  {
    LatentsWriter w(path, LatentsShape{N, L, true, true});
    w.write_rows(5, 5, &mu[15], &logvar[15], &neg_elbo[5], &iw[5], &y[5]);
    w.write_rows(0, 5, &mu[0], &logvar[0], &neg_elbo[0], &iw[0], &y[0]);
    w.attribute("data", std::string("somewhere"));
    w.attribute("samples", int64_t{N});
    w.commit();
  }
  const h5::File f = h5::File::open_read(path);
  EXPECT_EQ(f.read_floats("/mu").data, mu);
  EXPECT_EQ(f.read_floats("/mu").shape, (std::vector<int64_t>{N, L}));
  EXPECT_EQ(f.read_floats("/logvar").data, logvar);
  const h5::FloatArray ne = f.read_floats("/neg_elbo"), iwr = f.read_floats("/iw_nll");
  const h5::FloatArray yr = f.read_floats("/y");
  for (int i = 0; i < N; ++i) {
    EXPECT_EQ(ne.data[static_cast<size_t>(i)], static_cast<float>(neg_elbo[static_cast<size_t>(i)]));
    EXPECT_EQ(iwr.data[static_cast<size_t>(i)], static_cast<float>(iw[static_cast<size_t>(i)]));
    EXPECT_EQ(yr.data[static_cast<size_t>(i)], static_cast<float>(y[static_cast<size_t>(i)]));
  }
  EXPECT_EQ(f.read_string_attribute("/", "data"), "somewhere");
  EXPECT_EQ(f.read_int_attribute("/", "samples"), N);
  size_t files = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++files;
  EXPECT_EQ(files, 1u);  // no temporary left
  fs::remove_all(dir);
}

}  // namespace
}  // namespace elbo
