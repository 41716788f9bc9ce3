// The NCCL bootstrap over real MPI, without a GPU: run under `mpirun -np 3`. Every rank must end
// with rank 0's id bytes, and only rank 0 may have made an id. Prints "ok" on rank 0 when so.
#include <cstdio>
#include <string>
#include <vector>

#include "core/error.h"
#include "distributed/communicator.h"
#include "distributed/nccl_bootstrap.h"

namespace {

// An id only rank `rank` would make; other ranks' ids differ in length too, so a wrong broadcast
// of the length shows.
std::vector<unsigned char> id_of(int rank) {
  std::vector<unsigned char> id(rank == 0 ? 128 : 64);
  for (size_t i = 0; i < id.size(); ++i)
    id[i] = static_cast<unsigned char>(i * 31 + static_cast<size_t>(rank) * 101 + 7);
  return id;
}

int run() {
  auto comm = elbo::make_mpi_communicator();
  const int rank = comm->rank();
  int calls = 0;
  const std::vector<unsigned char> id = elbo::share_unique_id(*comm, [&] {
    ++calls;
    return id_of(rank);
  });

  std::string problem;
  const int expected_calls = rank == 0 ? 1 : 0;
  if (calls != expected_calls)
    problem += "make_id called " + std::to_string(calls) + " times, expected " +
               std::to_string(expected_calls) + "; ";
  const std::vector<unsigned char> expected = id_of(0);
  if (id.size() != expected.size()) {
    problem += "received " + std::to_string(id.size()) + " bytes, expected " +
               std::to_string(expected.size()) + "; ";
  } else {
    for (size_t i = 0; i < id.size(); ++i) {
      if (id[i] != expected[i]) {
        problem += "byte " + std::to_string(i) + " is " + std::to_string(id[i]) + ", expected " +
                   std::to_string(expected[i]) + "; ";
        break;
      }
    }
  }
  if (!problem.empty()) std::fprintf(stderr, "rank %d: %s\n", rank, problem.c_str());

  double failed_ranks = problem.empty() ? 0.0 : 1.0;  // every rank learns whether any failed
  comm->allreduce_sum(&failed_ranks, 1);
  if (comm->size() < 2) {
    if (rank == 0) std::fprintf(stderr, "run under mpirun -np 3: only one rank started\n");
    return 1;
  }
  if (failed_ranks != 0.0) return 1;
  if (rank == 0) std::printf("ok\n");
  return 0;
}

}  // namespace

int main() {
  try {
    return run();
  } catch (const elbo::Error& e) {
    std::fprintf(stderr, "elbo: error: %s\n", e.what());
    return e.exit_code();
  }
}
