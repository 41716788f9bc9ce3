// Checkpoint files in the layout documented in checkpoint.h: built in memory, then written under
// a temporary name, synced and renamed (io/files.h), so that a crash at any moment leaves the
// previous checkpoint intact.
#include "io/checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <ctime>

#include "core/error.h"
#include "io/files.h"
#include "io/hdf5.h"
#include "io/location.h"
#include "io/shards.h"  // shape_str

namespace elbo {

namespace {

constexpr int64_t kFormatVersion = 1;

std::vector<int64_t> tensor_shape(const TensorView& t) {
  if (t.is_bias) return {t.rows};
  return {t.rows, t.cols};
}

std::string iso8601_utc_now() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char s[32];
  std::strftime(s, sizeof s, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return s;
}

void write_tensors(h5::File& f, const std::string& group, const ParameterLayout& layout,
                   const std::vector<float>& flat) {
  f.create_group(group);
  for (const TensorView& t : layout.tensors())
    f.write_floats(group + "/" + t.name, tensor_shape(t), flat.data() + t.offset);
}

// The checkpoint's bytes, built in memory (see h5::File::create_in_memory).
std::string checkpoint_image(const std::string& path, const ParameterLayout& layout,
                             const CheckpointData& d) {
  h5::File f = h5::File::create_in_memory(path);
  f.write_int_attribute("/", "format_version", kFormatVersion);
  f.write_int_attribute("/", "world_size", d.state.world_size);
  f.write_string_attribute("/", "created", iso8601_utc_now());
  f.write_string_attribute("/", "config", d.config_yaml);
  if (!d.run_id.empty()) f.write_string_attribute("/", "run_id", d.run_id);
  write_tensors(f, "/params", layout, d.params);
  f.create_group("/optimizer");
  f.write_string_attribute("/optimizer", "name", d.optimizer_name);
  f.write_int_attribute("/optimizer", "steps", d.optimizer_steps);
  write_tensors(f, "/optimizer/exp_avg", layout, d.exp_avg);
  write_tensors(f, "/optimizer/exp_avg_sq", layout, d.exp_avg_sq);
  f.create_group("/state");
  f.write_int_attribute("/state", "epoch", d.state.epoch);
  f.write_int_attribute("/state", "step", d.state.step);
  f.write_int_attribute("/state", "samples_seen", d.state.samples_seen);
  // HDF5 attributes here are int64; the seed's bits survive the round trip.
  f.write_int_attribute("/state", "seed", static_cast<int64_t>(d.state.seed));
  return f.image();
}

std::vector<float> read_tensors(const h5::File& f, const std::string& group,
                                const ParameterLayout& layout) {
  const std::string& path = f.path();
  if (!f.exists(group)) throw_bad_input("checkpoint has no group '" + group + "'" + at(path));
  for (const std::string& name : f.children(group))
    if (!layout.find(name))
      throw_bad_input("checkpoint has a tensor the model lacks; written for a different model?" +
                      at(path, group + "/" + name));
  std::vector<float> flat(layout.total_size());
  for (const TensorView& t : layout.tensors()) {
    std::string ds = group + "/" + t.name;
    if (!f.exists(ds))
      throw_bad_input("checkpoint has no tensor '" + ds + "'; written for a different model?" +
                      at(path));
    std::vector<int64_t> want = tensor_shape(t), got = f.dataset_shape(ds);
    if (got != want)
      throw_bad_input("tensor has shape " + shape_str(got) + ", the model expects " +
                      shape_str(want) + at(path, ds));
    h5::FloatArray a = f.read_floats(ds);
    std::copy(a.data.begin(), a.data.end(), flat.begin() + static_cast<ptrdiff_t>(t.offset));
  }
  return flat;
}

void check_format(const h5::File& f) {
  if (!f.has_attribute("/", "format_version"))
    throw_bad_input("not an elbo checkpoint: no format_version attribute" + at(f.path()));
  int64_t v = f.read_int_attribute("/", "format_version");
  if (v != kFormatVersion)
    throw_bad_input("checkpoint has unsupported format version " + std::to_string(v) +
                    "; this build reads version " + std::to_string(kFormatVersion) + at(f.path()));
}

}  // namespace

void write_checkpoint_atomically(const std::string& path, const ParameterLayout& layout,
                                 const CheckpointData& data) {
  size_t P = layout.total_size();
  ELBO_CHECK(data.params.size() == P && data.exp_avg.size() == P && data.exp_avg_sq.size() == P,
             "checkpoint buffers do not match the parameter layout");
  write_file_atomically(path, checkpoint_image(path, layout, data), "the checkpoint");
}

CheckpointData read_checkpoint(const std::string& path, const ParameterLayout& layout) {
  h5::File f = h5::File::open_read(path);
  check_format(f);
  CheckpointData d;
  d.config_yaml = f.read_string_attribute("/", "config");
  if (f.has_attribute("/", "run_id")) d.run_id = f.read_string_attribute("/", "run_id");
  d.state.world_size = f.read_int_attribute("/", "world_size");
  d.params = read_tensors(f, "/params", layout);
  d.optimizer_name = f.read_string_attribute("/optimizer", "name");
  d.optimizer_steps = f.read_int_attribute("/optimizer", "steps");
  d.exp_avg = read_tensors(f, "/optimizer/exp_avg", layout);
  d.exp_avg_sq = read_tensors(f, "/optimizer/exp_avg_sq", layout);
  d.state.epoch = f.read_int_attribute("/state", "epoch");
  d.state.step = f.read_int_attribute("/state", "step");
  d.state.samples_seen = f.read_int_attribute("/state", "samples_seen");
  d.state.seed = static_cast<uint64_t>(f.read_int_attribute("/state", "seed"));
  return d;
}

CheckpointHeader read_checkpoint_header(const std::string& path) {
  h5::File f = h5::File::open_read(path);
  check_format(f);
  CheckpointHeader h;
  h.config_yaml = f.read_string_attribute("/", "config");
  const std::string out_bias = "/params/decoder.out.bias";
  if (!f.exists(out_bias)) throw_bad_input("checkpoint has no tensor 'decoder.out.bias'" + at(path));
  const std::vector<int64_t> shape = f.dataset_shape(out_bias);
  if (shape.size() != 1) throw_bad_input("tensor 'decoder.out.bias' is not a vector" + at(path));
  h.input_dim = shape[0];
  return h;
}

}  // namespace elbo
