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

/// How a parameter's local tensor sits in the full (unsharded) tensor. Along `dim` the full
/// extent is cut into `groups` equal sections (q, k, v of a fused projection: 3), each
/// section into `parts` equal slices; this rank holds slice `index` of every section, in
/// section order. dim = -1: the full tensor (replicated or unsharded).
struct Sharding {
  int dim = -1;
  int parts = 1;
  int index = 0;
  int groups = 1;
  bool sharded() const { return dim >= 0 && parts > 1; }
};

/// A contiguous run of a sharded parameter: local [local_begin, +length) along the sharded
/// dim equals full [full_begin, +length).
struct ShardPiece {
  int64_t local_begin, full_begin, length;
};

struct Parameter {
  std::string local_name;
  Tensor value;  ///< the weights the forward pass reads (dtype = ModelSpec::dtype); requires grad
  Init init;
  Shape full_shape;   ///< the unsharded shape (== value.shape() when not sharded)
  Sharding sharding;  ///< where value sits in the full tensor
  /// The gradient is a partial sum over the tensor-parallel group (a replicated weight applied
  /// to rows split over TP ranks: norms under sequence parallelism, a row-parallel bias added
  /// by TP rank 0 only): the trainer all-reduces it over TP before the optimizer.
  bool tp_partial_grad = false;
  /// A copy of a parameter another pipeline stage owns (the tied embedding read by the LM head
  /// on the last stage): same name and init; gradients summed with the owner's over the
  /// embedding group; never written to checkpoints, counted once in the gradient norm.
  bool tied_replica = false;

  /// The runs this rank holds (one run covering everything when not sharded).
  std::vector<ShardPiece> pieces() const;
  /// local <- this rank's slices of `full` (full_shape, same storage type).
  void slice_from_full(const Tensor& full, Tensor& local) const;
  /// full <- local at this rank's slices (other elements untouched).
  void scatter_into_full(const Tensor& local, Tensor& full) const;
};

/// The device on which register_parameter allocates, for this thread (default Device::cpu).
/// make_model sets it from ModelSpec::device for the duration of the build, so a module —
/// built-in or a researcher's own — never names a device: it is built where the model lives.
Device parameter_device();
class ParameterDeviceGuard {
 public:
  explicit ParameterDeviceGuard(Device d);
  ~ParameterDeviceGuard();
  ParameterDeviceGuard(const ParameterDeviceGuard&) = delete;
  ParameterDeviceGuard& operator=(const ParameterDeviceGuard&) = delete;

 private:
  Device saved_;
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
  /// Marks every parameter under this module (recursively) as a tied replica.
  void mark_tied_replica();

 protected:
  /// Declares a parameter of full shape `shape` in `dtype`, of which this rank holds the
  /// slices `sharding` names; returns its (local) tensor, stable for the module's life,
  /// zero-filled on parameter_device().
  Tensor& register_parameter(const std::string& name, Shape shape, DType dtype, Init init, Sharding sharding = {});
  /// The Parameter record of a registered tensor (to set flags such as tp_partial_grad).
  Parameter& parameter(const std::string& name);
  /// Declares a child module under `name`.
  template <class M> M& register_module(const std::string& name, std::unique_ptr<M> m) {
    M& ref = *m;
    children_.emplace_back(name, std::move(m));
    return ref;
  }

 private:
  void collect(const std::string& prefix, std::vector<NamedParameter>& out);
  friend class CausalLM;
  std::vector<std::unique_ptr<Parameter>> params_;
  std::vector<std::pair<std::string, std::unique_ptr<Module>>> children_;
};

/// Fills `t` (full shape) per `init`, drawing element i from Normal(0, std) keyed by (seed, name).
void init_tensor(Tensor& t, const Init& init, uint64_t seed, const std::string& name);
/// Fills `local` (a tensor of p's local shape) with this rank's slices of the full tensor drawn
/// by init_tensor: every parallel layout starts from the same weights.
void init_parameter(Tensor& local, const Parameter& p, uint64_t seed, const std::string& name);

/// A module with one input and one output of the same leading shape: norms, attention, MLPs.
class Layer : public Module {
 public:
  /// x [B*T, C] (rows in (b, t) order) -> [B*T, C]
  virtual Tensor forward(const Tensor& x, const ForwardCtx& ctx) = 0;
};

}  // namespace ptrain::layers
