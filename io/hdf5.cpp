// RAII wrappers over the HDF5 C API. User-file problems (missing, not HDF5, truncated, missing
// object, stored bytes that cannot be read) are BadInput errors; another HDF5 call failing on a
// file we opened fine is Internal.
#include "io/hdf5.h"

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>

#include "core/error.h"
#include "io/location.h"

// Checks an HDF5 return value (hid_t or herr_t) and names the failing call and the object.
#define ELBO_H5_CHECK(call, what) ELBO_CHECK((call) >= 0, std::string(#call) + " on " + (what))

namespace elbo::h5 {

void silence_error_printing() {
  thread_local bool silenced = false;
  if (!silenced) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    silenced = true;
  }
}

void check_read(herr_t status, const std::string& where) {
  if (status < 0) throw_bad_input("cannot read the stored data; is the file corrupt?" + at(where));
}

std::string last_error_reason() {
  struct Walk {
    std::string innermost;
    std::vector<std::string> filters;  // the data-pipeline errors at the bottom, innermost first
    bool past_filters = false;
  } walk;
  const auto visit = [](unsigned, const H5E_error2_t* e, void* data) -> herr_t {
    Walk& w = *static_cast<Walk*>(data);
    if (e->maj_num == H5E_PLUGIN || !e->desc) return 0;  // the search for a plugin, not the cause
    if (w.innermost.empty()) w.innermost = e->desc;
    w.past_filters = w.past_filters || e->maj_num != H5E_PLINE;
    if (!w.past_filters) w.filters.emplace_back(e->desc);
    return 0;
  };
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, visit, &walk);
  if (walk.filters.empty()) return walk.innermost.empty() ? "unknown HDF5 error" : walk.innermost;
  std::string reason;
  for (auto it = walk.filters.rbegin(); it != walk.filters.rend(); ++it)
    reason += (reason.empty() ? "" : ": ") + *it;
  return reason;
}

namespace {

// The main thread is silenced before main(); other threads call silence_error_printing().
[[maybe_unused]] const bool main_thread_silenced = (silence_error_printing(), true);

std::string where(const std::string& path, const std::string& object) {
  return "'" + path + ":" + object + "'";
}

const char* file_kind(std::filesystem::file_type t) {
  switch (t) {
    case std::filesystem::file_type::fifo:
      return "a FIFO";
    case std::filesystem::file_type::character:
      return "a character device";
    case std::filesystem::file_type::block:
      return "a block device";
    case std::filesystem::file_type::socket:
      return "a socket";
    default:
      return "a special file";
  }
}

std::vector<hsize_t> to_dims(const std::vector<int64_t>& shape) {
  return std::vector<hsize_t>(shape.begin(), shape.end());
}

Handle make_space(const std::vector<int64_t>& shape) {
  if (shape.empty()) return Handle(H5Screate(H5S_SCALAR), Handle::Type::Dataspace);
  std::vector<hsize_t> dims = to_dims(shape);
  return Handle(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
                Handle::Type::Dataspace);
}

// Link-creation properties that make missing parent groups on the way.
Handle intermediate_groups() {
  Handle lcpl(H5Pcreate(H5P_LINK_CREATE), Handle::Type::PropList);
  ELBO_CHECK(lcpl.valid(), "H5Pcreate(H5P_LINK_CREATE)");
  ELBO_H5_CHECK(H5Pset_create_intermediate_group(lcpl.get(), 1), std::string("lcpl"));
  return lcpl;
}

std::vector<int64_t> space_shape(hid_t space) {
  int rank = H5Sget_simple_extent_ndims(space);
  ELBO_CHECK(rank >= 0, "H5Sget_simple_extent_ndims");
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  if (rank > 0)
    ELBO_CHECK(H5Sget_simple_extent_dims(space, dims.data(), nullptr) == rank,
               "H5Sget_simple_extent_dims");
  return std::vector<int64_t>(dims.begin(), dims.end());
}

}  // namespace

bool well_formed_number(hid_t t) {
  switch (H5Tget_class(t)) {
    case H5T_INTEGER: {
      const int offset = H5Tget_offset(t);
      const size_t precision = H5Tget_precision(t);
      return offset >= 0 && precision > 0 &&
             static_cast<size_t>(offset) + precision <= 8 * H5Tget_size(t);
    }
    case H5T_FLOAT:
      for (hid_t ieee : {H5T_IEEE_F32LE, H5T_IEEE_F32BE, H5T_IEEE_F64LE, H5T_IEEE_F64BE})
        if (H5Tequal(t, ieee) > 0) return true;
      return false;
    default: return false;
  }
}

