// The phase timer of `elbo bench` (launch/step_timer.h).
#include "launch/step_timer.h"

#include <algorithm>
#include <chrono>

namespace elbo {

const char* phase_name(Phase p) {
  switch (p) {
    case Phase::DataWait: return "data_wait";
    case Phase::Input: return "input";
    case Phase::Forward: return "forward";
    case Phase::Backward: return "backward";
    case Phase::AllReduce: return "allreduce";
    case Phase::Optimizer: return "optimizer";
  }
  return "?";
}

double PhaseTotals::other_seconds() const {
  double in_phases = -hidden_seconds;  // the union of the phases
  for (double s : seconds) in_phases += s;
  return step_seconds - in_phases;
}

StepTimer::StepTimer(Backend* sync, Clock clock) : sync_(sync), clock_(std::move(clock)) {
  if (!clock_)
    clock_ = [] {
      return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
          .count();
    };
}

double StepTimer::now() {
  if (sync_) sync_->synchronize();
  return clock_();
}

void StepTimer::start_step() {
  intervals_.clear();
  step_start_ = now();
}

void StepTimer::begin(Phase p) { open_[static_cast<int>(p)] = now(); }

void StepTimer::end(Phase p) {
  const double t = now(), t0 = open_[static_cast<int>(p)];
  totals_.seconds[static_cast<int>(p)] += t - t0;
  intervals_.emplace_back(t0, t);
}

void StepTimer::end_step() {
  totals_.step_seconds += now() - step_start_;
  ++totals_.steps;
  // The union of this step's intervals, swept in order of their start.
  std::sort(intervals_.begin(), intervals_.end());
  double sum = 0, covered = 0, reach = -1e300;
  for (const auto& [b, e] : intervals_) {
    sum += e - b;
    if (e <= reach) continue;
    covered += e - std::max(b, reach);
    reach = e;
  }
  totals_.hidden_seconds += sum - covered;
}

}  // namespace elbo
