// layers/module.cpp — parameter registration, naming and initialisation.
#include "layers/module.h"

#include "core/rng.h"

namespace ptrain::layers {

Tensor& Module::register_parameter(const std::string& name, Shape shape, DType dtype, Init init) {
  for (const auto& p : params_) PT_CHECK(p->local_name != name, "parameter '{}' registered twice", name);
  auto p = std::make_unique<Parameter>();
  p->local_name = name;
  p->value = Tensor::zeros(std::move(shape), dtype);
  p->value.set_requires_grad(true);
  p->init = init;
  params_.push_back(std::move(p));
  return params_.back()->value;
}

void Module::collect(const std::string& prefix, std::vector<NamedParameter>& out) {
  for (auto& p : params_) out.push_back({prefix + p->local_name, p.get()});
  for (auto& [name, child] : children_) child->collect(prefix + name + ".", out);
}

std::vector<NamedParameter> Module::named_parameters(const std::string& prefix) {
  std::vector<NamedParameter> out;
  collect(prefix, out);
  return out;
}

void init_tensor(Tensor& t, const Init& init, uint64_t seed, const std::string& name) {
  switch (init.kind) {
    case Init::ones: t.fill(1.0); return;
    case Init::zeros: t.fill(0.0); return;
    case Init::normal: break;
  }
  const auto key = make_key(seed, name);
  const int64_t n = t.numel();
  const int64_t row = t.ndim() >= 1 && t.dim(0) > 0 ? n / t.dim(0) : n;
  const int64_t valid = init.valid_rows < 0 ? n : init.valid_rows * row;
  auto fill = [&](auto* d) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i)
      d[i] = i < valid ? static_cast<std::remove_pointer_t<decltype(d)>>(init.std * random_normal(key, static_cast<uint64_t>(i))) : 0;
  };
  if (t.dtype() == DType::f64)
    fill(t.data<double>());
  else
    fill(t.data<float>());
  t.round_();
}

void Module::init_parameters(uint64_t seed, const std::string& prefix) {
  for (auto& np : named_parameters(prefix)) init_tensor(np.param->value, np.param->init, seed, np.name);
}

}  // namespace ptrain::layers
