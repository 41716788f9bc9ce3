// Device and communicator decisions.
#include "launch/device_plan.h"

#include "core/error.h"

namespace elbo {

DevicePlan plan_device(DeviceChoice choice, bool built_with_cuda, int visible_devices,
                       int local_rank, int local_size, const std::string& where) {
  if (choice == DeviceChoice::Cpu) return DevicePlan{};
  const bool usable = built_with_cuda && visible_devices > 0;
  if (choice == DeviceChoice::Cuda && !usable)
    throw_bad_input(built_with_cuda ? "device: cuda, but no CUDA device is visible (" + where + ")"
                                    : "device: cuda, but this build has no CUDA backend (" + where + ")");
  if (!usable) return DevicePlan{};
  if (local_size > visible_devices)
    throw_bad_input(std::to_string(local_size) + " ranks on this node but " +
                    std::to_string(visible_devices) + " visible GPU(s): start at most one rank per "
                    "GPU, or train on the CPU with device=cpu (" + where + ")");
  return DevicePlan{true, local_rank % visible_devices};
}

DataPlane plan_data_plane(CommBackend choice, bool cuda, int world_size, const std::string& where) {
  switch (choice) {
    case CommBackend::None: return DataPlane::Single;
    case CommBackend::Auto:
      if (world_size == 1) return DataPlane::Single;
      return cuda ? DataPlane::Nccl : DataPlane::Mpi;
    case CommBackend::Mpi:
      if (cuda && world_size > 1)
        throw_bad_input("distributed.backend: mpi moves host buffers, but the gradients live on the "
                        "GPU; use nccl or auto (" + where + ")");
      return world_size == 1 ? DataPlane::Single : DataPlane::Mpi;
    case CommBackend::Nccl:
      if (!cuda)
        throw_bad_input("distributed.backend: nccl needs device: cuda (" + where + ")");
      return DataPlane::Nccl;
  }
  return DataPlane::Single;
}

std::string to_string(DataPlane p) {
  switch (p) {
    case DataPlane::Single: return "none (one process)";
    case DataPlane::Mpi: return "mpi";
    case DataPlane::Nccl: return "nccl";
  }
  return "?";
}

}  // namespace elbo
