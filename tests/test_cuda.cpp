// The CUDA backend against the CPU backend, its plain twin: the same model, inputs and noise on
// both, compared through every primitive, the forward pass, every gradient and ten Adam steps.
// Without a device only the launch-geometry and device-probe tests run; the rest skip, or fail
// when nvidia-smi lists a GPU that CUDA cannot use.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <span>
#include <ostream>
#include <string>
#include <vector>

#include "core/cuda/cuda_backend.h"
#include "core/cuda/grid.h"
#include "core/error.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "tests/require_cuda.h"

namespace elbo {
namespace {

// ---- without a device
// ----------------------------------------------------------------------------

TEST(LaunchBlocks, CeilDivisionClampedToTheGrid) {
  static_assert(launch_blocks(256, 256) == 1);
  EXPECT_EQ(launch_blocks(1, 256), 1);
  EXPECT_EQ(launch_blocks(255, 256), 1);
  EXPECT_EQ(launch_blocks(257, 256), 2);
  EXPECT_EQ(launch_blocks(512, 256), 2);
  EXPECT_EQ(launch_blocks(513, 256), 3);
  EXPECT_EQ(launch_blocks(1000, 1), 1000);
  // An empty range still launches one (idle) block: zero blocks would be a launch error.
  EXPECT_EQ(launch_blocks(0, 256), 1);
  // Kernels loop grid-stride, so the grid is capped.
  const size_t full = static_cast<size_t>(kMaxBlocks) * 256;
  EXPECT_EQ(launch_blocks(full, 256), kMaxBlocks);
  EXPECT_EQ(launch_blocks(full - 1, 256), kMaxBlocks);
  EXPECT_EQ(launch_blocks(full - 256, 256), kMaxBlocks - 1);
  EXPECT_EQ(launch_blocks(full + 1, 256), kMaxBlocks);
  EXPECT_EQ(launch_blocks(std::numeric_limits<size_t>::max(), 256), kMaxBlocks);
  // A non-positive thread count is read as one thread per block.
  EXPECT_EQ(launch_blocks(10, 0), 10);
}

TEST(CudaDevices, CountIsZeroRatherThanAnErrorWithoutADevice) {
  EXPECT_GE(cuda_device_count(), 0);
  EXPECT_GE(cuda_device_count(), 0);  // a failed probe leaves no error behind
}

TEST(CudaDevices, OnlyACudaBackendHasAStream) {
  EXPECT_THROW(cuda_stream(*make_cpu_backend()), Error);
}

TEST(CudaDevices, AMissingDeviceIsABadInput) {
  for (int device : {-1, cuda_device_count()}) {
    try {
      make_cuda_backend(device);
      ADD_FAILURE() << "device " << device << " accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::BadInput) << e.what();
    }
  }
}

// ---- helpers
// ---------------------------------------------------------------------------------------

std::vector<float> uniform(size_t n, float lo, float hi, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

DeviceArray to_backend(Backend& be, const std::vector<float>& host) {
  DeviceArray a(be, host.size());
  be.upload(a.data(), host.data(), host.size());
  return a;
}

std::vector<float> from_backend(Backend& be, const float* p, size_t n) {
  std::vector<float> v(n);
  be.download(v.data(), p, n);
  return v;
}

double max_abs(std::span<const float> a) {
  double m = 0.0;
  for (float x : a) m = std::max(m, static_cast<double>(std::fabs(x)));
  return m;
}

double max_abs_diff(std::span<const float> a, std::span<const float> b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0.0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    m = std::max(m, std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
  return m;
}

class CudaVsCpu : public ::testing::Test {
 protected:
  void SetUp() override {
    ELBO_REQUIRE_CUDA_DEVICE();
    cpu_ = make_cpu_backend();
    gpu_ = make_cuda_backend(0);
    EXPECT_NE(cuda_stream(*gpu_), nullptr);  // its own stream, not the legacy default one
  }

  // The same host values on both backends.
  struct Pair {
    DeviceArray cpu, gpu;
  };
  Pair both(const std::vector<float>& host) {
    return Pair{to_backend(*cpu_, host), to_backend(*gpu_, host)};
  }
  std::vector<float> cpu_values(const DeviceArray& a) {
    return from_backend(*cpu_, a.data(), a.size());
  }
  std::vector<float> gpu_values(const DeviceArray& a) {
    return from_backend(*gpu_, a.data(), a.size());
  }

  std::unique_ptr<Backend> cpu_, gpu_;
};

// Single-precision results of the same formulas, computed with different instructions (device
// expf/tanhf/logf differ from glibc's in the last bits; nvcc fuses multiply-adds) and, for sums,
// in a different order: a few float ulps per element, grown by ~sqrt(n) over a sum. 1e-5 of the
// largest magnitude is ~80 float ulps: far above that noise, far below any real mistake.
constexpr double kElementwiseTol = 1e-5;

// ---- primitives
// ------------------------------------------------------------------------------------

// upload() may be handed a temporary: when it returns, the copy must have read its source.
// (An asynchronous copy from pageable memory promises no such thing.)
TEST_F(CudaVsCpu, UploadHasReadItsSourceWhenItReturns) {
  const std::vector<float> want = uniform(1000, -1.0f, 1.0f, 7);
  DeviceArray a(*gpu_, want.size());
  {
    std::vector<float> source = want;
    gpu_->upload(a.data(), source.data(), source.size());
    std::fill(source.begin(), source.end(), -99.0f);  // the caller reuses its buffer at once
  }
  EXPECT_EQ(gpu_values(a), want);
}

TEST_F(CudaVsCpu, GemmMatchesRowMajorCblasForEveryTransposeAndLeadingDimension) {
  const int M = 37, N = 29, K = 53, pad = 3;  // pad makes every ld larger than the row it holds
  for (Trans ta : {Trans::No, Trans::Yes}) {
    for (Trans tb : {Trans::No, Trans::Yes}) {
      const int a_rows = ta == Trans::No ? M : K, a_cols = ta == Trans::No ? K : M;
      const int b_rows = tb == Trans::No ? K : N, b_cols = tb == Trans::No ? N : K;
      const int lda = a_cols + pad, ldb = b_cols + pad, ldc = N + pad;
      Pair a = both(uniform(static_cast<size_t>(a_rows * lda), -1, 1, 1));
      Pair b = both(uniform(static_cast<size_t>(b_rows * ldb), -1, 1, 2));
      Pair c = both(uniform(static_cast<size_t>(M * ldc), -1, 1, 3));
      cpu_->gemm(ta, tb, M, N, K, 0.75f, a.cpu.data(), lda, b.cpu.data(), ldb, 0.5f, c.cpu.data(),
                 ldc);
      gpu_->gemm(ta, tb, M, N, K, 0.75f, a.gpu.data(), lda, b.gpu.data(), ldb, 0.5f, c.gpu.data(),
                 ldc);
      const std::vector<float> want = cpu_values(c.cpu), got = gpu_values(c.gpu);
      // Padding columns must be untouched, so compare whole buffers.
      EXPECT_LE(max_abs_diff(want, got), kElementwiseTol * max_abs(want))
          << "ta=" << (ta == Trans::Yes) << " tb=" << (tb == Trans::Yes);
    }
  }
}

TEST_F(CudaVsCpu, BiasActivationAndItsBackward) {
  const int B = 70, N = 300;  // N*B not a multiple of the block size
  const size_t n = static_cast<size_t>(B) * N;
  for (Activation act : {Activation::None, Activation::Relu, Activation::Tanh}) {
    Pair y = both(uniform(n, -2, 2, 4));
    Pair bias = both(uniform(static_cast<size_t>(N), -1, 1, 5));
    cpu_->bias_activation(y.cpu.data(), bias.cpu.data(), B, N, act);
    gpu_->bias_activation(y.gpu.data(), bias.gpu.data(), B, N, act);
    const std::vector<float> y_cpu = cpu_values(y.cpu);
    EXPECT_LE(max_abs_diff(y_cpu, gpu_values(y.gpu)), kElementwiseTol * max_abs(y_cpu));

    Pair dy = both(uniform(n, -1, 1, 6));
    Pair dbias = both(std::vector<float>(static_cast<size_t>(N), 123.0f));  // overwritten
    cpu_->activation_backward(dy.cpu.data(), y.cpu.data(), dbias.cpu.data(), B, N, act);
    gpu_->activation_backward(dy.gpu.data(), y.gpu.data(), dbias.gpu.data(), B, N, act);
    const std::vector<float> dy_cpu = cpu_values(dy.cpu), db_cpu = cpu_values(dbias.cpu);
    EXPECT_LE(max_abs_diff(dy_cpu, gpu_values(dy.gpu)), kElementwiseTol * max_abs(dy_cpu));
    EXPECT_LE(max_abs_diff(db_cpu, gpu_values(dbias.gpu)), kElementwiseTol * max_abs(db_cpu));
  }
}

TEST_F(CudaVsCpu, ReparameterizeAndItsBackward) {
  const int B = 33, L = 7;
  const size_t bl = static_cast<size_t>(B) * L;
  Pair head = both(uniform(2 * bl, -1.5f, 1.5f, 7));
  Pair eps = both(uniform(bl, -2, 2, 8));
  Pair z = both(std::vector<float>(bl)), kl = both(std::vector<float>(static_cast<size_t>(B)));
  cpu_->reparameterize(head.cpu.data(), eps.cpu.data(), z.cpu.data(), kl.cpu.data(), B, L);
  gpu_->reparameterize(head.gpu.data(), eps.gpu.data(), z.gpu.data(), kl.gpu.data(), B, L);
  const std::vector<float> z_cpu = cpu_values(z.cpu), kl_cpu = cpu_values(kl.cpu);
  EXPECT_LE(max_abs_diff(z_cpu, gpu_values(z.gpu)), kElementwiseTol * max_abs(z_cpu));
  EXPECT_LE(max_abs_diff(kl_cpu, gpu_values(kl.gpu)), kElementwiseTol * max_abs(kl_cpu));

  Pair dz = both(uniform(bl, -1, 1, 9)), dhead = both(std::vector<float>(2 * bl));
  cpu_->reparameterize_backward(head.cpu.data(), eps.cpu.data(), dz.cpu.data(), dhead.cpu.data(), B,
                                L, 0.3f);
  gpu_->reparameterize_backward(head.gpu.data(), eps.gpu.data(), dz.gpu.data(), dhead.gpu.data(), B,
                                L, 0.3f);
  const std::vector<float> dh_cpu = cpu_values(dhead.cpu);
  EXPECT_LE(max_abs_diff(dh_cpu, gpu_values(dhead.gpu)), kElementwiseTol * max_abs(dh_cpu));
}

TEST_F(CudaVsCpu, ReconstructionLossValueAndGradientInOnePass) {
  const int B = 5, D = 1000;  // D spans several passes of a 256-thread block
  const size_t n = static_cast<size_t>(B) * D;
  for (Likelihood lik :
       {Likelihood::Bernoulli, Likelihood::Gaussian, Likelihood::GaussianLearned}) {
    for (bool with_grad : {true, false}) {
      // Past |l| = 40, where bce_with_logits cuts off; the learned Gaussian's [means |
      // log-variances] rows are twice as wide, log-variances in [-50, 50] too.
      const size_t outputs = lik == Likelihood::GaussianLearned ? 2 * n : n;
      Pair out = both(uniform(outputs, -50, 50, 10));
      Pair x = both(uniform(n, 0, 1, 11));
      Pair dout = both(std::vector<float>(outputs, 7.0f));
      Pair recon = both(std::vector<float>(static_cast<size_t>(B)));
      cpu_->reconstruction_loss(out.cpu.data(), x.cpu.data(), with_grad ? dout.cpu.data() : nullptr,
                                recon.cpu.data(), B, D, lik, 0.125f);
      gpu_->reconstruction_loss(out.gpu.data(), x.gpu.data(), with_grad ? dout.gpu.data() : nullptr,
                                recon.gpu.data(), B, D, lik, 0.125f);
      const std::vector<float> r_cpu = cpu_values(recon.cpu), d_cpu = cpu_values(dout.cpu);
      EXPECT_LE(max_abs_diff(r_cpu, gpu_values(recon.gpu)), kElementwiseTol * max_abs(r_cpu));
      EXPECT_LE(max_abs_diff(d_cpu, gpu_values(dout.gpu)), kElementwiseTol * max_abs(d_cpu));
    }
  }
}

// Geometries with odd sizes (windows that overhang the padded edge) and the peer's 28x28 layers.
std::vector<ConvShape> conv_shapes() {
  auto shape = [](int c, int h, int w, int k, int s, int p) {
    ConvShape g{c, h, w, k, s, p, 0, 0};
    g.out_h = (h + 2 * p - k) / s + 1;
    g.out_w = (w + 2 * p - k) / s + 1;
    return g;
  };
  return {shape(3, 9, 7, 3, 2, 1), shape(1, 28, 28, 4, 2, 1), shape(5, 6, 5, 2, 1, 0),
          shape(2, 5, 8, 3, 3, 2)};
}

TEST_F(CudaVsCpu, Im2colAndCol2im) {
  const int B = 5;
  for (const ConvShape& g : conv_shapes()) {
    const size_t image = static_cast<size_t>(B) * g.channels * g.image();
    const size_t col = static_cast<size_t>(g.col_rows()) * B * g.grid();
    Pair img = both(uniform(image, -1, 1, 30));
    Pair c = both(std::vector<float>(col, 9.0f));  // every element overwritten
    cpu_->im2col(img.cpu.data(), c.cpu.data(), B, g);
    gpu_->im2col(img.gpu.data(), c.gpu.data(), B, g);
    EXPECT_EQ(cpu_values(c.cpu), gpu_values(c.gpu)) << "im2col copies: exact";

    Pair dc = both(uniform(col, -1, 1, 31));
    Pair dimg = both(std::vector<float>(image, 9.0f));
    cpu_->col2im(dc.cpu.data(), dimg.cpu.data(), B, g);
    gpu_->col2im(dc.gpu.data(), dimg.gpu.data(), B, g);
    const std::vector<float> want = cpu_values(dimg.cpu);
    EXPECT_LE(max_abs_diff(want, gpu_values(dimg.gpu)), kElementwiseTol * max_abs(want));
    // col2im is im2col's adjoint: <im2col(a), b> = <a, col2im(b)>, in double on the CPU values.
    const std::vector<float> a = cpu_values(img.cpu), ca = cpu_values(c.cpu),
                             b = cpu_values(dc.cpu);
    double lhs = 0, rhs = 0;
    for (size_t i = 0; i < col; ++i) lhs += static_cast<double>(ca[i]) * b[i];
    for (size_t i = 0; i < image; ++i) rhs += static_cast<double>(a[i]) * want[i];
    EXPECT_NEAR(lhs, rhs, 1e-5 * std::fabs(lhs) + 1e-6);
  }
}

TEST_F(CudaVsCpu, TransposeOuterAndChannelBias) {
  const int B = 7, C = 5, N = 83;
  const size_t n = static_cast<size_t>(B) * C * N;
  Pair src = both(uniform(n, -1, 1, 32)), dst = both(std::vector<float>(n));
  cpu_->transpose_outer(src.cpu.data(), dst.cpu.data(), B, C, N);
  gpu_->transpose_outer(src.gpu.data(), dst.gpu.data(), B, C, N);
  const std::vector<float> t = cpu_values(dst.cpu), in = cpu_values(src.cpu);
  EXPECT_EQ(t, gpu_values(dst.gpu));
  EXPECT_EQ(t[(static_cast<size_t>(3) * B + 2) * N + 11],
            in[(static_cast<size_t>(2) * C + 3) * N + 11]);
  for (Activation act : {Activation::None, Activation::Relu, Activation::Tanh}) {
    Pair y = both(uniform(n, -2, 2, 33)), bias = both(uniform(static_cast<size_t>(C), -1, 1, 34));
    cpu_->channel_bias_activation(y.cpu.data(), bias.cpu.data(), B, C, N, act);
    gpu_->channel_bias_activation(y.gpu.data(), bias.gpu.data(), B, C, N, act);
    const std::vector<float> y_cpu = cpu_values(y.cpu);
    EXPECT_LE(max_abs_diff(y_cpu, gpu_values(y.gpu)), kElementwiseTol * max_abs(y_cpu));
    Pair dy = both(uniform(n, -1, 1, 35));
    Pair dbias = both(std::vector<float>(static_cast<size_t>(C), 123.0f));
    cpu_->channel_activation_backward(dy.cpu.data(), y.cpu.data(), dbias.cpu.data(), B, C, N, act);
    gpu_->channel_activation_backward(dy.gpu.data(), y.gpu.data(), dbias.gpu.data(), B, C, N, act);
    const std::vector<float> dy_cpu = cpu_values(dy.cpu), db_cpu = cpu_values(dbias.cpu);
    EXPECT_LE(max_abs_diff(dy_cpu, gpu_values(dy.gpu)), kElementwiseTol * max_abs(dy_cpu));
    EXPECT_LE(max_abs_diff(db_cpu, gpu_values(dbias.gpu)), kElementwiseTol * max_abs(db_cpu));
  }
}

TEST_F(CudaVsCpu, NoiseHasTheCpuCountersAndValues) {
  const std::vector<uint32_t> ids = {0, 5, 123456789, 7, 4294967295u, 42, 1, 99999};
  for (int L : {1, 3, 4, 10, 20}) {
    for (RngStream stream : {RngStream::Noise, RngStream::EvalNoise}) {
      const size_t n = ids.size() * static_cast<size_t>(L);
      Pair eps = both(std::vector<float>(n));
      cpu_->fill_noise(eps.cpu.data(), ids, L, rng_key(0x123456789abcull), 3, stream);
      gpu_->fill_noise(eps.gpu.data(), ids, L, rng_key(0x123456789abcull), 3, stream);
      // Same counters, so the same uniforms; Box-Muller's logf/sinf/cosf on the device differ
      // from glibc's by a few ulps, times |r| <= 5.6: a few 1e-6 at most.
      EXPECT_LE(max_abs_diff(cpu_values(eps.cpu), gpu_values(eps.gpu)), 1e-5) << "L=" << L;
    }
  }
  // A larger batch than before grows the device's id buffer.
  std::vector<uint32_t> many(1000);
  for (size_t i = 0; i < many.size(); ++i) many[i] = static_cast<uint32_t>(3 * i + 1);
  Pair eps = both(std::vector<float>(many.size() * 10));
  cpu_->fill_noise(eps.cpu.data(), many, 10, rng_key(1), 0, RngStream::Noise);
  gpu_->fill_noise(eps.gpu.data(), many, 10, rng_key(1), 0, RngStream::Noise);
  EXPECT_LE(max_abs_diff(cpu_values(eps.cpu), gpu_values(eps.gpu)), 1e-5);
}

TEST_F(CudaVsCpu, Reductions) {
  for (size_t n : {size_t{1}, size_t{7}, size_t{256}, size_t{1000003}}) {
    const std::vector<float> host = uniform(n, -1, 1, 12);
    Pair v = both(host);
    // Both accumulate in double, in different orders: ~1e-16 relative per addition, far below
    // 1e-10.
    double magnitude = 0.0;
    for (float x : host) magnitude += std::fabs(static_cast<double>(x));
    EXPECT_NEAR(gpu_->sum(v.gpu.data(), n), cpu_->sum(v.cpu.data(), n), 1e-10 * magnitude);
    const double squares = cpu_->sum_of_squares(v.cpu.data(), n);
    EXPECT_NEAR(gpu_->sum_of_squares(v.gpu.data(), n), squares, 1e-10 * squares);
    EXPECT_TRUE(gpu_->all_finite(v.gpu.data(), n));

    gpu_->scale(v.gpu.data(), n, -0.37f);
    cpu_->scale(v.cpu.data(), n, -0.37f);
    EXPECT_EQ(gpu_values(v.gpu), cpu_values(v.cpu));  // one correctly rounded product each
  }
  EXPECT_EQ(gpu_->sum(nullptr, 0), 0.0);
  EXPECT_TRUE(gpu_->all_finite(nullptr, 0));

  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    std::vector<float> host = uniform(100000, -1, 1, 13);
    host[76543] = bad;
    Pair v = both(host);
    EXPECT_EQ(gpu_->all_finite(v.gpu.data(), host.size()),
              cpu_->all_finite(v.cpu.data(), host.size()));
    EXPECT_FALSE(gpu_->all_finite(v.gpu.data(), host.size()));
    EXPECT_TRUE(gpu_->all_finite(v.gpu.data(), 76543));  // the flag is cleared on every call
  }
}

// Gradient compression's conversions: the same bfloat16 bits on both backends (an odd count, so
// the last float of the packed buffer is half used), and the same floats back.
TEST_F(CudaVsCpu, Bfloat16ConversionsAgree) {
  for (size_t n : {size_t{1}, size_t{1001}, size_t{300007}}) {
    std::vector<float> host = uniform(n, -3, 3, 17);
    host[0] = std::numeric_limits<float>::infinity();
    host[n / 2] *= 1e-30f;
    Pair v = both(host);
    DeviceArray cpu_bits(*cpu_, (n + 1) / 2), gpu_bits(*gpu_, (n + 1) / 2);
    cpu_->to_bfloat16(v.cpu.data(), reinterpret_cast<uint16_t*>(cpu_bits.data()), n);
    gpu_->to_bfloat16(v.gpu.data(), reinterpret_cast<uint16_t*>(gpu_bits.data()), n);
    const std::vector<float> c = cpu_values(cpu_bits), g = gpu_values(gpu_bits);
    EXPECT_EQ(std::memcmp(c.data(), g.data(), n * sizeof(uint16_t)), 0) << n;
    gpu_->fill_zero(v.gpu.data(), n);
    gpu_->from_bfloat16(reinterpret_cast<const uint16_t*>(gpu_bits.data()), v.gpu.data(), n);
    const std::vector<float> back = gpu_values(v.gpu);
    for (size_t i = 0; i < n; ++i)
      ASSERT_EQ(back[i], from_bfloat16_bits(bfloat16_bits(host[i]))) << i;
  }
}

TEST_F(CudaVsCpu, AdamStepOnIdenticalInputs) {
  const size_t n = 100003;
  for (bool decoupled : {false, true}) {
    Pair p = both(uniform(n, -1, 1, 14)), g = both(uniform(n, -0.1f, 0.1f, 15));
    Pair m = both(uniform(n, -0.01f, 0.01f, 16)), v = both(uniform(n, 0, 1e-4f, 17));
    const AdamHyper h{1e-3f, 0.9f, 0.999f, 1e-8f, decoupled ? 0.01f : 0.01f, decoupled};
    // Both start at step 2, so the third update's constants are used on each side.
    Pair counter = both(std::vector<float>(1, counter_storage(2)));
    Pair flag = both(std::vector<float>(1, 0.0f));
    cpu_->adam_step(p.cpu.data(), g.cpu.data(), m.cpu.data(), v.cpu.data(), n, h,
                    counter.cpu.data(), flag.cpu.data());
    gpu_->adam_step(p.gpu.data(), g.gpu.data(), m.gpu.data(), v.gpu.data(), n, h,
                    counter.gpu.data(), flag.gpu.data());
    EXPECT_EQ(cpu_values(flag.cpu)[0], 0.0f);
    EXPECT_EQ(gpu_values(flag.gpu)[0], 0.0f);
    EXPECT_EQ(counter_value(cpu_values(counter.cpu)[0]), 3);
    EXPECT_EQ(counter_value(gpu_values(counter.gpu)[0]), 3);
    // The same single-precision update per element; only fused multiply-adds differ.
    EXPECT_LE(max_abs_diff(cpu_values(p.cpu), gpu_values(p.gpu)), 1e-6);
    EXPECT_LE(max_abs_diff(cpu_values(m.cpu), gpu_values(m.gpu)), 1e-8);
    EXPECT_LE(max_abs_diff(cpu_values(v.cpu), gpu_values(v.gpu)), 1e-10);
  }
  // A non-finite gradient is reported; the flag stays set until its owner clears it.
  std::vector<float> grads = uniform(n, -0.1f, 0.1f, 18);
  grads[n - 1] = std::numeric_limits<float>::quiet_NaN();
  Pair p = both(uniform(n, -1, 1, 19)), g = both(grads);
  Pair m = both(std::vector<float>(n)), v = both(std::vector<float>(n));
  const AdamHyper h{1e-2f, 0.9f, 0.999f, 1e-8f, 0.0f, false};
  Pair counter = both(std::vector<float>(1, counter_storage(0)));
  Pair flag = both(std::vector<float>(1, 0.0f));
  gpu_->adam_step(p.gpu.data(), g.gpu.data(), m.gpu.data(), v.gpu.data(), n - 1, h,
                  counter.gpu.data(), flag.gpu.data());
  EXPECT_EQ(gpu_values(flag.gpu)[0], 0.0f);
  gpu_->adam_step(p.gpu.data(), g.gpu.data(), m.gpu.data(), v.gpu.data(), n, h,
                  counter.gpu.data(), flag.gpu.data());
  EXPECT_EQ(gpu_values(flag.gpu)[0], 1.0f);
}

// ---- the whole model
// -------------------------------------------------------------------------------

struct ModelCase {
  std::string name;
  ModelSpec spec;
  int batch;
  float x_lo, x_hi;
};
// gtest (and so ctest's test names) would otherwise print the case as a hex dump.
void PrintTo(const ModelCase& c, std::ostream* os) { *os << c.name; }

ModelSpec make_spec(int D, std::vector<int> enc, int L, std::vector<int> dec, Activation a,
                    Likelihood lik) {
  ModelSpec s;
  s.input_dim = D;
  s.encoder = std::move(enc);
  s.latent = L;
  s.decoder = std::move(dec);
  s.activation = a;
  s.likelihood = lik;
  return s;
}

ModelSpec make_conv_spec(int C, int H, int W, std::vector<int> channels, int k, int stride, int pad,
                         Activation a, Likelihood lik) {
  ModelSpec s = make_spec(C * H * W, {32}, 6, {32}, a, lik);
  s.type = ModelType::Conv;
  s.channels = C, s.height = H, s.width = W;
  s.conv = ConvSpec{std::move(channels), k, stride, pad};
  return s;
}

class CudaModelParity : public CudaVsCpu, public ::testing::WithParamInterface<ModelCase> {};

TEST_P(CudaModelParity, ForwardGradientsAndTenAdamSteps) {
  const ModelCase& mc = GetParam();
  const ModelSpec& spec = mc.spec;
  const int B = mc.batch, D = spec.input_dim, L = spec.latent;
  const float beta = 0.7f, grad_scale = 1.0f / static_cast<float>(B);
  const uint64_t seed = 2024;

  Vae cpu_vae(*cpu_, spec, B, seed), gpu_vae(*gpu_, spec, B, seed);
  const size_t P = cpu_vae.num_params();
  ASSERT_EQ(P, gpu_vae.num_params());
  Pair x = both(uniform(static_cast<size_t>(B) * D, mc.x_lo, mc.x_hi, 20));
  // One set of noise, drawn on the CPU, so that forward passes see identical inputs.
  std::vector<uint32_t> ids(static_cast<size_t>(B));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<uint32_t>(i);
  DeviceArray eps_cpu(*cpu_, static_cast<size_t>(B) * L);
  cpu_->fill_noise(eps_cpu.data(), ids, L, rng_key(seed), 0, RngStream::Noise);
  DeviceArray eps_gpu = to_backend(*gpu_, cpu_values(eps_cpu));

  cpu_vae.forward_backward(x.cpu.data(), eps_cpu.data(), B, beta, grad_scale);
  gpu_vae.forward_backward(x.gpu.data(), eps_gpu.data(), B, beta, grad_scale);

  // Forward: GEMMs over up to 784 terms in cuBLAS's order instead of OpenBLAS's, through three
  // layers; 1e-4 of the largest output is ~1000 float ulps of it, far below a wrong formula.
  const size_t out_n = static_cast<size_t>(B) * output_dim(spec);
  const std::vector<float> out_cpu = from_backend(*cpu_, cpu_vae.output(), out_n);
  const std::vector<float> out_gpu = from_backend(*gpu_, gpu_vae.output(), out_n);
  EXPECT_LE(max_abs_diff(out_cpu, out_gpu), 1e-4 * max_abs(out_cpu));

  // Loss sums: per-sample sums of D terms, accumulated in double; 1e-5 relative leaves room for
  // the reordered float sums inside each sample.
  const LossSums s_cpu = cpu_vae.loss_sums(B), s_gpu = gpu_vae.loss_sums(B);
  EXPECT_NEAR(s_gpu.recon, s_cpu.recon, 1e-5 * std::fabs(s_cpu.recon));
  EXPECT_NEAR(s_gpu.kl, s_cpu.kl, 1e-5 * std::fabs(s_cpu.kl) + 1e-6);

  // Gradients, per tensor: sums over the batch of products of the above, in a different order.
  // 1e-4 of the tensor's largest gradient, plus 1e-6 for tensors whose gradients are ~0.
  const std::vector<float> g_cpu = from_backend(*cpu_, cpu_vae.grads(), P);
  const std::vector<float> g_gpu = from_backend(*gpu_, gpu_vae.grads(), P);
  for (const TensorView& t : cpu_vae.layout().tensors()) {
    const std::span<const float> a(g_cpu.data() + t.offset, t.size());
    const std::span<const float> b(g_gpu.data() + t.offset, t.size());
    EXPECT_LE(max_abs_diff(a, b), 1e-4 * max_abs(a) + 1e-6) << t.name;
  }

  // Ten Adam steps, each on fresh gradients. An Adam step moves each parameter by about lr
  // whatever the gradient's size, so parity holds to a fraction of lr = 1e-3: 1e-4 absolute.
  const AdamConfig config{};  // lr 1e-3, PyTorch's defaults
  Adam cpu_adam(*cpu_, P, config), gpu_adam(*gpu_, P, config);
  DeviceArray cpu_flag(*cpu_, 1), gpu_flag(*gpu_, 1);
  cpu_->fill_zero(cpu_flag.data(), 1);
  gpu_->fill_zero(gpu_flag.data(), 1);
  for (int step = 0; step < 10; ++step) {
    if (step > 0) {
      cpu_vae.forward_backward(x.cpu.data(), eps_cpu.data(), B, beta, grad_scale);
      gpu_vae.forward_backward(x.gpu.data(), eps_gpu.data(), B, beta, grad_scale);
    }
    cpu_adam.step(cpu_vae.params(), cpu_vae.grads(), cpu_flag.data());
    gpu_adam.step(gpu_vae.params(), gpu_vae.grads(), gpu_flag.data());
  }
  EXPECT_EQ(from_backend(*cpu_, cpu_flag.data(), 1)[0], 0.0f);
  EXPECT_EQ(from_backend(*gpu_, gpu_flag.data(), 1)[0], 0.0f);
  const std::vector<float> p_cpu = from_backend(*cpu_, cpu_vae.params(), P);
  const std::vector<float> p_gpu = from_backend(*gpu_, gpu_vae.params(), P);
  EXPECT_LE(max_abs_diff(p_cpu, p_gpu), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(
    Models, CudaModelParity,
    ::testing::Values(
        ModelCase{"Relu784Bernoulli",
                  make_spec(784, {64}, 10, {64}, Activation::Relu, Likelihood::Bernoulli), 32, 0,
                  1},
        ModelCase{"TanhGaussian",
                  make_spec(12, {16, 8}, 3, {8}, Activation::Tanh, Likelihood::Gaussian), 9, -1, 1},
        ModelCase{"TanhGaussianLearned",
                  make_spec(12, {16, 8}, 3, {8}, Activation::Tanh, Likelihood::GaussianLearned), 9,
                  -1, 1},
        ModelCase{
            "ConvRelu28Bernoulli",
            make_conv_spec(1, 28, 28, {8, 16}, 4, 2, 1, Activation::Relu, Likelihood::Bernoulli), 6,
            0, 1},
        ModelCase{
            "ConvTanhOddGaussianLearned",
            make_conv_spec(3, 9, 7, {4, 5}, 3, 2, 1, Activation::Tanh, Likelihood::GaussianLearned),
            5, -1, 1}),
    [](const ::testing::TestParamInfo<ModelCase>& param_info) { return param_info.param.name; });

}  // namespace

// A step captured as a graph and replayed does exactly what the same step run eagerly does: the
// same kernels on the same data, so the parameters agree bit for bit after three steps each.
class CudaGraphReplay : public ::testing::TestWithParam<ModelType> {};

TEST_P(CudaGraphReplay, ReplayedStepsEqualEagerSteps) {
  ELBO_REQUIRE_CUDA_DEVICE();
  auto gpu = make_cuda_backend(0);
  ModelSpec spec;
  spec.input_dim = 64;
  spec.encoder = {32};
  spec.latent = 4;
  spec.decoder = {32};
  if (GetParam() == ModelType::Conv) {  // 8x8 images through convs to 4x4 and 2x2, and back
    spec.type = ModelType::Conv;
    spec.height = spec.width = 8;
    spec.conv = ConvSpec{{4, 8}, 4, 2, 1};
  }
  const int B = 16;
  std::vector<float> x(B * spec.input_dim), eps(B * spec.latent);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>((i * 37) % 101) / 100.0f;
  for (size_t i = 0; i < eps.size(); ++i) eps[i] = static_cast<float>((i * 13) % 17) / 8.0f - 1.0f;
  DeviceArray dx = to_backend(*gpu, x), deps = to_backend(*gpu, eps);
  DeviceArray flag(*gpu, 1);
  gpu->fill_zero(flag.data(), 1);

  Vae eager(*gpu, spec, B, 3), replayed(*gpu, spec, B, 3);
  Adam eager_adam(*gpu, eager.num_params(), AdamConfig{});
  Adam replayed_adam(*gpu, replayed.num_params(), AdamConfig{});
  for (int step = 0; step < 3; ++step) {
    eager.forward_backward(dx.data(), deps.data(), B, 1.0f, 1.0f / B);
    eager_adam.step(eager.params(), eager.grads(), flag.data());
  }
  auto graph = gpu->capture([&] {
    replayed.forward_backward(dx.data(), deps.data(), B, 1.0f, 1.0f / B);
    replayed_adam.step(replayed.params(), replayed.grads(), flag.data());
  });
  ASSERT_NE(graph, nullptr) << "a step of kernels and cuBLAS calls must be capturable";
  EXPECT_EQ(replayed_adam.steps_taken(), 0);  // capturing ran nothing
  for (int step = 0; step < 3; ++step) graph->replay();
  EXPECT_EQ(replayed_adam.steps_taken(), 3);
  EXPECT_EQ(from_backend(*gpu, eager.params(), eager.num_params()),
            from_backend(*gpu, replayed.params(), replayed.num_params()));
  EXPECT_EQ(from_backend(*gpu, flag.data(), 1)[0], 0.0f);
}

INSTANTIATE_TEST_SUITE_P(Models, CudaGraphReplay,
                         ::testing::Values(ModelType::Mlp, ModelType::Conv),
                         [](const ::testing::TestParamInfo<ModelType>& param_info) {
                           return std::string(param_info.param == ModelType::Conv ? "Conv" : "Mlp");
                         });

// Work that reads a value back cannot be captured: the backend says so and nothing breaks.
TEST(CudaGraphs, UncapturableWorkFallsBack) {
  ELBO_REQUIRE_CUDA_DEVICE();
  auto gpu = make_cuda_backend(0);
  DeviceArray v = to_backend(*gpu, std::vector<float>(100, 2.0f));
  EXPECT_EQ(gpu->capture([&] { (void)gpu->sum(v.data(), 100); }), nullptr);
  EXPECT_DOUBLE_EQ(gpu->sum(v.data(), 100), 200.0);  // the backend still works afterwards
}

TEST(CudaGraphs, TheCpuBackendCapturesNothing) {
  auto cpu = make_cpu_backend();
  int runs = 0;
  EXPECT_EQ(cpu->capture([&] { ++runs; }), nullptr);
  EXPECT_EQ(runs, 0);
}

}  // namespace elbo
