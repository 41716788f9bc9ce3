// `elbo eval` and `elbo encode`: every rank scores its chunks (launch/scoring.h); eval sums the
// figures over the ranks, encode sends each chunk to rank 0, which writes it where its rows go.
#include "launch/eval.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

#include "core/error.h"
#include "io/files.h"
#include "io/latents.h"
#include "io/location.h"
#include "io/metrics.h"

namespace elbo {
namespace fs = std::filesystem;

int run_eval(const ScoringOptions& options, bool json) {
  ScoringJob job(options);
  return job.run([json](ScoringJob& j, Communicator& comm) {
    const ChunkPlan plan{j.data().size(), j.options().batch};
    const int64_t first = plan.first_chunk(comm.rank(), comm.size());
    const int64_t end = plan.first_chunk(comm.rank() + 1, comm.size());
    // [recon, kl, neg_elbo, -iw log p(x), samples]: summed per rank in double, then over ranks.
    double sums[5] = {0, 0, 0, 0, 0};
    ScoredChunk chunk;
    for (int64_t c = first; c < end; ++c) {
      j.score(c * plan.batch, plan.rows_of(c), chunk);
      for (int64_t i = 0; i < chunk.n; ++i) {
        const size_t k = static_cast<size_t>(i);
        sums[0] += chunk.recon[k];
        sums[1] += chunk.kl[k];
        sums[2] += chunk.recon[k] + chunk.kl[k];
        if (!chunk.iw_log_px.empty()) sums[3] -= chunk.iw_log_px[k];
      }
      sums[4] += static_cast<double>(chunk.n);
    }
    comm.allreduce_sum(sums, 5);
    if (comm.rank() != 0) return;
    const double n = sums[4];
    const int K = j.options().iw_samples;
    if (json) {
      JsonLine line;
      line.add("checkpoint", j.options().checkpoint).add("data", j.data_path())
          .add("step", j.checkpoint().state.step).add("samples", static_cast<int64_t>(n))
          .add("seed", static_cast<int64_t>(j.seed())).add("neg_elbo", sums[2] / n)
          .add("recon", sums[0] / n).add("kl", sums[1] / n).add("iw_samples", K)
          .add("iw_nll", K > 0 ? sums[3] / n : std::nan(""))
          .add("device", j.device_name()).add("ranks", comm.size());
      std::printf("%s\n", line.str().c_str());
      return;
    }
    std::printf("elbo: %s at step %lld on %s: %lld samples, seed %llu, %s, %d rank(s)\n",
                j.options().checkpoint.c_str(), static_cast<long long>(j.checkpoint().state.step),
                j.data_path().c_str(), static_cast<long long>(n),
                static_cast<unsigned long long>(j.seed()), j.device_name().c_str(), comm.size());
    std::printf("neg_elbo %.4f nats per sample (recon %.4f, kl %.4f)\n", sums[2] / n, sums[0] / n,
                sums[1] / n);
    if (K > 0) std::printf("iw_nll %.4f nats per sample (K = %d)\n", sums[3] / n, K);
  });
}

namespace {

// A chunk as bytes, for the control plane's broadcast: mu, logvar, neg_elbo, iw log p(x).
size_t chunk_bytes(int64_t n, int L, bool iw) {
  const size_t rows = static_cast<size_t>(n);
  return rows * 2 * static_cast<size_t>(L) * sizeof(float) + rows * (iw ? 2 : 1) * sizeof(double);
}

void pack(const ScoredChunk& c, int L, bool iw, std::vector<char>& bytes) {
  const size_t rows = static_cast<size_t>(c.n), lat = rows * static_cast<size_t>(L);
  bytes.resize(chunk_bytes(c.n, L, iw));
  char* p = bytes.data();
  std::memcpy(p, c.mu.data(), lat * sizeof(float));
  p += lat * sizeof(float);
  std::memcpy(p, c.logvar.data(), lat * sizeof(float));
  p += lat * sizeof(float);
  for (size_t i = 0; i < rows; ++i, p += sizeof(double)) {
    const double v = c.recon[i] + c.kl[i];
    std::memcpy(p, &v, sizeof v);
  }
  if (iw)
    for (size_t i = 0; i < rows; ++i, p += sizeof(double)) {
      const double v = -c.iw_log_px[i];
      std::memcpy(p, &v, sizeof v);
    }
}

// Rank 0's side: the latents file's rows from a packed chunk.
void write_packed(LatentsWriter& out, const ShardedDataset& data, int64_t first, int64_t n, int L,
                  bool iw, const std::vector<char>& bytes, std::vector<double>& scratch,
                  std::vector<int64_t>& labels) {
  const size_t rows = static_cast<size_t>(n), lat = rows * static_cast<size_t>(L);
  const float* mu = reinterpret_cast<const float*>(bytes.data());
  scratch.resize(rows * (iw ? 2 : 1));
  std::memcpy(scratch.data(), bytes.data() + 2 * lat * sizeof(float), scratch.size() * sizeof(double));
  const int64_t* y = nullptr;
  if (data.has_labels()) {
    std::vector<int64_t> ids(rows);
    for (size_t i = 0; i < rows; ++i) ids[i] = first + static_cast<int64_t>(i);
    labels.resize(rows);
    data.read_labels(ids, labels.data());
    y = labels.data();
  }
  out.write_rows(first, n, mu, mu + lat, scratch.data(), iw ? scratch.data() + rows : nullptr, y);
}

}  // namespace

int run_encode(const EncodeOptions& options) {
  if (options.out.empty()) throw_bad_input("--out names the latents file to write (command line)");
  // Nothing the user has is replaced unasked; nor is a directory, ever.
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(options.out, ec);
  if (fs::exists(st)) {
    if (fs::is_directory(fs::status(options.out, ec)))
      throw_bad_input("--out is a directory; name the latents file to write" + at(options.out));
    if (!options.force)
      throw_bad_input("the output file exists; pass --force to replace it" + at(options.out));
  }
  ScoringJob job(options.scoring);
  return job.run([&options](ScoringJob& j, Communicator& comm) {
    const ChunkPlan plan{j.data().size(), j.options().batch};
    const int L = j.latent();
    const bool iw = j.options().iw_samples > 0;
    std::unique_ptr<LatentsWriter> out;
    if (comm.rank() == 0) {
      out = std::make_unique<LatentsWriter>(
          options.out, LatentsShape{plan.rows, L, iw, j.data().has_labels()});
      out->attribute("checkpoint", j.options().checkpoint);
      out->attribute("checkpoint_step", j.checkpoint().state.step);
      out->attribute("data", j.data_path());
      out->attribute("samples", plan.rows);
      out->attribute("latent", static_cast<int64_t>(L));
      out->attribute("iw_samples", static_cast<int64_t>(j.options().iw_samples));
      out->attribute("seed", static_cast<int64_t>(j.seed()));
      out->attribute("created", iso8601_utc_now());
    }
    // In round t every rank scores its t-th chunk; then each rank's chunk goes to rank 0, which
    // writes it at its rows. Rank 0 holds one chunk at a time, whatever the data's size.
    const int W = comm.size();
    std::vector<int64_t> firsts(static_cast<size_t>(W) + 1);
    for (int r = 0; r <= W; ++r) firsts[static_cast<size_t>(r)] = plan.first_chunk(r, W);
    int64_t rounds = 0;
    for (int r = 0; r < W; ++r)
      rounds = std::max(rounds, firsts[static_cast<size_t>(r) + 1] - firsts[static_cast<size_t>(r)]);
    ScoredChunk chunk;
    std::vector<char> mine_bytes, received;
    std::vector<double> scratch;
    std::vector<int64_t> labels;
    for (int64_t t = 0; t < rounds; ++t) {
      const int64_t mine = firsts[static_cast<size_t>(comm.rank())] + t;
      if (mine < firsts[static_cast<size_t>(comm.rank()) + 1]) {
        j.score(mine * plan.batch, plan.rows_of(mine), chunk);
        pack(chunk, L, iw, mine_bytes);
      }
      for (int r = 0; r < W; ++r) {
        const int64_t c = firsts[static_cast<size_t>(r)] + t;
        if (c >= firsts[static_cast<size_t>(r) + 1]) continue;  // rank r has no chunk this round
        std::vector<char>& bytes = r == comm.rank() ? mine_bytes : received;
        bytes.resize(chunk_bytes(plan.rows_of(c), L, iw));
        if (r != 0) comm.broadcast_bytes(bytes.data(), bytes.size(), r);
        if (out)
          write_packed(*out, j.data(), c * plan.batch, plan.rows_of(c), L, iw, bytes, scratch,
                       labels);
      }
    }
    if (out) {
      out->commit();
      std::printf("elbo: wrote %lld samples x %d latents%s to %s\n",
                  static_cast<long long>(plan.rows), L, iw ? " with iw_nll" : "",
                  options.out.c_str());
    }
  });
}

}  // namespace elbo
