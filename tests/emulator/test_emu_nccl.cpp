// Tests of the emulator's NCCL (nccl.cpp). Ranks are child processes forked from the test; they
// meet through an ncclUniqueId the parent made, and report through their exit status.
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <nccl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "core/elementwise.h"
#include "elbo_emu/emulator.h"

namespace {

using namespace std::chrono_literals;

int g_rank = -1;  // in a child: its rank

// A failed check in a child: says where, and ends the child with a status the parent reports.
#define REQUIRE(cond)                                                                        \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      std::fprintf(stderr, "rank %d: %s:%d: check failed: %s\n", g_rank, __FILE__, __LINE__, \
                   #cond);                                                                   \
      std::_Exit(1);                                                                         \
    }                                                                                        \
  } while (0)

ncclUniqueId new_id() {
  ncclUniqueId id;
  EXPECT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  return id;
}

// Forks one child per rank to run body(rank) under an alarm (a hang fails rather than wedges CI),
// waits for all, and checks that each exited with 0 and that /dev/shm keeps nothing of the id.
void run_ranks(int nranks, const ncclUniqueId& id, const std::function<void(int)>& body) {
  std::fflush(nullptr);  // or the children would print the parent's buffered output again
  std::vector<pid_t> pids;
  for (int r = 0; r < nranks; ++r) {
    const pid_t pid = fork();
    if (pid == 0) {
      g_rank = r;
      alarm(60);
      body(r);
      std::fflush(nullptr);
      std::_Exit(0);
    }
    EXPECT_GT(pid, 0) << "fork";
    if (pid > 0) pids.push_back(pid);
  }
  for (size_t r = 0; r < pids.size(); ++r) {
    int status = 0;
    ASSERT_EQ(waitpid(pids[r], &status, 0), pids[r]);
    if (WIFSIGNALED(status))
      ADD_FAILURE() << "rank " << r << " was killed by signal " << WTERMSIG(status)
                    << (WTERMSIG(status) == SIGALRM ? " (the alarm: it hung)" : "");
    else
      EXPECT_EQ(WEXITSTATUS(status), 0) << "rank " << r << " failed (see its message above)";
  }
  EXPECT_FALSE(std::filesystem::exists(std::string("/dev/shm") + id.internal)) << id.internal;
}

// One rank's device side, made in the child.
struct Peer {
  cudaStream_t stream = nullptr;
  ncclComm_t comm = nullptr;
  Peer(int nranks, const ncclUniqueId& id, int rank) {
    REQUIRE(cudaSetDevice(0) == cudaSuccess);
    REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
    REQUIRE(ncclCommInitRank(&comm, nranks, id, rank) == ncclSuccess);
  }
  template <typename T>
  T* to_device(const std::vector<T>& host) {
    void* d = nullptr;
    REQUIRE(cudaMalloc(&d, host.size() * sizeof(T)) == cudaSuccess);
    REQUIRE(cudaMemcpyAsync(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice,
                            stream) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);  // `host` may go
    return static_cast<T*>(d);
  }
  template <typename T>
  std::vector<T> to_host(const T* d, size_t n) {
    std::vector<T> host(n);
    REQUIRE(cudaMemcpyAsync(host.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost, stream) ==
            cudaSuccess);
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
    return host;
  }
  ncclResult_t async_error() const {
    ncclResult_t e = ncclInternalError;
    REQUIRE(ncclCommGetAsyncError(comm, &e) == ncclSuccess);
    return e;
  }
};

// Integers in floats: every sum below is exact, so equality is the test.
float value(int rank, size_t i) { return float(int((i * 7 + size_t(rank) * 13) % 1001) - 500); }

bool contains(const char* text, const char* part) { return std::strstr(text, part) != nullptr; }

constexpr size_t kLarge = 2'500'007;  // floats: three rounds of the 4 MiB staging area

