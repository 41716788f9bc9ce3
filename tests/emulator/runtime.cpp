// The CUDA runtime of the emulator: devices, memory, streams, events and graphs, with the
// libcudart symbols the real CUDA 13 headers declare. Work is deferred: it runs on the device
// thread only when a synchronisation (or a peer rank) demands it, in an order that respects only
// the dependencies CUDA promises (stream order, events, the legacy default stream).
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "elbo_emu/emulator.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define ELBO_EMU_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define ELBO_EMU_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define ELBO_EMU_POISON(p, n) ((void)(p), (void)(n))
#define ELBO_EMU_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace elbo_emu {
namespace {

using Clock = std::chrono::steady_clock;

// ---- state ------------------------------------------------------------------------------------

struct EventState;
struct Capture;

// One item queued on a stream: work, an event record, or a wait for an event's record.
struct Entry {
  enum Kind { Work, Record, Wait } kind = Work;
  uint64_t ticket = 0;  // global enqueue order
  Op op;
  std::shared_ptr<EventState> event;  // Record
  uint64_t wait_for = 0;              // Wait: the record ticket (0: nothing to wait for)
};

struct StreamState {
  bool legacy = false, nonblocking = false;
  std::deque<std::shared_ptr<Entry>> queue;  // not yet executed, in stream order
  Capture* capture = nullptr;                // the capture this stream takes part in
  std::vector<size_t> tip;                   // capture: the nodes the next node depends on
};

struct EventState {
  bool timing = true;
  uint64_t record_ticket = 0;  // the last record enqueued; 0: never recorded
  Clock::time_point recorded_at{};
  Capture* capture = nullptr;  // recorded during this (live) capture
  std::vector<size_t> nodes;   // ... standing for these nodes
};

struct GraphNode {
  Op op;
  std::vector<size_t> deps;
};
struct GraphState {
  std::vector<GraphNode> nodes;  // in capture order, which is a topological order
};
struct ExecState {
  std::shared_ptr<const std::vector<Op>> ops;  // shared with launches still queued
};

struct Capture {
  StreamState* origin = nullptr;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  std::thread::id thread;
  bool invalidated = false;
  std::string why;  // what invalidated it
  std::unique_ptr<GraphState> graph = std::make_unique<GraphState>();
  std::set<StreamState*> streams;
};

struct Allocation {
  size_t bytes = 0;
};

struct State {
  std::mutex mu;
  std::condition_variable wake_device;  // requests for the device thread
  std::condition_variable work_done;    // requests completed
  StreamState legacy_stream;
  std::set<StreamState*> streams;       // live handles
  std::set<std::shared_ptr<StreamState>> owned_streams;  // including destroyed ones with work
  std::map<EventState*, std::shared_ptr<EventState>> events;
  std::set<GraphState*> graphs;
  std::set<ExecState*> execs;
  std::map<uintptr_t, Allocation> device, pinned;
  std::map<uint64_t, StreamState*> pending;  // ticket -> stream, for work not yet executed
  uint64_t next_ticket = 1;
  std::vector<Capture*> captures;  // live
  cudaError_t sticky = cudaSuccess;
  std::string fault;
  // The device thread and what it has been asked to do.
  bool device_started = false;
  std::thread::id device_id;
  uint64_t requests = 0, completed = 0;  // "run everything enqueued before request k"
  // Per outstanding request: the ticket to run until, and whether everything before it must run
  // too (a drain) or only what it depends on (a stream or event synchronisation).
  std::vector<std::pair<uint64_t, bool>> request_targets;
  bool device_active = false;             // device memory unpoisoned, work running
  std::vector<std::function<bool()>> pollers;
  // Devices.
  int devices = 1;
  std::vector<int> visible;  // emulated physical ids, after CUDA_VISIBLE_DEVICES
  bool old_driver = false;

