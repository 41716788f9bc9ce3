// `elbo bench` (launch/bench.h): the training step as training takes it, measured after a warm-up
// in several windows, then once more with each phase timed; optionally the machine's bound on
// that step, or the all-reduce sweep alone. Set-up is training's own (launch/setup.h), without
// the run directory: nothing is written.
#include "launch/bench.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "io/config.h"
#include "io/metrics.h"
#include "launch/roofline.h"
#include "launch/setup.h"
#include "launch/step_timer.h"

namespace elbo {
namespace {

// Every rank's `mine` (k values each), in rank order, on every rank: one slot per rank, one sum.
std::vector<double> gather(Communicator& comm, const std::vector<double>& mine) {
  const size_t k = mine.size();
  std::vector<double> table(k * static_cast<size_t>(comm.size()), 0.0);
  std::copy(mine.begin(), mine.end(), table.begin() + static_cast<std::ptrdiff_t>(k * comm.rank()));
  comm.allreduce_sum(table.data(), table.size());
  return table;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string json_array(const std::vector<double>& v) {
  std::string out = "[";
  char buf[32];
  for (size_t i = 0; i < v.size(); ++i) {
    std::snprintf(buf, sizeof buf, "%s%.9g", i ? ", " : "", v[i]);
    out += buf;
  }
  return out + "]";
}

double peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return 1024.0 * static_cast<double>(u.ru_maxrss);  // KiB on Linux
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  return "unknown";
}

std::string host_name() {
  char name[256] = {};
  return gethostname(name, sizeof name - 1) == 0 ? name : "?";
}

// The machine rank 0 runs on; the GPU's name when the step runs on one.
std::string machine_json(const ComputePlane& compute, Communicator& comm) {
  double nodes = comm.local_rank() == 0 ? 1.0 : 0.0;  // one local rank 0 per node
  comm.allreduce_sum(&nodes, 1);
  JsonLine m;
  m.add("host", host_name()).add("nodes", static_cast<int64_t>(nodes)).add("cpu_model", cpu_model())
      .add("cores", static_cast<int64_t>(std::thread::hardware_concurrency()))
      .add("blas", blas_description()).add("blas_threads", blas_threads());
  if (compute.device.cuda) m.add("gpu", compute.device_name);
  else m.add_json("gpu", "null");
  return m.str();
}

// Phase times per step of each rank: [step, the phases in Phase order, other, hidden], in ms.
constexpr int kBreakdownFields = kPhases + 3;
std::vector<double> breakdown_ms(const PhaseTotals& t, double seconds) {
  const double steps = static_cast<double>(std::max<int64_t>(t.steps, 1));
  std::vector<double> v{1e3 * seconds / steps};
  for (int p = 0; p < kPhases; ++p) v.push_back(1e3 * t.seconds[p] / steps);
  v.push_back(1e3 * t.other_seconds() / steps);
  v.push_back(1e3 * t.hidden_seconds / steps);
  return v;
}
std::string breakdown_json(const double* v, int64_t steps) {
  JsonLine b;
  b.add("steps", steps).add("step", v[0]);
  for (int p = 0; p < kPhases; ++p) b.add(phase_name(static_cast<Phase>(p)), v[1 + p]);
  return b.add("other", v[kPhases + 1]).add("hidden_by_overlap", v[kPhases + 2]).str();
}

void bench_steps(const Config& cfg, const BenchOptions& o, Communicator& comm,
                 const CudaProbe& probe) {
  const std::unique_ptr<TrainingSetup> setup =
      set_up_training(cfg, o.config_path, comm, probe, SetupOptions{false, false});
  Trainer& trainer = *setup->trainer;
  Backend& backend = *setup->compute.backend;
  trainer.restore(nullptr);
  trainer.run_steps(o.warmup_steps, nullptr);

  // Each window starts together on every rank and lasts as long as its slowest rank.
  const double B = cfg.train.batch_size;
  std::vector<double> rates, step_ms;
  for (int w = 0; w < o.windows; ++w) {
    comm.barrier();
    const std::vector<double> s = gather(comm, {trainer.run_steps(o.window_steps, nullptr)});
    const double slowest = *std::max_element(s.begin(), s.end());
    rates.push_back(B * o.window_steps / slowest);
    step_ms.push_back(1e3 * slowest / o.window_steps);
  }
  StepTimer timer(setup->compute.device.cuda ? &backend : nullptr);
  comm.barrier();
  const double seconds = trainer.run_steps(o.breakdown_steps, &timer);
  const std::vector<double> phases = gather(comm, breakdown_ms(timer.totals(), seconds));
  // Before --roofline's buffers: the footprint of training alone.
  const std::vector<double> rss = gather(comm, {peak_rss_bytes()});
  const std::string machine = machine_json(setup->compute, comm);

  std::string roofline;
  if (o.roofline) {
    // Every rank measures at once, as the ranks compute at once in training; rank 0's figures.
    const int rows = cfg.train.batch_size / comm.size() +
                     (comm.rank() < cfg.train.batch_size % comm.size() ? 1 : 0);
    const ModelSpec spec = model_spec(cfg, setup->train->sample_shape(), cfg.data.train);
    const int sources =
        std::string(trainer.gradient_path()) == "shared_memory" ? comm.size() : 1;
    const StepWork work = record_step_work(backend, spec, rows, adam_config(cfg),
                                           cfg.train.grad_clip, trainer.optimizer_slice(), sources);
    const Roofline r = measure_roofline(backend, !setup->compute.device.cuda, work);
    roofline = roofline_json(r, median(step_ms) / 1e3, rows);
  }
  if (comm.rank() != 0) return;

  const int n = comm.size();
  std::vector<double> mean(kBreakdownFields, 0.0);
  std::string by_rank = "[";
  for (int r = 0; r < n; ++r) {
    const double* v = phases.data() + static_cast<size_t>(r) * kBreakdownFields;
    for (int i = 0; i < kBreakdownFields; ++i) mean[i] += v[i] / n;
    by_rank += (r ? ", " : "") + breakdown_json(v, timer.totals().steps);
  }
  by_rank += "]";
  const auto [lo, hi] = std::minmax_element(rates.begin(), rates.end());
  const double mid = median(rates);
  JsonLine out;
  out.add("bench", "step").add("config", o.config_path).add("name", cfg.name)
      .add("parameters", static_cast<int64_t>(trainer.num_params()))
      .add("global_batch", cfg.train.batch_size).add("ranks", n)
      .add("device", setup->compute.device_name).add("communicator", setup->compute.data_comm->name())
      .add("gradients", std::string(trainer.gradient_path()))
      .add("threads_per_rank", setup->compute.threads).add("data_cached", setup->cache)
      .add("warmup_steps", o.warmup_steps).add("windows", o.windows)
      .add("window_steps", o.window_steps)
      .add_json("samples_per_s", JsonLine().add("median", mid).add("min", *lo).add("max", *hi)
                                     .add("spread", (*hi - *lo) / mid)
                                     .add_json("windows", json_array(rates)).str())
      .add_json("step_ms", JsonLine().add("median", median(step_ms))
                               .add("min", *std::min_element(step_ms.begin(), step_ms.end()))
                               .add("max", *std::max_element(step_ms.begin(), step_ms.end()))
                               .str())
      .add_json("breakdown_ms", breakdown_json(mean.data(), timer.totals().steps))
      .add_json("breakdown_ms_by_rank", by_rank)
      .add_json("peak_rss_bytes", json_array(rss))
      .add_json("machine", machine);
  if (!roofline.empty()) out.add_json("roofline", roofline);
  std::printf("%s\n", out.str().c_str());
}

void bench_allreduce(const Config& cfg, const std::string& cfg_path, const BenchOptions& o,
                     Communicator& control, const CudaProbe& probe) {
  ComputePlane compute = plan_compute(cfg, cfg_path, control, probe);
  start_compute(compute, cfg, control);
  Communicator& comm = *compute.data_comm;
  const std::vector<SweepRow> rows = sweep_allreduce(comm, *compute.backend, o.sweep);
  const std::string machine = machine_json(compute, control);
  if (control.rank() != 0) return;
  std::string sizes = "[";
  size_t wrong = 0;
  for (const SweepRow& r : rows) {
    sizes += (sizes.size() > 1 ? ", " : "") + sweep_row_json(r);
    wrong += !r.correct;
  }
  sizes += "]";
  std::printf("%s\n", JsonLine().add("bench", "allreduce").add("ranks", control.size())
                          .add("device", compute.device_name).add("communicator", comm.name())
                          .add("iters", o.sweep.iters).add("warmup", o.sweep.warmup)
                          .add_json("sizes", sizes).add("wrong_sizes", static_cast<int64_t>(wrong))
                          .add_json("machine", machine).str().c_str());
  if (wrong > 0)
    throw_internal(std::to_string(wrong) + " message size(s) summed wrongly", __FILE__, __LINE__);
}

}  // namespace

int run_bench(const BenchOptions& o) {
  if (o.sweep.min_bytes < sizeof(float) || o.sweep.min_bytes > o.sweep.max_bytes)
    throw_bad_input("need 4 <= --min-bytes <= --max-bytes, got " +
                    std::to_string(o.sweep.min_bytes) + " and " +
                    std::to_string(o.sweep.max_bytes) + " (command line)");
  if (o.allreduce && o.roofline)
    throw_bad_input("--allreduce and --roofline are separate runs; give one (command line)");
  if (o.config_path.empty() && !o.allreduce)
    throw_bad_input("elbo bench needs a CONFIG, as elbo train does (command line)");
  if (o.config_path.empty() && !o.overrides.empty())
    throw_bad_input("overrides need a CONFIG (command line)");
  // Without a config, --allreduce takes the defaults: device auto, distributed.backend auto.
  Config cfg;
  if (!o.config_path.empty()) cfg = load_config(o.config_path, o.overrides);
  const std::string where = o.config_path.empty() ? "command line" : o.config_path;
  const CudaProbe probe = probe_cuda_before_mpi(cfg);
  const std::unique_ptr<Communicator> comm = make_control_communicator(cfg);
  run_on_every_rank(*comm, [&] {
    if (o.allreduce) bench_allreduce(cfg, where, o, *comm, probe);
    else bench_steps(cfg, o, *comm, probe);
  });
  return 0;
}

}  // namespace elbo
