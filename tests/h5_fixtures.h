// Broken and unusual HDF5 files for the tests, written with the HDF5 C API directly (not elbo's
// wrappers, which are what the tests check): shards stored with a filter the library lacks, with
// a corrupt chunk, or far larger than memory, and files whose attributes and values are edited
// after the fact. Used by test_io and, through tests/h5_tool.cpp, by the command-line tests.
#pragma once

#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace elbo_test {

// A filter id from the range HDF5 reserves for testing (256-511): no library or plugin has it.
inline constexpr H5Z_filter_t kUnavailableFilter = 511;
inline constexpr int64_t kChunkRows = 16;

// The value the fixture shards hold at row r, element j (float32 shards hold it / 255).
inline uint8_t fixture_value(int64_t r, int64_t j) {
  return static_cast<uint8_t>((r * 7 + j * 3) % 256);
}

enum class Storage {
  Contiguous,
  Deflate,      // chunked, zlib-compressed
  Unavailable,  // chunked, through kUnavailableFilter (registered only while writing)
  Sparse,       // chunked and never written: every value is the fill value 0, the file stays small
};

namespace detail {

inline void check(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error("h5 fixture: " + what + " failed");
}

// An RAII hid_t for the fixtures.
class Id {
 public:
  Id(hid_t id, herr_t (*close)(hid_t), const std::string& what) : id_(id), close_(close) {
    check(id >= 0, what);
  }
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;
  ~Id() { close_(id_); }
  hid_t get() const { return id_; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

// The pretend filter stores its input unchanged.
inline size_t pass_through(unsigned, size_t, const unsigned*, size_t nbytes, size_t*, void**) {
  return nbytes;
}

inline Id open_rw(const std::string& path) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  return Id(H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), H5Fclose, "open " + path);
}

}  // namespace detail

// Writes `path` with /x [rows, features] of fixture values, uint8 or float32.
inline void write_fixture_shard(const std::string& path, bool f32, int64_t rows, int64_t features,
                                Storage storage) {
  using detail::check;
  using detail::Id;
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  H5Z_class2_t filter{};
  filter.version = H5Z_CLASS_T_VERS;
  filter.id = kUnavailableFilter;
  filter.encoder_present = filter.decoder_present = 1;
  filter.name = "unavailable test filter";
  filter.filter = detail::pass_through;
  if (storage == Storage::Unavailable) check(H5Zregister(&filter) >= 0, "H5Zregister");
  {
    Id file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose,
            "create " + path);
    const hsize_t dims[2] = {static_cast<hsize_t>(rows), static_cast<hsize_t>(features)};
    Id space(H5Screate_simple(2, dims, nullptr), H5Sclose, "H5Screate_simple");
    Id dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, "H5Pcreate");
    if (storage != Storage::Contiguous) {
      const hsize_t chunk[2] = {static_cast<hsize_t>(kChunkRows), static_cast<hsize_t>(features)};
      check(H5Pset_chunk(dcpl.get(), 2, chunk) >= 0, "H5Pset_chunk");
    }
    if (storage == Storage::Deflate) check(H5Pset_deflate(dcpl.get(), 6) >= 0, "H5Pset_deflate");
    if (storage == Storage::Unavailable)
      check(H5Pset_filter(dcpl.get(), kUnavailableFilter, H5Z_FLAG_MANDATORY, 0, nullptr) >= 0,
            "H5Pset_filter");
    const hid_t file_type = f32 ? H5T_IEEE_F32LE : H5T_STD_U8LE;
    Id ds(
        H5Dcreate2(file.get(), "/x", file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
        H5Dclose, "H5Dcreate2 /x");
    if (storage != Storage::Sparse) {
      std::vector<float> values(static_cast<size_t>(rows * features));
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < features; ++j)
          values[static_cast<size_t>(r * features + j)] =
              fixture_value(r, j) / (f32 ? 255.0f : 1.0f);
      check(H5Dwrite(ds.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()) >= 0,
            "H5Dwrite /x");
    }
  }
  if (storage == Storage::Unavailable)
    check(H5Zunregister(kUnavailableFilter) >= 0, "H5Zunregister");
}

// Overwrites the stored (compressed) bytes of the chunk of `dataset` that holds `row`.
inline void corrupt_chunk(const std::string& path, const std::string& dataset, int64_t row) {
  haddr_t address = 0;
  hsize_t size = 0;
  {
    detail::Id file = detail::open_rw(path);
    detail::Id ds(H5Dopen2(file.get(), dataset.c_str(), H5P_DEFAULT), H5Dclose, "open " + dataset);
    const hsize_t offset[2] = {static_cast<hsize_t>(row / kChunkRows * kChunkRows), 0};
    unsigned mask = 0;
    detail::check(H5Dget_chunk_info_by_coord(ds.get(), offset, &mask, &address, &size) >= 0 &&
                      address != HADDR_UNDEF && size > 4,
                  "H5Dget_chunk_info_by_coord");
  }
  const int fd = ::open(path.c_str(), O_WRONLY);
  detail::check(fd >= 0, "open " + path);
  const std::vector<unsigned char> junk(static_cast<size_t>(size) - 4, 0xA5);
  const ssize_t n = ::pwrite(fd, junk.data(), junk.size(), static_cast<off_t>(address + 2));
  ::close(fd);
  detail::check(n == static_cast<ssize_t>(junk.size()), "pwrite " + path);
}

