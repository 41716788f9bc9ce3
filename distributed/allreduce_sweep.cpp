// The all-reduce sweep (distributed/allreduce_sweep.h).
#include "distributed/allreduce_sweep.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <climits>
#include <cstdio>
#include <span>

#include "core/error.h"

namespace elbo {
namespace {

// Timing data: shares of 1 that depend on the rank and sum to 1 over ranks, so values stay
// bounded however often the in-place sum repeats.
float timing_value(int rank, int n) {
  return 2.0f * static_cast<float>(rank + 1) / static_cast<float>(n * (n + 1));
}
// Check data: small integers (exact in float) that vary with the rank and the position.
float check_value(size_t i, int rank) { return static_cast<float>(rank + 1 + static_cast<int>(i % 64)); }
float expected_sum(size_t i, int n) {
  return static_cast<float>(n * (n + 1) / 2 + n * static_cast<int>(i % 64));
}

SweepRow measure(Communicator& comm, Backend& memory, float* x, std::vector<float>& host,
                 size_t count, const SweepOptions& o) {
  const int n = comm.size(), rank = comm.rank();
  std::fill_n(host.begin(), count, timing_value(rank, n));
  memory.upload(x, host.data(), count);
  for (int i = 0; i < o.warmup; ++i) comm.allreduce_sum(x, count);
  memory.synchronize();
  comm.barrier();
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < o.iters; ++i) comm.allreduce_sum(x, count);
  memory.synchronize();  // a device's collectives are queued, not done, when the calls return
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;

  for (size_t i = 0; i < count; ++i) host[i] = check_value(i, rank);
  memory.upload(x, host.data(), count);
  comm.allreduce_sum(x, count);
  memory.download(host.data(), x, count);
  size_t wrong = 0;
  for (size_t i = 0; i < count; ++i) wrong += host[i] != expected_sum(i, n);

  // A slot per rank for its time, and the last slot for the wrong counts.
  std::vector<double> table(static_cast<size_t>(n) + 1, 0.0);
  table[static_cast<size_t>(rank)] = elapsed.count() / o.iters;
  table.back() = static_cast<double>(wrong);
  comm.allreduce_sum(table.data(), table.size());
  const bool correct = table.back() == 0;
  table.pop_back();
  double avg = 0;
  for (double t : table) avg += t / n;
  return make_sweep_row(count * sizeof(float), n, *std::max_element(table.begin(), table.end()),
                        avg, correct);
}

}  // namespace

double allreduce_bus_factor(int ranks) {
  return ranks <= 1 ? 1.0 : 2.0 * (ranks - 1) / ranks;
}

SweepRow make_sweep_row(size_t bytes, int ranks, double time_s, double time_avg_s, bool correct) {
  SweepRow r;
  r.bytes = bytes;
  r.ranks = ranks;
  r.time_s = time_s;
  r.time_avg_s = time_avg_s;
  r.algbw_GBps = static_cast<double>(bytes) / 1e9 / time_s;
  r.busbw_GBps = r.algbw_GBps * allreduce_bus_factor(ranks);
  r.correct = correct;
  return r;
}

std::vector<SweepRow> sweep_allreduce(Communicator& comm, Backend& memory, const SweepOptions& o,
                                      const std::function<void(const SweepRow&)>& on_row) {
  ELBO_CHECK(o.min_bytes >= sizeof(float) && o.min_bytes <= o.max_bytes && o.factor >= 2 &&
                 o.iters > 0 && o.warmup >= 0,
             "all-reduce sweep options out of range");
  const size_t most = o.max_bytes / sizeof(float);
  DeviceArray buffer(memory, most);
  std::vector<float> host(most);
  std::vector<SweepRow> rows;
  for (size_t bytes = o.min_bytes; bytes <= o.max_bytes; bytes *= o.factor) {
    rows.push_back(measure(comm, memory, buffer.data(), host, bytes / sizeof(float), o));
    if (on_row) on_row(rows.back());
    if (bytes > o.max_bytes / o.factor) break;  // the next size would overflow
  }
  return rows;
}

std::string sweep_row_json(const SweepRow& r) {
  char line[320];
  std::snprintf(line, sizeof line,
                "{\"bytes\": %zu, \"count\": %zu, \"ranks\": %d, \"time_us\": %.3f, "
                "\"time_avg_us\": %.3f, \"algbw_GBps\": %.6g, \"busbw_GBps\": %.6g, "
                "\"correct\": %s}",
                r.bytes, r.bytes / sizeof(float), r.ranks, r.time_s * 1e6, r.time_avg_s * 1e6,
                r.algbw_GBps, r.busbw_GBps, r.correct ? "true" : "false");
  return line;
}

std::string parse_byte_count(std::string& text) {
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

}  // namespace elbo
