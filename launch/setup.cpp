// The set-up that `elbo train` and `elbo bench` share (launch/setup.h): communicators, device, data,
// the start-up checks and the trainer.
#include "launch/setup.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <limits>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/model.h"
#include "distributed/nccl_communicator.h"
#include "io/memory.h"
#include "launch/error_report.h"
#include "launch/watchdog.h"

namespace elbo {
namespace fs = std::filesystem;
namespace {

double data_bytes(const ShardedDataset& d) {
  return static_cast<double>(d.size()) * static_cast<double>(d.features()) *
         (d.sample_type() == SampleType::U8 ? 1.0 : 4.0);
}

// The host memory one rank needs to train, the data cache aside. On the CPU: the parameters, their
// gradients and two Adam moments, every layer's output and its gradient for `rows` rows, the
// latent and input buffers. On any device: a checkpoint's three copies being saved (and those of
// the one resumed from), the loader's batches and the epoch's permutation of the training rows.
struct TrainingMemory {
  size_t parameters = 0;
  double bytes = 0;
};
TrainingMemory training_memory(const ModelSpec& spec, int rows, bool host_backend, bool resuming,
                               int64_t train_rows) {
  const ParameterLayout layout(spec);
  const double P = static_cast<double>(layout.total_size()), B = rows;
  double outputs = 0;
  for (const LinearLayer& l : layout.layers()) outputs += l.out;
  double col = 0, maps = 0;  // a conv model's workspace, sized for its largest layer (core/model.h)
  for (const auto* convs : {&layout.encoder_convs(), &layout.decoder_convs()})
    for (const ConvLayer& l : *convs) {
      outputs += static_cast<double>(l.output_size());
      col = std::max(col, static_cast<double>(l.shape.col_rows()) * l.shape.grid());
      maps = std::max(maps, static_cast<double>(l.maps) * l.shape.grid());
    }
  double floats = 3 * P * (resuming ? 2 : 1) + 3 * B * spec.input_dim;
  if (host_backend)
    floats += 4 * P + 2 * B * outputs + 3 * B * spec.latent + 2 * B + 3 * B * spec.input_dim +
              B * (col + maps);
  return {layout.total_size(), 4 * floats + 8 * static_cast<double>(train_rows)};
}

// Refuses a model or a data cache that the node's memory cannot hold, before any of it is
// allocated (std::bad_alloc, or the OOM killer, would end the run instead), and decides whether to
// cache: caching reads each row once instead of every epoch (the global shuffle sends every row to
// every rank over time, so a rank cannot cache only "its" rows). `auto` caches when the training
// data of all ranks on the node takes at most half of the available memory and fits beside what
// training needs.
bool plan_memory(const Config& cfg, const ModelSpec& spec, int rows, bool host_backend,
                 bool resuming, const ShardedDataset& train, const ShardedDataset* test,
                 int local_ranks, const std::string& cfg_path) {
  const double available = available_memory_bytes(), per_rank = available / local_ranks;
  const TrainingMemory need = training_memory(spec, rows, host_backend, resuming, train.size());
  const std::string each =
      local_ranks > 1 ? " for each of the " + std::to_string(local_ranks) + " ranks on this node"
                      : "";
  if (need.bytes > per_rank) {
    const std::string what = std::to_string(need.parameters) +
                             " float32 parameters, with their gradients, Adam moments and "
                             "checkpoint copies, and the activations of " +
                             std::to_string(rows) + " rows a step";
    throw_bad_input("the model needs " + bytes_text(need.bytes) + " of memory to train" + each +
                    " (" + what + "), more than the " + bytes_text(available) +
                    " available; choose a smaller model.encoder, model.decoder, model.latent or "
                    "train.batch_size (" +
                    cfg_path + ")");
  }
  const double data = data_bytes(train) + (test ? data_bytes(*test) : 0.0);
  switch (cfg.data.cache) {
    case DataCache::Never:
      return false;
    case DataCache::Always:
      if (need.bytes + data > per_rank)
        throw_bad_input("data.cache always: the data takes " + bytes_text(data) + " in memory" +
                        each + ", and training " + bytes_text(need.bytes) + " more, but " +
                        bytes_text(available) + " is available; use data.cache: auto or never (" +
                        cfg.data.train + ")");
      return true;
    case DataCache::Auto:
      break;
  }
  return data_bytes(train) * local_ranks <= 0.5 * available && need.bytes + data <= per_rank;
}

// output.dir is checked before anything is written, so that a path that cannot work is one clear
// error rather than a bare "filesystem error" (or a failure after training): every component and
// the whole path short enough for the files the run puts there, and the nearest part that exists
// a writable directory.
void check_output_dir_can_be_used(const fs::path& dir) {
  const auto refuse = [&dir](const std::string& why) {
    throw_bad_input("cannot create the run directory: " + why + " (" + dir.string() + ")");
  };
  // The nearest part of the path that exists (a name too long to look up does not).
  fs::path existing = dir;
  std::error_code ec;
  fs::file_status st = fs::status(existing, ec);
  while (!fs::exists(st) && existing.has_relative_path()) {
    existing = existing.parent_path();
    st = fs::status(existing.empty() ? "." : existing, ec);
  }
  const std::string shown = existing.empty() ? "." : existing.string();
  const long name_max = pathconf(shown.c_str(), _PC_NAME_MAX);
  for (const fs::path& part : dir)
    if (name_max > 0 && part.string().size() > static_cast<size_t>(name_max))
      refuse("a path component is " + std::to_string(part.string().size()) +
             " characters long; the file system allows at most " + std::to_string(name_max));
  // The longest name the run writes below it: checkpoints/step-NNNNNNNNN.h5.tmp.<pid>.
  constexpr size_t kLongestInside = sizeof("/checkpoints/step-000000000.h5.tmp.4294967295") - 1;
  const long path_max = pathconf(shown.c_str(), _PC_PATH_MAX);
  const size_t max_path = path_max > 0 ? static_cast<size_t>(path_max) : 4096;
  if (dir.string().size() + kLongestInside >= max_path)
    refuse("the path is " + std::to_string(dir.string().size()) +
           " characters long; with the files the run writes in it, at most " +
           std::to_string(max_path - 1 - kLongestInside) + " are possible");
  if (!fs::exists(st)) refuse(ec.message() + " ('" + shown + "')");
  if (!fs::is_directory(st))
    refuse(existing == dir ? std::string("it exists and is not a directory")
                           : "'" + shown + "' is not a directory");
  if (::access(shown.c_str(), W_OK | X_OK) != 0)
    refuse(std::string(std::strerror(errno)) + " ('" + shown + "')");
}

// Several processes started by mpirun that do not talk would each train alone into the same run
// directory.
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
  constexpr int K = 5;
  const double mine[K] = {table_hash(yaml), static_cast<double>(num_params),
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

std::string host_name() {
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0) return "?";
  return name;
}

// NCCL refuses two ranks on one GPU, late and obscurely. A launcher that gives each task its own
// GPU shows it as device 0 in every rank, so the index alone cannot tell sharing from not; the
// PCI bus id on a host can. Each rank writes its GPU's identity (negative on the CPU) into its
// slot; one sum gives every rank the whole table, so all of them stop with the same message. The
// device kind must agree too: the data plane and the training loop's collectives depend on it.
void check_distinct_gpus(Communicator& comm, const DevicePlan& device) {
  if (comm.size() == 1) return;
  const std::string host = host_name();
  const std::string bus = device.cuda ? cuda_pci_bus_id(device.index) : "";
  std::vector<double> table(static_cast<size_t>(comm.size()), 0.0);
  table[static_cast<size_t>(comm.rank())] = device.cuda ? gpu_identity(host, bus) : -1.0;
  comm.allreduce_sum(table.data(), table.size());
  const bool gpu0 = table[0] >= 0;
  for (int r = 1; r < comm.size(); ++r)
    if ((table[static_cast<size_t>(r)] >= 0) != gpu0)
      throw_bad_input("ranks disagree on the device: rank " + std::to_string(gpu0 ? r : 0) +
                      " trains on the CPU, rank " + std::to_string(gpu0 ? 0 : r) +
                      " on a GPU (give every rank a GPU, or set device: cpu)");
  const std::optional<RankPair> shared = first_duplicate(table);
  if (!shared) return;
  // Only the two ranks know which GPU: the first of them tells the others.
  char gpu[320] = {};
  if (comm.rank() == shared->first)
    std::snprintf(gpu, sizeof gpu, "%s on host %s", bus.c_str(), host.c_str());
  comm.broadcast_bytes(gpu, sizeof gpu, shared->first);
  gpu[sizeof gpu - 1] = '\0';
  throw_bad_input("ranks " + std::to_string(shared->first) + " and " +
                  std::to_string(shared->second) + " share the GPU " + gpu +
                  ": give each rank its own GPU (CUDA_VISIBLE_DEVICES) or start fewer ranks per "
                  "node");
}

}  // namespace

// What CUDA shows this process, asked only when the config may train on a GPU. With a device
// visible, this rank's GPU is made current now, before MPI starts: a CUDA-aware MPI opens its
// context on the current device when it initialises, which would otherwise be GPU 0 in every
// rank. The launcher's local rank numbers a node's ranks in world-rank order, as MPI's node-local
// rank (which plan_device uses later) does, so both pick the same device.
CudaProbe probe_cuda_before_mpi(const Config& cfg) {
  if (!cuda_backend_built() || cfg.device == DeviceChoice::Cpu) return CudaProbe{};
  CudaProbe probe = cuda_probe();
  if (probe.devices > 0) {
    const int local_rank = launcher_local_rank([](const char* name) { return std::getenv(name); });
    cuda_use_device(device_for_local_rank(local_rank, probe.devices));
  }
  return probe;
}

std::unique_ptr<Communicator> make_control_communicator(const Config& cfg) {
  const auto make = [](CommBackend choice) {
    switch (choice) {
      case CommBackend::None: return make_single_process_communicator();
      case CommBackend::Mpi: return make_mpi_communicator();
      case CommBackend::Nccl:
        return mpi_available() ? make_mpi_communicator() : make_single_process_communicator();
      case CommBackend::Auto: break;
    }
    return launched_by_mpi() && mpi_available() ? make_mpi_communicator()
                                                : make_single_process_communicator();
  };
  return watched(make(cfg.distributed.backend), cfg.distributed.timeout_s);
}

void run_on_every_rank(Communicator& control, const std::function<void()>& body) {
  if (control.size() == 1) {
    body();
    return;
  }
  try {
    body();
  } catch (...) {
    const ErrorReport report = report_of(std::current_exception());
    std::fprintf(stderr, "elbo: error: rank %d: %s\n", control.rank(), report.message.c_str());
    control.abort(report.exit_code);
  }
}

ComputePlane plan_compute(const Config& cfg, const std::string& cfg_path, Communicator& control,
                          const CudaProbe& probe) {
  refuse_isolated_ranks(control, cfg_path);
  ComputePlane plane;
  plane.device = plan_device(cfg.device, cuda_backend_built(), probe.devices, control.local_rank(),
                             control.local_size(), cfg_path, probe.problem);
  if (!plane.device.warning.empty() && control.rank() == 0)
    std::fprintf(stderr, "elbo: warning: %s; training on the CPU\n", plane.device.warning.c_str());
  check_distinct_gpus(control, plane.device);
  plane.data_plane = plan_data_plane(cfg.distributed.backend, plane.device.cuda, control.size(),
                                     cfg_path);
  return plane;
}

void start_compute(ComputePlane& plane, const Config& cfg, Communicator& control) {
  // Ranks on one node share its cores: by default each gets its share of BLAS threads.
  plane.threads = cfg.train.threads > 0 || control.local_size() == 1
                      ? cfg.train.threads
                      : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) /
                                        control.local_size());
  configure_cpu_thread(plane.threads);
  const DevicePlan& device = plane.device;
  plane.backend = device.cuda ? make_cuda_backend(device.index) : make_cpu_backend();
  plane.device_name = device.cuda ? "cuda:" + std::to_string(device.index) + " (" +
                                        cuda_device_name(device.index) + ")"
                                  : "cpu";
  // NCCL moves the gradients between GPUs, ordered on the backend's stream; MPI stays the
  // control plane (metrics, agreement, the NCCL id).
  if (plane.data_plane == DataPlane::Nccl)
    plane.nccl = make_nccl_communicator(control, cuda_stream(*plane.backend),
                                        cfg.distributed.timeout_s);
  plane.data_comm = plane.nccl ? plane.nccl.get() : &control;
}

