// IDX import (MNIST / Fashion-MNIST, raw or gzipped) and its conversion into HDF5 shards for
// `elbo prepare`.
#include "io/idx.h"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <regex>

#include "core/error.h"
#include "io/directory_lock.h"
#include "io/files.h"
#include "io/location.h"
#include "io/shards.h"

namespace elbo {

namespace {

namespace fs = std::filesystem;

// Owns a gzFile; gzopen reads uncompressed files as they are, so one path serves both.
class GzReader {
 public:
  explicit GzReader(const std::string& path) : path_(path) {
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) throw_bad_input("cannot open: no such file" + at(path));
    f_ = gzopen(path.c_str(), "rb");
    if (!f_) throw_bad_input("cannot open the file" + at(path));
  }
  GzReader(const GzReader&) = delete;
  GzReader& operator=(const GzReader&) = delete;
  ~GzReader() { gzclose(f_); }

  // Reads up to n bytes; returns how many were read (short only at end of data).
  size_t read(uint8_t* dst, size_t n) {
    size_t got = 0;
    while (got < n) {
      unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - got, 1u << 20));
      int r = gzread(f_, dst + got, chunk);
      if (r < 0) {
        int errnum = 0;
        const char* msg = gzerror(f_, &errnum);
        throw_bad_input(std::string("file is corrupt: ") + (msg ? msg : "gzip error") + at(path_));
      }
      if (r == 0) break;
      got += static_cast<size_t>(r);
    }
    return got;
  }

 private:
  std::string path_;
  gzFile f_ = nullptr;
};

uint32_t big_endian_u32(const uint8_t* b) {
  return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | uint32_t{b[3]};
}

std::string hex_byte(uint8_t v) {
  char s[8];
  std::snprintf(s, sizeof s, "0x%02X", v);
  return s;
}

// Header: two zero bytes, the element type (0x08 = unsigned byte), the rank, then each dimension
// as a big-endian uint32.
std::vector<int64_t> read_idx_header(GzReader& in, const std::string& path) {
  std::array<uint8_t, 4> magic{};
  if (in.read(magic.data(), 4) != 4) throw_bad_input("not an IDX file: too short" + at(path));
  if (magic[0] != 0 || magic[1] != 0 || magic[3] == 0)
    throw_bad_input("not an IDX file: bad magic number" + at(path));
  if (magic[2] != 0x08)
    throw_bad_input("unsupported IDX element type " + hex_byte(magic[2]) +
                    "; only unsigned bytes, type 0x08, are supported" + at(path));
  std::vector<int64_t> shape;
  for (int d = 0; d < magic[3]; ++d) {
    std::array<uint8_t, 4> b{};
    if (in.read(b.data(), 4) != 4)
      throw_bad_input("IDX file is truncated in the header" + at(path));
    shape.push_back(big_endian_u32(b.data()));
  }
  return shape;
}

}  // namespace

IdxArray read_idx(const std::string& path) {
  GzReader in(path);
  IdxArray a;
  a.shape = read_idx_header(in, path);
  constexpr int64_t kMaxBytes = int64_t{1} << 40;  // also keeps the product from overflowing
  int64_t total = 1;
  for (int64_t d : a.shape) {
    if (d != 0 && total > kMaxBytes / d)
      throw_bad_input("IDX header has an implausibly large shape; corrupt header?" + at(path));
    total *= d;
  }
  // Grown as the data arrives (doubling, from 16 MiB), so that a header promising more than the
  // file holds costs no more memory than the file's data.
  const size_t want = static_cast<size_t>(total);
  size_t got = 0;
  while (got < want) {
    const size_t chunk = std::min(want - got, std::max(got, size_t{1} << 24));
    a.data.resize(got + chunk);
    const size_t n = in.read(a.data.data() + got, chunk);
    got += n;
    if (n < chunk) break;
  }
  if (got != want)
    throw_bad_input("IDX file is truncated: the header promises " + std::to_string(total) +
                    " bytes of data, the file has " + std::to_string(got) + at(path));
  uint8_t extra = 0;
  if (in.read(&extra, 1) != 0)
    throw_bad_input("IDX file has data past the " + std::to_string(total) +
                    " bytes its header describes" + at(path));
  return a;
}

