// The emulator's CUDA runtime, its core: the scheduler and the device thread, fork handling, the
// helpers of captures and copies, and the internal interface of emulator.h.
//
// Work is deferred: it runs on the device thread only when a synchronisation (or a peer rank)
// demands it, in an order that respects only the dependencies CUDA promises (stream order, events,
// the legacy default stream). The state lives in runtime_state.h; the libcudart symbols the real
// CUDA 13 headers declare are defined in runtime_api.cpp and runtime_streams.cpp.
#include <pthread.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "runtime_state.h"

namespace elbo_emu::rt {

// Leaked on purpose: work may still be queued when static destructors run at exit.
State& st() {
  static State* s = new State;
  return *s;
}

thread_local cudaError_t t_last_error = cudaSuccess;
thread_local int t_device = 0;
thread_local cudaStreamCaptureMode t_capture_mode = cudaStreamCaptureModeGlobal;

namespace {

bool quiet() {
  static const bool q = std::getenv("ELBO_EMU_QUIET") != nullptr;
  return q;
}

}  // namespace

// A misuse: says which call and why (CUDA's codes alone rarely tell), sets the last error.
cudaError_t misuse(const char* call, const std::string& why, cudaError_t code) {
  if (!quiet())
    std::fprintf(stderr, "elbo-emu: %s: %s (%s)\n", call, why.c_str(), cudaGetErrorName(code));
  return set_last_error(code);
}

std::string hex(const void* p) {
  char b[32];
  std::snprintf(b, sizeof b, "%p", p);
  return b;
}

// The allocation that holds [p, p + bytes), or nullptr. Caller holds mu.
const std::pair<const uintptr_t, Allocation>* find_in(const std::map<uintptr_t, Allocation>& table,
                                                      const void* p, size_t bytes) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = table.upper_bound(a);
  if (it == table.begin()) return nullptr;
  --it;
  if (a - it->first >= std::max<size_t>(it->second.bytes, 1)) return nullptr;
  if (bytes > it->second.bytes - (a - it->first)) return nullptr;
  return &*it;
}

