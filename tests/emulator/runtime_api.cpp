// The CUDA runtime API, part one: the libcudart symbols for errors, versions, devices, memory and
// copies (streams, events and graphs are in runtime_streams.cpp; the state is in runtime_state.h).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "runtime_state.h"

// ---- the CUDA runtime API -----------------------------------------------------------------------

using namespace elbo_emu;
using namespace elbo_emu::rt;

namespace {

// The codes the emulator returns, with CUDA's names and (most of) its words for them.
struct ErrorText {
  cudaError_t code;
  const char* name;
  const char* text;
};
#define ELBO_EMU_ERROR(code, text) \
  { code, #code, text }
constexpr ErrorText kErrors[] = {
    ELBO_EMU_ERROR(cudaSuccess, "no error"),
    ELBO_EMU_ERROR(cudaErrorInvalidValue, "invalid argument"),
    ELBO_EMU_ERROR(cudaErrorMemoryAllocation, "out of memory"),
    ELBO_EMU_ERROR(cudaErrorInvalidConfiguration, "invalid configuration argument"),
    ELBO_EMU_ERROR(cudaErrorInvalidMemcpyDirection, "invalid copy direction for memcpy"),
    ELBO_EMU_ERROR(cudaErrorInsufficientDriver,
                   "CUDA driver version is insufficient for CUDA runtime version"),
    ELBO_EMU_ERROR(cudaErrorNoDevice, "no CUDA-capable device is detected"),
    ELBO_EMU_ERROR(cudaErrorInvalidDevice, "invalid device ordinal"),
    ELBO_EMU_ERROR(cudaErrorInvalidResourceHandle, "invalid resource handle"),
    ELBO_EMU_ERROR(cudaErrorNotReady, "device not ready"),
    ELBO_EMU_ERROR(cudaErrorIllegalState, "the operation cannot be performed in the present state"),
    ELBO_EMU_ERROR(cudaErrorLaunchFailure, "unspecified launch failure"),
    ELBO_EMU_ERROR(cudaErrorIllegalAddress, "an illegal memory access was encountered"),
    ELBO_EMU_ERROR(cudaErrorStreamCaptureUnsupported,
                   "operation not permitted when stream is capturing"),
    ELBO_EMU_ERROR(cudaErrorStreamCaptureInvalidated,
                   "operation failed due to a previous error during capture"),
    ELBO_EMU_ERROR(cudaErrorStreamCaptureUnmatched, "capture was not initiated in this stream"),
    ELBO_EMU_ERROR(cudaErrorStreamCaptureUnjoined, "capturing stream has unjoined work"),
    ELBO_EMU_ERROR(cudaErrorStreamCaptureIsolation,
                   "dependency created on uncaptured work in another stream"),
    ELBO_EMU_ERROR(cudaErrorStreamCaptureImplicit,
                   "operation would make the legacy stream depend on a capturing blocking stream"),
    ELBO_EMU_ERROR(cudaErrorStreamCaptureWrongThread,
                   "attempt to terminate a thread-local capture sequence from another thread"),
    ELBO_EMU_ERROR(cudaErrorCapturedEvent,
                   "operation not permitted on an event last recorded in a capturing stream"),
};
#undef ELBO_EMU_ERROR

const ErrorText* error_text(cudaError_t e) {
  for (const ErrorText& t : kErrors)
    if (t.code == e) return &t;
  return nullptr;
}

}  // namespace

extern "C" {

cudaError_t cudaGetLastError() {
  if (st().sticky != cudaSuccess) return st().sticky;
  const cudaError_t e = t_last_error;
  t_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() {
  const cudaError_t s = st().sticky;
  return s != cudaSuccess ? s : t_last_error;
}

const char* cudaGetErrorName(cudaError_t e) {
  const ErrorText* t = error_text(e);
  return t ? t->name : "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t e) {
  const ErrorText* t = error_text(e);
  return t ? t->text : "unknown error";
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
  if (st().old_driver)
    return misuse("cudaGetDeviceCount", "ELBO_EMU_DRIVER=old", cudaErrorInsufficientDriver);
  if (st().visible.empty()) return set_last_error(cudaErrorNoDevice);
  *count = static_cast<int>(st().visible.size());
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (const cudaError_t e = device_call("cudaSetDevice")) return e;
  if (device < 0 || device >= static_cast<int>(st().visible.size()))
    return misuse("cudaSetDevice",
                  "device " + std::to_string(device) + " of " + std::to_string(st().visible.size()),
                  cudaErrorInvalidDevice);
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
    return misuse("cudaGetDeviceProperties", "device " + std::to_string(device),
                  cudaErrorInvalidDevice);
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof prop->name, "elbo emulated GPU %d (sm_90)",
                st().visible[device]);
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
    return misuse("cudaDeviceGetPCIBusId", "device " + std::to_string(device),
                  cudaErrorInvalidDevice);
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
  if (!mem)
    return misuse("cudaMalloc", std::to_string(bytes) + " bytes", cudaErrorMemoryAllocation);
  std::memset(mem, 0xff, rounded);  // NaN in every float and double: uninitialised reads show
  ELBO_EMU_POISON(static_cast<char*>(mem) + bytes, rounded - bytes);  // never accessible
  if (!S.device_active) ELBO_EMU_POISON(mem, bytes);  // host code may not touch device memory
  S.device[reinterpret_cast<uintptr_t>(mem)] = Allocation{bytes};
  *p = mem;
  return cudaSuccess;
}

cudaError_t cudaFree(void* p) {
  {  // cudaFree(nullptr) too: it synchronises, so it is illegal during capture
    std::lock_guard<std::mutex> lock(st().mu);
    if (const cudaError_t e = check_capture_rules(st(), "cudaFree")) return e;
  }
  if (!p) return cudaSuccess;
  drain();  // cudaFree synchronises the device
  State& S = st();
  std::lock_guard<std::mutex> lock(S.mu);
  auto it = S.device.find(reinterpret_cast<uintptr_t>(p));
  if (it == S.device.end())
    return misuse("cudaFree", hex(p) + " is not the start of a device allocation",
                  cudaErrorInvalidValue);
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
  if (!mem)
    return misuse("cudaHostAlloc", std::to_string(bytes) + " bytes", cudaErrorMemoryAllocation);
  S.pinned[reinterpret_cast<uintptr_t>(mem)] = Allocation{std::max<size_t>(bytes, 1)};
  *p = mem;
  return cudaSuccess;
}
cudaError_t cudaMallocHost(void** p, size_t bytes) { return cudaHostAlloc(p, bytes, 0); }

cudaError_t cudaFreeHost(void* p) {
  {
    std::lock_guard<std::mutex> lock(st().mu);
    if (const cudaError_t e = check_capture_rules(st(), "cudaFreeHost")) return e;
  }
  if (!p) return cudaSuccess;
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
    case Side::Host:
      attr->type = cudaMemoryTypeUnregistered;
      break;
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
    return misuse(
        "cudaMemsetAsync",
        hex(p) + " + " + std::to_string(bytes) + " bytes is not inside one device allocation",
        cudaErrorInvalidValue);
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

}  // extern "C"
