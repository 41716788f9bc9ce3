// elbo_allreduce_bench: all-reduce bandwidth through elbo's own Communicator (what training calls),
// reported as nccl-tests does (algbw, busbw), one JSON line per size; correctness checked apart.
// The sweep is distributed/allreduce_sweep.h, which `elbo bench --allreduce` runs too (with NCCL
// on GPUs); this program keeps the line format that the multi-host scripts read.
//
//   mpirun -np 4 build/allreduce_bench [--min-bytes 4] [--max-bytes 8M] [--factor 2] [--iters 20]
#include <unistd.h>

#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <memory>
#include <string>

#include "core/backend.h"
#include "core/error.h"
#include "distributed/allreduce_sweep.h"
#include "distributed/communicator.h"

namespace {

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) out += c;
  }
  return out + "\"";
}

int run(elbo::Communicator& comm, const elbo::SweepOptions& opt) {
  const auto host_memory = elbo::make_cpu_backend();
  size_t sizes = 0, wrong_sizes = 0;
  elbo::sweep_allreduce(comm, *host_memory, opt, [&](const elbo::SweepRow& r) {
    ++sizes;
    wrong_sizes += !r.correct;
    if (comm.rank() != 0) return;
    std::printf("{\"bytes\":%zu,\"count\":%zu,\"ranks\":%d,\"time_us\":%.3f,\"time_avg_us\":%.3f,"
                "\"algbw_GBps\":%.6g,\"busbw_GBps\":%.6g,\"correct\":%s}\n",
                r.bytes, r.bytes / sizeof(float), r.ranks, r.time_s * 1e6, r.time_avg_s * 1e6,
                r.algbw_GBps, r.busbw_GBps, r.correct ? "true" : "false");
    std::fflush(stdout);
  });

  double nodes = comm.local_rank() == 0 ? 1.0 : 0.0;  // one local rank 0 per node
  comm.allreduce_sum(&nodes, 1);
  if (comm.rank() == 0) {
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    std::printf("{\"host\":%s,\"ranks\":%d,\"nodes\":%.0f,\"communicator\":%s,\"sizes\":%zu,"
                "\"wrong_sizes\":%zu}\n",
                json_string(host).c_str(), comm.size(), nodes, json_string(comm.name()).c_str(),
                sizes, wrong_sizes);
    std::fflush(stdout);
  }
  return wrong_sizes == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  elbo::SweepOptions opt;
  CLI::App app{"elbo_allreduce_bench: all-reduce time and bandwidth (nccl-tests figures) through "
               "elbo's Communicator; run under mpirun for several ranks"};
  const CLI::Validator size(elbo::parse_byte_count, "BYTES");
  app.add_option("--min-bytes", opt.min_bytes, "smallest message (K/M/G suffixes)")
      ->capture_default_str()->transform(size);
  app.add_option("--max-bytes", opt.max_bytes, "largest message (K/M/G suffixes)")
      ->capture_default_str()->transform(size);
  app.add_option("--factor", opt.factor, "size multiplier between steps")
      ->capture_default_str()->check(CLI::Range(2, 1 << 20));
  app.add_option("--iters", opt.iters, "timed calls per size")
      ->capture_default_str()->check(CLI::Range(1, 1 << 30));
  app.add_option("--warmup", opt.warmup, "untimed calls per size first")
      ->capture_default_str()->check(CLI::Range(0, 1 << 30));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;  // --help, or bad input
  }
  if (opt.min_bytes < sizeof(float) || opt.min_bytes > opt.max_bytes) {
    std::fprintf(stderr, "allreduce_bench: error: need 4 <= --min-bytes <= --max-bytes\n");
    return 2;
  }

  std::unique_ptr<elbo::Communicator> comm;
  try {
    if (elbo::launched_by_mpi() && !elbo::mpi_available())
      elbo::throw_bad_input("started as one of several MPI ranks, but this build has no MPI "
                            "(configure with -DELBO_MPI=ON)");
    comm = elbo::launched_by_mpi() ? elbo::make_mpi_communicator()
                                   : elbo::make_single_process_communicator();
    return run(*comm, opt);
  } catch (const elbo::Error& e) {
    std::fprintf(stderr, "allreduce_bench: error: %s\n", e.what());
    if (comm && comm->size() > 1) comm->abort(e.exit_code());  // the other ranks wait on us
    return e.exit_code();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "allreduce_bench: error: %s\n", e.what());
    if (comm && comm->size() > 1) comm->abort(1);
    return 1;
  }
}
