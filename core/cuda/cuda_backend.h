// The CUDA backend's entry points, in plain C++ (no CUDA types) so that code compiled without nvcc
// (launch/, the tests) can probe devices and create the backend. Defined by cuda_backend.cu with
// ELBO_HAVE_CUDA, and by core/no_cuda.cpp without it.
#pragma once

#include <memory>
#include <string>

#include "core/backend.h"

namespace elbo {

// Whether this build has the CUDA backend (without it, core/no_cuda.cpp answers: no devices).
bool cuda_backend_built();
// Number of usable CUDA devices; 0 on any error (no driver, driver too old, no device).
int cuda_device_count();
// What the CUDA runtime says about this machine: the device count, and when that is 0 because of
// a problem worth telling the user (a driver too old for this build while an NVIDIA driver is
// installed), that problem in words; empty when there is simply no GPU.
struct CudaProbe {
  int devices = 0;
  std::string problem;
};
CudaProbe cuda_probe();
// The device's PCI bus id ("0000:3b:00.0"): two ranks holding the same id share one GPU.
std::string cuda_pci_bus_id(int device);
// Makes the device current for the calling thread, before anything else touches CUDA (so that
// a CUDA-aware MPI initialised afterwards opens its context there, not on device 0).
void cuda_use_device(int device);
// The device's marketing name, e.g. "NVIDIA H100 80GB HBM3". Throws on an invalid device.
std::string cuda_device_name(int device);
// A backend on the given device, which it makes current for the calling thread. Call its methods
// from that thread (or one that has made the same device current). Throws when the device does
// not exist.
std::unique_ptr<Backend> make_cuda_backend(int device);
// The stream (a cudaStream_t) that all of a CUDA backend's work runs on, for work that must be
// ordered with it, such as NCCL all-reduces of the gradients. It is a non-blocking stream, so the
// legacy default stream (nullptr) is NOT ordered with it. Throws when backend is not a CUDA one.
void* cuda_stream(Backend& backend);

}  // namespace elbo
