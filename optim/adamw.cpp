// optim/adamw.cpp — the fused AdamW update (formula and float order in adamw.h).
//
// One pass per element reads p, g, m, v and writes p, m, v. All parameters are cut into
// fixed chunks (optim/chunks.h) and one OpenMP loop runs over all chunks of all parameters,
// so many small tensors and a few huge ones both keep every thread busy.
//
// Float order: the library is built with -ffp-contract=off, so the compiler fuses nothing by
// itself; the two multiply-adds that PyTorch's AVX2 CPU kernels fuse (lerp_ through
// at::vec::fmadd, addcmul_ contracted by GCC) are written as fmadd() below and are single
// fma instructions when the target has FMA (-march=native on any recent x86), plain
// multiply-add otherwise. With FMA the result is bit-identical to the same op sequence run by
// Debian's torch 1.13 (tests/optim/test_adamw.cpp, AdamW.MatchesTorch).
#include "optim/adamw.h"

#include <cmath>
#include <set>

#include "core/cpu/fast_math.h"
#include "core/rng.h"
#include "optim/chunks.h"

namespace ptrain::optim {

namespace {

// The float scalars of one update, converted from double where torch converts them.
struct Scalars {
  float decay;     // 1 - lr*wd              (param.mul_)
  float w1;        // 1 - beta1              (lerp_ weight)
  float w1_m1;     // w1 - 1 in float        (lerp_'s large-weight coefficient)
  bool w1_small;   // |w1| < 0.5             (lerp_ branch choice)
  float b2;        // beta2                  (exp_avg_sq.mul_)
  float c2;        // 1 - beta2              (addcmul_ value)
  float bc2_sqrt;  // sqrt(1 - beta2^t)      (true division)
  float eps;       // eps                    (add_)
  float neg_step;  // -lr / (1 - beta1^t)    (addcdiv_ value)
};

// a*b + c with one rounding, as at::vec::fmadd, where the target has FMA (core/cpu/fast_math.h);
// the library is compiled with -ffp-contract=off, so these are the only fused operations.
using cpu::fmadd;

template <bool kDecay>
void adamw_chunk(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v,
                 int64_t n, const Scalars s, const float gs) {
  for (int64_t i = 0; i < n; ++i) {
    float pi = p[i];
    if constexpr (kDecay) pi = pi * s.decay;           // param.mul_(1 - lr*wd)
    const float gi = g[i] * gs;                        // clip / unscale, folded (x * 1.0f == x)
    const float mi = m[i];
    // exp_avg.lerp_(grad, w): at::lerp_vec = fmadd(small ? w : w-1, end-start, small ? start : end)
    const float m1 = s.w1_small ? fmadd(s.w1, gi - mi, mi) : fmadd(s.w1_m1, gi - mi, gi);
    // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value): self + (value*t1)*t2, which torch's
    // GCC/AVX2 build contracts to one fma (measured against Debian's torch: bit-identical)
    const float v1 = fmadd(s.c2 * gi, gi, v[i] * s.b2);
    const float d = std::sqrt(v1) / s.bc2_sqrt + s.eps;  // (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)
    pi = pi + s.neg_step * m1 / d;                       // addcdiv_: self + (value*t1)/t2
    p[i] = pi;
    m[i] = m1;
    v[i] = v1;
  }
}

constexpr int64_t kStepChunk = 16384;
static_assert(kStepChunk % kQuantBlock == 0, "a step chunk covers whole quantisation blocks");

Scalars scalars(const AdamWOptions& o, double lr, int64_t step) {
  const double t = static_cast<double>(step);
  const double bias_correction1 = 1.0 - std::pow(o.beta1, t);
  const double bias_correction2 = 1.0 - std::pow(o.beta2, t);
  const double step_size = lr / bias_correction1;
  Scalars s;
  s.decay = static_cast<float>(1.0 - lr * o.weight_decay);
  s.w1 = static_cast<float>(1.0 - o.beta1);
  s.w1_m1 = s.w1 - 1.0f;
  s.w1_small = std::abs(s.w1) < 0.5f;
  s.b2 = static_cast<float>(o.beta2);
  s.c2 = static_cast<float>(1.0 - o.beta2);
  s.bc2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  s.eps = static_cast<float>(o.eps);
  s.neg_step = static_cast<float>(-step_size);
  return s;
}

}  // namespace

AdamW::AdamW(AdamWOptions options, std::vector<ParamRef> params) : opt_(options), params_(std::move(params)) {
  PT_USER_CHECK(opt_.beta1 >= 0 && opt_.beta1 < 1, "optim.betas[0] = {} must be in [0, 1)", opt_.beta1);
  PT_USER_CHECK(opt_.beta2 >= 0 && opt_.beta2 < 1, "optim.betas[1] = {} must be in [0, 1)", opt_.beta2);
  PT_USER_CHECK(opt_.eps >= 0 && std::isfinite(opt_.eps), "optim.eps = {} must be a finite number >= 0", opt_.eps);
  PT_USER_CHECK(opt_.weight_decay >= 0 && std::isfinite(opt_.weight_decay),
                "optim.weight_decay = {} must be a finite number >= 0", opt_.weight_decay);
  device_ = check_param_refs(params_);
  PT_USER_CHECK(device_ == Device::cpu || opt_.state == StateFormat::fp32,
                "optim.state: a compact state (bf16-sr, 8bit) is updated by the CPU AdamW; the device kernels take "
                "fp32 state only. HINT: set train.offload.optimizer: true (the state then lives in host memory), or "
                "optim.state: fp32");
  for (const ParamRef& p : params_)
    PT_CHECK(opt_.state != StateFormat::fp32 || p.param.dtype() == DType::f32,
             "parameter '{}': an fp32 optimizer state needs f32 master weights, got {}", p.name,
             dtype_name(p.param.dtype()));
  if (device_ == Device::cuda) table_ = std::make_unique<detail::DeviceTable>();
  std::set<const TensorImpl*> seen;
  for (const ParamRef& p : params_)
    PT_CHECK(seen.insert(p.param.id()).second, "parameter '{}' is listed twice in the optimizer", p.name);
  decay_.resize(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) decay_[i] = params_[i].decay.value_or(params_[i].param.ndim() == 2);
  m_.resize(params_.size());
  v_.resize(params_.size());
  quantized_.resize(params_.size());
  qm_.resize(params_.size());
  qv_.resize(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    quantized_[i] = opt_.state == StateFormat::int8 && params_[i].param.numel() >= kQuantMinElements;
    name_hash_.push_back(stable_hash(params_[i].name));
  }
}

int64_t AdamW::state_bytes(size_t i) const {
  const int64_t n = params_.at(i).param.numel();
  const int64_t master = opt_.state == StateFormat::fp32 && params_[i].model.defined() ? 4 * n : 0;
  if (quantized_[i]) return master + static_cast<int64_t>(qm_[i].bytes() + qv_[i].bytes());
  return master + 8 * n;
}

void AdamW::ensure_state(size_t i) {
  PT_CHECK(i < params_.size(), "optimizer state index {} out of range ({} parameters)", i, params_.size());
  if (quantized_[i]) {
    if (qm_[i].numel() != params_[i].param.numel()) {
      qm_[i].resize(params_[i].param.numel());
      qv_[i].resize(params_[i].param.numel());
    }
    return;
  }
  if (!m_[i].defined()) m_[i] = Tensor::zeros(params_[i].param.shape(), DType::f32, device_);
  if (!v_[i].defined()) v_[i] = Tensor::zeros(params_[i].param.shape(), DType::f32, device_);
}

namespace {
Tensor decoded(const Quantized& q, const QuantMap& map, const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::f32);
  float* out = t.data<float>();
  const int64_t blocks = (q.numel() + kQuantBlock - 1) / kQuantBlock;
  for (int64_t b = 0; b < blocks; ++b) q.decode_block(map, b, out + b * kQuantBlock);
  return t;
}
void encode_all(Quantized& q, const QuantMap& map, const Tensor& src) {
  Tensor f = src.dtype() == DType::f32 ? src : src.to(DType::f32);
  const float* in = f.data<float>();
  const int64_t blocks = (q.numel() + kQuantBlock - 1) / kQuantBlock;
  for (int64_t b = 0; b < blocks; ++b) q.encode_block(map, b, in + b * kQuantBlock);
}
}  // namespace