namespace {

std::string shard_name(int i, int n) {
  char s[64];
  std::snprintf(s, sizeof s, "shard-%05d-of-%05d.h5", i, n);
  return s;
}

// Our temporary names for a shard: "<shard>.tmp.<pid>" (io/files.h).
bool is_our_temporary(const std::string& name) {
  static const std::regex re(R"(shard-[0-9]{5}-of-[0-9]{5}\.h5\.tmp\.[0-9]+)");
  return std::regex_match(name, re);
}

// Removes a path we may have created, if it is a plain file (never a directory someone else made).
void remove_file(const std::string& path) {
  std::error_code ec;
  if (fs::is_regular_file(fs::symlink_status(path, ec))) fs::remove(path, ec);
}

void check_inputs(const IdxArray& x, const IdxArray* y, const std::string& images,
                  const std::string& labels, int num_shards) {
  if (x.shape.size() < 2)
    throw_bad_input("IDX file holds an array of rank " + std::to_string(x.shape.size()) +
                    ", expected images [N, rows, cols]" + at(images));
  if (y && (y->shape.size() != 1 || y->shape[0] != x.shape[0]))
    throw_bad_input("images and labels disagree: " + std::to_string(x.shape[0]) + " images vs " +
                    std::to_string(y->data.size()) + " labels" + at(images + ", " + labels));
  if (num_shards < 1 || num_shards > x.shape[0])
    throw_bad_input("cannot split " + std::to_string(x.shape[0]) + " images into " +
                    std::to_string(num_shards) + " shards" + at(images));
}

// A data set is every shard file in the directory, so any existing one would mix into it.
void check_no_shards_in(const std::string& out_dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(out_dir, ec)) {
    std::string ext = e.path().extension().string();
    if (ext == ".h5" || ext == ".hdf5")
      throw_bad_input("refusing to overwrite existing shards" + at(e.path().string()));
  }
  if (ec) throw_bad_input("cannot list the directory: " + ec.message() + at(out_dir));
}

// Temporaries left by an earlier `prepare` that crashed: ours by name, so safe to delete.
void remove_stale_temporaries(const std::string& out_dir) {
  std::error_code ec;
  std::vector<std::string> stale;
  for (const auto& e : fs::directory_iterator(out_dir, ec))
    if (is_our_temporary(e.path().filename().string())) stale.push_back(e.path().string());
  for (const std::string& p : stale) remove_file(p);
}

}  // namespace

PrepareResult prepare_from_idx(const std::string& images, const std::string& labels,
                               const std::string& out_dir, int num_shards) {
  IdxArray x = read_idx(images);
  IdxArray y;
  if (!labels.empty()) y = read_idx(labels);
  check_inputs(x, labels.empty() ? nullptr : &y, images, labels, num_shards);
  // One `prepare` at a time per directory: two would each see no shards, then write into the
  // same set. Under the lock, any temporaries of ours are a crashed run's.
  const DirectoryLock lock = DirectoryLock::acquire(out_dir, "--out");
  check_no_shards_in(out_dir);
  remove_stale_temporaries(out_dir);

  PrepareResult r;
  r.rows = x.shape[0];
  std::vector<int64_t> sample_shape(x.shape.begin() + 1, x.shape.end());
  size_t F = x.data.size() / static_cast<size_t>(r.rows);
  int64_t base = r.rows / num_shards, extra = r.rows % num_shards;
  // Every shard is written and synced under its temporary name before any is renamed, so a
  // failure part way leaves no shard at all: a half-prepared set would read as a smaller one.
  std::vector<std::string> temps;
  size_t renamed = 0;
  try {
    int64_t begin = 0;
    for (int s = 0; s < num_shards; ++s) {
      int64_t n = base + (s < extra ? 1 : 0);
      std::vector<int64_t> shard_labels;
      if (!labels.empty())
        shard_labels.assign(y.data.begin() + begin, y.data.begin() + begin + n);
      std::string path = (fs::path(out_dir) / shard_name(s, num_shards)).string();
      r.shard_paths.push_back(path);
      std::span<const uint8_t> rows(x.data.data() + static_cast<size_t>(begin) * F,
                                    static_cast<size_t>(n) * F);
      const std::string image = shard_image_u8(path, sample_shape, rows, shard_labels);
      write_new_file_synced(temporary_name_for(path), image, "the shard");
      temps.push_back(temporary_name_for(path));
      begin += n;
    }
    for (; renamed < temps.size(); ++renamed)
      rename_into_place(temps[renamed], r.shard_paths[renamed], "the shard");
  } catch (...) {
    for (size_t i = 0; i < renamed; ++i) remove_file(r.shard_paths[i]);
    for (size_t i = renamed; i < temps.size(); ++i) remove_file(temps[i]);
    throw;
  }
  return r;
}

}  // namespace elbo