Handle& Handle::operator=(Handle&& o) noexcept {
  if (this != &o) {
    Handle dead(id_, type_);  // closes the old id on scope exit
    id_ = o.id_;
    type_ = o.type_;
    o.id_ = H5I_INVALID_HID;
  }
  return *this;
}

Handle::~Handle() {
  if (id_ < 0) return;
  switch (type_) {  // a failed close cannot be reported from a destructor
    case Type::File:
      H5Fclose(id_);
      break;
    case Type::Group:
      H5Gclose(id_);
      break;
    case Type::Dataset:
      H5Dclose(id_);
      break;
    case Type::Dataspace:
      H5Sclose(id_);
      break;
    case Type::Datatype:
      H5Tclose(id_);
      break;
    case Type::Attribute:
      H5Aclose(id_);
      break;
    case Type::PropList:
      H5Pclose(id_);
      break;
  }
}

File File::open_read(const std::string& path) {
  silence_error_printing();
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (st.type() == fs::file_type::not_found)
    throw_bad_input("cannot open: no such file" + at(path));
  if (ec) throw_bad_input("cannot open: " + ec.message() + at(path));  // e.g. a too long name
  if (fs::is_directory(st)) throw_bad_input("cannot open: is a directory" + at(path));
  // Opening a FIFO would wait for a writer for ever; devices and sockets are no HDF5 files either.
  if (!fs::is_regular_file(st))
    throw_bad_input(std::string("cannot open: is ") + file_kind(st.type()) +
                    ", not a regular file" + at(path));
  if (!std::ifstream(path, std::ios::binary))
    throw_bad_input(std::string("cannot open: ") + std::strerror(errno) + at(path));
  if (H5Fis_hdf5(path.c_str()) <= 0) throw_bad_input("not an HDF5 file" + at(path));
  hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (id < 0) throw_bad_input("truncated or corrupt HDF5 file" + at(path));
  return File(Handle(id, Handle::Type::File), path);
}

File File::create(const std::string& path) {
  silence_error_printing();
  // Strong close: closing the file closes everything in it, so after close the bytes are on disk
  // for the checkpoint's fsync.
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS), Handle::Type::PropList);
  ELBO_CHECK(fapl.valid(), "H5Pcreate(H5P_FILE_ACCESS)");
  ELBO_H5_CHECK(H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG), path);
  errno = 0;
  hid_t id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get());
  // Not the user's input: we create files only where we write our own output (checkpoints,
  // shards), so a failure here (permissions, disk full, a missing directory) is an Internal error.
  if (id < 0) {
    const int err = errno;
    throw_internal("cannot create the HDF5 file '" + path +
                       "': " + (err ? std::strerror(err) : "unknown error"),
                   __FILE__, __LINE__);
  }
  return File(Handle(id, Handle::Type::File), path);
}

File File::create_in_memory(const std::string& name) {
  silence_error_printing();
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS), Handle::Type::PropList);
  ELBO_CHECK(fapl.valid(), "H5Pcreate(H5P_FILE_ACCESS)");
  ELBO_H5_CHECK(H5Pset_fapl_core(fapl.get(), size_t{1} << 20, /*backing_store=*/0), name);
  hid_t id = H5Fcreate(name.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get());
  ELBO_CHECK(id >= 0, "H5Fcreate in memory for '" + name + "'");
  return File(Handle(id, Handle::Type::File), name);
}

std::string File::image() {
  flush();
  const ssize_t size = H5Fget_file_image(id(), nullptr, 0);
  ELBO_CHECK(size > 0, "H5Fget_file_image size of '" + path_ + "'");
  std::string bytes(static_cast<size_t>(size), '\0');
  ELBO_CHECK(H5Fget_file_image(id(), bytes.data(), bytes.size()) == size,
             "H5Fget_file_image of '" + path_ + "'");
  return bytes;
}

bool File::exists(const std::string& object_path) const {
  silence_error_printing();
  // H5Lexists fails (rather than answering no) when a parent is missing, so walk the path.
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = object_path.find('/', pos + 1);
    std::string prefix = object_path.substr(0, pos);
    if (prefix.empty() || prefix == "/") continue;
    if (H5Lexists(id(), prefix.c_str(), H5P_DEFAULT) <= 0) return false;
  }
  return true;
}