void all_reduce_sums(int nranks) {
  const ncclUniqueId id = new_id();
  run_ranks(nranks, id, [&](int rank) {
    Peer p(nranks, id, rank);
    for (size_t n : {size_t{1}, size_t{1000}, kLarge}) {
      std::vector<float> mine(n), want(n, 0.0f);
      for (size_t i = 0; i < n; ++i) {
        mine[i] = value(rank, i);
        for (int r = 0; r < nranks; ++r) want[i] += value(r, i);
      }
      float* send = p.to_device(mine);
      float* recv = p.to_device(std::vector<float>(n, -1.0f));
      REQUIRE(ncclAllReduce(send, recv, n, ncclFloat, ncclSum, p.comm, p.stream) == ncclSuccess);
      REQUIRE(p.to_host(recv, n) == want);
      REQUIRE(p.to_host(send, n) == mine);  // out of place: the input stays
      REQUIRE(ncclAllReduce(send, send, n, ncclFloat, ncclSum, p.comm, p.stream) == ncclSuccess);
      REQUIRE(p.to_host(send, n) == want);  // in place
      REQUIRE(cudaFree(send) == cudaSuccess && cudaFree(recv) == cudaSuccess);
    }
    REQUIRE(p.async_error() == ncclSuccess);
    REQUIRE(ncclCommDestroy(p.comm) == ncclSuccess);
  });
}

TEST(EmuNccl, AllReduceSumTwoRanks) { all_reduce_sums(2); }
TEST(EmuNccl, AllReduceSumThreeRanks) { all_reduce_sums(3); }

TEST(EmuNccl, AllReduceOtherTypesAndOps) {
  const ncclUniqueId id = new_id();
  run_ranks(2, id, [&](int rank) {
    Peer p(2, id, rank);
    int32_t* i = p.to_device(std::vector<int32_t>{rank == 0 ? 5 : -7, 3});
    double* d = p.to_device(std::vector<double>{rank == 0 ? 0.5 : 0.25, -1.0});
    REQUIRE(ncclAllReduce(i, i, 2, ncclInt32, ncclMin, p.comm, p.stream) == ncclSuccess);
    REQUIRE(ncclAllReduce(d, d, 2, ncclDouble, ncclMax, p.comm, p.stream) == ncclSuccess);
    REQUIRE(p.to_host(i, 2) == (std::vector<int32_t>{-7, 3}));
    REQUIRE(p.to_host(d, 2) == (std::vector<double>{0.5, -1.0}));
    REQUIRE(ncclCommDestroy(p.comm) == ncclSuccess);
  });
}

// ZeRO-1's pair, out of place and in place, with a count that spans rounds of the staging area
// (a reduce-scatter's rounds run over the whole buffer: 3 x kLarge / 3 floats).
void reduce_scatter_and_all_gather(int nranks) {
  const ncclUniqueId id = new_id();
  run_ranks(nranks, id, [&](int rank) {
    Peer p(nranks, id, rank);
    for (size_t each : {size_t{1}, size_t{333}, kLarge / 3}) {
      const size_t n = each * size_t(nranks), own = each * size_t(rank);
      std::vector<float> mine(n), sum(n, 0.0f), part(each);
      for (size_t i = 0; i < n; ++i) {
        mine[i] = value(rank, i);
        for (int r = 0; r < nranks; ++r) sum[i] += value(r, i);
      }
      const std::vector<float> want_part(sum.begin() + long(own), sum.begin() + long(own + each));
      float* send = p.to_device(mine);
      float* recv = p.to_device(std::vector<float>(each, -1.0f));
      REQUIRE(ncclReduceScatter(send, recv, each, ncclFloat, ncclSum, p.comm, p.stream) ==
              ncclSuccess);
      REQUIRE(p.to_host(recv, each) == want_part);
      REQUIRE(p.to_host(send, n) == mine);  // out of place: the input stays
      REQUIRE(ncclReduceScatter(send, send + own, each, ncclFloat, ncclSum, p.comm, p.stream) ==
              ncclSuccess);
      REQUIRE(p.to_host(send + own, each) == want_part);  // in place: this rank's share

      // All-gather: rank r's part is value(r, i) for i in its share.
      std::vector<float> gathered(n);
      for (size_t i = 0; i < n; ++i) gathered[i] = value(int(i / each), i);
      for (size_t i = 0; i < each; ++i) part[i] = value(rank, own + i);
      float* small = p.to_device(part);
      float* all = p.to_device(std::vector<float>(n, -1.0f));
      REQUIRE(ncclAllGather(small, all, each, ncclFloat, p.comm, p.stream) == ncclSuccess);
      REQUIRE(p.to_host(all, n) == gathered);
      std::vector<float> in_place(n, -1.0f);
      std::copy(part.begin(), part.end(), in_place.begin() + long(own));
      float* buf = p.to_device(in_place);
      REQUIRE(ncclAllGather(buf + own, buf, each, ncclFloat, p.comm, p.stream) == ncclSuccess);
      REQUIRE(p.to_host(buf, n) == gathered);
      for (float* d : {send, recv, small, all, buf}) REQUIRE(cudaFree(d) == cudaSuccess);
    }
    REQUIRE(p.async_error() == ncclSuccess);
    REQUIRE(ncclCommDestroy(p.comm) == ncclSuccess);
  });
}

