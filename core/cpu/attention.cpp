// core/cpu/attention.cpp — causal grouped-query attention over the BLAS gemm.
//
// Shapes: q, out, dout, dq [B, Tn, Hq, D]; k, v, dk, dv [B, Tn, Hkv, D];
//         probs [B, Hq, Tn, Tn] (saved softmax, exact zeros above the diagonal).
// q head h reads kv head h / (Hq / Hkv); scale = 1 / sqrt(D).
// Invariants:
//  * A head's [Tn, D] matrix is addressed inside the [B, Tn, H, D] layout with row stride
//    H * D, so gemm reads q/k/v and writes out/dq/dk/dv in place: no transposing copies.
//  * Causality is exploited by row blocks of kRowBlock queries: rows [r0, r1) only touch keys
//    [0, r1), so about half of the square products is skipped for long sequences.
//  * Softmax is row-wise with max subtraction, in the scalar type T (fp32 for float) with
//    kLanes interleaved accumulators (fixed order) and a vectorised branch-free exp for float.
//  * Backward accumulates (+=); nullptr gradients are skipped. Threads take whole
//    (batch, kv head) pairs, so no two threads write the same dk/dv; inside a pair the q heads
//    of the group and the row blocks are added in a fixed order (per q head: all of dv's row
//    blocks, then dq's and dk's): dq/dk/dv are bit-identical for any OMP thread count, and
//    dk, dv may alias (k and v one tensor). Each thread owns one dP/dS scratch buffer per call.
//  * Intermediate rounding (`store`, `dk_store`, `dv_store`; float only): f32 (the default)
//    keeps every intermediate in T, bit-for-bit the kernel before the parameter existed (also
//    f64), except where dk and dv alias (their sum's order is now dv's blocks first).
//    bf16 / f16 round exactly where the device attention (core/cuda/attention.h) stores in
//    its dtype (Hugging Face eager semantics), and the softmax rows are summed in the same
//    order with the same exp (core/cuda/causal_softmax.cu), so in the emulated build (the
//    same BLAS for the GEMMs) the two are bit-identical:
//      forward:  S = scale · q kᵀ in fp32 (alpha = scale: BLAS multiplies the fp32 dot product
//                by alpha once, as the device's softmax does), P = softmax(S) in fp32 and
//                rounded to `store` (saved so, and read so by out = P v);
//      backward: dP = dO vᵀ in fp32 (not rounded); dS = (P ⊙ (dP − rowsum(dP ⊙ P))) · scale
//                rounded to `store` (the scale folded in before the rounding, then dq += dS k
//                and dk += dSᵀ q with alpha 1); dk / dv: the [Tn, D] slice of a (b, kv head)
//                is rounded to dk_store / dv_store after each group member has added all its
//                row blocks (the device's one beta = 1 GEMM per member); dq is not rounded
//                here (one contribution per element: the caller rounds once).
//    f32 / f64 fold the scale into dS the same way (not rounded), then dq / dk with alpha 1.
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/cpu/fast_math.h"
#include "core/cpu/kernels.h"
#include "core/dtype.h"
#include "core/error.h"

