// The set-up `elbo eval` and `elbo encode` share, and the scores of one chunk of samples.
#include "launch/scoring.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <span>

#include "core/cuda/cuda_backend.h"
#include "core/error.h"
#include "core/iwae.h"
#include "io/location.h"
#include "launch/device_plan.h"
#include "launch/error_report.h"
#include "launch/watchdog.h"

namespace elbo {
namespace {

// Dynamic binarization as the trainer's evaluation applies it (counter word c2 = 0), so that a
// checkpoint's neg_elbo here is the test_neg_elbo its run reported.
void binarize_rows(float* x, std::span<const uint32_t> ids, int64_t D, RngKey key) {
  for (size_t b = 0; b < ids.size(); ++b) {
    float* row = x + b * static_cast<size_t>(D);
    for (int64_t j0 = 0; j0 < D; j0 += 4) {
      const Philox4 d = philox_draw(key, static_cast<uint32_t>(j0 >> 2), ids[b], 0,
                                    RngStream::Binarize);
      for (int64_t k = 0; k < 4 && j0 + k < D; ++k)
        row[j0 + k] = uniform_open01(d.v[k]) < row[j0 + k] ? 1.0f : 0.0f;
    }
  }
}

// The checkpoint's model, conv models included (their sample shape is in the header).
ModelSpec spec_of(const Config& cfg, const CheckpointHeader& header,
                  const std::string& checkpoint) {
  return model_spec(cfg, header.sample_shape, checkpoint + ":/config");
}

}  // namespace

ScoringJob::ScoringJob(const ScoringOptions& options) : options_(options) {
  if (options.batch <= 0)
    throw_bad_input("--batch must be positive, got " + std::to_string(options.batch) +
                    " (command line)");
  if (options.threads <= 0)
    throw_bad_input("--threads must be positive, got " + std::to_string(options.threads) +
                    " (command line)");
  if (options.iw_samples < 0)
    throw_bad_input("--iw-samples must be positive, got " + std::to_string(options.iw_samples) +
                    " (command line)");
  header_ = read_checkpoint_header(options.checkpoint);
  std::vector<std::string> overrides;
  if (!options.device.empty()) overrides.push_back("device=" + options.device);
  cfg_ = parse_config(header_.config_yaml, options.checkpoint + ":/config", overrides);
  data_path_ = options.data.empty() ? cfg_.data.test : options.data;
  if (data_path_.empty())
    throw_bad_input("no data to score: give --data, the checkpoint's config has no data.test" +
                    at(options.checkpoint));
  // CUDA is asked before MPI starts, and this rank's GPU made current (see train.cpp).
  if (cuda_backend_built() && cfg_.device != DeviceChoice::Cpu) {
    const CudaProbe probe = cuda_probe();
    cuda_devices_ = probe.devices;
    cuda_problem_ = probe.problem;
    if (probe.devices > 0)
      cuda_use_device(device_for_local_rank(
          launcher_local_rank([](const char* name) { return std::getenv(name); }), probe.devices));
  }
}

ScoringJob::~ScoringJob() = default;

int ScoringJob::run(const std::function<void(ScoringJob&, Communicator&)>& body) {
  const bool mpi = launched_by_mpi() && mpi_available();
  auto comm = watched(mpi ? make_mpi_communicator() : make_single_process_communicator(),
                      cfg_.distributed.timeout_s);
  if (comm->size() == 1 && launched_by_mpi())
    throw_bad_input("started as one of several MPI ranks, but this build has no MPI (configure "
                    "with -DELBO_MPI=ON) (command line)");
  if (comm->size() == 1) {
    open(*comm);
    body(*this, *comm);
    return 0;
  }
  // An error on one rank must end all of them: the others would wait in a collective for ever.
  try {
    open(*comm);
    body(*this, *comm);
  } catch (...) {
    const ErrorReport report = report_of(std::current_exception());
    std::fprintf(stderr, "elbo: error: rank %d: %s\n", comm->rank(), report.message.c_str());
    comm->abort(report.exit_code);
  }
  return 0;
}

void ScoringJob::open(Communicator& comm) {
  data_ = std::make_unique<ShardedDataset>(ShardedDataset::open(data_path_));
  if (data_->features() != header_.input_dim)
    throw_bad_input("the data's samples have " + std::to_string(data_->features()) +
                    " values, shape " + shape_str(data_->sample_shape()) + "; the model of " +
                    options_.checkpoint + " takes " + std::to_string(header_.input_dim) +
                    at(data_path_));
  if (cfg_.model.likelihood == Likelihood::Bernoulli)
    data_->require_unit_interval("model.likelihood bernoulli");
  const ParameterLayout layout(spec_of(cfg_, header_, options_.checkpoint));
  ck_ = read_checkpoint(options_.checkpoint, layout);
  seed_ = options_.seed >= 0 ? static_cast<uint64_t>(options_.seed) : ck_.state.seed;

  const DevicePlan device = plan_device(cfg_.device, cuda_backend_built(), cuda_devices_,
                                        comm.local_rank(), comm.local_size(),
                                        options_.device.empty() ? options_.checkpoint + ":/config"
                                                                : "--device " + options_.device,
                                        cuda_problem_);
  if (!device.warning.empty() && comm.rank() == 0)
    std::fprintf(stderr, "elbo: warning: %s; scoring on the CPU\n", device.warning.c_str());
  // A fixed number of BLAS threads per rank, not a share of the node's cores as in training:
  // how a product is split between threads changes its last bits, and with the same threads on
  // every rank a chunk's figures are the same bits at any world size.
  configure_cpu_thread(options_.threads);
  backend_ = device.cuda ? make_cuda_backend(device.index) : make_cpu_backend();
  device_name_ = device.cuda ? "cuda:" + std::to_string(device.index) : "cpu";
  const int B = options_.batch;
  vae_ = std::make_unique<Vae>(*backend_, spec_of(cfg_, header_, options_.checkpoint), B,
                               seed_);
  backend_->upload(vae_->params(), ck_.params.data(), ck_.params.size());
  const size_t D = static_cast<size_t>(header_.input_dim), L = static_cast<size_t>(latent());
  x_ = DeviceArray(*backend_, static_cast<size_t>(B) * D);
  eps_ = DeviceArray(*backend_, static_cast<size_t>(B) * L);
}

void ScoringJob::score(int64_t first, int64_t n, ScoredChunk& out) {
  ELBO_CHECK(n > 0 && n <= options_.batch, "a chunk larger than the scoring batch");
  const size_t rows = static_cast<size_t>(n), D = static_cast<size_t>(header_.input_dim);
  const int L = latent();
  const size_t lat = static_cast<size_t>(L);
  const RngKey key = rng_key(seed_);
  rows_.resize(rows);
  ids_.resize(rows);
  for (size_t i = 0; i < rows; ++i) {
    rows_[i] = first + static_cast<int64_t>(i);
    ids_[i] = static_cast<uint32_t>(rows_[i]);
  }
  host_x_.resize(rows * D);
  data_->read_rows(rows_, host_x_.data());
  if (cfg_.data.binarize == Binarize::Dynamic) binarize_rows(host_x_.data(), ids_, D, key);
  backend_->upload(x_.data(), host_x_.data(), host_x_.size());

  // The negative ELBO with the evaluation noise of `elbo train`'s test figures.
  backend_->fill_noise(eps_.data(), ids_, L, key, 0, RngStream::EvalNoise);
  vae_->forward(x_.data(), eps_.data(), static_cast<int>(n));
  host_head_.resize(rows * 2 * lat);
  host_recon_.resize(rows);
  host_kl_.resize(rows);
  backend_->download(host_head_.data(), vae_->posterior(), host_head_.size());
  backend_->download(host_recon_.data(), vae_->recon_per_sample(), rows);
  backend_->download(host_kl_.data(), vae_->kl_per_sample(), rows);
  out.first = first;
  out.n = n;
  out.mu.resize(rows * lat);
  out.logvar.resize(rows * lat);
  out.recon.assign(host_recon_.begin(), host_recon_.end());
  out.kl.assign(host_kl_.begin(), host_kl_.end());
  for (size_t i = 0; i < rows; ++i) {
    std::copy_n(host_head_.data() + i * 2 * lat, lat, out.mu.data() + i * lat);
    std::copy_n(host_head_.data() + i * 2 * lat + lat, lat, out.logvar.data() + i * lat);
  }

  out.iw_log_px.clear();
  if (options_.iw_samples == 0) return;
  out.iw_log_px.resize(rows);
  importance_weighted_log_px(
      *vae_, *backend_, x_.data(), static_cast<int>(n), options_.iw_samples,
      [&](int k) {
        backend_->fill_noise(eps_.data(), ids_, L, key, static_cast<uint32_t>(k),
                             RngStream::ImportanceNoise);
        return static_cast<const float*>(eps_.data());
      },
      out.iw_log_px.data());
}

}  // namespace elbo
