// `elbo train`: the run directory and resume around the shared set-up (launch/setup.h) and the
// training loop (launch/trainer.cpp).
#include "launch/train.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>

#include "core/error.h"
#include "io/checkpoint.h"
#include "io/config.h"
#include "io/metrics.h"
#include "launch/run_directory.h"
#include "launch/setup.h"
#include "launch/stop_signal.h"
#include "launch/trainer.h"

namespace elbo {
namespace fs = std::filesystem;
namespace {

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// Everything but the model shape may change between a checkpoint and the run that continues it;
// these would silently turn the continuation into another computation.
void check_resumable(const Config& cfg, const CheckpointData& ck, const std::string& ck_path) {
  const Config old = parse_config(ck.config_yaml, ck_path + ":/config");
  for (const std::string key :
       {"seed", "train.batch_size", "model.encoder", "model.latent", "model.decoder",
        "model.activation", "model.likelihood", "train.optimizer.name"}) {
    const std::string was = config_value_text(old, key), now = config_value_text(cfg, key);
    if (was != now)
      throw_bad_input("cannot resume: " + key + " was " + was + " in the checkpoint, is " + now +
                      " now (" + ck_path + ")");
  }
}

void train_with(const Config& cfg, const std::string& cfg_path, const std::string& resume,
                bool discard_newer, Communicator& control, const CudaProbe& probe) {
  // Everything that can fail on bad input happens before the first file is written.
  const std::unique_ptr<TrainingSetup> setup =
      set_up_training(cfg, cfg_path, control, probe, SetupOptions{!resume.empty(), true});
  Trainer* const trainer = setup->trainer.get();
  Communicator& comm = control;
  const fs::path run_dir = cfg.output.dir;
  const bool writer = comm.rank() == 0;  // rank 0 alone writes files (and reads checkpoints)
  // Rank 0 takes the run directory's lock and decides how the run starts, refusing anything that
  // would lose what the directory holds (launch/run_directory.h). A checkpoint named on the
  // command line is read and checked first, so a bad one leaves no trace.
  std::optional<RunDirectory> run;
  std::optional<CheckpointData> ck;
  if (writer) {
    std::optional<CheckpointData> named;
    if (!resume.empty() && resume != "auto") {
      named = read_checkpoint(resume, trainer->layout());
      check_resumable(cfg, *named, resume);
    }
    run.emplace(RunDirectory::open(run_dir));
    ck = run->choose_start(resume, std::move(named), discard_newer, trainer->layout());
    if (ck && resume == "auto") check_resumable(cfg, *ck, (run_dir / "checkpoints").string());
  }
  trainer->restore(ck ? &*ck : nullptr);
  MetricsWriter metrics;
  if (writer) {
    run->start(to_yaml(cfg), ck ? &*ck : nullptr, cfg.checkpoint.keep);
    metrics = MetricsWriter(run->metrics_path().string());
    const ComputePlane& compute = setup->compute;
    std::printf("elbo: device %s, communicator %s, %d rank(s), %s threads per rank, data %s\n",
                compute.device_name.c_str(), compute.data_comm->name().c_str(), comm.size(),
                compute.threads > 0 ? std::to_string(compute.threads).c_str() : "default",
                setup->cache ? "cached in memory" : "read from the shards each step");
  }
  const CheckpointDirectory not_written(run_dir / "checkpoints", cfg.checkpoint.keep);
  const CheckpointDirectory& checkpoints = writer ? run->checkpoints() : not_written;
  const auto t0 = std::chrono::steady_clock::now();
  install_stop_signal_handlers();
  trainer->run(checkpoints, metrics);
  if (writer) std::printf("elbo: done in %.1f s; run directory %s\n", seconds_since(t0), run_dir.c_str());
}

}  // namespace

int run_train(const TrainOptions& options) {
  if (options.discard_newer && (options.resume.empty() || options.resume == "auto"))
    throw_bad_input("--discard-newer goes with --resume PATH: it deletes the checkpoints of that "
                    "run past PATH's step (command line)");
  const Config cfg = load_config(options.config_path, options.overrides);
  const CudaProbe probe = probe_cuda_before_mpi(cfg);
  const std::unique_ptr<Communicator> comm = make_control_communicator(cfg);
  run_on_every_rank(*comm, [&] {
    train_with(cfg, options.config_path, options.resume, options.discard_newer, *comm, probe);
  });
  return 0;
}

}  // namespace elbo
