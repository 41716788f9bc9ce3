// The CUDA emulator's NCCL subset: ranks are processes on one machine that meet in POSIX shared
// memory named by the ncclUniqueId; collectives run on each process's device thread.
#include <fcntl.h>
#include <nccl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "elbo_emu/emulator.h"

namespace {

constexpr size_t kStagingBytes = size_t{4} << 20;  // per rank; larger collectives go in rounds
constexpr size_t kPage = 4096;
constexpr int kMaxRanks = 64;
constexpr uint64_t kReady = 0x656c626f2d6e63ULL;  // the creator has written the header
constexpr char kNamePrefix[] = "/elbo_emu_nccl_";

// Cross-process words: plain fields of the mapped segment, accessed atomically (lock-free, so
// address-free across processes; never a process-shared mutex, which a dead peer could hold).
uint64_t load(uint64_t& word) {
  return std::atomic_ref<uint64_t>(word).load(std::memory_order_acquire);
}
void store(uint64_t& word, uint64_t value) {
  std::atomic_ref<uint64_t>(word).store(value, std::memory_order_release);
}
static_assert(std::atomic_ref<uint64_t>::is_always_lock_free);

// The segment: this header in the first page, then per rank a Slot page and its staging area.
struct Header {
  uint64_t ready;  // kReady once `nranks` is written
  uint64_t nranks;
  uint64_t arrived;  // ranks that have claimed their slot
  uint64_t failed;   // start-up failed (a rank taken twice, nranks disagree): waiting ranks give up
  uint64_t aborted;  // 1 + the first rank that called ncclCommAbort, 0 while healthy
};

// Reduce-scatter's count is each rank's share of the reduced buffer, all-gather's each rank's part
// of the gathered one, as in NCCL.
enum Kind : uint64_t { kAllReduce = 1, kBroadcast = 2, kReduceScatter = 3, kAllGather = 4 };
bool reduces(uint64_t kind) { return kind == kAllReduce || kind == kReduceScatter; }

// One rank's collective, compared with its peers' in every round.
struct Call {
  uint64_t kind = 0, count = 0, type = 0, op = 0, root = 0;
  uint64_t seq = 0;  // 1-based number of the collective among those this rank has run
  bool operator==(const Call&) const = default;
};

// Round r of a communicator is its r-th chunk exchange. Rank i deposits round r (call and data)
// once every peer has consumed round r - 1, so a staging area is never overwritten while it is
// read.
struct Slot {
  uint64_t taken;      // a process has joined as this rank
  uint64_t deposited;  // the last round whose call (and data) is in this rank's staging area
  uint64_t consumed;   // the last round this rank has finished reading its peers' staging areas for
  uint64_t awaited;    // the round this rank's running collective waits in (peers' demand pollers)
  Call call;           // the call of round `deposited`
};

size_t segment_bytes(int nranks) { return kPage + size_t(nranks) * (kPage + kStagingBytes); }

// 0: not in the emulator's subset.
size_t type_size(uint64_t type) {
  return type == ncclDouble                         ? 8
         : type == ncclInt32 || type == ncclFloat   ? 4
         : type == ncclBfloat16                     ? 2
                                                    : 0;
}
const char* type_name(uint64_t type) {
  return type == ncclInt32      ? "ncclInt32"
         : type == ncclFloat    ? "ncclFloat"
         : type == ncclBfloat16 ? "ncclBfloat16"
                                : "ncclDouble";
}
bool op_supported(ncclRedOp_t op) {
  return op == ncclSum || op == ncclProd || op == ncclMax || op == ncclMin;
}
const char* op_name(uint64_t op) {
  return op == ncclSum    ? "ncclSum"
         : op == ncclProd ? "ncclProd"
         : op == ncclMax  ? "ncclMax"
                          : "ncclMin";
}

std::string describe(const Call& c) {
  std::string s = c.kind == kAllReduce       ? "ncclAllReduce"
                  : c.kind == kBroadcast     ? "ncclBroadcast"
                  : c.kind == kReduceScatter ? "ncclReduceScatter"
                                             : "ncclAllGather";
  s += "(count " + std::to_string(c.count) + ", " + type_name(c.type);
  if (reduces(c.kind)) s += std::string(", ") + op_name(c.op);
  if (c.kind == kBroadcast) s += ", root " + std::to_string(c.root);
  return s + ") as collective #" + std::to_string(c.seq);
}

template <typename T>
T combine(T a, T b, uint64_t op) {
  if (op == ncclSum) return a + b;
  if (op == ncclProd) return a * b;
  if (op == ncclMax) return b > a ? b : a;
  return b < a ? b : a;
}

// out = in[0] op in[1] op ... in rank order, so that every rank gets the bitwise same result.
template <typename T>
void reduce(void* out_bytes, const std::vector<const char*>& in, size_t n, uint64_t op) {
  T* out = static_cast<T*>(out_bytes);
  std::memcpy(out, in[0], n * sizeof(T));
  for (size_t j = 1; j < in.size(); ++j) {
    const T* x = reinterpret_cast<const T*>(in[j]);
    for (size_t i = 0; i < n; ++i) out[i] = combine(out[i], x[i], op);
  }
}

// bfloat16, as NCCL reduces it: each step widened to float, combined, and rounded back to the
// nearest bfloat16, ties to the even one. Written from the definition (the two bfloat16 values
// that bracket the float, compared in double) rather than with the bit trick elbo's own code uses,
// so that the emulator checks that code instead of repeating it.
float widen_bf16(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
uint16_t narrow_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if (std::isnan(f)) return uint16_t((u >> 16) | 0x40);
  if (std::isinf(f)) return uint16_t(u >> 16);
  const uint16_t toward_zero = uint16_t(u >> 16);
  const uint16_t away = uint16_t(toward_zero + 1);  // the next magnitude up (may be infinity)
  const double below = std::fabs(double(f) - double(widen_bf16(toward_zero)));
  // Past the largest finite bfloat16 the next value up is 2^128 (then rounded to infinity).
  const double away_value = std::isinf(widen_bf16(away)) ? std::copysign(std::ldexp(1.0, 128), f)
                                                         : double(widen_bf16(away));
  const double above = std::fabs(away_value - double(f));
  const bool exact_half = (u & 0xffffu) == 0x8000u;
  if (below < above && !exact_half) return toward_zero;
  if (exact_half) return (toward_zero & 1u) ? away : toward_zero;
  return below < above ? toward_zero : away;
}
void reduce_bf16(void* out_bytes, const std::vector<const char*>& in, size_t n, uint64_t op) {
  uint16_t* out = static_cast<uint16_t*>(out_bytes);
  std::memcpy(out, in[0], n * sizeof(uint16_t));
  for (size_t j = 1; j < in.size(); ++j) {
    const uint16_t* x = reinterpret_cast<const uint16_t*>(in[j]);
    for (size_t i = 0; i < n; ++i)
      out[i] = narrow_bf16(combine(widen_bf16(out[i]), widen_bf16(x[i]), op));
  }
}

std::mutex g_error_mu;
std::string g_last_error;  // guarded by g_error_mu; ncclGetLastError(nullptr)

struct State {
  std::string name;
  int rank = 0, nranks = 0, device = 0;
  void* base = MAP_FAILED;
  size_t bytes = 0;
  uint64_t stall_at = 0, async_error_at = 0;  // fault injection: collective numbers, 0 = never

