// `elbo bench --roofline`: the time below which this machine cannot take a training step. The
// GEMMs of the step, each timed at its own shape, plus the bytes that the optimizer and the
// elementwise passes move, at the measured memory bandwidth.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "distributed/communicator.h"

namespace elbo {

struct GemmShape {
  Trans ta = Trans::No, tb = Trans::No;
  int M = 0, N = 0, K = 0;
  double flops() const { return 2.0 * M * N * K; }
  bool operator==(const GemmShape&) const = default;
};

// What one training step issues on one rank.
struct StepWork {
  std::vector<GemmShape> gemms;  // in the order the step issues them
  double optimizer_bytes = 0;    // Adam over the flat buffers, and clipping when on
  double elementwise_bytes = 0;  // every other pass: bias and activation, loss, noise, conv copies
};

// Records the work of one step (noise, forward_backward, loss sums, clipping, Adam) of a model
// with `rows` rows, by running it once through a wrapper over `inner` that notes each GEMM's
// shape and each other call's bytes (its inputs read and outputs written once, in float32).
// `optimizer_share` is this rank's slice of the parameters under ZeRO-1 (slice_of), which it
// clips and updates; all of them otherwise. With gradient_sources k > 1 (distributed.shared_memory
// over k ranks) the update reads k ranks' gradients for that slice, as the trainer's does.
StepWork record_step_work(Backend& inner, const ModelSpec& spec, int rows, const AdamConfig& adam,
                          double grad_clip, std::optional<Slice> optimizer_share = std::nullopt,
                          int gradient_sources = 1);

struct GemmRate {
  GemmShape shape;
  int calls = 0;              // per step
  double seconds = 0;         // one call, the best of several rounds
  double gflops_per_s() const { return shape.flops() / seconds / 1e9; }
};

struct Roofline {
  std::vector<GemmRate> gemms;  // one per distinct shape, in order of first use
  double gemm_seconds = 0;      // per step: every call at its shape's rate
  double gemm_flops = 0;        // per step
  double copy_GBps = 0, triad_GBps = 0;  // STREAM copy and triad, host memory, one thread
  double backend_scale_GBps = 0;         // in-place scale through the backend (a device's memory)
  double bandwidth_GBps = 0;             // the one the bound uses
  std::string bandwidth_source;          // "stream_triad" (host) or "backend_scale" (device)
  StepWork work;
  double bound_seconds() const;  // gemm_seconds + (optimizer + elementwise bytes) / bandwidth
};

// Times each GEMM shape of `work` and the memory bandwidth on `backend` (whose BLAS threads are
// already set). `host`: the backend computes in host memory, so STREAM's triad is its bandwidth.
Roofline measure_roofline(Backend& backend, bool host, const StepWork& work);

// As a JSON object, with the measured step (seconds) as a fraction of the bound.
std::string roofline_json(const Roofline& r, double measured_step_s, int rows);

}  // namespace elbo
