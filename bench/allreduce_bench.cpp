// elbo_allreduce_bench: all-reduce bandwidth through elbo's own Communicator (what training calls),
// reported as nccl-tests does (algbw, busbw), one JSON line per size; correctness checked apart.
//
//   mpirun -np 4 build/allreduce_bench [--min-bytes 4] [--max-bytes 8M] [--factor 2] [--iters 20]
#include <unistd.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <climits>
#include <cstdio>
#include <exception>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/error.h"
#include "distributed/communicator.h"

namespace {

using elbo::Communicator;

// One collective, as an nccl-tests plug-in: its data, the call, the expected result and the
// bus-bandwidth factor. The driver below never names the collective.
struct AllReduceSum {
  // Timing data: shares of 1 that depend on the rank and sum to 1 over ranks, so values stay
  // bounded however often the in-place sum repeats.
  static void fill_timing(std::span<float> x, int rank, int n) {
    const float share = 2.0f * static_cast<float>(rank + 1) / static_cast<float>(n * (n + 1));
    std::fill(x.begin(), x.end(), share);
  }
  // Check data: small integers (exact in float) that vary with the rank and the position.
  static float check_value(size_t i, int rank) {
    return static_cast<float>(rank + 1 + static_cast<int>(i % 64));
  }
  static float expected(size_t i, int n) {
    return static_cast<float>(n * (n + 1) / 2 + n * static_cast<int>(i % 64));
  }
  static void run(Communicator& comm, std::span<float> x) {
    comm.allreduce_sum(x.data(), x.size());
  }
  // nccl-tests: busbw = algbw * 2(n-1)/n; one rank moves nothing, and we report algbw for it.
  static double bus_factor(int n) { return n == 1 ? 1.0 : 2.0 * (n - 1) / n; }
};

struct Options {
  size_t min_bytes = 4;
  size_t max_bytes = size_t{8} << 20;
  size_t factor = 2;
  int iters = 20;
  int warmup = 5;
};

struct Result {
  double time_max_s = 0, time_avg_s = 0;  // per call (mean of the iterations): max, mean of ranks
  double wrong = 0;                       // elements that differ from the expected sum, all ranks
};

// "8M" -> 8388608: a byte count with an optional K, M or G suffix (powers of 1024, as nccl-tests).
std::string parse_size(std::string& text) {
  unsigned long long v = 0;
  const char* end = text.data() + text.size();
  const auto [p, ec] = std::from_chars(text.data(), end, v);
  const std::string suffix(p, end);
  int shift = 0;
  if (suffix == "K" || suffix == "k") shift = 10;
  else if (suffix == "M" || suffix == "m") shift = 20;
  else if (suffix == "G" || suffix == "g") shift = 30;
  else if (!suffix.empty()) shift = -1;
  if (ec != std::errc{} || shift < 0 || v > (ULLONG_MAX >> shift))
    return "not a byte count: '" + text + "' (e.g. 4, 64K, 8M)";
  text = std::to_string(v << shift);
  return {};
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) out += c;
  }
  return out + "\"";
}

template <class Collective>
Result bench_size(Communicator& comm, std::span<float> x, const Options& opt) {
  const int n = comm.size(), rank = comm.rank();
  Collective::fill_timing(x, rank, n);
  for (int i = 0; i < opt.warmup; ++i) Collective::run(comm, x);
  comm.barrier();
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < opt.iters; ++i) Collective::run(comm, x);
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;

  // Correctness, apart from timing: one call on the check pattern.
  for (size_t i = 0; i < x.size(); ++i) x[i] = Collective::check_value(i, rank);
  Collective::run(comm, x);
  size_t wrong = 0;
  for (size_t i = 0; i < x.size(); ++i) wrong += x[i] != Collective::expected(i, n);

  // A slot per rank for its time, and the last slot for the wrong counts.
  std::vector<double> table(static_cast<size_t>(n) + 1, 0.0);
  table[static_cast<size_t>(rank)] = elapsed.count() / opt.iters;
  table.back() = static_cast<double>(wrong);
  comm.allreduce_sum(table.data(), table.size());
  Result r;
  r.wrong = table.back();
  table.pop_back();
  r.time_max_s = *std::max_element(table.begin(), table.end());
  for (double t : table) r.time_avg_s += t / n;
  return r;
}

template <class Collective>
int run(Communicator& comm, const Options& opt) {
  const int n = comm.size();
  std::vector<float> buffer(opt.max_bytes / sizeof(float));
  size_t sizes = 0, wrong_sizes = 0;
  for (size_t bytes = opt.min_bytes; bytes <= opt.max_bytes; bytes *= opt.factor) {
    const size_t count = bytes / sizeof(float);
    const Result r = bench_size<Collective>(comm, std::span(buffer).first(count), opt);
    ++sizes;
    wrong_sizes += r.wrong != 0;
    if (comm.rank() == 0) {
      const double moved = static_cast<double>(count * sizeof(float));
      const double algbw = moved / 1e9 / r.time_max_s;
      std::printf("{\"bytes\":%zu,\"count\":%zu,\"ranks\":%d,\"time_us\":%.3f,\"time_avg_us\":%.3f,"
                  "\"algbw_GBps\":%.6g,\"busbw_GBps\":%.6g,\"correct\":%s}\n",
                  count * sizeof(float), count, n, r.time_max_s * 1e6, r.time_avg_s * 1e6, algbw,
                  algbw * Collective::bus_factor(n), r.wrong == 0 ? "true" : "false");
      std::fflush(stdout);
    }
    if (bytes > opt.max_bytes / opt.factor) break;  // the next size would overflow
  }

  double nodes = comm.local_rank() == 0 ? 1.0 : 0.0;  // one local rank 0 per node
  comm.allreduce_sum(&nodes, 1);
  if (comm.rank() == 0) {
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    std::printf("{\"host\":%s,\"ranks\":%d,\"nodes\":%.0f,\"communicator\":%s,\"sizes\":%zu,"
                "\"wrong_sizes\":%zu}\n",
                json_string(host).c_str(), n, nodes, json_string(comm.name()).c_str(), sizes,
                wrong_sizes);
    std::fflush(stdout);
  }
  return wrong_sizes == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  CLI::App app{"elbo_allreduce_bench: all-reduce time and bandwidth (nccl-tests figures) through "
               "elbo's Communicator; run under mpirun for several ranks"};
  const CLI::Validator size(parse_size, "BYTES");
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

  std::unique_ptr<Communicator> comm;
  try {
    if (elbo::launched_by_mpi() && !elbo::mpi_available())
      elbo::throw_bad_input("started as one of several MPI ranks, but this build has no MPI "
                            "(configure with -DELBO_MPI=ON)");
    comm = elbo::launched_by_mpi() ? elbo::make_mpi_communicator()
                                   : elbo::make_single_process_communicator();
    return run<AllReduceSum>(*comm, opt);
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