namespace {

// ---- the device thread ------------------------------------------------------------------------

void set_device_memory_access(State& s, bool on) {
  for (const auto& [base, a] : s.device) {
    if (on)
      ELBO_EMU_UNPOISON(reinterpret_cast<void*>(base), a.bytes);
    else
      ELBO_EMU_POISON(reinterpret_cast<void*>(base), a.bytes);
  }
}

// The ticket that must execute before `e` (the head of `s`) may, or 0 when it may run now.
uint64_t blocking_dependency(State& S, const StreamState& s, const Entry& e) {
  if (e.kind == Entry::Wait && e.wait_for && S.pending.count(e.wait_for)) return e.wait_for;
  if (s.legacy) {  // the legacy stream waits for earlier work on every blocking stream
    for (const auto& t : S.owned_streams)
      if (!t->nonblocking && !t->queue.empty() && t->queue.front()->ticket < e.ticket)
        return t->queue.front()->ticket;
  } else if (!s.nonblocking) {  // and every blocking stream for earlier legacy work
    const auto& q = S.legacy_stream.queue;
    if (!q.empty() && q.front()->ticket < e.ticket) return q.front()->ticket;
  }
  return 0;
}

void execute_head(State& S, StreamState& s, std::unique_lock<std::mutex>& lock) {
  const std::shared_ptr<Entry> e = s.queue.front();
  if (e->kind == Entry::Work && S.sticky == cudaSuccess) {
    lock.unlock();  // host threads may enqueue, query and abort meanwhile
    const cudaError_t rc = e->op.run ? e->op.run() : cudaSuccess;
    lock.lock();
    if (rc != cudaSuccess && S.sticky == cudaSuccess) S.sticky = rc;
  } else if (e->kind == Entry::Record) {
    e->event->recorded_at = Clock::now();
  }
  s.queue.pop_front();
  S.pending.erase(e->ticket);
  S.collectives.erase(e->ticket);
}

// Runs, on the device thread, exactly what `ticket` depends on, then it. Caller holds mu.
void run_until(State& S, uint64_t ticket, std::unique_lock<std::mutex>& lock) {
  while (S.pending.count(ticket)) {
    StreamState& s = *S.pending.at(ticket);
    const uint64_t dep = blocking_dependency(S, s, *s.queue.front());
    if (dep)
      run_until(S, dep, lock);
    else
      execute_head(S, s, lock);
  }
}

// How long queued work may wait for a synchronisation before it runs anyway, as a GPU would have
// run it by then. Long enough that every missing synchronisation a test makes still shows.
std::chrono::milliseconds progress_bound() {
  static const long ms = [] {
    const char* v = std::getenv("ELBO_EMU_PROGRESS_MS");
    return v && *v ? std::max(1L, std::atol(v)) : 1000L;
  }();
  return std::chrono::milliseconds(ms);
}

void device_loop() {
  State& S = st();
  std::unique_lock<std::mutex> lock(S.mu);
  for (;;) {
    S.wake_device.wait_for(lock, std::chrono::milliseconds(1),
                           [&] { return S.completed < S.requests; });
    if (S.completed == S.requests) {  // idle: does a peer wait for us, or is work overdue?
      const auto pollers = S.pollers;
      lock.unlock();
      bool demanded = false;
      for (const auto& p : pollers) demanded = p() || demanded;
      lock.lock();
      uint64_t target = 0;
      if (demanded && !S.collectives.empty()) {
        target = *S.collectives.begin();  // the oldest collective, and what it depends on
      } else if (!S.pending.empty()) {
        const Entry& oldest = *S.pending.begin()->second->queue.front();
        if (Clock::now() - oldest.queued_at > progress_bound()) target = oldest.ticket;
      }
      if (target == 0) continue;
      S.request_targets.emplace_back(target, false);
      ++S.requests;
    }
    const auto [target, all] = S.request_targets.front();
    S.device_active = true;
    set_device_memory_access(S, true);
    if (all) {
      while (!S.pending.empty() && S.pending.begin()->first <= target)
        run_until(S, S.pending.begin()->first, lock);
    } else {
      run_until(S, target, lock);
    }
    set_device_memory_access(S, false);
    S.device_active = false;
    S.request_targets.erase(S.request_targets.begin());
    ++S.completed;
    S.work_done.notify_all();
  }
}

void start_device_thread(State& S) {
  if (S.device_started) return;
  S.device_started = true;
  std::thread t(device_loop);
  S.device_id = t.get_id();
  t.detach();
}

// A child of fork() has no device thread and must not inherit a held lock.
void before_fork() { st().mu.lock(); }
void after_fork_parent() { st().mu.unlock(); }
void after_fork_child() {
  State& S = st();
  S.device_started = false;
  S.device_active = false;
  S.requests = S.completed = 0;
  S.request_targets.clear();
  S.pollers.clear();
  S.mu.unlock();
}
[[maybe_unused]] const bool fork_handlers =
    pthread_atfork(before_fork, after_fork_parent, after_fork_child) == 0;

}  // namespace

// Waits until `target` has executed. With all, everything enqueued before it runs too; without,
// only what it depends on, so unrelated work stays queued.
void wait_until(uint64_t target, std::unique_lock<std::mutex>& lock, bool all) {
  State& S = st();
  if (!S.pending.count(target) && !all) return;
  if (S.pending.empty()) return;
  if (std::this_thread::get_id() == S.device_id) {  // an op that synchronises (nested)
    if (all) {
      while (!S.pending.empty() && S.pending.begin()->first <= target)
        run_until(S, S.pending.begin()->first, lock);
    } else {
      run_until(S, target, lock);
    }
    return;
  }
  start_device_thread(S);
  S.request_targets.emplace_back(target, all);
  const uint64_t mine = ++S.requests;
  S.wake_device.notify_all();
  S.work_done.wait(lock, [&] { return S.completed >= mine; });
}

