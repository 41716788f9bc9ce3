// `elbo sample` (launch/sample.h). The image shape is the data's sample shape: the shards of
// --data, or else those of the checkpoint's data.test or data.train, since a checkpoint records
// only the flat feature count.
#include "launch/sample.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>

#include "core/cuda/cuda_backend.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "io/config.h"
#include "io/files.h"
#include "io/location.h"
#include "io/shards.h"
#include "launch/device_plan.h"
#include "launch/images.h"

namespace elbo {
namespace fs = std::filesystem;
namespace {

// The shards that tell the image shape: --data, else the checkpoint's test or training data.
ShardedDataset shape_source(const SampleOptions& o, const Config& cfg) {
  if (!o.data.empty()) return ShardedDataset::open(o.data);
  for (const std::string& dir : {cfg.data.test, cfg.data.train}) {
    if (dir.empty()) continue;
    try {
      return ShardedDataset::open(dir);
    } catch (const Error&) {
      // The run's data may have moved since; the user can name it.
    }
  }
  throw_bad_input(
      "cannot tell the image shape: the checkpoint records only the feature count, "
      "and its data.train shards do not open; pass --data with shards of that shape" +
      at(cfg.data.train));
}

DeviceChoice device_choice(const std::string& name) {
  if (name == "cpu") return DeviceChoice::Cpu;
  if (name == "cuda") return DeviceChoice::Cuda;
  return DeviceChoice::Auto;
}

std::vector<float> read_rows(const ShardedDataset& data, std::vector<int64_t> rows) {
  std::vector<float> x(rows.size() * static_cast<size_t>(data.features()));
  data.read_rows(rows, x.data());
  return x;
}

}  // namespace

int run_sample(const SampleOptions& o) {
  if (!o.interpolate.empty() && o.data.empty())
    throw_bad_input("--interpolate I J needs --data: I and J are samples of it (command line)");
  if (!o.force && fs::exists(fs::symlink_status(o.out)))
    throw_bad_input("the output file exists; pass --force to replace it" + at(o.out));
  const CheckpointHeader header = read_checkpoint_header(o.checkpoint);
  const Config cfg = parse_config(header.config_yaml, o.checkpoint + ":/config");
  const ModelSpec spec = model_spec(cfg, header.sample_shape, o.checkpoint + ":/config");
  const ParameterLayout layout(spec);
  const CheckpointData ck = read_checkpoint(o.checkpoint, layout);

  const ShardedDataset data = shape_source(o, cfg);
  const std::string data_where = o.data.empty() ? cfg.data.train : o.data;
  if (data.features() != header.input_dim)
    throw_bad_input("the data's samples have " + std::to_string(data.features()) +
                    " values (shape " + shape_str(data.sample_shape()) + "), the model's " +
                    std::to_string(header.input_dim) + at(data_where));
  std::string why;
  const std::optional<ImageShape> shape = image_shape(data.sample_shape(), &why);
  if (!shape) throw_bad_input("cannot draw: " + why + at(data_where));
  for (int64_t i : o.interpolate)
    if (i < 0 || i >= data.size())
      throw_bad_input("--interpolate: sample " + std::to_string(i) + " is not in the data's " +
                      std::to_string(data.size()) + " samples" + at(o.data));
  const int n = o.data.empty() ? o.n : static_cast<int>(std::min<int64_t>(o.n, data.size()));

  const CudaProbe probe = cuda_backend_built() && o.device != "cpu" ? cuda_probe() : CudaProbe{};
  const DevicePlan device = plan_device(device_choice(o.device), cuda_backend_built(),
                                        probe.devices, 0, 1, "--device " + o.device, probe.problem);
  if (!device.cuda) configure_cpu_thread(0);  // flush-to-zero as in training; BLAS's own threads
  auto backend = device.cuda ? make_cuda_backend(device.index) : make_cpu_backend();
  const int rows = std::max({n, o.steps, 2});
  Vae vae(*backend, spec, rows, cfg.seed);
  backend->upload(vae.params(), ck.params.data(), ck.params.size());
  Drawer draw(*backend, vae, spec, rows);

  std::vector<float> tiles;  // intensities, tile after tile
  int count = 0, cols = 0;
  const size_t D = static_cast<size_t>(spec.input_dim);
  if (!o.interpolate.empty()) {
    // One row: sample I, the path from its latent to J's, sample J.
    const std::vector<float> x = read_rows(data, o.interpolate);
    const std::vector<float> path = draw.interpolation({x.data(), D}, {x.data() + D, D}, o.steps);
    tiles.insert(tiles.end(), x.begin(), x.begin() + static_cast<std::ptrdiff_t>(D));
    tiles.insert(tiles.end(), path.begin(), path.end());
    tiles.insert(tiles.end(), x.begin() + static_cast<std::ptrdiff_t>(D), x.end());
    count = cols = o.steps + 2;
  } else if (!o.data.empty()) {
    // Rows of inputs, each above a row of their reconstructions.
    std::vector<int64_t> ids(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = i;
    const std::vector<float> x = read_rows(data, ids);
    const std::vector<float> r = draw.reconstructions(x, n);
    cols = std::min(n, 8);  // as the training run's grids
    tiles = inputs_over_reconstructions(x, r, n, cols, spec.input_dim, &count);
  } else {
    tiles = draw.prior_samples(n, rng_key(o.seed), 0, RngStream::Noise);
    count = n;
    cols = static_cast<int>(std::ceil(std::sqrt(static_cast<double>(n))));
  }
  write_file_atomically(o.out, png_bytes(tile_grid(tiles, count, cols, *shape)), "the image");
  std::printf("elbo: %d tile(s) of %dx%d on %s into %s\n", count, shape->width, shape->height,
              device.cuda ? "cuda" : "cpu", o.out.c_str());
  return 0;
}

}  // namespace elbo