  // Only the device thread touches these: every collective of the process runs there.
  uint64_t executed = 0;  // collectives run (matching across ranks is by this order)
  uint64_t round = 0;

  std::atomic<bool> aborted{false};
  std::atomic<int> async_error{ncclSuccess};
  std::mutex mu;
  std::condition_variable released;
  int graph_refs = 0;      // guarded by mu: graphs holding this communicator's collectives
  std::string last_error;  // guarded by mu

  State() = default;
  State(const State&) = delete;
  State& operator=(const State&) = delete;
  ~State() {
    if (base != MAP_FAILED) munmap(base, bytes);
  }

  Header& header() const { return *static_cast<Header*>(base); }
  char* slot_page(int r) const {
    return static_cast<char*>(base) + kPage + size_t(r) * (kPage + kStagingBytes);
  }
  Slot& slot(int r) const { return *reinterpret_cast<Slot*>(slot_page(r)); }
  char* staging(int r) const { return slot_page(r) + kPage; }

  // The first async error wins; its text is in place before a poller can see the code.
  void fail(ncclResult_t rc, const std::string& text) {
    std::lock_guard<std::mutex> lock(mu);
    if (async_error.load() != ncclSuccess) return;
    {
      std::lock_guard<std::mutex> global(g_error_mu);
      g_last_error = text;
    }
    last_error = text;
    async_error.store(rc);
  }
  bool broken() const { return aborted.load() || async_error.load() != ncclSuccess; }

