// The single-process communicator: rank 0 of 1, collectives are no-ops.
#include "distributed/communicator.h"

#include <cstdlib>

namespace elbo {
namespace {

class SingleProcessCommunicator final : public Communicator {
 public:
  std::string name() const override { return "none (single process)"; }
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int local_rank() const override { return 0; }
  void allreduce_sum(float*, size_t) override {}
  void allreduce_sum(double*, size_t) override {}
  void broadcast(float*, size_t, int) override {}
  void barrier() override {}
  [[noreturn]] void abort(int exit_code) override { std::_Exit(exit_code); }
};

}  // namespace

std::unique_ptr<Communicator> make_single_process_communicator() {
  return std::make_unique<SingleProcessCommunicator>();
}

}  // namespace elbo
