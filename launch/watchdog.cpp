// The watchdog thread, and the communicator decorator that tells it when a collective starts and
// ends.
#include "launch/watchdog.h"

#include <algorithm>
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

class WatchedCommunicator final : public Communicator {
 public:
  WatchedCommunicator(std::unique_ptr<Communicator> inner, double timeout_s)
      : inner_(std::move(inner)), dog_(timeout_s, inner_->rank()) {}
  std::string name() const override { return inner_->name(); }
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  int local_rank() const override { return inner_->local_rank(); }
  int local_size() const override { return inner_->local_size(); }
  void allreduce_sum(float* d, size_t n) override {
    guard("an all-reduce", [&] { inner_->allreduce_sum(d, n); });
  }
  void broadcast(float* d, size_t n, int root) override {
    guard("a broadcast", [&] { inner_->broadcast(d, n, root); });
  }
  void reduce_scatter_sum(float* d, size_t n) override {
    guard("a reduce-scatter", [&] { inner_->reduce_scatter_sum(d, n); });
  }
  void allreduce_sum_bf16(uint16_t* d, size_t n) override {
    guard("an all-reduce", [&] { inner_->allreduce_sum_bf16(d, n); });
  }
  void reduce_scatter_sum_bf16(uint16_t* d, size_t n) override {
    guard("a reduce-scatter", [&] { inner_->reduce_scatter_sum_bf16(d, n); });
  }
  void allgather(float* d, size_t n) override {
    guard("an all-gather", [&] { inner_->allgather(d, n); });
  }
  // The bucketed all-reduce: each call is watched; a started one may still run when it returns,
  // and finish_allreduces() is where a dead peer keeps this rank waiting.
  void start_allreduce_sum(float* d, size_t n) override {
    guard("an all-reduce", [&] { inner_->start_allreduce_sum(d, n); });
  }
  void start_allreduce_sum_bf16(uint16_t* d, size_t n) override {
    guard("an all-reduce", [&] { inner_->start_allreduce_sum_bf16(d, n); });
  }
  void progress() override { guard("an all-reduce", [&] { inner_->progress(); }); }
  void finish_allreduces() override {
    guard("an all-reduce", [&] { inner_->finish_allreduces(); });
  }
  void replayed() override { inner_->replayed(); }
  SharedBuffers share_memory(size_t n) override {
    SharedBuffers shared;
    guard("sharing memory", [&] { shared = inner_->share_memory(n); });
    return shared;
  }
  void shared_fence() override { guard("a barrier", [&] { inner_->shared_fence(); }); }
  void allreduce_sum(double* d, size_t n) override {
    guard("an all-reduce", [&] { inner_->allreduce_sum(d, n); });
  }
  void broadcast_bytes(void* d, size_t n, int root) override {
    guard("a broadcast", [&] { inner_->broadcast_bytes(d, n, root); });
  }
  void barrier() override { guard("a barrier", [&] { inner_->barrier(); }); }
  [[noreturn]] void abort(int exit_code) override {
    inner_->abort(exit_code);
    std::_Exit(exit_code);  // not reached
  }

 private:
  template <class F>
  void guard(const char* what, F&& f) {
    dog_.enter(what);
    f();
    dog_.leave();
  }
  std::unique_ptr<Communicator> inner_;
  Watchdog dog_;
};

}  // namespace

Watchdog::Watchdog(double timeout_s, int rank) : timeout_s_(timeout_s), rank_(rank) {
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

void Watchdog::enter(const char* what) {
  what_.store(what, std::memory_order_relaxed);
  entered_ns_.store(now_ns(), std::memory_order_release);
}

void Watchdog::leave() { entered_ns_.store(0, std::memory_order_release); }

void Watchdog::watch() {
  const auto period = std::chrono::duration<double>(std::min(1.0, timeout_s_ / 4));
  std::unique_lock<std::mutex> lock(mu_);
  while (!cv_.wait_for(lock, period, [&] { return stop_; })) {
    const int64_t entered = entered_ns_.load(std::memory_order_acquire);
    if (entered == 0) continue;
    const double waited = static_cast<double>(now_ns() - entered) * 1e-9;
    if (waited < timeout_s_) continue;
    std::fprintf(stderr,
                 "elbo: error: rank %d waited %.0f s in %s: a peer is gone, hangs or is stuck; "
                 "ending the job (distributed.timeout_s = %g)\n",
                 rank_, waited, what_.load(std::memory_order_relaxed), timeout_s_);
    std::fflush(stderr);
    std::_Exit(1);  // the main thread is blocked in the collective; nothing else can end it
  }
}

std::unique_ptr<Communicator> watched(std::unique_ptr<Communicator> inner, double timeout_s) {
  if (inner->size() == 1) return inner;  // nobody to wait for
  return std::make_unique<WatchedCommunicator>(std::move(inner), timeout_s);
}

}  // namespace elbo