Tensor AdamW::exp_avg(size_t i) {
  ensure_state(i);
  if (quantized_[i]) return decoded(qm_[i], signed_map(), params_[i].param.shape());
  return m_[i];
}

Tensor AdamW::exp_avg_sq(size_t i) {
  ensure_state(i);
  if (quantized_[i]) {  // stored as sqrt(v): squared back (sqrt(x*x) == x exactly, so set_state round-trips)
    Tensor t = decoded(qv_[i], unsigned_map(), params_[i].param.shape());
    float* d = t.data<float>();
    for (int64_t k = 0; k < t.numel(); ++k) d[k] = d[k] * d[k];
    return t;
  }
  return v_[i];
}

void AdamW::set_state(size_t i, Tensor m, Tensor v) {
  PT_CHECK(i < params_.size(), "optimizer state index {} out of range ({} parameters)", i, params_.size());
  const ParamRef& p = params_[i];
  for (const Tensor* t : {&m, &v}) {
    PT_CHECK(t->defined() && is_float(t->dtype()) && t->dtype() != DType::f64,
             "optimizer state of '{}' must be a defined float tensor", p.name);
    PT_CHECK(t->shape() == p.param.shape(), "optimizer state of '{}' has shape {}, the parameter {}", p.name,
             shape_str(t->shape()), shape_str(p.param.shape()));
  }
  if (quantized_[i]) {
    ensure_state(i);
    PT_CHECK(m.device() == Device::cpu && v.device() == Device::cpu, "optimizer state of '{}': CPU tensors expected",
             p.name);
    encode_all(qm_[i], signed_map(), m);
    Tensor r = v.dtype() == DType::f32 ? v.clone() : v.to(DType::f32);
    float* d = r.data<float>();
    for (int64_t k = 0; k < r.numel(); ++k) d[k] = std::sqrt(d[k]);
    encode_all(qv_[i], unsigned_map(), r);
    return;
  }
  if (device_ == Device::cuda) {
    ensure_state(i);  // the table keeps pointing at the same device tensors
    m_[i].copy_from(m);
    v_[i].copy_from(v);
    return;
  }
  PT_CHECK(m.device() == Device::cpu && v.device() == Device::cpu, "optimizer state of '{}': CPU tensors expected",
           p.name);
  m_[i] = m.dtype() == DType::f32 ? m : m.to(DType::f32);
  v_[i] = v.dtype() == DType::f32 ? v : v.to(DType::f32);
}