std::vector<std::string> File::children(const std::string& group) const {
  silence_error_printing();
  std::vector<std::string> names;
  auto add = [](hid_t, const char* name, const H5L_info_t*, void* out) -> herr_t {
    static_cast<std::vector<std::string>*>(out)->emplace_back(name);
    return 0;
  };
  // The group exists (callers check), so a failure here is its corrupt index.
  if (H5Literate_by_name(id(), group.c_str(), H5_INDEX_NAME, H5_ITER_INC, nullptr, add, &names,
                         H5P_DEFAULT) < 0)
    throw_bad_input("cannot list the group; is the file corrupt?" + at(path_, group));
  return names;
}

namespace {

// Storage that no HDF5 writer makes, and that HDF5 1.10.8 opens all the same but then reads past
// the end of its buffers: refused before anything reads the dataset.
//  - A compact dataset (data kept in its header) whose stored size is not that of its shape
//    (HDF5 issue #2606; HDF5 checks it itself from 1.10.10 on).
//  - A chunked dataset whose chunk is larger than a fixed-size dimension (HDF5 refuses to create
//    one): its chunk buffer is overrun (heap-buffer-overflow in H5VM_memcpyvv).
//  - An unfiltered chunked dataset whose chunks are not stored in one chunk's bytes each. HDF5
//    reads such a chunk (its size from the chunk index, which HDF5 trusts) into a buffer of one
//    chunk's size and copies past its end (heap-buffer-overflow in H5VM_memcpyvv). No call shows
//    one chunk's size in the index cheaply (H5Dget_chunk_info walks the whole index per call in
//    1.10.8: 0.67 ms a chunk at 60,000 chunks; H5Dget_chunk_storage_size answers the chunk's
//    nominal size for an unfiltered dataset), but the index's total is one walk
//    (H5Dget_storage_size, with H5Dget_num_chunks: under 10 ms at 60,000 chunks), and with no
//    filter every allocated chunk, edge chunks too, takes exactly one chunk's bytes. A partial
//    defence: two chunks wrong by opposite amounts pass (HDF5 1.14's H5Dchunk_iter would let
//    each chunk be checked in the same one walk). Types whose size in memory is not their size
//    in the file (variable-length, references) are left to the callers' type checks.
void check_storage(hid_t ds, const std::string& path, const std::string& dataset) {
  const auto corrupt = [&] {
    throw_bad_input("dataset's storage does not match its shape; is the file corrupt?" +
                    at(path, dataset));
  };
  Handle dcpl(H5Dget_create_plist(ds), Handle::Type::PropList);
  Handle space(H5Dget_space(ds), Handle::Type::Dataspace);
  Handle type(H5Dget_type(ds), Handle::Type::Datatype);
  if (!dcpl.valid() || !space.valid() || !type.valid()) corrupt();
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0) corrupt();
  std::vector<hsize_t> dims(static_cast<size_t>(rank)), maxdims(dims.size());
  if (rank > 0 && H5Sget_simple_extent_dims(space.get(), dims.data(), maxdims.data()) != rank)
    corrupt();
  // A dimension past its maximum (HDF5 never writes one): 4e11 rows where at most 6 are allowed
  // made a read of three rows outlast libFuzzer's 10 s.
  for (size_t i = 0; i < dims.size(); ++i)
    if (maxdims[i] != H5S_UNLIMITED && dims[i] > maxdims[i]) corrupt();
  const H5D_layout_t layout = H5Pget_layout(dcpl.get());
  if (layout == H5D_COMPACT) {
    const hssize_t n = H5Sget_simple_extent_npoints(space.get());
    const size_t size = H5Tget_size(type.get());
    const hsize_t stored = H5Dget_storage_size(ds);
    if (n < 0 || size == 0 || stored % size != 0 || stored / size != static_cast<hsize_t>(n))
      corrupt();
  } else if (layout == H5D_CHUNKED) {
    std::vector<hsize_t> chunk(dims.size() + 1);
    if (H5Pget_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data()) != rank) corrupt();
    for (size_t i = 0; i < dims.size(); ++i)
      if (chunk[i] == 0 || (maxdims[i] != H5S_UNLIMITED && chunk[i] > maxdims[i])) corrupt();
    const int filters = H5Pget_nfilters(dcpl.get());
    if (filters < 0) corrupt();
    const bool fixed_size = H5Tdetect_class(type.get(), H5T_VLEN) == 0 &&
                            H5Tis_variable_str(type.get()) == 0 &&
                            H5Tget_class(type.get()) != H5T_REFERENCE;
    if (filters == 0 && fixed_size) {
      hsize_t chunk_bytes = H5Tget_size(type.get()), allocated = 0;
      for (size_t i = 0; i < dims.size(); ++i) chunk_bytes *= chunk[i];  // < 4 GiB: HDF5's limit
      if (H5Dget_num_chunks(ds, space.get(), &allocated) < 0) corrupt();
      const hsize_t stored = H5Dget_storage_size(ds);
      if (chunk_bytes == 0 || allocated > std::numeric_limits<hsize_t>::max() / chunk_bytes ||
          stored != allocated * chunk_bytes)
        throw_bad_input("the dataset's " + std::to_string(allocated) + " chunks are stored in " +
                        std::to_string(stored) + " bytes, not " + std::to_string(chunk_bytes) +
                        " each as their shape and type need; is the file corrupt?" +
                        at(path, dataset));
    }
  }
}

}  // namespace