  // Polls until `ready()` with short sleeps (a few ranks may share two cores). False when the
  // communicator was aborted, here or by a peer (then the async error is a remote error).
  template <typename Ready>
  bool poll(Ready ready) {
    for (unsigned spins = 0; !ready(); ++spins) {
      if (aborted.load()) return false;
      if (const uint64_t by = load(header().aborted)) {
        fail(ncclRemoteError, "rank " + std::to_string(by - 1) + " aborted the communicator");
        return false;
      }
      if (spins < 64)
        std::this_thread::yield();
      else
        std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    return true;
  }
  // poll(), publishing that round r is awaited so that the peers' device threads run their work.
  template <typename Ready>
  bool wait(uint64_t r, Ready ready) {
    store(slot(rank).awaited, r);
    return poll(ready);
  }
  bool all_reached(uint64_t Slot::*field, uint64_t r) const {
    for (int j = 0; j < nranks; ++j)
      if (load(slot(j).*field) < r) return false;
    return true;
  }
  // The demand poller's question: does a peer wait for a round this rank has not deposited?
  bool peer_needs_us() const {
    if (broken()) return false;
    const uint64_t mine = load(slot(rank).deposited);
    for (int j = 0; j < nranks; ++j)
      if (j != rank && load(slot(j).awaited) > mine) return true;
    return false;
  }

  cudaError_t run(Call call, const void* send, void* recv);
};

// The collective itself, on the device thread. An abort leaves `recv` partly written: the rounds
// finished so far; the rest keeps this rank's own data.
cudaError_t State::run(Call call, const void* send, void* recv) {
  if (broken()) return cudaSuccess;  // a failed communicator moves nothing, as after a real abort
  call.seq = ++executed;
  if (call.seq == async_error_at) {
    fail(ncclRemoteError, "injected (ELBO_EMU_NCCL_ASYNC_ERROR) in " + describe(call));
    return cudaSuccess;
  }
  if (call.seq == stall_at) {  // a stalled peer: never deposits, holds the device until an abort
    poll([] { return false; });
    return cudaSuccess;
  }
  const size_t elem = type_size(call.type);
  const size_t per_round = kStagingBytes / elem;
  Slot& mine = slot(rank);
  // The rounds run over what each rank sends: the whole buffer for a reduce-scatter.
  const size_t total =
      call.kind == kReduceScatter ? size_t(call.count) * size_t(nranks) : size_t(call.count);
  std::vector<char> sum;  // a reduce-scatter's round, reduced, before its own share is kept
  for (size_t done = 0; done < total; done += per_round) {
    const size_t n = std::min(per_round, total - done);
    const uint64_t r = ++round;
    if (!wait(r, [&] { return all_reached(&Slot::consumed, r - 1); })) return cudaSuccess;
    if (call.kind != kBroadcast || call.root == uint64_t(rank))
      std::memcpy(staging(rank), static_cast<const char*>(send) + done * elem, n * elem);
    mine.call = call;
    store(mine.deposited, r);
    if (!wait(r, [&] { return all_reached(&Slot::deposited, r); })) return cudaSuccess;
    for (int j = 0; j < nranks; ++j) {
      if (slot(j).call == call) continue;
      const std::string text = "ranks disagree: rank " + std::to_string(rank) + " called " +
                               describe(call) + ", rank " + std::to_string(j) + " called " +
                               describe(slot(j).call);
      fail(ncclInvalidUsage, text);
      store(mine.consumed, r);
      elbo_emu::report_fault("NCCL: " + text);
      return cudaErrorLaunchFailure;
    }
    char* out = static_cast<char*>(recv) + done * elem;
    if (call.kind == kBroadcast) {
      std::memcpy(out, staging(int(call.root)), n * elem);
    } else if (call.kind == kAllGather) {
      for (int j = 0; j < nranks; ++j)
        std::memcpy(static_cast<char*>(recv) + (size_t(j) * call.count + done) * elem, staging(j),
                    n * elem);
    } else if (call.kind == kReduceScatter) {
      // In place, recv is send's own share: the part of it in this round was deposited above.
      sum.resize(n * elem);
      std::vector<const char*> in;
      for (int j = 0; j < nranks; ++j) in.push_back(staging(j));
      if (call.type == ncclInt32) reduce<int32_t>(sum.data(), in, n, call.op);
      if (call.type == ncclFloat) reduce<float>(sum.data(), in, n, call.op);
      if (call.type == ncclDouble) reduce<double>(sum.data(), in, n, call.op);
      if (call.type == ncclBfloat16) reduce_bf16(sum.data(), in, n, call.op);
      const size_t own_first = size_t(rank) * call.count, own_last = own_first + call.count;
      const size_t first = std::max(done, own_first), last = std::min(done + n, own_last);
      if (first < last)
        std::memcpy(static_cast<char*>(recv) + (first - own_first) * elem,
                    sum.data() + (first - done) * elem, (last - first) * elem);
    } else {
      std::vector<const char*> in;
      for (int j = 0; j < nranks; ++j) in.push_back(staging(j));
      if (call.type == ncclInt32) reduce<int32_t>(out, in, n, call.op);
      if (call.type == ncclFloat) reduce<float>(out, in, n, call.op);
      if (call.type == ncclDouble) reduce<double>(out, in, n, call.op);
      if (call.type == ncclBfloat16) reduce_bf16(out, in, n, call.op);
    }
    store(mine.consumed, r);
  }
  return cudaSuccess;
}

// The communicators of this process that the demand poller looks at.
std::mutex g_registry_mu;
std::vector<State*> g_registry;

bool peer_waits_for_this_process() {
  std::lock_guard<std::mutex> lock(g_registry_mu);
  return std::any_of(g_registry.begin(), g_registry.end(),
                     [](const State* s) { return s->peer_needs_us(); });
}

// The poller is registered once per process: a child of fork() has neither the parent's poller
// nor its communicators.
void register_state(State* s) {
  static std::mutex mu;
  static pid_t registered_in = 0;
  std::lock_guard<std::mutex> once(mu);
  if (registered_in != getpid()) {
    registered_in = getpid();
    {
      std::lock_guard<std::mutex> lock(g_registry_mu);
      g_registry.clear();
    }
    elbo_emu::register_demand_poller(peer_waits_for_this_process);
  }
  std::lock_guard<std::mutex> lock(g_registry_mu);
  g_registry.push_back(s);
}
void unregister_state(State* s) {
  std::lock_guard<std::mutex> lock(g_registry_mu);
  g_registry.erase(std::remove(g_registry.begin(), g_registry.end(), s), g_registry.end());
}

// A collective captured into a CUDA graph: counts as a graph reference while the graph or its
// instantiation holds the op (real NCCL's teardown waits for those graphs to be destroyed).
struct GraphRef {
  std::shared_ptr<State> state;
  explicit GraphRef(std::shared_ptr<State> s) : state(std::move(s)) {
    std::lock_guard<std::mutex> lock(state->mu);
    ++state->graph_refs;
  }
  GraphRef(const GraphRef&) = delete;
  GraphRef& operator=(const GraphRef&) = delete;
  ~GraphRef() {
    std::lock_guard<std::mutex> lock(state->mu);
    if (--state->graph_refs == 0) state->released.notify_all();
  }
};

// A call's error: the text is NCCL's last error, globally and for the communicator.
ncclResult_t call_error(ncclResult_t rc, const std::string& text, State* s = nullptr) {
  {
    std::lock_guard<std::mutex> lock(g_error_mu);
    g_last_error = text;
  }
  if (s) {
    std::lock_guard<std::mutex> lock(s->mu);
    s->last_error = text;
  }
  return rc;
}

// Fault injection, "<rank>:<k>": this rank's k-th collective. 0 when unset or for another rank.
bool read_fault(const char* var, int rank, uint64_t* at, std::string* why) {
  *at = 0;
  const char* value = std::getenv(var);
  if (!value || !*value) return true;
  int r = -1;
  unsigned long long k = 0;
  char tail = 0;
  if (std::sscanf(value, "%d:%llu%c", &r, &k, &tail) != 2 || k == 0) {
    *why = std::string(var) + "=" + value + " is not <rank>:<k> with k >= 1";
    return false;
  }
  if (r == rank) *at = k;
  return true;
}

// Opens or creates the segment (every rank may be the first), claims the slot and waits until all
// ranks have; the name is unlinked once all have it mapped, or on failure, so /dev/shm keeps
// nothing.
ncclResult_t join(State& s, std::string* why) {
  const char* name = s.name.c_str();
  int fd = -1;
  bool creator = false;
  while (fd < 0) {
    fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    creator = fd >= 0;
    if (fd < 0 && errno == EEXIST) fd = shm_open(name, O_RDWR, 0);
    if (fd < 0 && errno != ENOENT && errno != EEXIST) {  // ENOENT: gone in between, try again
      *why = "shm_open(" + s.name + "): " + std::strerror(errno);
      return ncclSystemError;
    }
  }
  const size_t want = segment_bytes(s.nranks);
  struct stat st {};
  if (creator && ftruncate(fd, off_t(want)) != 0) {
    *why = "ftruncate(" + s.name + "): " + std::strerror(errno);
    close(fd);
    shm_unlink(name);
    return ncclSystemError;
  }
  while (fstat(fd, &st) == 0 && st.st_size == 0)  // a joiner waits for the creator's ftruncate
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  s.bytes = size_t(st.st_size);
  s.base = s.bytes >= sizeof(Header)
               ? mmap(nullptr, s.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
               : MAP_FAILED;
  close(fd);
  auto give_up = [&](ncclResult_t rc, const std::string& text) {
    if (s.base != MAP_FAILED) store(s.header().failed, 1);
    shm_unlink(name);
    *why = text;
    return rc;
  };
  if (s.base == MAP_FAILED) return give_up(ncclSystemError, "mmap(" + s.name + ") failed");
  Header& h = s.header();
  if (creator) {
    h.nranks = uint64_t(s.nranks);
    store(h.ready, kReady);
  }
  while (load(h.ready) != kReady) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (h.nranks != uint64_t(s.nranks) || s.bytes != want)
    return give_up(ncclInvalidUsage, "ranks disagree on nranks: rank " + std::to_string(s.rank) +
                                         " says " + std::to_string(s.nranks) + ", another " +
                                         std::to_string(h.nranks));
  uint64_t free_slot = 0;
  if (!std::atomic_ref<uint64_t>(s.slot(s.rank).taken).compare_exchange_strong(free_slot, 1))
    return give_up(ncclInvalidUsage, "rank " + std::to_string(s.rank) + " joined twice");
  std::atomic_ref<uint64_t>(h.arrived).fetch_add(1);
  while (load(h.arrived) < h.nranks && !load(h.failed))
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  if (load(h.failed)) return give_up(ncclInvalidUsage, "another rank's ncclCommInitRank failed");
  shm_unlink(name);  // every rank has it mapped; the later calls find it gone, which is fine
  return ncclSuccess;
}

}  // namespace

struct ncclComm {
  std::shared_ptr<State> state;  // shared with queued and captured collectives
};

namespace {

// Checks a collective's arguments at the call, as NCCL does, then queues it on the stream (or
// records it into the graph the stream is capturing); nothing moves until the device thread runs
// it. Count 0 is valid and queues nothing.
ncclResult_t collective(const char* fn, Call call, const void* send, void* recv, ncclComm_t comm,
                        cudaStream_t stream) {
  if (!comm) return call_error(ncclInvalidArgument, std::string(fn) + ": comm is null");
  const std::shared_ptr<State>& state = comm->state;
  const auto bad = [&](const std::string& what) {
    return call_error(ncclInvalidArgument, std::string(fn) + ": " + what, state.get());
  };
  const size_t elem = type_size(call.type);
  if (elem == 0)
    return bad("datatype " + std::to_string(call.type) +
               " is not emulated (ncclInt32, ncclFloat, ncclDouble, ncclBfloat16 are)");
  if (reduces(call.kind) && !op_supported(ncclRedOp_t(call.op)))
    return bad("reduction op " + std::to_string(call.op) +
               " is not emulated (sum, prod, max, min are)");
  if (call.kind == kBroadcast && call.root >= uint64_t(state->nranks))  // -1 wraps around
    return bad("root " + std::to_string(int64_t(call.root)) + " is not in 0.." +
               std::to_string(state->nranks - 1));
  if (call.count > SIZE_MAX / elem / size_t(kMaxRanks)) return bad("count is too large");
  if (call.count == 0) return ncclSuccess;
  const size_t bytes = size_t(call.count) * elem, all = bytes * size_t(state->nranks);
  const size_t send_bytes = call.kind == kReduceScatter ? all : bytes;
  const size_t recv_bytes = call.kind == kAllGather ? all : bytes;
  const bool needs_send = call.kind != kBroadcast || call.root == uint64_t(state->rank);
  if (needs_send && !elbo_emu::is_device_range(send, send_bytes))
    return bad("sendbuff is not device memory of " + std::to_string(send_bytes) + " bytes");
  if (!elbo_emu::is_device_range(recv, recv_bytes))
    return bad("recvbuff is not device memory of " + std::to_string(recv_bytes) + " bytes");
  elbo_emu::Op op;
  op.name = fn;
  op.run = [state, call, send, recv] { return state->run(call, send, recv); };
  op.collective = true;
  if (elbo_emu::capture_status(stream) == cudaStreamCaptureStatusActive)
    op.keepalive = std::make_shared<GraphRef>(state);
  if (const cudaError_t e = elbo_emu::enqueue(stream, std::move(op)); e != cudaSuccess)
    return call_error(
        ncclUnhandledCudaError,
        std::string(fn) + ": enqueuing on the stream failed: " + cudaGetErrorString(e),
        state.get());
  return ncclSuccess;
}

// Removes the communicator from the poller, waits until no graph holds its work, and frees it.
void finish(ncclComm_t comm) {
  State& s = *comm->state;
  unregister_state(&s);
  std::unique_lock<std::mutex> lock(s.mu);
  s.released.wait(lock, [&] { return s.graph_refs == 0; });
  lock.unlock();
  delete comm;
}

}  // namespace

extern "C" {

ncclResult_t ncclGetUniqueId(ncclUniqueId* uniqueId) {
  if (!uniqueId) return call_error(ncclInvalidArgument, "ncclGetUniqueId: uniqueId is null");
  static std::mt19937_64 random{std::random_device{}()};
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  std::memset(uniqueId->internal, 0, sizeof(uniqueId->internal));
  std::snprintf(uniqueId->internal, sizeof(uniqueId->internal), "%s%ld_%016llx", kNamePrefix,
                long(getpid()), static_cast<unsigned long long>(random()));
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank) {
  if (!comm) return call_error(ncclInvalidArgument, "ncclCommInitRank: comm is null");
  *comm = nullptr;
  if (nranks < 1 || nranks > kMaxRanks)
    return call_error(ncclInvalidArgument, "ncclCommInitRank: nranks " + std::to_string(nranks) +
                                               " is not in 1.." + std::to_string(kMaxRanks));
  if (rank < 0 || rank >= nranks)
    return call_error(ncclInvalidArgument, "ncclCommInitRank: rank " + std::to_string(rank) +
                                               " is not in 0.." + std::to_string(nranks - 1));
  const char* id = commId.internal;
  if (!std::memchr(id, 0, sizeof(commId.internal)) ||
      std::strncmp(id, kNamePrefix, sizeof(kNamePrefix) - 1) != 0)
    return call_error(ncclInvalidArgument, "ncclCommInitRank: not an id from ncclGetUniqueId");
  auto state = std::make_shared<State>();
  state->name = id;
  state->rank = rank;
  state->nranks = nranks;
  std::string why;
  if (!read_fault("ELBO_EMU_NCCL_STALL", rank, &state->stall_at, &why) ||
      !read_fault("ELBO_EMU_NCCL_ASYNC_ERROR", rank, &state->async_error_at, &why))
    return call_error(ncclInvalidUsage, "ncclCommInitRank: " + why);
  if (const ncclResult_t rc = join(*state, &why); rc != ncclSuccess)
    return call_error(rc, "ncclCommInitRank: " + why);
  if (cudaGetDevice(&state->device) != cudaSuccess) state->device = 0;
  register_state(state.get());
  *comm = new ncclComm{std::move(state)};
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (!comm) return call_error(ncclInvalidArgument, "ncclCommDestroy: comm is null");
  elbo_emu::drain();  // this communicator's queued collectives complete first
  finish(comm);
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (!comm) return call_error(ncclInvalidArgument, "ncclCommAbort: comm is null");
  State& s = *comm->state;
  s.aborted.store(true);  // a collective waiting in it returns now, later ones do nothing
  uint64_t healthy = 0;   // peers learn who aborted; a waiting peer gets a remote error
  std::atomic_ref<uint64_t>(s.header().aborted)
      .compare_exchange_strong(healthy, uint64_t(s.rank) + 1);
  // A GPU goes on running what was queued, and aborted collectives return at once: only then do
  // the graph references left are graphs that still live.
  elbo_emu::drain();
  finish(comm);
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* asyncError) {
  if (!comm || !asyncError)
    return call_error(ncclInvalidArgument, "ncclCommGetAsyncError: comm or asyncError is null");
  *asyncError = static_cast<ncclResult_t>(comm->state->async_error.load());
  return ncclSuccess;
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int* count) {
  if (!comm || !count) return call_error(ncclInvalidArgument, "ncclCommCount: null argument");
  *count = comm->state->nranks;
  return ncclSuccess;
}
ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank) {
  if (!comm || !rank) return call_error(ncclInvalidArgument, "ncclCommUserRank: null argument");
  *rank = comm->state->rank;
  return ncclSuccess;
}
ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int* device) {
  if (!comm || !device) return call_error(ncclInvalidArgument, "ncclCommCuDevice: null argument");
  *device = comm->state->device;
  return ncclSuccess;
}

// Per communicator (the global text for nullptr); the copy keeps the pointer valid for the caller
// while another thread sets a newer error.
const char* ncclGetLastError(ncclComm_t comm) {
  thread_local std::string copy;
  if (comm) {
    std::lock_guard<std::mutex> lock(comm->state->mu);
    copy = comm->state->last_error;
  } else {
    std::lock_guard<std::mutex> lock(g_error_mu);
    copy = g_last_error;
  }
  return copy.c_str();
}

const char* ncclGetErrorString(ncclResult_t result) {
  static const char* const kText[] = {
      "no error",
      "unhandled cuda error (run with NCCL_DEBUG=INFO for details)",
      "unhandled system error (run with NCCL_DEBUG=INFO for details)",
      "internal error - please report this issue to the NCCL developers",
      "invalid argument (run with NCCL_DEBUG=WARN for details)",
      "invalid usage (run with NCCL_DEBUG=WARN for details)",
      "remote process exited or there was a network error",
      "NCCL operation in progress",
  };
  static_assert(std::size(kText) == ncclNumResults);
  return result >= 0 && result < ncclNumResults ? kText[result] : "unknown result code";
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count,
                           ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                           cudaStream_t stream) {
  return collective("ncclAllReduce", Call{kAllReduce, count, uint64_t(datatype), uint64_t(op), 0},
                    sendbuff, recvbuff, comm, stream);
}

ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count,
                           ncclDataType_t datatype, int root, ncclComm_t comm,
                           cudaStream_t stream) {
  return collective("ncclBroadcast", Call{kBroadcast, count, uint64_t(datatype), 0, uint64_t(root)},
                    sendbuff, recvbuff, comm, stream);
}

ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount,
                               ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                               cudaStream_t stream) {
  return collective("ncclReduceScatter",
                    Call{kReduceScatter, recvcount, uint64_t(datatype), uint64_t(op), 0}, sendbuff,
                    recvbuff, comm, stream);
}

ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount,
                           ncclDataType_t datatype, ncclComm_t comm, cudaStream_t stream) {
  return collective("ncclAllGather", Call{kAllGather, sendcount, uint64_t(datatype), 0, 0},
                    sendbuff, recvbuff, comm, stream);
}

// Calls run as they are made; nothing here needs them fused.
ncclResult_t ncclGroupStart() { return ncclSuccess; }
ncclResult_t ncclGroupEnd() { return ncclSuccess; }

}  // extern "C"