  State() {
    legacy_stream.legacy = true;
    if (const char* n = std::getenv("ELBO_EMU_DEVICES")) devices = std::max(0, std::atoi(n));
    if (const char* d = std::getenv("ELBO_EMU_DRIVER")) old_driver = std::strcmp(d, "old") == 0;
    if (const char* v = std::getenv("CUDA_VISIBLE_DEVICES")) {
      for (const char* p = v; *p;) {
        char* end = nullptr;
        const long id = std::strtol(p, &end, 10);
        if (end == p || id < 0 || id >= devices) break;  // CUDA stops at the first invalid entry
        visible.push_back(static_cast<int>(id));
        p = *end == ',' ? end + 1 : end;
        if (*end != ',' && *end) break;
      }
    } else {
      for (int i = 0; i < devices; ++i) visible.push_back(i);
    }
  }
};

// Leaked on purpose: work may still be queued when static destructors run at exit.
State& st() {
  static State* s = new State;
  return *s;
}

thread_local cudaError_t t_last_error = cudaSuccess;
thread_local int t_device = 0;
thread_local cudaStreamCaptureMode t_capture_mode = cudaStreamCaptureModeGlobal;

bool quiet() {
  static const bool q = std::getenv("ELBO_EMU_QUIET") != nullptr;
  return q;
}

// A misuse: says which call and why (CUDA's codes alone rarely tell), sets the last error.
cudaError_t misuse(const char* call, const std::string& why, cudaError_t code) {
  if (!quiet()) std::fprintf(stderr, "elbo-emu: %s: %s (%s)\n", call, why.c_str(), cudaGetErrorName(code));
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

// ---- the device thread ------------------------------------------------------------------------

void set_device_memory_access(State& s, bool on) {
  for (const auto& [base, a] : s.device) {
    if (on) ELBO_EMU_UNPOISON(reinterpret_cast<void*>(base), a.bytes);
    else ELBO_EMU_POISON(reinterpret_cast<void*>(base), a.bytes);
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
}

// Runs, on the device thread, exactly what `ticket` depends on, then it. Caller holds mu.
void run_until(State& S, uint64_t ticket, std::unique_lock<std::mutex>& lock) {
  while (S.pending.count(ticket)) {
    StreamState& s = *S.pending.at(ticket);
    const uint64_t dep = blocking_dependency(S, s, *s.queue.front());
    if (dep) run_until(S, dep, lock);
    else execute_head(S, s, lock);
  }
}

void device_loop() {
  State& S = st();
  std::unique_lock<std::mutex> lock(S.mu);
  for (;;) {
    S.wake_device.wait_for(lock, std::chrono::milliseconds(1),
                           [&] { return S.completed < S.requests; });
    if (S.completed == S.requests) {  // idle: does a peer wait for our work?
      const auto pollers = S.pollers;
      lock.unlock();
      bool demanded = false;
      for (const auto& p : pollers) demanded = p() || demanded;
      lock.lock();
      if (!demanded || S.pending.empty()) continue;
      S.request_targets.emplace_back(S.pending.rbegin()->first, true);
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

// Waits until `target` has executed. With all, everything enqueued before it runs too; without,
// only what it depends on, so unrelated work stays queued.
void wait_until(uint64_t target, std::unique_lock<std::mutex>& lock, bool all = false) {
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
      return misuse(call, "not permitted while a stream capture is active", cudaErrorStreamCaptureUnsupported);
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
      e->event->nodes = s->tip;
    }
    return cudaSuccess;
  }
  e->ticket = S.next_ticket++;
  S.pending[e->ticket] = s;
  s->queue.push_back(std::move(e));
  return cudaSuccess;
}

cudaError_t sticky_or(cudaError_t e) { return st().sticky != cudaSuccess ? st().sticky : e; }

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

enum class Side { Host, Pinned, Device };
Side side_of(State& S, const void* p) {
  if (find_in(S.device, p, 0)) return Side::Device;
  if (find_in(S.pinned, p, 0)) return Side::Pinned;
  return Side::Host;
}
const char* kind_name(cudaMemcpyKind k) {
  switch (k) {
    case cudaMemcpyHostToHost: return "cudaMemcpyHostToHost";
    case cudaMemcpyHostToDevice: return "cudaMemcpyHostToDevice";
    case cudaMemcpyDeviceToHost: return "cudaMemcpyDeviceToHost";
    case cudaMemcpyDeviceToDevice: return "cudaMemcpyDeviceToDevice";
    case cudaMemcpyDefault: return "cudaMemcpyDefault";
  }
  return "an unknown cudaMemcpyKind";
}

// Checks a copy's kind against where its pointers are, and that device ranges lie inside one
// allocation. Caller holds mu.
cudaError_t check_copy(State& S, const char* call, void* dst, const void* src, size_t bytes,
                       cudaMemcpyKind kind) {
  const bool dst_dev = side_of(S, dst) == Side::Device, src_dev = side_of(S, src) == Side::Device;
  bool want_dst = dst_dev, want_src = src_dev;
  switch (kind) {
    case cudaMemcpyHostToHost: want_dst = want_src = false; break;
    case cudaMemcpyHostToDevice: want_dst = true, want_src = false; break;
    case cudaMemcpyDeviceToHost: want_dst = false, want_src = true; break;
    case cudaMemcpyDeviceToDevice: want_dst = want_src = true; break;
    case cudaMemcpyDefault: break;
    default: return misuse(call, "invalid copy kind " + std::to_string(kind), cudaErrorInvalidMemcpyDirection);
  }
  if (want_dst != dst_dev || want_src != src_dev)
    return misuse(call, std::string(kind_name(kind)) + " but dst " + hex(dst) + " is " +
                            (dst_dev ? "device" : "host") + " memory and src " + hex(src) + " is " +
                            (src_dev ? "device" : "host") + " memory",
                  cudaErrorInvalidValue);
  if ((!dst && bytes) || (!src && bytes)) return misuse(call, "null pointer", cudaErrorInvalidValue);
  if (dst_dev && !find_in(S.device, dst, bytes))
    return misuse(call, "dst " + hex(dst) + " + " + std::to_string(bytes) + " bytes runs past its allocation", cudaErrorInvalidValue);
  if (src_dev && !find_in(S.device, src, bytes))
    return misuse(call, "src " + hex(src) + " + " + std::to_string(bytes) + " bytes runs past its allocation", cudaErrorInvalidValue);
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

}  // namespace

// ---- the internal interface -------------------------------------------------------------------

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
  return s->capture->invalidated ? cudaStreamCaptureStatusInvalidated : cudaStreamCaptureStatusActive;
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
bool on_device_thread() { return std::this_thread::get_id() == st().device_id; }

void launch_kernel(KernelLaunch launch, cudaStream_t stream) {
  std::string why;
  if (validate_launch(launch, &why) != cudaSuccess) {
    misuse(launch.name, "launch configuration: " + why, cudaErrorInvalidConfiguration);
    return;
  }
  auto shared = std::make_shared<const KernelLaunch>(std::move(launch));
  Op op{std::string("kernel ") + shared->name, [shared] { return execute_kernel(*shared); }, nullptr};
  enqueue(stream, std::move(op));
}

}  // namespace elbo_emu

// ---- the CUDA runtime API -----------------------------------------------------------------------

using namespace elbo_emu;

extern "C" {

cudaError_t cudaGetLastError() {
  if (st().sticky != cudaSuccess) return st().sticky;
  const cudaError_t e = t_last_error;
  t_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return st().sticky != cudaSuccess ? st().sticky : t_last_error; }

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
#define ELBO_EMU_NAME(x) case x: return #x;
    ELBO_EMU_NAME(cudaSuccess) ELBO_EMU_NAME(cudaErrorInvalidValue)
    ELBO_EMU_NAME(cudaErrorMemoryAllocation) ELBO_EMU_NAME(cudaErrorInvalidConfiguration)
    ELBO_EMU_NAME(cudaErrorInvalidMemcpyDirection) ELBO_EMU_NAME(cudaErrorInsufficientDriver)
    ELBO_EMU_NAME(cudaErrorNoDevice) ELBO_EMU_NAME(cudaErrorInvalidDevice)
    ELBO_EMU_NAME(cudaErrorInvalidResourceHandle) ELBO_EMU_NAME(cudaErrorNotReady)
    ELBO_EMU_NAME(cudaErrorIllegalState) ELBO_EMU_NAME(cudaErrorLaunchFailure)
    ELBO_EMU_NAME(cudaErrorStreamCaptureUnsupported) ELBO_EMU_NAME(cudaErrorStreamCaptureInvalidated)
    ELBO_EMU_NAME(cudaErrorStreamCaptureMerge) ELBO_EMU_NAME(cudaErrorStreamCaptureUnmatched)
    ELBO_EMU_NAME(cudaErrorStreamCaptureUnjoined) ELBO_EMU_NAME(cudaErrorStreamCaptureIsolation)
    ELBO_EMU_NAME(cudaErrorStreamCaptureImplicit) ELBO_EMU_NAME(cudaErrorStreamCaptureWrongThread)
    ELBO_EMU_NAME(cudaErrorCapturedEvent) ELBO_EMU_NAME(cudaErrorInvalidDevicePointer)
#undef ELBO_EMU_NAME
    default: return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureUnjoined: return "capture was not joined to the origin stream";
    case cudaErrorStreamCaptureImplicit: return "operation would make the legacy stream depend on a capturing blocking stream";
    default: return cudaGetErrorName(e);
  }
}

cudaError_t cudaDriverGetVersion(int* v) {
  if (!v) return set_last_error(cudaErrorInvalidValue);
  *v = st().old_driver ? 11000 : CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  if (!v) return set_last_error(cudaErrorInvalidValue);
  *v = CUDART_VERSION;
  return cudaSuccess;
}

// ---- devices ----

cudaError_t cudaGetDeviceCount(int* count) {
  if (!count) return misuse("cudaGetDeviceCount", "null count", cudaErrorInvalidValue);
  *count = 0;
  if (st().old_driver) return misuse("cudaGetDeviceCount", "ELBO_EMU_DRIVER=old", cudaErrorInsufficientDriver);
  if (st().visible.empty()) return set_last_error(cudaErrorNoDevice);
  *count = static_cast<int>(st().visible.size());
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (const cudaError_t e = device_call("cudaSetDevice")) return e;
  if (device < 0 || device >= static_cast<int>(st().visible.size()))
    return misuse("cudaSetDevice", "device " + std::to_string(device) + " of " +
                                       std::to_string(st().visible.size()), cudaErrorInvalidDevice);
  t_device = device;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  if (const cudaError_t e = device_call("cudaGetDevice")) return e;
  if (!device) return misuse("cudaGetDevice", "null device", cudaErrorInvalidValue);
  *device = t_device;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (const cudaError_t e = device_call("cudaGetDeviceProperties")) return e;
  if (!prop) return misuse("cudaGetDeviceProperties", "null prop", cudaErrorInvalidValue);
  if (device < 0 || device >= static_cast<int>(st().visible.size()))
    return misuse("cudaGetDeviceProperties", "device " + std::to_string(device), cudaErrorInvalidDevice);
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof prop->name, "elbo emulated GPU %d (sm_90)", st().visible[device]);
  prop->totalGlobalMem = size_t{80} << 30;
  prop->sharedMemPerBlock = 48 << 10;
  prop->sharedMemPerBlockOptin = 227 << 10;
  prop->regsPerBlock = 65536;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->maxThreadsDim[0] = prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 2147483647;
  prop->maxGridSize[1] = prop->maxGridSize[2] = 65535;
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = 132;
  prop->concurrentKernels = 1;
  prop->pciBusID = st().visible[device] + 1;
  prop->unifiedAddressing = 1;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetPCIBusId(char* id, int len, int device) {
  if (const cudaError_t e = device_call("cudaDeviceGetPCIBusId")) return e;
  if (!id || len <= 0) return misuse("cudaDeviceGetPCIBusId", "no buffer", cudaErrorInvalidValue);
  if (device < 0 || device >= static_cast<int>(st().visible.size()))
    return misuse("cudaDeviceGetPCIBusId", "device " + std::to_string(device), cudaErrorInvalidDevice);
  std::snprintf(id, static_cast<size_t>(len), "0000:%02x:00.0", st().visible[device] + 1);
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
  if (const cudaError_t e = device_call("cudaDeviceSynchronize")) return e;
  {
    std::lock_guard<std::mutex> lock(st().mu);
    if (const cudaError_t e = check_capture_rules(st(), "cudaDeviceSynchronize")) return e;
  }
  drain();
  return st().sticky != cudaSuccess ? set_last_error(st().sticky) : cudaSuccess;
}

cudaError_t cudaDeviceReset() {
  drain();
  reset_faults();
  return cudaSuccess;
}

// ---- memory ----

cudaError_t cudaMalloc(void** p, size_t bytes) {
  if (const cudaError_t e = device_call("cudaMalloc")) return e;
  if (!p) return misuse("cudaMalloc", "null pointer to the result", cudaErrorInvalidValue);
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  if (const cudaError_t e = check_capture_rules(S, "cudaMalloc")) return e;
  *p = nullptr;
  if (bytes == 0) return cudaSuccess;
  const size_t rounded = (bytes + 255) / 256 * 256;
  void* mem = std::aligned_alloc(256, rounded);
  if (!mem) return misuse("cudaMalloc", std::to_string(bytes) + " bytes", cudaErrorMemoryAllocation);
  std::memset(mem, 0xff, rounded);  // NaN in every float and double: uninitialised reads show
  ELBO_EMU_POISON(static_cast<char*>(mem) + bytes, rounded - bytes);  // never accessible
  if (!S.device_active) ELBO_EMU_POISON(mem, bytes);  // host code may not touch device memory
  S.device[reinterpret_cast<uintptr_t>(mem)] = Allocation{bytes};
  *p = mem;
  return cudaSuccess;
}

cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(st().mu);
    if (const cudaError_t e = check_capture_rules(st(), "cudaFree")) return e;
  }
  drain();  // cudaFree synchronises the device
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  auto it = S.device.find(reinterpret_cast<uintptr_t>(p));
  if (it == S.device.end())
    return misuse("cudaFree", hex(p) + " is not the start of a device allocation", cudaErrorInvalidValue);
  const size_t rounded = (it->second.bytes + 255) / 256 * 256;
  ELBO_EMU_UNPOISON(p, rounded);
  S.device.erase(it);
  std::free(p);  // later device use is a use-after-free that AddressSanitizer reports
  return sticky_or(cudaSuccess);
}

cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned int) {
  if (const cudaError_t e = device_call("cudaHostAlloc")) return e;
  if (!p) return misuse("cudaHostAlloc", "null pointer to the result", cudaErrorInvalidValue);
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  if (const cudaError_t e = check_capture_rules(S, "cudaHostAlloc")) return e;
  void* mem = std::malloc(std::max<size_t>(bytes, 1));
  if (!mem) return misuse("cudaHostAlloc", std::to_string(bytes) + " bytes", cudaErrorMemoryAllocation);
  S.pinned[reinterpret_cast<uintptr_t>(mem)] = Allocation{std::max<size_t>(bytes, 1)};
  *p = mem;
  return cudaSuccess;
}
cudaError_t cudaMallocHost(void** p, size_t bytes) { return cudaHostAlloc(p, bytes, 0); }

cudaError_t cudaFreeHost(void* p) {
  if (!p) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(st().mu);
    if (const cudaError_t e = check_capture_rules(st(), "cudaFreeHost")) return e;
  }
  drain();
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  auto it = S.pinned.find(reinterpret_cast<uintptr_t>(p));
  if (it == S.pinned.end())
    return misuse("cudaFreeHost", hex(p) + " is not a pinned allocation", cudaErrorInvalidValue);
  S.pinned.erase(it);
  std::free(p);
  return sticky_or(cudaSuccess);
}

cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attr, const void* p) {
  if (!attr) return misuse("cudaPointerGetAttributes", "null attributes", cudaErrorInvalidValue);
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  *attr = cudaPointerAttributes{};
  switch (side_of(S, p)) {
    case Side::Device:
      attr->type = cudaMemoryTypeDevice;
      attr->device = t_device;
      attr->devicePointer = const_cast<void*>(p);
      break;
    case Side::Pinned:
      attr->type = cudaMemoryTypeHost;
      attr->device = t_device;
      attr->devicePointer = attr->hostPointer = const_cast<void*>(p);
      break;
    case Side::Host: attr->type = cudaMemoryTypeUnregistered; break;
  }
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  if (const cudaError_t e = device_call("cudaMemcpyAsync")) return e;
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  if (const cudaError_t e = check_copy(S, "cudaMemcpyAsync", dst, src, bytes, kind)) return e;
  return enqueue_entry(S, stream_of(S, stream), copy_entry(dst, src, bytes), "cudaMemcpyAsync");
}

// On the legacy stream. Device-to-host and pinned copies return when done; from pageable host
// memory the source is staged at once and the copy may land later (as CUDA documents);
// device-to-device copies do not wait.
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (const cudaError_t e = device_call("cudaMemcpy")) return e;
  State& S = st();
  std::unique_lock<std::mutex> lock(S.mu);
  if (const cudaError_t e = check_capture_rules(S, "cudaMemcpy")) return e;
  if (const cudaError_t e = check_copy(S, "cudaMemcpy", dst, src, bytes, kind)) return e;
  const Side from = side_of(S, src), to = side_of(S, dst);
  std::shared_ptr<Entry> e;
  bool wait = true;
  if (from == Side::Host && to == Side::Device) {
    auto staged = std::make_shared<std::vector<char>>(static_cast<const char*>(src),
                                                       static_cast<const char*>(src) + bytes);
    e = copy_entry(dst, staged->data(), bytes);
    e->op.keepalive = staged;
    wait = false;
  } else {
    e = copy_entry(dst, src, bytes);
    wait = !(from == Side::Device && to == Side::Device);
  }
  if (const cudaError_t rc = enqueue_entry(S, &S.legacy_stream, e, "cudaMemcpy")) return rc;
  if (wait) wait_until(e->ticket, lock);
  return S.sticky != cudaSuccess ? set_last_error(S.sticky) : cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t stream) {
  if (const cudaError_t e = device_call("cudaMemsetAsync")) return e;
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  if (bytes && !find_in(S.device, p, bytes))
    return misuse("cudaMemsetAsync", hex(p) + " + " + std::to_string(bytes) +
                                         " bytes is not inside one device allocation", cudaErrorInvalidValue);
  auto e = std::make_shared<Entry>();
  e->op.name = "memset";
  e->op.run = [p, value, bytes] {
    if (bytes) std::memset(p, value, bytes);
    return cudaSuccess;
  };
  return enqueue_entry(S, stream_of(S, stream), std::move(e), "cudaMemsetAsync");
}
cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  {
    std::lock_guard<std::mutex> lock(st().mu);
    if (const cudaError_t e = check_capture_rules(st(), "cudaMemset")) return e;
  }
  return cudaMemsetAsync(p, value, bytes, nullptr);
}

