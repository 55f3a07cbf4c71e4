// core/cuda/adamw.cu — the fused multi-tensor AdamW step, and the upload of the multi-tensor
// descriptor table (core/cuda/optim_kernels.h) that it shares with core/cuda/grad_norm.cu.
//
// Shapes: for every tensor of the table, master, exp_avg, exp_avg_sq [numel] fp32; grad
// [numel] in G (float, __nv_bfloat16, __half); model [numel] in P (float, __nv_bfloat16,
// __half) or absent.
// Invariants:
//  * One block per chunk of kOptimChunk elements of one tensor (grid-strided over the
//    table's chunks); a block finds its tensor by binary search of the chunk offsets. Threads
//    stride the chunk (coalesced). Every element is read and written by exactly one thread:
//    no shared memory, no barrier, no atomic; the result is independent of the block order.
//  * The float operations are optim/adamw.cpp's, in its order, each rounded on its own
//    (__fmul_rn / __fadd_rn / __fsub_rn / __fdiv_rn / __fsqrt_rn, never contracted by nvcc),
//    with exactly the two multiply-adds it fuses written as __fmaf_rn: the master weights and
//    moments are bit-identical to AdamW::step on an FMA host (torch's AVX2 float order).
//  * The scalars are computed on the host in double and converted to float exactly where
//    optim/adamw.cpp converts them (Scalars below mirrors its struct field by field).
//  * g_used = to_f32(grad) * scale, one fp32 rounding (as optim::scale_grads in fp32, but
//    not rounded again to the grad dtype). The model copy is written once from the updated
//    master with round-to-nearest-even.
#include "core/cuda/runtime.h"

#include <cmath>
#include <string>
#include <vector>

#include "core/cuda/optim_kernels.h"
#include "core/cuda/optim_table.cuh"
#include "core/cuda/reduce.cuh"

namespace ptrain::cuda {

namespace {

using detail::OptimTensorDesc;
using kern::from_f32;
using kern::to_f32;

constexpr unsigned kAdamThreads = 256;  // threads per chunk block (16 elements each)

// The float scalars of one update, as optim/adamw.cpp's Scalars (plus the gradient scale).
struct Scalars {
  float decay;     // 1 - lr*wd              (param.mul_)
  float w1;        // 1 - beta1              (lerp_ weight)
  float w1_m1;     // w1 - 1 in float        (lerp_'s large-weight coefficient)
  int w1_small;    // |w1| < 0.5             (lerp_ branch choice)
  float b2;        // beta2                  (exp_avg_sq.mul_)
  float c2;        // 1 - beta2              (addcmul_ value)
  float bc2_sqrt;  // sqrt(1 - beta2^t)      (true division)
  float eps;       // eps                    (add_)
  float neg_step;  // -lr / (1 - beta1^t)    (addcdiv_ value)
  float scale;     // gradient scale         (g_used = g * scale)
  int decay_on;    // weight_decay != 0      (tensors with the decay flag decay)
};

template <class G, class P>
__global__ void adamw_multi_tensor_kernel(const OptimTensorDesc* __restrict__ table, int64_t ntensors,
                                          int64_t nchunks, Scalars s) {
  for (int64_t c = blockIdx.x; c < nchunks; c += gridDim.x) {  // uniform across the block
    const OptimTensorDesc d = table[kern::tensor_of_chunk(table, ntensors, c)];
    const int64_t begin = (c - d.chunk0) * kOptimChunk;
    const int64_t end = begin + kOptimChunk < d.numel ? begin + kOptimChunk : d.numel;
    float* __restrict__ p = d.master;        // [numel]
    const G* __restrict__ g = static_cast<const G*>(d.grad);  // [numel]
    float* __restrict__ m = d.exp_avg;       // [numel]
    float* __restrict__ v = d.exp_avg_sq;    // [numel]
    P* __restrict__ model = static_cast<P*>(d.model);  // [numel] or nullptr
    const bool decay = d.decay != 0 && s.decay_on != 0;
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      float pi = p[i];
      if (decay) pi = __fmul_rn(pi, s.decay);                // param.mul_(1 - lr*wd)
      const float gi = __fmul_rn(to_f32(g[i]), s.scale);    // unscale / clip
      const float mi = m[i];
      const float gm = __fsub_rn(gi, mi);
      // exp_avg.lerp_(grad, w1): fmadd(small ? w1 : w1-1, g-m, small ? m : g)
      const float m1 = s.w1_small ? __fmaf_rn(s.w1, gm, mi) : __fmaf_rn(s.w1_m1, gm, gi);
      // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=c2): fmadd(c2*g, g, v*beta2)
      const float v1 = __fmaf_rn(__fmul_rn(s.c2, gi), gi, __fmul_rn(v[i], s.b2));
      // denom = (sqrt(v) / bc2_sqrt).add_(eps); param.addcdiv_(m, denom, value=neg_step)
      const float den = __fadd_rn(__fdiv_rn(__fsqrt_rn(v1), s.bc2_sqrt), s.eps);
      pi = __fadd_rn(pi, __fdiv_rn(__fmul_rn(s.neg_step, m1), den));
      p[i] = pi;
      m[i] = m1;
      v[i] = v1;
      if (model) model[i] = from_f32<P>(pi);
    }
  }
}

void check_optim_dtype(const char* what, DType dt) {
  if (dt != DType::f32 && dt != DType::bf16 && dt != DType::f16)
    throw std::invalid_argument(std::string("optim_upload_table: ") + what + " dtype " + std::string(dtype_name(dt)) +
                                " is not supported (f32, bf16 or f16)");
}

}  // namespace