TEST(EmuNccl, ReduceScatterAndAllGatherTwoRanks) { reduce_scatter_and_all_gather(2); }
TEST(EmuNccl, ReduceScatterAndAllGatherThreeRanks) { reduce_scatter_and_all_gather(3); }

// bfloat16 sums (gradient compression): each rank's values rounded to bfloat16, summed in rank
// order with one rounding per addition; the emulator's rounding is written independently of
// elbo's bfloat16_sum, which gives the expected values here.
TEST(EmuNccl, Bfloat16AllReduceAndReduceScatterRoundEachAddition) {
  constexpr int kRanks = 3;
  constexpr size_t each = 700'001, n = each * kRanks;  // a reduce-scatter of several rounds
  const ncclUniqueId id = new_id();
  const auto mine_of = [](int rank, size_t i) {
    return elbo::bfloat16_bits(std::sin(0.001f * float(i) + float(rank)) * float(1 + rank));
  };
  run_ranks(kRanks, id, [&](int rank) {
    Peer p(kRanks, id, rank);
    std::vector<uint16_t> mine(n), want(n);
    for (size_t i = 0; i < n; ++i) {
      mine[i] = mine_of(rank, i);
      want[i] = mine_of(0, i);
      for (int r = 1; r < kRanks; ++r) want[i] = elbo::bfloat16_sum(want[i], mine_of(r, i));
    }
    uint16_t* buf = p.to_device(mine);
    REQUIRE(ncclAllReduce(buf, buf, n, ncclBfloat16, ncclSum, p.comm, p.stream) == ncclSuccess);
    REQUIRE(p.to_host(buf, n) == want);
    uint16_t* rs = p.to_device(mine);
    const size_t own = each * size_t(rank);
    REQUIRE(ncclReduceScatter(rs, rs + own, each, ncclBfloat16, ncclSum, p.comm, p.stream) ==
            ncclSuccess);
    REQUIRE(p.to_host(rs + own, each) ==
            std::vector<uint16_t>(want.begin() + long(own), want.begin() + long(own + each)));
    REQUIRE(cudaFree(buf) == cudaSuccess && cudaFree(rs) == cudaSuccess);
    REQUIRE(ncclCommDestroy(p.comm) == ncclSuccess);
  });
}

TEST(EmuNccl, BroadcastFromRootOne) {
  const ncclUniqueId id = new_id();
  constexpr size_t n = 1'500'001;  // two rounds
  run_ranks(3, id, [&](int rank) {
    Peer p(3, id, rank);
    std::vector<float> mine(n), root(n);
    for (size_t i = 0; i < n; ++i) mine[i] = value(rank, i), root[i] = value(1, i);
    float* buf = p.to_device(mine);
    float* send = rank == 1 ? p.to_device(mine) : buf;  // out of place on the root
    REQUIRE(ncclBroadcast(send, buf, n, ncclFloat, 1, p.comm, p.stream) == ncclSuccess);
    REQUIRE(p.to_host(buf, n) == root);
    REQUIRE(ncclCommDestroy(p.comm) == ncclSuccess);
  });
}

