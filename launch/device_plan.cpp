// Device and communicator decisions.
#include "launch/device_plan.h"

#include <charconv>
#include <cstdint>
#include <cstring>

#include "core/error.h"

namespace elbo {

int device_for_local_rank(int local_rank, int visible_devices) {
  return visible_devices > 0 ? local_rank % visible_devices : 0;
}

DevicePlan plan_device(DeviceChoice choice, bool built_with_cuda, int visible_devices,
                       int local_rank, int local_size, const std::string& where,
                       const std::string& cuda_problem) {
  if (choice == DeviceChoice::Cpu) return DevicePlan{};
  const bool usable = built_with_cuda && visible_devices > 0;
  if (!usable && built_with_cuda && !cuda_problem.empty()) {
    if (choice == DeviceChoice::Cuda)
      throw_bad_input("device: cuda, but " + cuda_problem + " (" + where + ")");
    return DevicePlan{false, 0, cuda_problem};
  }
  if (choice == DeviceChoice::Cuda && !usable)
    throw_bad_input(built_with_cuda ? "device: cuda, but no CUDA device is visible (" + where + ")"
                                    : "device: cuda, but this build has no CUDA backend (" + where + ")");
  if (!usable) return DevicePlan{};
  if (visible_devices > 1 && local_size > visible_devices)
    throw_bad_input(std::to_string(local_size) + " ranks on this node but " +
                    std::to_string(visible_devices) + " visible GPU(s): start at most one rank per "
                    "GPU, or train on the CPU with device=cpu (" + where + ")");
  return DevicePlan{true, device_for_local_rank(local_rank, visible_devices), ""};
}

int launcher_local_rank(const std::function<const char*(const char*)>& getenv) {
  // Launcher-specific names come before SLURM_LOCALID: under mpirun or mpiexec inside a Slurm
  // job the MPI daemons are started by srun, and every rank they spawn inherits the daemon's
  // SLURM_LOCALID (0), not its own.
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK",  // Open MPI
                           "MV2_COMM_WORLD_LOCAL_RANK",   // MVAPICH2
                           "MPI_LOCALRANKID",             // MPICH (Hydra), Intel MPI
                           "PMI_LOCAL_RANK",              // PMI-based launchers
                           "PALS_LOCAL_RANKID",           // Cray PALS
                           "SLURM_LOCALID"}) {            // srun
    const char* value = getenv(name);
    if (!value || !*value) continue;
    int rank = -1;
    const char* end = value + std::strlen(value);
    const auto [ptr, ec] = std::from_chars(value, end, rank);
    if (ec == std::errc() && ptr == end && rank >= 0) return rank;
  }
  return 0;
}

double table_hash(std::string_view text) {
  uint32_t hash = 2166136261u;  // FNV-1a
  for (unsigned char c : text) hash = (hash ^ c) * 16777619u;
  return static_cast<double>(hash);
}

double gpu_identity(const std::string& host, const std::string& pci_bus_id) {
  return table_hash(host + '\0' + pci_bus_id);  // the \0: ("ab", "c") and ("a", "bc") differ
}

std::optional<RankPair> first_duplicate(std::span<const double> table) {
  for (size_t j = 1; j < table.size(); ++j) {
    if (table[j] < 0) continue;  // a rank on the CPU holds no GPU
    for (size_t i = 0; i < j; ++i)
      if (table[i] == table[j]) return RankPair{static_cast<int>(i), static_cast<int>(j)};
  }
  return std::nullopt;
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
