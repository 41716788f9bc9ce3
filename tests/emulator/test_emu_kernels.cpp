// Tests of the CUDA emulator's kernel executor (kernel.cpp, fiber.cpp), called directly without the
// runtime's streams: each class of kernel bug it claims to catch, caught in a broken kernel.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "elbo_emu/device.h"
#include "elbo_emu/emulator.h"

namespace {

using elbo_emu::KernelLaunch;
using elbo_emu::ThreadOrder;

constexpr unsigned kBlock = 256;

// What a launch through ELBO_LAUNCH builds, minus the stream (launch_kernel is the runtime's).
template <typename... P, typename... A>
KernelLaunch make_launch(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, A... args) {
  KernelLaunch launch;
  launch.name = name;
  launch.grid = grid;
  launch.block = block;
  launch.thread_body = elbo_emu::detail::thread_body(kernel, args...);
  return launch;
}

class EmuKernels : public ::testing::Test {
 protected:
  void SetUp() override {
    elbo_emu::reset_faults();
    elbo_emu::set_thread_order(ThreadOrder::Forward, 1);
  }
  void TearDown() override { elbo_emu::set_thread_order(ThreadOrder::Forward, 1); }
};

// ---- (a) a missing barrier in a shared-memory reduction ----------------------------------------

void block_sum(const float* in, float* out) {
  ELBO_EMU_SHARED(float, s, kBlock);
  s[threadIdx.x] = in[blockIdx.x * blockDim.x + threadIdx.x];
  __syncthreads();
  for (unsigned k = blockDim.x / 2; k > 0; k >>= 1) {
    if (threadIdx.x < k) s[threadIdx.x] += s[threadIdx.x + k];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}

void block_sum_missing_barrier(const float* in, float* out) {
  ELBO_EMU_SHARED(float, s, kBlock);
  s[threadIdx.x] = in[blockIdx.x * blockDim.x + threadIdx.x];  // no __syncthreads() after this
  for (unsigned k = blockDim.x / 2; k > 0; k >>= 1) {
    if (threadIdx.x < k) s[threadIdx.x] += s[threadIdx.x + k];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}

std::vector<float> sums(void (*kernel)(const float*, float*), ThreadOrder order) {
  elbo_emu::set_thread_order(order, 1);
  std::vector<float> in(2 * kBlock), out(2, 0.0f);
  std::iota(in.begin(), in.end(), 1.0f);
  const float* in_p = in.data();
  float* out_p = out.data();
  EXPECT_EQ(elbo_emu::execute_kernel(make_launch("sum", kernel, 2, kBlock, in_p, out_p)),
            cudaSuccess);
  return out;
}

TEST_F(EmuKernels, ReductionWithBarriersIsExactInEveryOrder) {
  for (ThreadOrder order : {ThreadOrder::Forward, ThreadOrder::Reverse, ThreadOrder::Random}) {
    const std::vector<float> out = sums(&block_sum, order);
    EXPECT_EQ(out[0], 32896.0f);  // 1 + ... + 256
    EXPECT_EQ(out[1], 98432.0f);  // 257 + ... + 512
  }
}

TEST_F(EmuKernels, MissingBarrierReadsNaNInForwardOrder) {
  // Thread 0 adds s[128] before thread 128 has written it: the NaN fill shows through.
  const std::vector<float> forward = sums(&block_sum_missing_barrier, ThreadOrder::Forward);
  EXPECT_TRUE(std::isnan(forward[0]));
  EXPECT_TRUE(std::isnan(forward[1]));
  // Reverse order happens to write before reading: why suites run more than one order.
  const std::vector<float> reverse = sums(&block_sum_missing_barrier, ThreadOrder::Reverse);
  EXPECT_EQ(reverse[0], 32896.0f);
}

// ---- (b), (c) barriers not reached by the whole block -------------------------------------------

int g_live_guards = 0;
struct Guard {  // alive across the barrier: its destructor shows the waiting threads unwound
  Guard() { ++g_live_guards; }
  ~Guard() { --g_live_guards; }
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;
};

void divergent_barrier(float* out) {
  const Guard guard;
  const std::vector<float> heap(4, 1.0f);  // LeakSanitizer would report it if never destroyed
  if (threadIdx.x < 16) __syncthreads();
  out[threadIdx.x] = heap[0];
}

TEST_F(EmuKernels, DivergentBarrierIsAFaultNamingTheKernel) {
  std::vector<float> out(kBlock);
  float* p = out.data();
  EXPECT_EQ(
      elbo_emu::execute_kernel(make_launch("divergent_barrier", &divergent_barrier, 1, kBlock, p)),
      cudaErrorLaunchFailure);
  const std::string fault = elbo_emu::last_fault();
  EXPECT_NE(fault.find("kernel divergent_barrier"), std::string::npos) << fault;
  EXPECT_NE(fault.find("threads 0-15 wait at the __syncthreads() at"), std::string::npos) << fault;
  EXPECT_NE(fault.find("test_emu_kernels.cpp:"), std::string::npos) << fault;
  EXPECT_NE(fault.find("threads 16-255 returned"), std::string::npos) << fault;
  EXPECT_EQ(g_live_guards, 0);  // the 16 waiting threads were unwound, not abandoned

  // The executor is usable again afterwards.
  elbo_emu::reset_faults();
  EXPECT_EQ(sums(&block_sum, ThreadOrder::Forward)[0], 32896.0f);
  EXPECT_EQ(elbo_emu::last_fault(), "");
}

void two_barrier_sites(float* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.0f;
}

TEST_F(EmuKernels, ThreadsAtDifferentBarriersAreAFault) {
  std::vector<float> out(64);
  float* p = out.data();
  EXPECT_EQ(
      elbo_emu::execute_kernel(make_launch("two_barrier_sites", &two_barrier_sites, 1, 64, p)),
      cudaErrorLaunchFailure);
  const std::string fault = elbo_emu::last_fault();
  EXPECT_NE(fault.find("kernel two_barrier_sites"), std::string::npos) << fault;
  EXPECT_NE(fault.find("different barriers"), std::string::npos) << fault;
  // Both sites, each with its threads (even and odd: the first runs, then "...").
  EXPECT_NE(fault.find("threads 0, 2, 4, 6, 8, 10, ... wait"), std::string::npos) << fault;
  EXPECT_NE(fault.find("threads 1, 3, 5, 7, 9, 11, ... wait"), std::string::npos) << fault;
  EXPECT_EQ(out[0], 0.0f);  // nobody got past the barrier
}

void throws_in_thread_5(float* out) {
  if (threadIdx.x == 5) throw std::runtime_error("bad thing");
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}

TEST_F(EmuKernels, ExceptionInAThreadIsAFault) {
  std::vector<float> out(32);
  float* p = out.data();
  EXPECT_EQ(elbo_emu::execute_kernel(make_launch("throws", &throws_in_thread_5, 1, 32, p)),
            cudaErrorLaunchFailure);
  EXPECT_NE(elbo_emu::last_fault().find("kernel throws: block (0,0,0): thread (5,0,0) threw: "
                                        "bad thing"),
            std::string::npos)
      << elbo_emu::last_fault();
}

// ---- (d) shared memory: NaN-filled, one array per site, fresh per block -------------------------

void read_shared_before_writing(float* out, double* out2, uintptr_t* where) {
  ELBO_EMU_SHARED(float, s, kBlock);
  ELBO_EMU_SHARED(double, d, 3);
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  out[i] = s[threadIdx.x];
  if (threadIdx.x < 3) out2[blockIdx.x * 3 + threadIdx.x] = d[threadIdx.x];
  where[2 * i] = reinterpret_cast<uintptr_t>(s);
  where[2 * i + 1] = reinterpret_cast<uintptr_t>(d);
  s[threadIdx.x] = 1.0f;  // a stale block would pass this on to the next
  if (threadIdx.x < 3) d[threadIdx.x] = 2.0;
}

TEST_F(EmuKernels, SharedMemoryArrivesNaNFilledInEachBlock) {
  constexpr unsigned kBlocks = 3;
  std::vector<float> out(kBlocks * kBlock, 0.0f);
  std::vector<double> out2(kBlocks * 3, 0.0);
  std::vector<uintptr_t> where(2 * kBlocks * kBlock);
  float* o = out.data();
  double* o2 = out2.data();
  uintptr_t* w = where.data();
  ASSERT_EQ(elbo_emu::execute_kernel(
                make_launch("read_shared", &read_shared_before_writing, kBlocks, kBlock, o, o2, w)),
            cudaSuccess);
  for (float v : out) {
    uint32_t bits = 0;
    std::memcpy(&bits, &v, sizeof bits);
    ASSERT_EQ(bits, 0xFFFFFFFFu);
  }
  for (double v : out2) ASSERT_TRUE(std::isnan(v));
  for (unsigned b = 0; b < kBlocks; ++b) {
    for (unsigned t = 0; t < kBlock; ++t) {  // one array per site, the same for the whole block
      ASSERT_EQ(where[2 * (b * kBlock + t)], where[2 * b * kBlock]);
      ASSERT_EQ(where[2 * (b * kBlock + t) + 1], where[2 * b * kBlock + 1]);
    }
    EXPECT_NE(where[2 * b * kBlock], where[2 * b * kBlock + 1]);
    EXPECT_EQ(where[2 * b * kBlock + 1] % alignof(double), 0u);
  }
}

// ---- (e) launch limits and the static shared limit ----------------------------------------------

void empty_kernel() {}

TEST_F(EmuKernels, LaunchLimitsAreRejectedNamingTheLimit) {
  struct Case {
    dim3 grid, block;
    size_t dynamic_shared;
    const char* limit;
  };
  const Case bad[] = {
      {dim3(1), dim3(1025), 0, "1025 threads per block"},
      {dim3(1), dim3(513, 2), 0, "1026 threads per block"},
      {dim3(1), dim3(1, 1, 65), 0, "blockDim.z 65 exceeds the limit of 64"},
      {dim3(1, 65536), dim3(32), 0, "gridDim.y 65536 exceeds the limit of 65535"},
      {dim3(1, 1, 65536), dim3(32), 0, "gridDim.z 65536 exceeds the limit of 65535"},
      {dim3(2147483648u), dim3(32), 0, "gridDim.x 2147483648 exceeds the limit of 2147483647"},
      {dim3(0), dim3(32), 0, "gridDim (0,1,1) has a zero dimension"},
      {dim3(1), dim3(32, 0), 0, "blockDim (32,0,1) has a zero dimension"},
      {dim3(1), dim3(32), 49 * 1024, "dynamic shared memory of 50176 bytes exceeds the limit"},
  };
  for (const Case& c : bad) {
    KernelLaunch launch = make_launch("empty_kernel", &empty_kernel, c.grid, c.block);
    launch.dynamic_shared = c.dynamic_shared;
    std::string why;
    EXPECT_EQ(elbo_emu::validate_launch(launch, &why), cudaErrorInvalidConfiguration) << c.limit;
    EXPECT_NE(why.find(c.limit), std::string::npos) << why;
  }
  KernelLaunch ok =
      make_launch("empty_kernel", &empty_kernel, dim3(2147483647u, 65535, 65535), dim3(16, 1, 64));
  ok.dynamic_shared = 48 * 1024;
  std::string why = "unchanged?";
  EXPECT_EQ(elbo_emu::validate_launch(ok, &why), cudaSuccess);
  EXPECT_EQ(why, "");
}

void shared_48k(float* out) {
  ELBO_EMU_SHARED(float, s, 12288);
  s[threadIdx.x] = 1.0f;
  out[0] = s[0];
}
void shared_over_48k(float* out) {
  ELBO_EMU_SHARED(float, a, 6144);
  ELBO_EMU_SHARED(float, b, 6145);  // 24 KiB + 24 KiB + 4 bytes
  a[0] = b[0] = 1.0f;
  out[0] = a[0];
}

TEST_F(EmuKernels, StaticSharedOver48KiBIsAFault) {
  float result = 0.0f;
  float* p = &result;
  EXPECT_EQ(elbo_emu::execute_kernel(make_launch("shared_48k", &shared_48k, 2, 32, p)),
            cudaSuccess);
  EXPECT_EQ(result, 1.0f);
  EXPECT_EQ(elbo_emu::execute_kernel(make_launch("shared_over_48k", &shared_over_48k, 2, 32, p)),
            cudaErrorLaunchFailure);
  const std::string fault = elbo_emu::last_fault();
  EXPECT_NE(fault.find("kernel shared_over_48k"), std::string::npos) << fault;
  EXPECT_NE(fault.find("over the limit of 49152 bytes (48 KiB)"), std::string::npos) << fault;
  EXPECT_NE(fault.find("24580 bytes at"), std::string::npos) << fault;

  // Dynamic shared memory counts against the same 48 KiB.
  elbo_emu::reset_faults();
  KernelLaunch launch = make_launch("shared_48k", &shared_48k, 1, 32, p);
  launch.dynamic_shared = 4;
  EXPECT_EQ(elbo_emu::execute_kernel(launch), cudaErrorLaunchFailure);
  EXPECT_NE(elbo_emu::last_fault().find("after 4 bytes already in use"), std::string::npos)
      << elbo_emu::last_fault();
}

// ---- (f) thread and block order -------------------------------------------------------------

void record_around_barrier(unsigned* log, unsigned* n) {
  log[(*n)++] = threadIdx.x;
  __syncthreads();
  log[(*n)++] = threadIdx.x;
}

void record_block(unsigned* log, unsigned* n) {
  if (threadIdx.x == 0) log[(*n)++] = blockIdx.x;
}

// The threads' order before and after the barrier, and the blocks' order, of a 100x256 grid.
struct Orders {
  std::vector<unsigned> before, after, blocks;
};
Orders record(ThreadOrder order) {
  elbo_emu::set_thread_order(order, 1);
  std::vector<unsigned> log(2 * kBlock);
  unsigned n = 0;
  unsigned* l = log.data();
  unsigned* np = &n;
  EXPECT_EQ(
      elbo_emu::execute_kernel(make_launch("record", &record_around_barrier, 1, kBlock, l, np)),
      cudaSuccess);
  Orders o;
  o.before.assign(log.begin(), log.begin() + kBlock);
  o.after.assign(log.begin() + kBlock, log.end());
  o.blocks.resize(100);
  n = 0;
  l = o.blocks.data();
  EXPECT_EQ(elbo_emu::execute_kernel(make_launch("blocks", &record_block, 100, 32, l, np)),
            cudaSuccess);
  EXPECT_EQ(n, 100u);
  return o;
}

bool is_permutation_of_iota(std::vector<unsigned> v) {
  std::sort(v.begin(), v.end());
  for (unsigned i = 0; i < v.size(); ++i)
    if (v[i] != i) return false;
  return true;
}

TEST_F(EmuKernels, ThreadOrderForwardReverseRandom) {
  std::vector<unsigned> ascending(kBlock), blocks(100);
  std::iota(ascending.begin(), ascending.end(), 0u);
  std::iota(blocks.begin(), blocks.end(), 0u);

  const Orders f = record(ThreadOrder::Forward);
  EXPECT_EQ(f.before, ascending);
  EXPECT_EQ(f.after, ascending);
  EXPECT_EQ(f.blocks, blocks);

  const Orders r = record(ThreadOrder::Reverse);
  std::reverse(ascending.begin(), ascending.end());
  std::reverse(blocks.begin(), blocks.end());
  EXPECT_EQ(r.before, ascending);
  EXPECT_EQ(r.after, ascending);
  EXPECT_EQ(r.blocks, blocks);

  const Orders x = record(ThreadOrder::Random);
  EXPECT_EQ(elbo_emu::thread_order(), ThreadOrder::Random);
  EXPECT_TRUE(is_permutation_of_iota(x.before));
  EXPECT_TRUE(is_permutation_of_iota(x.after));
  EXPECT_TRUE(is_permutation_of_iota(x.blocks));
  std::reverse(ascending.begin(), ascending.end());
  std::reverse(blocks.begin(), blocks.end());
  EXPECT_NE(x.before, ascending);
  EXPECT_NE(x.after, x.before);  // reshuffled at the barrier
  EXPECT_NE(x.blocks, blocks);

  // The same seed repeats the same orders.
  const Orders y = record(ThreadOrder::Random);
  EXPECT_EQ(y.before, x.before);
  EXPECT_EQ(y.after, x.after);
  EXPECT_EQ(y.blocks, x.blocks);
}

// ---- built-in variables over a 3-D grid -----------------------------------------------------

struct Seen {
  uint3 thread_before, thread, block;
  dim3 block_dim, grid_dim;
  int count;
};

void geometry(Seen* out) {
  const uint3 before = threadIdx;
  __syncthreads();  // other threads ran meanwhile: threadIdx must be this thread's again
  const size_t b = blockIdx.x + gridDim.x * (blockIdx.y + size_t{gridDim.y} * blockIdx.z);
  const size_t t = threadIdx.x + blockDim.x * (threadIdx.y + size_t{blockDim.y} * threadIdx.z);
  Seen& s = out[b * blockDim.x * blockDim.y * blockDim.z + t];
  s = Seen{before, threadIdx, blockIdx, blockDim, gridDim, s.count + 1};
}

TEST_F(EmuKernels, BuiltinsOverA3DGrid) {
  const dim3 grid(3, 2, 2), block(4, 2, 3);
  for (ThreadOrder order : {ThreadOrder::Forward, ThreadOrder::Random}) {
    elbo_emu::set_thread_order(order, 7);
    std::vector<Seen> seen(12 * 24, Seen{});
    Seen* p = seen.data();
    ASSERT_EQ(elbo_emu::execute_kernel(make_launch("geometry", &geometry, grid, block, p)),
              cudaSuccess);
    for (size_t i = 0; i < seen.size(); ++i) {
      const Seen& s = seen[i];
      const size_t b = i / 24, t = i % 24;
      ASSERT_EQ(s.count, 1) << i;
      EXPECT_EQ(s.block.x, b % 3);
      EXPECT_EQ(s.block.y, b / 3 % 2);
      EXPECT_EQ(s.block.z, b / 6);
      EXPECT_EQ(s.thread.x, t % 4);
      EXPECT_EQ(s.thread.y, t / 4 % 2);
      EXPECT_EQ(s.thread.z, t / 8);
      EXPECT_EQ(s.thread_before.x, s.thread.x);
      EXPECT_EQ(s.thread_before.y, s.thread.y);
      EXPECT_EQ(s.thread_before.z, s.thread.z);
      EXPECT_EQ(s.block_dim.x * 100 + s.block_dim.y * 10 + s.block_dim.z, 423u);
      EXPECT_EQ(s.grid_dim.x * 100 + s.grid_dim.y * 10 + s.grid_dim.z, 322u);
    }
  }
}

// ---- launches: parameters are per-thread copies; launcher() takes ints --------------------------

void changes_its_parameter(unsigned n, unsigned* out) {
  n += threadIdx.x;
  out[threadIdx.x] = n;
}

TEST_F(EmuKernels, EachThreadGetsItsOwnCopyOfTheParameters) {
  std::vector<unsigned> out(8);
  unsigned* p = out.data();
  ASSERT_EQ(elbo_emu::execute_kernel(make_launch("param", &changes_its_parameter, 1, 8, 10u, p)),
            cudaSuccess);
  for (unsigned t = 0; t < 8; ++t) EXPECT_EQ(out[t], 10 + t);
  // As ELBO_LAUNCH is written in production: int geometry, no stream; not launched here.
  const int blocks = 4, threads = 256;
  [[maybe_unused]] const auto launcher = elbo_emu::launcher(
      "changes_its_parameter", &changes_its_parameter, blocks, threads, 0, cudaStream_t{});
}

// ---- (g) AddressSanitizer inside kernels --------------------------------------------------------

#if defined(__SANITIZE_ADDRESS__)
void writes_past_the_end(float* p, unsigned n) {
  if (threadIdx.x == 31) p[n] = 1.0f;
}

TEST(EmuKernelsDeathTest, HeapOverflowInAKernelIsCaughtByASan) {
  EXPECT_DEATH(
      {
        auto* p = new float[8];
        elbo_emu::execute_kernel(make_launch("overflow", &writes_past_the_end, 1, 32, p, 8u));
        delete[] p;
      },
      "heap-buffer-overflow");
}
#endif

}  // namespace