// Sets element `index` (in row-major order) of a numeric dataset to `value`.
inline void set_value(const std::string& path, const std::string& dataset, int64_t index,
                      double value) {
  detail::Id file = detail::open_rw(path);
  detail::Id ds(H5Dopen2(file.get(), dataset.c_str(), H5P_DEFAULT), H5Dclose, "open " + dataset);
  detail::Id space(H5Dget_space(ds.get()), H5Sclose, "H5Dget_space");
  const int rank = H5Sget_simple_extent_ndims(space.get());
  std::vector<hsize_t> dims(static_cast<size_t>(rank)), at(static_cast<size_t>(rank));
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  hsize_t rest = static_cast<hsize_t>(index);
  for (int d = rank; d-- > 0;) {
    at[static_cast<size_t>(d)] = rest % dims[static_cast<size_t>(d)];
    rest /= dims[static_cast<size_t>(d)];
  }
  detail::check(H5Sselect_elements(space.get(), H5S_SELECT_SET, 1, at.data()) >= 0,
                "H5Sselect_elements");
  const hsize_t one = 1;
  detail::Id mem(H5Screate_simple(1, &one, nullptr), H5Sclose, "H5Screate_simple");
  detail::check(
      H5Dwrite(ds.get(), H5T_NATIVE_DOUBLE, mem.get(), space.get(), H5P_DEFAULT, &value) >= 0,
      "H5Dwrite " + dataset);
}

// Replaces attribute `name` of `object` by a scalar of `type` holding `value` (written through
// `mem_type`): an integer, or a wrong type where the reader expects another.
inline void set_attribute(const std::string& path, const std::string& object,
                          const std::string& name, hid_t type, hid_t mem_type, const void* value) {
  detail::Id file = detail::open_rw(path);
  if (H5Aexists_by_name(file.get(), object.c_str(), name.c_str(), H5P_DEFAULT) > 0)
    detail::check(H5Adelete_by_name(file.get(), object.c_str(), name.c_str(), H5P_DEFAULT) >= 0,
                  "H5Adelete_by_name " + name);
  detail::Id space(H5Screate(H5S_SCALAR), H5Sclose, "H5Screate");
  detail::Id a(H5Acreate_by_name(file.get(), object.c_str(), name.c_str(), type, space.get(),
                                 H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
               H5Aclose, "H5Acreate_by_name " + name);
  detail::check(H5Awrite(a.get(), mem_type, value) >= 0, "H5Awrite " + name);
}

inline void set_int_attribute(const std::string& path, const std::string& object,
                              const std::string& name, int64_t value) {
  set_attribute(path, object, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

inline void set_string_attribute(const std::string& path, const std::string& object,
                                 const std::string& name, const std::string& value) {
  detail::Id type(H5Tcopy(H5T_C_S1), H5Tclose, "H5Tcopy");
  detail::check(H5Tset_size(type.get(), H5T_VARIABLE) >= 0, "H5Tset_size");
  const char* text = value.c_str();
  set_attribute(path, object, name, type.get(), type.get(), &text);
}

// Rewrites a dataset with the same shape and values stored as `file_type` (e.g. float64).
inline void retype_dataset(const std::string& path, const std::string& dataset, hid_t file_type) {
  detail::Id file = detail::open_rw(path);
  std::vector<double> values;
  std::vector<hsize_t> dims;
  {
    detail::Id ds(H5Dopen2(file.get(), dataset.c_str(), H5P_DEFAULT), H5Dclose, "open " + dataset);
    detail::Id space(H5Dget_space(ds.get()), H5Sclose, "H5Dget_space");
    dims.resize(static_cast<size_t>(H5Sget_simple_extent_ndims(space.get())));
    H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
    values.resize(static_cast<size_t>(H5Sget_simple_extent_npoints(space.get())));
    detail::check(
        H5Dread(ds.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()) >= 0,
        "H5Dread " + dataset);
  }
  detail::check(H5Ldelete(file.get(), dataset.c_str(), H5P_DEFAULT) >= 0, "H5Ldelete " + dataset);
  detail::Id space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose,
                   "H5Screate_simple");
  detail::Id ds(H5Dcreate2(file.get(), dataset.c_str(), file_type, space.get(), H5P_DEFAULT,
                           H5P_DEFAULT, H5P_DEFAULT),
                H5Dclose, "H5Dcreate2 " + dataset);
  detail::check(
      H5Dwrite(ds.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()) >= 0,
      "H5Dwrite " + dataset);
}

}  // namespace elbo_test
