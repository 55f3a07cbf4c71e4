// optim/param_ref.cpp — validation of ParamRef lists and zero_grads.
#include "optim/param_ref.h"

namespace ptrain::optim {

void check_param_refs(const std::vector<ParamRef>& params) {
  for (const ParamRef& p : params) {
    PT_CHECK(p.param.defined(), "parameter '{}' has no tensor", p.name);
    PT_CHECK(p.grad.defined(), "parameter '{}' has no gradient buffer", p.name);
    PT_CHECK(p.param.device() == Device::cpu && p.grad.device() == Device::cpu,
             "parameter '{}': the host optimizer needs CPU tensors (param on {}, grad on {})", p.name,
             device_name(p.param.device()), device_name(p.grad.device()));
    PT_CHECK(p.param.dtype() == DType::f32, "parameter '{}': master weights must be f32, got {}", p.name,
             dtype_name(p.param.dtype()));
    PT_CHECK(p.grad.dtype() == DType::f32 || is_low_precision(p.grad.dtype()),
             "parameter '{}': gradient must be f32, bf16 or f16, got {}", p.name, dtype_name(p.grad.dtype()));
    PT_CHECK(p.param.shape() == p.grad.shape(), "parameter '{}': param shape {} != grad shape {}", p.name,
             shape_str(p.param.shape()), shape_str(p.grad.shape()));
  }
}

void zero_grads(std::vector<ParamRef>& params) {
  for (ParamRef& p : params)
    if (p.grad.defined()) p.grad.zero_();
}

}  // namespace ptrain::optim
