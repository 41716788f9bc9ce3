// The CUDA emulator's internal interface, shared by its parts (runtime.cpp: streams, events,
// memory, graphs; kernel.cpp + fiber.cpp: the kernel executor; cublas.cpp; nccl.cpp), and the
// switches its own tests use. Production code never includes this; it sees only the real CUDA 13
// headers, whose functions the emulator's libraries define.
//
// Execution model. One device thread per process runs all device work (kernels, copies, memsets,
// GEMMs, collectives), and only when something demands it: a synchronisation by the host (stream,
// event or device synchronize, a synchronous copy, a free) or a peer rank waiting in a collective
// (nccl.cpp's demand poller). A GPU does finish its work eventually, so work queued for longer
// than ELBO_EMU_PROGRESS_MS (default 1000) runs too, lest a host that polls events or sits in
// MPI wait for ever. Until then work stays queued, so a host read without a sync, a
// missing stream wait or a staging buffer reused too early gives a wrong result. Device memory is
// poisoned (AddressSanitizer) except while the device thread runs work.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace elbo_emu {

// ---- work on streams ------------------------------------------------------------------------

// One unit of device work. `run` executes on the device thread with device memory accessible; it
// returns cudaSuccess, or an error that becomes the process's sticky error (a device fault), after
// report_fault() has said what happened.
struct Op {
  std::string name;  // for messages, e.g. "kernel adam_step" or "ncclAllReduce"
  std::function<cudaError_t()> run;
  std::shared_ptr<void> keepalive;  // held for as long as the op (or a graph holding it) lives
  bool collective = false;          // a collective peers may wait for (nccl.cpp)
};

// Queues `op` on `stream` (nullptr / cudaStreamLegacy: the legacy default stream;
// cudaStreamPerThread is treated as the legacy stream), or records it into the graph the stream
// is capturing. Returns what the enqueuing API call should return: cudaSuccess, a sticky error,
// cudaErrorStreamCaptureInvalidated (and so on) during a broken capture,
// cudaErrorInvalidResourceHandle for a stream that does not exist. Thread-safe.
cudaError_t enqueue(cudaStream_t stream, Op op);

// The capture status of `stream` as cudaStreamIsCapturing would report it (no error handling).
cudaStreamCaptureStatus capture_status(cudaStream_t stream);

// Sets the calling thread's last error (what cudaGetLastError returns and clears) and returns
// `e`. Every emulated API call that fails goes through this, as CUDA's do.
cudaError_t set_last_error(cudaError_t e);

// A device fault (a kernel's bad barrier, an out-of-range access found by a check): the message
// names the kernel or call; it is printed to stderr once and kept for last_fault().
void report_fault(const std::string& message);

// Runs all queued work now, on the device thread, and waits for it (cudaDeviceSynchronize
// without the error handling). Used by cudaFree and by nccl.cpp's demand poller.
void drain();

// A function the device thread calls while it is idle (about every millisecond): it returns true
// when a peer waits in a collective this process has not joined. The device thread then runs the
// oldest queued collective (an Op with `collective` set) and what it depends on, nothing else.
// nccl.cpp registers one per process.
void register_demand_poller(std::function<bool()> poller);

// ---- device memory --------------------------------------------------------------------------

// Whether [p, p + bytes) lies inside one live device allocation (cudaMalloc).
bool is_device_range(const void* p, size_t bytes);
// Whether p lies inside a live pinned host allocation (cudaMallocHost / cudaHostAlloc).
bool is_pinned(const void* p);

// ---- kernels --------------------------------------------------------------------------------

struct KernelLaunch {
  const char* name = "";  // the kernel as written at the launch, e.g. "kernels::scale"
  dim3 grid{1, 1, 1}, block{1, 1, 1};
  size_t dynamic_shared = 0;
  std::function<void()> thread_body;  // runs one CUDA thread of the kernel (arguments frozen)
  // Set by the launcher when an argument points at memory a GPU cannot reach (pageable host
  // memory): the kernel then faults when it runs, with an illegal address, as on a GPU.
  std::string host_pointer_argument;
};

// Launch-time checks (kernel.cpp): block dimensions and threads per block <= 1024 (block.z <= 64),
// grid.x <= 2^31 - 1, grid.y and grid.z <= 65535, no zero dimension, dynamic shared memory
// within 48 KiB. Returns cudaSuccess or cudaErrorInvalidConfiguration; `why` says which limit.
cudaError_t validate_launch(const KernelLaunch& launch, std::string* why);

// Runs every block of the kernel, one block at a time; each thread is a fiber switched at
// __syncthreads, in the process's thread order. Called on the device thread. Returns
// cudaSuccess, or cudaErrorLaunchFailure after report_fault() (a barrier some threads never
// reach, threads at different barriers, static shared memory over 48 KiB).
cudaError_t execute_kernel(const KernelLaunch& launch);

// Whether a kernel may be given p: null, or inside (or one past the end of) a device or pinned
// allocation.
bool reachable_from_device(const void* p);

// Queues the kernel on `stream` (runtime.cpp): validate_launch, then enqueue. Sets the last error
// as a real launch does (a bad configuration is reported by cudaGetLastError, and not sticky).
void launch_kernel(KernelLaunch launch, cudaStream_t stream);

// Thread order within a block, chosen per process by ELBO_EMU_THREAD_ORDER = forward (default) |
// reverse | random; random is seeded by ELBO_EMU_SEED (default 1) and reshuffled at each barrier.
enum class ThreadOrder { Forward, Reverse, Random };
ThreadOrder thread_order();
void set_thread_order(ThreadOrder order, uint64_t seed = 1);  // for the emulator's own tests

// ---- what tests may ask -----------------------------------------------------------------------

// The message of the last device fault, empty when there was none.
std::string last_fault();
// Clears the sticky error and the fault (a fresh context, as after cudaDeviceReset), so that one
// test process can show several faults.
void reset_faults();
// The math mode of the last GEMM that cuBLAS ran (cublasMath_t as an int), -1 before any.
int last_gemm_math_mode();

}  // namespace elbo_emu
