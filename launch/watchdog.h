// Ends the process when the training loop stops making progress for distributed.timeout_s: a
// peer that hangs or a collective that stalls must end the job with a message, never wait for
// ever. Exiting this rank makes the launcher (mpirun, srun) end the others.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

namespace elbo {

class Watchdog {
 public:
  Watchdog(double timeout_s, int rank);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // The loop is alive and about to enter `phase` (a string literal, named in the message).
  void beat(const char* phase);

 private:
  void watch();
  const double timeout_s_;
  const int rank_;
  std::atomic<int64_t> last_beat_ns_;
  std::atomic<const char*> phase_{"start-up"};
  bool stop_ = false;
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
};

}  // namespace elbo
