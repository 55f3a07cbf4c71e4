// core/h5io.h — a small RAII layer over the serial HDF5 C API (ptrain::h5).
//
// Used by data/ (token files), checkpoints and weight import/export.
// Invariants:
//  * Every hid_t is owned by exactly one object (File, or an internal holder) and
//    closed on destruction; File is move-only. Files are opened with the "strong"
//    close degree, so destroying a File really closes the file on disk (a rename
//    right after is safe).
//  * HDF5's automatic error printing is switched off on first use: every failure
//    becomes a ptrain exception (UserError for bad input such as a missing file or
//    dataset, Error via H5_CHECK for I/O failures).
//  * Names are HDF5 paths relative to the root ("param/model.embed.weight"); a
//    leading '/' is accepted. "/" names the root group (for attributes).
//  * Stored types: f32 (IEEE little-endian), bf16 (an HDF5 float of size 2 with
//    bf16's bit layout: sign bit 15, exponent bits 7..14 with bias 127, mantissa
//    bits 0..6 — h5py reads it as float32), f16 (IEEE half), i32. Values are
//    rounded to bf16/f16 here (round to nearest even, core/dtype.h); reading
//    bf16/f16 back to f32 is exact and done here, other float types (f64, ...)
//    are converted by HDF5.
//  * A dataset of shape [] is an HDF5 scalar dataset.
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace ptrain::h5 {

/// An open HDF5 file (move-only; closes on destruction).
class File {
 public:
  File() = default;
  ~File();
  File(File&& o) noexcept;
  File& operator=(File&& o) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  /// Creates (truncating) a file for writing. Throws UserError naming the path when it cannot.
  static File create(const std::string& path);
  /// Opens an existing file. Throws UserError naming the path (with a HINT) when it is
  /// missing, unreadable (or not writable when `writable`), or not an HDF5 file.
  static File open(const std::string& path, bool writable = false);
  /// True when `path` exists, is readable and is an HDF5 file (never throws).
  static bool is_hdf5(const std::string& path);

  /// Flushes and closes now (the destructor does the same, ignoring errors).
  void close();
  bool is_open() const { return id_ >= 0; }
  hid_t id() const { return id_; }
  const std::string& path() const { return path_; }
  bool writable() const { return writable_; }

 private:
  File(hid_t id, std::string path, bool writable) : id_(id), path_(std::move(path)), writable_(writable) {}
  hid_t id_ = -1;
  std::string path_;
  bool writable_ = false;
};

/// How a dataset's elements are stored.
enum class StoredType { f32, bf16, f16, f64, integer, other };
std::string_view stored_type_name(StoredType t);

/// True when the object (dataset or group) `name` exists; "/" is always there.
bool has(const File& f, const std::string& name);
/// Every dataset under `group`, recursively: full paths without the leading '/', sorted.
std::vector<std::string> list_datasets(const File& f, const std::string& group = "/");
/// Shape of a dataset ([] for a scalar dataset). Throws UserError if it is missing.
Shape shape(const File& f, const std::string& name);
StoredType stored_type(const File& f, const std::string& name);

/// Writes tensor `t` (CPU) as dataset `name` stored as `store` ∈ {f32, bf16, f16, i32},
/// creating intermediate groups and replacing an existing dataset of that name.
/// Float tensors (f32/bf16/f16/f64) go to a float `store`; i32 tensors to i32.
void write(File& f, const std::string& name, const Tensor& t, DType store);
/// Reads a whole dataset: an f32 tensor for any float dataset, an i32 tensor for any
/// integer dataset (values outside int32 clip).
Tensor read(const File& f, const std::string& name);

/// Creates an (uninitialised, zero-filled on read) dataset of `full_shape`, stored as
/// `store`, for writing by hyperslabs; intermediate groups are created.
void create_dataset(File& f, const std::string& name, const Shape& full_shape, DType store);
/// Writes `block` (CPU) into the hyperslab [offset, offset + block.shape()) of dataset `name`,
/// converting/rounding to its stored type as write() does.
void write_slab(File& f, const std::string& name, const Shape& offset, const Tensor& block);
/// Reads the hyperslab [offset, offset + count): f32 for float datasets, i32 for integer ones.
Tensor read_slab(const File& f, const std::string& name, const Shape& offset, const Shape& count);

/// Elements [start, start + count) of a 1-D integer dataset, converted by HDF5 to int32
/// (values outside int32 clip to its range).
void read_ints(const File& f, const std::string& name, int64_t start, int64_t count, int32_t* out);

/// An open dataset (move-only), for repeated reads without re-opening (the sampler).
class Dataset {
 public:
  Dataset() = default;
  /// Opens dataset `name` of `f`; `cache_bytes` > 0 sets its raw-chunk cache size.
  Dataset(const File& f, const std::string& name, size_t cache_bytes = 0);
  ~Dataset();
  Dataset(Dataset&& o) noexcept;
  Dataset& operator=(Dataset&& o) noexcept;
  Dataset(const Dataset&) = delete;
  Dataset& operator=(const Dataset&) = delete;

  const Shape& shape() const { return shape_; }
  StoredType stored_type() const { return type_; }
  /// As h5::read_ints, on this (1-D integer) dataset.
  void read_ints(int64_t start, int64_t count, int32_t* out) const;
  hid_t id() const { return id_; }
  const std::string& name() const { return name_; }

 private:
  hid_t id_ = -1;
  std::string name_;
  Shape shape_;
  StoredType type_ = StoredType::other;
};

/// Stored element type of a growable integer dataset.
enum class IntStore { u8, u16, i32 };

/// A 1-D chunked, growable integer dataset written by appending int32 values (token files).
/// HDF5 converts to the stored type; every value must fit it (checked). Move-only.
class IntAppender {
 public:
  /// Creates dataset `name` (replacing one of that name) with `chunk_elems` elements per chunk.
  IntAppender(File& f, const std::string& name, IntStore store, int64_t chunk_elems = int64_t{1} << 16);
  ~IntAppender();
  IntAppender(IntAppender&& o) noexcept;
  IntAppender& operator=(IntAppender&&) = delete;
  IntAppender(const IntAppender&) = delete;
  IntAppender& operator=(const IntAppender&) = delete;

  /// Grows the dataset by n and writes v[0..n) at the end.
  void append(const int32_t* v, int64_t n);
  int64_t size() const { return size_; }

 private:
  hid_t id_ = -1;
  IntStore store_;
  int64_t size_ = 0;
};

// ---- attributes on a dataset or group ("/" = the root group); writing replaces ----
bool has_attr(const File& f, const std::string& object, const std::string& attr);
void write_attr(File& f, const std::string& object, const std::string& attr, int64_t v);
void write_attr(File& f, const std::string& object, const std::string& attr, double v);
/// Stored as a variable-length UTF-8 string (h5py reads it as str).
void write_attr(File& f, const std::string& object, const std::string& attr, const std::string& v);
void write_attr(File& f, const std::string& object, const std::string& attr, const char* v);
/// Stored as a 1-D int64 array (empty allowed).
void write_attr(File& f, const std::string& object, const std::string& attr, const std::vector<int64_t>& v);
/// Readers throw UserError naming the file, object and attribute when it is missing or of
/// the wrong kind. Integer readers accept any integer type; read_attr_double also integers;
/// read_attr_string fixed- or variable-length strings; read_attr_ints a scalar or 1-D array.
int64_t read_attr_int(const File& f, const std::string& object, const std::string& attr);
double read_attr_double(const File& f, const std::string& object, const std::string& attr);
std::string read_attr_string(const File& f, const std::string& object, const std::string& attr);
std::vector<int64_t> read_attr_ints(const File& f, const std::string& object, const std::string& attr);

}  // namespace ptrain::h5