// ---- captures ---------------------------------------------------------------------------------

// Whether this thread may make a potentially unsafe call (a synchronisation, an allocation) now.
// When not, the capture(s) concerned are invalidated, as CUDA does.
cudaError_t check_capture_rules(State& S, const char* call) {
  for (Capture* c : S.captures) {
    const bool mine = c->thread == std::this_thread::get_id();
    const bool forbids = t_capture_mode != cudaStreamCaptureModeRelaxed &&
                         ((mine && c->mode != cudaStreamCaptureModeRelaxed) ||
                          (!mine && c->mode == cudaStreamCaptureModeGlobal &&
                           t_capture_mode == cudaStreamCaptureModeGlobal));
    if (forbids) {
      c->invalidated = true;
      c->why = std::string(call) + " during capture";
      return misuse(call, "not permitted while a stream capture is active",
                    cudaErrorStreamCaptureUnsupported);
    }
  }
  return cudaSuccess;
}

StreamState* stream_of(State& S, cudaStream_t stream) {
  if (stream == nullptr || stream == cudaStreamLegacy || stream == cudaStreamPerThread)
    return &S.legacy_stream;
  auto* s = reinterpret_cast<StreamState*>(stream);
  return S.streams.count(s) ? s : nullptr;
}

std::shared_ptr<EventState> event_of(State& S, cudaEvent_t event) {
  auto it = S.events.find(reinterpret_cast<EventState*>(event));
  return it == S.events.end() ? nullptr : it->second;
}

// The dependency closure test for joins: is node `a` an ancestor of (or equal to) one of `tips`?
bool reaches(const GraphState& g, const std::vector<size_t>& tips, size_t a) {
  std::vector<size_t> todo = tips;
  std::set<size_t> seen;
  while (!todo.empty()) {
    const size_t n = todo.back();
    todo.pop_back();
    if (n == a) return true;
    if (!seen.insert(n).second) continue;
    for (size_t d : g.nodes[n].deps) todo.push_back(d);
  }
  return false;
}

void leave_capture(State& S, Capture* c) {
  for (StreamState* s : c->streams) {
    s->capture = nullptr;
    s->tip.clear();
  }
  for (auto& [p, e] : S.events)
    if (e->capture == c) e->capture = nullptr;
  S.captures.erase(std::find(S.captures.begin(), S.captures.end(), c));
}

cudaError_t enqueue_entry(State& S, StreamState* s, std::shared_ptr<Entry> e, const char* call) {
  if (!s) return misuse(call, "not a live stream", cudaErrorInvalidResourceHandle);
  if (S.sticky != cudaSuccess) return set_last_error(S.sticky);
  if (s->legacy) {  // legacy work would wait on a capturing blocking stream: illegal
    for (Capture* c : S.captures)
      for (StreamState* t : c->streams)
        if (!t->nonblocking) {
          c->invalidated = true;
          return misuse(call, "the legacy stream would synchronise with a capturing stream",
                        cudaErrorStreamCaptureImplicit);
        }
  }
  if (Capture* c = s->capture) {
    if (c->invalidated) return set_last_error(cudaErrorStreamCaptureInvalidated);
    GraphState& g = *c->graph;
    if (e->kind == Entry::Work) {
      g.nodes.push_back(GraphNode{std::move(e->op), s->tip});
      s->tip = {g.nodes.size() - 1};
    } else if (e->kind == Entry::Record) {
      e->event->capture = c;
      e->event->last_in_capture = true;
      e->event->nodes = s->tip;
    }
    return cudaSuccess;
  }
  e->ticket = S.next_ticket++;
  S.pending[e->ticket] = s;
  start_device_thread(S);  // it runs overdue work even when nobody synchronises
  if (e->kind == Entry::Work && e->op.collective) S.collectives.insert(e->ticket);
  s->queue.push_back(std::move(e));
  return cudaSuccess;
}

