// core/tensor.cpp — Tensor, storage and the CPU allocator.
#include "core/tensor.h"

#if PTRAIN_HAVE_CUDA
#include "core/cuda/device_memory.h"
#endif

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace ptrain {

std::string shape_str(const Shape& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

namespace {
class CpuAllocator final : public Allocator {
 public:
  void* allocate(size_t bytes) override {
    size_t rounded = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    PT_CHECK(p, "out of host memory allocating {} bytes", bytes);
    int64_t now = allocated_.fetch_add(static_cast<int64_t>(bytes)) + static_cast<int64_t>(bytes);
    int64_t prev = peak_.load();
    while (now > prev && !peak_.compare_exchange_weak(prev, now)) {}
    return p;
  }
  void deallocate(void* p, size_t bytes) override {
    std::free(p);
    allocated_.fetch_sub(static_cast<int64_t>(bytes));
  }
  Device device() const override { return Device::cpu; }
  std::atomic<int64_t> allocated_{0}, peak_{0};
};
CpuAllocator& cpu_alloc_impl() {
  static CpuAllocator a;
  return a;
}
}  // namespace

Allocator& cpu_allocator() { return cpu_alloc_impl(); }
MemoryStats cpu_memory_stats() { return {cpu_alloc_impl().allocated_.load(), cpu_alloc_impl().peak_.load()}; }
void reset_cpu_peak() { cpu_alloc_impl().peak_.store(cpu_alloc_impl().allocated_.load()); }

Storage::Storage(size_t n, Allocator& a) : bytes(n), alloc(&a) { ptr = a.allocate(n); }
Storage::~Storage() {
  if (ptr) alloc->deallocate(ptr, bytes);
}

namespace {

// ---- device memory (the CUDA backend when the build has one) ----
Allocator& allocator_for(Device dev) {
  if (dev == Device::cpu) return cpu_allocator();
#if PTRAIN_HAVE_CUDA
  return cuda::cuda_tensor_allocator();
#else
  throw UserError(
      "device: cuda needs a build with the CUDA backend. HINT: build with nvcc on the PATH (PTRAIN_CUDA=AUTO|ON) "
      "or configure with -DPTRAIN_CUDA_EMULATION=ON, or set device: cpu");
#endif
}

#if PTRAIN_HAVE_CUDA
void to_device_bytes(void* dst, const void* src, size_t n) { cuda::copy_host_to_device(dst, src, n); }
void to_host_bytes(void* dst, const void* src, size_t n) { cuda::copy_device_to_host(dst, src, n); }
void device_bytes(void* dst, const void* src, size_t n) { cuda::copy_device_to_device(dst, src, n); }
void zero_bytes(void* p, size_t n) { cuda::zero_device(p, n); }
#else
[[noreturn]] void no_device() { (void)allocator_for(Device::cuda); throw Error("unreachable"); }
void to_device_bytes(void*, const void*, size_t) { no_device(); }
void to_host_bytes(void*, const void*, size_t) { no_device(); }
void device_bytes(void*, const void*, size_t) { no_device(); }
void zero_bytes(void*, size_t) { no_device(); }
#endif

/// A host tensor's elements in the device's layout (bf16/f16 as 2-byte values; they are on
/// the grid already, so the conversion is exact).
std::vector<unsigned char> device_layout(const Tensor& h) {
  const int64_t n = h.numel();
  std::vector<unsigned char> b(static_cast<size_t>(n) * element_size(h.dtype(), Device::cuda));
  if (h.dtype() == DType::bf16 || h.dtype() == DType::f16) {
    const float* s = h.data<float>();
    auto* d = reinterpret_cast<uint16_t*>(b.data());
    for (int64_t i = 0; i < n; ++i) d[i] = h.dtype() == DType::bf16 ? float_to_bf16_bits(s[i]) : float_to_f16_bits(s[i]);
  } else if (!b.empty()) {
    std::memcpy(b.data(), h.raw(), b.size());
  }
  return b;
}

}  // namespace

Tensor Tensor::empty(Shape shape, DType dtype, Device dev) {
  for (auto d : shape) PT_CHECK(d >= 0, "negative dimension in shape {}", shape_str(shape));
  Tensor t;
  t.impl_ = std::make_shared<TensorImpl>();
  t.impl_->shape = std::move(shape);
  t.impl_->dtype = dtype;
  t.impl_->device = dev;
  t.impl_->storage = std::make_shared<Storage>(
      static_cast<size_t>(shape_numel(t.impl_->shape)) * element_size(dtype, dev), allocator_for(dev));
  return t;
}

Tensor Tensor::over(std::shared_ptr<Storage> storage, int64_t offset, Shape shape, DType dtype, Device dev) {
  PT_CHECK(storage, "Tensor::over: no storage");
  PT_CHECK(storage->alloc && storage->alloc->device() == dev, "Tensor::over: storage is not on {}", device_name(dev));
  PT_CHECK(offset >= 0 && static_cast<size_t>(offset + shape_numel(shape)) * element_size(dtype, dev) <= storage->bytes,
           "Tensor::over: {} elements at offset {} run past a storage of {} bytes", shape_numel(shape), offset,
           storage->bytes);
  Tensor t;
  t.impl_ = std::make_shared<TensorImpl>();
  t.impl_->storage = std::move(storage);
  t.impl_->offset = offset;
  t.impl_->shape = std::move(shape);
  t.impl_->dtype = dtype;
  t.impl_->device = dev;
  return t;
}

Tensor Tensor::to_device(Device dev) const {
  PT_CHECK(impl_, "to_device on an undefined tensor");
  if (dev == device()) return *this;
  Tensor r = empty(shape(), dtype(), dev);
  if (dev == Device::cuda) {
    const auto b = device_layout(*this);
    to_device_bytes(r.raw(), b.data(), b.size());
    return r;
  }
  // device -> host
  std::vector<unsigned char> b(nbytes());
  to_host_bytes(b.data(), raw(), b.size());
  const int64_t n = numel();
  if (dtype() == DType::bf16 || dtype() == DType::f16) {
    const auto* s = reinterpret_cast<const uint16_t*>(b.data());
    float* d = r.data<float>();
    for (int64_t i = 0; i < n; ++i) d[i] = dtype() == DType::bf16 ? bf16_bits_to_float(s[i]) : f16_bits_to_float(s[i]);
  } else if (!b.empty()) {
    std::memcpy(r.raw(), b.data(), b.size());
  }
  return r;
}

Tensor Tensor::zeros(Shape shape, DType dtype, Device dev) {
  Tensor t = empty(std::move(shape), dtype, dev);
  t.zero_();
  return t;
}

Tensor Tensor::full(Shape shape, double value, DType dtype) {
  Tensor t = empty(std::move(shape), dtype);
  t.fill(value);
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& values, Shape shape, DType dtype) {
  PT_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "{} values for shape {}", values.size(),
           shape_str(shape));
  PT_CHECK(dtype_of_storage<float>::ok(dtype), "from_vector: dtype {} is not a float type", dtype_name(dtype));
  Tensor t = empty(std::move(shape), dtype);
  std::memcpy(t.data<float>(), values.data(), values.size() * sizeof(float));
  t.round_();
  return t;
}

Tensor Tensor::from_vector_i32(const std::vector<int32_t>& values, Shape shape) {
  PT_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "{} values for shape {}", values.size(),
           shape_str(shape));
  Tensor t = empty(std::move(shape), DType::i32);
  std::memcpy(t.data<int32_t>(), values.data(), values.size() * sizeof(int32_t));
  return t;
}