std::unique_ptr<TrainingSetup> set_up_training(const Config& cfg, const std::string& cfg_path,
                                               Communicator& control, const CudaProbe& probe,
                                               const SetupOptions& options) {
  auto s = std::make_unique<TrainingSetup>();
  Communicator& comm = control;
  s->compute = plan_compute(cfg, cfg_path, control, probe);
  // Validate all inputs before anything is allocated or written.
  s->train = std::make_unique<ShardedDataset>(ShardedDataset::open(cfg.data.train));
  ShardedDataset& train = *s->train;
  if (!cfg.data.test.empty()) {
    s->test = std::make_unique<ShardedDataset>(ShardedDataset::open(cfg.data.test));
    if (s->test->sample_shape() != train.sample_shape())
      throw_bad_input("test data has a different sample shape than the training data (" +
                      cfg.data.test + ")");
  }
  ShardedDataset* test = s->test.get();
  if (train.features() > std::numeric_limits<int>::max())
    throw_bad_input("samples have " + std::to_string(train.features()) + " values (shape " +
                    shape_str(train.sample_shape()) + "); the model takes at most " +
                    std::to_string(std::numeric_limits<int>::max()) + " (" + cfg.data.train + ")");
  const ModelSpec spec = model_spec(cfg, train.sample_shape(), cfg.data.train);  // shape fits the model
  if (train.size() < cfg.train.batch_size)
    throw_bad_input("train.batch_size " + std::to_string(cfg.train.batch_size) +
                    " is larger than the training data's " + std::to_string(train.size()) +
                    " samples (" + cfg.data.train + ")");
  if (cfg.train.batch_size < comm.size())
    throw_bad_input("train.batch_size " + std::to_string(cfg.train.batch_size) +
                    " gives some of the " + std::to_string(comm.size()) + " ranks no rows (" +
                    cfg_path + ")");
  const bool writer = comm.rank() == 0;  // rank 0 alone writes files (and reads checkpoints)
  if (writer && options.check_output_dir) check_output_dir_can_be_used(cfg.output.dir);

  start_compute(s->compute, cfg, control);
  const bool on_host = !s->compute.device.cuda;
  const int max_rows = (cfg.train.batch_size + comm.size() - 1) / comm.size();  // a rank's share
  s->cache = plan_memory(cfg, spec, max_rows, on_host, writer && options.resuming, train, test,
                         comm.local_size(), cfg_path);
  // Rows are checked as they are read: cached ones now, the others batch by batch.
  if (cfg.model.likelihood == Likelihood::Bernoulli) {
    train.require_unit_interval("model.likelihood bernoulli");
    if (test) test->require_unit_interval("model.likelihood bernoulli");
  }
  if (s->cache) {
    train.cache_in_memory();
    if (test) test->cache_in_memory();
  }
  // The ranks agree before the trainer's first collective (distributed.shared_memory's windows).
  check_ranks_agree(comm, cfg, train, test, ParameterLayout(spec).total_size());
  s->trainer = make_trainer(cfg, *s->compute.data_comm, *s->compute.backend, train, test);
  return s;
}

}  // namespace elbo