Handle File::open_dataset(const std::string& dataset) const {
  silence_error_printing();
  if (!exists(dataset)) throw_bad_input("no dataset '" + dataset + "'" + at(path_));
  hid_t id = H5Dopen2(this->id(), dataset.c_str(), H5P_DEFAULT);
  if (id < 0) throw_bad_input("not a dataset" + at(path_, dataset));
  Handle ds(id, Handle::Type::Dataset);
  check_storage(id, path_, dataset);
  return ds;
}

std::vector<int64_t> File::dataset_shape(const std::string& dataset) const {
  Handle ds = open_dataset(dataset);
  Handle space(H5Dget_space(ds.get()), Handle::Type::Dataspace);
  ELBO_H5_CHECK(space.get(), where(path_, dataset));
  return space_shape(space.get());
}

FloatArray File::read_floats(const std::string& dataset) const {
  Handle ds = open_dataset(dataset);
  Handle space(H5Dget_space(ds.get()), Handle::Type::Dataspace);
  ELBO_H5_CHECK(space.get(), where(path_, dataset));
  FloatArray a;
  a.shape = space_shape(space.get());
  hssize_t n = H5Sget_simple_extent_npoints(space.get());
  ELBO_H5_CHECK(n, where(path_, dataset));
  a.data.resize(static_cast<size_t>(n));
  Handle type(H5Dget_type(ds.get()), Handle::Type::Datatype);
  if (!type.valid() || !well_formed_number(type.get()))
    throw_bad_input("the dataset's element type is not a well-formed number; is the file corrupt?" +
                    at(path_, dataset));
  // HDF5 converts any numeric type to float
  if (n > 0 &&
      H5Dread(ds.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, a.data.data()) < 0)
    throw_bad_input("cannot read the dataset: " + last_error_reason() + at(path_, dataset));
  return a;
}

void File::write_floats(const std::string& dataset, const std::vector<int64_t>& shape,
                        const float* data) {
  write_dataset(dataset, shape, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, data);
}

void File::write_dataset(const std::string& dataset, const std::vector<int64_t>& shape,
                         hid_t file_type, hid_t mem_type, const void* data) {
  silence_error_printing();
  Handle space = make_space(shape);
  ELBO_H5_CHECK(space.get(), where(path_, dataset));
  Handle lcpl = intermediate_groups();
  Handle ds(H5Dcreate2(id(), dataset.c_str(), file_type, space.get(), lcpl.get(), H5P_DEFAULT,
                       H5P_DEFAULT),
            Handle::Type::Dataset);
  ELBO_H5_CHECK(ds.get(), where(path_, dataset));
  if (H5Sget_simple_extent_npoints(space.get()) > 0)
    ELBO_H5_CHECK(H5Dwrite(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data),
                  where(path_, dataset));
}

