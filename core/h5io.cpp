// core/h5io.cpp — the RAII HDF5 layer (see h5io.h for the invariants).
//
// bf16/f16 are converted here, not by HDF5: writes round with float_to_bf16_bits /
// float_to_f16_bits (round to nearest even) and reads widen bit-exactly (HDF5's soft
// float conversion is slow and turns NaN payloads into -NaN). Large blocks are
// converted and written in pieces of at most kConvertChunk elements so a checkpoint
// write never holds a second full-size copy; reads widen in place (2-byte values are
// read into the front of the f32 buffer and expanded from the back).
#include "core/h5io.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <climits>
#include <cstring>
#include <filesystem>
#include <utility>

#include "core/dtype.h"
#include "core/error.h"

namespace ptrain::h5 {

static_assert(std::endian::native == std::endian::little, "h5io assumes a little-endian host");

namespace {

constexpr int64_t kConvertChunk = int64_t{1} << 22;  // elements per conversion piece

void init() {
  static const bool done = [] {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)done;
}

/// Owns one hid_t with its close function.
class Hid {
 public:
  Hid(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~Hid() {
    if (id_ >= 0) close_(id_);
  }
  Hid(const Hid&) = delete;
  Hid& operator=(const Hid&) = delete;
  operator hid_t() const { return id_; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

std::string norm_name(const std::string& name) {
  if (name.empty() || name == "/") return "/";
  return name[0] == '/' ? name.substr(1) : name;
}

/// bf16 as an HDF5 float: size 2, sign 15, exponent 7..14 (bias 127), mantissa 0..6.
hid_t make_bf16_type() {
  hid_t t = H5_CHECK(H5Tcopy(H5T_IEEE_F32LE));
  H5_CHECK(H5Tset_fields(t, 15, 7, 8, 0, 7));
  H5_CHECK(H5Tset_precision(t, 16));
  H5_CHECK(H5Tset_size(t, 2));
  H5_CHECK(H5Tset_ebias(t, 127));
  return t;
}
/// IEEE binary16 (HDF5 1.10 has no predefined half type): sign 15, exponent 10..14 (bias 15).
hid_t make_f16_type() {
  hid_t t = H5_CHECK(H5Tcopy(H5T_IEEE_F32LE));
  H5_CHECK(H5Tset_fields(t, 15, 10, 5, 0, 10));
  H5_CHECK(H5Tset_precision(t, 16));
  H5_CHECK(H5Tset_size(t, 2));
  H5_CHECK(H5Tset_ebias(t, 15));
  return t;
}

/// Classifies a file datatype by its class and float layout.
StoredType classify(hid_t type) {
  const H5T_class_t cls = H5Tget_class(type);
  if (cls == H5T_INTEGER) return StoredType::integer;
  if (cls != H5T_FLOAT) return StoredType::other;
  size_t spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0;
  H5_CHECK(H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize));
  const size_t size = H5Tget_size(type), bias = H5Tget_ebias(type);
  auto is = [&](size_t sz, size_t s, size_t e, size_t es, size_t ms, size_t b) {
    return size == sz && spos == s && epos == e && esize == es && mpos == 0 && msize == ms && bias == b;
  };
  if (is(4, 31, 23, 8, 23, 127)) return StoredType::f32;
  if (is(8, 63, 52, 11, 52, 1023)) return StoredType::f64;
  if (is(2, 15, 7, 8, 7, 127)) return StoredType::bf16;
  if (is(2, 15, 10, 5, 10, 15)) return StoredType::f16;
  return StoredType::other;
}

/// True when a 2-byte float of this type can be widened here bit by bit.
bool manual_half(hid_t type, StoredType st) {
  return (st == StoredType::bf16 || st == StoredType::f16) && H5Tget_order(type) == H5T_ORDER_LE &&
         H5Tget_offset(type) == 0 && H5Tget_precision(type) == 16;
}

hid_t open_dataset_or_throw(const File& f, const std::string& name) {
  init();
  PT_CHECK(f.is_open(), "HDF5 file is not open");
  const std::string n = norm_name(name);
  PT_USER_CHECK(has(f, n), "HDF5 file '{}' has no dataset '{}'", f.path(), n);
  hid_t d = H5Dopen2(f.id(), n.c_str(), H5P_DEFAULT);
  PT_USER_CHECK(d >= 0, "'{}' in HDF5 file '{}' is not a dataset", n, f.path());
  return d;
}

Shape space_shape(hid_t space) {
  const int nd = H5_CHECK(H5Sget_simple_extent_ndims(space));
  std::vector<hsize_t> dims(static_cast<size_t>(nd));
  if (nd > 0) H5_CHECK(H5Sget_simple_extent_dims(space, dims.data(), nullptr));
  return Shape(dims.begin(), dims.end());
}

std::vector<hsize_t> to_hsize(const Shape& s) { return std::vector<hsize_t>(s.begin(), s.end()); }

/// A dataspace for `count` (scalar for rank 0).
hid_t make_space(const Shape& count) {
  if (count.empty()) return H5_CHECK(H5Screate(H5S_SCALAR));
  auto d = to_hsize(count);
  return H5_CHECK(H5Screate_simple(static_cast<int>(d.size()), d.data(), nullptr));
}

/// File space of `dset` with the hyperslab [offset, offset+count) selected (all for rank 0).
hid_t select_slab(hid_t dset, const Shape& offset, const Shape& count) {
  hid_t fs = H5_CHECK(H5Dget_space(dset));
  if (!count.empty()) {
    auto o = to_hsize(offset), c = to_hsize(count);
    H5_CHECK(H5Sselect_hyperslab(fs, H5S_SELECT_SET, o.data(), nullptr, c.data(), nullptr));
  }
  return fs;
}

/// Checks that [offset, offset+count) lies inside `full` (same rank).
void check_slab(const File& f, const std::string& name, const Shape& full, const Shape& offset, const Shape& count) {
  PT_CHECK(offset.size() == full.size() && count.size() == full.size(),
           "slab of '{}' in '{}': offset {} / count {} must have the rank of the dataset shape {}", name, f.path(),
           shape_str(offset), shape_str(count), shape_str(full));
  for (size_t i = 0; i < full.size(); ++i)
    PT_CHECK(offset[i] >= 0 && count[i] >= 0 && offset[i] + count[i] <= full[i],
             "slab offset {} + count {} is outside dataset '{}' of shape {} in '{}'", shape_str(offset),
             shape_str(count), name, shape_str(full), f.path());
}

/// Writes `src` (row-major [count]) into the slab [offset, offset+count) of `dset`, whose
/// elements are `store`. Float sources are rounded to bf16/f16 here, piece by piece.
void write_block(hid_t dset, DType store, const Shape& offset, const Shape& count, const void* src) {
  const int64_t n = shape_numel(count);
  if (n == 0) return;
  if (store == DType::bf16 || store == DType::f16) {
    if (n > kConvertChunk && !count.empty()) {
      // Split along the first dimension with extent > 1, so each piece stays contiguous.
      size_t k = 0;
      while (count[k] == 1) ++k;
      const int64_t inner = shape_numel(Shape(count.begin() + static_cast<std::ptrdiff_t>(k) + 1, count.end()));
      const int64_t rows = std::max<int64_t>(1, kConvertChunk / inner);
      for (int64_t r = 0; r < count[k]; r += rows) {
        Shape o = offset, c = count;
        o[k] += r;
        c[k] = std::min(rows, count[k] - r);
        write_block(dset, store, o, c, static_cast<const float*>(src) + r * inner);
      }
      return;
    }
    const float* x = static_cast<const float*>(src);
    std::vector<uint16_t> bits(static_cast<size_t>(n));
    if (store == DType::bf16)
      for (int64_t i = 0; i < n; ++i) bits[static_cast<size_t>(i)] = float_to_bf16_bits(x[i]);
    else
      for (int64_t i = 0; i < n; ++i) bits[static_cast<size_t>(i)] = float_to_f16_bits(x[i]);
    Hid mt(store == DType::bf16 ? make_bf16_type() : make_f16_type(), H5Tclose);
    Hid ms(make_space(count), H5Sclose), fs(select_slab(dset, offset, count), H5Sclose);
    H5_CHECK(H5Dwrite(dset, mt, ms, fs, H5P_DEFAULT, bits.data()));
    return;
  }
  const hid_t mt = store == DType::i32 ? H5T_NATIVE_INT32 : H5T_NATIVE_FLOAT;
  Hid ms(make_space(count), H5Sclose), fs(select_slab(dset, offset, count), H5Sclose);
  H5_CHECK(H5Dwrite(dset, mt, ms, fs, H5P_DEFAULT, src));
}

/// Reads the slab [offset, offset+count) of `dset` into a new f32 (float data) or i32
/// (integer data) tensor of shape `count`.
Tensor read_block(const File& f, const std::string& name, hid_t dset, const Shape& offset, const Shape& count) {
  Hid ft(H5_CHECK(H5Dget_type(dset)), H5Tclose);
  const StoredType st = classify(ft);
  const H5T_class_t cls = H5Tget_class(ft);
  PT_USER_CHECK(cls == H5T_INTEGER || cls == H5T_FLOAT,
                "dataset '{}' in HDF5 file '{}' holds neither floats nor integers (HDF5 type class {})", name,
                f.path(), static_cast<int>(cls));
  const int64_t n = shape_numel(count);
  if (cls == H5T_INTEGER) {
    Tensor out = Tensor::empty(count, DType::i32);
    if (n == 0) return out;
    Hid ms(make_space(count), H5Sclose), fs(select_slab(dset, offset, count), H5Sclose);
    H5_CHECK(H5Dread(dset, H5T_NATIVE_INT32, ms, fs, H5P_DEFAULT, out.data<int32_t>()));
    return out;
  }
  Tensor out = Tensor::empty(count, DType::f32);
  if (n == 0) return out;
  float* y = out.data<float>();
  Hid ms(make_space(count), H5Sclose), fs(select_slab(dset, offset, count), H5Sclose);
  if (manual_half(ft, st)) {
    // Read the 2-byte values into the front of the buffer (no HDF5 conversion: memory type =
    // file type), then widen from the back: float i (bytes 4i..4i+3) only overwrites
    // halves 2i and 2i+1 >= i, which were already consumed.
    H5_CHECK(H5Dread(dset, ft, ms, fs, H5P_DEFAULT, y));
    auto* bytes = reinterpret_cast<unsigned char*>(y);
    for (int64_t i = n - 1; i >= 0; --i) {
      uint16_t h;
      std::memcpy(&h, bytes + 2 * i, 2);
      const float v = st == StoredType::bf16 ? bf16_bits_to_float(h) : f16_bits_to_float(h);
      std::memcpy(bytes + 4 * i, &v, 4);
    }
  } else {
    H5_CHECK(H5Dread(dset, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, y));
  }
  return out;
}

/// The file datatype for `store`.
hid_t file_type(DType store) {
  switch (store) {
    case DType::f32: return H5_CHECK(H5Tcopy(H5T_IEEE_F32LE));
    case DType::bf16: return make_bf16_type();
    case DType::f16: return make_f16_type();
    case DType::i32: return H5_CHECK(H5Tcopy(H5T_STD_I32LE));
    case DType::f64: break;
  }
  PT_CHECK(false, "h5::write stores f32, bf16, f16 or i32, not {}", dtype_name(store));
  return -1;
}

DType store_of(StoredType st) {
  switch (st) {
    case StoredType::f32: return DType::f32;
    case StoredType::bf16: return DType::bf16;
    case StoredType::f16: return DType::f16;
    case StoredType::integer: return DType::i32;
    default: break;
  }
  PT_CHECK(false, "write_slab: dataset stored as {} (expected f32, bf16, f16 or integer)", stored_type_name(st));
  return DType::f32;
}

/// Creates dataset `name` (replacing one of that name), intermediate groups included.
hid_t create_dset(File& f, const std::string& name, const Shape& shape, DType store) {
  init();
  PT_CHECK(f.is_open() && f.writable(), "HDF5 file '{}' is not open for writing", f.path());
  const std::string n = norm_name(name);
  PT_CHECK(n != "/", "cannot create a dataset named '/'");
  for (auto d : shape) PT_CHECK(d >= 0, "dataset '{}': negative extent in shape {}", n, shape_str(shape));
  if (has(f, n)) H5_CHECK(H5Ldelete(f.id(), n.c_str(), H5P_DEFAULT));
  Hid lcpl(H5_CHECK(H5Pcreate(H5P_LINK_CREATE)), H5Pclose);
  H5_CHECK(H5Pset_create_intermediate_group(lcpl, 1));
  Hid ft(file_type(store), H5Tclose), sp(make_space(shape), H5Sclose);
  return H5_CHECK(H5Dcreate2(f.id(), n.c_str(), ft, sp, lcpl, H5P_DEFAULT, H5P_DEFAULT));
}

/// Source pointer of a CPU tensor for storing as `store` (f64 tensors go through `tmp`).
const void* source_of(const Tensor& t, DType store, std::vector<float>& tmp, const std::string& name) {
  PT_CHECK(t.defined(), "h5 write of '{}': undefined tensor", name);
  PT_CHECK(t.device() == Device::cpu, "h5 write of '{}': tensor is on {} (copy it to the CPU first)", name,
           device_name(t.device()));
  if (store == DType::i32) {
    PT_CHECK(t.dtype() == DType::i32, "h5 write of '{}': an {} tensor cannot be stored as i32", name,
             dtype_name(t.dtype()));
    return t.data<int32_t>();
  }
  PT_CHECK(is_float(t.dtype()), "h5 write of '{}': an i32 tensor cannot be stored as {}", name, dtype_name(store));
  if (t.dtype() == DType::f64) {
    const double* d = t.data<double>();
    tmp.resize(static_cast<size_t>(t.numel()));
    for (int64_t i = 0; i < t.numel(); ++i) tmp[static_cast<size_t>(i)] = static_cast<float>(d[i]);
    return tmp.data();
  }
  return t.data<float>();
}

hid_t open_object(const File& f, const std::string& object) {
  init();
  PT_CHECK(f.is_open(), "HDF5 file is not open");
  const std::string n = norm_name(object);
  PT_USER_CHECK(has(f, n), "HDF5 file '{}' has no object '{}'", f.path(), n);
  return H5_CHECK(H5Oopen(f.id(), n.c_str(), H5P_DEFAULT));
}

/// Opens attribute `attr` of `object`, or throws UserError naming all three.
hid_t open_attr(const File& f, hid_t obj, const std::string& object, const std::string& attr) {
  const htri_t e = H5_CHECK(H5Aexists(obj, attr.c_str()));
  PT_USER_CHECK(e > 0, "HDF5 file '{}': '{}' has no attribute '{}'", f.path(), norm_name(object), attr);
  return H5_CHECK(H5Aopen(obj, attr.c_str(), H5P_DEFAULT));
}

void write_attr_raw(File& f, const std::string& object, const std::string& attr, hid_t ftype, hid_t mtype,
                    hid_t space, const void* buf) {
  PT_CHECK(f.is_open() && f.writable(), "HDF5 file '{}' is not open for writing", f.path());
  Hid obj(open_object(f, object), H5Oclose);
  if (H5_CHECK(H5Aexists(obj, attr.c_str())) > 0) H5_CHECK(H5Adelete(obj, attr.c_str()));
  Hid a(H5_CHECK(H5Acreate2(obj, attr.c_str(), ftype, space, H5P_DEFAULT, H5P_DEFAULT)), H5Aclose);
  if (H5_CHECK(H5Sget_simple_extent_npoints(space)) > 0) H5_CHECK(H5Awrite(a, mtype, buf));
}

struct ListState {
  std::string prefix;
  std::vector<std::string>* out;
};

herr_t list_cb(hid_t group, const char* name, const H5L_info_t* info, void* op) {
  if (info->type != H5L_TYPE_HARD) return 0;  // soft/external links: not followed (no cycles)
  auto* st = static_cast<ListState*>(op);
  hid_t obj = H5Oopen(group, name, H5P_DEFAULT);
  if (obj < 0) return -1;
  const H5I_type_t kind = H5Iget_type(obj);
  herr_t rc = 0;
  const std::string full = st->prefix + name;
  if (kind == H5I_DATASET) {
    st->out->push_back(full);
  } else if (kind == H5I_GROUP) {
    ListState sub{full + "/", st->out};
    rc = H5Literate(obj, H5_INDEX_NAME, H5_ITER_INC, nullptr, list_cb, &sub);
  }
  H5Oclose(obj);
  return rc < 0 ? -1 : 0;
}

}  // namespace

std::string_view stored_type_name(StoredType t) {
  switch (t) {
    case StoredType::f32: return "f32";
    case StoredType::bf16: return "bf16";
    case StoredType::f16: return "f16";
    case StoredType::f64: return "f64";
    case StoredType::integer: return "integer";
    case StoredType::other: return "other";
  }
  return "?";
}

// ---------------------------------------------------------------- File

File::~File() {
  if (id_ >= 0) H5Fclose(id_);
}
File::File(File&& o) noexcept : id_(std::exchange(o.id_, -1)), path_(std::move(o.path_)), writable_(o.writable_) {}
File& File::operator=(File&& o) noexcept {
  if (this != &o) {
    if (id_ >= 0) H5Fclose(id_);
    id_ = std::exchange(o.id_, -1);
    path_ = std::move(o.path_);
    writable_ = o.writable_;
  }
  return *this;
}

void File::close() {
  if (id_ >= 0) {
    const hid_t id = std::exchange(id_, -1);
    H5_CHECK(H5Fclose(id));
  }
}

namespace {
hid_t strong_fapl() {
  hid_t fapl = H5_CHECK(H5Pcreate(H5P_FILE_ACCESS));
  H5_CHECK(H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG));
  return fapl;
}
}  // namespace

File File::create(const std::string& path) {
  init();
  namespace fs = std::filesystem;
  const fs::path parent = fs::path(path).parent_path();
  std::error_code ec;
  PT_USER_CHECK(parent.empty() || fs::is_directory(parent, ec),
                "cannot create HDF5 file '{}': directory '{}' does not exist. HINT: create the directory first", path,
                parent.string());
  Hid fapl(strong_fapl(), H5Pclose);
  hid_t id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  PT_USER_CHECK(id >= 0,
                "cannot create HDF5 file '{}' (is the directory writable, or is the file open in another program?)."
                " HINT: choose a writable path",
                path);
  return File(id, path, true);
}

File File::open(const std::string& path, bool writable) {
  init();
  struct stat sb{};
  PT_USER_CHECK(::stat(path.c_str(), &sb) == 0, "HDF5 file '{}' does not exist. HINT: check the path", path);
  PT_USER_CHECK(!S_ISDIR(sb.st_mode), "'{}' is a directory, not an HDF5 file. HINT: give the path of the .h5 file",
                path);
  PT_USER_CHECK(::access(path.c_str(), writable ? (R_OK | W_OK) : R_OK) == 0,
                "HDF5 file '{}' is not {} (permission denied). HINT: check the file's permissions", path,
                writable ? "writable" : "readable");
#if H5_VERSION_GE(1, 12, 0)
  const htri_t ok = H5Fis_accessible(path.c_str(), H5P_DEFAULT);
#else
  const htri_t ok = H5Fis_hdf5(path.c_str());
#endif
  PT_USER_CHECK(ok > 0,
                "'{}' is not an HDF5 file (or is truncated/damaged). HINT: check the path; files are written by"
                " ptrain or h5py",
                path);
  Hid fapl(strong_fapl(), H5Pclose);
  hid_t id = H5Fopen(path.c_str(), writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY, fapl);
  PT_USER_CHECK(id >= 0,
                "cannot open HDF5 file '{}'{}. HINT: another process may hold it open for writing "
                "(HDF5_USE_FILE_LOCKING=FALSE disables HDF5's file locking)",
                path, writable ? " for writing" : "");
  return File(id, path, writable);
}

bool File::is_hdf5(const std::string& path) {
  init();
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec) || ::access(path.c_str(), R_OK) != 0) return false;
#if H5_VERSION_GE(1, 12, 0)
  return H5Fis_accessible(path.c_str(), H5P_DEFAULT) > 0;
#else
  return H5Fis_hdf5(path.c_str()) > 0;
#endif
}

