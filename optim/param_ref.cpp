// optim/param_ref.cpp — validation of ParamRef lists and zero_grads.
#include "optim/param_ref.h"

namespace ptrain::optim {

Device check_param_refs(const std::vector<ParamRef>& params) {
  const Device dev = params.empty() || !params[0].param.defined() ? Device::cpu : params[0].param.device();
  for (const ParamRef& p : params) {
    PT_CHECK(p.param.defined(), "parameter '{}' has no tensor", p.name);
    PT_CHECK(p.grad.defined(), "parameter '{}' has no gradient buffer", p.name);
    PT_CHECK(p.param.device() == dev && p.grad.device() == dev && (!p.model.defined() || p.model.device() == dev),
             "parameter '{}': the optimizer's tensors must all live on one device (this list is on {}; param on {}, "
             "grad on {})",
             p.name, device_name(dev), device_name(p.param.device()), device_name(p.grad.device()));
    if (p.model.defined())
      PT_CHECK(is_low_precision(p.model.dtype()) && p.model.shape() == p.param.shape() && !p.model.same(p.param),
               "parameter '{}': the model copy must be a bf16/f16 tensor of the master's shape {}, got {} {}", p.name,
               shape_str(p.param.shape()), dtype_name(p.model.dtype()), shape_str(p.model.shape()));
    PT_CHECK(p.param.dtype() == DType::f32 || p.param.dtype() == DType::bf16,
             "parameter '{}': master weights must be f32 (or bf16: a compact state), got {}", p.name,
             dtype_name(p.param.dtype()));
    PT_CHECK(p.grad.dtype() == DType::f32 || is_low_precision(p.grad.dtype()),
             "parameter '{}': gradient must be f32, bf16 or f16, got {}", p.name, dtype_name(p.grad.dtype()));
    PT_CHECK(p.param.shape() == p.grad.shape(), "parameter '{}': param shape {} != grad shape {}", p.name,
             shape_str(p.param.shape()), shape_str(p.grad.shape()));
  }
  return dev;
}

void zero_grads(std::vector<ParamRef>& params) {
  for (ParamRef& p : params)
    if (p.grad.defined()) p.grad.zero_();
}

}  // namespace ptrain::optim
