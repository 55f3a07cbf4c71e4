// core/cuda/device.cu — device discovery and a trivial kernel (both CUDA builds).
#include "core/cuda/runtime.h"

#include "core/cuda/device.h"

namespace ptrain::cuda {

namespace {
__global__ void saxpy_kernel(float a, const float* x, float* y, long n) {
  long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}
}  // namespace

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

DeviceInfo device_info(int i) {
  cudaDeviceProp p{};
  CUDA_CHECK(cudaGetDeviceProperties(&p, i));
  return {p.name, p.major, p.minor, p.totalGlobalMem};
}

void select_device(int dev) { CUDA_CHECK(cudaSetDevice(dev)); }

void saxpy_roundtrip(int dev, float a, const float* x, float* y, long n) {
  CUDA_CHECK(cudaSetDevice(dev));
  float *dx = nullptr, *dy = nullptr;
  CUDA_CHECK(cudaMalloc(&dx, n * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&dy, n * sizeof(float)));
  CUDA_CHECK(cudaMemcpy(dx, x, n * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dy, y, n * sizeof(float), cudaMemcpyHostToDevice));
  const int threads = 256;
  const int blocks = static_cast<int>((n + threads - 1) / threads);
  PT_LAUNCH(saxpy_kernel, blocks, threads, 0, nullptr, a, dx, dy, n);
  CUDA_CHECK(cudaMemcpy(y, dy, n * sizeof(float), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaFree(dx));
  CUDA_CHECK(cudaFree(dy));
}

}  // namespace ptrain::cuda
