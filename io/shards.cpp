// Sharded HDF5 data sets: every shard validated on open, then rows read by global index, either as
// hyperslab selections of only the needed rows or as copies from the in-memory cache.
#include "io/shards.h"

#include <glob.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <optional>
#include <type_traits>

#include "core/error.h"
#include "io/files.h"
#include "io/hdf5.h"
#include "io/location.h"

namespace elbo {

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

struct OpenShards {
  std::vector<h5::File> files;
  std::vector<h5::Handle> x, y;  // one per shard; y empty without labels
};

namespace {

namespace fs = std::filesystem;

std::string type_name(hid_t type) {
  std::string bits = std::to_string(H5Tget_size(type) * 8);
  switch (H5Tget_class(type)) {
    case H5T_INTEGER:
      return (H5Tget_sign(type) == H5T_SGN_NONE ? "uint" : "int") + bits;
    case H5T_FLOAT:
      return "float" + bits;
    case H5T_STRING:
      return "string";
    default:
      return "a non-numeric type";
  }
}

const char* type_name(SampleType t) { return t == SampleType::U8 ? "uint8" : "float32"; }

std::vector<std::string> list_directory(const std::string& dir) {
  std::vector<std::string> paths;
  try {
    for (const auto& e : fs::directory_iterator(dir)) {
      std::string ext = e.path().extension().string();
      // Not only regular files: a FIFO or device named like a shard is an error, not skipped.
      if (!e.is_directory() && (ext == ".h5" || ext == ".hdf5")) paths.push_back(e.path().string());
    }
  } catch (const fs::filesystem_error& e) {
    throw_bad_input("cannot list the directory: " + e.code().message() + at(dir));
  }
  if (paths.empty()) throw_bad_input("no shards (*.h5, *.hdf5) in the directory" + at(dir));
  std::sort(paths.begin(), paths.end());
  return paths;
}

std::vector<std::string> list_shards(const std::string& dir_or_glob) {
  std::error_code ec;
  if (fs::is_directory(dir_or_glob, ec)) return list_directory(dir_or_glob);
  std::vector<std::string> paths;
  glob_t g{};
  if (glob(dir_or_glob.c_str(), 0, nullptr, &g) == 0) {
    for (size_t i = 0; i < g.gl_pathc; ++i)  // glob(3) returns them sorted
      if (!fs::is_directory(g.gl_pathv[i], ec)) paths.emplace_back(g.gl_pathv[i]);
  }
  globfree(&g);
  if (paths.empty()) throw_bad_input("no shards match the pattern" + at(dir_or_glob));
  return paths;
}

// What one shard holds, after checking it on its own.
struct ShardMeta {
  std::vector<int64_t> sample_shape;
  SampleType type = SampleType::U8;
  int64_t rows = 0;
  bool labels = false;
};

// An element type as HDF5 writes one: integer bits within the element, a float32 laid out as
// IEEE 754 (either byte order). HDF5 1.10.8 decodes malformed ones from a corrupt file, then
// converts their values differently from one read to the next.
void check_well_formed(hid_t t, const std::string& path, const std::string& object) {
  bool ok = true;
  if (H5Tget_class(t) == H5T_INTEGER) {
    ok = h5::well_formed_number(t);
  } else if (H5Tget_class(t) == H5T_FLOAT) {  // samples are float32 only
    ok = H5Tequal(t, H5T_IEEE_F32LE) > 0 || H5Tequal(t, H5T_IEEE_F32BE) > 0;
  }
  if (!ok)
    throw_bad_input("dataset's element type is malformed; is the file corrupt?" + at(path, object));
}

SampleType sample_type_of(const std::string& path, const h5::Handle& x) {
  h5::Handle t(H5Dget_type(x.get()), h5::Handle::Type::Datatype);
  ELBO_CHECK(t.valid(), "H5Dget_type on '" + path + ":/x'");
  // Class and size rather than H5Tequal: a big-endian float32 is fine, HDF5 converts on read.
  H5T_class_t c = H5Tget_class(t.get());
  size_t size = H5Tget_size(t.get());
  const bool u8 = c == H5T_INTEGER && size == 1 && H5Tget_sign(t.get()) == H5T_SGN_NONE;
  if (u8 || (c == H5T_FLOAT && size == 4)) {
    check_well_formed(t.get(), path, "/x");
    return u8 ? SampleType::U8 : SampleType::F32;
  }
  throw_bad_input("dataset has type " + type_name(t.get()) + ", expected uint8 or float32" +
                  at(path, "/x"));
}

void check_labels(const h5::File& f, const h5::Handle& y, int64_t rows) {
  std::vector<int64_t> shape = f.dataset_shape("/y");
  if (shape.size() != 1 || shape[0] != rows)
    throw_bad_input("dataset has shape " + shape_str(shape) + ", expected [" +
                    std::to_string(rows) + "] to match '/x'" + at(f.path(), "/y"));
  h5::Handle t(H5Dget_type(y.get()), h5::Handle::Type::Datatype);
  ELBO_CHECK(t.valid(), "H5Dget_type on '" + f.path() + ":/y'");
  if (H5Tget_class(t.get()) != H5T_INTEGER)
    throw_bad_input("dataset has type " + type_name(t.get()) + ", expected integer labels" +
                    at(f.path(), "/y"));
  check_well_formed(t.get(), f.path(), "/y");
}

// A chunk stored through a filter the library cannot decode (h5py's LZF without its plugin, say)
// would fail only when a batch reads it: refuse the shard when it is opened instead.
void check_filters(const std::string& path, const std::string& dataset, const h5::Handle& ds) {
  h5::Handle dcpl(H5Dget_create_plist(ds.get()), h5::Handle::Type::PropList);
  ELBO_CHECK(dcpl.valid(), "H5Dget_create_plist on '" + path + ":" + dataset + "'");
  const int n = H5Pget_nfilters(dcpl.get());
  for (int i = 0; i < n; ++i) {
    unsigned flags = 0, config = 0, info = 0;
    size_t values = 0;
    char name[256] = {};
    const H5Z_filter_t id = H5Pget_filter2(dcpl.get(), static_cast<unsigned>(i), &flags, &values,
                                           nullptr, sizeof name, name, &config);
    ELBO_CHECK(id >= 0, "H5Pget_filter2 on '" + path + ":" + dataset + "'");
    if (H5Zfilter_avail(id) > 0 && H5Zget_filter_info(id, &info) >= 0 &&
        (info & H5Z_FILTER_CONFIG_DECODE_ENABLED))
      continue;
    throw_bad_input("dataset is stored with the HDF5 filter '" + std::string(name) + "' (id " +
                    std::to_string(id) +
                    "), which this HDF5 library cannot decode; install its plugin (see "
                    "HDF5_PLUGIN_PATH) or rewrite the shard without it" +
                    at(path, dataset));
  }
}

// Opens one shard, checks it on its own, and keeps its handles in `open`.
ShardMeta open_shard(const std::string& path, OpenShards& open) {
  h5::File f = h5::File::open_read(path);
  if (!f.exists("/x")) throw_bad_input("no dataset '/x'" + at(path));
  h5::Handle x = f.open_dataset("/x");
  std::vector<int64_t> shape = f.dataset_shape("/x");
  if (shape.size() < 2)
    throw_bad_input("dataset has shape " + shape_str(shape) + ", expected [rows, sample dims...]" +
                    at(path, "/x"));
  ShardMeta m;
  m.rows = shape[0];
  m.sample_shape.assign(shape.begin() + 1, shape.end());
  if (m.rows == 0) throw_bad_input("shard has 0 rows" + at(path));
  // Sizes become element counts and offsets: a sample has at most INT_MAX features (the model's
  // input width is an int), and rows x features fits in int64 (a dimension from 2^63 on reads
  // back negative here).
  int64_t features = 1;
  for (int64_t d : m.sample_shape) {
    if (d == 0)
      throw_bad_input("samples are empty: dataset has shape " + shape_str(shape) + at(path, "/x"));
    if (d < 0 || d > std::numeric_limits<int>::max() / features)
      throw_bad_input("samples have more than " + std::to_string(std::numeric_limits<int>::max()) +
                      " features: dataset has shape " + shape_str(shape) + at(path, "/x"));
    features *= d;
  }
  if (m.rows < 0 || m.rows > std::numeric_limits<int64_t>::max() / features)
    throw_bad_input("dataset has too many rows: shape " + shape_str(shape) + at(path, "/x"));
  m.type = sample_type_of(path, x);
  check_filters(path, "/x", x);
  m.labels = f.exists("/y");
  if (m.labels) {
    h5::Handle y = f.open_dataset("/y");
    check_labels(f, y, m.rows);
    check_filters(path, "/y", y);
    open.y.push_back(std::move(y));
  }
  open.x.push_back(std::move(x));
  open.files.push_back(std::move(f));
  return m;
}

void check_agrees(const ShardMeta& a, const std::string& a_path, const ShardMeta& b,
                  const std::string& b_path) {
  auto both = [&](const std::string& va, const std::string& vb) {
    return ": " + va + " vs " + vb + at(a_path + ", " + b_path);
  };
  if (a.sample_shape != b.sample_shape)
    throw_bad_input("shards disagree on sample shape" +
                    both(shape_str(a.sample_shape), shape_str(b.sample_shape)));
  if (a.type != b.type)
    throw_bad_input("shards disagree on sample type" + both(type_name(a.type), type_name(b.type)));
  if (a.labels != b.labels)
    throw_bad_input("shards disagree on labels" +
                    both(a.labels ? "'/y'" : "no '/y'", b.labels ? "'/y'" : "no '/y'"));
}

// The requested rows that fall in one shard: its sorted distinct local rows, and for each
// requested position i the index k of its row among them.
struct ShardRead {
  size_t shard = 0;
  std::vector<int64_t> local;
  std::vector<std::pair<size_t, size_t>> dest;  // (i, k)
};

std::vector<ShardRead> plan_reads(std::span<const int64_t> rows,
                                  const std::vector<ShardInfo>& shards, int64_t total) {
  std::vector<size_t> order(rows.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return rows[a] < rows[b]; });
  std::vector<ShardRead> plan;
  for (size_t i : order) {
    int64_t r = rows[i];
    ELBO_CHECK(r >= 0 && r < total,
               "row " + std::to_string(r) + " out of range [0, " + std::to_string(total) + ")");
    auto it = std::upper_bound(shards.begin(), shards.end(), r,
                               [](int64_t v, const ShardInfo& s) { return v < s.first_row; });
    size_t s = static_cast<size_t>(it - shards.begin()) - 1;
    if (plan.empty() || plan.back().shard != s) plan.push_back({s, {}, {}});
    ShardRead& p = plan.back();
    int64_t local = r - shards[s].first_row;
    if (p.local.empty() || p.local.back() != local) p.local.push_back(local);
    p.dest.emplace_back(i, p.local.size() - 1);
  }
  return plan;
}

// Reads the given sorted distinct rows of dataset `ds` (rows of `features` elements) into `out`,
// in row order: one hyperslab per run of consecutive rows, OR-ed into one selection. When HDF5
// cannot read them (a corrupt chunk, say), returns why (its error stack, read before any other
// call clears it).
std::optional<std::string> try_read_rows(hid_t ds, hid_t mem_type, std::span<const int64_t> local,
                                         int64_t features, void* out, const std::string& where) {
  h5::Handle space(H5Dget_space(ds), h5::Handle::Type::Dataspace);
  ELBO_CHECK(space.valid(), "H5Dget_space on '" + where + "'");
  int rank = H5Sget_simple_extent_ndims(space.get());
  std::vector<hsize_t> dims(static_cast<size_t>(rank)), start(dims.size(), 0);
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  std::vector<hsize_t> count = dims;
  H5S_seloper_t op = H5S_SELECT_SET;
  for (size_t a = 0; a < local.size();) {
    size_t b = a + 1;
    while (b < local.size() && local[b] == local[b - 1] + 1) ++b;
    start[0] = static_cast<hsize_t>(local[a]);
    count[0] = b - a;
    ELBO_CHECK(
        H5Sselect_hyperslab(space.get(), op, start.data(), nullptr, count.data(), nullptr) >= 0,
        "H5Sselect_hyperslab on '" + where + "'");
    op = H5S_SELECT_OR;
    a = b;
  }
  hsize_t n = local.size() * static_cast<size_t>(features);
  h5::Handle mem(H5Screate_simple(1, &n, nullptr), h5::Handle::Type::Dataspace);
  ELBO_CHECK(mem.valid(), "H5Screate_simple");
  if (H5Dread(ds, mem_type, mem.get(), space.get(), H5P_DEFAULT, out) >= 0) return std::nullopt;
  return h5::last_error_reason();
}

// After a failed read of `local` (sorted) rows of `dataset`: the first of them that cannot be
// read, and why, as the error. Reads them again in blocks, and the failing block row by row.
[[noreturn]] void explain_read_failure(hid_t ds, hid_t mem_type, size_t element_size,
                                       std::span<const int64_t> local, int64_t features,
                                       const std::string& path, const std::string& dataset,
                                       const std::string& reason) {
  const size_t row_bytes = element_size * static_cast<size_t>(features);
  const size_t block = std::clamp<size_t>((size_t{1} << 24) / row_bytes, 1, 256);
  std::vector<unsigned char> buf(block * row_bytes);
  const std::string where = path + ":" + dataset;
  for (size_t a = 0; a < local.size(); a += block) {
    const std::span<const int64_t> rows = local.subspan(a, std::min(block, local.size() - a));
    if (!try_read_rows(ds, mem_type, rows, features, buf.data(), where)) continue;
    for (size_t k = 0; k < rows.size(); ++k)
      if (const auto why =
              try_read_rows(ds, mem_type, rows.subspan(k, 1), features, buf.data(), where))
        throw_bad_input("cannot read '" + dataset + "' at row " + std::to_string(rows[k]) + ": " +
                        *why + at(path));
  }
  throw_bad_input("cannot read '" + dataset + "': " + reason + at(path));  // no row fails alone
}

template <typename T>
std::vector<T> read_selected(hid_t ds, hid_t mem_type, const std::vector<int64_t>& local,
                             int64_t features, const std::string& path,
                             const std::string& dataset) {
  std::vector<T> buf(local.size() * static_cast<size_t>(features));
  if (const auto why =
          try_read_rows(ds, mem_type, local, features, buf.data(), path + ":" + dataset))
    explain_read_failure(ds, mem_type, sizeof(T), local, features, path, dataset, *why);
  return buf;
}

// Whole dataset of `rows` rows into `dst` (already sized).
void read_all(hid_t ds, hid_t mem_type, size_t element_size, int64_t rows, int64_t features,
              void* dst, const std::string& path, const std::string& dataset) {
  if (H5Dread(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst) >= 0) return;
  const std::string why = h5::last_error_reason();
  std::vector<int64_t> all(static_cast<size_t>(rows));
  std::iota(all.begin(), all.end(), int64_t{0});
  explain_read_failure(ds, mem_type, element_size, all, features, path, dataset, why);
}

// The rules every float32 row meets as it is read, from memory or from the shards alike: finite
// values, in [0, 1] when `unit_interval` names what needs it. Row k of `v` is the shard's row
// rows[k], or row k without `rows`.
void check_rows(const float* v, size_t count, size_t F, const int64_t* rows,
                const std::string& path, const std::string& unit_interval) {
  for (size_t k = 0; k < count; ++k) {
    const float* row = v + k * F;
    for (size_t j = 0; j < F; ++j) {
      const float x = row[j];
      const bool finite = std::isfinite(x);
      if (finite && (unit_interval.empty() || (x >= 0.0f && x <= 1.0f))) continue;
      const std::string r = std::to_string(rows ? rows[k] : static_cast<int64_t>(k));
      if (!finite) throw_bad_input("non-finite value in '/x' at row " + r + at(path));
      char text[32];
      std::snprintf(text, sizeof text, "%g", static_cast<double>(x));
      throw_bad_input("value " + std::string(text) + " in '/x' at row " + r +
                      " is outside [0, 1], which " + unit_interval + " needs" + at(path));
    }
  }
}

// One row to float: uint8 divided by 255 (as torchvision's ToTensor does), float32 copied.
void to_float(const uint8_t* src, int64_t n, float* dst) {
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<float>(src[j]) / 255.0f;
}
void to_float(const float* src, int64_t n, float* dst) { std::copy(src, src + n, dst); }

template <typename T>
void read_rows_uncached(const std::vector<ShardRead>& plan, const OpenShards& open,
                        const std::vector<ShardInfo>& shards, hid_t mem_type, int64_t F,
                        const std::string& unit_interval, float* out) {
  for (const ShardRead& p : plan) {
    std::vector<T> buf =
        read_selected<T>(open.x[p.shard].get(), mem_type, p.local, F, shards[p.shard].path, "/x");
    if constexpr (std::is_same_v<T, float>)
      check_rows(buf.data(), p.local.size(), static_cast<size_t>(F), p.local.data(),
                 shards[p.shard].path, unit_interval);
    for (auto [i, k] : p.dest)
      to_float(buf.data() + k * static_cast<size_t>(F), F, out + i * static_cast<size_t>(F));
  }
}

}  // namespace