Tensor Tensor::from_vector_f64(const std::vector<double>& values, Shape shape) {
  PT_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "{} values for shape {}", values.size(),
           shape_str(shape));
  Tensor t = empty(std::move(shape), DType::f64);
  std::memcpy(t.data<double>(), values.data(), values.size() * sizeof(double));
  return t;
}

const Shape& Tensor::shape() const {
  PT_CHECK(impl_, "shape() on an undefined tensor");
  return impl_->shape;
}
int64_t Tensor::dim(int i) const {
  const int n = ndim();
  if (i < 0) i += n;
  PT_CHECK(i >= 0 && i < n, "dim {} out of range for shape {}", i, shape_str(shape()));
  return impl_->shape[static_cast<size_t>(i)];
}
int64_t Tensor::numel() const { return shape_numel(shape()); }
DType Tensor::dtype() const {
  PT_CHECK(impl_, "dtype() on an undefined tensor");
  return impl_->dtype;
}
Device Tensor::device() const {
  PT_CHECK(impl_, "device() on an undefined tensor");
  return impl_->device;
}
void* Tensor::raw() const {
  PT_CHECK(impl_, "raw() on an undefined tensor");
  return static_cast<char*>(impl_->storage->ptr) + impl_->offset * static_cast<int64_t>(element_size(impl_->dtype, impl_->device));
}

