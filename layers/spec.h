// layers/spec.h — what a model needs to know to build itself.
//
// launch/ turns the YAML config into a ModelSpec; layers never see the config
// itself (dependencies point downwards). Sizes are the full, unsharded ones.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "parallel/comm.h"

namespace ptrain::layers {

struct ModelSpec {
  std::string arch = "llama";
  int64_t vocab_size = 256;     ///< real vocabulary (the data's token ids are below it)
  int64_t padded_vocab = 256;   ///< embedding/head rows (>= vocab_size; padding rows stay zero)
  int64_t hidden = 128;
  int64_t layers = 2;
  int64_t heads = 4;
  int64_t kv_heads = 4;
  int64_t ffn_hidden = 352;
  int64_t max_seq_len = 256;
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  bool tie_embeddings = false;
  std::string norm;       ///< registered norm layer ("" = the architecture's default)
  std::string attention;  ///< registered attention layer ("" = default)
  std::string mlp;        ///< registered MLP layer ("" = default)
  DType dtype = DType::f32;  ///< dtype of the weights the forward pass uses (f32, bf16, f16; f64 in tests)
  /// Where parameters (and the RoPE tables) live: make_model builds them there directly (no
  /// host copy of the whole model on the way). Device::cuda needs a build with the CUDA backend.
  Device device = Device::cpu;

  // ---- this rank's part of the model (parallel layouts); defaults: the whole model ----
  /// Tensor-parallel group (heads, MLP columns and the vocabulary split over its ranks);
  /// nullptr = no tensor parallelism. Layers use it only through parallel/tp_ops.h.
  parallel::Communicator* tp = nullptr;
  /// Activations between blocks hold only this TP rank's rows (Megatron's sequence parallelism).
  bool sequence_parallel = false;
  /// Global indices of the decoder blocks this rank builds (pipeline stages); empty = all.
  std::vector<int> blocks;
  bool build_embed = true;  ///< the first pipeline stage: token (and position) embedding
  bool build_head = true;   ///< the last pipeline stage: final norm, LM head, loss

  int64_t head_dim() const { return hidden / heads; }
  int tp_size() const { return tp ? tp->size() : 1; }
  int tp_rank() const { return tp ? tp->rank() : 0; }
};

}  // namespace ptrain::layers
