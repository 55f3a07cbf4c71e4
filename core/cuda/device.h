// core/cuda/device.h — host-side view of the CUDA devices (nvcc or emulated build).
//
// The first piece of the CUDA backend: device discovery and a checked launch of a
// trivial kernel, so the nvcc build, its sm_89/sm_90 targets and the `cuda` test label
// are exercised. Kernels of the op set come with the CUDA backend issue.
#pragma once
#include <string>

namespace ptrain::cuda {

struct DeviceInfo {
  std::string name;
  int major = 0, minor = 0;
  size_t total_memory = 0;
};

/// Number of visible CUDA devices; 0 when there is no driver or no GPU (never throws).
int device_count();
/// Properties of device `i` (throws ptrain::Error on a CUDA failure).
DeviceInfo device_info(int i);
/// Makes device `dev` this host thread's current device (before anything is allocated on it).
void select_device(int dev);
/// y[i] = a * x[i] + y[i] on device `dev` for n host floats (copies in and out); returns the result.
void saxpy_roundtrip(int dev, float a, const float* x, float* y, long n);

}  // namespace ptrain::cuda