// ---- streams ----

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags) {
  if (const cudaError_t e = device_call("cudaStreamCreateWithFlags")) return e;
  if (!stream) return misuse("cudaStreamCreateWithFlags", "null stream", cudaErrorInvalidValue);
  if (flags & ~static_cast<unsigned>(cudaStreamNonBlocking))
    return misuse("cudaStreamCreateWithFlags", "unknown flags", cudaErrorInvalidValue);
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  auto s = std::make_shared<StreamState>();
  s->nonblocking = (flags & cudaStreamNonBlocking) != 0;
  S.owned_streams.insert(s);
  S.streams.insert(s.get());
  *stream = reinterpret_cast<cudaStream_t>(s.get());
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, 0); }

// Work already queued still runs (CUDA releases the stream once it is done); the handle dies now.
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  StreamState* s = stream_of(S, stream);
  if (!s || s->legacy) return misuse("cudaStreamDestroy", "not a live stream", cudaErrorInvalidResourceHandle);
  if (s->capture) return misuse("cudaStreamDestroy", "the stream is capturing", cudaErrorIllegalState);
  S.streams.erase(s);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (const cudaError_t e = device_call("cudaStreamSynchronize")) return e;
  State& S = st();
  std::unique_lock<std::mutex> lock(S.mu);
  StreamState* s = stream_of(S, stream);
  if (!s) return misuse("cudaStreamSynchronize", "not a live stream", cudaErrorInvalidResourceHandle);
  if (s->capture) {
    s->capture->invalidated = true;
    s->capture->why = "cudaStreamSynchronize of the capturing stream";
    return misuse("cudaStreamSynchronize", "the stream is capturing", cudaErrorStreamCaptureUnsupported);
  }
  if (s->legacy)
    if (const cudaError_t e = check_capture_rules(S, "cudaStreamSynchronize(legacy stream)")) return e;
  if (!s->queue.empty()) wait_until(s->queue.back()->ticket, lock);
  return S.sticky != cudaSuccess ? set_last_error(S.sticky) : cudaSuccess;
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  StreamState* s = stream_of(S, stream);
  if (!s) return misuse("cudaStreamQuery", "not a live stream", cudaErrorInvalidResourceHandle);
  if (s->capture) {
    s->capture->invalidated = true;
    return misuse("cudaStreamQuery", "the stream is capturing", cudaErrorStreamCaptureUnsupported);
  }
  if (S.sticky != cudaSuccess) return S.sticky;
  return s->queue.empty() ? cudaSuccess : cudaErrorNotReady;  // not an error: not recorded
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
  if (const cudaError_t e = device_call("cudaStreamWaitEvent")) return e;
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  StreamState* s = stream_of(S, stream);
  auto it = S.events.find(reinterpret_cast<EventState*>(event));
  if (!s) return misuse("cudaStreamWaitEvent", "not a live stream", cudaErrorInvalidResourceHandle);
  if (it == S.events.end()) return misuse("cudaStreamWaitEvent", "not a live event", cudaErrorInvalidResourceHandle);
  EventState& ev = *it->second;
  if (ev.capture) {  // a fork or join inside a capture
    Capture* c = ev.capture;
    if (s->capture && s->capture != c)
      return misuse("cudaStreamWaitEvent", "the event belongs to another capture", cudaErrorStreamCaptureIsolation);
    if (c->invalidated) return set_last_error(cudaErrorStreamCaptureInvalidated);
    if (!s->capture) {
      s->capture = c;
      c->streams.insert(s);
      s->tip = ev.nodes;
    } else {
      for (size_t n : ev.nodes)
        if (std::find(s->tip.begin(), s->tip.end(), n) == s->tip.end()) s->tip.push_back(n);
    }
    return cudaSuccess;
  }
  if (s->capture) {  // waiting on work outside the capture cannot be put in a graph
    s->capture->invalidated = true;
    return misuse("cudaStreamWaitEvent", "a capturing stream waits on an event recorded outside the capture",
                  cudaErrorStreamCaptureIsolation);
  }
  auto e = std::make_shared<Entry>();
  e->kind = Entry::Wait;
  e->wait_for = ev.record_ticket;
  return enqueue_entry(S, s, std::move(e), "cudaStreamWaitEvent");
}

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
  if (const cudaError_t e = device_call("cudaStreamBeginCapture")) return e;
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  StreamState* s = stream_of(S, stream);
  if (!s) return misuse("cudaStreamBeginCapture", "not a live stream", cudaErrorInvalidResourceHandle);
  if (s->legacy)
    return misuse("cudaStreamBeginCapture", "the legacy default stream cannot be captured", cudaErrorStreamCaptureUnsupported);
  if (s->capture) return misuse("cudaStreamBeginCapture", "the stream is already capturing", cudaErrorIllegalState);
  auto* c = new Capture;
  c->origin = s;
  c->mode = mode;
  c->thread = std::this_thread::get_id();
  c->streams.insert(s);
  s->capture = c;
  S.captures.push_back(c);
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  StreamState* s = stream_of(S, stream);
  if (!graph) return misuse("cudaStreamEndCapture", "null graph", cudaErrorInvalidValue);
  *graph = nullptr;
  if (!s || !s->capture) return misuse("cudaStreamEndCapture", "the stream is not capturing", cudaErrorIllegalState);
  Capture* c = s->capture;
  if (c->origin != s)
    return misuse("cudaStreamEndCapture", "not the stream the capture began on", cudaErrorStreamCaptureUnmatched);
  if (c->mode != cudaStreamCaptureModeRelaxed && c->thread != std::this_thread::get_id())
    return misuse("cudaStreamEndCapture", "another thread began the capture", cudaErrorStreamCaptureWrongThread);
  cudaError_t rc = cudaSuccess;
  if (!c->invalidated) {
    for (StreamState* t : c->streams)
      if (t != s)
        for (size_t n : t->tip)
          if (!reaches(*c->graph, s->tip, n)) {
            rc = misuse("cudaStreamEndCapture", "a forked stream did not join the origin stream",
                        cudaErrorStreamCaptureUnjoined);
            break;
          }
  } else {
    rc = misuse("cudaStreamEndCapture", "the capture was invalidated by " + (c->why.empty() ? std::string("an earlier error") : c->why),
                cudaErrorStreamCaptureInvalidated);
  }
  if (rc == cudaSuccess) {
    GraphState* g = c->graph.release();
    S.graphs.insert(g);
    *graph = reinterpret_cast<cudaGraph_t>(g);
  }
  leave_capture(S, c);
  delete c;
  return rc;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  if (!status) return misuse("cudaStreamIsCapturing", "null status", cudaErrorInvalidValue);
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  StreamState* s = stream_of(S, stream);
  if (!s) return misuse("cudaStreamIsCapturing", "not a live stream", cudaErrorInvalidResourceHandle);
  *status = !s->capture ? cudaStreamCaptureStatusNone
            : s->capture->invalidated ? cudaStreamCaptureStatusInvalidated
                                      : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}

