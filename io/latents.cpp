// The latents file, written by HDF5 into a temporary file as rows arrive (hyperslabs of chunked
// datasets), then synced and renamed. Unlike checkpoints it is not built in memory first: its
// size grows with the data, and memory must not.
#include "io/latents.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "core/error.h"
#include "io/files.h"
#include "io/hdf5.h"
#include "io/location.h"

namespace elbo {
namespace {

// Chunks of at most 256 KiB: HDF5's default chunk cache (1 MiB per dataset) then holds the chunk
// being filled, so every chunk is written once, whole.
hsize_t chunk_rows(int64_t rows, size_t row_bytes) {
  const hsize_t fit = std::max<hsize_t>(1, (hsize_t{256} << 10) / row_bytes);
  return std::min<hsize_t>(fit, static_cast<hsize_t>(rows));
}

void create_dataset(h5::File& f, const std::string& name, int64_t rows, int cols, hid_t type) {
  std::vector<hsize_t> dims{static_cast<hsize_t>(rows)};
  if (cols > 0) dims.push_back(static_cast<hsize_t>(cols));
  h5::Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
                   h5::Handle::Type::Dataspace);
  ELBO_CHECK(space.valid(), "H5Screate_simple for " + name);
  h5::Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), h5::Handle::Type::PropList);
  ELBO_CHECK(dcpl.valid(), "H5Pcreate(H5P_DATASET_CREATE)");
  std::vector<hsize_t> chunk = dims;
  chunk[0] = chunk_rows(rows, H5Tget_size(type) * static_cast<size_t>(std::max(cols, 1)));
  ELBO_CHECK(H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data()) >= 0,
             "H5Pset_chunk for " + name);
  h5::Handle ds(H5Dcreate2(f.id(), name.c_str(), type, space.get(), H5P_DEFAULT, dcpl.get(),
                           H5P_DEFAULT),
                h5::Handle::Type::Dataset);
  ELBO_CHECK(ds.valid(), "H5Dcreate2 of " + name + " in '" + f.path() + "'");
}

void write_slab(h5::File& f, const std::string& name, int64_t first, int64_t n, int cols,
                hid_t mem_type, const void* data) {
  h5::Handle ds(H5Dopen2(f.id(), name.c_str(), H5P_DEFAULT), h5::Handle::Type::Dataset);
  ELBO_CHECK(ds.valid(), "H5Dopen2 of " + name);
  h5::Handle space(H5Dget_space(ds.get()), h5::Handle::Type::Dataspace);
  std::vector<hsize_t> start{static_cast<hsize_t>(first)}, count{static_cast<hsize_t>(n)};
  if (cols > 0) {
    start.push_back(0);
    count.push_back(static_cast<hsize_t>(cols));
  }
  ELBO_CHECK(H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(),
                                 nullptr) >= 0,
             "H5Sselect_hyperslab of " + name);
  h5::Handle mem(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr),
                 h5::Handle::Type::Dataspace);
  if (H5Dwrite(ds.get(), mem_type, mem.get(), space.get(), H5P_DEFAULT, data) < 0)
    throw Error(ErrorKind::Internal, "cannot write rows " + std::to_string(first) + "-" +
                                         std::to_string(first + n - 1) + " of " + name + ": " +
                                         h5::last_error_reason() + " ('" + f.path() + "')");
}

}  // namespace

LatentsWriter::LatentsWriter(const std::string& path, const LatentsShape& shape)
    : path_(path), temporary_(temporary_name_for(path)), shape_(shape) {
  ELBO_CHECK(shape.rows > 0 && shape.latent > 0, "a latents file needs rows and a latent size");
  ::unlink(temporary_.c_str());  // a leftover of a crashed process that had our pid: ours by name
  // Created by us first, exclusively, so that a path that cannot be written is one clear error
  // naming why; HDF5 then writes into the empty file.
  const int fd = ::open(temporary_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                        0644);
  if (fd < 0) {
    const int err = errno;
    // A directory on the way that does not exist is the user's path, not the machine's fault.
    if (err == ENOENT)
      throw_bad_input("cannot create the latents file: its directory does not exist" + at(path_));
    throw_file_error("create", "the latents file", path_, err);
  }
  ::close(fd);
  try {
    file_ = std::make_unique<h5::File>(h5::File::create(temporary_));
    create_dataset(*file_, "/mu", shape.rows, shape.latent, H5T_IEEE_F32LE);
    create_dataset(*file_, "/logvar", shape.rows, shape.latent, H5T_IEEE_F32LE);
    create_dataset(*file_, "/neg_elbo", shape.rows, 0, H5T_IEEE_F64LE);
    if (shape.iw_nll) create_dataset(*file_, "/iw_nll", shape.rows, 0, H5T_IEEE_F64LE);
    if (shape.labels) create_dataset(*file_, "/y", shape.rows, 0, H5T_STD_I64LE);
  } catch (...) {
    file_.reset();
    ::unlink(temporary_.c_str());
    throw;
  }
}

LatentsWriter::~LatentsWriter() {
  if (committed_) return;
  file_.reset();
  ::unlink(temporary_.c_str());
}

void LatentsWriter::attribute(const std::string& name, const std::string& value) {
  file_->write_string_attribute("/", name, value);
}

void LatentsWriter::attribute(const std::string& name, int64_t value) {
  file_->write_int_attribute("/", name, value);
}

void LatentsWriter::write_rows(int64_t first, int64_t n, const float* mu, const float* logvar,
                               const double* neg_elbo, const double* iw_nll, const int64_t* y) {
  ELBO_CHECK(first >= 0 && n > 0 && first + n <= shape_.rows, "rows outside the latents file");
  write_slab(*file_, "/mu", first, n, shape_.latent, H5T_NATIVE_FLOAT, mu);
  write_slab(*file_, "/logvar", first, n, shape_.latent, H5T_NATIVE_FLOAT, logvar);
  write_slab(*file_, "/neg_elbo", first, n, 0, H5T_NATIVE_DOUBLE, neg_elbo);
  if (shape_.iw_nll) write_slab(*file_, "/iw_nll", first, n, 0, H5T_NATIVE_DOUBLE, iw_nll);
  if (shape_.labels) write_slab(*file_, "/y", first, n, 0, H5T_NATIVE_INT64, y);
}

void LatentsWriter::commit() {
  file_->flush();
  file_.reset();  // strong close: every object closed, every byte handed to the kernel
  fsync_path(temporary_, false);
  rename_into_place(temporary_, path_, "the latents file");
  committed_ = true;
}

}  // namespace elbo
