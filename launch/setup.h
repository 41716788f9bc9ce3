// The set-up that `elbo train` and `elbo bench` share: communicators, the device and the data plane,
// the data, the start-up checks and the trainer, everything up to (not including) the run
// directory, which only training touches.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "core/backend.h"
#include "core/cuda/cuda_backend.h"
#include "distributed/communicator.h"
#include "io/config.h"
#include "io/shards.h"
#include "launch/device_plan.h"
#include "launch/trainer.h"

namespace elbo {

// What CUDA shows this process, asked only when the config may train on a GPU; with a device
// visible, this rank's GPU is made current now, before MPI starts (see setup.cpp).
CudaProbe probe_cuda_before_mpi(const Config& cfg);

// The control plane: MPI whenever ranks are to talk (NCCL's data plane bootstraps over it too),
// a single process otherwise; under the watchdog (distributed.timeout_s).
std::unique_ptr<Communicator> make_control_communicator(const Config& cfg);

// Runs `body` on this rank. With several ranks an error on one must end all of them (the others
// would otherwise wait in the next collective for ever): it is printed with the rank and the job
// aborted with its exit code. Alone, the error goes to the caller (main prints it).
void run_on_every_rank(Communicator& control, const std::function<void()>& body);

// The device a rank computes on, its backend and the communicator that carries its gradients.
struct ComputePlane {
  DevicePlan device;
  DataPlane data_plane = DataPlane::Single;
  std::string device_name;  // "cpu", "cuda:0 (NVIDIA ...)"
  int threads = 0;          // BLAS threads per rank (0: the library's default)
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Communicator> nccl;  // the data plane between GPUs, when there is one
  Communicator* data_comm = nullptr;   // nccl, or the control plane
};
// The decisions alone (device, data plane), checked across ranks; nothing is allocated yet.
ComputePlane plan_compute(const Config& cfg, const std::string& cfg_path, Communicator& control,
                          const CudaProbe& probe);
// Then the BLAS threads, the backend and the data plane's communicator.
void start_compute(ComputePlane& plane, const Config& cfg, Communicator& control);

struct SetupOptions {
  bool resuming = false;         // rank 0 will read a checkpoint (its copies count in memory)
  bool check_output_dir = true;  // output.dir must be usable (training writes there)
};

// A trainer ready to restore and run, with all it refers to. Every bad input (data, model, memory,
// ranks that disagree) has been refused by the time this exists; nothing has been written.
struct TrainingSetup {
  ComputePlane compute;
  std::unique_ptr<ShardedDataset> train, test;  // test may be null
  bool cache = false;                           // the data is held in memory
  std::unique_ptr<Trainer> trainer;             // last: it refers to everything above
};
std::unique_ptr<TrainingSetup> set_up_training(const Config& cfg, const std::string& cfg_path,
                                               Communicator& control, const CudaProbe& probe,
                                               const SetupOptions& options);

}  // namespace elbo
