// The CUDA runtime API, part two: the libcudart symbols for streams (and their capture), events
// and graphs (errors, devices and memory are in runtime_api.cpp; the state is in runtime_state.h).
#include <algorithm>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "runtime_state.h"

using namespace elbo_emu;
using namespace elbo_emu::rt;

extern "C" {

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
  if (!s || s->legacy)
    return misuse("cudaStreamDestroy", "not a live stream", cudaErrorInvalidResourceHandle);
  if (s->capture)
    return misuse("cudaStreamDestroy", "the stream is capturing", cudaErrorIllegalState);
  S.streams.erase(s);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (const cudaError_t e = device_call("cudaStreamSynchronize")) return e;
  State& S = st();
  std::unique_lock<std::mutex> lock(S.mu);
  StreamState* s = stream_of(S, stream);
  if (!s)
    return misuse("cudaStreamSynchronize", "not a live stream", cudaErrorInvalidResourceHandle);
  if (s->capture) {
    s->capture->invalidated = true;
    s->capture->why = "cudaStreamSynchronize of the capturing stream";
    return misuse("cudaStreamSynchronize", "the stream is capturing",
                  cudaErrorStreamCaptureUnsupported);
  }
  if (s->legacy)
    if (const cudaError_t e = check_capture_rules(S, "cudaStreamSynchronize(legacy stream)"))
      return e;
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
  const std::shared_ptr<EventState> event_state = event_of(S, event);
  if (!s) return misuse("cudaStreamWaitEvent", "not a live stream", cudaErrorInvalidResourceHandle);
  if (!event_state)
    return misuse("cudaStreamWaitEvent", "not a live event", cudaErrorInvalidResourceHandle);
  EventState& ev = *event_state;
  if (ev.capture) {  // a fork or join inside a capture
    Capture* c = ev.capture;
    if (s->capture && s->capture != c)
      return misuse("cudaStreamWaitEvent", "the event belongs to another capture",
                    cudaErrorStreamCaptureIsolation);
    if (c->invalidated) return set_last_error(cudaErrorStreamCaptureInvalidated);
    if (s->legacy) {
      c->invalidated = true;
      return misuse("cudaStreamWaitEvent", "the legacy stream cannot join a capture",
                    cudaErrorStreamCaptureImplicit);
    }
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
    return misuse("cudaStreamWaitEvent",
                  "a capturing stream waits on an event recorded outside the capture",
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
  if (!s)
    return misuse("cudaStreamBeginCapture", "not a live stream", cudaErrorInvalidResourceHandle);
  if (s->legacy)
    return misuse("cudaStreamBeginCapture", "the legacy default stream cannot be captured",
                  cudaErrorStreamCaptureUnsupported);
  if (s->capture)
    return misuse("cudaStreamBeginCapture", "the stream is already capturing",
                  cudaErrorIllegalState);
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
  if (!s || !s->capture)
    return misuse("cudaStreamEndCapture", "the stream is not capturing", cudaErrorIllegalState);
  Capture* c = s->capture;
  if (c->origin != s)
    return misuse("cudaStreamEndCapture", "not the stream the capture began on",
                  cudaErrorStreamCaptureUnmatched);
  if (c->mode != cudaStreamCaptureModeRelaxed && c->thread != std::this_thread::get_id())
    return misuse("cudaStreamEndCapture", "another thread began the capture",
                  cudaErrorStreamCaptureWrongThread);
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
    rc = misuse("cudaStreamEndCapture",
                "the capture was invalidated by " +
                    (c->why.empty() ? std::string("an earlier error") : c->why),
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
  if (!s)
    return misuse("cudaStreamIsCapturing", "not a live stream", cudaErrorInvalidResourceHandle);
  *status = !s->capture               ? cudaStreamCaptureStatusNone
            : s->capture->invalidated ? cudaStreamCaptureStatusInvalidated
                                      : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}

cudaError_t cudaThreadExchangeStreamCaptureMode(cudaStreamCaptureMode* mode) {
  if (!mode)
    return misuse("cudaThreadExchangeStreamCaptureMode", "null mode", cudaErrorInvalidValue);
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
  const std::shared_ptr<EventState> ev = event_of(S, event);
  if (!ev) return misuse("cudaEventRecord", "not a live event", cudaErrorInvalidResourceHandle);
  auto e = std::make_shared<Entry>();
  e->kind = Entry::Record;
  e->event = ev;
  StreamState* s = stream_of(S, stream);
  const cudaError_t rc = enqueue_entry(S, s, e, "cudaEventRecord");
  if (rc == cudaSuccess && s && !s->capture) {
    ev->record_ticket = e->ticket;
    ev->capture = nullptr;
    ev->last_in_capture = false;
  }
  return rc;
}

namespace {

// The event that cudaEventQuery and cudaEventSynchronize may wait for, or nullptr after misuse().
// Caller holds mu.
std::shared_ptr<EventState> waitable_event(State& S, cudaEvent_t event, const char* call) {
  std::shared_ptr<EventState> ev = event_of(S, event);
  if (!ev) {
    misuse(call, "not a live event", cudaErrorInvalidResourceHandle);
  } else if (ev->last_in_capture) {
    misuse(call, "the event was last recorded in a capturing stream", cudaErrorCapturedEvent);
    ev = nullptr;
  }
  return ev;
}

}  // namespace

cudaError_t cudaEventQuery(cudaEvent_t event) {
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  const std::shared_ptr<EventState> ev = waitable_event(S, event, "cudaEventQuery");
  if (!ev) return cudaPeekAtLastError();
  if (S.sticky != cudaSuccess) return S.sticky;
  return S.pending.count(ev->record_ticket) ? cudaErrorNotReady : cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  State& S = st();
  uint64_t ticket = 0;
  {
    std::lock_guard<std::mutex> lock(S.mu);
    const std::shared_ptr<EventState> ev = waitable_event(S, event, "cudaEventSynchronize");
    if (!ev) return cudaPeekAtLastError();
    ticket = ev->record_ticket;
  }
  return sync_ticket(ticket);
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  const std::shared_ptr<EventState> a = event_of(S, start), b = event_of(S, end);
  if (!ms || !a || !b)
    return misuse("cudaEventElapsedTime", "not live events", cudaErrorInvalidResourceHandle);
  if (!a->timing || !b->timing)
    return misuse("cudaEventElapsedTime", "an event was created with cudaEventDisableTiming",
                  cudaErrorInvalidResourceHandle);
  if (a->record_ticket == 0 || b->record_ticket == 0)
    return misuse("cudaEventElapsedTime", "an event was never recorded",
                  cudaErrorInvalidResourceHandle);
  if (S.pending.count(a->record_ticket) || S.pending.count(b->record_ticket))
    return cudaErrorNotReady;
  *ms = std::chrono::duration<float, std::milli>(b->recorded_at - a->recorded_at).count();
  return cudaSuccess;
}

// ---- graphs ----

cudaError_t cudaGraphInstantiateWithFlags(cudaGraphExec_t* exec, cudaGraph_t graph,
                                          unsigned long long) {
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  auto* g = reinterpret_cast<GraphState*>(graph);
  if (!exec || !S.graphs.count(g))
    return misuse("cudaGraphInstantiate", "not a live graph", cudaErrorInvalidValue);
  auto ops = std::make_shared<std::vector<Op>>();
  for (const GraphNode& n : g->nodes) ops->push_back(n.op);  // shares each op's keepalive
  auto* x = new ExecState{std::move(ops)};
  S.execs.insert(x);
  *exec = reinterpret_cast<cudaGraphExec_t>(x);
  return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph,
                                 unsigned long long flags) {
  return cudaGraphInstantiateWithFlags(exec, graph, flags);
}

// The recorded work, with the arguments frozen at capture, queued as one unit on `stream`.
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  if (const cudaError_t e = device_call("cudaGraphLaunch")) return e;
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  auto* x = reinterpret_cast<ExecState*>(exec);
  if (!S.execs.count(x))
    return misuse("cudaGraphLaunch", "not a live graph exec", cudaErrorInvalidResourceHandle);
  auto e = std::make_shared<Entry>();
  e->op.name = "graph";
  for (const Op& op : *x->ops) e->op.collective = e->op.collective || op.collective;
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
  if (!S.graphs.erase(g))
    return misuse("cudaGraphDestroy", "not a live graph", cudaErrorInvalidValue);
  delete g;
  return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  auto* x = reinterpret_cast<ExecState*>(exec);
  if (!S.execs.erase(x))
    return misuse("cudaGraphExecDestroy", "not a live graph exec", cudaErrorInvalidValue);
  delete x;  // launches still queued keep the ops alive
  return cudaSuccess;
}

}  // extern "C"
