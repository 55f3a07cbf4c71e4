// layers/module.h — the module base: parameters and children by explicit name.
//
// Names are hierarchical and equal to the Hugging Face names of the architecture:
// a module registers `register_parameter("weight", ...)` and its parent registered it
// as `register_module("q_proj", ...)`, so the full name is built from the path
// (model.layers.3.self_attn.q_proj.weight). Every parameter carries its init rule
// (DESIGN.md, Initialisation) and is drawn over its full shape by init_parameters().
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "layers/spec.h"

namespace ptrain::layers {

/// How a parameter is initialised.
struct Init {
  enum Kind { normal, ones, zeros } kind = normal;
  double std = 0.02;
  /// Rows at or beyond this index stay zero (vocabulary padding); -1 = none.
  int64_t valid_rows = -1;
  static Init Normal(double s, int64_t valid_rows = -1) { return {normal, s, valid_rows}; }
  static Init Ones() { return {ones, 0, -1}; }
  static Init Zeros() { return {zeros, 0, -1}; }
};

struct Parameter {
  std::string local_name;
  Tensor value;  ///< the weights the forward pass reads (dtype = ModelSpec::dtype); requires grad
  Init init;
};

/// A parameter with its full dotted name.
struct NamedParameter {
  std::string name;
  Parameter* param;
};

/// Context of one forward pass.
struct ForwardCtx {
  int64_t batch = 0;   ///< B
  int64_t seq_len = 0; ///< T
  Tensor rope_cos, rope_sin;  ///< [max_seq_len, head_dim/2] (llama-style attention)
};

class Module {
 public:
  virtual ~Module() = default;
  Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  /// All parameters under this module with full names (`prefix` + path), in registration order.
  std::vector<NamedParameter> named_parameters(const std::string& prefix = "");
  /// Draws every parameter from (seed, full name) per the Initialisation contract.
  void init_parameters(uint64_t seed, const std::string& prefix = "");

 protected:
  /// Declares a parameter of `shape` in `dtype`; returns its tensor (stable for the module's life).
  Tensor& register_parameter(const std::string& name, Shape shape, DType dtype, Init init);
  /// Declares a child module under `name`.
  template <class M> M& register_module(const std::string& name, std::unique_ptr<M> m) {
    M& ref = *m;
    children_.emplace_back(name, std::move(m));
    return ref;
  }

 private:
  void collect(const std::string& prefix, std::vector<NamedParameter>& out);
  std::vector<std::unique_ptr<Parameter>> params_;
  std::vector<std::pair<std::string, std::unique_ptr<Module>>> children_;
};

/// Fills `t` (full shape) per `init`, drawing element i from Normal(0, std) keyed by (seed, name).
void init_tensor(Tensor& t, const Init& init, uint64_t seed, const std::string& name);

/// A module with one input and one output of the same leading shape: norms, attention, MLPs.
class Layer : public Module {
 public:
  /// x [B*T, C] (rows in (b, t) order) -> [B*T, C]
  virtual Tensor forward(const Tensor& x, const ForwardCtx& ctx) = 0;
};

}  // namespace ptrain::layers