namespace ptrain::cpu {

namespace {

/// Below this much work (multiply-adds) a kernel runs on the calling thread.
constexpr int64_t kParallelMin = 32768;
/// Interleaved accumulators in a row reduction (one AVX-512 vector of floats).
constexpr int kLanes = 16;
/// Query rows per causal block.
#ifndef KB_BLOCK
#define KB_BLOCK 64
#endif
constexpr int64_t kRowBlock = KB_BLOCK;

bool run_parallel(int64_t work) { return work >= kParallelMin && omp_get_max_threads() > 1 && !omp_in_parallel(); }

/// exp of a softmax argument: core/cpu/fast_math.h's exp_poly (the device's cpu_exp).
template <class T> inline T exp_nonpos(T x) { return exp_poly(x); }

/// dst[d * ld_dst + j] = src[j * ld_src + d] for j < rows, d < D: a [rows, D] slice transposed,
/// so that gemm multiplies by it untransposed (OpenBLAS is markedly faster on NN than on NT
/// products when the inner dimension is a small head dim).
template <class T>
[[gnu::noinline]] void transpose_to(const T* __restrict__ src, int64_t ld_src, T* __restrict__ dst, int64_t ld_dst, int64_t rows,
                  int64_t D) {
  for (int64_t d = 0; d < D; ++d)
    for (int64_t j = 0; j < rows; ++j) dst[d * ld_dst + j] = src[j * ld_src + d];
}

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

/// Causal softmax of one score row in place: s[0, n) <- softmax(s[0, n)) (max subtracted,
/// multiplied by 1/sum as torch does), s[n, width) <- 0. Entries in [n, width) must be finite
/// (computed, masked scores): the row is processed in whole vectors of kLanes up to
/// round_up(n, kLanes) with a select instead of a scalar tail, so the exp stays vectorised.
/// The sum uses kLanes interleaved accumulators in a fixed order.
template <class T>
void causal_softmax_row(T* __restrict__ s, int64_t n, int64_t width) {
  const int64_t w = std::min(width, (n + kLanes - 1) / kLanes * kLanes);
  const int64_t wv = w / kLanes * kLanes;  // whole vectors; [wv, w) only when width % kLanes != 0
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  T mx[kLanes];
  for (int l = 0; l < kLanes; ++l) mx[l] = kNegInf;
  for (int64_t i = 0; i < wv; i += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const T v = i + l < n ? s[i + l] : kNegInf;
      mx[l] = v > mx[l] ? v : mx[l];
    }
  for (int l = 0; l < 8; ++l) mx[l] = mx[l + 8] > mx[l] ? mx[l + 8] : mx[l];
  for (int l = 0; l < 4; ++l) mx[l] = mx[l + 4] > mx[l] ? mx[l + 4] : mx[l];
  for (int l = 0; l < 2; ++l) mx[l] = mx[l + 2] > mx[l] ? mx[l + 2] : mx[l];
  mx[0] = mx[1] > mx[0] ? mx[1] : mx[0];
  T m = mx[0];
  for (int64_t j = wv; j < n; ++j) m = s[j] > m ? s[j] : m;

  T acc[kLanes] = {};
  for (int64_t i = 0; i < wv; i += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const T e = i + l < n ? exp_nonpos(s[i + l] - m) : T(0);
      s[i + l] = e;
      acc[l] += e;
    }
  combine_lanes(acc);
  T sum = acc[0];
  for (int64_t j = wv; j < w; ++j) {
    const T e = j < n ? exp_nonpos(s[j] - m) : T(0);
    s[j] = e;
    sum += e;
  }
  const T inv = T(1) / sum;
  for (int64_t j = 0; j < w; ++j) s[j] *= inv;
  for (int64_t j = w; j < width; ++j) s[j] = T(0);
}

/// Softmax backward of one row in place over [0, n): ds <- p * (ds - sum_j ds_j p_j), where ds
/// holds dP on entry. p is zero above the diagonal, so running over the whole computed width
/// gives zeros there without a mask.
template <class T>
void softmax_backward_row(T* __restrict__ ds, const T* __restrict__ p, int64_t n) {
  // lane_sum's order with the multiply-adds written out (the device kernel's, see fmadd)
  T acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] = fmadd(ds[i + l], p[i + l], acc[l]);
  combine_lanes(acc);
  T tail = T(0);
  for (; i < n; ++i) tail = fmadd(ds[i], p[i], tail);
  const T dot = acc[0] + tail;
  for (int64_t j = 0; j < n; ++j) ds[j] = p[j] * (ds[j] - dot);
}

void check_heads(const char* what, int64_t Hq, int64_t Hkv, int64_t D) {
  PT_CHECK(Hkv > 0 && Hq > 0 && Hq % Hkv == 0, "{}: q heads Hq={} must be a positive multiple of kv heads Hkv={}",
           what, Hq, Hkv);
  PT_CHECK(D > 0, "{}: head dim D={} must be positive", what, D);
}

/// Whether `store` asks for intermediate rounding, for scalar type T: bf16 / f16 for float;
/// f32 / f64 never round (a double kernel accepts only those).
template <class T>
bool rounds_to(const char* what, DType store) {
  PT_CHECK(is_float(store), "{}: store dtype must be a float type, got {}", what, dtype_name(store));
  if constexpr (std::is_same_v<T, float>) {
    return is_low_precision(store);
  } else {
    PT_CHECK(!is_low_precision(store), "{}: the double kernel cannot round to {} (only float can)", what,
             dtype_name(store));
    return false;
  }
}

/// Rounds x[r * ld + c] (r < rows, c < cols) to `store`'s grid (float only; callers check
/// rounds_to first).
template <class T>
void round_rows(T* x, int64_t rows, int64_t cols, int64_t ld, DType store) {
  if constexpr (std::is_same_v<T, float>) {
    if (store == DType::bf16) {
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) x[r * ld + c] = round_bf16(x[r * ld + c]);
    } else {
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) x[r * ld + c] = round_f16(x[r * ld + c]);
    }
  } else {
    (void)x, (void)rows, (void)cols, (void)ld, (void)store;
  }
}

}  // namespace

