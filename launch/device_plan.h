// Which device a rank trains on and which communicator carries its gradients: pure decisions from
// the config and what is visible, kept apart from the code that acts on them so they are tested
// on machines without GPUs.
#pragma once

#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "io/config.h"

namespace elbo {

struct DevicePlan {
  bool cuda = false;
  int index = 0;        // the CUDA device: device_for_local_rank
  std::string warning;  // why auto fell back to the CPU, when the user must hear it (rank 0 says)
};

// The device a local rank takes among `visible` (> 0) devices: local rank modulo the visible
// devices. One visible device serves every local rank, as it does when the launcher gives each
// task its own GPU (srun --gpus-per-task=1, a per-rank CUDA_VISIBLE_DEVICES).
int device_for_local_rank(int local_rank, int visible_devices);

// auto: CUDA when this build has it and a device is visible, else the CPU. cuda: required, an
// error (naming `where`) when unavailable. `cuda_problem` (cuda_probe().problem) says why the
// runtime sees no device although a GPU is there (a driver too old): an error for cuda, a warning
// and the CPU for auto.
// One visible GPU with several local ranks is taken to be one GPU per task (see above); if the
// ranks really share it, the start-up check (first_duplicate) says so. 2 <= visible GPUs < local
// ranks would put two ranks on one GPU, which NCCL refuses: an error, saying how to fix it.
DevicePlan plan_device(DeviceChoice choice, bool built_with_cuda, int visible_devices,
                       int local_rank, int local_size, const std::string& where,
                       const std::string& cuda_problem = "");

// The node-local rank that the launcher put in the environment, read before MPI starts (so that
// the GPU is chosen before a CUDA-aware MPI opens a context). `getenv` looks a name up (nullptr
// when unset). The first variable set to a non-negative integer wins; none gives 0.
int launcher_local_rank(const std::function<const char*(const char*)>& getenv);

// A 32-bit FNV-1a hash, exact in a double, for the start-up tables in which ranks compare what
// they hold (one slot per rank, summed over the control plane).
double table_hash(std::string_view text);

// table_hash of (host, PCI bus id): equal for two ranks exactly when they hold the same GPU (up to
// a 2^-32 chance of a false alarm).
double gpu_identity(const std::string& host, const std::string& pci_bus_id);

// In a table with one slot per rank (gpu_identity, or a negative value for a rank on the CPU),
// the first pair of ranks with the same GPU: the lowest `second`, then the lowest `first`.
struct RankPair {
  int first = 0, second = 0;
};
std::optional<RankPair> first_duplicate(std::span<const double> table);

enum class DataPlane { Single, Mpi, Nccl };

// auto: NCCL between GPUs, MPI between CPUs, nothing for one rank. MPI cannot carry device
// buffers here and NCCL cannot carry host ones, so those pairings are errors.
DataPlane plan_data_plane(CommBackend choice, bool cuda, int world_size, const std::string& where);

std::string to_string(DataPlane p);

}  // namespace elbo
