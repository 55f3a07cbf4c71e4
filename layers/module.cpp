// layers/module.cpp — parameter registration, naming and initialisation.
#include "layers/module.h"

#include <cstring>

#include "core/rng.h"

namespace ptrain::layers {

Tensor& Module::register_parameter(const std::string& name, Shape shape, DType dtype, Init init, Sharding sharding) {
  for (const auto& p : params_) PT_CHECK(p->local_name != name, "parameter '{}' registered twice", name);
  auto p = std::make_unique<Parameter>();
  p->local_name = name;
  p->full_shape = shape;
  Shape local = shape;
  if (sharding.sharded()) {
    const auto d = static_cast<size_t>(sharding.dim);
    PT_CHECK(d < shape.size(), "parameter '{}': sharded dim {} of shape {}", name, sharding.dim, shape_str(shape));
    PT_CHECK(sharding.groups >= 1 && shape[d] % (int64_t{sharding.groups} * sharding.parts) == 0,
             "parameter '{}': dim {} of {} is not divisible into {} sections x {} parts", name, sharding.dim,
             shape_str(shape), sharding.groups, sharding.parts);
    PT_CHECK(sharding.index >= 0 && sharding.index < sharding.parts, "parameter '{}': shard index {} of {}", name,
             sharding.index, sharding.parts);
    local[d] = shape[d] / sharding.parts;
  }
  p->sharding = sharding;
  p->value = Tensor::zeros(std::move(local), dtype, parameter_device());
  p->value.set_requires_grad(true);
  p->init = init;
  params_.push_back(std::move(p));
  return params_.back()->value;
}

namespace {
thread_local Device g_parameter_device = Device::cpu;
}
Device parameter_device() { return g_parameter_device; }
ParameterDeviceGuard::ParameterDeviceGuard(Device d) : saved_(g_parameter_device) { g_parameter_device = d; }
ParameterDeviceGuard::~ParameterDeviceGuard() { g_parameter_device = saved_; }

Parameter& Module::parameter(const std::string& name) {
  for (auto& p : params_)
    if (p->local_name == name) return *p;
  PT_CHECK(false, "no parameter '{}'", name);
  throw;  // unreachable
}

void Module::mark_tied_replica() {
  for (auto& np : named_parameters()) np.param->tied_replica = true;
}

std::vector<ShardPiece> Parameter::pieces() const {
  if (!sharding.sharded()) {
    const int64_t n = full_shape.empty() ? 1 : full_shape[0];
    return {{0, 0, n}};
  }
  const int64_t extent = full_shape[static_cast<size_t>(sharding.dim)];
  const int64_t section = extent / sharding.groups, len = section / sharding.parts;
  std::vector<ShardPiece> r;
  for (int g = 0; g < sharding.groups; ++g) r.push_back({g * len, g * section + sharding.index * len, len});
  return r;
}

namespace {
/// Copies runs along `dim` between a local tensor and the full one (same element storage).
void copy_runs(const Parameter& p, const Tensor& local, const Tensor& full, bool to_local) {
  PT_CHECK(full.shape() == p.full_shape, "parameter {}: full tensor {} but full shape {}", p.local_name,
           shape_str(full.shape()), shape_str(p.full_shape));
  PT_CHECK(local.shape() == p.value.shape(), "parameter {}: local tensor {} but local shape {}", p.local_name,
           shape_str(local.shape()), shape_str(p.value.shape()));
  PT_CHECK(local.dtype() == full.dtype() || (local.dtype() != DType::f64 && full.dtype() != DType::f64 &&
                                             local.dtype() != DType::i32 && full.dtype() != DType::i32),
           "parameter {}: storage types differ", p.local_name);
  const size_t es = element_size(local.dtype(), local.device());
  if (!p.sharding.sharded()) {
    if (to_local)
      std::memcpy(local.raw(), full.raw(), local.nbytes());
    else
      std::memcpy(full.raw(), local.raw(), local.nbytes());
    return;
  }
  const auto d = static_cast<size_t>(p.sharding.dim);
  int64_t outer = 1, inner = 1;
  for (size_t i = 0; i < d; ++i) outer *= p.full_shape[i];
  for (size_t i = d + 1; i < p.full_shape.size(); ++i) inner *= p.full_shape[i];
  const int64_t lext = local.shape()[d], fext = p.full_shape[d];
  auto* lb = static_cast<char*>(local.raw());
  auto* fb = static_cast<char*>(full.raw());
  for (const auto& run : p.pieces())
    for (int64_t o = 0; o < outer; ++o) {
      char* l = lb + static_cast<size_t>((o * lext + run.local_begin) * inner) * es;
      char* f = fb + static_cast<size_t>((o * fext + run.full_begin) * inner) * es;
      const size_t n = static_cast<size_t>(run.length * inner) * es;
      if (to_local)
        std::memcpy(l, f, n);
      else
        std::memcpy(f, l, n);
    }
}
}  // namespace

void Parameter::slice_from_full(const Tensor& full, Tensor& local) const { copy_runs(*this, local, full, true); }
void Parameter::scatter_into_full(const Tensor& local, Tensor& full) const {
  copy_runs(*this, local, const_cast<Tensor&>(full), false);
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

void init_parameter(Tensor& local, const Parameter& p, uint64_t seed, const std::string& name) {
  if (!p.sharding.sharded()) {
    init_tensor(local, p.init, seed, name);
    return;
  }
  Tensor full = Tensor::zeros(p.full_shape, local.dtype());
  init_tensor(full, p.init, seed, name);
  p.slice_from_full(full, local);
}

void Module::init_parameters(uint64_t seed, const std::string& prefix) {
  for (auto& np : named_parameters(prefix)) init_parameter(np.param->value, *np.param, seed, np.name);
}

}  // namespace ptrain::layers