template <class T>
void attention_forward(const T* q, const T* k, const T* v, T* out, T* probs, int64_t B, int64_t Tn, int64_t Hq,
                       int64_t Hkv, int64_t D, DType store) {
  check_heads("attention_forward", Hq, Hkv, D);
  const bool round_p = rounds_to<T>("attention_forward", store);
  if (B == 0 || Tn == 0) return;
  const int64_t G = Hq / Hkv;
  const int64_t ldq = Hq * D, ldkv = Hkv * D;
  const T scale = T(1) / std::sqrt(static_cast<T>(D));
#pragma omp parallel if (run_parallel(B * Hq * Tn * Tn * D))
  {
    std::vector<T> kt(static_cast<size_t>(D * Tn));  // K^T [D, Tn] of the current (b, kv head)
#pragma omp for schedule(static)
    for (int64_t pair = 0; pair < B * Hkv; ++pair) {
      const int64_t b = pair / Hkv, hk = pair % Hkv;
      const T* kb = k + b * Tn * ldkv + hk * D;  // [Tn, D] with row stride ldkv
      const T* vb = v + b * Tn * ldkv + hk * D;  // [Tn, D] with row stride ldkv
      transpose_to(kb, ldkv, kt.data(), Tn, Tn, D);
      for (int64_t g = 0; g < G; ++g) {
        const int64_t h = hk * G + g;
        const T* qb = q + b * Tn * ldq + h * D;  // [Tn, D] with row stride ldq
        T* ob = out + b * Tn * ldq + h * D;      // [Tn, D] with row stride ldq
        T* P = probs + (b * Hq + h) * Tn * Tn;   // [Tn, Tn]
        for (int64_t r0 = 0; r0 < Tn; r0 += kRowBlock) {
          const int64_t r1 = std::min(Tn, r0 + kRowBlock), rows = r1 - r0;
          T* Pb = P + r0 * Tn;  // [rows, Tn]
          // S[r0:r1, 0:r1] = scale * Q[r0:r1] K^T[:, 0:r1]
          gemm<T>(false, false, rows, r1, D, scale, qb + r0 * ldq, ldq, kt.data(), Tn, T(0), Pb, Tn);
          for (int64_t t = r0; t < r1; ++t) causal_softmax_row(P + t * Tn, t + 1, r1);
          // P saved and multiplied in `store` (zeros above the diagonal stay exact zeros)
          if (round_p) round_rows(Pb, rows, r1, Tn, store);
          if (r1 < Tn)
            for (int64_t t = r0; t < r1; ++t) std::fill(P + t * Tn + r1, P + (t + 1) * Tn, T(0));
          // O[r0:r1] = P[r0:r1, 0:r1] V[0:r1]
          gemm<T>(false, false, rows, D, r1, T(1), Pb, Tn, vb, ldkv, T(0), ob + r0 * ldq, ldq);
        }
      }
    }
  }
}

