// optim/device_optim.cpp — see device_optim.h.
#include "optim/device_optim.h"

#if PTRAIN_HAVE_CUDA
#include "core/cuda/optim_kernels.h"
#include "optim/grad_clip.h"
#endif

namespace ptrain::optim::detail {

#if PTRAIN_HAVE_CUDA

static_assert(cuda::kOptimChunk == kNormChunk && cuda::kNormGroup == kNormGroup,
              "the device gradient norm must use optim::grad_sum_squares' chunks and groups");

namespace {

/// The one grad dtype (and model dtype) of a list: the kernels take one of each per launch.
DType common_dtype(const std::vector<ParamRef>& refs, bool model) {
  DType dt = DType::f32;
  bool seen = false;
  for (const auto& r : refs) {
    const Tensor& t = model ? r.model : r.grad;
    if (!t.defined()) continue;
    PT_CHECK(!seen || t.dtype() == dt, "parameter '{}': the device optimizer needs one {} dtype for all parameters "
             "({} and {} found)", r.name, model ? "model" : "gradient", dtype_name(dt), dtype_name(t.dtype()));
    dt = t.dtype();
    seen = true;
  }
  return dt;
}

/// A device buffer of `bytes` (a tensor of i32 words from the caching allocator).
Tensor device_bytes(size_t bytes) {
  return Tensor::empty({static_cast<int64_t>((bytes + 3) / 4)}, DType::i32, Device::cuda);
}

}  // namespace

struct DeviceTable::Impl {
  Tensor buffer;
  cuda::OptimTable table;
  std::vector<const void*> key;  ///< the pointers the uploaded table holds, in order
};

DeviceTable::DeviceTable() : impl_(std::make_unique<Impl>()) {}
DeviceTable::~DeviceTable() = default;

void DeviceTable::adamw(const std::vector<ParamRef>& refs, const std::vector<Tensor>& m, const std::vector<Tensor>& v,
                        const std::vector<bool>& decay, double lr, double beta1, double beta2, double eps, double wd,
                        int64_t step, double grad_scale) {
  const size_t n = refs.size();
  PT_CHECK(m.size() == n && v.size() == n && decay.size() == n, "device AdamW: {} params, {} / {} moments", n, m.size(),
           v.size());
  std::vector<cuda::OptimTensor> ts(n);
  std::vector<const void*> key;
  key.reserve(5 * n);
  for (size_t i = 0; i < n; ++i) {
    const ParamRef& r = refs[i];
    PT_CHECK(m[i].device() == Device::cuda && v[i].device() == Device::cuda && m[i].dtype() == DType::f32 &&
                 v[i].dtype() == DType::f32,
             "device AdamW: the moments of '{}' must be fp32 device tensors", r.name);
    ts[i].master = static_cast<float*>(r.param.raw());
    ts[i].grad = r.grad.raw();
    ts[i].exp_avg = static_cast<float*>(m[i].raw());
    ts[i].exp_avg_sq = static_cast<float*>(v[i].raw());
    ts[i].model = r.model.defined() ? r.model.raw() : nullptr;
    ts[i].numel = r.param.numel();
    ts[i].decay = decay[i];
    for (const void* p : {static_cast<const void*>(ts[i].master), ts[i].grad, static_cast<const void*>(ts[i].exp_avg),
                          static_cast<const void*>(ts[i].exp_avg_sq), static_cast<const void*>(ts[i].model)})
      key.push_back(p);
  }
  const DType gdt = common_dtype(refs, false), mdt = common_dtype(refs, true);
  if (key != impl_->key || gdt != impl_->table.grad_dtype || mdt != impl_->table.model_dtype) {
    const size_t bytes = cuda::optim_table_bytes(static_cast<int64_t>(n));
    if (!impl_->buffer.defined() || impl_->buffer.nbytes() < bytes) impl_->buffer = device_bytes(bytes);
    impl_->table = cuda::optim_upload_table(ts.data(), static_cast<int64_t>(n), gdt, mdt, impl_->buffer.raw(),
                                            impl_->buffer.nbytes(), nullptr);
    impl_->key = std::move(key);
  }
  cuda::AdamWStepArgs a;
  a.lr = lr;
  a.beta1 = beta1;
  a.beta2 = beta2;
  a.eps = eps;
  a.weight_decay = wd;
  a.step = step;
  a.grad_scale = grad_scale;
  cuda::adamw_step(impl_->table, a, nullptr);
}

double device_grad_sum_squares(const std::vector<ParamRef>& refs) {
  const int64_t n = static_cast<int64_t>(refs.size());
  std::vector<cuda::OptimTensor> ts(refs.size());
  for (size_t i = 0; i < refs.size(); ++i) {
    ts[i].grad = refs[i].grad.raw();
    ts[i].numel = refs[i].grad.numel();
  }
  Tensor table_buf = device_bytes(cuda::optim_table_bytes(n));
  const cuda::OptimTable table =
      cuda::optim_upload_table(ts.data(), n, common_dtype(refs, false), DType::f32, table_buf.raw(), table_buf.nbytes(),
                               nullptr);
  Tensor scratch = device_bytes(std::max<size_t>(8, cuda::grad_sum_squares_scratch_bytes(table)));
  Tensor out = Tensor::empty({1}, DType::f64, Device::cuda);
  cuda::grad_sum_squares(table, static_cast<double*>(out.raw()), scratch.raw(), nullptr);
  return out.to_double_vector()[0];
}

#else  // no CUDA backend: device ParamRefs cannot exist

struct DeviceTable::Impl {};
DeviceTable::DeviceTable() : impl_(std::make_unique<Impl>()) {}
DeviceTable::~DeviceTable() = default;
void DeviceTable::adamw(const std::vector<ParamRef>&, const std::vector<Tensor>&, const std::vector<Tensor>&,
                        const std::vector<bool>&, double, double, double, double, double, int64_t, double) {
  PT_CHECK(false, "device AdamW in a build without the CUDA backend");
}
double device_grad_sum_squares(const std::vector<ParamRef>&) {
  PT_CHECK(false, "device gradient norm in a build without the CUDA backend");
  return 0;
}

#endif

}  // namespace ptrain::optim::detail