ShardedDataset ShardedDataset::open(const std::string& dir_or_glob) {
  std::vector<std::string> paths = list_shards(dir_or_glob);
  ShardedDataset d;
  d.open_ = std::make_shared<OpenShards>();
  ShardMeta first;
  for (size_t i = 0; i < paths.size(); ++i) {
    ShardMeta m = open_shard(paths[i], *d.open_);
    if (i == 0) first = m;
    check_agrees(first, paths[0], m, paths[i]);
    const int64_t features = std::accumulate(m.sample_shape.begin(), m.sample_shape.end(),
                                             int64_t{1}, std::multiplies<>());
    if (m.rows > std::numeric_limits<int64_t>::max() / features - d.total_rows_)
      throw_bad_input("the shards have too many rows in all" + at(dir_or_glob));
    d.shards_.push_back({paths[i], m.rows, d.total_rows_});
    d.total_rows_ += m.rows;
  }
  d.sample_shape_ = first.sample_shape;
  d.features_ = std::accumulate(first.sample_shape.begin(), first.sample_shape.end(), int64_t{1},
                                std::multiplies<>());
  d.type_ = first.type;
  d.has_labels_ = first.labels;
  return d;
}

bool ShardedDataset::cached() const { return cached_; }

void ShardedDataset::cache_in_memory() {
  if (cached_) return;
  h5::silence_error_printing();
  std::vector<uint8_t> u8;
  std::vector<float> f32;
  std::vector<int64_t> labels;
  size_t total = static_cast<size_t>(total_rows_ * features_);
  if (type_ == SampleType::U8)
    u8.resize(total);
  else
    f32.resize(total);
  if (has_labels_) labels.resize(static_cast<size_t>(total_rows_));
  const size_t F = static_cast<size_t>(features_);
  for (size_t s = 0; s < shards_.size(); ++s) {
    const size_t first = static_cast<size_t>(shards_[s].first_row) * F;
    const int64_t rows = shards_[s].rows;
    const std::string& path = shards_[s].path;
    if (type_ == SampleType::U8) {
      read_all(open_->x[s].get(), H5T_NATIVE_UINT8, 1, rows, features_, u8.data() + first, path,
               "/x");
    } else {
      read_all(open_->x[s].get(), H5T_NATIVE_FLOAT, sizeof(float), rows, features_,
               f32.data() + first, path, "/x");
      check_rows(f32.data() + first, static_cast<size_t>(rows), F, nullptr, path, unit_interval_);
    }
    if (has_labels_)
      read_all(open_->y[s].get(), H5T_NATIVE_INT64, sizeof(int64_t), rows, 1,
               labels.data() + shards_[s].first_row, path, "/y");
  }
  // Committed only once every shard has read and checked, so a failure leaves it uncached.
  cache_u8_ = std::move(u8);
  cache_f32_ = std::move(f32);
  cache_labels_ = std::move(labels);
  cached_ = true;
}

