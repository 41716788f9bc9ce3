// Times the phases of training steps for `elbo bench`. Each phase is an interval of wall time, so
// phases that run at once (an all-reduce under the backward pass) show up as time hidden by
// overlap: the sum of the phases less the length of their union. On a device every boundary
// waits for the device (Backend::synchronize), so that a phase is the device's time for it;
// training runs without a timer and pays one null check per boundary.
#pragma once

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "core/backend.h"

namespace elbo {

enum class Phase { DataWait, Input, Forward, Backward, AllReduce, Optimizer };
inline constexpr int kPhases = 6;
const char* phase_name(Phase p);  // "data_wait", "input", ...

struct PhaseTotals {
  double seconds[kPhases] = {};  // each phase, summed over the steps
  double step_seconds = 0;       // the steps, start to end
  double hidden_seconds = 0;     // time two or more phases ran at once (counted once per extra)
  int64_t steps = 0;
  double phase(Phase p) const { return seconds[static_cast<int>(p)]; }
  // The part of the steps in no phase at all: loss sums, health checks, the loop.
  double other_seconds() const;
};

class StepTimer {
 public:
  using Clock = std::function<double()>;  // seconds
  // `sync` is the backend whose work a phase must have finished; `clock` is steady_clock unless
  // a test gives another.
  explicit StepTimer(Backend* sync, Clock clock = {});
  void start_step();
  void begin(Phase p);
  void end(Phase p);
  void end_step();
  const PhaseTotals& totals() const { return totals_; }

 private:
  double now();
  Backend* sync_;
  Clock clock_;
  double step_start_ = 0;
  double open_[kPhases] = {};
  std::vector<std::pair<double, double>> intervals_;  // this step's, [begin, end)
  PhaseTotals totals_;
};

}  // namespace elbo
