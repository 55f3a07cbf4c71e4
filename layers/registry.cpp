// layers/registry.cpp — the layer registry.
#include "layers/registry.h"

#include <algorithm>
#include <map>

#include "layers/model.h"

namespace ptrain::layers {

namespace {
std::vector<LayerEntry>& entries() {
  static std::vector<LayerEntry> e;  // function-local: safe across static-init order
  return e;
}
std::string join(const std::vector<std::string>& v) {
  std::string r;
  for (size_t i = 0; i < v.size(); ++i) r += (i ? ", " : "") + v[i];
  return r;
}
const LayerEntry* find(LayerKind kind, const std::string& name) {
  for (const auto& e : entries())
    if (e.kind == kind && e.name == name) return &e;
  return nullptr;
}
}  // namespace

const char* kind_name(LayerKind k) {
  switch (k) {
    case LayerKind::arch: return "arch";
    case LayerKind::norm: return "norm";
    case LayerKind::attention: return "attention";
    case LayerKind::mlp: return "mlp";
  }
  return "?";
}

bool register_layer(LayerEntry e) {
  PT_CHECK(!find(e.kind, e.name), "layer '{}' of kind {} registered twice", e.name, kind_name(e.kind));
  entries().push_back(std::move(e));
  return true;
}

std::vector<const LayerEntry*> registered_layers() {
  std::vector<const LayerEntry*> r;
  for (const auto& e : entries()) r.push_back(&e);
  std::sort(r.begin(), r.end(), [](auto* a, auto* b) { return std::tie(a->kind, a->name) < std::tie(b->kind, b->name); });
  return r;
}

std::vector<std::string> layer_names(LayerKind kind) {
  std::vector<std::string> r;
  for (const auto* e : registered_layers())
    if (e->kind == kind) r.push_back(e->name);
  return r;
}

std::unique_ptr<Layer> make_layer(LayerKind kind, const std::string& name, const ModelSpec& spec, int layer) {
  const LayerEntry* e = find(kind, name);
  if (!e)
    throw UserError(fmt::format("model.{}: '{}' is not a registered {} layer (registered: {}). HINT: ptrain --list-layers",
                                kind_name(kind), name, kind_name(kind), join(layer_names(kind))));
  auto m = e->make(spec, layer);
  auto* l = dynamic_cast<Layer*>(m.get());
  PT_CHECK(l, "registered {} '{}' does not build a Layer", kind_name(kind), name);
  m.release();
  return std::unique_ptr<Layer>(l);
}

std::unique_ptr<CausalLM> make_model(const ModelSpec& spec) {
  const LayerEntry* e = find(LayerKind::arch, spec.arch);
  if (!e)
    throw UserError(fmt::format("model.arch: '{}' is not a registered architecture (registered: {}). HINT: ptrain --list-layers",
                                spec.arch, join(layer_names(LayerKind::arch))));
  ParameterDeviceGuard on(spec.device);
  auto m = e->make(spec, -1);
  auto* lm = dynamic_cast<CausalLM*>(m.get());
  PT_CHECK(lm, "architecture '{}' does not build a CausalLM", spec.arch);
  m.release();
  return std::unique_ptr<CausalLM>(lm);
}

std::string describe_registry() {
  std::string out;
  LayerKind last = LayerKind::mlp;
  bool first = true;
  for (const auto* e : registered_layers()) {
    if (first || e->kind != last) {
      out += fmt::format("{}{}:\n", first ? "" : "\n", kind_name(e->kind));
      last = e->kind;
      first = false;
    }
    out += fmt::format("  {:<18} {}\n", e->name, e->help);
  }
  return out;
}

}  // namespace ptrain::layers
