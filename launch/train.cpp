// `elbo train`: the set-up around the training loop (launch/trainer.cpp): communicators, device,
// data, start-up checks, the run directory, resume, and turning errors into a job-wide stop.
#include "launch/train.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "core/error.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "distributed/communicator.h"
#include "io/checkpoint.h"
#include "io/config.h"
#include "io/metrics.h"
#include "io/shards.h"
#include "core/cuda/cuda_backend.h"
#include "distributed/nccl_communicator.h"
#include "launch/device_plan.h"
#include "launch/run_directory.h"
#include "launch/trainer.h"
#include "launch/stop_signal.h"
#include "launch/watchdog.h"


namespace elbo {
namespace fs = std::filesystem;
namespace {

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}


// The control plane: MPI whenever ranks are to talk (NCCL's data plane bootstraps over it too),
// a single process otherwise.
std::unique_ptr<Communicator> make_control_communicator(CommBackend choice) {
  switch (choice) {
    case CommBackend::None: return make_single_process_communicator();
    case CommBackend::Mpi: return make_mpi_communicator();
    case CommBackend::Nccl:
      return mpi_available() ? make_mpi_communicator() : make_single_process_communicator();
    case CommBackend::Auto: break;
  }
  return launched_by_mpi() && mpi_available() ? make_mpi_communicator()
                                              : make_single_process_communicator();
}

// Several processes started by mpirun that do not talk would each train alone into the same run
// directory.
// Caching reads each row once instead of every epoch (the global shuffle sends every row to
// every rank over time, so a rank cannot cache only "its" rows). `auto` caches when the data of
// all ranks on the node takes at most half of the available memory.
bool should_cache(const ShardedDataset& d, DataCache choice, int local_ranks) {
  if (choice != DataCache::Auto) return choice == DataCache::Always;
  const double bytes = static_cast<double>(d.size()) * static_cast<double>(d.features()) *
                       (d.sample_type() == SampleType::U8 ? 1.0 : 4.0);
  double available = 1024.0 * 1024.0 * 1024.0;  // when /proc/meminfo says nothing: 1 GiB
  std::ifstream meminfo("/proc/meminfo");
  for (std::string key; meminfo >> key;) {
    double kb = 0;
    meminfo >> kb;
    if (key == "MemAvailable:") available = kb * 1024.0;
    meminfo.ignore(64, '\n');
  }
  return bytes * local_ranks <= 0.5 * available;
}

void refuse_isolated_ranks(const Communicator& comm, const std::string& cfg_path) {
  if (comm.size() == 1 && launched_by_mpi())
    throw_bad_input(std::string("started as one of several MPI ranks, but ") +
                    (mpi_available() ? "distributed.backend is none"
                                     : "this build has no MPI (configure with -DELBO_MPI=ON)") +
                    " (" + cfg_path + ")");
}

// Every rank must hold the same config, model and data shape, or the collectives would mismatch.
// Each rank writes its figures into its own slot; one sum gives everyone the whole table.
void check_ranks_agree(Communicator& comm, const Config& cfg, const ShardedDataset& train,
                       const ShardedDataset* test, size_t num_params) {
  if (comm.size() == 1) return;
  const std::string yaml = to_yaml(cfg);
  uint32_t hash = 2166136261u;  // FNV-1a, 32 bits so that a double holds it exactly
  for (unsigned char c : yaml) hash = (hash ^ c) * 16777619u;
  constexpr int K = 5;
  const double mine[K] = {static_cast<double>(hash), static_cast<double>(num_params),
                          static_cast<double>(train.features()), static_cast<double>(train.size()),
                          test ? static_cast<double>(test->size()) : -1.0};
  const char* names[K] = {"config", "parameter count", "sample size", "training set size",
                          "test set size"};
  std::vector<double> table(K * static_cast<size_t>(comm.size()), 0.0);
  std::copy(mine, mine + K, table.begin() + K * comm.rank());
  comm.allreduce_sum(table.data(), table.size());
  for (int r = 1; r < comm.size(); ++r)
    for (int k = 0; k < K; ++k)
      if (table[K * static_cast<size_t>(r) + k] != table[k])
        throw_bad_input(std::string("ranks disagree on the ") + names[k] + " (rank " +
                        std::to_string(r) + " differs from rank 0)");
}

// Everything but the model shape may change between a checkpoint and the run that continues it;
// these would silently turn the continuation into another computation.
void check_resumable(const Config& cfg, const CheckpointData& ck, const std::string& ck_path) {
  const Config old = parse_config(ck.config_yaml, ck_path + ":/config");
  auto differs = [&](const char* key, const std::string& was, const std::string& now) {
    if (was != now)
      throw_bad_input("cannot resume: " + std::string(key) + " was " + was + " in the checkpoint, is " +
                      now + " now (" + ck_path + ")");
  };
  differs("seed", std::to_string(old.seed), std::to_string(cfg.seed));
  differs("train.batch_size", std::to_string(old.train.batch_size), std::to_string(cfg.train.batch_size));
  auto model = [](const ModelConfig& m) {
    std::string text = "encoder [";
    for (int w : m.encoder) text += std::to_string(w) + " ";
    text += "] latent " + std::to_string(m.latent) + " decoder [";
    for (int w : m.decoder) text += std::to_string(w) + " ";
    return text + "] activation " + std::to_string(static_cast<int>(m.activation)) +
           " likelihood " + std::to_string(static_cast<int>(m.likelihood));
  };
  differs("the model", model(old.model), model(cfg.model));
  differs("train.optimizer.name", old.train.optimizer.name, cfg.train.optimizer.name);
}

void train_with(const Config& cfg, const std::string& cfg_path, const std::string& resume,
                Communicator& control) {
  refuse_isolated_ranks(control, cfg_path);
  const DevicePlan device = plan_device(cfg.device, cuda_backend_built(), cuda_device_count(),
                                        control.local_rank(), control.local_size(), cfg_path);
  const DataPlane plane = plan_data_plane(cfg.distributed.backend, device.cuda, control.size(),
                                          cfg_path);
  Communicator& comm = control;  // until the data plane is up, the control plane does it all
  // Validate all inputs before touching the run directory.
  ShardedDataset train = ShardedDataset::open(cfg.data.train);
  std::unique_ptr<ShardedDataset> test;
  if (!cfg.data.test.empty()) {
    test = std::make_unique<ShardedDataset>(ShardedDataset::open(cfg.data.test));
    if (test->sample_shape() != train.sample_shape())
      throw_bad_input("test data has a different sample shape than the training data (" +
                      cfg.data.test + ")");
  }
  if (train.size() < cfg.train.batch_size)
    throw_bad_input("train.batch_size " + std::to_string(cfg.train.batch_size) +
                    " is larger than the training data's " + std::to_string(train.size()) +
                    " samples (" + cfg.data.train + ")");
  if (cfg.train.batch_size < comm.size())
    throw_bad_input("train.batch_size " + std::to_string(cfg.train.batch_size) +
                    " gives some of the " + std::to_string(comm.size()) + " ranks no rows (" +
                    cfg_path + ")");
  const fs::path run_dir = cfg.output.dir;
  const bool writer = comm.rank() == 0;  // rank 0 alone writes files (and reads checkpoints)
  if (writer && resume.empty()) check_run_directory_is_free(run_dir);

  // Ranks on one node share its cores: by default each gets its share of BLAS threads.
  const int threads = cfg.train.threads > 0 || comm.local_size() == 1
                          ? cfg.train.threads
                          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) /
                                            comm.local_size());
  configure_cpu_thread(threads);
  auto backend = device.cuda ? make_cuda_backend(device.index) : make_cpu_backend();
  const std::string device_name =
      device.cuda ? "cuda:" + std::to_string(device.index) + " (" + cuda_device_name(device.index) + ")"
                  : "cpu";
  // NCCL moves the gradients between GPUs, ordered on the backend's stream; MPI stays the
  // control plane (metrics, agreement, the NCCL id).
  std::unique_ptr<Communicator> nccl;
  if (plane == DataPlane::Nccl)
    nccl = make_nccl_communicator(control, cuda_stream(*backend), cfg.distributed.timeout_s);
  Communicator& data_comm = nccl ? *nccl : control;
  const bool cache = should_cache(train, cfg.data.cache, comm.local_size());
  if (cache) {
    train.cache_in_memory();
    if (test) test->cache_in_memory();
  }
  for (const ShardedDataset* d : {&train, test.get()}) {
    // Value ranges are known only for cached data; uint8 data is in [0, 1] by construction.
    if (d && d->cached() && cfg.model.likelihood == Likelihood::Bernoulli &&
        (d->min_value() < 0.0f || d->max_value() > 1.0f))
      throw_bad_input("model.likelihood bernoulli needs data in [0, 1], found values in [" +
                      std::to_string(d->min_value()) + ", " + std::to_string(d->max_value()) +
                      "] (" + (d == &train ? cfg.data.train : cfg.data.test) + ")");
  }

  // Everything that can fail on bad input happens before the first file is written.
  const std::unique_ptr<Trainer> trainer = make_trainer(cfg, data_comm, *backend, train, test.get());
  check_ranks_agree(comm, cfg, train, test.get(), trainer->num_params());
  const CheckpointDirectory checkpoints(run_dir / "checkpoints", cfg.checkpoint.keep);
  std::optional<CheckpointData> ck;
  if (writer && !resume.empty()) {
    const std::string from = resume == "auto" ? checkpoints.last().string() : resume;
    ck = resume == "auto" ? checkpoints.load_newest(trainer->layout())
                          : read_checkpoint(resume, trainer->layout());
    if (ck) check_resumable(cfg, *ck, from);
  }
  trainer->restore(ck ? &*ck : nullptr);
  MetricsWriter metrics;
  if (writer) {
    std::error_code ec;
    fs::create_directories(run_dir / "checkpoints", ec);
    if (ec) throw_bad_input("cannot create the run directory: " + ec.message() + " (" +
                            run_dir.string() + ")");
    write_text_file(run_dir / "config.yaml", to_yaml(cfg));
    if (ck) {  // what came after the checkpoint never happened, as far as this run is concerned
      checkpoints.prepare_for_resume_at(ck->state.step);
      trim_metrics_after(run_dir / "metrics.jsonl", ck->state.step);
    }
    metrics = MetricsWriter((run_dir / "metrics.jsonl").string());
    std::printf("elbo: device %s, communicator %s, %d rank(s), %s threads per rank, data %s\n",
                device_name.c_str(), data_comm.name().c_str(), comm.size(),
                threads > 0 ? std::to_string(threads).c_str() : "default",
                cache ? "cached in memory" : "read from the shards each step");
  }
  const auto t0 = std::chrono::steady_clock::now();
  install_stop_signal_handlers();
  trainer->run(checkpoints, metrics);
  if (writer) std::printf("elbo: done in %.1f s; run directory %s\n", seconds_since(t0), run_dir.c_str());
}

}  // namespace

int run_train(const TrainOptions& options) {
  const Config cfg = load_config(options.config_path, options.overrides);
  auto comm = watched(make_control_communicator(cfg.distributed.backend), cfg.distributed.timeout_s);
  if (comm->size() == 1) {
    train_with(cfg, options.config_path, options.resume, *comm);
    return 0;
  }
  // With several ranks an error on one must end all of them: the others would otherwise wait in
  // the next collective for ever.
  try {
    train_with(cfg, options.config_path, options.resume, *comm);
  } catch (const Error& e) {
    std::fprintf(stderr, "elbo: error: rank %d: %s\n", comm->rank(), e.what());
    comm->abort(e.exit_code());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "elbo: error: rank %d: %s\n", comm->rank(), e.what());
    comm->abort(1);
  }
  return 0;
}

}  // namespace elbo