TEST(EmuNccl, CountMismatchIsAnAsyncErrorOnBothRanks) {
  const ncclUniqueId id = new_id();
  run_ranks(2, id, [&](int rank) {
    Peer p(2, id, rank);
    float* buf = p.to_device(std::vector<float>(20, 1.0f));
    const size_t n = rank == 0 ? 10 : 20;
    REQUIRE(ncclAllReduce(buf, buf, n, ncclFloat, ncclSum, p.comm, p.stream) == ncclSuccess);
    cudaStreamSynchronize(p.stream);  // returns (a device fault), rather than hangs
    REQUIRE(p.async_error() == ncclInvalidUsage);
    const char* text = ncclGetLastError(p.comm);
    REQUIRE(contains(text, "count 10") && contains(text, "count 20"));
    REQUIRE(contains(elbo_emu::last_fault().c_str(), "count 10"));
    REQUIRE(ncclCommAbort(p.comm) == ncclSuccess);
  });
}

TEST(EmuNccl, InjectedAsyncErrorIsSeenAndTheAbortReleasesThePeer) {
  const ncclUniqueId id = new_id();
  run_ranks(2, id, [&](int rank) {
    setenv("ELBO_EMU_NCCL_ASYNC_ERROR", "1:2", 1);  // rank 1's second collective
    Peer p(2, id, rank);
    float* buf = p.to_device(std::vector<float>(100, 1.0f));
    REQUIRE(ncclAllReduce(buf, buf, 100, ncclFloat, ncclSum, p.comm, p.stream) == ncclSuccess);
    REQUIRE(p.to_host(buf, 100) == std::vector<float>(100, 2.0f));
    REQUIRE(p.async_error() == ncclSuccess);
    REQUIRE(ncclAllReduce(buf, buf, 100, ncclFloat, ncclSum, p.comm, p.stream) == ncclSuccess);
    // Rank 1 fails at once; rank 0 waits in the collective until rank 1's abort reaches it.
    REQUIRE(cudaStreamSynchronize(p.stream) == cudaSuccess);
    if (rank == 1) {
      REQUIRE(p.async_error() == ncclRemoteError);
      REQUIRE(contains(ncclGetLastError(p.comm), "injected"));
    } else {
      REQUIRE(p.async_error() == ncclRemoteError);
      REQUIRE(contains(ncclGetLastError(p.comm), "rank 1 aborted"));
    }
    REQUIRE(ncclCommAbort(p.comm) == ncclSuccess);
  });
}

TEST(EmuNccl, StalledRankLeavesThePeerWaitingUntilAbort) {
  const ncclUniqueId id = new_id();
  run_ranks(2, id, [&](int rank) {
    setenv("ELBO_EMU_NCCL_STALL", "1:1", 1);  // rank 1's first collective never deposits
    Peer p(2, id, rank);
    const std::vector<float> mine(64, float(rank + 1));
    float* buf = p.to_device(mine);
    cudaEvent_t done = nullptr;
    REQUIRE(cudaEventCreate(&done) == cudaSuccess);
    REQUIRE(ncclAllReduce(buf, buf, 64, ncclFloat, ncclSum, p.comm, p.stream) == ncclSuccess);
    REQUIRE(cudaEventRecord(done, p.stream) == cudaSuccess);
    if (rank == 1) {  // stalls until rank 0 aborts
      REQUIRE(cudaStreamSynchronize(p.stream) == cudaSuccess);
      REQUIRE(p.async_error() == ncclRemoteError);
      REQUIRE(ncclCommAbort(p.comm) == ncclSuccess);
      return;
    }
    std::atomic<bool> synced{false};
    std::thread sync([&] {  // makes the collective run, and waits in it
      REQUIRE(cudaStreamSynchronize(p.stream) == cudaSuccess);
      synced = true;
    });
    for (int i = 0; i < 10; ++i) {
      std::this_thread::sleep_for(50ms);
      REQUIRE(cudaEventQuery(done) == cudaErrorNotReady);
      REQUIRE(!synced);
    }
    REQUIRE(ncclCommAbort(p.comm) == ncclSuccess);  // releases the waiting collective
    sync.join();
    REQUIRE(cudaEventQuery(done) == cudaSuccess);
    REQUIRE(p.to_host(buf, 64) == mine);  // not reduced: its own data
  });
}