cudaError_t cudaThreadExchangeStreamCaptureMode(cudaStreamCaptureMode* mode) {
  if (!mode) return misuse("cudaThreadExchangeStreamCaptureMode", "null mode", cudaErrorInvalidValue);
  std::swap(*mode, t_capture_mode);
  return cudaSuccess;
}

// ---- events ----

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  if (const cudaError_t e = device_call("cudaEventCreateWithFlags")) return e;
  if (!event) return misuse("cudaEventCreateWithFlags", "null event", cudaErrorInvalidValue);
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  auto ev = std::make_shared<EventState>();
  ev->timing = (flags & cudaEventDisableTiming) == 0;
  S.events[ev.get()] = ev;
  *event = reinterpret_cast<cudaEvent_t>(ev.get());
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, 0); }

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  if (!S.events.erase(reinterpret_cast<EventState*>(event)))
    return misuse("cudaEventDestroy", "not a live event", cudaErrorInvalidResourceHandle);
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (const cudaError_t e = device_call("cudaEventRecord")) return e;
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  auto it = S.events.find(reinterpret_cast<EventState*>(event));
  if (it == S.events.end()) return misuse("cudaEventRecord", "not a live event", cudaErrorInvalidResourceHandle);
  auto e = std::make_shared<Entry>();
  e->kind = Entry::Record;
  e->event = it->second;
  StreamState* s = stream_of(S, stream);
  const cudaError_t rc = enqueue_entry(S, s, e, "cudaEventRecord");
  if (rc == cudaSuccess && s && !s->capture) {
    it->second->record_ticket = e->ticket;
    it->second->capture = nullptr;
  }
  return rc;
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  auto it = S.events.find(reinterpret_cast<EventState*>(event));
  if (it == S.events.end()) return misuse("cudaEventQuery", "not a live event", cudaErrorInvalidResourceHandle);
  if (it->second->capture)
    return misuse("cudaEventQuery", "the event was recorded in a live capture", cudaErrorCapturedEvent);
  if (S.sticky != cudaSuccess) return S.sticky;
  return S.pending.count(it->second->record_ticket) ? cudaErrorNotReady : cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  State& S = st();
  uint64_t ticket = 0;
  {
    std::lock_guard<std::mutex> lock(S.mu);
    auto it = S.events.find(reinterpret_cast<EventState*>(event));
    if (it == S.events.end())
      return misuse("cudaEventSynchronize", "not a live event", cudaErrorInvalidResourceHandle);
    if (it->second->capture)
      return misuse("cudaEventSynchronize", "the event was recorded in a live capture", cudaErrorCapturedEvent);
    ticket = it->second->record_ticket;
  }
  return sync_ticket(ticket);
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  auto a = S.events.find(reinterpret_cast<EventState*>(start));
  auto b = S.events.find(reinterpret_cast<EventState*>(end));
  if (!ms || a == S.events.end() || b == S.events.end())
    return misuse("cudaEventElapsedTime", "not live events", cudaErrorInvalidResourceHandle);
  if (!a->second->timing || !b->second->timing)
    return misuse("cudaEventElapsedTime", "an event was created with cudaEventDisableTiming", cudaErrorInvalidResourceHandle);
  if (S.pending.count(a->second->record_ticket) || S.pending.count(b->second->record_ticket))
    return cudaErrorNotReady;
  *ms = std::chrono::duration<float, std::milli>(b->second->recorded_at - a->second->recorded_at).count();
  return cudaSuccess;
}

