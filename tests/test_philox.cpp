// Philox-4x32-10 against the published known-answer vectors (Random123's kat_vectors), and the
// distributions built on it against their closed-form moments.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/philox.h"

namespace elbo {
namespace {

struct Kat {
  uint32_t ctr[4], key[2], expected[4];
};

TEST(Philox, KnownAnswerVectors) {
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const Kat& k : kats) {
    const Philox4 out =
        philox4x32_10(Philox4{{k.ctr[0], k.ctr[1], k.ctr[2], k.ctr[3]}}, k.key[0], k.key[1]);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(out.v[i], k.expected[i]) << "word " << i;
  }
}

TEST(Philox, SeedIsTheKeyAndStreamsDiffer) {
  const RngKey key = rng_key(0x299f31d0a4093822ull);
  EXPECT_EQ(key.k0, 0xa4093822u);
  EXPECT_EQ(key.k1, 0x299f31d0u);
  const Philox4 a = philox_draw(key, 1, 2, 3, RngStream::Noise);
  const Philox4 b = philox_draw(key, 1, 2, 3, RngStream::EvalNoise);
  EXPECT_NE(a.v[0], b.v[0]);
}

TEST(Philox, UniformIsOpenIntervalWithRightMoments) {
  EXPECT_GT(uniform_open01(0u), 0.0f);
  EXPECT_LT(uniform_open01(0xffffffffu), 1.0f);
  const RngKey key = rng_key(7);
  const int n = 1 << 20;
  double sum = 0.0, sum_sq = 0.0;
  for (int i = 0; i < n / 4; ++i) {
    const Philox4 d = philox_draw(key, static_cast<uint32_t>(i), 0, 0, RngStream::Init);
    for (uint32_t w : d.v) {
      const double u = uniform_open01(w);
      sum += u;
      sum_sq += u * u;
    }
  }
  const double mean = sum / n, var = sum_sq / n - mean * mean;
  // Standard errors: sqrt(1/12 / n) ~ 2.8e-4 for the mean; allow 5 of them.
  EXPECT_NEAR(mean, 0.5, 5 * std::sqrt(1.0 / 12.0 / n));
  EXPECT_NEAR(var, 1.0 / 12.0, 1e-3);
}

TEST(Philox, NormalMomentsAndTails) {
  const RngKey key = rng_key(12345);
  const int n = 1 << 20;
  double m1 = 0, m2 = 0, m4 = 0;
  int within_one = 0;
  for (int i = 0; i < n; ++i) {
    const double z = philox_normal(key, static_cast<uint32_t>(i >> 6), 9, RngStream::Noise,
                                   static_cast<uint32_t>(i & 63));
    m1 += z;
    m2 += z * z;
    m4 += z * z * z * z;
    within_one += std::fabs(z) < 1.0;
  }
  m1 /= n;
  m2 /= n;
  m4 /= n;
  EXPECT_NEAR(m1, 0.0, 5.0 / std::sqrt(n));
  EXPECT_NEAR(m2, 1.0, 5.0 * std::sqrt(2.0 / n));
  EXPECT_NEAR(m4, 3.0, 5.0 * std::sqrt(96.0 / n));
  // P(|Z| < 1) = erf(1/sqrt 2) = 0.682689...
  EXPECT_NEAR(static_cast<double>(within_one) / n, std::erf(1.0 / std::sqrt(2.0)),
              5.0 * std::sqrt(0.2166 / n));
}

TEST(Philox, UniformBelowStaysInRangeAndCoversIt) {
  const RngKey key = rng_key(3);
  std::vector<int> counts(10, 0);
  const int n = 100000;
  for (int i = 0; i < n; ++i) {
    const uint32_t r =
        uniform_below(philox_draw(key, static_cast<uint32_t>(i), 0, 0, RngStream::Shuffle).v[0], 10);
    ASSERT_LT(r, 10u);
    ++counts[r];
  }
  // Chi-square with 9 degrees of freedom: 27.9 is its 0.999 quantile.
  double chi2 = 0;
  for (int c : counts) chi2 += (c - n / 10.0) * (c - n / 10.0) / (n / 10.0);
  EXPECT_LT(chi2, 27.9);
}

}  // namespace
}  // namespace elbo
