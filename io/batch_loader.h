// Reads the next training batch on a background thread while the current one is being computed:
// two host buffers, filled strictly in step order, one step ahead of training.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace elbo {

struct HostBatch {
  std::vector<float> x;       // [rows, D]
  std::vector<uint32_t> ids;  // global sample index of each row
};

class BatchLoader {
 public:
  // fill(step, batch) runs on the loader thread for each step in [first, end), in order.
  using Fill = std::function<void(int64_t step, HostBatch& batch)>;
  BatchLoader(int64_t first, int64_t end, Fill fill);
  ~BatchLoader();  // stops the thread, even mid-epoch
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  // The batch of the next step; valid until the following call. Rethrows a loader failure.
  const HostBatch& next();
  // Seconds next() spent waiting for the loader since the last call (training starved of data).
  double take_wait_seconds();

 private:
  void run();
  Fill fill_;
  int64_t next_fill_, next_take_, end_;
  HostBatch slots_[2];
  int ready_ = 0;            // filled slots not yet taken (0..2)
  bool stop_ = false;
  bool holding_ = false;     // the consumer holds the slot it took last
  std::exception_ptr error_;
  double wait_s_ = 0.0;
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
};

}  // namespace elbo
