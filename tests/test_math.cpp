// Section 2 of DESIGN.md, line by line: BCE from logits against the direct formula, the Gaussian
// term, and the KL term against its closed form's defining integral estimated by Monte Carlo.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <limits>
#include <cstring>
#include <vector>

#include "core/backend.h"
#include "core/elementwise.h"
#include "core/philox.h"

namespace elbo {
namespace {

double direct_bce(double l, double x) {
  const double p = 1.0 / (1.0 + std::exp(-l));
  return -(x * std::log(p) + (1.0 - x) * std::log1p(-p));
}

TEST(Bce, MatchesDirectFormulaAndItsDerivative) {
  for (double l = -15.0; l <= 15.0; l += 0.37) {
    for (double x : {0.0, 0.2, 0.5, 0.93, 1.0}) {
      const ValueGrad vg = bce_with_logits(static_cast<float>(l), static_cast<float>(x));
      const double ref = direct_bce(static_cast<float>(l), x);
      EXPECT_NEAR(vg.value, ref, 1e-5 * std::max(1.0, ref)) << "l=" << l << " x=" << x;
      const double h = 1e-3;  // the direct formula loses digits near p = 1; keep rounding small
      const double fd = (direct_bce(l + h, x) - direct_bce(l - h, x)) / (2 * h);
      EXPECT_NEAR(vg.grad, fd, 1e-5) << "l=" << l << " x=" << x;
    }
  }
}

// The loss loops' own exp and log1p against libm in double, over their whole input ranges.
TEST(FastMath, ExpNegAndLog1pWithinTwoUlpsOfExact) {
  double worst_exp = 0, worst_log = 0;
  for (float a = 0.0f; a < 87.0f; a += 0.0013f) {
    const double exact = std::exp(-static_cast<double>(a));
    worst_exp = std::max(worst_exp, std::fabs(exp_neg(a) - exact) / exact);
  }
  for (float e = 0.0f; e <= 1.0f; e += 1.7e-5f) {
    const double exact = std::log1p(static_cast<double>(e));
    // Relative where the value is large; absolute 6e-8 (rounding of 1 + e) near zero.
    worst_log = std::max(worst_log, std::fabs(log1p_unit(e) - exact) / std::max(exact, 0.5));
  }
  EXPECT_LT(worst_exp, 2.4e-7);
  EXPECT_LT(worst_log, 2.4e-7);
  EXPECT_EQ(exp_neg(0.0f), 1.0f);
  EXPECT_EQ(log1p_unit(0.0f), 0.0f);
}

TEST(Bce, FiniteAndExactAtExtremeLogits) {
  for (float l : {-100.0f, 100.0f, -1e4f, 1e4f}) {
    for (float x : {0.0f, 0.5f, 1.0f}) {
      const ValueGrad vg = bce_with_logits(l, x);
      ASSERT_TRUE(std::isfinite(vg.value) && std::isfinite(vg.grad)) << l << " " << x;
      // For |l| >> 1 the loss is max(l,0) - l x up to log1p(exp(-|l|)) < 4e-44.
      EXPECT_NEAR(vg.value, std::max(l, 0.0f) - l * x, 1e-30 + 1e-7 * std::fabs(l));
      EXPECT_NEAR(vg.grad, (l > 0 ? 1.0f : 0.0f) - x, 1e-30);
    }
  }
}

TEST(Gaussian, PerSampleTermKeepsTheConstant) {
  auto backend = make_cpu_backend();
  const int D = 5;
  std::vector<float> mean = {0.1f, -0.4f, 2.0f, 0.0f, 1.5f}, x = {0.3f, 0.2f, 1.0f, 0.0f, -1.0f};
  std::vector<float> grad(D), recon(1);
  backend->reconstruction_loss(mean.data(), x.data(), grad.data(), recon.data(), 1, D,
                               Likelihood::Gaussian, 0.5f);
  double ref = 0.5 * D * std::log(2 * M_PI);
  for (int j = 0; j < D; ++j) ref += 0.5 * (mean[j] - x[j]) * (mean[j] - x[j]);
  EXPECT_NEAR(recon[0], ref, 1e-5 * ref);
  for (int j = 0; j < D; ++j) EXPECT_FLOAT_EQ(grad[j], 0.5f * (mean[j] - x[j]));
}

TEST(Kl, ZeroAtThePriorAndNonNegative) {
  EXPECT_FLOAT_EQ(reparameterize(0.0f, 0.0f, 0.3f).kl, 0.0f);
  const RngKey key = rng_key(5);
  for (uint32_t i = 0; i < 2000; ++i) {
    const float mu = 3.0f * philox_normal(key, i, 0, RngStream::Init, 0);
    const float logvar = 2.0f * philox_normal(key, i, 0, RngStream::Init, 1);
    EXPECT_GE(reparameterize(mu, logvar, 0.0f).kl, 0.0f) << mu << " " << logvar;
  }
}

// KL(q || p) = E_q[log q(z) - log p(z)], estimated with samples z = mu + sigma eps.
TEST(Kl, MatchesMonteCarloEstimate) {
  const RngKey key = rng_key(11);
  const std::pair<float, float> cases[] = {{0.5f, -0.3f}, {-1.2f, 0.8f}, {2.0f, -2.0f}, {0.0f, 1.5f}};
  for (auto [mu, logvar] : cases) {
    const double sigma = std::exp(0.5 * logvar);
    const int n = 400000;
    double sum = 0, sum_sq = 0;
    for (int i = 0; i < n; ++i) {
      const double eps = philox_normal(key, static_cast<uint32_t>(i), 1, RngStream::Noise, 0);
      const double z = reparameterize(mu, logvar, static_cast<float>(eps)).z;
      const double log_q = -0.5 * eps * eps - std::log(sigma);  // constants cancel with log p
      const double log_p = -0.5 * z * z;
      sum += log_q - log_p;
      sum_sq += (log_q - log_p) * (log_q - log_p);
    }
    const double mean = sum / n, stderr_ = std::sqrt((sum_sq / n - mean * mean) / n);
    const double closed = reparameterize(mu, logvar, 0.0f).kl;
    EXPECT_NEAR(closed, mean, 5 * stderr_ + 1e-6) << "mu=" << mu << " logvar=" << logvar;
  }
}

TEST(Kl, ReparameterizationGradientMatchesFiniteDifferences) {
  // f(mu, logvar) = a z + w KL, whose derivatives are what the backward pass produces.
  const double a = 0.7, w = 1.3, eps = -0.45;
  auto f = [&](double mu, double lv) {
    const double s = std::exp(0.5 * lv);
    return a * (mu + s * eps) + w * -0.5 * (1 + lv - s * s - mu * mu);
  };
  for (auto [mu, lv] : {std::pair{0.3, -0.2}, {-1.1, 0.9}, {2.0, -1.5}}) {
    const LatentGrad g = reparameterize_backward(static_cast<float>(mu), static_cast<float>(lv),
                                                 static_cast<float>(eps), static_cast<float>(a),
                                                 static_cast<float>(w));
    const double h = 1e-6;
    EXPECT_NEAR(g.dmu, (f(mu + h, lv) - f(mu - h, lv)) / (2 * h), 1e-5);
    EXPECT_NEAR(g.dlogvar, (f(mu, lv + h) - f(mu, lv - h)) / (2 * h), 1e-5);
  }
}

TEST(Activation, DerivativeFromOutputMatchesFiniteDifferences) {
  for (Activation act : {Activation::Relu, Activation::Tanh}) {
    for (float pre : {-2.0f, -0.3f, 0.4f, 1.7f}) {
      const float y = activate(pre, act);
      const double h = 1e-3;
      const double fd = (activate(static_cast<float>(pre + h), act) -
                         activate(static_cast<float>(pre - h), act)) / (2 * h);
      EXPECT_NEAR(activation_grad_from_output(y, act), fd, 1e-3);
    }
  }
}

// bfloat16 rounding against its definition: the nearest of the bfloat16 values around x (found by
// stepping the bfloat16 bit pattern, compared in double), the even one on a tie, infinity past the
// largest finite value by at least half a step; NaN stays NaN, infinities stay infinite, and a
// bfloat16 value converts back exactly. Random bit patterns cover every exponent.
TEST(Bfloat16, RoundsToNearestEvenAndWidensExactly) {
  const auto nearest = [](float x) -> double {
    uint32_t u;
    std::memcpy(&u, &x, sizeof u);
    const uint32_t lo = u & 0xffff0000u;  // toward zero
    float flo;
    std::memcpy(&flo, &lo, sizeof flo);
    const double step = std::ldexp(1.0, std::ilogb(x == 0.0f ? 1.0f : x) - 7);  // one ulp (normal)
    const double a = flo, b = flo + std::copysign(step, static_cast<double>(x));
    const double da = std::fabs(x - a), db = std::fabs(b - x);
    if (da != db) return da < db ? a : b;
    return ((lo >> 16) & 1u) ? b : a;  // a tie: the even pattern
  };
  std::mt19937 gen(5);
  std::vector<float> xs{0.0f, -0.0f, 1.0f, -1.0f, 1.00390625f /* 1 + 2^-8: a tie, to 1 */,
                        1.01171875f /* 1 + 3 * 2^-8: a tie, to 1 + 2^-6 */, 3.14159265f,
                        1e-30f, -7.5e20f, 65504.0f};
  for (int i = 0; i < 200000; ++i) {
    const uint32_t u = static_cast<uint32_t>(gen());
    float x;
    std::memcpy(&x, &u, sizeof x);
    if (std::isfinite(x) && std::fpclassify(x) == FP_NORMAL && std::fabs(x) < 3e38f)
      xs.push_back(x);
  }
  for (float x : xs) {
    const float y = from_bfloat16_bits(bfloat16_bits(x));
    ASSERT_EQ(static_cast<double>(y), x == 0.0f ? 0.0 : nearest(x)) << x;
    ASSERT_EQ(std::signbit(y), std::signbit(x)) << x;
    ASSERT_EQ(bfloat16_bits(y), bfloat16_bits(x)) << x;  // bfloat16 values are fixed points
  }
  EXPECT_EQ(from_bfloat16_bits(bfloat16_bits(1.00390625f)), 1.0f);
  EXPECT_EQ(from_bfloat16_bits(bfloat16_bits(1.01171875f)), 1.015625f);
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(from_bfloat16_bits(bfloat16_bits(inf)), inf);
  EXPECT_EQ(from_bfloat16_bits(bfloat16_bits(-inf)), -inf);
  EXPECT_EQ(from_bfloat16_bits(bfloat16_bits(std::numeric_limits<float>::max())), inf);
  EXPECT_TRUE(std::isnan(from_bfloat16_bits(bfloat16_bits(std::nanf("")))));
  EXPECT_TRUE(std::isnan(from_bfloat16_bits(bfloat16_bits(-std::nanf("0x1")))));
  // A sum is made in float and rounded once: 1 + 2^-9 rounds back to 1, 1 + 2^-7 is exact.
  EXPECT_EQ(from_bfloat16_bits(bfloat16_sum(bfloat16_bits(1.0f), bfloat16_bits(0.001953125f))),
            1.0f);
  EXPECT_EQ(from_bfloat16_bits(bfloat16_sum(bfloat16_bits(1.0f), bfloat16_bits(0.0078125f))),
            1.0078125f);
}

TEST(Backend, AccumulateLossesAddsBatchSums) {
  auto backend = make_cpu_backend();
  const std::vector<float> recon = {10.0f, 20.0f, 30.5f}, kl = {1.0f, 2.0f, 0.5f};
  std::vector<float> acc = {1.0f, 2.0f, 3.0f, 4.0f};
  backend->accumulate_losses(recon.data(), kl.data(), 3, 0.5f, acc.data());
  EXPECT_FLOAT_EQ(acc[0], 1.0f + 60.5f);
  EXPECT_FLOAT_EQ(acc[1], 2.0f + 3.5f);
  EXPECT_FLOAT_EQ(acc[2], 3.0f + 60.5f + 0.5f * 3.5f);
  EXPECT_FLOAT_EQ(acc[3], 4.0f + 3.0f);
}

}  // namespace
}  // namespace elbo
