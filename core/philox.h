// Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011): the one
// source of randomness. Counter-based, so any value can be drawn in any order on any device: a
// sample's noise depends on (seed, epoch, global sample index), never on the rank that drew it.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/hd.h"

namespace elbo {

struct Philox4 {
  uint32_t v[4];
};

// Stream ids (the last counter word) keep the uses of the generator apart.
enum class RngStream : uint32_t {
  Init = 1, Shuffle = 2, Noise = 3, Binarize = 4, EvalNoise = 5,
  ImportanceNoise = 6,  // importance sample k of a sample: counter (latent, sample, k)
};

ELBO_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

ELBO_HD Philox4 philox4x32_10(Philox4 ctr, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kM0, ctr.v[0], hi0, lo0);
    philox_mulhilo(kM1, ctr.v[2], hi1, lo1);
    ctr = Philox4{{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
    k0 += kW0;
    k1 += kW1;
  }
  return ctr;
}

// The run's seed is the key.
struct RngKey {
  uint32_t k0, k1;
};
ELBO_HD RngKey rng_key(uint64_t seed) {
  return RngKey{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
}

ELBO_HD Philox4 philox_draw(RngKey key, uint32_t c0, uint32_t c1, uint32_t c2, RngStream s) {
  return philox4x32_10(Philox4{{c0, c1, c2, static_cast<uint32_t>(s)}}, key.k0, key.k1);
}

// Uniform in (0, 1): the top 23 bits, centred in their interval, so neither 0 nor 1 occurs (with
// 24 bits the largest value would round to 1.0f).
ELBO_HD float uniform_open01(uint32_t u) {
  return static_cast<float>(u >> 9) * (1.0f / 8388608.0f) + (0.5f / 8388608.0f);
}

// Standard normal number `which` (0..3) of a draw, by Box-Muller on words (0,1) and (2,3).
ELBO_HD float normal_from_draw(const Philox4& d, int which) {
  const int pair = (which >> 1) << 1;
  const float u1 = uniform_open01(d.v[pair]);
  const float u2 = uniform_open01(d.v[pair + 1]);
  const float r = sqrtf(-2.0f * logf(u1));
  const float theta = 6.2831853071795864769f * u2;
  return (which & 1) ? r * sinf(theta) : r * cosf(theta);
}

// Normal i of a row of noise keyed by (c1, c2): the i-th latent of sample c1 in epoch c2.
ELBO_HD float philox_normal(RngKey key, uint32_t c1, uint32_t c2, RngStream s, uint32_t i) {
  return normal_from_draw(philox_draw(key, i >> 2, c1, c2, s), static_cast<int>(i & 3u));
}

// Uniform in [0, n) for n <= 2^32, by a 64-bit multiply (Lemire); bias below 2^-32 per draw.
ELBO_HD uint32_t uniform_below(uint32_t u, uint32_t n) {
  return static_cast<uint32_t>((static_cast<uint64_t>(u) * n) >> 32);
}

}  // namespace elbo
