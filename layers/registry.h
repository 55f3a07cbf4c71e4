// layers/registry.h — layers by name, filled from each layer's own .cpp.
//
// A layer file ends with PTRAIN_REGISTER_LAYER(kind, "name", factory, "help"); no
// central list is edited. Kinds: architectures (whole models, selected by model.arch),
// norms (model.norm), attentions (model.attention), MLPs (model.mlp).
// `ptrain --list-layers` prints the registry.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "layers/module.h"

namespace ptrain::layers {

class CausalLM;

enum class LayerKind { arch, norm, attention, mlp };
const char* kind_name(LayerKind k);

/// Builds a module from the spec; `layer` is the block index (-1 outside blocks).
using LayerFactory = std::function<std::unique_ptr<Module>(const ModelSpec&, int layer)>;

struct LayerEntry {
  LayerKind kind;
  std::string name;
  std::string help;
  LayerFactory make;
};

/// Registers an entry (called by PTRAIN_REGISTER_LAYER at static-initialisation time).
bool register_layer(LayerEntry e);
/// All entries, sorted by kind then name.
std::vector<const LayerEntry*> registered_layers();
/// Names of one kind.
std::vector<std::string> layer_names(LayerKind kind);
/// Builds a registered norm/attention/MLP; throws UserError listing the registered names.
std::unique_ptr<Layer> make_layer(LayerKind kind, const std::string& name, const ModelSpec& spec, int layer);
/// Builds the model of spec.arch.
std::unique_ptr<CausalLM> make_model(const ModelSpec& spec);
/// The registry printed as a table (for --list-layers).
std::string describe_registry();

}  // namespace ptrain::layers

#define PTRAIN_LAYER_CONCAT2(a, b) a##b
#define PTRAIN_LAYER_CONCAT(a, b) PTRAIN_LAYER_CONCAT2(a, b)
/// PTRAIN_REGISTER_LAYER(norm, "rmsnorm", [](const ModelSpec& s, int i) { return std::make_unique<RMSNorm>(s); }, "help")
#define PTRAIN_REGISTER_LAYER(KIND, NAME, FACTORY, HELP)                                              \
  static const bool PTRAIN_LAYER_CONCAT(ptrain_layer_registered_, __LINE__) =                        \
      ::ptrain::layers::register_layer({::ptrain::layers::LayerKind::KIND, NAME, HELP,              \
                                        [](const ::ptrain::layers::ModelSpec& s, int i)             \
                                            -> std::unique_ptr<::ptrain::layers::Module> { return FACTORY(s, i); }})
