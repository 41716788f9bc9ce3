// The single-process communicator: rank 0 of 1, collectives are no-ops.
#include "distributed/communicator.h"

#include <cstdlib>

#include "core/error.h"

namespace elbo {
namespace {

class SingleProcessCommunicator final : public Communicator {
 public:
  std::string name() const override { return "none (single process)"; }
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int local_rank() const override { return 0; }
  int local_size() const override { return 1; }
  void allreduce_sum(float*, size_t) override {}
  void allreduce_sum(double*, size_t) override {}
  void broadcast(float*, size_t, int) override {}
  void reduce_scatter_sum(float*, size_t) override {}
  void allgather(float*, size_t) override {}
  void allreduce_sum_bf16(uint16_t*, size_t) override {}
  void reduce_scatter_sum_bf16(uint16_t*, size_t) override {}
  void broadcast_bytes(void*, size_t, int) override {}
  void barrier() override {}
  [[noreturn]] void abort(int exit_code) override { std::_Exit(exit_code); }
};

}  // namespace

Slice slice_of(size_t n, int rank, int size) {
  const size_t ranks = static_cast<size_t>(size), r = static_cast<size_t>(rank);
  const size_t each = n / ranks;
  return Slice{r * each, r + 1 == ranks ? n - r * each : each};
}

void Communicator::reduce_scatter_sum(float* data, size_t n) { allreduce_sum(data, n); }

void Communicator::allgather(float* data, size_t n) {
  for (int r = 0; r < size(); ++r) {
    const Slice s = slice_of(n, r, size());
    if (s.count > 0) broadcast(data + s.offset, s.count, r);
  }
}

void Communicator::allreduce_sum_bf16(uint16_t*, size_t) {
  throw_internal("the " + name() + " communicator has no bfloat16 collectives", __FILE__, __LINE__);
}
void Communicator::reduce_scatter_sum_bf16(uint16_t*, size_t) {
  throw_internal("the " + name() + " communicator has no bfloat16 collectives", __FILE__, __LINE__);
}

std::unique_ptr<Communicator> make_single_process_communicator() {
  return std::make_unique<SingleProcessCommunicator>();
}

int mpi_launcher_world_size() {
  // Open MPI, MPICH/Hydra, PMIx and srun each export the world size to every rank (srun as the
  // size of the job step, which, unlike SLURM_NTASKS, is 1 for the batch script itself).
  int size = 0;
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS"}) {
    const char* v = std::getenv(var);
    if (v && std::atoi(v) > size) size = std::atoi(v);
  }
  return size;
}

bool launched_by_mpi() { return mpi_launcher_world_size() > 1; }

bool mpi_available() {
#if defined(ELBO_HAVE_MPI)
  return true;
#else
  return false;
#endif
}

#if !defined(ELBO_HAVE_MPI)
std::unique_ptr<Communicator> make_mpi_communicator() {
  throw_bad_input("distributed.backend: mpi requested, but this build has no MPI (configure with -DELBO_MPI=ON)");
}
#endif

}  // namespace elbo
