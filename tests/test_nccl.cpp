// The NCCL communicator: its bootstrap (the unique id over the control plane) on the CPU, and a
// one-rank communicator on a GPU where one exists.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/error.h"
#include "distributed/communicator.h"
#include "distributed/nccl_bootstrap.h"
#include "distributed/nccl_communicator.h"

#if defined(ELBO_HAVE_NCCL)
#include <cuda_runtime.h>

#include "core/cuda/cuda_backend.h"
#include "tests/require_cuda.h"
#endif

namespace elbo {
namespace {

std::vector<unsigned char> pattern(size_t n) {
  std::vector<unsigned char> bytes(n);
  for (size_t i = 0; i < n; ++i) bytes[i] = static_cast<unsigned char>(i * 37 + 11);
  return bytes;
}

TEST(ShareUniqueId, RootCallsMakeIdOnceAndKeepsItsBytes) {
  auto control = make_single_process_communicator();
  for (size_t n : {size_t{0}, size_t{1}, size_t{128}}) {
    int calls = 0;
    const std::vector<unsigned char> id = share_unique_id(*control, [&] {
      ++calls;
      return pattern(n);
    });
    EXPECT_EQ(calls, 1) << n << " bytes";
    EXPECT_EQ(id, pattern(n)) << n << " bytes";
  }
}

// Rank 1 of 2: each broadcast from rank 0 hands over the next scripted message.
class ScriptedPeer final : public Communicator {
 public:
  explicit ScriptedPeer(std::deque<std::vector<unsigned char>> from_root)
      : from_root_(std::move(from_root)) {}
  std::string name() const override { return "scripted"; }
  int rank() const override { return 1; }
  int size() const override { return 2; }
  int local_rank() const override { return 1; }
  int local_size() const override { return 2; }
  void allreduce_sum(float*, size_t) override { ADD_FAILURE() << "unexpected collective"; }
  void allreduce_sum(double*, size_t) override { ADD_FAILURE() << "unexpected collective"; }
  void broadcast(float*, size_t, int) override { ADD_FAILURE() << "unexpected collective"; }
  void broadcast_bytes(void* data, size_t n, int root) override {
    EXPECT_EQ(root, 0);
    ASSERT_FALSE(from_root_.empty()) << "more broadcasts than rank 0 made";
    ASSERT_EQ(n, from_root_.front().size()) << "ranks disagree on a broadcast's length";
    std::memcpy(data, from_root_.front().data(), n);
    from_root_.pop_front();
  }
  void barrier() override {}
  [[noreturn]] void abort(int exit_code) override { std::_Exit(exit_code); }
  size_t unread() const { return from_root_.size(); }

 private:
  std::deque<std::vector<unsigned char>> from_root_;
};

std::vector<unsigned char> length_bytes(uint64_t n) {
  std::vector<unsigned char> bytes(sizeof(n));
  std::memcpy(bytes.data(), &n, sizeof(n));
  return bytes;
}

TEST(ShareUniqueId, OtherRanksTakeTheLengthThenTheBytesFromRoot) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{128}}) {
    std::deque<std::vector<unsigned char>> script{length_bytes(n)};
    if (n > 0) script.push_back(pattern(n));
    ScriptedPeer peer(script);
    int calls = 0;
    const std::vector<unsigned char> id = share_unique_id(peer, [&] {
      ++calls;
      return std::vector<unsigned char>(7, 0xee);  // what this rank would have made: unused
    });
    EXPECT_EQ(calls, 0) << n << " bytes";
    EXPECT_EQ(id, pattern(n)) << n << " bytes";
    EXPECT_EQ(peer.unread(), 0u) << n << " bytes";
  }
}

// Only builds without NCCL have this path (so that no build reports it as skipped).
#if !defined(ELBO_HAVE_NCCL)
TEST(NcclCommunicator, BuildsWithoutNcclSayWhy) {
  ASSERT_FALSE(nccl_available());
  try {
    auto control = make_single_process_communicator();
    make_nccl_communicator(*control, nullptr, 60);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.exit_code(), 2);
    EXPECT_NE(std::string(e.what()).find("nccl"), std::string::npos) << e.what();
  }
}
#else
TEST(NcclCommunicator, BuildsWithNcclSayTheyHaveIt) { EXPECT_TRUE(nccl_available()); }
#endif

#if defined(ELBO_HAVE_NCCL)

// The device side of the test, released in reverse order of creation.
struct DeviceBuffer {
  float* data = nullptr;  // (N)
  explicit DeviceBuffer(size_t n) { EXPECT_EQ(cudaMalloc(&data, n * sizeof(float)), cudaSuccess); }
  ~DeviceBuffer() { cudaFree(data); }
};
struct Stream {
  cudaStream_t stream = nullptr;
  Stream() { EXPECT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess); }
  ~Stream() { cudaStreamDestroy(stream); }
};

// Only in builds with NCCL, so that a build without it reports no test as skipped.
TEST(NcclOneRank, AllReduceInPlace) {
  ELBO_REQUIRE_CUDA_DEVICE();
  constexpr size_t N = 1000;
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  Stream s;
  DeviceBuffer buf(N);
  std::vector<float> host(N);  // (N)
  for (size_t i = 0; i < N; ++i) host[i] = 0.25f * static_cast<float>(i) - 100.0f;
  // On the test's stream, not with cudaMemcpy: a cudaStreamNonBlocking stream is not ordered with
  // the legacy default stream that cudaMemcpy uses (which may also return before a copy from
  // pageable memory lands), so the NCCL calls below could read the buffer before it is filled.
  ASSERT_EQ(cudaMemcpyAsync(buf.data, host.data(), N * sizeof(float), cudaMemcpyHostToDevice,
                            s.stream),
            cudaSuccess);
  {
    // NCCL's start-up alone can take seconds on a large node; the watchdog must not mistake it,
    // or the idle second below, for a stall.
    auto control = make_single_process_communicator();
    auto comm = make_nccl_communicator(*control, s.stream, 60.0);
    EXPECT_EQ(comm->name(), "nccl");
    EXPECT_EQ(comm->rank(), 0);
    EXPECT_EQ(comm->size(), 1);
    comm->allreduce_sum(buf.data, N);  // the identity on one rank, through the real path
    comm->broadcast(buf.data, N, 0);
    ASSERT_EQ(cudaStreamSynchronize(s.stream), cudaSuccess);
    std::this_thread::sleep_for(std::chrono::milliseconds(1000));
    double metrics[2] = {1.5, 2.5};  // the control plane: host memory, delegated
    comm->allreduce_sum(metrics, 2);
    EXPECT_EQ(metrics[0], 1.5);
    EXPECT_EQ(metrics[1], 2.5);
  }
  std::vector<float> back(N);  // (N)
  ASSERT_EQ(cudaMemcpy(back.data(), buf.data, N * sizeof(float), cudaMemcpyDeviceToHost),
            cudaSuccess);
  EXPECT_EQ(back, host);
}
#endif

}  // namespace
}  // namespace elbo