size_t optim_table_bytes(int64_t n) { return n > 0 ? static_cast<size_t>(n) * sizeof(OptimTensorDesc) : 0; }

OptimTable optim_upload_table(const OptimTensor* tensors, int64_t n, DType grad_dtype, DType model_dtype,
                              void* device_table, size_t device_bytes, CUstream_st* stream) {
  check_optim_dtype("grad", grad_dtype);
  check_optim_dtype("model", model_dtype);
  if (n < 0) throw std::invalid_argument("optim_upload_table: negative tensor count " + std::to_string(n));
  if (n > 0 && !tensors) throw std::invalid_argument("optim_upload_table: tensors is nullptr");
  if (device_bytes < optim_table_bytes(n) || (n > 0 && !device_table))
    throw std::invalid_argument("optim_upload_table: the device table has " + std::to_string(device_bytes) +
                                " bytes, " + std::to_string(n) + " tensors need " +
                                std::to_string(optim_table_bytes(n)) + " (optim_table_bytes)");
  OptimTable out;
  out.device = device_table;
  out.tensors = n;
  out.grad_dtype = grad_dtype;
  out.model_dtype = model_dtype;
  out.adamw_ready = true;
  std::vector<OptimTensorDesc> host(static_cast<size_t>(n));
  int64_t chunk = 0;
  for (int64_t i = 0; i < n; ++i) {
    const OptimTensor& t = tensors[i];
    if (t.numel < 0)
      throw std::invalid_argument("optim_upload_table: tensor " + std::to_string(i) + " has numel " +
                                  std::to_string(t.numel));
    if (t.numel > 0 && !t.grad)
      throw std::invalid_argument("optim_upload_table: tensor " + std::to_string(i) + " has no gradient");
    if (t.numel > 0 && (!t.master || !t.exp_avg || !t.exp_avg_sq)) out.adamw_ready = false;
    host[i] = OptimTensorDesc{t.master, t.grad, t.exp_avg, t.exp_avg_sq, t.model, t.numel, chunk, t.decay ? 1 : 0, 0};
    chunk += (t.numel + kOptimChunk - 1) / kOptimChunk;
  }
  out.chunks = chunk;
  if (n > 0) {
    CUDA_CHECK(cudaMemcpyAsync(device_table, host.data(), optim_table_bytes(n), cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));  // `host` dies on return
  }
  return out;
}

void adamw_step(const OptimTable& table, const AdamWStepArgs& a, CUstream_st* stream) {
  if (!table.adamw_ready)
    throw std::invalid_argument("adamw_step: the table lacks master/exp_avg/exp_avg_sq pointers for some tensor");
  if (a.step < 1) throw std::invalid_argument("adamw_step: Adam step " + std::to_string(a.step) + " must be >= 1");
  kern::check_dtype("adamw_step grad", table.grad_dtype);
  kern::check_dtype("adamw_step model", table.model_dtype);
  if (table.chunks <= 0) return;
  // optim/adamw.cpp, AdamW::step: the same double expressions, the same conversions.
  const double t = static_cast<double>(a.step);
  const double bias_correction1 = 1.0 - std::pow(a.beta1, t);
  const double bias_correction2 = 1.0 - std::pow(a.beta2, t);
  const double step_size = a.lr / bias_correction1;
  Scalars s;
  s.decay = static_cast<float>(1.0 - a.lr * a.weight_decay);
  s.w1 = static_cast<float>(1.0 - a.beta1);
  s.w1_m1 = s.w1 - 1.0f;
  s.w1_small = std::abs(s.w1) < 0.5f ? 1 : 0;
  s.b2 = static_cast<float>(a.beta2);
  s.c2 = static_cast<float>(1.0 - a.beta2);
  s.bc2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  s.eps = static_cast<float>(a.eps);
  s.neg_step = static_cast<float>(-step_size);
  s.scale = static_cast<float>(a.grad_scale);
  s.decay_on = a.weight_decay != 0.0 ? 1 : 0;
  const auto* d = static_cast<const OptimTensorDesc*>(table.device);
  const unsigned blocks = kern::grid_blocks(table.chunks);
#define PT_ADAMW_P(G, P) \
  PT_LAUNCH((adamw_multi_tensor_kernel<G, P>), blocks, kAdamThreads, 0, stream, d, table.tensors, table.chunks, s)
#define PT_ADAMW_G(G)                                                 \
  switch (table.model_dtype) {                                        \
    case DType::f32: PT_ADAMW_P(G, float); break;                     \
    case DType::bf16: PT_ADAMW_P(G, __nv_bfloat16); break;            \
    default: PT_ADAMW_P(G, __half); break;                            \
  }
  PT_DTYPE_SWITCH(table.grad_dtype, PT_ADAMW_G)
#undef PT_ADAMW_G
#undef PT_ADAMW_P
}

}  // namespace ptrain::cuda
