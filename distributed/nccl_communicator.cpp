// The NCCL communicator: float collectives on device buffers through NCCL, everything else through
// the control communicator, and a watchdog thread that turns a failed or stalled collective (a dead
// peer) into one error line and the end of the job instead of a hang.
#include "distributed/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "core/cuda/cuda_check.h"
#include "core/cuda/cuda_raii.h"
#include "core/error.h"
#include "distributed/nccl_bootstrap.h"

namespace elbo {
namespace {

// NCCL's last error text can span lines; messages here stay on one.
std::string one_line(const char* text) {
  std::string s = text ? text : "";
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

std::string nccl_error_text(ncclResult_t rc, ncclComm_t comm) {
  std::string text = ncclGetErrorString(rc);
  const std::string last = one_line(ncclGetLastError(comm));
  if (!last.empty()) text += " (" + last + ")";
  return text;
}

void check_nccl(ncclResult_t rc, const char* call, const char* file, int line) {
  if (rc == ncclSuccess) return;
  throw_internal(std::string("NCCL call failed: ") + call + ": " + nccl_error_text(rc, nullptr),
                 file, line);
}

// The NCCL member of the check-macro family (core/cuda/cuda_check.h holds CUDA and cuBLAS).
#define ELBO_NCCL_CHECK(expr) ::elbo::check_nccl((expr), #expr, __FILE__, __LINE__)

constexpr auto kPollPeriod = std::chrono::milliseconds(100);

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int current_device() {
  int device = 0;
  ELBO_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

// What the watchdog is waiting for: the last collective enqueued on the stream (done when `done`
// has fired), or a blocking host call (done when the main thread clears `what`).
struct Pending {
  const char* what = nullptr;  // nullptr: nothing outstanding
  size_t count = 0;            // floats, for collectives
  int64_t issued_ns = 0;
  bool on_stream = false;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Communicator& control, cudaStream_t stream, double timeout_s)
      : control_(control),
        stream_(stream),
        timeout_s_(timeout_s),
        rank_(control_.rank()),
        device_(current_device()) {
    ELBO_CHECK(timeout_s > 0, "distributed.timeout_s must be positive");
    // Start-up is watched too: a peer that never arrives must not hang the job.
    wait_on_host("start-up (unique id, ncclCommInitRank)");
    watchdog_ = std::jthread([this](std::stop_token stop) { watch(stop); });

    const std::vector<unsigned char> id_bytes = share_unique_id(control_, [] {
      ncclUniqueId id;
      ELBO_NCCL_CHECK(ncclGetUniqueId(&id));
      const auto* bytes = reinterpret_cast<const unsigned char*>(&id);
      return std::vector<unsigned char>(bytes, bytes + sizeof(id));
    });
    ELBO_CHECK(id_bytes.size() == sizeof(ncclUniqueId),
               "ncclUniqueId from rank 0 has the wrong size");
    ncclUniqueId id;
    std::memcpy(&id, id_bytes.data(), sizeof(id));
    ncclComm_t comm = nullptr;
    ELBO_NCCL_CHECK(ncclCommInitRank(&comm, control_.size(), id, rank_));
    std::lock_guard<std::mutex> lock(mu_);
    comm_.store(comm);
    pending_ = Pending{};
  }

  ~NcclCommunicator() override {
    // During unwinding this rank has given up, and peers may wait on a collective it will never
    // join: abort. Otherwise let the last collective finish under the watchdog's eye, then destroy.
    const bool unwinding = std::uncaught_exceptions() > 0;
    if (!unwinding) cudaEventSynchronize(done_.get());
    ncclComm_t comm = take_comm("shutdown (ncclCommDestroy)");
    if (comm) {
      ncclResult_t async = ncclSuccess;
      const bool healthy =
          !unwinding && ncclCommGetAsyncError(comm, &async) == ncclSuccess && async == ncclSuccess;
      if (healthy)
        ncclCommDestroy(comm);
      else
        ncclCommAbort(comm);
    }
    watchdog_.request_stop();
    watchdog_.join();
  }

  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  std::string name() const override { return "nccl"; }
  int rank() const override { return rank_; }
  int size() const override { return control_.size(); }
  int local_rank() const override { return control_.local_rank(); }
  int local_size() const override { return control_.local_size(); }

  // Enqueued on the stream; the caller orders later work by the stream, never by a host wait.
  // The call itself may block on peers (NCCL connects lazily on first use), so it is timed on
  // the host until it returns, and on the stream after.
  void allreduce_sum(float* data, size_t n) override {
    wait_on_host("all-reduce (enqueue)");
    ELBO_NCCL_CHECK(ncclAllReduce(data, data, n, ncclFloat, ncclSum, comm(), stream_));
    issued("all-reduce", n);
  }
  void broadcast(float* data, size_t n, int root) override {
    wait_on_host("broadcast (enqueue)");
    ELBO_NCCL_CHECK(ncclBroadcast(data, data, n, ncclFloat, root, comm(), stream_));
    issued("broadcast", n);
  }

  // NCCL's reduce-scatter and all-gather take equal counts: they move size() x (n / size())
  // values, and the last rank's tail of under size() values goes by all-reduce and broadcast.
  void reduce_scatter_sum(float* data, size_t n) override {
    reduce_scatter(data, n, ncclFloat, "reduce-scatter");
  }
  void allgather(float* data, size_t n) override {
    wait_on_host("all-gather (enqueue)");
    const size_t each = n / static_cast<size_t>(size()), tail = n - each * size();
    ELBO_NCCL_CHECK(ncclGroupStart());
    if (each > 0)
      ELBO_NCCL_CHECK(ncclAllGather(data + each * static_cast<size_t>(rank_), data, each, ncclFloat,
                                    comm(), stream_));
    if (tail > 0) {
      float* t = data + each * static_cast<size_t>(size());
      ELBO_NCCL_CHECK(ncclBroadcast(t, t, tail, ncclFloat, size() - 1, comm(), stream_));
    }
    ELBO_NCCL_CHECK(ncclGroupEnd());
    issued("all-gather", n);
  }

  void allreduce_sum_bf16(uint16_t* data, size_t n) override {
    wait_on_host("all-reduce (enqueue)");
    ELBO_NCCL_CHECK(ncclAllReduce(data, data, n, ncclBfloat16, ncclSum, comm(), stream_));
    issued("all-reduce (bfloat16)", n);
  }
  void reduce_scatter_sum_bf16(uint16_t* data, size_t n) override {
    reduce_scatter(data, n, ncclBfloat16, "reduce-scatter (bfloat16)");
  }

  // Bucketed all-reduce: each bucket waits, through an event, for the work enqueued so far on the
  // compute stream (the bucket's gradients), then runs on a second stream under the rest of the
  // backward pass; finish_allreduces() makes the compute stream wait for all of them. Under CUDA
  // graph capture the fork and the join become the graph's edges.
  void start_allreduce_sum(float* data, size_t n) override {
    fork();
    wait_on_host("all-reduce (enqueue)");
    ELBO_NCCL_CHECK(ncclAllReduce(data, data, n, ncclFloat, ncclSum, comm(), side_.get()));
    issued("all-reduce", n, side_.get());
  }
  void start_allreduce_sum_bf16(uint16_t* data, size_t n) override {
    fork();
    wait_on_host("all-reduce (enqueue)");
    ELBO_NCCL_CHECK(ncclAllReduce(data, data, n, ncclBfloat16, ncclSum, comm(), side_.get()));
    issued("all-reduce (bfloat16)", n, side_.get());
  }
  void finish_allreduces() override {
    if (!forked_) return;
    ELBO_CUDA_CHECK(cudaEventRecord(joined_.get(), side_.get()));
    ELBO_CUDA_CHECK(cudaStreamWaitEvent(stream_, joined_.get(), 0));
    forked_ = false;
  }

  void allreduce_sum(double* data, size_t n) override { control_.allreduce_sum(data, n); }
  void broadcast_bytes(void* data, size_t n, int root) override {
    control_.broadcast_bytes(data, n, root);
  }
  void barrier() override { control_.barrier(); }

  [[noreturn]] void abort(int exit_code) override {
    if (ncclComm_t comm = take_comm("abort (ncclCommAbort)")) ncclCommAbort(comm);
    control_.abort(exit_code);
    std::_Exit(exit_code);  // not reached; the compiler cannot see through the virtual call
  }

 private:
  ncclComm_t comm() const {
    ncclComm_t comm = comm_.load();
    ELBO_CHECK(comm != nullptr, "NCCL collective after the communicator was shut down");
    return comm;
  }

  void replayed() override { issued("a replayed step (CUDA graph)", 0); }

  template <typename T>
  void reduce_scatter(T* data, size_t n, ncclDataType_t type, const char* what) {
    wait_on_host("reduce-scatter (enqueue)");
    const size_t each = n / static_cast<size_t>(size()), tail = n - each * size();
    ELBO_NCCL_CHECK(ncclGroupStart());
    if (each > 0)
      ELBO_NCCL_CHECK(ncclReduceScatter(data, data + each * static_cast<size_t>(rank_), each, type,
                                        ncclSum, comm(), stream_));
    if (tail > 0) {
      T* t = data + each * static_cast<size_t>(size());
      ELBO_NCCL_CHECK(ncclAllReduce(t, t, tail, type, ncclSum, comm(), stream_));
    }
    ELBO_NCCL_CHECK(ncclGroupEnd());
    issued(what, n);
  }

  void fork() {
    ELBO_CUDA_CHECK(cudaEventRecord(ready_.get(), stream_));
    ELBO_CUDA_CHECK(cudaStreamWaitEvent(side_.get(), ready_.get(), 0));
    forked_ = true;
  }

  void issued(const char* what, size_t n) { issued(what, n, stream_); }
  void issued(const char* what, size_t n, cudaStream_t stream) {
    // While the stream is being captured nothing runs; the replays are timed instead.
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    ELBO_CUDA_CHECK(cudaStreamIsCapturing(stream_, &capture));
    std::lock_guard<std::mutex> lock(mu_);  // the watchdog reads the event and its time together
    if (capture != cudaStreamCaptureStatusNone) {
      pending_ = Pending{};
      return;
    }
    ELBO_CUDA_CHECK(cudaEventRecord(done_.get(), stream));
    pending_ = Pending{what, n, now_ns(), true};
  }

  void wait_on_host(const char* what) {
    std::lock_guard<std::mutex> lock(mu_);
    pending_ = Pending{what, 0, now_ns(), false};
  }

  // Hands the communicator to the caller, who destroys or aborts it; from here the watchdog only
  // times the blocking call `what`, and never touches the communicator again.
  ncclComm_t take_comm(const char* what) {
    std::lock_guard<std::mutex> lock(mu_);
    pending_ = Pending{what, 0, now_ns(), false};
    return comm_.exchange(nullptr);
  }

  void watch(std::stop_token stop) {
    cudaSetDevice(device_);  // the event belongs to this rank's device
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop.stop_requested()) {
      wake_.wait_for(lock, stop, kPollPeriod, [] { return false; });
      if (stop.stop_requested()) return;
      const std::string failure = find_failure();
      if (!failure.empty()) end_job(failure);
    }
  }

  // Called with mu_ held. Empty when all is well.
  std::string find_failure() const {
    if (ncclComm_t comm = comm_.load()) {
      ncclResult_t async = ncclSuccess;
      const ncclResult_t rc = ncclCommGetAsyncError(comm, &async);
      if (rc != ncclSuccess) async = rc;
      if (async != ncclSuccess && async != ncclInProgress)
        return std::string(pending_.what ? pending_.what : "communicator") +
               " failed: " + nccl_error_text(async, comm);
    }
    if (!pending_.what) return {};
    // Only "not ready" means unfinished; a device fault reaches the main thread at its next sync.
    if (pending_.on_stream && cudaEventQuery(done_.get()) != cudaErrorNotReady) return {};
    const double age = static_cast<double>(now_ns() - pending_.issued_ns) * 1e-9;
    if (age <= timeout_s_) return {};
    std::string what = pending_.what;
    if (pending_.on_stream && pending_.count > 0)
      what += " of " + std::to_string(pending_.count) + " floats";
    char seconds[32];
    std::snprintf(seconds, sizeof(seconds), "%.0f", age);
    return what + " unfinished after " + seconds + " s: a peer is gone or stalled";
  }

  // The main thread is stuck in (or behind) the collective, so this thread ends the process;
  // exiting makes the launcher (mpirun, srun) end the other ranks. There is deliberately no
  // ncclCommAbort first. With CUDA graphs, NCCL's teardown waits until every graph holding NCCL
  // work is destroyed, which the stuck main thread never does: the job would hang. Without graphs,
  // the abort lets the main thread's collective return partly reduced and race on into Adam and a
  // checkpoint before this thread exits. Exiting frees the device and the peers' connections alike.
  [[noreturn]] void end_job(const std::string& failure) {
    std::fflush(stdout);
    std::fprintf(stderr, "elbo: error: rank %d: NCCL collective %s (distributed.timeout_s = %g)\n",
                 rank_, failure.c_str(), timeout_s_);
    std::fflush(stderr);
    std::_Exit(1);
  }

  Communicator& control_;  // outlives this object
  const cudaStream_t stream_;
  const double timeout_s_;
  const int rank_;
  const int device_;
  Event done_;  // recorded after each collective
  Stream side_;  // the bucketed all-reduces' stream
  Event ready_, joined_;  // fork to side_, join back to stream_
  bool forked_ = false;   // side_ has work the compute stream has not joined
  std::mutex mu_;   // guards pending_ and the record/query of done_
  std::condition_variable_any wake_;
  Pending pending_;
  std::atomic<ncclComm_t> comm_{nullptr};  // nullptr once destroyed, aborted or being so
  std::jthread watchdog_;                  // last: stopped and joined before the rest goes
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& control, void* cuda_stream,
                                                     double timeout_s) {
  return std::make_unique<NcclCommunicator>(control,
                                            static_cast<cudaStream_t>(cuda_stream), timeout_s);
}

bool nccl_available() { return true; }

}  // namespace elbo
