// The all-reduce sweep behind `elbo bench --allreduce` and bench/allreduce_bench: message sizes
// from min to max bytes through elbo's own Communicator (what training calls), each timed after a
// warm-up and reported as nccl-tests reports it (algbw, busbw); correctness is checked apart from
// the timing. Buffers live in the backend's memory: host memory for MPI, the GPU's for NCCL.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "core/backend.h"
#include "distributed/communicator.h"

namespace elbo {

struct SweepOptions {
  size_t min_bytes = 4;
  size_t max_bytes = size_t{8} << 20;
  size_t factor = 2;  // size multiplier between rows
  int iters = 20;     // timed calls per size
  int warmup = 5;     // untimed calls first
};

struct SweepRow {
  size_t bytes = 0;  // of one rank's buffer: count floats
  int ranks = 0;
  double time_s = 0;      // per call: the slowest rank's mean over the timed calls
  double time_avg_s = 0;  // the same, averaged over ranks
  double algbw_GBps = 0;  // bytes / time_s, in 1e9 bytes per second
  double busbw_GBps = 0;  // algbw * allreduce_bus_factor(ranks)
  bool correct = false;   // every rank got the exact sum of the check pattern
};

// nccl-tests' all-reduce factor 2(n-1)/n: what each rank's link carries in a ring, per byte of
// the buffer. One rank moves nothing; for it the factor is 1, so that busbw reports algbw.
double allreduce_bus_factor(int ranks);

// A row's bandwidth figures from its size and times.
SweepRow make_sweep_row(size_t bytes, int ranks, double time_s, double time_avg_s, bool correct);

// Every rank calls it (the same options). Sizes go min, min*factor, ... up to max; on_row sees
// each row as it is measured (every rank gets the same rows).
std::vector<SweepRow> sweep_allreduce(Communicator& comm, Backend& memory, const SweepOptions& o,
                                      const std::function<void(const SweepRow&)>& on_row = {});

// One row as a JSON object: bytes, count, ranks, time_us, time_avg_us, algbw_GBps, busbw_GBps,
// correct.
std::string sweep_row_json(const SweepRow& row);

// "8M" -> "8388608" in place: a byte count with an optional K, M or G suffix (powers of 1024, as
// nccl-tests). Returns why not, or empty (a CLI11 transform).
std::string parse_byte_count(std::string& text);

}  // namespace elbo
