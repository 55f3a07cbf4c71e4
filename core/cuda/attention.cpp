// core/cuda/attention.cpp — causal GQA attention on the device: strided-batched GEMMs (the GEMM
// layer, core/cuda/gemm.h) plus the fused causal-softmax kernels (core/cuda/causal_softmax.cu).
// The composition, launch counts and invariants are documented in core/cuda/attention.h.
//
// Addressing (elements; g = Hq / Hkv, q head h = j g + r uses kv head j):
//   q/out/dout/dq head h of batch b: base + b·T·Hq·D + h·D, rows of stride Hq·D;
//   k/v/dk/dv head j of batch b:     base + b·T·Hkv·D + j·D, rows of stride Hkv·D;
//   probs (b, h):                    probs + (b·Hq + h)·T·T, rows of stride T;
//   chunk scratch (b, j) of member r: scratch + (b·Hkv + j)·T·T, rows of stride T.
// Products whose output is a probs / scratch matrix are batched over the kv heads j (the
// matrices of one b are disjoint); products whose output is a head of out/dq/dk/dv are
// batched over b (heads of one row interleave, and the GEMM layer only accepts batches whose
// outputs it can prove disjoint).
// TF32: every GEMM of one call takes the process-wide allow_tf32() (core/cuda/gemm.h) read at
// the call's start; it changes fp32 products only (S = q kᵀ, P v and the backward's four).
#include "core/cuda/attention.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "core/cuda/gemm.h"
#include "core/error.h"

