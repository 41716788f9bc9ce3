// The NCCL communicator: MPI (or any Communicator) is the control plane, NCCL the data plane.
// Plain C++ (no CUDA or NCCL types), so launch/ and the tests include it in every build.
#pragma once

#include <memory>

#include "distributed/communicator.h"

namespace elbo {

// A communicator whose float collectives run in place on device buffers with NCCL, enqueued on
// `cuda_stream` (a cudaStream_t; nullptr for the legacy default stream) without any host
// synchronisation. rank, size, barrier, abort, the double all-reduce and broadcast_bytes go to
// `control` (which must outlive it), which also carries the ncclUniqueId. The caller has already made this rank's device
// current (cudaSetDevice). A watchdog ends the process with one message when a collective fails
// or stays unfinished for `timeout_s` seconds (a dead or stalled peer). Throws elbo::Error when
// the build has no NCCL (bad input) or NCCL fails to start (internal).
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& control, void* cuda_stream,
                                                     double timeout_s);

bool nccl_available();  // whether this build has the NCCL communicator

}  // namespace elbo
