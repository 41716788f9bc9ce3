// Fuzz target: reading a checkpoint, as `elbo info` and `--resume` do: read_checkpoint_header,
// then read_checkpoint for one small fixed model (4 inputs, no hidden layers, 1 latent: the model
// of the seed checkpoints, tests/fuzz/make_corpus.sh). Whatever happens, no HDF5 file or object
// stays open.
#include <hdf5.h>

#include <climits>
#include <cstdint>
#include <string>

#include "io/checkpoint.h"
#include "tests/fuzz/fuzz.h"

using elbo::fuzz::accepts;
using elbo::fuzz::BytesFile;
using elbo::fuzz::check;

namespace {

elbo::ModelSpec seed_model() {
  elbo::ModelSpec spec;
  spec.input_dim = 4;
  spec.latent = 1;
  return spec;
}

void read_file(const std::string& path) {
  static const elbo::ParameterLayout layout(seed_model());
  elbo::CheckpointHeader header;
  if (accepts([&] { header = elbo::read_checkpoint_header(path); }))
    // What elbo info builds the model from: a sample size that a ModelSpec can hold.
    check(header.input_dim >= 1 && header.input_dim <= INT_MAX,
          "the header's input_dim " + std::to_string(header.input_dim) + " is no sample size");
  elbo::CheckpointData c;
  if (!accepts([&] { c = elbo::read_checkpoint(path, layout); })) return;
  const size_t P = layout.total_size();
  check(c.params.size() == P && c.exp_avg.size() == P && c.exp_avg_sq.size() == P,
        "the buffers read do not match the layout");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const BytesFile file(data, size);
  read_file(file.path());
  check(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL) == 0, "HDF5 objects left open");
  return 0;
}
