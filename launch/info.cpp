// `elbo info`: rebuilds the model from the config stored in a checkpoint, reads and validates the
// tensors, and prints the training position and a hash of the parameters (for exact comparisons).
#include "launch/info.h"

#include <cstdio>
#include <cstring>

#include "io/checkpoint.h"
#include "io/config.h"
#include "io/metrics.h"

namespace elbo {

int run_info(const std::string& checkpoint, bool print_params) {
  const CheckpointHeader header = read_checkpoint_header(checkpoint);
  const Config cfg = parse_config(header.config_yaml, checkpoint + ":/config");
  const ParameterLayout layout(model_spec(cfg, header.sample_shape, checkpoint + ":/config"));
  const CheckpointData data = read_checkpoint(checkpoint, layout);

  uint64_t hash = 14695981039346656037ull;  // FNV-1a over the float32 bytes, in layout order
  for (float v : data.params) {
    unsigned char bytes[sizeof v];
    std::memcpy(bytes, &v, sizeof v);
    for (unsigned char b : bytes) hash = (hash ^ b) * 1099511628211ull;
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(hash));
  std::printf("%s\n", JsonLine()
                          .add("path", checkpoint)
                          .add("name", cfg.name)
                          .add("epoch", data.state.epoch)
                          .add("step", data.state.step)
                          .add("samples_seen", data.state.samples_seen)
                          .add("seed", static_cast<int64_t>(data.state.seed))
                          .add("world_size", data.state.world_size)
                          .add("optimizer", data.optimizer_name)
                          .add("num_params", static_cast<int64_t>(layout.total_size()))
                          .add("params_fnv1a64", std::string(hex))
                          .str()
                          .c_str());
  if (print_params) {
    for (const TensorView& t : layout.tensors()) {
      std::printf("%s", t.name.c_str());
      for (size_t i = 0; i < t.size(); ++i) std::printf(" %.9g", data.params[t.offset + i]);
      std::printf("\n");
    }
  }
  return 0;
}

}  // namespace elbo