Tensor Tensor::view(Shape shape) const {
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      PT_CHECK(infer < 0, "view: more than one -1 in {}", shape_str(shape));
      infer = static_cast<int64_t>(i);
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    PT_CHECK(known > 0 && numel() % known == 0, "view: cannot infer -1 in {} from {}", shape_str(shape), shape_str(this->shape()));
    shape[static_cast<size_t>(infer)] = numel() / known;
  }
  PT_CHECK(shape_numel(shape) == numel(), "view: {} does not have the numel of {}", shape_str(shape),
           shape_str(this->shape()));
  Tensor t;
  t.impl_ = std::make_shared<TensorImpl>(*impl_);
  t.impl_->shape = std::move(shape);
  t.impl_->requires_grad = false;
  t.impl_->grad = Tensor();
  t.impl_->tape_id = 0;
  t.impl_->slot = -1;
  return t;
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  PT_CHECK(ndim() >= 1 && begin >= 0 && begin <= end && end <= dim(0), "rows({}, {}) of shape {}", begin, end,
           shape_str(shape()));
  const int64_t row = dim(0) == 0 ? 0 : numel() / dim(0);
  Tensor t;
  t.impl_ = std::make_shared<TensorImpl>(*impl_);
  t.impl_->offset += begin * row;
  t.impl_->shape[0] = end - begin;
  t.impl_->requires_grad = false;
  t.impl_->grad = Tensor();
  t.impl_->tape_id = 0;
  t.impl_->slot = -1;
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape(), dtype(), device());
  if (device() == Device::cuda)
    device_bytes(t.raw(), raw(), nbytes());
  else
    std::memcpy(t.raw(), raw(), nbytes());
  return t;
}

Tensor Tensor::to(DType t) const {
  if (t == dtype()) return clone();
  if (device() != Device::cpu) return to_device(Device::cpu).to(t).to_device(device());  // through the host
  Tensor r = empty(shape(), t, device());
  const int64_t n = numel();
  if (dtype() == DType::f64) {
    PT_CHECK(dtype_of_storage<float>::ok(t), "to({}) from f64", dtype_name(t));
    const double* s = data<double>();
    float* d = r.data<float>();
    for (int64_t i = 0; i < n; ++i) d[i] = static_cast<float>(s[i]);
  } else if (t == DType::f64) {
    const float* s = data<float>();
    double* d = r.data<double>();
    for (int64_t i = 0; i < n; ++i) d[i] = s[i];
  } else {
    PT_CHECK(is_float(t) && is_float(dtype()), "to({}) from {}", dtype_name(t), dtype_name(dtype()));
    std::memcpy(r.data<float>(), data<float>(), static_cast<size_t>(n) * sizeof(float));
  }
  r.round_();
  return r;
}

