// Adam and AdamW steps against values computed by hand from PyTorch's update rule, and clipping.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/optimizer.h"

namespace elbo {
namespace {

TEST(Adam, TwoStepsMatchHandComputation) {
  auto backend = make_cpu_backend();
  AdamConfig cfg;
  cfg.lr = 0.1f;
  cfg.eps = 0.1f;  // large, so the step is not just lr * sign(g)
  Adam adam(*backend, 2, cfg);
  float nonfinite = 0.0f;  // set by a step that sees a NaN or infinite gradient
  std::vector<float> p = {1.0f, -2.0f};
  std::vector<float> g = {0.5f, -0.25f};
  adam.step(p.data(), g.data(), &nonfinite);
  // m = 0.1 g, v = 0.001 g^2; m_hat = g, sqrt(v_hat) = |g|: p -= 0.1 g / (|g| + 0.1)
  EXPECT_NEAR(p[0], 1.0 - 0.1 * 0.5 / 0.6, 1e-6);
  EXPECT_NEAR(p[1], -2.0 + 0.1 * 0.25 / 0.35, 1e-6);
  // Second step with g' = (0.1, 0.3):
  std::vector<float> g2 = {0.1f, 0.3f};
  const double p0 = p[0], p1 = p[1];
  adam.step(p.data(), g2.data(), &nonfinite);
  auto expected = [](double p_prev, double ga, double gb) {
    const double m = 0.9 * (0.1 * ga) + 0.1 * gb;
    const double v = 0.999 * (0.001 * ga * ga) + 0.001 * gb * gb;
    const double bc1 = 1 - 0.9 * 0.9, bc2 = 1 - 0.999 * 0.999;
    return p_prev - (0.1 / bc1) * m / (std::sqrt(v) / std::sqrt(bc2) + 0.1);
  };
  EXPECT_NEAR(p[0], expected(p0, 0.5, 0.1), 1e-6);
  EXPECT_NEAR(p[1], expected(p1, -0.25, 0.3), 1e-6);
  EXPECT_EQ(adam.steps_taken(), 2);
}

TEST(Adam, L2WeightDecayAddsToTheGradient) {
  auto backend = make_cpu_backend();
  AdamConfig cfg;
  cfg.lr = 0.1f;
  cfg.eps = 0.1f;
  cfg.weight_decay = 0.5f;
  Adam adam(*backend, 1, cfg);
  float nonfinite = 0.0f;  // set by a step that sees a NaN or infinite gradient
  float p = 2.0f, g = 0.25f;
  adam.step(&p, &g, &nonfinite);
  const double g_eff = 0.25 + 0.5 * 2.0;  // 1.25
  EXPECT_NEAR(p, 2.0 - 0.1 * g_eff / (g_eff + 0.1), 1e-6);
}

TEST(AdamW, DecoupledDecayShrinksWeightsFirst) {
  auto backend = make_cpu_backend();
  AdamConfig cfg;
  cfg.lr = 0.1f;
  cfg.eps = 0.1f;
  cfg.weight_decay = 0.5f;
  cfg.decoupled_weight_decay = true;
  Adam adam(*backend, 1, cfg);
  float nonfinite = 0.0f;  // set by a step that sees a NaN or infinite gradient
  float p = 2.0f, g = 0.25f;
  adam.step(&p, &g, &nonfinite);
  EXPECT_NEAR(p, 2.0 * (1 - 0.1 * 0.5) - 0.1 * 0.25 / (0.25 + 0.1), 1e-6);
}

TEST(ClipGradNorm, ScalesOnlyWhenAboveTheLimit) {
  auto backend = make_cpu_backend();
  std::vector<float> g = {3.0f, 4.0f};
  EXPECT_NEAR(clip_grad_norm(*backend, g.data(), 2, 10.0), 5.0, 1e-12);
  EXPECT_FLOAT_EQ(g[0], 3.0f);
  EXPECT_NEAR(clip_grad_norm(*backend, g.data(), 2, 1.0), 5.0, 1e-12);
  EXPECT_NEAR(g[0], 3.0 / (5.0 + 1e-6), 1e-7);
  EXPECT_NEAR(g[1], 4.0 / (5.0 + 1e-6), 1e-7);
  EXPECT_NEAR(std::hypot(g[0], g[1]), 1.0, 1e-6);
}

// distributed.shared_memory's update: Adam from the sum of several ranks' gradients, in one pass.
// A second implementation is the sum written out (in the same order, so bit for bit) and then
// the plain step; lengths that end mid-block and a block or more apart, 2 and 3 sources, AdamW.
TEST(Adam, SummedStepEqualsTheStepOfTheSum) {
  auto backend = make_cpu_backend();
  for (size_t n : {1, 37, 2048, 2049, 6000})
    for (int k : {2, 3}) {
      std::vector<std::vector<float>> g(static_cast<size_t>(k), std::vector<float>(n));
      std::vector<float> p(n), total(n);
      for (size_t i = 0; i < n; ++i) {
        p[i] = std::sin(0.37f * static_cast<float>(i));
        for (int r = 0; r < k; ++r)
          // Unequal scales: at k = 3 the order of the additions shows.
          g[static_cast<size_t>(r)][i] = std::cos(0.11f * static_cast<float>(i * 3 + r)) *
                                         (r == 1 ? 1e-3f : 1.0f);
        total[i] = g[0][i] + g[1][i];
        if (k == 3) total[i] += g[2][i];
      }
      std::vector<const float*> sources;
      for (const auto& x : g) sources.push_back(x.data());
      AdamConfig cfg;
      cfg.weight_decay = 0.01f;
      cfg.decoupled_weight_decay = true;
      Adam summed(*backend, n, cfg), plain(*backend, n, cfg);
      std::vector<float> p_summed = p, p_plain = p;
      float flag = 0.0f;
      for (int step = 0; step < 3; ++step) {  // the moments carry over between steps
        summed.step_summed(p_summed.data(), sources.data(), k, &flag);
        plain.step(p_plain.data(), total.data(), &flag);
      }
      EXPECT_EQ(flag, 0.0f);
      EXPECT_EQ(summed.steps_taken(), 3);
      for (size_t i = 0; i < n; ++i) {
        ASSERT_EQ(p_summed[i], p_plain[i]) << "n " << n << ", k " << k << ", element " << i;
        ASSERT_EQ(summed.exp_avg()[i], plain.exp_avg()[i]) << i;
        ASSERT_EQ(summed.exp_avg_sq()[i], plain.exp_avg_sq()[i]) << i;
      }
      g[static_cast<size_t>(k - 1)][n - 1] = NAN;  // the last source's last element, last block
      summed.step_summed(p_summed.data(), sources.data(), k, &flag);
      EXPECT_EQ(flag, 1.0f) << "n " << n << ", k " << k;
    }
}

// sum_buffers adds in the sources' order, and its output may be any of them.
TEST(SumBuffers, AddsInOrderIntoAnyOfItsSources) {
  auto backend = make_cpu_backend();
  const size_t n = 5000;
  for (int out = 0; out < 3; ++out) {
    std::vector<std::vector<float>> x(3, std::vector<float>(n));
    std::vector<float> want(n);
    for (size_t i = 0; i < n; ++i) {
      // (1e8 + v) - 1e8 is 0 in float for |v| <= 3, while (1e8 - 1e8) + v is v; and a sum
      // written into a source before that source is added counts 1e8 twice.
      x[0][i] = 1e8f;
      x[1][i] = static_cast<float>(i % 7) - 3.0f;
      x[2][i] = -1e8f;
      want[i] = (x[0][i] + x[1][i]) + x[2][i];
    }
    const float* sources[3] = {x[0].data(), x[1].data(), x[2].data()};
    backend->sum_buffers(sources, 3, n, x[static_cast<size_t>(out)].data());
    for (size_t i = 0; i < n; ++i)
      ASSERT_EQ(x[static_cast<size_t>(out)][i], want[i]) << "into source " << out << ", at " << i;
  }
}

}  // namespace
}  // namespace elbo

namespace elbo {
namespace {

TEST(Adam, ReportsNonFiniteGradients) {
  auto backend = make_cpu_backend();
  Adam adam(*backend, 40, AdamConfig{});
  std::vector<float> p(40, 1.0f), g(40, 0.5f);
  float flag = 0.0f;
  adam.step(p.data(), g.data(), &flag);
  EXPECT_EQ(flag, 0.0f);
  for (float bad : {NAN, INFINITY, -INFINITY}) {
    g[37] = bad;  // past the first vector, so the vectorised part of the loop is covered
    adam.step(p.data(), g.data(), &flag);
    EXPECT_EQ(flag, 1.0f) << bad;
    g[37] = 0.5f;
    flag = 0.0f;
    adam.step(p.data(), g.data(), &flag);  // the flag is never cleared by the step itself
    EXPECT_EQ(flag, 0.0f) << "after " << bad;
  }
}

}  // namespace
}  // namespace elbo
