// Device and communicator choices, for every config value and what a machine can show, and what
// the training loop's ranks agree on: when to stop, and whether to replay captured steps.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <regex>
#include <stdexcept>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/backend.h"
#include "core/error.h"
#include "distributed/communicator.h"
#include "io/checkpoint.h"
#include "io/config.h"
#include "io/hdf5.h"
#include "io/metrics.h"
#include "io/shards.h"
#include "launch/device_plan.h"
#include "launch/error_report.h"
#include "launch/run_directory.h"
#include "launch/trainer.h"
#include "launch/watchdog.h"

namespace elbo {
namespace {

TEST(DevicePlan, AutoUsesAGpuOnlyWhenBuiltAndVisible) {
  EXPECT_FALSE(plan_device(DeviceChoice::Auto, false, 4, 0, 1, "c").cuda);
  EXPECT_FALSE(plan_device(DeviceChoice::Auto, true, 0, 0, 1, "c").cuda);
  const DevicePlan p = plan_device(DeviceChoice::Auto, true, 2, 0, 1, "c");
  EXPECT_TRUE(p.cuda);
  EXPECT_EQ(p.index, 0);
}

TEST(DevicePlan, LocalRankModuloVisibleDevices) {
  for (int local_rank = 0; local_rank < 4; ++local_rank)
    EXPECT_EQ(plan_device(DeviceChoice::Cuda, true, 4, local_rank, 4, "c").index, local_rank);
  // With more GPUs than ranks each rank still takes its own (visible devices may be restricted
  // per rank, e.g. CUDA_VISIBLE_DEVICES set by the launcher, hence the modulo).
  EXPECT_EQ(plan_device(DeviceChoice::Cuda, true, 8, 1, 2, "c").index, 1);
}

TEST(DevicePlan, CpuAlwaysAndCudaOnlyWhenPossible) {
  EXPECT_FALSE(plan_device(DeviceChoice::Cpu, true, 8, 3, 8, "c").cuda);
  for (auto [built, visible] : {std::pair{false, 1}, {true, 0}}) {
    try {
      plan_device(DeviceChoice::Cuda, built, visible, 0, 1, "cfg.yaml");
      ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::BadInput);
      EXPECT_NE(std::string(e.what()).find("(cfg.yaml)"), std::string::npos) << e.what();
    }
  }
}

TEST(DevicePlan, MoreRanksThanGpusOnANodeIsBadInput) {
  for (DeviceChoice choice : {DeviceChoice::Auto, DeviceChoice::Cuda}) {
    try {
      plan_device(choice, true, 2, 2, 3, "cfg.yaml");
      ADD_FAILURE() << "two ranks on one GPU were accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::BadInput);
      EXPECT_NE(std::string(e.what()).find("3 ranks on this node but 2 visible GPU"),
                std::string::npos) << e.what();
    }
  }
  EXPECT_FALSE(plan_device(DeviceChoice::Cpu, true, 2, 2, 3, "c").cuda);  // the CPU has room
}

// srun --gpus-per-task=1 or a per-rank CUDA_VISIBLE_DEVICES: each rank sees its own GPU as the
// only one, device 0 (whether two ranks really share one is checked at start-up, by bus id).
TEST(DevicePlan, OneVisibleGpuServesEveryLocalRank) {
  for (DeviceChoice choice : {DeviceChoice::Auto, DeviceChoice::Cuda})
    for (int local_rank = 0; local_rank < 4; ++local_rank) {
      const DevicePlan p = plan_device(choice, true, 1, local_rank, 4, "c");
      EXPECT_TRUE(p.cuda);
      EXPECT_EQ(p.index, 0) << local_rank;
    }
}

// The device chosen before MPI starts (from the launcher's local rank) and the one plan_device
// picks later (from MPI's) follow one rule.
TEST(DevicePlan, EarlyAndLateChoicesFollowOneRule) {
  for (int visible : {1, 2, 4, 8})
    for (int local_rank = 0; local_rank < visible; ++local_rank)
      EXPECT_EQ(plan_device(DeviceChoice::Auto, true, visible, local_rank, visible, "c").index,
                device_for_local_rank(local_rank, visible));
  EXPECT_EQ(device_for_local_rank(5, 1), 0);
  EXPECT_EQ(device_for_local_rank(5, 4), 1);
}

// A driver too old for the build: device: cuda says so, auto warns and trains on the CPU.
TEST(DevicePlan, ADriverProblemIsAnErrorForCudaAndAWarningForAuto) {
  const std::string problem = "the NVIDIA driver is too old for this build's CUDA runtime (x)";
  try {
    plan_device(DeviceChoice::Cuda, true, 0, 0, 1, "cfg.yaml", problem);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::BadInput);
    EXPECT_EQ(std::string(e.what()), "device: cuda, but " + problem + " (cfg.yaml)");
  }
  const DevicePlan p = plan_device(DeviceChoice::Auto, true, 0, 0, 1, "cfg.yaml", problem);
  EXPECT_FALSE(p.cuda);
  EXPECT_EQ(p.warning, problem);
  EXPECT_TRUE(plan_device(DeviceChoice::Cpu, true, 0, 0, 1, "c", problem).warning.empty());
  EXPECT_TRUE(plan_device(DeviceChoice::Auto, true, 0, 0, 1, "c").warning.empty());  // no GPU
}

