// A data set of HDF5 shards: a directory (every *.h5 / *.hdf5 file in it, in name order) or a glob.
// Each shard holds `/x` [N, ...] (uint8, scaled by 1/255, or float32) and optionally `/y` [N]
// (integer labels). Every shard is validated when the set is opened.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace elbo {

enum class SampleType { U8, F32 };

struct OpenShards;  // the open file and dataset handles (shards.cpp)

struct ShardInfo {
  std::string path;
  int64_t rows = 0;
  int64_t first_row = 0;  // global index of its first row
};

class ShardedDataset {
 public:
  // Opens and validates every shard: `/x` present, rank >= 2, N > 0, uint8 or float32, stored
  // without an HDF5 filter this library lacks, all shards agreeing on sample shape, type and on
  // the presence of `/y` (with N rows). Errors are BadInput and name the shard file.
  static ShardedDataset open(const std::string& dir_or_glob);

  int64_t size() const { return total_rows_; }
  int64_t features() const { return features_; }                    // product of sample dims
  const std::vector<int64_t>& sample_shape() const { return sample_shape_; }
  SampleType sample_type() const { return type_; }
  bool has_labels() const { return has_labels_; }
  const std::vector<ShardInfo>& shards() const { return shards_; }

  // From now on every float32 value read must lie in [0, 1]; `reason` names what needs it in the
  // error ("model.likelihood bernoulli"). uint8 data is in [0, 1] by construction. Call it before
  // cache_in_memory().
  void require_unit_interval(const std::string& reason);

  // Reads every row into memory once (uint8 stays uint8); later reads come from memory. Rows are
  // checked as read_rows checks them.
  void cache_in_memory();
  bool cached() const;

  // out[i, :] = sample rows[i] as float (uint8 / 255 or the float32 value); rows are global indices
  // in any order. Reads only the needed rows (hyperslabs) when not cached. Every row is checked as
  // it is read, cached or not: a row HDF5 cannot read (a corrupt chunk), a non-finite float32
  // value or, under require_unit_interval, one outside [0, 1] is a BadInput error naming the
  // shard, the dataset and the row.
  void read_rows(std::span<const int64_t> rows, float* out) const;
  // Labels of the given rows; requires has_labels().
  void read_labels(std::span<const int64_t> rows, int64_t* out) const;

 private:
  std::vector<ShardInfo> shards_;
  std::vector<int64_t> sample_shape_;
  int64_t features_ = 0, total_rows_ = 0;
  SampleType type_ = SampleType::U8;
  bool has_labels_ = false;
  std::vector<uint8_t> cache_u8_;
  std::vector<float> cache_f32_;
  std::vector<int64_t> cache_labels_;
  bool cached_ = false;
  std::string unit_interval_;  // what needs float32 values in [0, 1]; empty: nothing does
  // Kept open between reads so a batch costs no file opens; shared by copies of this object.
  std::shared_ptr<OpenShards> open_;
};

// "[2, 3]": a shape as it appears in error messages (shards and checkpoints).
std::string shape_str(const std::vector<int64_t>& shape);

// The bytes of one shard file: x [n, sample_shape...] uint8, optional labels [n]; `path` names it
// in messages.
std::string shard_image_u8(const std::string& path, const std::vector<int64_t>& sample_shape,
                           std::span<const uint8_t> x, std::span<const int64_t> labels);
// Writes one shard file atomically (io/files.h): x [n, sample_shape...] uint8, optional labels [n].
void write_shard_u8(const std::string& path, const std::vector<int64_t>& sample_shape,
                    std::span<const uint8_t> x, std::span<const int64_t> labels);
// Same for float32 samples.
void write_shard_f32(const std::string& path, const std::vector<int64_t>& sample_shape,
                     std::span<const float> x, std::span<const int64_t> labels);

}  // namespace elbo
