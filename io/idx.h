// IDX files (the MNIST / Fashion-MNIST format; gzip-compressed or raw) and their conversion to shards.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace elbo {

struct IdxArray {
  std::vector<int64_t> shape;  // e.g. [60000, 28, 28]
  std::vector<uint8_t> data;   // only unsigned-byte IDX (type 0x08) is supported
};

// Reads an IDX file, transparently gunzipping. A wrong magic, unsupported type, or a size that does
// not match the header is a BadInput error naming the file.
IdxArray read_idx(const std::string& path);

struct PrepareResult {
  int64_t rows = 0;
  std::vector<std::string> shard_paths;
};

// Writes `num_shards` shards (rows split as evenly as possible, the first ones one larger) named
// <out_dir>/shard-00000-of-00004.h5 ... with /x uint8 [n, rows, cols] and /y int64 when labels are
// given. Creates out_dir. Refuses (BadInput) to overwrite existing shard files in out_dir. Files are
// written under a temporary name and renamed, so a failure leaves no half-written shard.
PrepareResult prepare_from_idx(const std::string& images, const std::string& labels,
                               const std::string& out_dir, int num_shards);

}  // namespace elbo