TEST(LauncherLocalRank, FirstSetVariableWinsAndNoneGivesZero) {
  using Env = std::map<std::string, std::string>;
  const auto local_rank = [](const Env& env) {
    return launcher_local_rank([&env](const char* name) -> const char* {
      const auto it = env.find(name);
      return it == env.end() ? nullptr : it->second.c_str();
    });
  };
  EXPECT_EQ(local_rank({}), 0);
  EXPECT_EQ(local_rank({{"OMPI_COMM_WORLD_LOCAL_RANK", "3"}}), 3);
  EXPECT_EQ(local_rank({{"MPI_LOCALRANKID", "2"}}), 2);
  EXPECT_EQ(local_rank({{"PMI_LOCAL_RANK", "5"}}), 5);
  EXPECT_EQ(local_rank({{"SLURM_LOCALID", "1"}}), 1);
  // mpirun inside a Slurm job: the ranks inherit their daemon's SLURM_LOCALID.
  EXPECT_EQ(local_rank({{"SLURM_LOCALID", "0"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "3"}}), 3);
  EXPECT_EQ(local_rank({{"SLURM_LOCALID", "0"}, {"MPI_LOCALRANKID", "2"}}), 2);
  // Values that are not a local rank are passed over.
  EXPECT_EQ(local_rank({{"OMPI_COMM_WORLD_LOCAL_RANK", ""}, {"SLURM_LOCALID", "4"}}), 4);
  EXPECT_EQ(local_rank({{"OMPI_COMM_WORLD_LOCAL_RANK", "x1"}, {"SLURM_LOCALID", "4"}}), 4);
  EXPECT_EQ(local_rank({{"OMPI_COMM_WORLD_LOCAL_RANK", "1x"}, {"SLURM_LOCALID", "4"}}), 4);
  EXPECT_EQ(local_rank({{"OMPI_COMM_WORLD_LOCAL_RANK", "-1"}}), 0);
  EXPECT_EQ(local_rank({{"OMPI_COMM_WORLD_LOCAL_RANK", "99999999999"}}), 0);
}

TEST(SharedGpus, IdentityIsExactInADoubleAndSeparatesHostFromBus) {
  const double id = gpu_identity("node1", "0000:3b:00.0");
  EXPECT_EQ(id, gpu_identity("node1", "0000:3b:00.0"));
  EXPECT_GE(id, 0.0);
  EXPECT_LT(id, 4294967296.0);
  EXPECT_EQ(id, static_cast<double>(static_cast<uint32_t>(id)));
  EXPECT_NE(id, gpu_identity("node2", "0000:3b:00.0"));
  EXPECT_NE(id, gpu_identity("node1", "0000:3c:00.0"));
  EXPECT_NE(gpu_identity("ab", "c"), gpu_identity("a", "bc"));
}

TEST(SharedGpus, FirstDuplicateFindsTheFirstPairOfRanksOnOneGpu) {
  const double a = gpu_identity("n1", "0000:01:00.0"), b = gpu_identity("n1", "0000:02:00.0");
  const double c = gpu_identity("n2", "0000:01:00.0");
  EXPECT_FALSE(first_duplicate(std::vector<double>{}));
  EXPECT_FALSE(first_duplicate(std::vector<double>{a}));
  EXPECT_FALSE(first_duplicate(std::vector<double>{a, b, c}));
  EXPECT_FALSE(first_duplicate(std::vector<double>{-1, -1, -1}));  // ranks on the CPU share nothing
  const auto pair = [](std::vector<double> table) {
    const std::optional<RankPair> p = first_duplicate(table);
    return p ? std::pair{p->first, p->second} : std::pair{-1, -1};
  };
  EXPECT_EQ(pair({a, a}), (std::pair{0, 1}));
  EXPECT_EQ(pair({a, b, c, b}), (std::pair{1, 3}));
  EXPECT_EQ(pair({a, b, b, a}), (std::pair{1, 2}));  // the lowest second rank first
  EXPECT_EQ(pair({b, a, c, a, b}), (std::pair{1, 3}));
}

TEST(DataPlane, AutoPicksByDeviceAndWorldSize) {
  EXPECT_EQ(plan_data_plane(CommBackend::Auto, false, 1, "c"), DataPlane::Single);
  EXPECT_EQ(plan_data_plane(CommBackend::Auto, true, 1, "c"), DataPlane::Single);
  EXPECT_EQ(plan_data_plane(CommBackend::Auto, false, 4, "c"), DataPlane::Mpi);
  EXPECT_EQ(plan_data_plane(CommBackend::Auto, true, 4, "c"), DataPlane::Nccl);
  EXPECT_EQ(plan_data_plane(CommBackend::None, true, 1, "c"), DataPlane::Single);
  EXPECT_EQ(plan_data_plane(CommBackend::Nccl, true, 1, "c"), DataPlane::Nccl);
  EXPECT_EQ(plan_data_plane(CommBackend::Mpi, false, 2, "c"), DataPlane::Mpi);
}

TEST(DataPlane, MismatchedPairingsAreBadInput) {
  EXPECT_THROW(plan_data_plane(CommBackend::Mpi, true, 2, "c"), Error);
  EXPECT_THROW(plan_data_plane(CommBackend::Nccl, false, 2, "c"), Error);
}

