// core/cpu/norm.cpp — RMSNorm (Hugging Face LlamaRMSNorm) and LayerNorm (torch.nn.LayerNorm).
//
// Shapes: x, y, dy, dx [rows, C]; w, b, dw, db [C]; mean, rstd [rows] (saved by forward).
// Invariants:
//  * Forward kernels overwrite y, mean and rstd; backward kernels accumulate (+=) into dx, dw,
//    db, and skip any of them that is nullptr. LayerNorm's b may be nullptr (no bias).
//  * Row statistics are computed in the scalar type T (fp32 for float, as torch does) with
//    kLanes interleaved accumulators combined pairwise in a fixed order: fast (vectorised)
//    and independent of the ISA and of the OMP thread count. LayerNorm's variance is the
//    biased two-pass variance mean((x - mean)^2).
//  * dw/db are reduced over fixed chunks of kReduceChunk rows: each chunk sums its rows in
//    row order into its own partial, and the partials are added in chunk order. Threads take
//    whole chunks, so results are bit-identical for any OMP thread count.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/cpu/fast_math.h"
#include "core/cpu/kernels.h"

namespace ptrain::cpu {

namespace {

/// Below this many elements a kernel runs on the calling thread.
constexpr int64_t kParallelMin = 32768;
/// Interleaved accumulators in a row reduction (one AVX-512 vector of floats).
constexpr int kLanes = 16;

bool run_parallel(int64_t work) { return work >= kParallelMin && omp_get_max_threads() > 1 && !omp_in_parallel(); }

/// acc[0] <- pairwise sum of the kLanes accumulators (acc[l] += acc[l + 8], then + 4, + 2, + 1);
/// constant trip counts so the lanes stay in registers.
template <class T>
inline void combine_lanes(T (&acc)[kLanes]) {
  static_assert(kLanes == 16);
  for (int l = 0; l < 8; ++l) acc[l] += acc[l + 8];
  for (int l = 0; l < 4; ++l) acc[l] += acc[l + 4];
  for (int l = 0; l < 2; ++l) acc[l] += acc[l + 2];
  acc[0] += acc[1];
}

/// sum_{i<n} f(i): kLanes interleaved accumulators (kept in registers: constant lane indices)
/// combined pairwise, then the scalar tail; a fixed order for a given n.
template <class T, class F>
inline T lane_sum(int64_t n, F f) {
  T acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += f(i + l);
  combine_lanes(acc);
  T tail = T(0);
  for (; i < n; ++i) tail += f(i);
  return acc[0] + tail;
}

/// Runs body(r0, r1, partial) over chunks of kReduceChunk rows (threads take whole chunks),
/// where partial points at `width` zeroed values owned by the chunk; then adds the chunk
/// partials in chunk order into the outputs via combine(sum) (sum has `width` values).
template <class T, class Body, class Combine>
void chunked_rows(int64_t rows, int64_t C, int64_t width, Body body, Combine combine) {
  const int64_t nchunks = (rows + kReduceChunk - 1) / kReduceChunk;
  std::vector<T> part(static_cast<size_t>(std::max<int64_t>(nchunks * width, 1)), T(0));
#pragma omp parallel for schedule(static) if (run_parallel(rows * C))
  for (int64_t k = 0; k < nchunks; ++k)
    body(k * kReduceChunk, std::min(rows, (k + 1) * kReduceChunk), part.data() + k * width);
  if (width == 0) return;
  T* __restrict__ sum = part.data();
  for (int64_t k = 1; k < nchunks; ++k) {
    const T* __restrict__ p = part.data() + k * width;
    for (int64_t j = 0; j < width; ++j) sum[j] += p[j];
  }
  combine(static_cast<const T*>(sum));
}

}  // namespace

// ---------------------------------------------------------------- RMSNorm

template <class T>
void rms_norm_forward(const T* x, const T* w, T* y, T* rstd, int64_t rows, int64_t C, double eps) {
  const T tc = static_cast<T>(C);
  const T teps = static_cast<T>(eps);
#pragma omp parallel for schedule(static) if (run_parallel(rows * C))
  for (int64_t r = 0; r < rows; ++r) {
    const T* __restrict__ xr = x + r * C;  // [C]
    T* __restrict__ yr = y + r * C;        // [C]
    const T ss = lane_sum<T>(C, [=](int64_t c) { return xr[c] * xr[c]; });
    const T rs = T(1) / std::sqrt(ss / tc + teps);
    rstd[r] = rs;
    for (int64_t c = 0; c < C; ++c) yr[c] = w[c] * (xr[c] * rs);
  }
}

// y_c = w_c x_c s, s = (mean(x^2) + eps)^-1/2:
//   dx_c = s w_c dy_c - (s^3 / C) x_c sum_k dy_k w_k x_k ;  dw_c = sum_rows dy_c x_c s
template <class T>
void rms_norm_backward(const T* dy, const T* x, const T* w, const T* rstd, T* dx, T* dw, int64_t rows, int64_t C) {
  if (!dx && !dw) return;
  const T inv_c = T(1) / static_cast<T>(C);
  const auto body = [=](int64_t r0, int64_t r1, T* __restrict__ pw) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* __restrict__ dyr = dy + r * C;
      const T* __restrict__ xr = x + r * C;
      const T rs = rstd[r];
      if (dx) {
        T* __restrict__ dxr = dx + r * C;
        const T dot = lane_sum<T>(C, [=](int64_t c) { return dyr[c] * w[c] * xr[c]; });
        const T coef = dot * rs * rs * rs * inv_c;
        for (int64_t c = 0; c < C; ++c) dxr[c] = dxr[c] + fmadd(-coef, xr[c], rs * w[c] * dyr[c]);
      }
      if (dw)
        // one explicit fused multiply-add, as the device kernel: the same bits whatever the
        // compiler would otherwise contract (core/cuda/rms_norm.cu)
        for (int64_t c = 0; c < C; ++c) pw[c] = fmadd(dyr[c] * xr[c], rs, pw[c]);
    }
  };
  chunked_rows<T>(rows, C, dw ? C : 0, body, [=](const T* sum) {
    for (int64_t c = 0; c < C; ++c) dw[c] += sum[c];
  });
}

