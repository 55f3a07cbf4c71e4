// core/cuda/fast_math.cuh — core/cpu/fast_math.h on the device, operation for operation
// (__fmaf_rn where the CPU writes fmadd, __f*_rn elsewhere so that nvcc contracts nothing):
// the softmax, cross-entropy and norm kernels compute the CPU reference's bits with it.
#pragma once

namespace ptrain::cuda::kern {

/// core/cpu/fast_math.h's exp_poly.
__device__ __forceinline__ float cpu_exp(float x) {
  const float kLo = -87.3365478f, kMagic = 12582912.0f;
  const float xc = x < kLo ? kLo : (x > 88.0f ? 88.0f : x);
  const float t = __fmaf_rn(xc, 1.44269504088896341f, kMagic);
  const float n = __fsub_rn(t, kMagic);
  float r = __fmaf_rn(-n, 0.693359375f, xc);
  r = __fmaf_rn(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = __fmaf_rn(p, r, 1.3981999507e-3f);
  p = __fmaf_rn(p, r, 8.3334519073e-3f);
  p = __fmaf_rn(p, r, 4.1665795894e-2f);
  p = __fmaf_rn(p, r, 1.6666665459e-1f);
  p = __fmaf_rn(p, r, 5.0000001201e-1f);
  p = __fadd_rn(__fmaf_rn(p, __fmul_rn(r, r), r), 1.0f);
  const unsigned e = (__float_as_uint(t) - __float_as_uint(kMagic) + 127u) << 23;
  const float y = __fmul_rn(p, __uint_as_float(e));
  return x < kLo ? 0.0f : y;
}

/// The 16 lanes of core/cpu's lane sums, combined: lane l (one thread) folds add(a, j) over
/// j = l, l + 16, ... < w16 = w / 16 * 16 in order from a = 0, then the lanes are combined by
/// the fixed halving tree (l += l + 8, + 4, + 2, + 1). The tail [w16, w) is the caller's (the
/// CPU adds it in different ways). Every thread gets the value. `red`: at least 17 floats of
/// shared memory, free on return. Called by all threads of the block (it has barriers). A tree
/// over all threads would be faster for wide rows; this order keeps the CPU reference's bits.
template <class Add>
__device__ float cpu_lanes(int64_t w, Add add, float* red) {
  constexpr int kLanes = 16;
  const int64_t w16 = w / kLanes * kLanes;
  if (threadIdx.x < static_cast<unsigned>(kLanes)) {
    float a = 0.0f;
    for (int64_t j = threadIdx.x; j < w16; j += kLanes) a = add(a, j);
    red[threadIdx.x] = a;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int l = 0; l < 8; ++l) red[l] = __fadd_rn(red[l], red[l + 8]);
    for (int l = 0; l < 4; ++l) red[l] = __fadd_rn(red[l], red[l + 4]);
    for (int l = 0; l < 2; ++l) red[l] = __fadd_rn(red[l], red[l + 2]);
    red[kLanes] = __fadd_rn(red[0], red[1]);
  }
  __syncthreads();
  const float s = red[kLanes];
  __syncthreads();  // red is reused by the caller's next row
  return s;
}

/// Σ_{c<C} f(c) in core/cpu/norm.cpp's lane_sum order: cpu_lanes of a + f(c), plus the tail
/// summed in order from 0 (every thread, the same bits). Same contract as cpu_lanes.
template <class F>
__device__ float cpu_lane_sum(int64_t C, F f, float* red) {
  const float lanes = cpu_lanes(C, [f](float a, int64_t c) { return a + f(c); }, red);
  float tail = 0.0f;
  for (int64_t c = C / 16 * 16; c < C; ++c) tail += f(c);
  return lanes + tail;
}

}  // namespace ptrain::cuda::kern