// ---- graphs ----

cudaError_t cudaGraphInstantiateWithFlags(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  auto* g = reinterpret_cast<GraphState*>(graph);
  if (!exec || !S.graphs.count(g)) return misuse("cudaGraphInstantiate", "not a live graph", cudaErrorInvalidValue);
  auto ops = std::make_shared<std::vector<Op>>();
  for (const GraphNode& n : g->nodes) ops->push_back(n.op);  // shares each op's keepalive
  auto* x = new ExecState{std::move(ops)};
  S.execs.insert(x);
  *exec = reinterpret_cast<cudaGraphExec_t>(x);
  return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags) {
  return cudaGraphInstantiateWithFlags(exec, graph, flags);
}

// The recorded work, with the arguments frozen at capture, queued as one unit on `stream`.
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  if (const cudaError_t e = device_call("cudaGraphLaunch")) return e;
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  auto* x = reinterpret_cast<ExecState*>(exec);
  if (!S.execs.count(x)) return misuse("cudaGraphLaunch", "not a live graph exec", cudaErrorInvalidResourceHandle);
  auto e = std::make_shared<Entry>();
  e->op.name = "graph";
  e->op.run = [ops = x->ops] {
    for (const Op& op : *ops)
      if (const cudaError_t rc = op.run()) return rc;
    return cudaSuccess;
  };
  return enqueue_entry(S, stream_of(S, stream), std::move(e), "cudaGraphLaunch");
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  auto* g = reinterpret_cast<GraphState*>(graph);
  if (!S.graphs.erase(g)) return misuse("cudaGraphDestroy", "not a live graph", cudaErrorInvalidValue);
  delete g;
  return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  auto* x = reinterpret_cast<ExecState*>(exec);
  if (!S.execs.erase(x)) return misuse("cudaGraphExecDestroy", "not a live graph exec", cudaErrorInvalidValue);
  delete x;  // launches still queued keep the ops alive
  return cudaSuccess;
}

}  // extern "C"