// ---- the training loop's agreements
// ----------------------------------------------------------------------------

TEST(StopAgreement, EveryStepOnTheHostSomeStepsOnADevice) {
  for (int64_t s = 0; s < 100; ++s) EXPECT_TRUE(stop_check_due(true, s, 50)) << s;
  std::vector<int64_t> due;
  for (int64_t s = 0; s <= 64; ++s)
    if (stop_check_due(false, s, 40)) due.push_back(s);
  EXPECT_EQ(due, (std::vector<int64_t>{0, 16, 32, 40, 48, 64}));  // every 16 and at log points
  EXPECT_TRUE(stop_check_due(false, 7, 7));
  EXPECT_FALSE(stop_check_due(false, 7, 0));  // no log points: every 16 only
}

// The ranks of one process, each on its own thread: every collective waits for all of them and
// gives each the sum, as MPI would. Ranks that make different collectives fail the test.
class ThreadWorld {
 public:
  explicit ThreadWorld(int size) : size_(size) {}
  int size() const { return size_; }

  std::vector<double> sum(const std::string& what, std::vector<double> mine) {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t generation = generation_;
    if (arrived_ == 0) {
      what_ = what;
      total_.assign(mine.size(), 0.0);
    }
    if (what != what_ || mine.size() != total_.size()) {
      std::fprintf(stderr, "ranks disagree on a collective: %s vs %s\n", what.c_str(),
                   what_.c_str());
      std::_Exit(3);  // the other ranks would wait for ever
    }
    for (size_t i = 0; i < mine.size(); ++i) total_[i] += mine[i];
    if (what == "double[1]") ++flag_sums_;
    if (++arrived_ == size_) {
      result_ = total_;
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
    } else if (!cv_.wait_for(lock, std::chrono::seconds(60),
                             [&] { return generation_ != generation; })) {
      std::fprintf(stderr, "a rank never joined the collective %s\n", what.c_str());
      std::_Exit(3);
    }
    return result_;
  }
  int flag_sums() const { return flag_sums_ / size_; }  // one-double sums made by every rank
  // The world's node-shared buffers (distributed.shared_memory on threads, which share memory).
  Communicator::SharedBuffers shared(size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    if (shared_grads_.empty()) {
      shared_params_.assign(n, 0.0f);
      shared_grads_.assign(static_cast<size_t>(size_), std::vector<float>(n, 0.0f));
    }
    Communicator::SharedBuffers b{shared_params_.data(), {}};
    for (auto& g : shared_grads_) b.grads.push_back(g.data());
    return b;
  }

 private:
  const int size_;
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t generation_ = 0;
  int arrived_ = 0;
  std::string what_;
  std::vector<double> total_, result_;
  int flag_sums_ = 0;
  std::vector<float> shared_params_;
  std::vector<std::vector<float>> shared_grads_;
};

class ThreadRank final : public Communicator {
 public:
  ThreadRank(ThreadWorld& world, int rank) : world_(world), rank_(rank) {}
  std::string name() const override { return "threads"; }
  int rank() const override { return rank_; }
  int size() const override { return world_.size(); }
  int local_rank() const override { return rank_; }
  int local_size() const override { return world_.size(); }
  void allreduce_sum(float* data, size_t n) override {
    const std::vector<double> sum = world_.sum("float[" + std::to_string(n) + "]",
                                               std::vector<double>(data, data + n));
    for (size_t i = 0; i < n; ++i) data[i] = static_cast<float>(sum[i]);
  }
  void broadcast(float* data, size_t n, int root) override {
    std::vector<double> mine(n, 0.0);
    if (rank_ == root) mine.assign(data, data + n);
    const std::vector<double> sum = world_.sum("broadcast[" + std::to_string(n) + "]", mine);
    for (size_t i = 0; i < n; ++i) data[i] = static_cast<float>(sum[i]);
  }
  void allreduce_sum(double* data, size_t n) override {
    const std::vector<double> sum = world_.sum("double[" + std::to_string(n) + "]",
                                               std::vector<double>(data, data + n));
    std::copy(sum.begin(), sum.end(), data);
  }
  void broadcast_bytes(void*, size_t, int) override { ADD_FAILURE() << "unexpected collective"; }
  void barrier() override { world_.sum("barrier", {}); }
  SharedBuffers share_memory(size_t n) override {
    world_.sum("share_memory", {});
    return world_.shared(n);
  }
  [[noreturn]] void abort(int exit_code) override { std::_Exit(exit_code); }

 private:
  ThreadWorld& world_;
  const int rank_;
};