void AdamW::set_step_count(int64_t t) {
  PT_CHECK(t >= 0, "Adam step count {} must be >= 0", t);
  step_ = t;
}

void AdamW::step(double lr, double grad_scale) {
  PT_CHECK(std::isfinite(lr), "learning rate {} is not finite", lr);
  PT_CHECK(std::isfinite(grad_scale), "gradient scale {} is not finite", grad_scale);
  check_param_refs(params_);
  ++step_;
  if (device_ == Device::cpu) return update(lr, grad_scale, 0, params_.size());
  for (size_t i = 0; i < params_.size(); ++i) ensure_state(i);
  table_->adamw(params_, m_, v_, decay_, lr, opt_.beta1, opt_.beta2, opt_.eps, opt_.weight_decay, step_, grad_scale);
}

void AdamW::begin_step() {
  PT_CHECK(device_ == Device::cpu, "AdamW::begin_step/update are the CPU path's (the device updates all at once)");
  ++step_;
}

namespace {
/// The chunks of parameters [first, last) (each parameter's chunks depend only on its size).
std::vector<detail::Chunk> chunks_of(const std::vector<ParamRef>& params, size_t first, size_t last, int64_t size,
                                     int64_t& total) {
  std::vector<detail::Chunk> out;
  total = 0;
  for (size_t i = first; i < last; ++i) {
    const int64_t n = params[i].param.numel();
    total += n;
    for (int64_t b = 0; b < n; b += size) out.push_back({i, b, b + size < n ? b + size : n});
  }
  return out;
}
}  // namespace

