// Private to the emulator's runtime (runtime.cpp, runtime_api.cpp, runtime_streams.cpp): the
// state behind streams, events, graphs and memory, and the helpers the API functions share.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "elbo_emu/emulator.h"
#include "poison.h"

namespace elbo_emu::rt {

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
  std::chrono::steady_clock::time_point queued_at = std::chrono::steady_clock::now();
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
  Capture* capture = nullptr;    // recorded during this (live) capture
  bool last_in_capture = false;  // last recorded in a capture: queries and syncs are errors
  std::vector<size_t> nodes;     // ... standing for these nodes
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
  std::set<StreamState*> streams;                        // live handles
  std::set<std::shared_ptr<StreamState>> owned_streams;  // including destroyed ones with work
  std::map<EventState*, std::shared_ptr<EventState>> events;
  std::set<GraphState*> graphs;
  std::set<ExecState*> execs;
  std::map<uintptr_t, Allocation> device, pinned;
  std::map<uint64_t, StreamState*> pending;  // ticket -> stream, for work not yet executed
  std::set<uint64_t> collectives;            // the pending tickets that hold a collective
  uint64_t next_ticket = 1;
  std::vector<Capture*> captures;                // live
  std::atomic<cudaError_t> sticky{cudaSuccess};  // read without mu by cudaGetLastError
  std::string fault;
  // The device thread and what it has been asked to do.
  bool device_started = false;
  std::thread::id device_id;
  uint64_t requests = 0, completed = 0;  // "run everything enqueued before request k"
  // Per outstanding request: the ticket to run until, and whether everything before it must run
  // too (a drain) or only what it depends on (a stream or event synchronisation).
  std::vector<std::pair<uint64_t, bool>> request_targets;
  bool device_active = false;  // device memory unpoisoned, work running
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

// The one State of the process (runtime.cpp).
State& st();

// The calling thread's last error, current device and capture mode (defined in runtime.cpp).
extern thread_local cudaError_t t_last_error;
extern thread_local int t_device;
extern thread_local cudaStreamCaptureMode t_capture_mode;

// A misuse: says which call and why (CUDA's codes alone rarely tell), sets the last error.
cudaError_t misuse(const char* call, const std::string& why, cudaError_t code);

std::string hex(const void* p);

// The allocation that holds [p, p + bytes), or nullptr. Caller holds mu.
const std::pair<const uintptr_t, Allocation>* find_in(const std::map<uintptr_t, Allocation>& table,
                                                      const void* p, size_t bytes);

// Waits until `target` has executed. With all, everything enqueued before it runs too; without,
// only what it depends on, so unrelated work stays queued.
void wait_until(uint64_t target, std::unique_lock<std::mutex>& lock, bool all = false);

// ---- captures ---------------------------------------------------------------------------------

// Whether this thread may make a potentially unsafe call (a synchronisation, an allocation) now.
// When not, the capture(s) concerned are invalidated, as CUDA does.
cudaError_t check_capture_rules(State& S, const char* call);

// The state behind a stream handle (the legacy stream for nullptr, cudaStreamLegacy and
// cudaStreamPerThread), or nullptr when it is not a live stream.
StreamState* stream_of(State& S, cudaStream_t stream);
// The event behind a handle, or nullptr when it is not a live one. Caller holds mu.
std::shared_ptr<EventState> event_of(State& S, cudaEvent_t event);

// The dependency closure test for joins: is node `a` an ancestor of (or equal to) one of `tips`?
bool reaches(const GraphState& g, const std::vector<size_t>& tips, size_t a);

// Ends capture `c` for its streams and events and forgets it (the caller deletes it).
void leave_capture(State& S, Capture* c);

// Queues `e` on `s`, or records it into the graph `s` is capturing. Caller holds mu.
cudaError_t enqueue_entry(State& S, StreamState* s, std::shared_ptr<Entry> e, const char* call);

// The sticky error if there is one, else `e`.
cudaError_t sticky_or(cudaError_t e);

// Checks done by every call that touches the device.
cudaError_t device_call(const char* call);

// Synchronous wait for everything queued on s so far (or for one ticket).
cudaError_t sync_ticket(uint64_t ticket);

// ---- copies -----------------------------------------------------------------------------------

enum class Side { Host, Pinned, Device };
Side side_of(State& S, const void* p);

// Checks a copy's kind against where its pointers are, and that device ranges lie inside one
// allocation. Caller holds mu.
cudaError_t check_copy(State& S, const char* call, void* dst, const void* src, size_t bytes,
                       cudaMemcpyKind kind);

// A memcpy entry, not yet queued.
std::shared_ptr<Entry> copy_entry(void* dst, const void* src, size_t bytes);

}  // namespace elbo_emu::rt