void ShardedDataset::require_unit_interval(const std::string& reason) {
  ELBO_CHECK(!cached_, "require_unit_interval after cache_in_memory");
  unit_interval_ = reason;
}

void ShardedDataset::read_rows(std::span<const int64_t> rows, float* out) const {
  const size_t F = static_cast<size_t>(features_);
  if (cached_) {
    for (size_t i = 0; i < rows.size(); ++i) {
      ELBO_CHECK(rows[i] >= 0 && rows[i] < total_rows_,
                 "row " + std::to_string(rows[i]) + " out of range");
      size_t at = static_cast<size_t>(rows[i]) * F;
      if (type_ == SampleType::U8)
        to_float(cache_u8_.data() + at, features_, out + i * F);
      else
        to_float(cache_f32_.data() + at, features_, out + i * F);
    }
    return;
  }
  h5::silence_error_printing();  // this may run on a loader thread
  std::vector<ShardRead> plan = plan_reads(rows, shards_, total_rows_);
  if (type_ == SampleType::U8)
    read_rows_uncached<uint8_t>(plan, *open_, shards_, H5T_NATIVE_UINT8, features_, unit_interval_,
                                out);
  else
    read_rows_uncached<float>(plan, *open_, shards_, H5T_NATIVE_FLOAT, features_, unit_interval_,
                              out);
}

