// The watchdog thread: wakes a few times per timeout and compares the last heartbeat with now.
#include "launch/watchdog.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>

namespace elbo {
namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

Watchdog::Watchdog(double timeout_s, int rank)
    : timeout_s_(timeout_s), rank_(rank), last_beat_ns_(now_ns()) {
  thread_ = std::thread([this] { watch(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Watchdog::beat(const char* phase) {
  phase_.store(phase, std::memory_order_relaxed);
  last_beat_ns_.store(now_ns(), std::memory_order_release);
}

void Watchdog::watch() {
  const auto period = std::chrono::duration<double>(std::min(1.0, timeout_s_ / 4));
  std::unique_lock<std::mutex> lock(mu_);
  while (!cv_.wait_for(lock, period, [&] { return stop_; })) {
    const double idle = static_cast<double>(now_ns() - last_beat_ns_.load(std::memory_order_acquire)) * 1e-9;
    if (idle < timeout_s_) continue;
    std::fprintf(stderr,
                 "elbo: error: rank %d made no progress for %.0f s during %s: a peer is gone or "
                 "stalled; ending the job (distributed.timeout_s = %g)\n",
                 rank_, idle, phase_.load(std::memory_order_relaxed), timeout_s_);
    std::fflush(stderr);
    std::_Exit(1);  // the main thread is blocked in a collective; nothing else can end it
  }
}

}  // namespace elbo
