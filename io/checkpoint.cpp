// Checkpoint files in the layout documented in checkpoint.h: built in memory, then written under
// a temporary name, synced and renamed (io/files.h), so that a crash at any moment leaves the
// previous checkpoint intact.
#include "io/checkpoint.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>

#include "core/error.h"
#include "io/config.h"
#include "io/files.h"
#include "io/hdf5.h"
#include "io/location.h"
#include "io/memory.h"
#include "io/shards.h"  // shape_str

namespace elbo {

namespace {

constexpr int64_t kFormatVersion = 1;

std::vector<int64_t> tensor_shape(const TensorView& t) { return t.shape(); }

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
  const std::vector<int64_t>& sample = layout.sample_shape();
  f.write_dataset("/sample_shape", {static_cast<int64_t>(sample.size())}, H5T_STD_I64LE,
                  H5T_NATIVE_INT64, sample.data());
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

std::string value_text(float v) {
  char s[32];
  std::snprintf(s, sizeof s, "%g", static_cast<double>(v));
  return s;
}

// The tensors of `group`, checked before anything is allocated: no tensor the model lacks, each
// of the layout's present as float32 in its true shape; then read and checked value by value.
std::vector<float> read_tensors(const h5::File& f, const std::string& group,
                                const ParameterLayout& layout) {
  const std::string& path = f.path();
  if (!f.exists(group)) throw_bad_input("checkpoint has no group '" + group + "'" + at(path));
  for (const std::string& name : f.children(group))
    if (!layout.find(name))
      throw_bad_input("checkpoint has a tensor the model lacks; written for a different model?" +
                      at(path, group + "/" + name));
  for (const TensorView& t : layout.tensors()) {
    std::string ds = group + "/" + t.name;
    if (!f.exists(ds))
      throw_bad_input("checkpoint has no tensor '" + ds + "'; written for a different model?" +
                      at(path));
    std::vector<int64_t> want = tensor_shape(t), got = f.dataset_shape(ds);
    if (got != want)
      throw_bad_input("tensor has shape " + shape_str(got) + ", the model expects " +
                      shape_str(want) + at(path, ds));
    const h5::Handle d = f.open_dataset(ds);
    const h5::Handle type(H5Dget_type(d.get()), h5::Handle::Type::Datatype);
    ELBO_CHECK(type.valid(), "H5Dget_type on '" + path + ":" + ds + "'");
    if (H5Tget_class(type.get()) != H5T_FLOAT || H5Tget_size(type.get()) != 4)
      throw_bad_input("tensor is not float32 (" + std::to_string(H5Tget_size(type.get()) * 8) +
                      "-bit " + (H5Tget_class(type.get()) == H5T_FLOAT ? "float" : "non-float") +
                      ")" + at(path, ds));
  }
  std::vector<float> flat(layout.total_size());
  const bool second_moments = group == "/optimizer/exp_avg_sq";
  for (const TensorView& t : layout.tensors()) {
    const std::string ds = group + "/" + t.name;
    h5::FloatArray a = f.read_floats(ds);
    for (size_t i = 0; i < a.data.size(); ++i) {
      const float v = a.data[i];
      if (!std::isfinite(v))
        throw_bad_input("tensor holds a non-finite value (" + value_text(v) + ") at index " +
                        std::to_string(i) + at(path, ds));
      if (second_moments && v < 0.0f)
        throw_bad_input("tensor holds a negative second moment (" + value_text(v) + ") at index " +
                        std::to_string(i) + at(path, ds));
    }
    std::copy(a.data.begin(), a.data.end(), flat.begin() + static_cast<ptrdiff_t>(t.offset));
  }
  return flat;
}

// An integer attribute of the checkpoint within [lo, hi].
int64_t read_int_between(const h5::File& f, const std::string& object, const std::string& name,
                         int64_t lo, int64_t hi, const std::string& rule) {
  const int64_t v = f.read_int_attribute(object, name);
  if (v < lo || v > hi)
    throw_bad_input("checkpoint attribute '" + name + "' is " + std::to_string(v) + ", must be " +
                    rule + at(f.path(), object));
  return v;
}

// Two things the checkpoint says that must agree.
void check_agree(const h5::File& f, const std::string& object, const std::string& name,
                 const std::string& value, const std::string& other, bool agree) {
  if (!agree)
    throw_bad_input("checkpoint attribute '" + name + "' is " + value + ", but " + other +
                    at(f.path(), object));
}

// The config attribute's model must have exactly the tensors the file holds (checked against
// `layout` already): a file that disagrees with itself was damaged or edited.
void check_config_model(const h5::File& f, const Config& cfg, const ParameterLayout& layout) {
  const ParameterLayout own(model_spec(cfg, layout.sample_shape(), f.path() + ":/config"));
  bool same = own.tensors().size() == layout.tensors().size();
  for (size_t i = 0; same && i < own.tensors().size(); ++i)
    same = own.tensors()[i].name == layout.tensors()[i].name &&
           own.tensors()[i].rows == layout.tensors()[i].rows &&
           own.tensors()[i].cols == layout.tensors()[i].cols;
  if (!same)
    throw_bad_input("the config attribute describes another model than the tensors hold (" +
                    std::to_string(own.total_size()) + " parameters vs " +
                    std::to_string(layout.total_size()) + ")" + at(f.path(), "/config"));
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

// Every field is checked as it is read, and against the others where they must agree, so that a
// damaged or edited file is an error naming the file and the field, never a continuation from a
// position that cannot be (a negative step once crashed the loop).
CheckpointData read_checkpoint(const std::string& path, const ParameterLayout& layout) {
  h5::File f = h5::File::open_read(path);
  check_format(f);
  CheckpointData d;
  d.config_yaml = f.read_string_attribute("/", "config");
  if (f.has_attribute("/", "run_id")) d.run_id = f.read_string_attribute("/", "run_id");
  const Config cfg = parse_config(d.config_yaml, path + ":/config");
  const int64_t batch = cfg.train.batch_size;
  d.state.world_size =
      read_int_between(f, "/", "world_size", 1, batch,
                       "between 1 and the config's train.batch_size " + std::to_string(batch));
  // The Adam step count lives in a float32 beside the moments; every step is an optimizer step.
  constexpr int64_t kMaxStep = INT32_MAX;
  const bool capped = cfg.train.max_steps > 0 && cfg.train.max_steps < kMaxStep;
  const int64_t max_step = capped ? cfg.train.max_steps : kMaxStep;
  d.state.step = read_int_between(f, "/state", "step", 0, max_step,
                                  "between 0 and " +
                                      std::string(capped ? "the config's train.max_steps " : "") +
                                      std::to_string(max_step));
  d.state.epoch = read_int_between(
      f, "/state", "epoch", 0, cfg.train.epochs,
      "between 0 and the config's train.epochs " + std::to_string(cfg.train.epochs));
  check_agree(f, "/state", "epoch", std::to_string(d.state.epoch),
              "only " + std::to_string(d.state.step) + " steps were taken",
              d.state.epoch <= d.state.step);
  d.state.samples_seen = f.read_int_attribute("/state", "samples_seen");
  check_agree(f, "/state", "samples_seen", std::to_string(d.state.samples_seen),
              std::to_string(d.state.step) + " steps of train.batch_size " + std::to_string(batch) +
                  " are " + std::to_string(d.state.step * batch),
              d.state.samples_seen == d.state.step * batch);
  d.state.seed = static_cast<uint64_t>(f.read_int_attribute("/state", "seed"));
  check_agree(f, "/state", "seed", std::to_string(d.state.seed),
              "the config's seed is " + std::to_string(cfg.seed), d.state.seed == cfg.seed);
  d.optimizer_name = f.read_string_attribute("/optimizer", "name");
  check_agree(f, "/optimizer", "name", "'" + d.optimizer_name + "'",
              "the config's train.optimizer.name is '" + cfg.train.optimizer.name + "'",
              d.optimizer_name == cfg.train.optimizer.name);
  d.optimizer_steps = f.read_int_attribute("/optimizer", "steps");
  check_agree(f, "/optimizer", "steps", std::to_string(d.optimizer_steps),
              "/state says " + std::to_string(d.state.step) + " steps were taken",
              d.optimizer_steps == d.state.step);
  // Three copies of the parameters in memory: refused before allocating when they cannot fit.
  const double bytes = 3.0 * sizeof(float) * static_cast<double>(layout.total_size());
  if (bytes > available_memory_bytes())
    throw_bad_input("reading the checkpoint needs " + bytes_text(bytes) +
                    " of memory, more than the " + bytes_text(available_memory_bytes()) +
                    " available" + at(path));
  d.params = read_tensors(f, "/params", layout);
  check_config_model(f, cfg, layout);
  d.exp_avg = read_tensors(f, "/optimizer/exp_avg", layout);
  d.exp_avg_sq = read_tensors(f, "/optimizer/exp_avg_sq", layout);
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
  if (shape[0] < 1 || shape[0] > INT32_MAX)
    throw_bad_input("tensor has shape " + shape_str(shape) + ": no model has that many outputs" +
                    at(path, out_bias));
  h.input_dim = shape[0];
  h.sample_shape = {h.input_dim};
  if (f.exists("/sample_shape")) {
    const std::vector<int64_t> sample = f.dataset_shape("/sample_shape");
    const h5::FloatArray dims = f.read_floats("/sample_shape");
    int64_t product = 1;
    bool sane = sample.size() == 1 && !dims.data.empty() && dims.data.size() <= 3;
    h.sample_shape.clear();
    for (float d : dims.data) {
      sane = sane && d >= 1 && d <= static_cast<float>(1 << 20);
      h.sample_shape.push_back(static_cast<int64_t>(d));
      product *= h.sample_shape.back();
    }
    if (!sane || product > INT32_MAX)
      throw_bad_input("dataset is not the shape of a sample" + at(path, "/sample_shape"));
    h.input_dim = product;
  }
  return h;
}

}  // namespace elbo