cudaError_t sticky_or(cudaError_t e) {
  const cudaError_t s = st().sticky;
  return s != cudaSuccess ? s : e;
}

// Checks done by every call that touches the device.
cudaError_t device_call(const char* call) {
  if (st().old_driver) return misuse(call, "ELBO_EMU_DRIVER=old", cudaErrorInsufficientDriver);
  if (st().visible.empty()) return misuse(call, "no emulated device is visible", cudaErrorNoDevice);
  return st().sticky != cudaSuccess ? set_last_error(st().sticky) : cudaSuccess;
}

// Synchronous wait for everything queued on s so far (or for one ticket).
cudaError_t sync_ticket(uint64_t ticket) {
  State& S = st();
  std::unique_lock<std::mutex> lock(S.mu);
  wait_until(ticket, lock);
  return S.sticky != cudaSuccess ? set_last_error(S.sticky) : cudaSuccess;
}

// ---- copies -----------------------------------------------------------------------------------

Side side_of(State& S, const void* p) {
  if (find_in(S.device, p, 0)) return Side::Device;
  if (find_in(S.pinned, p, 0)) return Side::Pinned;
  return Side::Host;
}

namespace {

const char* kind_name(cudaMemcpyKind k) {
  switch (k) {
    case cudaMemcpyHostToHost:
      return "cudaMemcpyHostToHost";
    case cudaMemcpyHostToDevice:
      return "cudaMemcpyHostToDevice";
    case cudaMemcpyDeviceToHost:
      return "cudaMemcpyDeviceToHost";
    case cudaMemcpyDeviceToDevice:
      return "cudaMemcpyDeviceToDevice";
    case cudaMemcpyDefault:
      return "cudaMemcpyDefault";
  }
  return "an unknown cudaMemcpyKind";
}

}  // namespace

// Checks a copy's kind against where its pointers are, and that device ranges lie inside one
// allocation. Caller holds mu.
cudaError_t check_copy(State& S, const char* call, void* dst, const void* src, size_t bytes,
                       cudaMemcpyKind kind) {
  const bool dst_dev = side_of(S, dst) == Side::Device, src_dev = side_of(S, src) == Side::Device;
  bool want_dst = dst_dev, want_src = src_dev;
  switch (kind) {
    case cudaMemcpyHostToHost:
      want_dst = want_src = false;
      break;
    case cudaMemcpyHostToDevice:
      want_dst = true, want_src = false;
      break;
    case cudaMemcpyDeviceToHost:
      want_dst = false, want_src = true;
      break;
    case cudaMemcpyDeviceToDevice:
      want_dst = want_src = true;
      break;
    case cudaMemcpyDefault:
      break;
    default:
      return misuse(call, "invalid copy kind " + std::to_string(kind),
                    cudaErrorInvalidMemcpyDirection);
  }
  if (want_dst != dst_dev || want_src != src_dev)
    return misuse(call,
                  std::string(kind_name(kind)) + " but dst " + hex(dst) + " is " +
                      (dst_dev ? "device" : "host") + " memory and src " + hex(src) + " is " +
                      (src_dev ? "device" : "host") + " memory",
                  cudaErrorInvalidValue);
  if ((!dst && bytes) || (!src && bytes))
    return misuse(call, "null pointer", cudaErrorInvalidValue);
  if (dst_dev && !find_in(S.device, dst, bytes))
    return misuse(
        call, "dst " + hex(dst) + " + " + std::to_string(bytes) + " bytes runs past its allocation",
        cudaErrorInvalidValue);
  if (src_dev && !find_in(S.device, src, bytes))
    return misuse(
        call, "src " + hex(src) + " + " + std::to_string(bytes) + " bytes runs past its allocation",
        cudaErrorInvalidValue);
  const auto d = reinterpret_cast<uintptr_t>(dst), r = reinterpret_cast<uintptr_t>(src);
  if (bytes && d < r + bytes && r < d + bytes &&
      d != r)  // CUDA leaves overlapping copies undefined
    return misuse(call, "dst and src overlap", cudaErrorInvalidValue);
  return cudaSuccess;
}

