// Communicator: the collectives data-parallel training needs, behind one interface, with the
// single-process and MPI implementations (NCCL plugs in beside them).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace elbo {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual std::string name() const = 0;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual int local_rank() const = 0;
  virtual int local_size() const = 0;  // ranks on this node
  // Data plane: in-place sum / copy from root of n floats in the backend's memory (device memory
  // for the NCCL communicator, host memory otherwise).
  virtual void allreduce_sum(float* data, size_t n) = 0;
  virtual void broadcast(float* data, size_t n, int root) = 0;
  // ZeRO-1's pair (optimizer sharding), over the partition of n floats that slice_of gives. Sum
  // the ranks' buffers, leaving this rank's slice of the sum in place (the rest of `data` is then
  // unspecified). Gather: every rank's slice from that rank, into every rank's buffer. Together
  // they move the bytes of one all-reduce. The defaults build them from allreduce_sum and
  // broadcast (correct for any communicator); MPI and NCCL have their own.
  virtual void reduce_scatter_sum(float* data, size_t n);
  virtual void allgather(float* data, size_t n);
  // Compressed gradients (distributed.grad_compression: bf16): the all-reduce and reduce-scatter
  // over n bfloat16 values (bit patterns, in the backend's memory), every addition made in float
  // and rounded to bfloat16 (bfloat16_sum), as NCCL's bfloat16 sum does. Half the bytes on the
  // wire. The defaults refuse (a communicator without them cannot compress).
  virtual void allreduce_sum_bf16(uint16_t* data, size_t n);
  virtual void reduce_scatter_sum_bf16(uint16_t* data, size_t n);
  // Bucketed all-reduce under the backward pass (distributed.bucket_mb): start_allreduce_sum
  // starts an in-place sum of n floats that may still be running when it returns, progress() lets
  // the started sums advance (MPI moves data only inside MPI calls), and finish_allreduces()
  // returns once every started sum is complete: on the host, or on a device for the work the
  // caller enqueues next. The buffers must stay untouched until then. Every rank starts the same
  // sums in the same order. The defaults run each sum at once (correct for any communicator).
  virtual void start_allreduce_sum(float* data, size_t n) { allreduce_sum(data, n); }
  virtual void start_allreduce_sum_bf16(uint16_t* data, size_t n) { allreduce_sum_bf16(data, n); }
  virtual void progress() {}
  virtual void finish_allreduces() {}
  // Node-shared memory (distributed.shared_memory), a collective: when every rank of the job runs
  // on this node and shares its host memory, one buffer of n floats that all of them map (the
  // parameters, first written by rank 0) and one of n floats per rank, in rank order (each rank's
  // gradients), each 64-byte aligned and alive as long as the communicator; otherwise none
  // (params null), on every rank alike. After shared_fence(), a barrier, every rank sees what any
  // rank wrote to them before it. The defaults share nothing.
  struct SharedBuffers {
    float* params = nullptr;
    std::vector<float*> grads;
  };
  virtual SharedBuffers share_memory(size_t /*n*/) { return {}; }
  virtual void shared_fence() { barrier(); }
  // Control plane, always host memory: sums of doubles (metrics, agreement tables) and raw bytes
  // from root (e.g. an ncclUniqueId).
  virtual void allreduce_sum(double* data, size_t n) = 0;
  virtual void broadcast_bytes(void* data, size_t n, int root) = 0;
  virtual void barrier() = 0;
  // The data-plane collectives of a captured step were just replayed (CUDA graphs): a
  // communicator that times its collectives starts timing them now.
  virtual void replayed() {}
  // Ends every rank of the job; never returns.
  [[noreturn]] virtual void abort(int exit_code) = 0;
};

// A rank's share of n floats under ZeRO-1: ranks 0..size-2 take n / size each, in rank order,
// and the last rank the rest (at most size - 1 more), so that NCCL's equal-count collectives move
// all but a tail of under `size` floats.
struct Slice {
  size_t offset = 0, count = 0;
};
Slice slice_of(size_t n, int rank, int size);

// One process: every collective is the identity.
std::unique_ptr<Communicator> make_single_process_communicator();

// MPI_COMM_WORLD (initialises MPI). Only in builds with MPI (ELBO_HAVE_MPI).
std::unique_ptr<Communicator> make_mpi_communicator();

// True when this process was started by an MPI launcher (mpirun, srun) as one of several ranks.
bool launched_by_mpi();
// The launcher's world size (1 under `mpirun -np 1`), or 0 when no MPI launcher started this process.
int mpi_launcher_world_size();
bool mpi_available();  // whether this build has the MPI communicator

}  // namespace elbo