// Records which of its collectives were called, with the count (or root) they were given.
class RecordingCommunicator final : public Communicator {
 public:
  explicit RecordingCommunicator(std::vector<std::string>& log) : log_(log) {}
  std::string name() const override { return "recording"; }
  int rank() const override { return 0; }
  int size() const override { return 2; }
  int local_rank() const override { return 0; }
  int local_size() const override { return 2; }
  void allreduce_sum(float*, size_t n) override { note("allreduce_sum(float)", n); }
  void broadcast(float*, size_t n, int) override { note("broadcast", n); }
  void reduce_scatter_sum(float*, size_t n) override { note("reduce_scatter_sum", n); }
  void allgather(float*, size_t n) override { note("allgather", n); }
  void allreduce_sum_bf16(uint16_t*, size_t n) override { note("allreduce_sum_bf16", n); }
  void reduce_scatter_sum_bf16(uint16_t*, size_t n) override { note("reduce_scatter_sum_bf16", n); }
  void start_allreduce_sum(float*, size_t n) override { note("start_allreduce_sum", n); }
  void start_allreduce_sum_bf16(uint16_t*, size_t n) override {
    note("start_allreduce_sum_bf16", n);
  }
  void progress() override { note("progress", 0); }
  void finish_allreduces() override { note("finish_allreduces", 0); }
  void allreduce_sum(double*, size_t n) override { note("allreduce_sum(double)", n); }
  void broadcast_bytes(void*, size_t n, int) override { note("broadcast_bytes", n); }
  void barrier() override { note("barrier", 0); }
  void replayed() override { note("replayed", 0); }
  SharedBuffers share_memory(size_t n) override {
    note("share_memory", n);
    return SharedBuffers{shared_, {shared_ + 1, shared_ + 2}};
  }
  void shared_fence() override { note("shared_fence", 0); }
  [[noreturn]] void abort(int exit_code) override { std::_Exit(exit_code); }

 private:
  void note(const char* what, size_t n) { log_.push_back(std::string(what) + " " + std::to_string(n)); }
  std::vector<std::string>& log_;
  float shared_[3] = {};
};

// The watchdog's decorator must hand every collective to the communicator it wraps. One it does
// not override falls back to Communicator's default (a nonblocking all-reduce would become a
// blocking one), which this catches by name.
TEST(WatchedCommunicator, ForwardsEveryCollective) {
  std::vector<std::string> log;
  const std::unique_ptr<Communicator> comm =
      watched(std::make_unique<RecordingCommunicator>(log), 60.0);
  float f[8] = {};
  double d[8] = {};
  uint16_t h[8] = {};
  comm->allreduce_sum(f, 1);
  comm->broadcast(f, 2, 1);
  comm->reduce_scatter_sum(f, 3);
  comm->allgather(f, 4);
  comm->allreduce_sum_bf16(h, 5);
  comm->reduce_scatter_sum_bf16(h, 6);
  comm->start_allreduce_sum(f, 7);
  comm->start_allreduce_sum_bf16(h, 8);
  comm->progress();
  comm->finish_allreduces();
  comm->allreduce_sum(d, 2);
  comm->broadcast_bytes(d, 3, 0);
  comm->barrier();
  comm->replayed();
  const Communicator::SharedBuffers shared = comm->share_memory(9);
  comm->shared_fence();
  ASSERT_NE(shared.params, nullptr);  // what the wrapped communicator returned, handed back
  EXPECT_EQ(shared.grads.size(), 2u);
  EXPECT_EQ(shared.grads[1], shared.params + 2);
  const std::vector<std::string> want{
      "allreduce_sum(float) 1", "broadcast 2",  "reduce_scatter_sum 3", "allgather 4",
      "allreduce_sum_bf16 5",   "reduce_scatter_sum_bf16 6", "start_allreduce_sum 7",
      "start_allreduce_sum_bf16 8", "progress 0", "finish_allreduces 0",
      "allreduce_sum(double) 2", "broadcast_bytes 3", "barrier 0", "replayed 0",
      "share_memory 9", "shared_fence 0"};
  EXPECT_EQ(log, want);
  EXPECT_EQ(comm->size(), 2);
  EXPECT_EQ(comm->name(), "recording");
}

// ZeRO-1's partition: the ranks' slices cover the buffer in rank order without gaps, the first
// size - 1 are equal, and the last is at most size - 1 larger.
TEST(ZeroOne, SlicesCoverTheBufferInRankOrder) {
  for (size_t n : {0, 1, 2, 7, 11, 652824})
    for (int size : {1, 2, 3, 4, 8}) {
      size_t next = 0;
      for (int r = 0; r < size; ++r) {
        const Slice s = slice_of(n, r, size);
        EXPECT_EQ(s.offset, next) << n << " over " << size << ", rank " << r;
        if (r + 1 < size)
          EXPECT_EQ(s.count, n / static_cast<size_t>(size));
        else
          EXPECT_LT(s.count - n / static_cast<size_t>(size), static_cast<size_t>(size));
        next = s.offset + s.count;
      }
      EXPECT_EQ(next, n) << n << " over " << size;
    }
}