std::shared_ptr<Entry> copy_entry(void* dst, const void* src, size_t bytes) {
  auto e = std::make_shared<Entry>();
  e->op.name = "memcpy";
  e->op.run = [dst, src, bytes] {  // reads the source now, when it executes
    if (bytes) std::memmove(dst, src, bytes);
    return cudaSuccess;
  };
  return e;
}

}  // namespace elbo_emu::rt

// ---- the internal interface -------------------------------------------------------------------

namespace elbo_emu {

using namespace rt;

cudaError_t set_last_error(cudaError_t e) {
  if (e != cudaSuccess) t_last_error = e;
  return e;
}

void report_fault(const std::string& message) {
  State& S = st();
  std::fprintf(stderr, "elbo-emu: device fault: %s\n", message.c_str());
  std::lock_guard<std::mutex> lock(S.mu);
  if (S.fault.empty()) S.fault = message;
}

std::string last_fault() {
  std::lock_guard<std::mutex> lock(st().mu);
  return st().fault;
}

void reset_faults() {
  std::lock_guard<std::mutex> lock(st().mu);
  st().fault.clear();
  st().sticky = cudaSuccess;
  t_last_error = cudaSuccess;
}

cudaError_t enqueue(cudaStream_t stream, Op op) {
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  auto e = std::make_shared<Entry>();
  e->op = std::move(op);
  return enqueue_entry(S, stream_of(S, stream), std::move(e), "enqueue");
}

cudaStreamCaptureStatus capture_status(cudaStream_t stream) {
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  StreamState* s = stream_of(S, stream);
  if (!s || !s->capture) return cudaStreamCaptureStatusNone;
  return s->capture->invalidated ? cudaStreamCaptureStatusInvalidated
                                 : cudaStreamCaptureStatusActive;
}

void drain() {
  State& S = st();
  std::unique_lock<std::mutex> lock(S.mu);
  if (!S.pending.empty()) wait_until(S.pending.rbegin()->first, lock, true);
}

void register_demand_poller(std::function<bool()> poller) {
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  S.pollers.push_back(std::move(poller));
  start_device_thread(S);
}

bool is_device_range(const void* p, size_t bytes) {
  std::lock_guard<std::mutex> lock(st().mu);
  return find_in(st().device, p, bytes) != nullptr;
}
bool is_pinned(const void* p) {
  std::lock_guard<std::mutex> lock(st().mu);
  return find_in(st().pinned, p, 0) != nullptr;
}

void launch_kernel(KernelLaunch launch, cudaStream_t stream) {
  std::string why;
  if (validate_launch(launch, &why) != cudaSuccess) {
    misuse(launch.name, "launch configuration: " + why, cudaErrorInvalidConfiguration);
    return;
  }
  auto shared = std::make_shared<const KernelLaunch>(std::move(launch));
  Op op;
  op.name = std::string("kernel ") + shared->name;
  if (!shared->host_pointer_argument.empty()) {
    op.run = [shared] {
      report_fault(std::string("kernel ") + shared->name + ": " + shared->host_pointer_argument +
                   " is host memory that a GPU cannot reach (an illegal address)");
      return cudaErrorIllegalAddress;
    };
  } else {
    op.run = [shared] { return execute_kernel(*shared); };
  }
  enqueue(stream, std::move(op));
}

bool reachable_from_device(const void* p) {
  if (!p) return true;
  const char* c = static_cast<const char*>(p);
  return is_device_range(c, 0) || is_pinned(c) || is_device_range(c - 1, 1) || is_pinned(c - 1);
}

}  // namespace elbo_emu
