// Training steps of one model on the CPU backend, without data loading or evaluation: the
// forward/backward pass and the Adam update on a fixed random batch, timed over many steps.
// Prints one JSON line (samples per wall second and per CPU second of this process), so that a
// change to a primitive can be judged in seconds rather than by a full epoch.
//
//   conv_step_bench [--config configs/fashion_mnist_conv.yaml] [--steps 40] [--threads 1]
//                   [--col-kib N]   (the conv groups' col size; default: the backend's)
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <vector>

#include "core/backend.h"
#include "core/model.h"
#include "core/philox.h"
#include "io/config.h"

int main(int argc, char** argv) {
  CLI::App app{"conv_step_bench: CPU training steps per second of one config's model"};
  std::string config_path = "configs/fashion_mnist_conv.yaml";
  int steps = 40, threads = 1, warmup = 3;
  size_t col_kib = 0;
  app.add_option("--config", config_path, "config whose model and batch size are timed");
  app.add_option("--steps", steps, "timed steps")->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
  app.add_option("--threads", threads, "BLAS threads")->check(CLI::PositiveNumber);
  app.add_option("--col-kib", col_kib, "KiB of col per conv group (Backend::conv_col_floats)");
  CLI11_PARSE(app, argc, argv);

  const elbo::Config cfg = elbo::load_config(config_path);
  // Fashion-MNIST's shape: one grey 28 x 28 channel (conv), or 784 features (MLP).
  const std::vector<int64_t> shape = cfg.model.type == elbo::ModelType::Conv
                                         ? std::vector<int64_t>{28, 28}
                                         : std::vector<int64_t>{784};
  const elbo::ModelSpec spec = elbo::model_spec(cfg, shape, "(Fashion-MNIST shape)");
  const int B = static_cast<int>(cfg.train.batch_size);

  elbo::configure_cpu_thread(threads);
  auto be = col_kib > 0 ? elbo::make_cpu_backend(col_kib * 1024 / sizeof(float))
                        : elbo::make_cpu_backend();
  elbo::Vae vae(*be, spec, B, cfg.seed);
  std::vector<float> x(static_cast<size_t>(B) * spec.input_dim),
      eps(static_cast<size_t>(B) * spec.latent);
  const elbo::RngKey key = elbo::rng_key(7);
  for (size_t i = 0; i < x.size(); ++i)
    x[i] = elbo::uniform_open01(
        elbo::philox_draw(key, static_cast<uint32_t>(i), 0, 0, elbo::RngStream::Init).v[0]);
  for (size_t i = 0; i < eps.size(); ++i)
    eps[i] = elbo::philox_normal(key, static_cast<uint32_t>(i), 1, elbo::RngStream::Noise, 0);

  const size_t P = vae.num_params();
  std::vector<float> m(P, 0.0f), v(P, 0.0f);
  float counter = elbo::counter_storage(0), nonfinite = 0.0f;
  const elbo::AdamHyper hyper{1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, false};
  auto step = [&] {
    vae.forward_backward(x.data(), eps.data(), B, 1.0f, 1.0f / static_cast<float>(B));
    be->adam_step(vae.params(), vae.grads(), m.data(), v.data(), P, hyper, &counter, &nonfinite);
  };
  for (int s = 0; s < warmup; ++s) step();
  timespec c0{}, c1{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
  const auto t0 = std::chrono::steady_clock::now();
  for (int s = 0; s < steps; ++s) step();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
  const double cpu = static_cast<double>(c1.tv_sec - c0.tv_sec) +
                     1e-9 * static_cast<double>(c1.tv_nsec - c0.tv_nsec);
  const double samples = static_cast<double>(steps) * B;
  std::printf(
      "{\"bench\": \"conv_step\", \"config\": \"%s\", \"batch\": %d, \"steps\": %d, \"threads\": "
      "%d, "
      "\"ms_per_step\": %.2f, \"samples_per_s\": %.0f, \"samples_per_cpu_s\": %.0f, \"finite\": "
      "%s}\n",
      config_path.c_str(), B, steps, threads, 1e3 * wall / steps, samples / wall, samples / cpu,
      nonfinite == 0.0f ? "true" : "false");
  return 0;
}