// ---------------------------------------------------------------- LayerNorm

template <class T>
void layer_norm_forward(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, int64_t rows, int64_t C,
                        double eps) {
  const T tc = static_cast<T>(C);
  const T teps = static_cast<T>(eps);
#pragma omp parallel for schedule(static) if (run_parallel(rows * C))
  for (int64_t r = 0; r < rows; ++r) {
    const T* __restrict__ xr = x + r * C;  // [C]
    T* __restrict__ yr = y + r * C;        // [C]
    const T m = lane_sum<T>(C, [=](int64_t c) { return xr[c]; }) / tc;
    const T var = lane_sum<T>(C, [=](int64_t c) { return (xr[c] - m) * (xr[c] - m); }) / tc;
    const T rs = T(1) / std::sqrt(var + teps);
    mean[r] = m;
    rstd[r] = rs;
    if (b) {  // fmadd written out (core/cpu/fast_math.h): the device kernel's bits
      for (int64_t c = 0; c < C; ++c) yr[c] = fmadd((xr[c] - m) * rs, w[c], b[c]);
    } else {
      for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] - m) * rs * w[c];
    }
  }
}

// xh = (x - mean) s, g = dy w:  dx = s (g - mean(g) - xh mean(g xh)) ; dw = sum dy xh ; db = sum dy
template <class T>
void layer_norm_backward(const T* dy, const T* x, const T* w, const T* mean, const T* rstd, T* dx, T* dw, T* db,
                         int64_t rows, int64_t C) {
  if (!dx && !dw && !db) return;
  const T inv_c = T(1) / static_cast<T>(C);
  // Partial layout per chunk: [dw (C) if dw][db (C) if db].
  const int64_t off_db = dw ? C : 0;
  const int64_t width = (dw ? C : 0) + (db ? C : 0);
  const auto body = [=](int64_t r0, int64_t r1, T* __restrict__ part) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* __restrict__ dyr = dy + r * C;
      const T* __restrict__ xr = x + r * C;
      const T m = mean[r], rs = rstd[r];
      if (dx) {
        T* __restrict__ dxr = dx + r * C;
        const T mg = lane_sum<T>(C, [=](int64_t c) { return dyr[c] * w[c]; }) * inv_c;
        const T mgx = lane_sum<T>(C, [=](int64_t c) { return dyr[c] * w[c] * ((xr[c] - m) * rs); }) * inv_c;
        for (int64_t c = 0; c < C; ++c) {  // fmadds written out, as the device kernel
          const T xh = (xr[c] - m) * rs;
          dxr[c] = fmadd(rs, fmadd(-xh, mgx, fmadd(dyr[c], w[c], -mg)), dxr[c]);
        }
      }
      if (dw) {
        T* __restrict__ pw = part;
        for (int64_t c = 0; c < C; ++c) pw[c] = fmadd(dyr[c], (xr[c] - m) * rs, pw[c]);
      }
      if (db) {
        T* __restrict__ pb = part + off_db;
        for (int64_t c = 0; c < C; ++c) pb[c] += dyr[c];
      }
    }
  };
  chunked_rows<T>(rows, C, width, body, [=](const T* sum) {
    if (dw)
      for (int64_t c = 0; c < C; ++c) dw[c] += sum[c];
    if (db)
      for (int64_t c = 0; c < C; ++c) db[c] += sum[off_db + c];
  });
}

#define PTRAIN_INSTANTIATE_NORM(T)                                                                            \
  template void rms_norm_forward<T>(const T*, const T*, T*, T*, int64_t, int64_t, double);                    \
  template void rms_norm_backward<T>(const T*, const T*, const T*, const T*, T*, T*, int64_t, int64_t);       \
  template void layer_norm_forward<T>(const T*, const T*, const T*, T*, T*, T*, int64_t, int64_t, double);    \
  template void layer_norm_backward<T>(const T*, const T*, const T*, const T*, const T*, T*, T*, T*, int64_t, \
                                       int64_t);
PTRAIN_INSTANTIATE_NORM(float)
PTRAIN_INSTANTIATE_NORM(double)
#undef PTRAIN_INSTANTIATE_NORM

}  // namespace ptrain::cpu