void AdamW::update(double lr, double grad_scale, size_t first, size_t last) {
  PT_CHECK(std::isfinite(lr) && std::isfinite(grad_scale), "learning rate {} / gradient scale {}", lr, grad_scale);
  PT_CHECK(device_ == Device::cpu, "AdamW::update is the CPU path's");
  PT_CHECK(first <= last && last <= params_.size(), "AdamW::update [{}, {}) of {} parameters", first, last,
           params_.size());
  PT_CHECK(step_ > 0, "AdamW::update before begin_step()");
  for (size_t i = first; i < last; ++i) ensure_state(i);
  if (opt_.state != StateFormat::fp32) return update_compact(lr, grad_scale, first, last);
  const Scalars s = scalars(opt_, lr, step_);
  int64_t total = 0;
  const std::vector<detail::Chunk> chunks = chunks_of(params_, first, last, kStepChunk, total);
  const int64_t nc = static_cast<int64_t>(chunks.size());
#pragma omp parallel for schedule(static) if (total > detail::kParallelMin)
  for (int64_t k = 0; k < nc; ++k) {
    const detail::Chunk& c = chunks[k];
    const size_t i = c.param;
    float* p = params_[i].param.data<float>() + c.begin;
    const float* g = params_[i].grad.data<float>() + c.begin;
    float* m = m_[i].data<float>() + c.begin;
    float* v = v_[i].data<float>() + c.begin;
    const float gs = static_cast<float>(grad_scale);
    if (decay_[i] && opt_.weight_decay != 0.0)
      adamw_chunk<true>(p, g, m, v, c.end - c.begin, s, gs);
    else
      adamw_chunk<false>(p, g, m, v, c.end - c.begin, s, gs);
    if (const Tensor& md = params_[i].model; md.defined()) {  // the forward's copy, rounded once
      float* w = md.data<float>() + c.begin;
      std::copy_n(p, c.end - c.begin, w);
      round_to_dtype(w, c.end - c.begin, md.dtype());
    }
  }
}

// The compact states: the same f32 update per element (adamw_chunk, on a block's decoded
// copy), then the master stochastically rounded to bf16 and the moments stored back (8-bit:
// re-quantised per block). Blocks of kQuantBlock inside fixed chunks: thread-count independent.
void AdamW::update_compact(double lr, double grad_scale, size_t first, size_t last) {
  const Scalars s = scalars(opt_, lr, step_);
  int64_t total = 0;
  const std::vector<detail::Chunk> chunks = chunks_of(params_, first, last, kStepChunk, total);
  const int64_t nc = static_cast<int64_t>(chunks.size());
  const float gs = static_cast<float>(grad_scale);
#pragma omp parallel for schedule(static) if (total > detail::kParallelMin)
  for (int64_t k = 0; k < nc; ++k) {
    const detail::Chunk& c = chunks[k];
    const size_t i = c.param;
    const PhiloxKey key = make_key(opt_.seed ^ name_hash_[i], "adamw.stochastic_rounding", static_cast<uint64_t>(step_));
    float* p = params_[i].param.data<float>();
    const float* g = params_[i].grad.data<float>();
    const bool decay = decay_[i] && opt_.weight_decay != 0.0;
    float pb[kQuantBlock], mb[kQuantBlock], vb[kQuantBlock];
    for (int64_t b0 = c.begin; b0 < c.end; b0 += kQuantBlock) {
      const int64_t n = std::min(kQuantBlock, c.end - b0);
      std::copy_n(p + b0, n, pb);
      if (quantized_[i]) {
        qm_[i].decode_block(signed_map(), b0 / kQuantBlock, mb);
        qv_[i].decode_block(unsigned_map(), b0 / kQuantBlock, vb);  // sqrt(v) is stored
        for (int64_t e = 0; e < n; ++e) vb[e] = vb[e] * vb[e];
      } else {
        std::copy_n(m_[i].data<float>() + b0, n, mb);
        std::copy_n(v_[i].data<float>() + b0, n, vb);
      }
      if (decay)
        adamw_chunk<true>(pb, g + b0, mb, vb, n, s, gs);
      else
        adamw_chunk<false>(pb, g + b0, mb, vb, n, s, gs);
      stochastic_round_bf16_stream(key, static_cast<uint64_t>(b0), pb, p + b0, n);
      if (quantized_[i]) {
        qm_[i].encode_block(signed_map(), b0 / kQuantBlock, mb);
        for (int64_t e = 0; e < n; ++e) vb[e] = std::sqrt(vb[e]);
        qv_[i].encode_block(unsigned_map(), b0 / kQuantBlock, vb);
      } else {
        std::copy_n(mb, n, m_[i].data<float>() + b0);
        std::copy_n(vb, n, v_[i].data<float>() + b0);
      }
      if (const Tensor& md = params_[i].model; md.defined()) {  // a bf16 model copy: the master's values exactly
        float* w = md.data<float>() + b0;
        std::copy_n(p + b0, n, w);
        round_to_dtype(w, n, md.dtype());
      }
    }
  }
}

}  // namespace ptrain::optim