// distributed.bucket_mb's buckets: from the end of the buffer down to offset 0 without gaps, each
// cut at a tensor's start, the first tensor start at which it reaches the cap (so a bucket less
// its lowest tensor is under the cap), and only the last may be under the cap.
TEST(GradientBuckets, CoverTheBufferFromTheEndCutAtTensors) {
  ModelSpec mlp;
  mlp.input_dim = 784, mlp.encoder = {400}, mlp.latent = 20, mlp.decoder = {400};
  ModelSpec conv = mlp;
  conv.type = ModelType::Conv, conv.channels = 1, conv.height = 28, conv.width = 28;
  conv.encoder = {256}, conv.decoder = {256};
  for (const ModelSpec& spec : {mlp, conv}) {
    const ParameterLayout layout(spec);
    const size_t P = layout.total_size();
    std::set<size_t> starts;
    for (const TensorView& t : layout.tensors()) starts.insert(t.offset);
    EXPECT_TRUE(gradient_buckets(layout, 0).empty());
    for (const double mb : {1e-4, 0.001, 0.25, 1.0, 1e9}) {
      const std::vector<Slice> buckets = gradient_buckets(layout, mb);
      const double cap = mb * 1e6 / sizeof(float);
      ASSERT_FALSE(buckets.empty());
      size_t end = P;
      for (size_t k = 0; k < buckets.size(); ++k) {
        const Slice& b = buckets[k];
        EXPECT_EQ(b.offset + b.count, end) << mb << " MB, bucket " << k;
        EXPECT_GT(b.count, 0u);
        EXPECT_TRUE(starts.count(b.offset)) << "bucket " << k << " starts inside a tensor";
        if (k + 1 < buckets.size()) {
          EXPECT_GE(static_cast<double>(b.count), cap);
        }
        const auto above = starts.upper_bound(b.offset);
        if (above != starts.end() && *above < end) {
          EXPECT_LT(static_cast<double>(end - *above), cap) << "bucket " << k << " is too large";
        }
        end = b.offset;
      }
      EXPECT_EQ(end, 0u) << mb << " MB";
      if (mb == 1e9) {
        EXPECT_EQ(buckets.size(), 1u);
      }
      size_t smallest = P;
      for (const TensorView& t : layout.tensors()) smallest = std::min(smallest, t.size());
      if (static_cast<double>(smallest) >= cap) {
        EXPECT_EQ(buckets.size(), starts.size()) << mb << " MB: a tensor per bucket";
      }
    }
  }
}

// The Communicator's own reduce-scatter and all-gather (made of all-reduce and broadcast, for
// communicators without their own), on 3 ranks and a buffer that does not split evenly.
TEST(ZeroOne, DefaultReduceScatterAndAllGather) {
  constexpr int kRanks = 3;
  constexpr size_t n = 11;  // slices of 3, 3 and 5
  ThreadWorld world(kRanks);
  std::vector<std::vector<float>> summed(kRanks), gathered(kRanks);
  std::vector<std::thread> ranks;
  for (int r = 0; r < kRanks; ++r)
    ranks.emplace_back([&, r] {
      ThreadRank comm(world, r);
      std::vector<float> data(n);
      for (size_t i = 0; i < n; ++i) data[i] = static_cast<float>(100 * (r + 1) + i);
      comm.Communicator::reduce_scatter_sum(data.data(), n);
      summed[static_cast<size_t>(r)] = data;
      const Slice mine = slice_of(n, r, kRanks);
      std::fill(data.begin(), data.end(), -1.0f);  // what other ranks own must come from them
      for (size_t i = mine.offset; i < mine.offset + mine.count; ++i)
        data[i] = static_cast<float>(1000 * r + i);
      comm.Communicator::allgather(data.data(), n);
      gathered[static_cast<size_t>(r)] = data;
    });
  for (std::thread& t : ranks) t.join();
  for (int r = 0; r < kRanks; ++r) {
    const Slice mine = slice_of(n, r, kRanks);
    for (size_t i = mine.offset; i < mine.offset + mine.count; ++i)
      EXPECT_EQ(summed[static_cast<size_t>(r)][i], static_cast<float>(600 + 3 * i));
    for (int owner = 0; owner < kRanks; ++owner) {
      const Slice s = slice_of(n, owner, kRanks);
      for (size_t i = s.offset; i < s.offset + s.count; ++i)
        EXPECT_EQ(gathered[static_cast<size_t>(r)][i], static_cast<float>(1000 * owner + i))
            << "rank " << r << ", element " << i;
    }
  }
}

// A "device" that computes on the CPU: its memory is not host memory as far as the training loop
// knows (so it reads health at log points only and may capture), and capture records the work
// without running it, as CUDA does, or fails when told to.
struct OwnsCpu {  // a base, so that the CPU backend exists before ForwardingBackend takes it
  std::unique_ptr<Backend> cpu = make_cpu_backend();
};
class CapturingCpu final : private OwnsCpu, public ForwardingBackend {
 public:
  explicit CapturingCpu(bool capture_fails) : ForwardingBackend(*cpu), fails_(capture_fails) {}
  int captures = 0, replays = 0;

  std::string name() const override { return "capturing-cpu"; }
  bool is_host() const override { return false; }
  std::unique_ptr<CapturedWork> capture(const std::function<void()>& work) override {
    ++captures;
    if (fails_) return nullptr;
    struct Recorded final : CapturedWork {
      std::function<void()> work;
      int* replays;
      void replay() override {
        ++*replays;
        work();
      }
    };
    auto recorded = std::make_unique<Recorded>();
    recorded->work = work;
    recorded->replays = &replays;
    return recorded;
  }

 private:
  bool fails_;
};

class GraphAgreement : public ::testing::Test {
 protected:
  static constexpr int kRanks = 2, kSteps = 12;

