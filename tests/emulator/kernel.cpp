// The kernel executor (emulator.h): launch limits, then the blocks one at a time, each CUDA thread
// a fiber (fiber.h) switched only at __syncthreads, in the process's thread order.
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "elbo_emu/device.h"
#include "elbo_emu/emulator.h"
#include "fiber.h"
#include "poison.h"

namespace elbo_emu {

namespace detail {
constinit thread_local Builtins builtins;
}

namespace {

constexpr size_t kSharedLimit = 48 * 1024;  // per block, static and dynamic together
// Static shared arrays lie in one arena with poisoned gaps, so an overrun into the next array is
// an ASan report rather than a silent corruption.
constexpr size_t kRedzone = 32;
constexpr size_t kArenaBytes = 2 * kSharedLimit;

[[noreturn]] void die(const std::string& message) {
  std::fprintf(stderr, "elbo-emu: %s\n", message.c_str());
  std::abort();
}

// ---- thread order ---------------------------------------------------------------------------

struct OrderState {
  ThreadOrder order = ThreadOrder::Forward;
  uint64_t rng = 1;  // splitmix64 state
};

OrderState from_environment() {
  OrderState s;
  if (const char* v = std::getenv("ELBO_EMU_THREAD_ORDER"); v != nullptr && *v != '\0') {
    if (std::strcmp(v, "forward") == 0) {
      s.order = ThreadOrder::Forward;
    } else if (std::strcmp(v, "reverse") == 0) {
      s.order = ThreadOrder::Reverse;
    } else if (std::strcmp(v, "random") == 0) {
      s.order = ThreadOrder::Random;
    } else {
      die(std::string("ELBO_EMU_THREAD_ORDER=") + v + " is not forward, reverse or random");
    }
  }
  if (const char* v = std::getenv("ELBO_EMU_SEED"); v != nullptr && *v != '\0') {
    char* end = nullptr;
    errno = 0;
    s.rng = std::strtoull(v, &end, 10);
    if (*end != '\0' || errno != 0) die(std::string("ELBO_EMU_SEED=") + v + " is not an integer");
  }
  return s;
}

OrderState& order_state() {
  static OrderState s = from_environment();
  return s;
}

uint64_t next_random() {
  uint64_t z = (order_state().rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// `v` ascending on entry.
void arrange(std::vector<unsigned>& v) {
  switch (order_state().order) {
    case ThreadOrder::Forward:
      break;
    case ThreadOrder::Reverse:
      std::reverse(v.begin(), v.end());
      break;
    case ThreadOrder::Random:
      for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[next_random() % i]);
      break;
  }
}

// ---- messages -------------------------------------------------------------------------------

std::string str(const dim3& d) {
  return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}

// "0-15, 17, 20-31": ascending thread numbers, the first few runs.
std::string ranges(const std::vector<unsigned>& v) {
  std::string s;
  size_t runs = 0;
  for (size_t i = 0; i < v.size(); ++runs) {
    size_t j = i;
    while (j + 1 < v.size() && v[j + 1] == v[j] + 1) ++j;
    if (runs == 6) return s + ", ...";
    if (!s.empty()) s += ", ";
    s += std::to_string(v[i]);
    if (j > i) s += "-" + std::to_string(v[j]);
    i = j + 1;
  }
  return s;
}

// Thrown inside a thread: a fault that stops the kernel.
struct Fault {
  std::string message;
};
// Thrown from __syncthreads to unwind a thread that waits at a barrier of a failed kernel, so its
// destructors run and its stack returns clean to the pool.
struct Unwind {};

// ---- the executor ---------------------------------------------------------------------------

class Executor {
 public:
  Executor() { ELBO_EMU_POISON(arena_, kArenaBytes); }
  ~Executor() { ELBO_EMU_UNPOISON(arena_, kArenaBytes); }

  cudaError_t run(const KernelLaunch& launch);
  void barrier(const char* file, int line);
  void* shared_array(const void* tag, size_t bytes, size_t align, const char* file, int line);

 private:
  struct Thread {
    uint3 idx{0, 0, 0};
    fiber::Fiber* waiting = nullptr;  // its fiber, while it waits at a barrier
    const char* file = "";
    int line = 0;
  };
  struct SharedArray {
    const void* tag;
    size_t offset;
  };

  static fiber::Fiber* worker(void* self);
  void run_thread(unsigned t);
  [[gnu::noinline, gnu::cold]] void thread_threw(unsigned t);
  fiber::Fiber* take(unsigned t);
  fiber::Fiber* next();
  bool run_block();
  static bool same_site(const Thread& a, const Thread& b) {
    return a.line == b.line && (a.file == b.file || std::strcmp(a.file, b.file) == 0);
  }
  [[gnu::cold]] std::string describe_barrier() const;
  std::string where() const {
    return "kernel " + std::string(launch_->name) + ": block " + str(builtins().block_idx);
  }
  static detail::Builtins& builtins() { return detail::builtins; }

  const KernelLaunch* launch_ = nullptr;
  std::vector<Thread> threads_;
  std::vector<unsigned> order_;  // phase 0: every thread, started in this order by the workers
  size_t cursor_ = 0;            // the next of order_ to start
  bool first_phase_ = true;
  std::vector<unsigned> wake_;  // a later phase: the waiting threads, resumed in this order
  size_t wake_pos_ = 0;         // the one of wake_ running
  unsigned current_ = 0;
  bool abandon_ = false;
  std::string fault_;  // the kernel's first fault
  std::vector<SharedArray> shared_;
  size_t shared_bytes_ = 0;  // counted against kSharedLimit
  size_t arena_end_ = 0;     // unpoisoned up to here
  alignas(64) std::byte arena_[kArenaBytes];
};

thread_local Executor* running = nullptr;

Executor& running_executor(const char* what) {
  if (running == nullptr) die(std::string(what) + " outside a kernel");
  return *running;
}

cudaError_t Executor::run(const KernelLaunch& launch) {
  launch_ = &launch;
  fault_.clear();
  const dim3 b = launch.block, g = launch.grid;
  builtins().block_dim = b;
  builtins().grid_dim = g;
  threads_.assign(static_cast<size_t>(b.x) * b.y * b.z, Thread{});
  for (unsigned t = 0; t < threads_.size(); ++t)
    threads_[t].idx = uint3{t % b.x, t / b.x % b.y, t / (b.x * b.y)};

  // Blocks visit pos, pos + step, ... (mod total): with step coprime to total, each exactly once.
  const uint64_t total = static_cast<uint64_t>(g.x) * g.y * g.z;
  uint64_t pos = 0, step = 1;
  if (order_state().order == ThreadOrder::Reverse) {
    pos = total - 1;
    step = total - 1;
  } else if (order_state().order == ThreadOrder::Random) {
    pos = next_random() % total;
    do step = 1 + next_random() % total;
    while (std::gcd(step, total) != 1);
  }
  running = this;
  for (uint64_t i = 0; i < total; ++i, pos = (pos + step) % total) {
    builtins().block_idx =
        uint3{static_cast<unsigned>(pos % g.x), static_cast<unsigned>(pos / g.x % g.y),
              static_cast<unsigned>(pos / (static_cast<uint64_t>(g.x) * g.y))};
    if (!run_block()) break;
  }
  running = nullptr;
  if (fault_.empty()) return cudaSuccess;
  report_fault(fault_);
  return cudaErrorLaunchFailure;
}

bool Executor::run_block() {
  // Fresh shared memory: what the last block left is poisoned again, then refilled at first use.
  ELBO_EMU_POISON(arena_, arena_end_);
  shared_.clear();
  shared_bytes_ = launch_->dynamic_shared;
  arena_end_ = kRedzone;
  abandon_ = false;

  order_.resize(threads_.size());
  std::iota(order_.begin(), order_.end(), 0u);
  arrange(order_);
  // Phase 0: a worker starts threads until one waits at a barrier, keeping that worker's fiber;
  // then a fresh worker goes on. Threads that never wait cost no switch of their own.
  cursor_ = 0;
  first_phase_ = true;
  fiber::switch_to(fiber::acquire(&Executor::worker, this));
  first_phase_ = false;
  // Later phases: each waiting thread hands over to the next when it waits again or returns.
  for (;;) {
    // A block may go on only if every thread waits, and all at the same barrier.
    wake_.clear();
    bool one_site = true;
    for (unsigned t = 0; t < threads_.size(); ++t) {
      if (threads_[t].waiting == nullptr) continue;
      if (!wake_.empty()) one_site = one_site && same_site(threads_[wake_[0]], threads_[t]);
      wake_.push_back(t);
    }
    if (fault_.empty() && !wake_.empty() && (!one_site || wake_.size() < threads_.size()))
      fault_ = describe_barrier();
    if (!fault_.empty()) {  // each unwinds and comes back here, as next() sees the fault
      abandon_ = true;
      for (unsigned t : wake_) fiber::switch_to(take(t));
      return false;
    }
    if (wake_.empty()) return true;
    arrange(wake_);
    wake_pos_ = 0;
    fiber::switch_to(take(wake_[0]));
  }
}

// Makes t the running thread, to be switched to.
fiber::Fiber* Executor::take(unsigned t) {
  fiber::Fiber* f = threads_[t].waiting;
  threads_[t].waiting = nullptr;
  current_ = t;
  builtins().thread_idx = threads_[t].idx;
  return f;
}

// Where the running thread's fiber goes when its thread waits or returns: a fresh worker while
// threads remain to be started, else the next waiting thread, else back to run_block.
fiber::Fiber* Executor::next() {
  if (first_phase_) {
    return cursor_ < order_.size() ? fiber::acquire(&Executor::worker, this) : nullptr;
  }
  if (fault_.empty() && ++wake_pos_ < wake_.size()) return take(wake_[wake_pos_]);
  return nullptr;
}

fiber::Fiber* Executor::worker(void* self) {
  auto& e = *static_cast<Executor*>(self);
  while (e.cursor_ < e.order_.size()) e.run_thread(e.order_[e.cursor_++]);
  return e.next();
}

void Executor::run_thread(unsigned t) {
  current_ = t;
  builtins().thread_idx = threads_[t].idx;
  try {
    launch_->thread_body();
  } catch (...) {
    thread_threw(t);
  }
}

// Apart from run_thread, whose frame stays small: ASan clears a frame's shadow at every return.
void Executor::thread_threw(unsigned t) {
  std::string problem;
  try {
    throw;
  } catch (const Unwind&) {
  } catch (const Fault& f) {
    problem = f.message;
  } catch (const std::exception& e) {
    problem = where() + ": thread " + str(threads_[t].idx) + " threw: " + e.what();
  } catch (...) {
    problem = where() + ": thread " + str(threads_[t].idx) + " threw an exception";
  }
  if (!problem.empty() && fault_.empty()) {
    fault_ = std::move(problem);
    cursor_ = order_.size();  // start no more threads
  }
}

// Which threads wait where, and which returned.
std::string Executor::describe_barrier() const {
  struct Site {
    const char* file;
    int line;
    std::vector<unsigned> threads;
  };
  std::vector<Site> sites;
  std::vector<unsigned> returned;
  for (unsigned t = 0; t < threads_.size(); ++t) {
    const Thread& th = threads_[t];
    if (th.waiting == nullptr) {
      returned.push_back(t);
      continue;
    }
    auto it = std::find_if(sites.begin(), sites.end(),
                           [&](const Site& s) { return same_site(threads_[s.threads[0]], th); });
    if (it == sites.end()) {
      sites.push_back(Site{th.file, th.line, {t}});
    } else {
      it->threads.push_back(t);
    }
  }
  std::string m = where() + " of blockDim " + str(builtins().block_dim) +
                  (returned.empty() ? ": threads wait at different barriers: "
                                    : ": threads returned while others wait at a barrier: ");
  for (const Site& s : sites)
    m += "threads " + ranges(s.threads) + " wait at the __syncthreads() at " + s.file + ":" +
         std::to_string(s.line) + "; ";
  if (!returned.empty()) m += "threads " + ranges(returned) + " returned; ";
  m += "every thread of a block must reach the same __syncthreads()";
  return m;
}

void Executor::barrier(const char* file, int line) {
  if (abandon_) throw Unwind{};
  Thread& me = threads_[current_];
  me.file = file;
  me.line = line;
  me.waiting = fiber::current();
  fiber::switch_to(next());  // back when this thread is taken again
  if (abandon_) throw Unwind{};
}

void* Executor::shared_array(const void* tag, size_t bytes, size_t align, const char* file,
                             int line) {
  for (const SharedArray& s : shared_)
    if (s.tag == tag) return arena_ + s.offset;
  const std::string site = std::string(file) + ":" + std::to_string(line);
  if (bytes > kSharedLimit - shared_bytes_) {
    throw Fault{where() + ": shared memory over the limit of 49152 bytes (48 KiB) per block: " +
                std::to_string(bytes) + " bytes at " + site + " after " +
                std::to_string(shared_bytes_) + " bytes already in use"};
  }
  align = std::max<size_t>(align, 16);
  const size_t offset = (arena_end_ + kRedzone + align - 1) / align * align;
  if (offset + bytes + kRedzone > kArenaBytes)
    throw Fault{where() + ": too many static shared arrays (at " + site + ")"};
  std::byte* p = arena_ + offset;
  ELBO_EMU_UNPOISON(p, bytes);
  std::memset(p, 0xFF, bytes);  // uninitialised shared memory reads as NaN
  shared_.push_back({tag, offset});
  shared_bytes_ += bytes;
  arena_end_ = offset + bytes;
  return p;
}

}  // namespace

namespace detail {

void sync_threads(const char* file, int line) {
  running_executor("__syncthreads()").barrier(file, line);
}

void* static_shared(const void* tag, size_t bytes, size_t align, const char* file, int line) {
  return running_executor("ELBO_SHARED").shared_array(tag, bytes, align, file, line);
}

}  // namespace detail

cudaError_t validate_launch(const KernelLaunch& launch, std::string* why) {
  const dim3 b = launch.block, g = launch.grid;
  const uint64_t threads = static_cast<uint64_t>(b.x) * b.y * b.z;
  std::string w;
  if (b.x == 0 || b.y == 0 || b.z == 0) {
    w = "blockDim " + str(b) + " has a zero dimension";
  } else if (g.x == 0 || g.y == 0 || g.z == 0) {
    w = "gridDim " + str(g) + " has a zero dimension";
  } else if (threads > 1024) {  // also covers blockDim.x and .y <= 1024
    w = std::to_string(threads) + " threads per block (blockDim " + str(b) +
        ") exceed the limit of 1024";
  } else if (b.z > 64) {
    w = "blockDim.z " + std::to_string(b.z) + " exceeds the limit of 64";
  } else if (g.x > 2147483647u) {
    w = "gridDim.x " + std::to_string(g.x) + " exceeds the limit of 2147483647 (2^31 - 1)";
  } else if (g.y > 65535 || g.z > 65535) {
    w = std::string(g.y > 65535 ? "gridDim.y " : "gridDim.z ") +
        std::to_string(g.y > 65535 ? g.y : g.z) + " exceeds the limit of 65535";
  } else if (launch.dynamic_shared > kSharedLimit) {
    w = "dynamic shared memory of " + std::to_string(launch.dynamic_shared) +
        " bytes exceeds the limit of 49152 bytes (48 KiB) per block";
  }
  if (why != nullptr) *why = w;
  return w.empty() ? cudaSuccess : cudaErrorInvalidConfiguration;
}

cudaError_t execute_kernel(const KernelLaunch& launch) {
  std::string why;
  if (validate_launch(launch, &why) != cudaSuccess) {
    report_fault("kernel " + std::string(launch.name) + ": invalid configuration: " + why);
    return cudaErrorLaunchFailure;
  }
  if (running != nullptr) die("execute_kernel() called from inside a kernel");
  thread_local std::unique_ptr<Executor> executor;
  if (!executor) executor = std::make_unique<Executor>();
  return executor->run(launch);
}

ThreadOrder thread_order() { return order_state().order; }

void set_thread_order(ThreadOrder order, uint64_t seed) { order_state() = OrderState{order, seed}; }

}  // namespace elbo_emu
