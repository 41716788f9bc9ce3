// A job must never wait for ever: a rank that waits in one collective longer than
// distributed.timeout_s (a peer died, hangs, or is stuck in I/O) prints why and exits, and the
// launcher (mpirun, srun) then ends the other ranks. Only time spent inside collectives counts,
// so long local work (caching data, writing a checkpoint) never trips it by itself.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>

#include "distributed/communicator.h"

namespace elbo {

class Watchdog {
 public:
  Watchdog(double timeout_s, int rank);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  void enter(const char* what);  // a string literal, named in the message
  void leave();

 private:
  void watch();
  const double timeout_s_;
  const int rank_;
  std::atomic<int64_t> entered_ns_{0};  // 0 when not inside a collective
  std::atomic<const char*> what_{""};
  bool stop_ = false;
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
};

// Runs every collective of `inner` under the watchdog.
std::unique_ptr<Communicator> watched(std::unique_ptr<Communicator> inner, double timeout_s);

}  // namespace elbo