void Tensor::fill(double value) {
  if (device() != Device::cpu) {
    Tensor h = empty(shape(), dtype());
    h.fill(value);
    copy_from(h);
    return;
  }
  const int64_t n = numel();
  switch (dtype()) {
    case DType::f64: std::fill_n(data<double>(), n, value); break;
    case DType::i32: std::fill_n(data<int32_t>(), n, static_cast<int32_t>(value)); break;
    default: std::fill_n(data<float>(), n, static_cast<float>(value)); round_(); break;
  }
}

void Tensor::zero_() {
  if (device() == Device::cuda)
    zero_bytes(raw(), nbytes());
  else
    std::memset(raw(), 0, nbytes());
}

void Tensor::copy_from(const Tensor& src) {
  PT_CHECK(src.numel() == numel(), "copy_from: {} into {}", shape_str(src.shape()), shape_str(shape()));
  if (device() == Device::cuda || src.device() == Device::cuda) {
    Tensor s = src.dtype() == dtype() ? src : src.to(dtype());
    if (device() == Device::cpu) {
      Tensor h = s.to_device(Device::cpu);
      std::memcpy(raw(), h.raw(), nbytes());
    } else if (s.device() == Device::cuda) {
      device_bytes(raw(), s.raw(), nbytes());
    } else {
      const auto b = device_layout(s);
      to_device_bytes(raw(), b.data(), b.size());
    }
    return;
  }
  if (src.dtype() == dtype() || (is_float(src.dtype()) && is_float(dtype()) && src.dtype() != DType::f64 &&
                                 dtype() != DType::f64)) {
    std::memcpy(raw(), src.raw(), nbytes());
    round_();
    return;
  }
  Tensor c = src.to(dtype());
  std::memcpy(raw(), c.raw(), nbytes());
}

std::vector<double> Tensor::to_double_vector() const {
  if (device() != Device::cpu) return to_device(Device::cpu).to_double_vector();
  const int64_t n = numel();
  std::vector<double> r(static_cast<size_t>(n));
  switch (dtype()) {
    case DType::f64: std::copy_n(data<double>(), n, r.begin()); break;
    case DType::i32: std::copy_n(data<int32_t>(), n, r.begin()); break;
    default: std::copy_n(data<float>(), n, r.begin()); break;
  }
  return r;
}

std::vector<float> Tensor::to_float_vector() const {
  auto d = to_double_vector();
  return {d.begin(), d.end()};
}

void Tensor::round_() {
  if (is_low_precision(dtype()) && device() == Device::cpu) round_to_dtype(data<float>(), numel(), dtype());
}

bool Tensor::requires_grad() const { return impl_ && impl_->requires_grad; }
Tensor& Tensor::set_requires_grad(bool r) {
  PT_CHECK(impl_, "set_requires_grad on an undefined tensor");
  impl_->requires_grad = r;
  return *this;
}
Tensor Tensor::grad() const { return impl_ ? impl_->grad : Tensor(); }
Tensor Tensor::grad_buffer(DType grad_dtype) const {
  PT_CHECK(impl_, "grad_buffer on an undefined tensor");
  if (!impl_->grad.defined()) {
    DType gt = dtype() == DType::f64 ? DType::f64 : grad_dtype;
    impl_->grad = zeros(shape(), gt, device());
  }
  return impl_->grad;
}
void Tensor::set_grad(Tensor g) const { impl_->grad = std::move(g); }
void Tensor::clear_grad() const {
  if (impl_) impl_->grad = Tensor();
}

void check_same_shape(const Tensor& a, const Tensor& b, const char* what) {
  PT_CHECK(a.shape() == b.shape(), "{}: shapes differ, {} vs {}", what, shape_str(a.shape()), shape_str(b.shape()));
}

}  // namespace ptrain