void File::create_group(const std::string& group) {
  silence_error_printing();
  if (exists(group)) return;
  Handle lcpl = intermediate_groups();
  Handle g(H5Gcreate2(id(), group.c_str(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT),
           Handle::Type::Group);
  ELBO_H5_CHECK(g.get(), where(path_, group));
}

// ---- attributes ---------------------------------------------------------------------------------

namespace {

// Opens attribute `name` on `object`; a missing one is a BadInput error naming the file.
Handle open_attribute(const File& f, const std::string& object, const std::string& name) {
  if (!f.has_attribute(object, name))
    throw_bad_input("no attribute '" + name + "'" + at(f.path(), object));
  Handle a(H5Aopen_by_name(f.id(), object.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT),
           Handle::Type::Attribute);
  ELBO_H5_CHECK(a.get(), where(f.path(), object) + " attribute " + name);
  return a;
}

H5T_class_t attribute_class(const Handle& a) {
  Handle t(H5Aget_type(a.get()), Handle::Type::Datatype);
  ELBO_H5_CHECK(t.get(), std::string("attribute"));
  return H5Tget_class(t.get());
}

hssize_t attribute_points(const Handle& a) {
  Handle space(H5Aget_space(a.get()), Handle::Type::Dataspace);
  ELBO_H5_CHECK(space.get(), std::string("attribute"));
  return H5Sget_simple_extent_npoints(space.get());
}

// Reads a numeric attribute with exactly `n` elements (n < 0: any count) as `mem_type`.
template <typename T>
std::vector<T> read_numeric(const File& f, const std::string& object, const std::string& name,
                            hid_t mem_type, bool integer_only, hssize_t n) {
  Handle a = open_attribute(f, object, name);
  H5T_class_t c = attribute_class(a);
  bool ok = c == H5T_INTEGER || (!integer_only && c == H5T_FLOAT);
  hssize_t points = attribute_points(a);
  if (!ok || (n >= 0 && points != n))
    throw_bad_input("attribute '" + name + "' is not " + (n == 1 ? "a scalar " : "an array of ") +
                    (integer_only ? "integer" : "number") + at(f.path(), object));
  Handle t(H5Aget_type(a.get()), Handle::Type::Datatype);
  if (!t.valid() || !well_formed_number(t.get()))
    throw_bad_input("attribute '" + name + "' has a malformed number type; is the file corrupt?" +
                    at(f.path(), object));
  std::vector<T> v(static_cast<size_t>(points));
  if (points > 0) check_read(H5Aread(a.get(), mem_type, v.data()), f.path() + ":" + object);
  return v;
}

// Variable-length strings live in global heap collections ("GCOL" blocks). HDF5 1.10.8 walks a
// collection's objects without checking them: a free-space object of size 0 makes it loop
// forever, and an object larger than what is left of the collection makes it read past it. So
// before such a string is read, the file's collections (found by their signature) are walked as
// HDF5 does, with those checks. Files whose lengths are not 8 bytes are left to HDF5.
void check_global_heaps(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  const std::string b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (b.size() < 16 || b.compare(0, 8, "\x89HDF\r\n\x1a\n") != 0) return;
  if ((b[8] < 2 ? b[14] : b[10]) != 8) return;  // size of lengths, by superblock version
  const auto u64 = [&b](size_t at) {
    uint64_t v = 0;
    for (size_t i = 8; i-- > 0;) v = v << 8 | static_cast<uint8_t>(b[at + i]);
    return v;
  };
  // The signature and version 1; HDF5 ignores the three reserved bytes after them, so must we (a
  // collection with them set and a free-space object of size 0 hung HDF5 all the same).
  const std::string magic("GCOL\x01", 5);
  for (size_t heap = b.find(magic); heap != std::string::npos && heap + 16 <= b.size();
       heap = b.find(magic, heap + 1)) {
    const uint64_t size = u64(heap + 8);
    if (size < 16 || size > b.size() - heap) continue;  // nothing to walk, or past the end
    const size_t end = heap + static_cast<size_t>(size);
    for (size_t p = heap + 16; p + 16 <= end;) {  // a shorter tail is free space
      const bool free_space = b[p] == 0 && b[p + 1] == 0;  // heap object index 0
      const uint64_t object = u64(p + 8);
      const uint64_t need = free_space ? object : 16 + ((object + 7) & ~uint64_t{7});
      if (object > size || need == 0 || need > end - p)
        throw_bad_input("corrupt global heap (where variable-length strings are kept)" + at(path));
      p += static_cast<size_t>(need);
    }
  }
}

Handle create_attribute(File& f, const std::string& object, const std::string& name, hid_t type,
                        hid_t space) {
  if (f.has_attribute(object, name))
    ELBO_H5_CHECK(H5Adelete_by_name(f.id(), object.c_str(), name.c_str(), H5P_DEFAULT),
                  where(f.path(), object));
  Handle a(H5Acreate_by_name(f.id(), object.c_str(), name.c_str(), type, space, H5P_DEFAULT,
                             H5P_DEFAULT, H5P_DEFAULT),
           Handle::Type::Attribute);
  ELBO_H5_CHECK(a.get(), where(f.path(), object) + " attribute " + name);
  return a;
}

}  // namespace

bool File::has_attribute(const std::string& object, const std::string& name) const {
  silence_error_printing();
  if (!exists(object)) return false;
  return H5Aexists_by_name(id(), object.c_str(), name.c_str(), H5P_DEFAULT) > 0;
}

int64_t File::read_int_attribute(const std::string& object, const std::string& name) const {
  return read_numeric<int64_t>(*this, object, name, H5T_NATIVE_INT64, true, 1)[0];
}

double File::read_double_attribute(const std::string& object, const std::string& name) const {
  return read_numeric<double>(*this, object, name, H5T_NATIVE_DOUBLE, false, 1)[0];
}

std::vector<double> File::read_double_array_attribute(const std::string& object,
                                                      const std::string& name) const {
  return read_numeric<double>(*this, object, name, H5T_NATIVE_DOUBLE, false, -1);
}

std::string File::read_string_attribute(const std::string& object, const std::string& name) const {
  Handle a = open_attribute(*this, object, name);
  Handle type(H5Aget_type(a.get()), Handle::Type::Datatype);
  ELBO_H5_CHECK(type.get(), where(path_, object));
  if (H5Tget_class(type.get()) != H5T_STRING || attribute_points(a) != 1)
    throw_bad_input("attribute '" + name + "' is not a string" + at(path_, object));
  Handle mem(H5Tcopy(H5T_C_S1), Handle::Type::Datatype);
  ELBO_H5_CHECK(mem.get(), std::string("H5T_C_S1"));
  // HDF5 will not convert between ASCII and UTF-8, so read in the stored character set, which a
  // corrupt file may give as neither.
  const H5T_cset_t cset = H5Tget_cset(type.get());
  if (cset != H5T_CSET_ASCII && cset != H5T_CSET_UTF8)
    throw_bad_input("attribute '" + name + "' has an unknown character set" + at(path_, object));
  ELBO_H5_CHECK(H5Tset_cset(mem.get(), cset), std::string("string type"));
  if (H5Tis_variable_str(type.get()) > 0) {  // h5py's default for str
    check_global_heaps(path_);
    ELBO_H5_CHECK(H5Tset_size(mem.get(), H5T_VARIABLE), std::string("string type"));
    char* s = nullptr;
    check_read(H5Aread(a.get(), mem.get(), &s), path_ + ":" + object);
    std::string out = s ? s : "";
    H5free_memory(s);
    return out;
  }
  size_t size = H5Tget_size(type.get());
  ELBO_H5_CHECK(H5Tset_size(mem.get(), size), std::string("string type"));
  std::string out(size, '\0');
  check_read(H5Aread(a.get(), mem.get(), out.data()), path_ + ":" + object);
  return out.substr(0, out.find('\0'));  // fixed-length strings may be null-padded
}

void File::write_int_attribute(const std::string& object, const std::string& name, int64_t v) {
  Handle space = make_space({});
  Handle a = create_attribute(*this, object, name, H5T_STD_I64LE, space.get());
  ELBO_H5_CHECK(H5Awrite(a.get(), H5T_NATIVE_INT64, &v), where(path_, object));
}

void File::write_double_attribute(const std::string& object, const std::string& name, double v) {
  Handle space = make_space({});
  Handle a = create_attribute(*this, object, name, H5T_IEEE_F64LE, space.get());
  ELBO_H5_CHECK(H5Awrite(a.get(), H5T_NATIVE_DOUBLE, &v), where(path_, object));
}

void File::write_string_attribute(const std::string& object, const std::string& name,
                                  const std::string& v) {
  // Variable-length UTF-8, as h5py writes str, so h5py reads it back as str (not bytes).
  Handle type(H5Tcopy(H5T_C_S1), Handle::Type::Datatype);
  ELBO_H5_CHECK(type.get(), std::string("H5T_C_S1"));
  ELBO_H5_CHECK(H5Tset_size(type.get(), H5T_VARIABLE), std::string("string type"));
  ELBO_H5_CHECK(H5Tset_cset(type.get(), H5T_CSET_UTF8), std::string("string type"));
  Handle space = make_space({});
  Handle a = create_attribute(*this, object, name, type.get(), space.get());
  const char* s = v.c_str();
  ELBO_H5_CHECK(H5Awrite(a.get(), type.get(), &s), where(path_, object));
}

void File::flush() { ELBO_H5_CHECK(H5Fflush(id(), H5F_SCOPE_GLOBAL), "'" + path_ + "'"); }

}  // namespace elbo::h5