namespace ptrain::cuda {

namespace {

size_t elem_bytes(DType dt) { return dt == DType::f32 ? 4 : 2; }

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

void check_dt(const char* what, DType dt) {
  if (dt != DType::f32 && dt != DType::bf16 && dt != DType::f16)
    throw std::invalid_argument(std::string(what) + ": unsupported dtype " + std::string(dtype_name(dt)) +
                                " (the CUDA kernels take f32, bf16 or f16)");
}

void check_shape(const char* what, int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D) {
  PT_CHECK(B >= 0 && T >= 0, "{}: negative size B={} T={}", what, B, T);
  PT_CHECK(Hkv > 0 && Hq > 0 && Hq % Hkv == 0, "{}: q heads Hq={} must be a positive multiple of kv heads Hkv={}",
           what, Hq, Hkv);
  PT_CHECK(D > 0, "{}: head dim D={} must be positive", what, D);
  PT_CHECK(B <= INT32_MAX && Hkv <= INT32_MAX, "{}: B={} or Hkv={} exceeds a GEMM batch count (int32)", what, B, Hkv);
}

/// Elements of one chunk of [T, T] matrices: B·Hkv of them.
int64_t chunk_elems(int64_t B, int64_t T, int64_t Hkv) { return B * Hkv * T * T; }

/// 1/sqrt(D) computed as the CPU's float instantiation does (T(1) / std::sqrt(T(D))).
float softmax_scale(int64_t D) { return 1.0f / std::sqrt(static_cast<float>(D)); }

}  // namespace

size_t attention_forward_scratch_bytes(DType dt, int64_t B, int64_t T, int64_t Hq, int64_t Hkv) {
  (void)Hq;
  if (dt == DType::f32 || B <= 0 || T <= 0 || Hkv <= 0) return 0;
  return align256(static_cast<size_t>(chunk_elems(B, T, Hkv)) * sizeof(float));
}

size_t attention_backward_scratch_bytes(DType dt, int64_t B, int64_t T, int64_t Hq, int64_t Hkv) {
  (void)Hq;
  if (B <= 0 || T <= 0 || Hkv <= 0) return 0;
  const size_t n = static_cast<size_t>(chunk_elems(B, T, Hkv));
  const size_t dp = align256(n * sizeof(float));
  return dt == DType::f32 ? dp : dp + align256(n * elem_bytes(dt));
}

void attention_forward(const void* q, const void* k, const void* v, void* out, void* probs, int64_t B, int64_t T,
                       int64_t Hq, int64_t Hkv, int64_t D, DType dt, void* scratch, CUstream_st* stream) {
  check_dt("attention_forward", dt);
  check_shape("attention_forward", B, T, Hq, Hkv, D);
  if (B == 0 || T == 0) return;
  PT_CHECK(q && k && v && out && probs, "attention_forward: null q, k, v, out or probs");
  PT_CHECK(dt == DType::f32 || scratch,
           "attention_forward: {} needs {} bytes of scratch (attention_forward_scratch_bytes), got nullptr",
           dtype_name(dt), attention_forward_scratch_bytes(dt, B, T, Hq, Hkv));
  const int64_t G = Hq / Hkv, TT = T * T;
  const int64_t ldq = Hq * D, ldkv = Hkv * D;
  const size_t es = elem_bytes(dt);
  const bool tf32 = allow_tf32();  // the process-wide switch (core/cuda/gemm.h), read once per call
  const auto* qb = static_cast<const char*>(q);
  const auto* kb = static_cast<const char*>(k);
  const auto* vb = static_cast<const char*>(v);
  auto* ob = static_cast<char*>(out);
  auto* pb = static_cast<char*>(probs);
  const bool in_place = dt == DType::f32;  // scores computed in probs; else fp32 in scratch
  float* S = in_place ? nullptr : static_cast<float*>(scratch);

  for (int64_t r = 0; r < G; ++r) {
    // S(b, j) = q_{jG+r} · k_jᵀ: per b, batched over j.
    for (int64_t b = 0; b < B; ++b) {
      GemmDesc d;
      d.allow_tf32 = tf32;
      d.trans_b = true;  // k stored [T, D] = [N, K]
      d.M = T, d.N = T, d.K = D;
      d.ab_dtype = dt;
      d.c_dtype = in_place ? dt : DType::f32;
      d.lda = ldq, d.ldb = ldkv, d.ldc = T;
      d.batch = static_cast<int>(Hkv);
      d.stride_a = G * D, d.stride_b = D;
      const void* A = qb + static_cast<size_t>(b * T * ldq + r * D) * es;
      const void* Bm = kb + static_cast<size_t>(b * T * ldkv) * es;
      void* C;
      if (in_place) {
        C = pb + static_cast<size_t>((b * Hq + r) * TT) * es;
        d.stride_c = G * TT;
      } else {
        C = S + b * Hkv * TT;
        d.stride_c = TT;
      }
      gemm(d, 1.0f, A, Bm, 0.0f, C, nullptr, stream);
    }
    // P = causal softmax of S / sqrt(D), into probs (b, jG + r).
    float* src = in_place ? reinterpret_cast<float*>(pb) + r * TT : S;
    const int64_t s_so = in_place ? Hq * TT : Hkv * TT, s_si = in_place ? G * TT : TT;
    void* dst = pb + static_cast<size_t>(r * TT) * es;
    causal_softmax_forward(src, dst, B, Hkv, T, s_so, s_si, Hq * TT, G * TT, softmax_scale(D), dt, stream);
    // out_h = P_h · v_j: per j, batched over b.
    for (int64_t j = 0; j < Hkv; ++j) {
      const int64_t h = j * G + r;
      GemmDesc d;
      d.allow_tf32 = tf32;
      d.M = T, d.N = D, d.K = T;
      d.ab_dtype = d.c_dtype = dt;
      d.lda = T, d.ldb = ldkv, d.ldc = ldq;
      d.batch = static_cast<int>(B);
      d.stride_a = Hq * TT, d.stride_b = T * ldkv, d.stride_c = T * ldq;
      gemm(d, 1.0f, pb + static_cast<size_t>(h * TT) * es, vb + static_cast<size_t>(j * D) * es, 0.0f,
           ob + static_cast<size_t>(h * D) * es, nullptr, stream);
    }
  }
}

void attention_backward(const void* dout, const void* q, const void* k, const void* v, const void* probs, void* dq,
                        void* dk, void* dv, int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D, DType dt,
                        void* scratch, CUstream_st* stream) {
  check_dt("attention_backward", dt);
  check_shape("attention_backward", B, T, Hq, Hkv, D);
  if (B == 0 || T == 0 || (!dq && !dk && !dv)) return;
  const bool need_ds = dq || dk;
  PT_CHECK(dout && q && k && v && probs, "attention_backward: null dout, q, k, v or probs");
  PT_CHECK(!need_ds || scratch,
           "attention_backward: dq/dk need {} bytes of scratch (attention_backward_scratch_bytes), got nullptr",
           attention_backward_scratch_bytes(dt, B, T, Hq, Hkv));
  const int64_t G = Hq / Hkv, TT = T * T;
  const int64_t ldq = Hq * D, ldkv = Hkv * D;
  const size_t es = elem_bytes(dt);
  const bool tf32 = allow_tf32();  // the process-wide switch (core/cuda/gemm.h), read once per call
  const auto* dob = static_cast<const char*>(dout);
  const auto* qb = static_cast<const char*>(q);
  const auto* kb = static_cast<const char*>(k);
  const auto* vb = static_cast<const char*>(v);
  const auto* pb = static_cast<const char*>(probs);
  float* dP = static_cast<float*>(scratch);  // chunk [B, Hkv, T, T] fp32
  // dS in dt: in place over dP in f32, else the region after dP.
  char* dS = !need_ds ? nullptr
             : dt == DType::f32
                 ? static_cast<char*>(scratch)
                 : static_cast<char*>(scratch) + align256(static_cast<size_t>(chunk_elems(B, T, Hkv)) * sizeof(float));

  for (int64_t r = 0; r < G; ++r) {
    // dv_j += P_hᵀ · dout_h: per j, batched over b (r ascending: the group in head order).
    if (dv)
      for (int64_t j = 0; j < Hkv; ++j) {
        const int64_t h = j * G + r;
        GemmDesc d;
        d.allow_tf32 = tf32;
        d.trans_a = true;  // P stored [T(q), T(k)] = [K, M]
        d.M = T, d.N = D, d.K = T;
        d.ab_dtype = d.c_dtype = dt;
        d.lda = T, d.ldb = ldq, d.ldc = ldkv;
        d.batch = static_cast<int>(B);
        d.stride_a = Hq * TT, d.stride_b = T * ldq, d.stride_c = T * ldkv;
        gemm(d, 1.0f, pb + static_cast<size_t>(h * TT) * es, dob + static_cast<size_t>(h * D) * es, 1.0f,
             static_cast<char*>(dv) + static_cast<size_t>(j * D) * es, nullptr, stream);
      }
    if (!need_ds) continue;
    // dP(b, j) = dout_h · v_jᵀ (fp32): per b, batched over j.
    for (int64_t b = 0; b < B; ++b) {
      GemmDesc d;
      d.allow_tf32 = tf32;
      d.trans_b = true;  // v stored [T, D] = [N, K]
      d.M = T, d.N = T, d.K = D;
      d.ab_dtype = dt;
      d.c_dtype = DType::f32;
      d.lda = ldq, d.ldb = ldkv, d.ldc = T;
      d.batch = static_cast<int>(Hkv);
      d.stride_a = G * D, d.stride_b = D, d.stride_c = TT;
      gemm(d, 1.0f, dob + static_cast<size_t>(b * T * ldq + r * D) * es, vb + static_cast<size_t>(b * T * ldkv) * es,
           0.0f, dP + b * Hkv * TT, nullptr, stream);
    }
    // dS = P ⊙ (dP − rowsum(dP ⊙ P)) / sqrt(D), rounded once to dt.
    causal_softmax_backward(pb + static_cast<size_t>(r * TT) * es, dP, dS, B, Hkv, T, Hq * TT, G * TT, Hkv * TT, TT,
                            softmax_scale(D), dt, stream);
    for (int64_t j = 0; j < Hkv; ++j) {
      const int64_t h = j * G + r;
      const char* dSj = dS + static_cast<size_t>(j * TT) * es;
      // dq_h += dS_h · k_j: per j, batched over b.
      if (dq) {
        GemmDesc d;
        d.allow_tf32 = tf32;
        d.M = T, d.N = D, d.K = T;
        d.ab_dtype = d.c_dtype = dt;
        d.lda = T, d.ldb = ldkv, d.ldc = ldq;
        d.batch = static_cast<int>(B);
        d.stride_a = Hkv * TT, d.stride_b = T * ldkv, d.stride_c = T * ldq;
        gemm(d, 1.0f, dSj, kb + static_cast<size_t>(j * D) * es, 1.0f, static_cast<char*>(dq) + static_cast<size_t>(h * D) * es,
             nullptr, stream);
      }
      // dk_j += dS_hᵀ · q_h: per j, batched over b (r ascending: the group in head order).
      if (dk) {
        GemmDesc d;
        d.allow_tf32 = tf32;
        d.trans_a = true;  // dS stored [T(q), T(k)] = [K, M]
        d.M = T, d.N = D, d.K = T;
        d.ab_dtype = d.c_dtype = dt;
        d.lda = T, d.ldb = ldq, d.ldc = ldkv;
        d.batch = static_cast<int>(B);
        d.stride_a = Hkv * TT, d.stride_b = T * ldq, d.stride_c = T * ldkv;
        gemm(d, 1.0f, dSj, qb + static_cast<size_t>(h * D) * es, 1.0f, static_cast<char*>(dk) + static_cast<size_t>(j * D) * es,
             nullptr, stream);
      }
    }
  }
}

}  // namespace ptrain::cuda