// dV += P^T dO ; dP = dO V^T ; dS = P ⊙ (dP - rowsum(dP ⊙ P)) ; dQ += scale dS K ; dK += scale dS^T Q
// (in bf16 / f16 `store`: dS = round(scale P ⊙ (...)), dQ += dS K, dK += dS^T Q; see the header)
template <class T>
void attention_backward(const T* dout, const T* q, const T* k, const T* v, const T* probs, T* dq, T* dk, T* dv,
                        int64_t B, int64_t Tn, int64_t Hq, int64_t Hkv, int64_t D, DType store, DType dk_store,
                        DType dv_store) {
  check_heads("attention_backward", Hq, Hkv, D);
  const bool round_ds = rounds_to<T>("attention_backward", store);
  const bool round_dk = rounds_to<T>("attention_backward", dk_store) && dk;
  const bool round_dv = rounds_to<T>("attention_backward", dv_store) && dv;
  if (B == 0 || Tn == 0 || (!dq && !dk && !dv)) return;
  const int64_t G = Hq / Hkv;
  const int64_t ldq = Hq * D, ldkv = Hkv * D;
  const T scale = T(1) / std::sqrt(static_cast<T>(D));
  const T gemm_scale = T(1);  // dS holds the scale (as the device's kernel stores it)
  const bool need_ds = dq || dk;
  const int64_t block = std::min(Tn, kRowBlock);
#pragma omp parallel if (run_parallel(2 * B * Hq * Tn * Tn * D))
  {
    std::vector<T> scratch(need_ds ? static_cast<size_t>(block * Tn) : 0);  // dP/dS [block, Tn]
    std::vector<T> vt(need_ds ? static_cast<size_t>(D * Tn) : 0);         // V^T [D, Tn]
#pragma omp for schedule(static)
    for (int64_t pair = 0; pair < B * Hkv; ++pair) {
      const int64_t b = pair / Hkv, hk = pair % Hkv;
      const T* kb = k + b * Tn * ldkv + hk * D;  // [Tn, D] with row stride ldkv
      const T* vb = v + b * Tn * ldkv + hk * D;
      T* dkb = dk ? dk + b * Tn * ldkv + hk * D : nullptr;
      T* dvb = dv ? dv + b * Tn * ldkv + hk * D : nullptr;
      if (need_ds) transpose_to(vb, ldkv, vt.data(), Tn, Tn, D);
      for (int64_t g = 0; g < G; ++g) {
        const int64_t h = hk * G + g;
        const T* qb = q + b * Tn * ldq + h * D;  // [Tn, D] with row stride ldq
        const T* dob = dout + b * Tn * ldq + h * D;
        T* dqb = dq ? dq + b * Tn * ldq + h * D : nullptr;
        const T* P = probs + (b * Hq + h) * Tn * Tn;  // [Tn, Tn]
        // dv's row blocks complete (and rounded) before dk's, as the device's GEMMs: the same
        // result whether or not dk and dv alias (k and v one tensor).
        if (dvb) {
          for (int64_t r0 = 0; r0 < Tn; r0 += kRowBlock) {
            const int64_t r1 = std::min(Tn, r0 + kRowBlock), rows = r1 - r0;
            // dV[0:r1] += P[r0:r1, 0:r1]^T dO[r0:r1]
            gemm<T>(true, false, r1, D, rows, T(1), P + r0 * Tn, Tn, dob + r0 * ldq, ldq, T(1), dvb, ldkv);
          }
          if (round_dv) round_rows(dvb, Tn, D, ldkv, dv_store);  // once per group member
        }
        if (!need_ds) continue;
        for (int64_t r0 = 0; r0 < Tn; r0 += kRowBlock) {
          const int64_t r1 = std::min(Tn, r0 + kRowBlock), rows = r1 - r0;
          T* dS = scratch.data();  // [rows, r1] with row stride Tn
          // dP[r0:r1, 0:r1] = dO[r0:r1] V^T[:, 0:r1], then dS in place
          gemm<T>(false, false, rows, r1, D, T(1), dob + r0 * ldq, ldq, vt.data(), Tn, T(0), dS, Tn);
          for (int64_t t = r0; t < r1; ++t) softmax_backward_row(dS + (t - r0) * Tn, P + t * Tn, r1);
          // dS = dS · scale (rounded in bf16 / f16), as the device's softmax-backward kernel stores it
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < r1; ++j) dS[i * Tn + j] *= scale;
          if (round_ds) round_rows(dS, rows, r1, Tn, store);
          // dQ[r0:r1] += scale dS K[0:r1] ; dK[0:r1] += scale dS^T Q[r0:r1] (scale 1 when folded)
          if (dqb) gemm<T>(false, false, rows, D, r1, gemm_scale, dS, Tn, kb, ldkv, T(1), dqb + r0 * ldq, ldq);
          if (dkb) gemm<T>(true, false, r1, D, rows, gemm_scale, dS, Tn, qb + r0 * ldq, ldq, T(1), dkb, ldkv);
        }
        if (round_dk) round_rows(dkb, Tn, D, ldkv, dk_store);  // once per group member
      }
    }
  }
}

#define PTRAIN_INSTANTIATE_ATTENTION(T)                                                                       \
  template void attention_forward<T>(const T*, const T*, const T*, T*, T*, int64_t, int64_t, int64_t, int64_t, \
                                     int64_t, DType);                                                         \
  template void attention_backward<T>(const T*, const T*, const T*, const T*, const T*, T*, T*, T*, int64_t,  \
                                      int64_t, int64_t, int64_t, int64_t, DType, DType, DType);
PTRAIN_INSTANTIATE_ATTENTION(float)
PTRAIN_INSTANTIATE_ATTENTION(double)
#undef PTRAIN_INSTANTIATE_ATTENTION

}  // namespace ptrain::cpu
