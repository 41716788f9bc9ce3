// Small RAII wrappers over the HDF5 C API: every hid_t is owned by exactly one object, every call
// is checked, and failures throw Error with the file, the object and the failing call.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

namespace elbo::h5 {

// Turns off HDF5's own error-stack printing for the calling thread (thread-safe HDF5 keeps this
// setting per thread), so a user sees only our one-line error. Cheap to call repeatedly.
void silence_error_printing();

// Checks a read of stored bytes that the file's metadata describes (H5Dread, H5Aread): a failure
// means the bytes are corrupt (a filter that fails on them, a chunk past the end of the file), so
// it is a BadInput error naming `where` (the file and the object).
void check_read(herr_t status, const std::string& where);
// Why the last HDF5 call on this thread failed, from its error stack, innermost cause first where
// it is a filter's (e.g. "required filter 'lzf' is not registered", "filter returned failure
// during read: inflate() failed"); for messages about a file that cannot be read.
std::string last_error_reason();

// A number type as HDF5 writes one: an integer's bits within its element, a float in IEEE 754
// single or double precision (either byte order). HDF5 1.10.8 decodes malformed ones from a
// corrupt file, and its conversion then reads past the value (H5T__bit_find, from H5Aread or
// H5Dread), or converts it differently from one read to the next.
bool well_formed_number(hid_t type);

// Owns one hid_t and closes it with the right H5*close.
class Handle {
 public:
  enum class Type { File, Group, Dataset, Dataspace, Datatype, Attribute, PropList };
  Handle() = default;
  Handle(hid_t id, Type t) : id_(id), type_(t) {}
  Handle(Handle&& o) noexcept : id_(o.id_), type_(o.type_) { o.id_ = H5I_INVALID_HID; }
  Handle& operator=(Handle&& o) noexcept;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle();
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Type type_ = Type::File;
};

// A float array with its shape, as read from a dataset (converted to float by HDF5).
struct FloatArray {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

class File {
 public:
  // Open an existing file read-only; a missing file or one that is not HDF5 is a BadInput error.
  static File open_read(const std::string& path);
  // Create (truncate) a file on disk, written by HDF5 itself (tests and tools).
  static File create(const std::string& path);
  // Create a file in memory (HDF5's core driver, no backing store); `name` is for messages.
  // elbo's own outputs are made this way and written by write_file_atomically(image()), so
  // HDF5 never writes to the disk: a full disk is then one clear error of ours, not a failure
  // half way through HDF5's writes (whose clean-up at exit crashes on a file it could not close).
  static File create_in_memory(const std::string& name);
  // The bytes of a file made by create_in_memory, everything written so far included.
  std::string image();

  const std::string& path() const { return path_; }
  hid_t id() const { return handle_.get(); }

  bool exists(const std::string& object_path) const;  // dataset or group, e.g. "/params/x"
  std::vector<std::string> children(const std::string& group) const;  // link names, sorted
  // A missing dataset is a BadInput error naming the file and the dataset.
  Handle open_dataset(const std::string& dataset) const;
  std::vector<int64_t> dataset_shape(const std::string& dataset) const;
  // A dataset that cannot be read (a corrupt chunk, a filter this library lacks) is BadInput.
  FloatArray read_floats(const std::string& dataset) const;
  void write_floats(const std::string& dataset, const std::vector<int64_t>& shape,
                    const float* data);  // creates intermediate groups
  // Any element type: `file_type` as stored (e.g. H5T_STD_U8LE), `mem_type` as `data` holds it.
  void write_dataset(const std::string& dataset, const std::vector<int64_t>& shape,
                     hid_t file_type, hid_t mem_type, const void* data);
  void create_group(const std::string& group);  // with intermediate groups; no-op if present

  // Scalar attributes on an object ("/" for the file).
  bool has_attribute(const std::string& object, const std::string& name) const;
  int64_t read_int_attribute(const std::string& object, const std::string& name) const;
  double read_double_attribute(const std::string& object, const std::string& name) const;
  std::string read_string_attribute(const std::string& object, const std::string& name) const;
  std::vector<double> read_double_array_attribute(const std::string& object,
                                                  const std::string& name) const;
  void write_int_attribute(const std::string& object, const std::string& name, int64_t v);
  void write_double_attribute(const std::string& object, const std::string& name, double v);
  void write_string_attribute(const std::string& object, const std::string& name,
                              const std::string& v);

  void flush();

 private:
  File(Handle h, std::string path) : handle_(std::move(h)), path_(std::move(path)) {}
  Handle handle_;
  std::string path_;
};

}  // namespace elbo::h5
