// The prefetching loader: a producer/consumer pair over two slots. Slot i%2 holds step i.
#include "io/batch_loader.h"

#include <chrono>

#include "core/error.h"

namespace elbo {

BatchLoader::BatchLoader(int64_t first, int64_t end, Fill fill)
    : fill_(std::move(fill)), next_fill_(first), next_take_(first), end_(end) {
  thread_ = std::thread([this] { run(); });
}

BatchLoader::~BatchLoader() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void BatchLoader::run() {
  for (;;) {
    int64_t step;
    {
      std::unique_lock<std::mutex> lock(mu_);
      // Two slots: one may be held by the consumer, so fill only while fewer than that are busy.
      cv_.wait(lock, [&] { return stop_ || ready_ + (holding_ ? 1 : 0) < 2; });
      if (stop_ || next_fill_ >= end_) return;
      step = next_fill_;
    }
    try {
      fill_(step, slots_[step % 2]);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      error_ = std::current_exception();
      stop_ = true;
      cv_.notify_all();
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++next_fill_;
      ++ready_;
    }
    cv_.notify_all();
  }
}

const HostBatch& BatchLoader::next() {
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  ELBO_CHECK(next_take_ < end_, "asked the loader for a step past its range");
  if (holding_) {  // the previous batch is done with: its slot may be refilled
    holding_ = false;
    cv_.notify_all();
  }
  cv_.wait(lock, [&] { return ready_ > 0 || error_; });
  if (error_) std::rethrow_exception(error_);
  --ready_;
  holding_ = true;
  wait_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return slots_[next_take_++ % 2];
}

double BatchLoader::take_wait_seconds() {
  std::lock_guard<std::mutex> lock(mu_);
  const double w = wait_s_;
  wait_s_ = 0.0;
  return w;
}

}  // namespace elbo