void ShardedDataset::read_labels(std::span<const int64_t> rows, int64_t* out) const {
  ELBO_CHECK(has_labels_, "read_labels on a data set without '/y'");
  if (cached_) {
    for (size_t i = 0; i < rows.size(); ++i) {
      ELBO_CHECK(rows[i] >= 0 && rows[i] < total_rows_,
                 "row " + std::to_string(rows[i]) + " out of range");
      out[i] = cache_labels_[static_cast<size_t>(rows[i])];
    }
    return;
  }
  h5::silence_error_printing();
  for (const ShardRead& p : plan_reads(rows, shards_, total_rows_)) {
    std::vector<int64_t> buf = read_selected<int64_t>(open_->y[p.shard].get(), H5T_NATIVE_INT64,
                                                      p.local, 1, shards_[p.shard].path, "/y");
    for (auto [i, k] : p.dest) out[i] = buf[k];
  }
}

// ---- writing
// --------------------------------------------------------------------------------------

namespace {

std::string shard_image(const std::string& path, const std::vector<int64_t>& sample_shape,
                        hid_t file_type, hid_t mem_type, const void* x, size_t x_count,
                        std::span<const int64_t> labels) {
  ELBO_CHECK(!sample_shape.empty(), "write_shard: empty sample shape");
  size_t F = static_cast<size_t>(
      std::accumulate(sample_shape.begin(), sample_shape.end(), int64_t{1}, std::multiplies<>()));
  ELBO_CHECK(F > 0 && x_count % F == 0, "write_shard: data size is not a multiple of the sample");
  size_t n = x_count / F;
  ELBO_CHECK(labels.empty() || labels.size() == n, "write_shard: label count != row count");
  std::vector<int64_t> shape{static_cast<int64_t>(n)};
  shape.insert(shape.end(), sample_shape.begin(), sample_shape.end());
  h5::File f = h5::File::create_in_memory(path);
  f.write_dataset("/x", shape, file_type, mem_type, x);
  if (!labels.empty())
    f.write_dataset("/y", {static_cast<int64_t>(n)}, H5T_STD_I64LE, H5T_NATIVE_INT64,
                    labels.data());
  return f.image();
}

}  // namespace

std::string shard_image_u8(const std::string& path, const std::vector<int64_t>& sample_shape,
                           std::span<const uint8_t> x, std::span<const int64_t> labels) {
  return shard_image(path, sample_shape, H5T_STD_U8LE, H5T_NATIVE_UINT8, x.data(), x.size(), labels);
}

void write_shard_u8(const std::string& path, const std::vector<int64_t>& sample_shape,
                    std::span<const uint8_t> x, std::span<const int64_t> labels) {
  write_file_atomically(path, shard_image_u8(path, sample_shape, x, labels), "the shard");
}

void write_shard_f32(const std::string& path, const std::vector<int64_t>& sample_shape,
                     std::span<const float> x, std::span<const int64_t> labels) {
  write_file_atomically(
      path, shard_image(path, sample_shape, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, x.data(), x.size(), labels),
      "the shard");
}

}  // namespace elbo
