// tests/cuda/device_test_util.h — plumbing shared by the device test programs: checked CUDA
// calls, device presence, host <-> device element layouts (bf16/f16 as 2-byte values) and an
// owning device buffer. Host code only; works in the nvcc and the emulated build.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/dtype.h"
#if PTRAIN_CUDA_EMULATED
#include "core/simt/simt.h"
#endif

namespace ptrain::cuda::test {

/// Throws std::runtime_error naming the call (and, emulated, the fault's kernel) when e fails.
inline void cuda_ok(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  std::string msg = std::string(what) + " failed: " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
#if PTRAIN_CUDA_EMULATED
  msg += std::string("\n") + ptrain::simt::fault_message();
#endif
  throw std::runtime_error(msg);
}
#define CU(expr) ::ptrain::cuda::test::cuda_ok((expr), #expr)

/// Visible CUDA devices; 0 without a driver or GPU (never throws).
inline int visible_devices() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

using Bytes = std::vector<uint8_t>;

/// Bytes per element on the device (bf16/f16: 2).
inline size_t dev_size(DType dt) { return element_size(dt, Device::cuda); }

/// n host floats (already on the grid of dt) -> the device's bytes for dt.
inline Bytes encode(const float* v, size_t n, DType dt) {
  const size_t es = dev_size(dt);
  Bytes b(n * es);
  for (size_t i = 0; i < n; ++i) {
    if (dt == DType::f32) {
      std::memcpy(&b[i * es], &v[i], 4);
    } else {
      const uint16_t h = dt == DType::bf16 ? float_to_bf16_bits(v[i]) : float_to_f16_bits(v[i]);
      std::memcpy(&b[i * es], &h, 2);
    }
  }
  return b;
}
inline Bytes encode(const std::vector<float>& v, DType dt) { return encode(v.data(), v.size(), dt); }

/// The device's bytes for dt -> host floats.
inline std::vector<float> decode(const Bytes& b, DType dt) {
  const size_t es = dev_size(dt), n = b.size() / es;
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    if (dt == DType::f32) {
      std::memcpy(&v[i], &b[i * es], 4);
    } else {
      uint16_t h;
      std::memcpy(&h, &b[i * es], 2);
      v[i] = dt == DType::bf16 ? bf16_bits_to_float(h) : f16_bits_to_float(h);
    }
  }
  return v;
}

/// Owns one cudaMalloc'ed buffer.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes_ > 0) CU(cudaMalloc(&p_, bytes_));
  }
  ~DeviceBuffer() {
    if (p_) (void)cudaFree(p_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* get() const { return p_; }
  template <class T> T* as() const { return static_cast<T*>(p_); }
  size_t bytes() const { return bytes_; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace ptrain::cuda::test