// ---------------------------------------------------------------- queries

bool has(const File& f, const std::string& name) {
  init();
  PT_CHECK(f.is_open(), "HDF5 file is not open");
  const std::string n = norm_name(name);
  if (n == "/") return true;
  // Every prefix link must exist before H5Lexists may be asked about the next one.
  size_t pos = 0;
  while (true) {
    const size_t slash = n.find('/', pos);
    const std::string prefix = n.substr(0, slash);
    if (prefix.empty() || H5Lexists(f.id(), prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    if (slash == std::string::npos) break;
    pos = slash + 1;
  }
  return H5Oexists_by_name(f.id(), n.c_str(), H5P_DEFAULT) > 0;
}

std::vector<std::string> list_datasets(const File& f, const std::string& group) {
  init();
  const std::string g = norm_name(group);
  PT_USER_CHECK(has(f, g), "HDF5 file '{}' has no group '{}'", f.path(), g);
  Hid gid(H5_CHECK(H5Gopen2(f.id(), g.c_str(), H5P_DEFAULT)), H5Gclose);
  std::vector<std::string> out;
  ListState st{g == "/" ? "" : g + "/", &out};
  H5_CHECK(H5Literate(gid, H5_INDEX_NAME, H5_ITER_INC, nullptr, list_cb, &st));
  std::sort(out.begin(), out.end());
  return out;
}

Shape shape(const File& f, const std::string& name) {
  Hid d(open_dataset_or_throw(f, name), H5Dclose);
  Hid sp(H5_CHECK(H5Dget_space(d)), H5Sclose);
  return space_shape(sp);
}

StoredType stored_type(const File& f, const std::string& name) {
  Hid d(open_dataset_or_throw(f, name), H5Dclose);
  Hid t(H5_CHECK(H5Dget_type(d)), H5Tclose);
  return classify(t);
}

// ---------------------------------------------------------------- whole datasets

void write(File& f, const std::string& name, const Tensor& t, DType store) {
  std::vector<float> tmp;
  const void* src = source_of(t, store, tmp, name);
  Hid d(create_dset(f, name, t.shape(), store), H5Dclose);
  write_block(d, store, Shape(t.shape().size(), 0), t.shape(), src);
}

Tensor read(const File& f, const std::string& name) {
  Hid d(open_dataset_or_throw(f, name), H5Dclose);
  Hid sp(H5_CHECK(H5Dget_space(d)), H5Sclose);
  const Shape s = space_shape(sp);
  return read_block(f, norm_name(name), d, Shape(s.size(), 0), s);
}

// ---------------------------------------------------------------- hyperslabs

void create_dataset(File& f, const std::string& name, const Shape& full_shape, DType store) {
  Hid d(create_dset(f, name, full_shape, store), H5Dclose);
}

void write_slab(File& f, const std::string& name, const Shape& offset, const Tensor& block) {
  PT_CHECK(f.writable(), "HDF5 file '{}' is not open for writing", f.path());
  Hid d(open_dataset_or_throw(f, name), H5Dclose);
  Hid sp(H5_CHECK(H5Dget_space(d)), H5Sclose);
  Hid ft(H5_CHECK(H5Dget_type(d)), H5Tclose);
  const DType store = store_of(classify(ft));
  check_slab(f, name, space_shape(sp), offset, block.shape());
  std::vector<float> tmp;
  const void* src = source_of(block, store, tmp, name);
  write_block(d, store, offset, block.shape(), src);
}

Tensor read_slab(const File& f, const std::string& name, const Shape& offset, const Shape& count) {
  Hid d(open_dataset_or_throw(f, name), H5Dclose);
  Hid sp(H5_CHECK(H5Dget_space(d)), H5Sclose);
  check_slab(f, name, space_shape(sp), offset, count);
  return read_block(f, norm_name(name), d, offset, count);
}

// ---------------------------------------------------------------- integer ranges

namespace {
void read_ints_impl(hid_t d, const Shape& shape, StoredType st, const std::string& where, int64_t start,
                    int64_t count, int32_t* out) {
  PT_CHECK(shape.size() == 1 && st == StoredType::integer, "read_ints: {} is not a 1-D integer dataset", where);
  PT_CHECK(start >= 0 && count >= 0 && start + count <= shape[0],
           "read_ints: range [{}, {}) is outside {} of {} elements", start, start + count, where, shape[0]);
  if (count == 0) return;
  Hid fs(select_slab(d, {start}, {count}), H5Sclose);
  Hid ms(make_space({count}), H5Sclose);
  H5_CHECK(H5Dread(d, H5T_NATIVE_INT32, ms, fs, H5P_DEFAULT, out));
}
}  // namespace

void read_ints(const File& f, const std::string& name, int64_t start, int64_t count, int32_t* out) {
  Dataset d(f, name);
  d.read_ints(start, count, out);
}

Dataset::Dataset(const File& f, const std::string& name, size_t cache_bytes) {
  init();
  name_ = "dataset '" + norm_name(name) + "' of '" + f.path() + "'";
  if (cache_bytes == 0) {
    id_ = open_dataset_or_throw(f, name);
  } else {
    const std::string n = norm_name(name);
    PT_USER_CHECK(has(f, n), "HDF5 file '{}' has no dataset '{}'", f.path(), n);
    Hid dapl(H5_CHECK(H5Pcreate(H5P_DATASET_ACCESS)), H5Pclose);
    H5_CHECK(H5Pset_chunk_cache(dapl, 12421, cache_bytes, H5D_CHUNK_CACHE_W0_DEFAULT));
    id_ = H5Dopen2(f.id(), n.c_str(), dapl);
    PT_USER_CHECK(id_ >= 0, "'{}' in HDF5 file '{}' is not a dataset", n, f.path());
  }
  Hid sp(H5_CHECK(H5Dget_space(id_)), H5Sclose);
  shape_ = space_shape(sp);
  Hid t(H5_CHECK(H5Dget_type(id_)), H5Tclose);
  type_ = classify(t);
}
Dataset::~Dataset() {
  if (id_ >= 0) H5Dclose(id_);
}
Dataset::Dataset(Dataset&& o) noexcept
    : id_(std::exchange(o.id_, -1)), name_(std::move(o.name_)), shape_(std::move(o.shape_)), type_(o.type_) {}
Dataset& Dataset::operator=(Dataset&& o) noexcept {
  if (this != &o) {
    if (id_ >= 0) H5Dclose(id_);
    id_ = std::exchange(o.id_, -1);
    name_ = std::move(o.name_);
    shape_ = std::move(o.shape_);
    type_ = o.type_;
  }
  return *this;
}
void Dataset::read_ints(int64_t start, int64_t count, int32_t* out) const {
  PT_CHECK(id_ >= 0, "read_ints on a closed dataset");
  read_ints_impl(id_, shape_, type_, name_, start, count, out);
}

// ---------------------------------------------------------------- growable integer datasets

IntAppender::IntAppender(File& f, const std::string& name, IntStore store, int64_t chunk_elems) : store_(store) {
  init();
  PT_CHECK(f.is_open() && f.writable(), "HDF5 file '{}' is not open for writing", f.path());
  PT_CHECK(chunk_elems > 0, "IntAppender: chunk size must be positive");
  const std::string n = norm_name(name);
  if (has(f, n)) H5_CHECK(H5Ldelete(f.id(), n.c_str(), H5P_DEFAULT));
  const hsize_t zero = 0, unlimited = H5S_UNLIMITED, chunk = static_cast<hsize_t>(chunk_elems);
  Hid sp(H5_CHECK(H5Screate_simple(1, &zero, &unlimited)), H5Sclose);
  Hid dcpl(H5_CHECK(H5Pcreate(H5P_DATASET_CREATE)), H5Pclose);
  H5_CHECK(H5Pset_chunk(dcpl, 1, &chunk));
  Hid lcpl(H5_CHECK(H5Pcreate(H5P_LINK_CREATE)), H5Pclose);
  H5_CHECK(H5Pset_create_intermediate_group(lcpl, 1));
  const hid_t ft = store == IntStore::u8 ? H5T_STD_U8LE : store == IntStore::u16 ? H5T_STD_U16LE : H5T_STD_I32LE;
  id_ = H5_CHECK(H5Dcreate2(f.id(), n.c_str(), ft, sp, lcpl, dcpl, H5P_DEFAULT));
}
IntAppender::~IntAppender() {
  if (id_ >= 0) H5Dclose(id_);
}
IntAppender::IntAppender(IntAppender&& o) noexcept
    : id_(std::exchange(o.id_, -1)), store_(o.store_), size_(o.size_) {}

void IntAppender::append(const int32_t* v, int64_t n) {
  PT_CHECK(id_ >= 0, "append to a closed dataset");
  if (n <= 0) return;
  const int32_t hi = store_ == IntStore::u8 ? 255 : store_ == IntStore::u16 ? 65535 : INT32_MAX;
  const int32_t lo = store_ == IntStore::i32 ? INT32_MIN : 0;
  for (int64_t i = 0; i < n; ++i)
    PT_CHECK(v[i] >= lo && v[i] <= hi, "value {} does not fit the stored integer type", v[i]);
  const hsize_t new_size = static_cast<hsize_t>(size_ + n);
  H5_CHECK(H5Dset_extent(id_, &new_size));
  Hid fs(select_slab(id_, {size_}, {n}), H5Sclose);
  Hid ms(make_space({n}), H5Sclose);
  H5_CHECK(H5Dwrite(id_, H5T_NATIVE_INT32, ms, fs, H5P_DEFAULT, v));
  size_ += n;
}

// ---------------------------------------------------------------- attributes

bool has_attr(const File& f, const std::string& object, const std::string& attr) {
  init();
  if (!has(f, object)) return false;
  Hid obj(open_object(f, object), H5Oclose);
  return H5_CHECK(H5Aexists(obj, attr.c_str())) > 0;
}

void write_attr(File& f, const std::string& object, const std::string& attr, int64_t v) {
  Hid sp(H5_CHECK(H5Screate(H5S_SCALAR)), H5Sclose);
  write_attr_raw(f, object, attr, H5T_STD_I64LE, H5T_NATIVE_INT64, sp, &v);
}
void write_attr(File& f, const std::string& object, const std::string& attr, double v) {
  Hid sp(H5_CHECK(H5Screate(H5S_SCALAR)), H5Sclose);
  write_attr_raw(f, object, attr, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, sp, &v);
}
void write_attr(File& f, const std::string& object, const std::string& attr, const std::string& v) {
  Hid t(H5_CHECK(H5Tcopy(H5T_C_S1)), H5Tclose);
  H5_CHECK(H5Tset_size(t, H5T_VARIABLE));
  H5_CHECK(H5Tset_cset(t, H5T_CSET_UTF8));
  Hid sp(H5_CHECK(H5Screate(H5S_SCALAR)), H5Sclose);
  const char* p = v.c_str();
  write_attr_raw(f, object, attr, t, t, sp, &p);
}
void write_attr(File& f, const std::string& object, const std::string& attr, const char* v) {
  write_attr(f, object, attr, std::string(v));
}
void write_attr(File& f, const std::string& object, const std::string& attr, const std::vector<int64_t>& v) {
  const hsize_t n = v.size();
  Hid sp(H5_CHECK(H5Screate_simple(1, &n, nullptr)), H5Sclose);
  write_attr_raw(f, object, attr, H5T_STD_I64LE, H5T_NATIVE_INT64, sp, v.data());
}

namespace {
/// Opens `attr`, checks its type class is one of `classes` and returns (attr id, element count).
std::pair<hid_t, int64_t> open_attr_checked(const File& f, hid_t obj, const std::string& object,
                                            const std::string& attr, std::initializer_list<H5T_class_t> classes,
                                            const char* want) {
  hid_t a = open_attr(f, obj, object, attr);
  Hid t(H5Aget_type(a), H5Tclose);
  Hid sp(H5Aget_space(a), H5Sclose);
  const H5T_class_t cls = H5Tget_class(t);
  const int64_t n = H5Sget_simple_extent_npoints(sp);
  if (std::find(classes.begin(), classes.end(), cls) == classes.end()) {
    H5Aclose(a);
    throw UserError(fmt::format("HDF5 file '{}': attribute '{}' of '{}' is not {}", f.path(), attr,
                                norm_name(object), want));
  }
  return {a, n};
}
}  // namespace

int64_t read_attr_int(const File& f, const std::string& object, const std::string& attr) {
  Hid obj(open_object(f, object), H5Oclose);
  auto [aid, n] = open_attr_checked(f, obj, object, attr, {H5T_INTEGER}, "an integer");
  Hid a(aid, H5Aclose);
  PT_USER_CHECK(n == 1, "HDF5 file '{}': attribute '{}' of '{}' holds {} values, expected one integer", f.path(),
                attr, norm_name(object), n);
  int64_t v = 0;
  H5_CHECK(H5Aread(a, H5T_NATIVE_INT64, &v));
  return v;
}

double read_attr_double(const File& f, const std::string& object, const std::string& attr) {
  Hid obj(open_object(f, object), H5Oclose);
  auto [aid, n] = open_attr_checked(f, obj, object, attr, {H5T_INTEGER, H5T_FLOAT}, "a number");
  Hid a(aid, H5Aclose);
  PT_USER_CHECK(n == 1, "HDF5 file '{}': attribute '{}' of '{}' holds {} values, expected one number", f.path(),
                attr, norm_name(object), n);
  double v = 0;
  H5_CHECK(H5Aread(a, H5T_NATIVE_DOUBLE, &v));
  return v;
}

std::string read_attr_string(const File& f, const std::string& object, const std::string& attr) {
  Hid obj(open_object(f, object), H5Oclose);
  auto [aid, n] = open_attr_checked(f, obj, object, attr, {H5T_STRING}, "a string");
  Hid a(aid, H5Aclose);
  PT_USER_CHECK(n == 1, "HDF5 file '{}': attribute '{}' of '{}' holds {} strings, expected one", f.path(), attr,
                norm_name(object), n);
  Hid ft(H5_CHECK(H5Aget_type(a)), H5Tclose);
  if (H5_CHECK(H5Tis_variable_str(ft)) > 0) {
    Hid mt(H5_CHECK(H5Tcopy(H5T_C_S1)), H5Tclose);
    H5_CHECK(H5Tset_size(mt, H5T_VARIABLE));
    H5_CHECK(H5Tset_cset(mt, H5Tget_cset(ft)));
    char* p = nullptr;
    H5_CHECK(H5Aread(a, mt, &p));
    std::string s = p ? p : "";
    H5free_memory(p);
    return s;
  }
  const size_t size = H5Tget_size(ft);
  std::string s(size, '\0');
  H5_CHECK(H5Aread(a, ft, s.data()));
  if (H5Tget_strpad(ft) == H5T_STR_SPACEPAD) {
    while (!s.empty() && s.back() == ' ') s.pop_back();
  } else {
    s.resize(std::strlen(s.c_str()));
  }
  return s;
}

std::vector<int64_t> read_attr_ints(const File& f, const std::string& object, const std::string& attr) {
  Hid obj(open_object(f, object), H5Oclose);
  auto [aid, n] = open_attr_checked(f, obj, object, attr, {H5T_INTEGER}, "an integer array");
  Hid a(aid, H5Aclose);
  std::vector<int64_t> v(static_cast<size_t>(std::max<int64_t>(n, 0)));
  if (!v.empty()) H5_CHECK(H5Aread(a, H5T_NATIVE_INT64, v.data()));
  return v;
}

}  // namespace ptrain::h5
