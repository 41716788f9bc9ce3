// The CUDA entry points in a build without the CUDA backend: no devices, and a clear error for
// anyone who asks for one.
#include "core/cuda/cuda_backend.h"
#include "core/error.h"

namespace elbo {

bool cuda_backend_built() { return false; }
int cuda_device_count() { return 0; }
CudaProbe cuda_probe() { return CudaProbe{}; }
std::string cuda_pci_bus_id(int) {
  throw_bad_input("this build has no CUDA backend (configure with the CUDA toolkit present)");
}
void cuda_use_device(int) {}

std::string cuda_device_name(int) {
  throw_bad_input("this build has no CUDA backend (configure with the CUDA toolkit present)");
}

std::unique_ptr<Backend> make_cuda_backend(int) {
  throw_bad_input("device: cuda, but this build has no CUDA backend (configure with the CUDA "
                  "toolkit present)");
}

void* cuda_stream(Backend&) { return nullptr; }

}  // namespace elbo
