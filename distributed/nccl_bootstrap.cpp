// The NCCL bootstrap over the control plane, plus the NCCL entry points of builds without NCCL
// (so callers link the same symbols in every build and get a clear message instead).
#include "distributed/nccl_bootstrap.h"

#include <cstdint>

#include "core/error.h"
#include "distributed/nccl_communicator.h"

namespace elbo {

std::vector<unsigned char> share_unique_id(
    Communicator& control, const std::function<std::vector<unsigned char>()>& make_id) {
  std::vector<unsigned char> id;
  if (control.rank() == 0) id = make_id();
  uint64_t length = id.size();  // fixed width: every rank reads the same number of bytes
  control.broadcast_bytes(&length, sizeof(length), 0);
  id.resize(static_cast<size_t>(length));
  if (length > 0) control.broadcast_bytes(id.data(), id.size(), 0);
  return id;
}

#if !defined(ELBO_HAVE_NCCL)
bool nccl_available() { return false; }

std::unique_ptr<Communicator> make_nccl_communicator(Communicator&, void*, double) {
  throw_bad_input(
      "distributed.backend: nccl requested, but this build has no CUDA/NCCL (configure on a "
      "machine with the CUDA toolkit, NCCL and MPI, or choose backend: mpi)");
}
#endif

}  // namespace elbo