TEST(EmuNccl, ArgumentsAreCheckedAtTheCall) {
  EXPECT_STREQ(ncclGetErrorString(ncclSuccess), "no error");
  EXPECT_STREQ(ncclGetErrorString(ncclRemoteError),
               "remote process exited or there was a network error");
  const ncclUniqueId id = new_id();
  run_ranks(1, id, [&](int) {
    ncclComm_t bad = nullptr;
    REQUIRE(ncclCommInitRank(&bad, 1, id, 1) == ncclInvalidArgument);  // rank out of range
    REQUIRE(ncclCommInitRank(&bad, 0, id, 0) == ncclInvalidArgument);
    ncclUniqueId garbage{};
    REQUIRE(ncclCommInitRank(&bad, 1, garbage, 0) == ncclInvalidArgument);
    Peer p(1, id, 0);
    int count = 0, rank = -1, device = -1;
    REQUIRE(ncclCommCount(p.comm, &count) == ncclSuccess && count == 1);
    REQUIRE(ncclCommUserRank(p.comm, &rank) == ncclSuccess && rank == 0);
    REQUIRE(ncclCommCuDevice(p.comm, &device) == ncclSuccess && device == 0);

    const std::vector<float> mine{1.5f, -2.0f, 3.25f, 0.0f};
    float* d = p.to_device(mine);
    std::vector<float> host(4);
    const auto all_reduce = [&](const void* s, void* r, size_t n, ncclDataType_t t, ncclRedOp_t o,
                                ncclComm_t c) { return ncclAllReduce(s, r, n, t, o, c, p.stream); };
    REQUIRE(all_reduce(host.data(), d, 4, ncclFloat, ncclSum, p.comm) == ncclInvalidArgument);
    REQUIRE(contains(ncclGetLastError(nullptr), "sendbuff is not device memory"));
    REQUIRE(all_reduce(d, host.data(), 4, ncclFloat, ncclSum, p.comm) == ncclInvalidArgument);
    REQUIRE(all_reduce(d, d, 5, ncclFloat, ncclSum, p.comm) == ncclInvalidArgument);  // too short
    REQUIRE(all_reduce(d, d, 4, ncclFloat, ncclSum, nullptr) == ncclInvalidArgument);
    REQUIRE(contains(ncclGetLastError(nullptr), "comm is null"));
    REQUIRE(all_reduce(d, d, 4, ncclFloat16, ncclSum, p.comm) == ncclInvalidArgument);
    REQUIRE(all_reduce(d, d, 4, ncclFloat, ncclAvg, p.comm) == ncclInvalidArgument);
    REQUIRE(ncclBroadcast(d, d, 4, ncclFloat, 1, p.comm, p.stream) == ncclInvalidArgument);
    REQUIRE(contains(ncclGetLastError(p.comm), "root 1"));
    REQUIRE(ncclBroadcast(d, d, 4, ncclFloat, -1, p.comm, p.stream) == ncclInvalidArgument);
    ncclResult_t e = ncclSuccess;
    REQUIRE(ncclCommGetAsyncError(nullptr, &e) == ncclInvalidArgument);
    REQUIRE(p.async_error() == ncclSuccess);  // call errors are not async errors

    // One rank: the identities, through the whole path (and count 0 moves nothing).
    REQUIRE(all_reduce(d, d, 0, ncclFloat, ncclSum, p.comm) == ncclSuccess);
    REQUIRE(all_reduce(d, d, 4, ncclFloat, ncclSum, p.comm) == ncclSuccess);
    REQUIRE(ncclBroadcast(d, d, 4, ncclFloat, 0, p.comm, p.stream) == ncclSuccess);
    REQUIRE(p.to_host(d, 4) == mine);
    REQUIRE(ncclCommDestroy(p.comm) == ncclSuccess);
  });
}

