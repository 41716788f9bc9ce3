// `elbo bench`'s figures against independent truth: the roofline's GEMM list against a second
// wrapper that counts what the model really issues (and a hand-written list), the optimizer's
// bytes in closed form, the phase timer on a scripted clock, nccl-tests' bandwidth definitions.
#include <gtest/gtest.h>

#include <memory>
#include <numeric>
#include <vector>

#include "core/backend.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "distributed/allreduce_sweep.h"
#include "launch/roofline.h"
#include "launch/step_timer.h"

namespace elbo {
namespace {

// Forwards to the CPU backend and keeps the GEMMs' shapes, nothing else.
class GemmCounter final : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  std::vector<GemmShape> gemms;
  void gemm(Trans ta, Trans tb, int M, int N, int K, float alpha, const float* A, int lda,
            const float* B, int ldb, float beta, float* C, int ldc) override {
    gemms.push_back({ta, tb, M, N, K});
    inner().gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
};

// The GEMMs one forward_backward of the model issues, counted on the CPU backend.
std::vector<GemmShape> counted_gemms(const ModelSpec& spec, int B) {
  const auto cpu = make_cpu_backend();
  GemmCounter counter(*cpu);
  Vae vae(counter, spec, B, 3);
  DeviceArray x(counter, static_cast<size_t>(B) * spec.input_dim), eps(counter, static_cast<size_t>(B) * spec.latent);
  counter.fill_zero(x.data(), x.size());
  counter.fill_zero(eps.data(), eps.size());
  counter.gemms.clear();
  vae.forward_backward(x.data(), eps.data(), B, 1.0f, 1.0f / static_cast<float>(B));
  return counter.gemms;
}

ModelSpec mlp(int D, std::vector<int> enc, int L, std::vector<int> dec, Likelihood lik) {
  ModelSpec s;
  s.input_dim = D;
  s.encoder = std::move(enc);
  s.latent = L;
  s.decoder = std::move(dec);
  s.likelihood = lik;
  return s;
}

TEST(Roofline, GemmsAreTheOnesTheModelIssues) {
  auto cpu = make_cpu_backend();
  ModelSpec conv;
  conv.type = ModelType::Conv;
  conv.channels = 1;
  conv.height = conv.width = 8;
  conv.input_dim = 64;
  conv.conv.channels = {3, 4};
  conv.encoder = {16};
  conv.latent = 2;
  conv.decoder = {16};
  for (const ModelSpec& spec :
       {mlp(784, {400}, 20, {400}, Likelihood::Bernoulli),
        mlp(12, {9, 7}, 3, {5}, Likelihood::GaussianLearned), conv})
    for (int B : {1, 7, 32}) {
      const StepWork work = record_step_work(*cpu, spec, B, AdamConfig{}, 0.0);
      EXPECT_EQ(work.gemms, counted_gemms(spec, B)) << "B " << B << ", D " << spec.input_dim;
    }
}

// The 784-400-20-400-784 MLP by hand: four forward GEMMs, then for each layer from the last its
// weight gradient and (but for the first) its input gradient.
TEST(Roofline, MlpGemmsByHand) {
  auto cpu = make_cpu_backend();
  const int B = 128;
  const Trans N = Trans::No, T = Trans::Yes;
  const std::vector<GemmShape> want = {
      {N, T, B, 400, 784}, {N, T, B, 40, 400}, {N, T, B, 400, 20}, {N, T, B, 784, 400},
      {T, N, 784, 400, B}, {N, N, B, 400, 784},  // output layer: dW, d(hidden)
      {T, N, 400, 20, B},  {N, N, B, 20, 400},   // decoder hidden: dW, dz
      {T, N, 40, 400, B},  {N, N, B, 400, 40},   // head: dW, d(hidden)
      {T, N, 400, 784, B}};                      // encoder hidden: dW only
  const StepWork work =
      record_step_work(*cpu, mlp(784, {400}, 20, {400}, Likelihood::Bernoulli), B, AdamConfig{}, 0);
  EXPECT_EQ(work.gemms, want);
  double flops = 0;
  for (const GemmShape& g : want) flops += g.flops();
  EXPECT_DOUBLE_EQ(flops / B, 3.28e6);  // per sample, as docs/PERFORMANCE.md quotes it
}

// Adam reads parameters, gradients and both moments and writes three of them back: 28 bytes per
// parameter. Clipping adds a read for the norm and a read and write for the scale.
TEST(Roofline, OptimizerBytes) {
  auto cpu = make_cpu_backend();
  const ModelSpec spec = mlp(10, {6}, 2, {6}, Likelihood::Bernoulli);
  const double P = static_cast<double>(ParameterLayout(spec).total_size());
  EXPECT_DOUBLE_EQ(record_step_work(*cpu, spec, 4, AdamConfig{}, 0.0).optimizer_bytes, 28 * P);
  // A threshold that the gradient's norm exceeds (every step scales): 28 + 4 + 8 bytes.
  EXPECT_DOUBLE_EQ(record_step_work(*cpu, spec, 4, AdamConfig{}, 1e-12).optimizer_bytes, 40 * P);
  EXPECT_GT(record_step_work(*cpu, spec, 4, AdamConfig{}, 0.0).elementwise_bytes, 0.0);
  // ZeRO-1: a rank clips and updates its slice only (the last of 3 ranks: the largest).
  const Slice last = slice_of(ParameterLayout(spec).total_size(), 2, 3);
  const double S = static_cast<double>(last.count);
  EXPECT_DOUBLE_EQ(record_step_work(*cpu, spec, 4, AdamConfig{}, 1e-12, last).optimizer_bytes,
                   40 * S);
}

// A scripted clock: each call returns the next time.
StepTimer::Clock script(std::vector<double> times) {
  auto t = std::make_shared<std::vector<double>>(std::move(times));
  auto i = std::make_shared<size_t>(0);
  return [t, i] { return (*t)[(*i)++]; };
}

TEST(StepTimer, SequentialPhasesHideNothing) {
  // start 0; data 1-2; forward 2-5; backward 5-9; optimizer 9.5-10; end 11.
  StepTimer timer(nullptr, script({0, 1, 2, 2, 5, 5, 9, 9.5, 10, 11}));
  timer.start_step();
  timer.begin(Phase::DataWait);
  timer.end(Phase::DataWait);
  timer.begin(Phase::Forward);
  timer.end(Phase::Forward);
  timer.begin(Phase::Backward);
  timer.end(Phase::Backward);
  timer.begin(Phase::Optimizer);
  timer.end(Phase::Optimizer);
  timer.end_step();
  const PhaseTotals& t = timer.totals();
  EXPECT_EQ(t.steps, 1);
  EXPECT_DOUBLE_EQ(t.step_seconds, 11);
  EXPECT_DOUBLE_EQ(t.phase(Phase::DataWait), 1);
  EXPECT_DOUBLE_EQ(t.phase(Phase::Forward), 3);
  EXPECT_DOUBLE_EQ(t.phase(Phase::Backward), 4);
  EXPECT_DOUBLE_EQ(t.phase(Phase::Optimizer), 0.5);
  EXPECT_DOUBLE_EQ(t.hidden_seconds, 0);
  EXPECT_DOUBLE_EQ(t.other_seconds(), 11 - 8.5);  // 0-1, 9-9.5, 10-11
}

TEST(StepTimer, OverlapIsHidden) {
  // backward 0-10, all-reduce 4-12, optimizer 12-13: 6 of the all-reduce's 8 s run under the
  // backward pass.
  StepTimer timer(nullptr, script({0, 0, 4, 10, 12, 12, 13, 13}));
  timer.start_step();
  timer.begin(Phase::Backward);
  timer.begin(Phase::AllReduce);
  timer.end(Phase::Backward);
  timer.end(Phase::AllReduce);
  timer.begin(Phase::Optimizer);
  timer.end(Phase::Optimizer);
  timer.end_step();
  const PhaseTotals& t = timer.totals();
  EXPECT_DOUBLE_EQ(t.hidden_seconds, 6);
  EXPECT_DOUBLE_EQ(t.other_seconds(), 0);
  EXPECT_DOUBLE_EQ(t.phase(Phase::AllReduce), 8);
}

TEST(AllReduceSweep, NcclTestsFigures) {
  // 8 MiB in 2 ms: algbw = bytes / time; busbw = algbw 2(n-1)/n.
  const size_t bytes = size_t{8} << 20;
  for (int n : {2, 3, 4, 8}) {
    const SweepRow r = make_sweep_row(bytes, n, 2e-3, 1.5e-3, true);
    EXPECT_DOUBLE_EQ(r.algbw_GBps, 8388608 / 2e-3 / 1e9);
    EXPECT_DOUBLE_EQ(r.busbw_GBps, r.algbw_GBps * 2.0 * (n - 1) / n);
  }
  EXPECT_DOUBLE_EQ(allreduce_bus_factor(4), 1.5);
  EXPECT_DOUBLE_EQ(allreduce_bus_factor(1), 1.0);  // one rank: busbw reports algbw
  std::string text = "64K";
  EXPECT_EQ(parse_byte_count(text), "");
  EXPECT_EQ(text, "65536");
  text = "3X";
  EXPECT_NE(parse_byte_count(text), "");
}

// One rank's sweep through the CPU backend: every size summed right, sizes min..max by factor.
TEST(AllReduceSweep, SingleProcessRows) {
  auto comm = make_single_process_communicator();
  auto cpu = make_cpu_backend();
  SweepOptions o;
  o.min_bytes = 4;
  o.max_bytes = 4096;
  o.factor = 4;
  o.iters = 2;
  o.warmup = 1;
  const std::vector<SweepRow> rows = sweep_allreduce(*comm, *cpu, o);
  ASSERT_EQ(rows.size(), 6u);  // 4, 16, 64, 256, 1024, 4096
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i].bytes, size_t{4} << (2 * i));
    EXPECT_TRUE(rows[i].correct);
  }
}

}  // namespace
}  // namespace elbo