  void SetUp() override {
    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::temp_directory_path() /
           ("elbo_test_launch_" + std::to_string(getpid()) + "_" + test->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_ / "data");
    std::vector<uint8_t> x(16 * 96);
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<uint8_t>((i * 37) % 256);
    write_shard_u8((dir_ / "data" / "s0.h5").string(), {4, 4}, x, {});
    cfg_.data.train = (dir_ / "data").string();
    cfg_.model.encoder = {8};
    cfg_.model.latent = 2;
    cfg_.model.decoder = {8};
    cfg_.train.epochs = 1;
    cfg_.train.batch_size = 8;  // 96 rows: 12 steps
    cfg_.train.cuda_graphs = true;
    cfg_.output.dir = (dir_ / "run").string();
    cfg_.output.log_every = 5;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  struct Outcome {
    std::vector<int> captures, replays;
    int flag_sums = 0;
    std::string out;
  };
  // Trains kRanks ranks on threads; the ranks listed fail to capture.
  Outcome train(std::vector<int> failing) {
    ShardedDataset data = ShardedDataset::open(cfg_.data.train);
    data.cache_in_memory();  // HDF5 is not to be read from several threads
    ThreadWorld world(kRanks);
    std::vector<std::unique_ptr<CapturingCpu>> backends;
    for (int r = 0; r < kRanks; ++r)
      backends.push_back(std::make_unique<CapturingCpu>(
          std::find(failing.begin(), failing.end(), r) != failing.end()));
    std::filesystem::remove_all(dir_ / "run");
    std::filesystem::create_directories(dir_ / "run" / "checkpoints");
    const CheckpointDirectory checkpoints(dir_ / "run" / "checkpoints", 1);
    ::testing::internal::CaptureStdout();
    std::vector<std::thread> ranks;
    for (int r = 0; r < kRanks; ++r)
      ranks.emplace_back([&, r] {
        ThreadRank comm(world, r);
        auto trainer = make_trainer(cfg_, comm, *backends[static_cast<size_t>(r)], data, nullptr);
        trainer->restore(nullptr);
        MetricsWriter metrics;
        trainer->run(checkpoints, metrics);
      });
    for (std::thread& t : ranks) t.join();
    Outcome o;
    o.out = ::testing::internal::GetCapturedStdout();
    for (const auto& b : backends) {
      o.captures.push_back(b->captures);
      o.replays.push_back(b->replays);
    }
    o.flag_sums = world.flag_sums();
    return o;
  }

  // The one-double sums the loop makes besides the capture agreements: the stop flag's.
  static int stop_checks() {
    int n = 0;
    for (int64_t s = 0; s < kSteps; ++s) n += stop_check_due(false, s, 5) ? 1 : 0;
    return n;
  }

  std::filesystem::path dir_;
  Config cfg_;
};

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// Three plain steps, then one capture per input buffer, each agreed on; every later step replays.
TEST_F(GraphAgreement, AllRanksCaptureThenAllReplay) {
  const Outcome o = train({});
  EXPECT_EQ(o.captures, (std::vector<int>{2, 2}));
  EXPECT_EQ(o.replays, (std::vector<int>{kSteps - 3, kSteps - 3}));
  EXPECT_EQ(o.flag_sums, stop_checks() + 2);
  EXPECT_EQ(count(o.out, "cannot be captured"), 0u) << o.out;
}

// One rank cannot capture: the other drops the graph it has, both run the step eagerly, and
// neither tries again; rank 0 says so once.
TEST_F(GraphAgreement, OneRankFailingTurnsGraphsOffOnEveryRank) {
  for (int failing : {0, 1}) {
    const Outcome o = train({failing});
    EXPECT_EQ(o.captures, (std::vector<int>{1, 1})) << "rank " << failing << " failing";
    EXPECT_EQ(o.replays, (std::vector<int>{0, 0})) << "rank " << failing << " failing";
    EXPECT_EQ(o.flag_sums, stop_checks() + 1);
    EXPECT_EQ(count(o.out, "elbo: note: this step cannot be captured as a CUDA graph on 1 of 2 "
                           "ranks"), 1u) << o.out;
  }
}

// distributed.shared_memory on thread ranks, whose shared buffers are plain memory of the process:
// the trainer's shared path (fences, the summing Adam, checkpoints) without MPI. At 2 ranks it
// gives ZeRO-1's parameters bit for bit (the sum of two is the same in either order), and those
// differ from the start (training moved them).
class SharedMemoryTraining : public GraphAgreement {
 protected:
  std::vector<float> train_params(bool shared, std::string* out = nullptr) {
    cfg_.train.cuda_graphs = false;
    cfg_.distributed.shard_optimizer = !shared;
    cfg_.distributed.shared_memory = shared;
    ShardedDataset data = ShardedDataset::open(cfg_.data.train);
    data.cache_in_memory();
    ThreadWorld world(kRanks);
    std::filesystem::remove_all(dir_ / "run");
    std::filesystem::create_directories(dir_ / "run" / "checkpoints");
    const CheckpointDirectory checkpoints(dir_ / "run" / "checkpoints", 1);
    std::unique_ptr<ParameterLayout> layout;
    ::testing::internal::CaptureStdout();
    std::vector<std::thread> ranks;
    for (int r = 0; r < kRanks; ++r)
      ranks.emplace_back([&, r] {
        const std::unique_ptr<Backend> cpu = make_cpu_backend();
        ThreadRank comm(world, r);
        auto trainer = make_trainer(cfg_, comm, *cpu, data, nullptr);
        if (r == 0) layout = std::make_unique<ParameterLayout>(trainer->layout());
        trainer->restore(nullptr);
        MetricsWriter metrics;
        trainer->run(checkpoints, metrics);
      });
    for (std::thread& t : ranks) t.join();
    const std::string printed = ::testing::internal::GetCapturedStdout();
    if (out) *out = printed;
    const std::optional<CheckpointData> ck = checkpoints.load_newest(*layout);
    if (!ck) {
      ADD_FAILURE() << "no checkpoint";
      return {};
    }
    EXPECT_EQ(ck->state.step, kSteps);
    initial_ = initial_parameters(*layout, cfg_.seed);
    return ck->params;
  }
  std::vector<float> initial_;
};

TEST_F(SharedMemoryTraining, TwoRanksEqualZeroOneBitForBit) {
  std::string out;
  const std::vector<float> shared = train_params(true, &out);
  EXPECT_EQ(count(out, "parameters and gradients in memory shared by the 2 ranks"), 1u) << out;
  for (const double clip : {0.0, 0.5}) {  // the summing Adam, and the sum then clipping
    cfg_.train.grad_clip = clip;
    const std::vector<float> s = clip > 0 ? train_params(true) : shared;
    const std::vector<float> z = train_params(false);
    ASSERT_EQ(s.size(), z.size());
    ASSERT_FALSE(s.empty());
    for (size_t i = 0; i < s.size(); ++i) ASSERT_EQ(s[i], z[i]) << "clip " << clip << ", " << i;
    EXPECT_NE(s, initial_) << "clip " << clip;
  }
}

// ---- run directories ----------------------------------------------------------------------------

class RunDirectoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::temp_directory_path() /
           ("elbo_test_rundir_" + std::to_string(getpid()) + "_" + test->name());
    std::filesystem::remove_all(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  static ModelSpec spec() {
    ModelSpec s;
    s.input_dim = 4;
    s.encoder = {3};
    s.latent = 2;
    s.decoder = {3};
    return s;
  }
  // The config of these checkpoints: the model of spec(), batches of 8 (read_checkpoint checks
  // a checkpoint against its config).
  static std::string config_yaml() {
    Config c;
    c.data.train = "data";
    c.model.encoder = {3};
    c.model.latent = 2;
    c.model.decoder = {3};
    c.train.batch_size = 8;
    c.output.dir = "runs/x";
    return to_yaml(c);
  }
  CheckpointData at_step(int64_t step) const {
    CheckpointData d;
    d.state.step = step;
    d.state.samples_seen = step * 8;
    d.state.seed = 1;
    d.config_yaml = config_yaml();
    d.optimizer_steps = step;
    d.params.assign(layout_.total_size(), 0.25f);
    d.exp_avg.assign(layout_.total_size(), 0.0f);
    d.exp_avg_sq.assign(layout_.total_size(), 0.0f);
    return d;
  }
  // A new run in `dir` that saved checkpoints at `steps`; returns its run id.
  std::string make_run(const std::filesystem::path& dir, std::vector<int64_t> steps) {
    RunDirectory run = RunDirectory::open(dir);
    EXPECT_FALSE(run.choose_start("", std::nullopt, false, layout_));
    run.start("seed: 1\n", nullptr, 10);
    for (int64_t s : steps) run.checkpoints().save(layout_, at_step(s));
    return run.run_id();
  }
  static std::string text_of(const std::filesystem::path& p) {
    std::ifstream in(p);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  void expect_refused(const std::function<void()>& f, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "not refused; expected '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::BadInput) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }

  std::filesystem::path dir_;
  ParameterLayout layout_{spec()};
};

// The run id is made once, kept in run.yaml and stamped into every checkpoint of the run.
TEST_F(RunDirectoryTest, ARunIsNamedInItsMarkerAndEveryCheckpoint) {
  const std::string id = make_run(dir_, {5, 10});
  EXPECT_EQ(id.size(), 32u);
  EXPECT_NE(text_of(dir_ / "run.yaml").find("run_id: " + id + "\n"), std::string::npos);
  for (const char* f : {"step-000000005.h5", "step-000000010.h5"})
    EXPECT_EQ(read_checkpoint((dir_ / "checkpoints" / f).string(), layout_).run_id, id) << f;
  EXPECT_EQ(text_of(dir_ / "config.yaml").rfind("# the resolved config", 0), 0u);
  EXPECT_NE(make_run(dir_ / "other", {}), id);
}

TEST_F(RunDirectoryTest, ANewRunIsRefusedWhereARunHasACheckpoint) {
  make_run(dir_, {5});
  RunDirectory run = RunDirectory::open(dir_);
  expect_refused([&] { run.choose_start("", std::nullopt, false, layout_); }, "already holds a run");
}

// A newer format than this build reads must stop the resume, not be passed over for (and then
// rotated away behind) an older checkpoint.
TEST_F(RunDirectoryTest, ResumeAutoStopsAtAFutureFormatAndKeepsIt) {
  make_run(dir_, {5, 10});
  const std::filesystem::path newest = dir_ / "checkpoints" / "step-000000010.h5";
  {
    std::filesystem::remove(newest);
    h5::File f = h5::File::create(newest.string());
    f.write_int_attribute("/", "format_version", 2);
  }
  const auto size = std::filesystem::file_size(newest);
  RunDirectory run = RunDirectory::open(dir_);
  expect_refused([&] { run.choose_start("auto", std::nullopt, false, layout_); },
                 "unsupported format version 2");
  EXPECT_EQ(std::filesystem::file_size(newest), size);
  EXPECT_TRUE(std::filesystem::exists(dir_ / "checkpoints" / "step-000000005.h5"));
}

TEST_F(RunDirectoryTest, ResumeFromACheckpointOfAnotherRunIsRefused) {
  make_run(dir_ / "a", {5});
  make_run(dir_ / "b", {5});
  CheckpointData from_a = read_checkpoint((dir_ / "a/checkpoints/step-000000005.h5").string(), layout_);
  RunDirectory b = RunDirectory::open(dir_ / "b");
  expect_refused([&] { b.choose_start("a.h5", from_a, false, layout_); }, "holds another run");
}

// Continuing in a directory without a run keeps the run's id; a failed start there is taken over.
TEST_F(RunDirectoryTest, ResumeIntoAFreshDirectoryContinuesTheSameRun) {
  const std::string id = make_run(dir_ / "a", {5});
  {
    RunDirectory failed = RunDirectory::open(dir_ / "b");
    failed.choose_start("", std::nullopt, false, layout_);
    failed.start("seed: 1\n", nullptr, 3);  // and no checkpoint
    std::ofstream(dir_ / "b" / "metrics.jsonl") << "{\"step\": 3}\n";
  }
  CheckpointData ck = read_checkpoint((dir_ / "a/checkpoints/step-000000005.h5").string(), layout_);
  RunDirectory b = RunDirectory::open(dir_ / "b");
  ASSERT_TRUE(b.choose_start("a.h5", ck, false, layout_));
  b.start("seed: 1\n", &ck, 3);
  EXPECT_EQ(b.run_id(), id);
  EXPECT_EQ(text_of(dir_ / "b" / "metrics.jsonl"), "");  // the failed start's records are gone
}

TEST_F(RunDirectoryTest, TrimMetricsDropsLaterRecordsAndACutLastLine) {
  std::filesystem::create_directories(dir_);
  const std::filesystem::path m = dir_ / "metrics.jsonl";
  std::ofstream(m) << "{\"type\": \"step\", \"step\": 10}\n{\"type\": \"note\"}\n"
                   << "{\"type\": \"step\", \"step\": 20}\n{\"type\": \"st";
  EXPECT_EQ(trim_metrics_after(m, 15), 2u);
  EXPECT_EQ(text_of(m), "{\"type\": \"step\", \"step\": 10}\n{\"type\": \"note\"}\n");
  EXPECT_EQ(trim_metrics_after(m, 15), 0u);
  EXPECT_EQ(trim_metrics_after(dir_ / "absent.jsonl", 0), 0u);
}

// What reaches main without an elbo::Error around it still becomes one `<what> (<where>)` line.
TEST(ErrorReport, LastResortNamesWhatItCan) {
  const auto report = [](auto e) { return report_of(std::make_exception_ptr(e)); };
  namespace fs = std::filesystem;
  const ErrorReport one =
      report(fs::filesystem_error("cannot create directories", fs::path("/a/b"),
                                  std::make_error_code(std::errc::filename_too_long)));
  EXPECT_EQ(one.message, "cannot create directories: File name too long (/a/b)");
  EXPECT_EQ(one.exit_code, 2);
  const ErrorReport two =
      report(fs::filesystem_error("cannot rename", fs::path("x.tmp"), fs::path("d/x"),
                                  std::make_error_code(std::errc::permission_denied)));
  EXPECT_EQ(two.message, "cannot rename: Permission denied (x.tmp, d/x)");
  EXPECT_EQ(two.exit_code, 2);

  const ErrorReport oom = report(std::bad_alloc());
  EXPECT_TRUE(oom.message.starts_with("out of memory: an allocation failed (std::bad_alloc); "))
      << oom.message;
  EXPECT_TRUE(std::regex_match(
      oom.message, std::regex(R"(.+ \([0-9.]+ [KMGTPE]?i?B(ytes)? of memory available\))")))
      << oom.message;
  EXPECT_EQ(oom.exit_code, 2);

  try {
    throw_bad_input("shard has 0 rows (s.h5)");
  } catch (...) {
    const ErrorReport r = report_of(std::current_exception());
    EXPECT_EQ(r.message, "shard has 0 rows (s.h5)");
    EXPECT_EQ(r.exit_code, 2);
  }
  const ErrorReport internal = report(Error(ErrorKind::Internal, "H5Dread failed [x.cpp:1]"));
  EXPECT_EQ(internal.message, "H5Dread failed [x.cpp:1]");
  EXPECT_EQ(internal.exit_code, 1);
  const ErrorReport other = report(std::runtime_error("something else"));
  EXPECT_EQ(other.message, "something else");
  EXPECT_EQ(other.exit_code, 1);
}

}  // namespace
}  // namespace elbo
