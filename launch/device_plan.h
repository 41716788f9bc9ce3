// Which device a rank trains on and which communicator carries its gradients: pure decisions from
// the config and what is visible, kept apart from the code that acts on them so they are tested
// on machines without GPUs.
#pragma once

#include <string>

#include "io/config.h"

namespace elbo {

struct DevicePlan {
  bool cuda = false;
  int index = 0;  // the CUDA device: local rank modulo the visible devices
};

// auto: CUDA when this build has it and a device is visible, else the CPU. cuda: required, an
// error (naming `where`) when unavailable.
// More ranks on a node than visible GPUs would put two ranks on one GPU, which NCCL refuses: an
// error for auto and cuda alike, saying how to fix it.
DevicePlan plan_device(DeviceChoice choice, bool built_with_cuda, int visible_devices,
                       int local_rank, int local_size, const std::string& where);

enum class DataPlane { Single, Mpi, Nccl };

// auto: NCCL between GPUs, MPI between CPUs, nothing for one rank. MPI cannot carry device
// buffers here and NCCL cannot carry host ones, so those pairings are errors.
DataPlane plan_data_plane(CommBackend choice, bool cuda, int world_size, const std::string& where);

std::string to_string(DataPlane p);

}  // namespace elbo
