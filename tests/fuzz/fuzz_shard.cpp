// Fuzz target: opening and validating a data shard (ShardedDataset::open of one file), then what
// training does with a shard that passed: rows and labels read from the file, and from the memory
// cache, which must give the same values. Only a few rows of a shard are read, and only a small
// shard is cached, since a valid shard may be large without taking room (HDF5 stores no data for
// chunks never written). Whatever happens, no HDF5 file or object stays open.
#include <hdf5.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "io/shards.h"
#include "tests/fuzz/fuzz.h"

using elbo::fuzz::accepts;
using elbo::fuzz::BytesFile;
using elbo::fuzz::check;

namespace {

void read_shard(const std::string& path) {
  std::optional<elbo::ShardedDataset> d;
  if (!accepts([&] { d = elbo::ShardedDataset::open(path); })) return;
  int64_t product = 1;
  for (int64_t dim : d->sample_shape()) product *= dim;
  check(d->shards().size() == 1 && d->size() >= 1 && !d->sample_shape().empty() &&
            d->features() == product && d->features() >= 1,
        "an accepted shard has no rows or no samples");

  constexpr int64_t kMaxFeatures = 1 << 12, kMaxCached = 1 << 16;
  const int64_t n = d->size(), F = d->features();
  if (F > kMaxFeatures) return;
  const std::vector<int64_t> rows{n - 1, 0, n / 2, 0};  // unordered, with a repeat
  std::vector<float> x(rows.size() * static_cast<size_t>(F));
  std::vector<int64_t> y(rows.size(), -1);
  if (!accepts([&] { d->read_rows(rows, x.data()); })) return;
  if (d->has_labels() && !accepts([&] { d->read_labels(rows, y.data()); })) return;
  // What read_rows promises: finite values, in [0, 1] for uint8 data.
  const bool in_unit = d->sample_type() == elbo::SampleType::U8;
  for (float v : x)
    check(std::isfinite(v) && (!in_unit || (v >= 0.0f && v <= 1.0f)),
          "a sample read is not finite, or a uint8 sample is outside [0, 1]");

  if (n * F > kMaxCached || !accepts([&] { d->cache_in_memory(); })) return;
  check(d->cached(), "cache_in_memory returned without caching");
  std::vector<float> cached_x(x.size());
  std::vector<int64_t> cached_y(y.size(), -1);
  d->read_rows(rows, cached_x.data());
  if (d->has_labels()) d->read_labels(rows, cached_y.data());
  check(std::memcmp(x.data(), cached_x.data(), x.size() * sizeof(float)) == 0,
        "rows read from the cache differ from rows read from the file");
  check(cached_y == y, "labels read from the cache differ from labels read from the file");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const BytesFile file(data, size);
  read_shard(file.path());
  check(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL) == 0, "HDF5 objects left open");
  return 0;
}
