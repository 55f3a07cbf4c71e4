// core/tensor.h — the Tensor: a shared handle to (storage, offset, shape, dtype, device).
//
// Invariants:
//  * Tensors are contiguous row-major; views (view(), rows()) share storage and
//    differ only in offset and shape. Transposes are ops that materialise.
//  * A Tensor is a handle: copies share the same TensorImpl (identity matters for
//    autograd: the gradient lives in the impl, as in PyTorch's .grad).
//  * On the CPU, f32/bf16/f16 data are floats (bf16/f16 emulated, rounded on store),
//    i32 are int32_t, f64 are double. data<T>() checks that T matches.
//  * Storage comes from an Allocator bound to a device; the CPU allocator is 64-byte
//    aligned. The CUDA caching allocator plugs in behind the same interface.
#pragma once
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace ptrain {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);

/// Owns raw memory on one device.
class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* p, size_t bytes) = 0;
  virtual Device device() const = 0;
};
/// The process-wide CPU allocator (aligned, counts live and peak bytes).
Allocator& cpu_allocator();
struct MemoryStats {
  int64_t allocated = 0;  ///< live bytes
  int64_t peak = 0;       ///< high-water mark of live bytes
};
MemoryStats cpu_memory_stats();
void reset_cpu_peak();

struct Storage {
  void* ptr = nullptr;
  size_t bytes = 0;
  Allocator* alloc = nullptr;
  Storage(size_t n, Allocator& a);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

struct TensorImpl;

class Tensor {
 public:
  Tensor() = default;
  /// Uninitialised memory.
  static Tensor empty(Shape shape, DType dtype = DType::f32, Device dev = Device::cpu);
  static Tensor zeros(Shape shape, DType dtype = DType::f32, Device dev = Device::cpu);
  static Tensor full(Shape shape, double value, DType dtype = DType::f32);
  /// Copies `values` (rounded to dtype) into a new CPU tensor.
  static Tensor from_vector(const std::vector<float>& values, Shape shape, DType dtype = DType::f32);
  static Tensor from_vector_i32(const std::vector<int32_t>& values, Shape shape);
  static Tensor from_vector_f64(const std::vector<double>& values, Shape shape);
  /// A tensor over existing storage (`offset` in elements): what id()->storage, offset, shape
  /// and dtype describe, rebuilt (activation offload hands restored storages back this way).
  static Tensor over(std::shared_ptr<Storage> storage, int64_t offset, Shape shape, DType dtype, Device dev);

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  int ndim() const { return static_cast<int>(shape().size()); }
  /// Size of dimension i; negative i counts from the end.
  int64_t dim(int i) const;
  int64_t numel() const;
  DType dtype() const;
  Device device() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * element_size(dtype(), device()); }

  /// Typed pointer to the first element; T must match the storage type of dtype().
  template <class T> T* data() const;
  void* raw() const;

  /// Same storage, new shape with the same numel (one dim may be -1).
  Tensor view(Shape shape) const;
  /// Rows [begin, end) of the first dimension, sharing storage.
  Tensor rows(int64_t begin, int64_t end) const;
  /// A new tensor with the same contents (and dtype) in fresh storage.
  Tensor clone() const;
  /// Converts to `t` (float types only) in fresh storage, rounding to the new grid (on the
  /// device through the host: a conversion kernel comes with the device training path).
  Tensor to(DType t) const;
  /// The same values on `dev` (this tensor itself when already there). Host <-> device copies
  /// are synchronous; bf16/f16 are 2-byte values on the device, rounded floats on the host.
  Tensor to_device(Device dev) const;
  void fill(double value);
  void zero_();
  /// Copies `src` (same numel, same dtype family) into this tensor.
  void copy_from(const Tensor& src);
  /// Values as doubles (for tests and small reductions).
  std::vector<double> to_double_vector() const;
  std::vector<float> to_float_vector() const;
  /// Rounds the contents to the grid of dtype() (CPU emulation of low-precision store).
  void round_();

  // ---- autograd ----
  bool requires_grad() const;
  /// Marks a leaf that receives a gradient (parameters).
  Tensor& set_requires_grad(bool r);
  /// The accumulated gradient (undefined until a backward pass touches this tensor).
  Tensor grad() const;
  /// The gradient buffer, allocated zero-filled with `grad_dtype` on first use; backward
  /// kernels accumulate (+=) into it.
  Tensor grad_buffer(DType grad_dtype = DType::f32) const;
  void set_grad(Tensor g) const;
  void clear_grad() const;
  /// Identity of the underlying impl (two handles to one tensor compare equal).
  const TensorImpl* id() const { return impl_.get(); }
  bool same(const Tensor& o) const { return impl_ == o.impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
  friend struct TensorImpl;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  int64_t offset = 0;  ///< in elements
  Shape shape;
  DType dtype = DType::f32;
  Device device = Device::cpu;
  bool requires_grad = false;  ///< a leaf that accumulates a gradient (parameters)
  Tensor grad;
  uint64_t tape_id = 0;        ///< the tape that produced this activation (0: none)
  int64_t slot = -1;           ///< its slot on that tape
};

/// Throws a message naming both shapes when they differ.
void check_same_shape(const Tensor& a, const Tensor& b, const char* what);

template <class T> struct dtype_of_storage;
template <> struct dtype_of_storage<float> { static bool ok(DType t) { return t == DType::f32 || t == DType::bf16 || t == DType::f16; } };
template <> struct dtype_of_storage<double> { static bool ok(DType t) { return t == DType::f64; } };
template <> struct dtype_of_storage<int32_t> { static bool ok(DType t) { return t == DType::i32; } };

template <class T> T* Tensor::data() const {
  PT_CHECK(impl_, "data() on an undefined tensor");
  PT_CHECK(impl_->device == Device::cpu, "data<T>() of a {} tensor: device memory is not host memory (use raw() in "
           "device code, or to_device(Device::cpu))", device_name(impl_->device));
  PT_CHECK(dtype_of_storage<std::remove_const_t<T>>::ok(impl_->dtype), "data<T>() does not match dtype {}",
           dtype_name(impl_->dtype));
  return static_cast<T*>(impl_->storage->ptr) + impl_->offset;
}

}  // namespace ptrain