// A rank taken twice, or ranks that disagree on nranks: every rank's ncclCommInitRank fails,
// rather than waits for a peer that will never come.
TEST(EmuNccl, StartUpMisuseFailsOnEveryRank) {
  const ncclUniqueId twice = new_id();
  run_ranks(2, twice, [&](int) {
    ncclComm_t comm = nullptr;
    REQUIRE(ncclCommInitRank(&comm, 2, twice, 0) == ncclInvalidUsage);
    REQUIRE(comm == nullptr);
  });
  const ncclUniqueId disagree = new_id();
  run_ranks(2, disagree, [&](int rank) {
    ncclComm_t comm = nullptr;
    REQUIRE(ncclCommInitRank(&comm, 2 + rank, disagree, rank) == ncclInvalidUsage);
    REQUIRE(contains(ncclGetLastError(nullptr), "ncclCommInitRank"));
  });
}

// Rank 0 synchronises while rank 1 has only enqueued its part and then blocks outside CUDA, in a
// pipe that rank 0 writes after its synchronisation returned: rank 1's device thread must run
// the collective because rank 0 waits for it, as a real GPU would have run it anyway.
TEST(EmuNccl, APeerWaitingDemandsTheQueuedCollective) {
  const ncclUniqueId id = new_id();
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  run_ranks(2, id, [&](int rank) {
    Peer p(2, id, rank);
    float* buf = p.to_device(std::vector<float>(1000, float(rank + 1)));
    REQUIRE(ncclAllReduce(buf, buf, 1000, ncclFloat, ncclSum, p.comm, p.stream) == ncclSuccess);
    char byte = 1;
    if (rank == 0) {
      REQUIRE(cudaStreamSynchronize(p.stream) == cudaSuccess);
      REQUIRE(write(fds[1], &byte, 1) == 1);
    } else {
      REQUIRE(read(fds[0], &byte, 1) == 1);
    }
    REQUIRE(p.to_host(buf, 1000) == std::vector<float>(1000, 3.0f));
    REQUIRE(ncclCommDestroy(p.comm) == ncclSuccess);
  });
  close(fds[0]);
  close(fds[1]);
}

// Each replay of a captured all-reduce is a new collective. Teardown (abort on rank 0, destroy on
// rank 1) then blocks while the graph or its instantiation is alive, as real NCCL's does.
TEST(EmuNccl, TeardownWaitsForGraphsHoldingCollectives) {
  const ncclUniqueId id = new_id();
  run_ranks(2, id, [&](int rank) {
    Peer p(2, id, rank);
    float* buf = p.to_device(std::vector<float>(1000, float(rank + 1)));
    REQUIRE(cudaStreamBeginCapture(p.stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
    REQUIRE(ncclAllReduce(buf, buf, 1000, ncclFloat, ncclSum, p.comm, p.stream) == ncclSuccess);
    cudaGraph_t graph = nullptr;
    REQUIRE(cudaStreamEndCapture(p.stream, &graph) == cudaSuccess);
    cudaGraphExec_t exec = nullptr;
    REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
    REQUIRE(cudaGraphLaunch(exec, p.stream) == cudaSuccess);
    REQUIRE(cudaGraphLaunch(exec, p.stream) == cudaSuccess);
    REQUIRE(p.to_host(buf, 1000) == std::vector<float>(1000, 6.0f));  // (1 + 2) * 2

    std::atomic<bool> returned{false};
    std::thread teardown([&] {
      REQUIRE((rank == 0 ? ncclCommAbort(p.comm) : ncclCommDestroy(p.comm)) == ncclSuccess);
      returned = true;
    });
    std::this_thread::sleep_for(300ms);
    REQUIRE(!returned);
    REQUIRE(cudaGraphExecDestroy(exec) == cudaSuccess);
    std::this_thread::sleep_for(200ms);
    REQUIRE(!returned);  // the graph still holds the collective
    REQUIRE(cudaGraphDestroy(graph) == cudaSuccess);
    for (int i = 0; i < 500 && !returned; ++i) std::this_thread::sleep_for(10ms);
    REQUIRE(returned);
    teardown.join();
  });
}

}  // namespace
